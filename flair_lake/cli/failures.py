"""The one place where failures become lines: every ``flair-lake`` command and the ``train/`` scripts end here.

A command that fails prints one line on stderr, ``error: <what and where>; <the fix>``, and exits with a
documented code (:data:`flair_lake.errors.EXIT_CODES`); ``-v`` (on the group or on any command) shows the
traceback before it. What is turned into a line:

- :class:`~flair_lake.errors.FlairLakeError`: its own message and exit code;
- click's usage errors (an option out of range, an unknown option): the message and ``-h``, exit 2;
- ``OSError`` by its errno (no space, read-only, permission, not a folder, gone, ...), also when a library
  wrapped it or only kept its text (``(os error 28)`` from Rust, ``No space left on device`` from GDAL), and the
  failures of Dask (a worker killed, the cluster gone), which arrive with their worker's exception: exit 5;
- SIGINT (Ctrl-C) and SIGTERM: what had landed and how to go on, exit 128 + the signal;
- anything else is a bug: its type and message, exit 70, and a request for the ``-v`` traceback.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import logging
import os
import re
import signal
import sys
import threading

import click

from flair_lake.errors import (
    EXIT_ERROR,
    EXIT_INTERNAL,
    EXIT_SYSTEM,
    FlairLakeError,
    Interrupted,
)

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}  # also for commands run alone (the train/ scripts)

# the parameters of the command that is running: the lake or output folder a bare OSError is about
_RUNNING: dict = {}

# errno spelled out by libraries that do not raise OSError: Rust's "(os error N)", C's strerror texts
_ERRNO_TEXT = ((re.compile(r"os error (\d+)"), None),
               (re.compile(r"no space left on device", re.I), errno.ENOSPC),
               (re.compile(r"disk quota exceeded", re.I), errno.EDQUOT),
               (re.compile(r"read-only file system", re.I), errno.EROFS),
               (re.compile(r"permission denied", re.I), errno.EACCES))


# the loggers of Dask and tornado that distributed's own config sets a level on (so setting their parent's is not
# enough): what they print while a failed or interrupted run winds down, the one error line already says
DASK_LOGGERS = ("distributed", "distributed.client", "distributed.scheduler", "distributed.nanny", "distributed.core",
                "distributed.http.proxy", "distributed.worker", "tornado", "tornado.application")


def quiet_loggers(names, level: int = logging.CRITICAL + 1) -> None:
    """Set the level of each logger of ``names`` (silent by default)."""
    for name in names:
        logging.getLogger(name).setLevel(level)


def _quiet_at_exit() -> None:
    """Silence the interpreter's reports of exceptions it cannot raise, for the rest of the exit.

    The reads a failed store left pending (an unreachable object store: dozens of them) are closed when the
    interpreter exits, each printing "Exception ignored in: <coroutine ...>"; the one error line already said
    what went wrong. Registered with atexit, so an in-process caller (tests, notebooks) keeps its own hook.
    """
    sys.unraisablehook = lambda _unraisable: None


def verbose() -> bool:
    """Return True when ``-v`` was given (debug logging): failures then show their traceback."""
    return logging.getLogger().isEnabledFor(logging.DEBUG)


def _set_verbose(_ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger().setLevel(logging.DEBUG)


def verbose_option() -> click.Option:
    """Return the ``-v/--verbose`` flag every command takes (also after the command's name)."""
    return click.Option(["-v", "--verbose"], is_flag=True, expose_value=False, is_eager=True,
                        callback=_set_verbose, help="Debug logging and full tracebacks.")


def os_error_of(exc: BaseException) -> OSError | None:
    """Return the ``OSError`` behind ``exc``: itself, one it was raised from, or one its message spells out."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            return e
        for pattern, code in _ERRNO_TEXT:
            m = pattern.search(str(e))
            if m:
                return OSError(code if code is not None else int(m.group(1)), str(e).splitlines()[0][:200])
        e = e.__cause__ or e.__context__
    return None


def _os_line(exc: OSError, where: str) -> str:
    """Return the one line of a system refusal, about ``exc.filename`` or else ``where``."""
    path = exc.filename or where
    if where and exc.filename and not os.path.isabs(exc.filename) and not str(exc.filename).startswith(where):
        path = f"{where} ({exc.filename})"  # a key inside a store (zarr.json, c/0/0): name the lake too
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the disk of {path} ({exc.strerror}); free space or choose another location, "
                "then run the same command again: what had landed is kept")
    if code == errno.EROFS:
        return f"{path} is on a read-only file system; give a writable location (or remount it read-write)"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied on {path}; give a location you may write, or fix its permissions"
    if code == errno.ENOTDIR:
        return f"{path}: a part of this path is a file, not a folder; give a path in a folder"
    if code == errno.EISDIR:
        return f"{path} is a folder where a file was expected; give a file path"
    if code == errno.ENOENT:
        return f"{path} does not exist (moved or deleted while the command ran?); check the path and run again"
    if code == errno.ENOMEM:
        return "out of memory; use fewer --workers or a smaller --batch-size"
    if code == errno.EIO:
        return f"input/output error on {path}: the disk or the network failed; check it and run again"
    return f"{exc.strerror or exc} ({path}); fix it and run the same command again"


def _dask_line(exc: BaseException) -> str | None:
    """Return the line of a failure of the Dask cluster itself (not of a task's code), else None."""
    name = type(exc).__name__
    if name == "KilledWorker":
        return ("a Dask worker died while running a task, twice (out of memory, or killed); see the worker's log, "
                "use fewer --workers, then run the same command again: what had landed is kept")
    if name in ("CancelledError", "FutureCancelledError", "CommClosedError", "StreamClosedError"):
        return ("the Dask cluster went away before the tasks finished (a worker or the scheduler stopped); run the "
                "same command again: what had landed is kept")
    return None


def describe(exc: BaseException, where: str = "") -> tuple[str, int]:
    """Return ``(line, exit code)`` for a failure; ``where`` is what a bare OSError is about (the lake, ...)."""
    if isinstance(exc, _Stopped):
        exc = exc.interrupted
    if isinstance(exc, KeyboardInterrupt):
        exc = Interrupted.of(exc)
        return str(exc), exc.exit_code
    if isinstance(exc, FlairLakeError):
        return str(exc), exc.exit_code
    if isinstance(exc, click.ClickException):
        hint = f" (see `{exc.ctx.command_path} -h`)" if getattr(exc, "ctx", None) is not None else ""
        return exc.format_message().replace("\n", " ") + hint, exc.exit_code
    if isinstance(exc, json.JSONDecodeError):  # a damaged zarr.json below the root (the root's: on open)
        lake = where or "the lake"
        return (f"a metadata file (zarr.json) of {lake} is damaged ({exc}); `flair-lake validate {lake}` names "
                "it and `--repair` fixes what it can"), EXIT_ERROR
    dask = _dask_line(exc)
    if dask:
        return dask, EXIT_SYSTEM
    if isinstance(exc, MemoryError):
        return "out of memory; use fewer --workers or a smaller --batch-size", EXIT_SYSTEM
    os_exc = os_error_of(exc)
    if os_exc is not None:
        return _os_line(os_exc, where), EXIT_SYSTEM
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return (f"internal error: {type(exc).__name__}: {text}; rerun with -v for the traceback and report it"
            ), EXIT_INTERNAL


def fail(exc: BaseException) -> None:
    """Print the line of ``exc`` on stderr and exit with its code."""
    params = _RUNNING.get("params") or {}
    where = str(params.get("lake") or params.get("out") or params.get("raw") or "")
    line, code = describe(exc, where)
    click.echo(f"error: {line}", err=True)
    quiet_loggers((*DASK_LOGGERS, "asyncio"))  # what libraries log while the process winds down
    atexit.register(_quiet_at_exit)
    sys.exit(code)


def _raise_terminated(signum, _frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def sigterm_interrupts():
    """Within, SIGTERM raises :class:`Interrupted` in the main thread, as Ctrl-C raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class OneLineFailures:
    """Mixin of a click command or group: run it so that every failure ends as one line (see the module)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Run the command; in standalone mode (the console scripts) a failure exits with one line."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            with sigterm_interrupts():
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.Abort as exc:  # Ctrl-C or end of input while click itself was reading
            fail(exc.__context__ if isinstance(exc.__context__, KeyboardInterrupt) else KeyboardInterrupt())
        except click.ClickException as exc:
            fail(exc)
        except (Exception, KeyboardInterrupt) as exc:
            if verbose():  # the traceback, then the same line and exit code as without -v
                import traceback

                traceback.print_exc()
            fail(exc)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context):
        """Invoke the command, remembering its parameters for the failure line; Ctrl-C stays one line.

        click answers a KeyboardInterrupt with an empty line and "Aborted!"; here it leaves as an
        :class:`Interrupted`, which :meth:`main` turns into one line.
        """
        if not isinstance(self, click.Group):
            _RUNNING["params"] = ctx.params
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            if verbose():
                raise
            raise _Stopped(Interrupted.of(exc)) from None


class _Stopped(Exception):
    """Carries an interruption past click's own Ctrl-C handling, which prints more than one line."""

    def __init__(self, interrupted: Interrupted) -> None:
        super().__init__(str(interrupted))
        self.interrupted = interrupted


class Command(OneLineFailures, click.Command):
    """A ``flair-lake`` command: one-line failures, ``-v`` for tracebacks, ``-h`` for help."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("context_settings", CONTEXT_SETTINGS)
        super().__init__(*args, **kwargs)
        if not any("-v" in p.opts for p in self.params):
            self.params.append(verbose_option())
