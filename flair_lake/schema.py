"""The lake contract: one home for names, dims, dtypes, chunking, the class table and the official splits.

Everything that reads or writes a lake takes its names from here; ``docs/lake-format.md`` documents the same
contract for users. Bump :data:`SCHEMA_VERSION` whenever a reader of an older lake would misread a newer one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

SCHEMA_VERSION = 2  # 2: every chunk ends with its CRC32C (docs/lake-format.md, "Checksums")
READABLE_SCHEMAS = (1, 2)  # 1: the same layout without chunk checksums; read as it is

# --- the raw data's physical facts ------------------------------------------------------------------------------
PATCH_FOOTPRINT_M = 102.4  # aerial patch side, metres (512 px at 0.2 m); kept when a smaller patch size is used
S2_PIXEL_M = 10.0  # Sentinel-2 pixel, metres
S2_WINDOW = 40  # Sentinel window around each centroid (baseline ``sat_patch_size``)
S2_CENTRE_CROP = 10  # pixels of the window under the aerial patch (100 m ~ 102.4 m)
CRS_EPSG = 2154  # Lambert-93
AERIAL_BANDS = ("red", "green", "blue", "nir", "elevation")
S2_BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
S2_MASK_BANDS = ("snow", "cloud")  # channel 0 = snow, channel 1 = cloud (docs/raw-format.md, "Sentinel-2 super-areas")
N_AERIAL_BANDS = len(AERIAL_BANDS)
N_S2_BANDS = len(S2_BANDS)

# --- classes ----------------------------------------------------------------------------------------------------
# raw code -> (name, colour) ; the official FLAIR nomenclature and colour table.
RAW_CLASSES: dict[int, tuple[str, str]] = {
    1: ("building", "#db0e9a"),
    2: ("pervious surface", "#938e7b"),
    3: ("impervious surface", "#f80c00"),
    4: ("bare soil", "#a97101"),
    5: ("water", "#1553ae"),
    6: ("coniferous", "#194a26"),
    7: ("deciduous", "#46e483"),
    8: ("brushwood", "#f3a60d"),
    9: ("vineyard", "#660082"),
    10: ("herbaceous vegetation", "#55ff00"),
    11: ("agricultural land", "#fff30d"),
    12: ("plowed land", "#e4df7c"),
    13: ("swimming pool", "#3de6eb"),
    14: ("snow", "#ffffff"),
    15: ("clear cut", "#8ab3a0"),
    16: ("mixed", "#6b714f"),
    17: ("ligneous", "#c5dc42"),
    18: ("greenhouse", "#9999ff"),
    19: ("other", "#000000"),
}
NUM_RAW_CLASSES = 19
NUM_CLASSES = 13  # training classes: raw 1..12 -> 0..11, raw >= 13 -> 12 ('other')
OTHER_CLASS = 12
CLASS_NAMES = tuple(RAW_CLASSES[c][0] for c in range(1, 13)) + ("other",)
# Official metric: mIoU over the first 12 classes, 'other' stays in the confusion matrix
# (docs/baseline.md, "Official metric").
METRIC_CLASSES = 12


def to_train_classes(raw: np.ndarray) -> np.ndarray:
    """Return raw label codes (uint8) as training classes: 1..12 -> 0..11, every other code -> 12 ('other').

    Two vectorised passes (uint8 wrap-around sends 0 to 255, then the minimum caps at 'other'); 3x faster than
    a table look-up on a 512 x 512 patch, which matters in the loader's hot path.
    """
    if raw.dtype != np.uint8:  # the arithmetic relies on uint8 wrap-around; FLAIR labels are uint8
        raise ValueError(f"label codes must be uint8, got {raw.dtype}; FLAIR label files are 1-band uint8")
    out = np.subtract(raw, 1, dtype=np.uint8)
    np.minimum(out, OTHER_CLASS, out=out)
    return out


def train_class_lut() -> np.ndarray:
    """Return the uint8 lookup table raw code (0..255) -> training class (0..12) of :func:`to_train_classes`."""
    return to_train_classes(np.arange(256, dtype=np.uint8))


# --- official splits (datapaper appendix A.6.1), keyed by departement code -------------------------------------
SPLIT_NAMES = ("train", "val", "test")
SPLIT_CODES = {name: i for i, name in enumerate(SPLIT_NAMES)}
UNKNOWN_SPLIT = 255
OFFICIAL_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("D006", "D007", "D008", "D009", "D013", "D016", "D017", "D021", "D023", "D030", "D032", "D033",
              "D034", "D035", "D038", "D041", "D044", "D046", "D049", "D051", "D052", "D055", "D060", "D063",
              "D070", "D072", "D074", "D078", "D080", "D081", "D086", "D091"),
    "val": ("D004", "D014", "D029", "D031", "D058", "D066", "D067", "D077"),
    "test": ("D015", "D022", "D026", "D036", "D061", "D064", "D068", "D069", "D071", "D084"),
}
_SPLIT_OF_DEPT = {d: s for s, ds in OFFICIAL_SPLITS.items() for d in ds}


def official_split(domain: str) -> str | None:
    """Return 'train', 'val' or 'test' for a domain such as ``D004_2021`` (None when not in the official lists)."""
    return _SPLIT_OF_DEPT.get(domain.split("_")[0])


# --- lake layout ------------------------------------------------------------------------------------------------
PATCHES_PER_SHARD = 64
PATCH_DIM = "patch"
TABLE_CHUNK_ROWS = 65_536  # rows per chunk of the columns only the coordinator writes
MONTHS = 12  # months of a view's monthly cube: one per calendar month
DATE_DIM = "date"  # the Sentinel-2 date axis: a super-area's rows, the trailing axis of a view's date tables
# Codec roles: which codecs an array takes (flair_lake.storage.role_compressors turns a role into zarr codecs).
CODEC_ROLES = {
    "image": "ingest --codec at --zstd-level (aerial images and labels)",
    "table": "Zstd level 3, whatever --codec says (the small per-patch columns and a view's tables)",
    "sentinel": "ingest --sentinel-codec at --zstd-level, bit-shuffled when wider than a byte",
    "cube": "filter --codec at level 1, bit-shuffled (a view's monthly cube)",
    "none": "stored uncompressed",
}


@dataclass(frozen=True)
class ArraySpec:
    """One per-patch column of the lake: its name, dims after ``patch``, dtype, fill value and meaning."""

    name: str
    dims: tuple[str, ...]
    dtype: str
    fill_value: int | float = 0
    description: str = ""


# Per-patch 1-D coordinates (the table). Strings are stored as integer codes with their table in attrs.
COORDS: tuple[ArraySpec, ...] = (
    ArraySpec("patch_id", (), "int32", -1, "numeric part of IMG_<id>"),
    ArraySpec("domain", (), "int16", -1, "index into attrs['domains']"),
    ArraySpec("zone", (), "int32", -1, "index into attrs['areas'] (one Sentinel super-area per zone)"),
    ArraySpec("split", (), "uint8", UNKNOWN_SPLIT, "0 train, 1 val, 2 test (appendix A.6.1), 255 unknown"),
    ArraySpec("year", (), "int16", 0, "acquisition year"),
    ArraySpec("camera", (), "int16", -1, "index into attrs['cameras']"),
    ArraySpec("centroid_x", (), "float64", np.nan, "Lambert-93 metres"),
    ArraySpec("centroid_y", (), "float64", np.nan, "Lambert-93 metres"),
    ArraySpec("centroid_z", (), "float64", np.nan, "altitude, metres"),
    ArraySpec("acquired", (), "int64", 0, "aerial acquisition, seconds since 1970-01-01T00:00 (local time)"),
    ArraySpec("s2_row", (), "int32", -1, "centroid row in the zone's Sentinel super-area"),
    ArraySpec("s2_col", (), "int32", -1, "centroid column in the zone's Sentinel super-area"),
    ArraySpec("crs_epsg", (), "int32", 0, "EPSG code of the aerial patch"),
    ArraySpec("has_label", (), "uint8", 0, "1 when a label mask was ingested"),
)
TRANSFORM = ArraySpec("transform", ("affine",), "float64", np.nan,
                      "GDAL geotransform (c, a, b, f, d, e): x origin, pixel width, 0, y origin, 0, -pixel height; "
                      "affine.Affine.from_gdal(*t)")
SHARD_CHUNKED = ("transform", "crs_epsg", "status")  # columns the ingest shard tasks write: chunked by shard
STATUS_ARRAY = "status"  # per row: STATUS_EMPTY (no data yet), STATUS_OK (landed), STATUS_QUARANTINED
STATUS_EMPTY, STATUS_OK, STATUS_QUARANTINED = 0, 1, 2
TASK_WRITTEN = tuple(n for n in SHARD_CHUNKED if n != STATUS_ARRAY)  # columns read from the GeoTIFFs
SHARD_TASK_ARRAYS = ("aerial", "label", *TASK_WRITTEN, STATUS_ARRAY)  # everything one ingest shard task writes


@dataclass(frozen=True)
class ArrayLayout:
    """How one array of a lake or a view is stored: what ``create_array`` needs, and what the array means.

    ``dims`` names every dimension, the row dimension (``patch``, or ``date`` for Sentinel-2) first, as zarr's
    ``dimension_names``; ``trailing`` is the shape after it. Chunks and shards span the trailing dimensions
    whole (a dimension of length 0 is chunked by 1).
    """

    name: str
    dims: tuple[str, ...]
    dtype: str
    trailing: tuple[int, ...]
    chunk_rows: int
    shard_rows: int | None
    codec_role: str
    fill_value: int | float | bool
    description: str
    extra_attributes: tuple[tuple[str, Any], ...] = ()  # stored after the description, in this order
    stores_description: bool = True  # False: the Sentinel-2 arrays, whose attributes hold no description

    def shape(self, n_rows: int) -> tuple[int, ...]:
        """Return the array's shape with ``n_rows`` rows."""
        return (n_rows, *self.trailing)

    @property
    def chunks(self) -> tuple[int, ...]:
        """Return the (inner) chunk shape."""
        return (self.chunk_rows, *(max(d, 1) for d in self.trailing))

    @property
    def shards(self) -> tuple[int, ...] | None:
        """Return the shard shape, None for an unsharded array."""
        return None if self.shard_rows is None else (self.shard_rows, *(max(d, 1) for d in self.trailing))

    def attributes(self) -> dict[str, Any]:
        """Return the array's zarr attributes."""
        head = {"description": self.description} if self.stores_description else {}
        return {**head, **{k: list(v) if isinstance(v, tuple) else v for k, v in self.extra_attributes}}


def lake_arrays(patch_size: int, patches_per_shard: int) -> dict[str, ArrayLayout]:
    """Return the layout of every per-patch array of a lake, by name (in creation order).

    Images are one patch per chunk and ``patches_per_shard`` patches per shard; the columns the shard tasks write
    are chunked by shard (no two tasks share a chunk), the others by :data:`TABLE_CHUNK_ROWS`.
    """
    p, s = patch_size, patches_per_shard
    out = {
        "aerial": ArrayLayout("aerial", (PATCH_DIM, "band", "y", "x"), "uint8", (N_AERIAL_BANDS, p, p), 1, s,
                              "image", 0, "R, G, B, NIR, elevation; raw digital numbers"),
        "label": ArrayLayout("label", (PATCH_DIM, "y", "x"), "uint8", (p, p), 1, s, "image", 0,
                             "raw FLAIR codes 1..19; 0 = no label (unlabelled split)"),
    }
    for spec in (*COORDS, TRANSFORM):
        trailing = (6,) if spec.dims else ()
        extra = (("units", "seconds since 1970-01-01"), ("calendar", "proleptic_gregorian")) \
            if spec.name == "acquired" else ()
        rows = s if spec.name in SHARD_CHUNKED else TABLE_CHUNK_ROWS
        out[spec.name] = ArrayLayout(spec.name, (PATCH_DIM, *spec.dims), spec.dtype, trailing, rows, None, "table",
                                     spec.fill_value, spec.description, extra)
    out[STATUS_ARRAY] = ArrayLayout(STATUS_ARRAY, (PATCH_DIM,), "uint8", (), s, None, "table", 0,
                                "0 empty or pending, 1 ingested, 2 quarantined",
                                (("flag_values", (0, 1, 2)), ("flag_meanings", "empty ingested quarantined")))
    return out


def sentinel_arrays(n_dates: int, height: int, width: int) -> dict[str, ArrayLayout]:
    """Return the layout of the arrays of one super-area, ``sentinel/<area>/``: ``n_dates`` dates of a
    ``height`` x ``width`` pixel grid (chunks of up to 8 dates; the dates whole)."""
    t = n_dates
    dates = (("units", "days since 1970-01-01"), ("calendar", "proleptic_gregorian"))
    return {
        "data": ArrayLayout("data", (DATE_DIM, "s2_band", "row", "col"), "uint16", (N_S2_BANDS, height, width),
                            min(t, 8), None, "sentinel", 0, "L2A reflectance x 10000, bands S2_BANDS", (), False),
        "masks": ArrayLayout("masks", (DATE_DIM, "mask_band", "row", "col"), "uint8",
                             (len(S2_MASK_BANDS), height, width), min(t, 8), None, "sentinel", 0,
                             "Sen2Cor snow and cloud probability, percent", (), False),
        "dates": ArrayLayout("dates", (DATE_DIM,), "int32", (), max(t, 1), None, "none", 0,
                             "sensing date, days since 1970-01-01", dates, False),
    }


def view_arrays(patches_per_shard: int, t_max: int, window: int, monthly: bool, *,
                reducer: str | None = None) -> dict[str, ArrayLayout]:
    """Return the layout of every array of a view, by name (in creation order): the date tables over ``t_max``
    dates, and with ``monthly`` the cube of ``window`` x ``window`` windows (its description names ``reducer``,
    by default :attr:`FilterConfig.reducer <flair_lake.config.FilterConfig>`) and its month tables."""
    if reducer is None:
        from flair_lake.config import FilterConfig  # config imports this module

        reducer = FilterConfig.reducer
    s, w = patches_per_shard, window
    out = {
        "cover": ArrayLayout("cover", (PATCH_DIM, DATE_DIM), "float32", (t_max,), s, None, "table", 0.0,
                             "covered fraction of the patch window per area date"),
        "keep": ArrayLayout("keep", (PATCH_DIM, DATE_DIM), "bool", (t_max,), s, None, "table", False,
                            "date kept (cover < max_cover); False beyond n_dates"),
        "n_dates": ArrayLayout("n_dates", (PATCH_DIM,), "int16", (), s, None, "table", 0, "dates of the area"),
    }
    if monthly:
        out["monthly"] = ArrayLayout("monthly", (PATCH_DIM, "month", "s2_band", "row", "col"), "uint16",
                                     (MONTHS, N_S2_BANDS, w, w), 1, s, "cube", 0,
                                     f"monthly {reducer} of kept dates, DN; 0 when empty")
        out["month_count"] = ArrayLayout("month_count", (PATCH_DIM, "month"), "uint8", (MONTHS,), s, None, "table",
                                         0, "kept dates per month; 0 = empty month")
        out["month_days"] = ArrayLayout("month_days", (PATCH_DIM, "month"), "int16", (MONTHS,), s, None, "table",
                                        0, "days from the 15th of the month to the reference date")
    return out


def date_axes(layouts: dict[str, ArrayLayout]) -> dict[str, int]:
    """Return name -> position of the :data:`DATE_DIM` axis, for each of ``layouts`` that has one."""
    return {name: a.dims.index(DATE_DIM) for name, a in layouts.items() if DATE_DIM in a.dims}


SENTINEL_GROUP = "sentinel"  # sentinel/<area>/{data,masks,dates}
VIEWS_GROUP = "views"  # views/<name>/...
# a view's name: one path segment of letters, digits, '.', '_', '-', not starting with '.' (so never '.' or '..'),
# and not zarr's metadata file
VIEW_NAME_RE = re.compile(r"(?!zarr\.json$)[A-Za-z0-9_][A-Za-z0-9._-]{0,119}")


# A view rebuilt with --overwrite gets a new generation beside the old one: views/<name>~<k>, k = 2, 3, ...;
# the views group's attribute "current" maps each name to its current generation (absent: the name itself).
# Readers hold the generation they opened; an old generation is collected by a later filter (config.VIEW_RETAIN_S).
GENERATION_SEP = "~"  # not allowed in view names (VIEW_NAME_RE), so a generation is never mistaken for a name


def view_generation(name: str, k: int) -> str:
    """Return the group name of generation ``k`` (1, 2, ...) of the view ``name``."""
    return name if k <= 1 else f"{name}{GENERATION_SEP}{k}"


def view_generation_id(group: str) -> str:
    """Return the exact name of a view group's generation, ``name~k`` also for k = 1 (``clear`` -> ``clear~1``):
    what checkpoints record, which keeps naming that generation after an --overwrite."""
    name, k = view_name_of(group)
    return f"{name}{GENERATION_SEP}{k}"


def view_name_of(group: str) -> tuple[str, int]:
    """Return (view name, generation) of a view group name: ``clear~3`` -> ("clear", 3), ``clear`` -> ("clear", 1)."""
    name, sep, k = group.partition(GENERATION_SEP)
    return name, int(k) if sep and k.isdigit() else 1


def check_view_name(name: str) -> str:
    """Return ``name`` when it may name a view (:data:`VIEW_NAME_RE`).

    Raises:
        UsageError: any other name (a path, '..', spaces, zarr.json, over 120 characters).
    """
    from flair_lake.errors import UsageError

    if not VIEW_NAME_RE.fullmatch(name):
        raise UsageError(f"view name {name!r} is not allowed: use letters, digits, '.', '_' and '-' (at most 120, "
                         "not starting with '.'), e.g. --name clear-monthly")
    return name
DONE_GROUP = "done"  # per-shard completion markers, written after the data

# --- the sample contract (loader -> model -> tests) --------------------------------------------------------------
# key: (dtype, shape description). Batches add a leading batch dim; "sentinel", "dates" and "pad_mask" are padded
# along T to the batch maximum (T = 12 for a monthly view).
SAMPLE_KEYS: dict[str, tuple[str, str]] = {
    "aerial": ("uint8", "(5, P, P) R, G, B, NIR, elevation"),
    "label": ("int64", "(P, P) training classes 0..12 (raw > 13 -> 12 'other'); 255 when unlabelled"),
    "sentinel": ("float32", "(T, 10, W, W) reflectance DN of the window, 0 on padded steps"),
    "dates": ("int64", "(T,) day offsets for the U-TAE positional encoding"),
    "pad_mask": ("bool", "(T,) True on padded or empty steps"),
    "mtd": ("float32", "(MTD_DIM,) encoded aerial metadata"),
    "patch_id": ("int64", "() numeric id of IMG_<id>"),
    "row": ("int64", "() row of the patch in the lake"),
}
IGNORE_LABEL = 255
YEARS = (2018, 2019, 2020, 2021)  # year one-hot of the metadata vector (others: all zeros)
MTD_DIM = 32 + 1 + len(YEARS) + 2 + 4  # Fourier x/y, altitude, year, camera family, day and hour of acquisition
ALTITUDE_SCALE_M = 3164.91  # largest altitude in FLAIR #2 (docs/baseline.md, "Metadata encoding")
