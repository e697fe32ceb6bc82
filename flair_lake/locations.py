"""Local output locations: can this folder or file be created and written (checked before any work), and
one run at a time into an output folder (:func:`output_lock`).

Light on purpose (no third-party import): the command line checks its output options while parsing.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path


def _nearest_existing(path: Path) -> Path:
    """Return ``path`` or its nearest ancestor that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def unwritable(path: str | Path, *, folder: bool = True) -> str | None:
    """Return why ``path`` cannot be written (a folder, or a file when ``folder`` is False), None when it can.

    Nothing is created: the nearest existing folder is probed with a temporary file (permission bits say nothing
    for root, read-only mounts or pseudo file systems).
    """
    p = Path(path)
    if p.exists():
        if folder and not p.is_dir():
            return f"{path} is a file, not a folder"
        if not folder and p.is_dir():
            return f"{path} is a folder, not a file"
    base = _nearest_existing(p if folder else p.parent)
    if not base.is_dir():
        return f"{base} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        return f"{base} is not writable ({exc.strerror or exc})"
    return None


@contextlib.contextmanager
def output_lock(folder: Path, command: str):
    """Hold ``folder/lock`` (flock) while ``command`` writes an output folder: a second run into it is refused.

    The kernel releases the lock when its holder dies, so a killed run never blocks the next one.

    Raises:
        LakeBusyError: another process holds it (exit 6), named in the line.
    """
    import fcntl
    import os
    import socket

    from flair_lake.errors import LakeBusyError
    from flair_lake.lake import now_iso

    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / "lock", "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise LakeBusyError(f"{folder.parent} is being written by another {command} ({holder}); wait for it "
                                "to finish or write into another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {now_iso()}\n")
        fh.flush()
        yield
    finally:
        fh.close()
