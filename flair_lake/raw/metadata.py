"""Readers of the two JSON side files: aerial metadata and Sentinel centroids.

Their formats are in docs/raw-format.md ("Centroids file", "Aerial metadata file").
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path

from flair_lake.errors import RawFormatError
from flair_lake.raw import names

METADATA_KEYS = ("domain", "zone", "patch_centroid_x", "patch_centroid_y", "patch_centroid_z", "date", "time",
                 "camera")


@dataclass(frozen=True)
class PatchMeta:
    """One entry of ``flair_aerial_metadata.json``."""

    patch_id: int
    domain: str
    zone: str
    x: float
    y: float
    z: float
    acquired: dt.datetime
    camera: str


def _load_json(path: Path, what: str) -> dict:
    """Load a JSON object or raise a one-line error naming the file."""
    try:
        with open(path, "rb") as fh:
            obj = json.load(fh)
    except FileNotFoundError:
        raise RawFormatError(f"{path}: {what} not found; put {path.name} at the root of the FLAIR tree") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RawFormatError(f"{path}: not valid JSON ({exc}); re-download or regenerate {path.name}") from None
    if not isinstance(obj, dict):
        raise RawFormatError(f"{path}: expected a JSON object keyed by patch, got {type(obj).__name__}")
    return obj


def parse_metadata_entry(key: str, entry: dict, *, source: Path | str = "") -> PatchMeta:
    """Parse one metadata entry ``"IMG_000717": {...}``.

    Raises:
        RawFormatError: a key is missing or a value has the wrong type or format.
    """
    pid = names.parse_id(key + ".tif")
    if pid is None:
        raise RawFormatError(f"{source}: metadata key {key!r} is not IMG_<id> (no .tif)")
    missing = [k for k in METADATA_KEYS if k not in entry]
    if missing:
        raise RawFormatError(f"{source}: entry {key} lacks {', '.join(missing)}; expected keys "
                             f"{', '.join(METADATA_KEYS)}")
    try:
        when = dt.datetime.strptime(f"{entry['date']} {entry['time']}", "%Y-%m-%d %Hh%M")
        return PatchMeta(patch_id=pid, domain=str(entry["domain"]), zone=str(entry["zone"]),
                         x=float(entry["patch_centroid_x"]), y=float(entry["patch_centroid_y"]),
                         z=float(entry["patch_centroid_z"]), acquired=when, camera=str(entry["camera"]))
    except (ValueError, TypeError) as exc:
        raise RawFormatError(f"{source}: entry {key} has a bad value ({exc}); expected date 'YYYY-MM-DD', "
                             "time 'HHhMM' and numeric centroids") from None


def read_metadata(path: str | Path) -> tuple[dict[int, PatchMeta], dict[int, str]]:
    """Read ``flair_aerial_metadata.json``.

    Returns:
        (entries by patch id, problems by patch id): a malformed entry is reported, not fatal.
    """
    path = Path(path)
    out: dict[int, PatchMeta] = {}
    bad: dict[int, str] = {}
    for key, entry in _load_json(path, "aerial metadata").items():
        try:
            meta = parse_metadata_entry(key, entry if isinstance(entry, dict) else {}, source=path)
        except RawFormatError as exc:
            pid = names.parse_id(key + ".tif")
            if pid is None:
                raise
            bad[pid] = str(exc)
            continue
        out[meta.patch_id] = meta
    return out, bad


def _pixel(value) -> int | None:
    """Return a centroid coordinate as an int: a whole, finite JSON number (not a bool); None otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return None
    return int(value)


def read_centroids(path: str | Path) -> tuple[dict[int, tuple[int, int]], dict[int, str]]:
    """Read ``flair-2_centroids_sp_to_patch.json``: ``{"IMG_000001.tif": [row, col]}`` -> {1: (row, col)}.

    Returns:
        (centroids by patch id, problems by patch id): an entry whose value is not two whole numbers (NaN, a
        string, null, 20.5) quarantines its patch; a key that names no patch stops the ingest.

    Raises:
        RawFormatError: the file is not a JSON object, or a key is not ``IMG_<id>.tif``.
    """
    path = Path(path)
    out: dict[int, tuple[int, int]] = {}
    bad: dict[int, str] = {}
    for key, value in _load_json(path, "Sentinel centroids").items():
        pid = names.parse_id(key)
        if pid is None:
            raise RawFormatError(f"{path}: entry {key!r}: {value!r} is not 'IMG_<id>.tif': [row, col]")
        rc = [_pixel(v) for v in value] if isinstance(value, list) and len(value) == 2 else [None]
        if any(v is None for v in rc):
            bad[pid] = (f"{path}: centroid of {key} is {json.dumps(value)[:60]}, not [row, col] in whole pixels; "
                        "fix the entry")
            continue
        out[pid] = (rc[0], rc[1])
    return out, bad
