"""Errors raised for bad input, bad state and interruptions, and the exit codes of every command.

Every message says what and where, what was expected, and the fix. The command line
(:mod:`flair_lake.cli.failures`) prints it as one line on stderr and exits with the error's code; tracebacks only
with ``-v``. The codes are listed in README.md ("When something goes wrong").
"""

from __future__ import annotations

import signal

EXIT_OK = 0
EXIT_ERROR = 1  # bad input or lake state: the message names the file, the folder or the lake and the fix
EXIT_USAGE = 2  # the command line: an option out of range, a bad name, an output that cannot be written
EXIT_PARTIAL = 3  # ingest: some patches were quarantined, the rest landed; experiment: some runs failed
EXIT_INVALID = 4  # validate: problems found (one line each), or some need a manual repair
EXIT_SYSTEM = 5  # the system refused: disk full, read-only, permission, a path gone, a store or scheduler away
EXIT_BUSY = 6  # another writer holds the lake (flair_lake/lock.py): run again when it is done, or --wait
EXIT_INTERNAL = 70  # a bug of flair-lake: rerun with -v and report the traceback
EXIT_SIGNAL_BASE = 128  # interrupted: 128 + the signal number (130 Ctrl-C / SIGINT, 143 SIGTERM)

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_ERROR: "bad input or lake state (the line names what and where, and the fix)",
    EXIT_USAGE: "bad command line (an option out of range, a bad name, an unwritable output)",
    EXIT_PARTIAL: "partial: ingest quarantined some patches (listed), the rest landed; experiment: some runs failed "
                  "(listed), the others finished",
    EXIT_INVALID: "validate: problems found (one line each with its repair)",
    EXIT_SYSTEM: "the system refused: disk full, read-only or permission denied, a path vanished, an object "
                 "store or Dask scheduler unreachable; fix it and run the same command again",
    EXIT_BUSY: "another writer holds the lake or the output folder (the line names it); run again when it has "
               "finished, or add --wait (lakes)",
    EXIT_INTERNAL: "internal error (a bug): rerun with -v and report the traceback",
    EXIT_SIGNAL_BASE + signal.SIGINT: "interrupted by Ctrl-C (SIGINT); what finished is kept, the same command "
                                      "resumes",
    EXIT_SIGNAL_BASE + signal.SIGTERM: "terminated (SIGTERM); what finished is kept, the same command resumes",
}


class FlairLakeError(Exception):
    """Base class of every error flair-lake raises for bad input or state."""

    exit_code = EXIT_ERROR


class RawFormatError(FlairLakeError, ValueError):
    """A raw FLAIR file or tree does not have the expected layout or content."""


class RawTreeNotFoundError(FlairLakeError, FileNotFoundError):
    """The raw root does not exist or holds no FLAIR tree."""


class LakeNotFoundError(FlairLakeError, FileNotFoundError):
    """No lake at the given path."""


class LakeStateError(FlairLakeError, RuntimeError):
    """The lake exists but cannot be used as asked (wrong schema, missing view, ...)."""


class CorruptMetadataError(LakeStateError):
    """A lake's metadata file cannot be parsed (truncated, padded, overwritten)."""


class TargetNotWritableError(FlairLakeError, PermissionError):
    """The output location given on the command line cannot be written (a file, a foreign folder, read-only)."""

    exit_code = EXIT_USAGE


class UnreachableError(FlairLakeError, ConnectionError):
    """A service the command needs (an object store, a Dask scheduler) does not answer or refuses."""

    exit_code = EXIT_SYSTEM


class LakeBusyError(FlairLakeError):
    """Another writer holds the lake's lock."""

    exit_code = EXIT_BUSY


class UsageError(FlairLakeError, ValueError):
    """An option value is out of range or options contradict each other."""

    exit_code = EXIT_USAGE


class Interrupted(KeyboardInterrupt):
    """A command stopped by SIGINT (Ctrl-C) or SIGTERM.

    A ``KeyboardInterrupt``, so that ``except Exception`` never swallows it and libraries that clean up on Ctrl-C
    (DataLoader workers, Dask) do so on SIGTERM too. A command that knows what it had finished raises it again
    with ``landed`` (what is kept) and ``resume`` (how to go on).
    """

    def __init__(self, signum: int = signal.SIGINT, landed: str | None = None, resume: str | None = None) -> None:
        super().__init__(signum)
        self.signum = int(signum)
        self.landed = landed
        self.resume = resume

    @classmethod
    def of(cls, exc: BaseException, landed: str | None = None, resume: str | None = None) -> Interrupted:
        """Return the interruption ``exc`` (a plain KeyboardInterrupt is Ctrl-C) with what landed and how to resume."""
        return cls(getattr(exc, "signum", signal.SIGINT), landed or getattr(exc, "landed", None),
                   resume or getattr(exc, "resume", None))

    @property
    def exit_code(self) -> int:
        """Return 128 + the signal number, as a shell reports a process a signal ended."""
        return EXIT_SIGNAL_BASE + self.signum

    def __str__(self) -> str:
        what = "interrupted by Ctrl-C (SIGINT)" if self.signum == signal.SIGINT else \
            f"terminated by {signal.Signals(self.signum).name}"
        parts = [what, self.landed or "what had finished is kept",
                 self.resume or "run the same command again to go on"]
        return "; ".join(parts)
