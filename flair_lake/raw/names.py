"""File and folder names of the raw FLAIR #2 layout (docs/raw-format.md), written and parsed in one place."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from flair_lake.errors import RawFormatError

# Parts of a tree: (aerial, labels, sentinel) folder names, by part.
PARTS = {
    "train": ("flair_aerial_train", "flair_labels_train", "flair_sen_train"),
    "test": ("flair_2_aerial_test", "flair_2_labels_test", "flair_2_sen_test"),
}
CENTROIDS_JSON = "flair-2_centroids_sp_to_patch.json"
METADATA_JSON = "flair_aerial_metadata.json"

DOMAIN_RE = re.compile(r"^D(\d{3})_(\d{4})$")
ZONE_RE = re.compile(r"^Z(\d+)_([UAFN]{2})$")
IMG_RE = re.compile(r"^IMG_(\d+)\.tif$")
MSK_RE = re.compile(r"^MSK_(\d+)\.tif$")
PRODUCT_RE = re.compile(
    r"^S2[ABCD]_MSIL2A_(\d{8})T(\d{6})_N\d{4}_R\d{3}_T\d{2}[A-Z]{3}_\d{8}T\d{6}$"
)


ID_DIGITS = 6  # patch ids are written zero-padded to six digits: IMG_000123
PATCH_PREFIX = "IMG_"


def patch_name(patch_id: int) -> str:
    """Return the name of a patch, ``IMG_000123`` for 123: its image's stem and its metadata JSON key."""
    return f"{PATCH_PREFIX}{int(patch_id):0{ID_DIGITS}d}"


def parse_patch_name(text: str | int) -> int | None:
    """Return the numeric id of ``IMG_000123`` (any case), ``000123`` or ``123``; None when it is not one."""
    s = str(text).strip()
    s = s[len(PATCH_PREFIX):] if s.upper().startswith(PATCH_PREFIX) else s
    return int(s) if s.isascii() and s.isdigit() else None


def img_name(patch_id: int) -> str:
    """Return ``IMG_000123.tif`` for 123."""
    return f"{patch_name(patch_id)}.tif"


def msk_name(patch_id: int) -> str:
    """Return ``MSK_000123.tif`` for 123."""
    return f"MSK_{int(patch_id):0{ID_DIGITS}d}.tif"


def metadata_key(patch_id: int) -> str:
    """Return the metadata JSON key ``IMG_000123`` (no extension)."""
    return patch_name(patch_id)


def sentinel_stem(domain: str, zone: str) -> str:
    """Return ``SEN2_sp_D004_2021-Z8_NF`` (hyphen between domain and zone, as in the real files)."""
    return f"SEN2_sp_{domain}-{zone}"


def area_name(domain: str, zone: str) -> str:
    """Return the super-area name ``D004_2021-Z8_NF`` used as a key in the lake."""
    return f"{domain}-{zone}"


def product_name(sensing: dt.datetime, *, satellite: str = "S2B", orbit: int = 94, tile: str = "30TYN") -> str:
    """Return an ESA L2A product name for a sensing time (processing time one hour later)."""
    processed = sensing + dt.timedelta(hours=1, minutes=11)
    return (
        f"{satellite}_MSIL2A_{sensing:%Y%m%dT%H%M%S}_N0214_R{orbit:03d}_T{tile}_{processed:%Y%m%dT%H%M%S}"
    )


def read_product_lines(path: Path) -> list[str]:
    """Return the non-blank lines of a ``_products.txt``, stripped.

    Raises:
        RawFormatError: a line is not UTF-8 text (the file is damaged or another file's bytes).
    """
    lines = []
    for i, raw in enumerate(Path(path).read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise RawFormatError(f"{path}: line {i} is not UTF-8 text; fix or remove that line, or re-download the "
                                 "zone") from None
        if line:
            lines.append(line)
    return lines


def parse_product_date(name: str, *, source: str | Path = "") -> dt.date:
    """Return the sensing date of an L2A product name, keeping the real year (the baseline drops it).

    Raises:
        RawFormatError: the name is not an L2A product name.
    """
    m = PRODUCT_RE.match(name.strip())
    if m is None:
        where = f"{source}: " if source else ""
        raise RawFormatError(
            f"{where}product name {name.strip()!r} is not an L2A name like "
            "'S2B_MSIL2A_20210114T110329_N0214_R094_T30TYN_20210114T121822'; fix or remove that line"
        )
    try:
        return dt.datetime.strptime(m.group(1), "%Y%m%d").date()
    except ValueError as exc:
        raise RawFormatError(f"{source}: product name {name.strip()!r} holds an impossible date ({exc})") from None


def parse_id(name: str, pattern: re.Pattern[str] = IMG_RE) -> int | None:
    """Return the numeric patch id of ``IMG_000123.tif`` (or ``MSK_...``), None when the name does not match."""
    m = pattern.match(name)
    return int(m.group(1)) if m else None
