"""Checks of local output locations, made before any work: can this folder or file be created and written?

Light on purpose (no third-party import): the command line checks its output options while parsing.
"""

from __future__ import annotations

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
