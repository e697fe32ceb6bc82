"""Every default of flair-lake, declared once, in frozen dataclasses.

Click options and function signatures read their defaults from here; nothing else hard-codes them.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace

from flair_lake import schema
from flair_lake.errors import UsageError

DEFAULT_LAKE = "lake.zarr"
LAKE_ENV = "FLAIR_LAKE"


def default_lake() -> str:
    """Return the lake path used when none is given: ``$FLAIR_LAKE`` or ``./lake.zarr``."""
    return os.environ.get(LAKE_ENV, DEFAULT_LAKE)


# --- the lake's writer lock (flair_lake/lock.py) ----------------------------------------------------------------
LOCK_LEASE_S = 120.0  # a writer renews its lease every third of this; a dead remote holder is taken over after it
# a view generation replaced by `filter --overwrite` stays readable this long (a training run that opened it reads it
# to its end), then the next filter of the lake collects it
VIEW_RETAIN_S = 7 * 24 * 3600.0


# --- synth ------------------------------------------------------------------------------------------------------
SYNTH_PRESET = "tiny"  # ``flair-lake synth`` without --preset
SYNTH_PRESETS: dict[str, dict] = {
    # seconds to generate; every split present; small patches keep the 102.4 m footprint
    "tiny": dict(domains=("D006_2020", "D033_2021", "D004_2021", "D015_2020"), zones_per_domain=2,
                 patches_per_zone=6, patch_size=64, max_dates=40),
    # the CPU demo: enough domains for train/val/test and a model that learns
    "small": dict(domains=("D006_2020", "D013_2020", "D033_2021", "D038_2021", "D044_2020", "D060_2021",
                           "D004_2021", "D031_2019", "D015_2020", "D069_2020"),
                  zones_per_domain=2, patches_per_zone=16, patch_size=128),
    # benchmarks: full-size patches, 512 of them
    "bench": dict(domains=("D006_2020", "D033_2021", "D004_2021", "D015_2020"), zones_per_domain=2,
                  patches_per_zone=64, patch_size=512),
}


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the synthetic FLAIR generator (see :mod:`flair_lake.synth`)."""

    domains: tuple[str, ...] = SYNTH_PRESETS[SYNTH_PRESET]["domains"]
    zones_per_domain: int = 2
    patches_per_zone: int = 6
    patch_size: int = 64
    seed: int = 0
    min_dates: int = 20  # Sentinel dates per zone, drawn in [min_dates, max_dates] (datapaper Table 8)
    max_dates: int = 114

    def __post_init__(self) -> None:
        if self.zones_per_domain < 1:
            raise UsageError(f"--zones-per-domain must be >= 1, got {self.zones_per_domain}")
        if self.patches_per_zone < 1:
            raise UsageError(f"--patches-per-zone must be >= 1, got {self.patches_per_zone}")
        if self.patch_size < 32 or self.patch_size > 512 or self.patch_size % 32:
            raise UsageError(
                f"--patch-size must be a multiple of 32 in [32, 512], got {self.patch_size}: the aerial patch "
                f"keeps its {schema.PATCH_FOOTPRINT_M} m footprint, so smaller patches leave the "
                f"{schema.S2_CENTRE_CROP}x{schema.S2_CENTRE_CROP} Sentinel centre crop under 3 px per S2 pixel "
                "and the U-Net's five poolings need a multiple of 32"
            )
        if not self.domains:
            raise UsageError("--domains needs at least one domain such as D004_2021")
        if not 1 <= self.min_dates <= self.max_dates:
            raise UsageError(f"date counts must satisfy 1 <= min <= max, got {self.min_dates}..{self.max_dates}")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> SynthConfig:
        """Return the preset's config with the given (non-None) overrides."""
        if name not in SYNTH_PRESETS:
            raise UsageError(f"unknown preset {name!r}; choose one of {', '.join(SYNTH_PRESETS)}")
        params = dict(SYNTH_PRESETS[name])
        params.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**params)

    @property
    def n_patches(self) -> int:
        """Total number of patches the tree will hold."""
        return len(self.domains) * self.zones_per_domain * self.patches_per_zone


# --- ingest -----------------------------------------------------------------------------------------------------
CODECS = ("zstd", "lz4", "none")
THREADS_PER_WORKER = 1  # threads of each Dask worker process: every task decodes and computes in one thread
# Band statistics (the lake's ``band_stats``, which normalise the model's inputs) sample every STATS_STEP-th row
# and column; a Sentinel-2 pixel counts when its snow and its cloud probability (percent) are both below
# STATS_CLEAR_PROB.
STATS_STEP = 4
STATS_CLEAR_PROB = 60


@dataclass(frozen=True)
class IngestConfig:
    """Parameters of ``flair-lake ingest``."""

    codec: str = "zstd"  # aerial and label imagery
    zstd_level: int = 1  # measured: 3x the encode speed of level 3 for a 1% larger aerial lake
    # Sentinel-2 reflectance and masks, read whole by every filter task (and by the loader on date views):
    # blosc-lz4 + bitshuffle decodes 2.7x faster than zstd-1 for 3 % more bytes (bench tree, 2-core machine)
    sentinel_codec: str = "lz4"
    patches_per_shard: int = schema.PATCHES_PER_SHARD
    sat_window: int = schema.S2_WINDOW
    workers: int | None = None  # None: sized to the machine
    threads_per_worker: int = THREADS_PER_WORKER
    scheduler: str | None = None
    wait: bool = False  # wait for another writer of the lake to finish, instead of refusing (flair_lake/lock.py)

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise UsageError(f"--codec must be one of {', '.join(CODECS)}, got {self.codec!r}")
        if self.sentinel_codec not in CODECS:
            raise UsageError(f"--sentinel-codec must be one of {', '.join(CODECS)}, got {self.sentinel_codec!r}")
        if self.patches_per_shard < 1:
            raise UsageError(f"patches per shard must be >= 1, got {self.patches_per_shard}")
        if self.sat_window < 2 or self.sat_window % 2:
            raise UsageError(f"--sat-window must be an even number >= 2, got {self.sat_window}")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers must be >= 1, got {self.workers}")


# --- filter -----------------------------------------------------------------------------------------------------
COMBINE_RULES = ("union", "sum")
REDUCERS = ("mean", "median")
BASELINE_PRESET = "baseline"
FILTER_PRESETS = (BASELINE_PRESET,)
# blosc-zstd level of the monthly cube with ``--codec zstd``: level 1 encodes fastest for the same decode speed. A
# module constant, not a FilterConfig field: the fields are recorded in each view's attributes.
MONTHLY_LEVEL = 1
BASELINE_VIEW = "baseline"  # the default name of the baseline's view, whatever its cube codec
# FilterConfig field -> the ``flair-lake filter`` option that sets it (the fields no option sets come with a preset)
FILTER_FLAGS = {"max_cover": "--cloud", "min_prob": "--prob", "combine": "--combine", "monthly": "--monthly",
                "reducer": "--reducer", "mask_pixels": "--mask-pixels"}


def _number(x: float) -> str:
    """Return ``x`` as short text that parses back to the same float (``0.6``, ``60``, ``0.1234567890123``)."""
    short = f"{x:g}"
    return short if float(short) == x else repr(float(x))


def _flag_text(field: str, value) -> str:
    """Return the option text of one field's value (``--cloud 0.5``, ``--monthly``, ``no --mask-pixels``)."""
    flag = FILTER_FLAGS[field]
    if isinstance(value, bool):
        return flag if value else f"no {flag}"  # only Python callers pass False: the options have no --no-*
    return f"{flag} {_number(value) if isinstance(value, float) else value}"


@dataclass(frozen=True)
class FilterConfig:
    """Parameters of ``flair-lake filter`` (semantics in docs/lake-format.md, "Views")."""

    max_cover: float = 0.6  # a date is dropped when its covered fraction of the window is >= this (paper: 0.6)
    min_prob: float = 60.0  # a pixel is covered when its snow or cloud probability (%) is >= this
    combine: str = "union"  # union: a pixel flagged snow and cloud counts once; sum: twice (the baseline)
    monthly: bool = False
    reducer: str = "mean"
    mask_pixels: bool = False  # average only the clear pixels of each kept date
    skip_empty_months: bool = False  # baseline: T' = months with a clear date (dense cube keeps 12 either way)
    ref_year: int | None = None  # year of the 15 May reference of month day offsets; None: acquisition year
    codec: str = "lz4"  # of the monthly cube: blosc-lz4 + bitshuffle writes 2.4x and decodes ~3x faster than zstd

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_cover <= 1.0:
            raise UsageError(f"--cloud is a fraction of the window and must be in [0, 1], got {self.max_cover}")
        if not 0.0 <= self.min_prob <= 101.0:
            raise UsageError(f"--prob is a probability in percent and must be in [0, 100] (101: no pixel is ever "
                             f"covered), got {self.min_prob}")
        if self.combine not in COMBINE_RULES:
            raise UsageError(f"--combine must be one of {', '.join(COMBINE_RULES)}, got {self.combine!r}")
        if self.reducer not in REDUCERS:
            raise UsageError(f"--reducer must be one of {', '.join(REDUCERS)}, got {self.reducer!r}")
        if self.codec not in CODECS:
            raise UsageError(f"--codec must be one of {', '.join(CODECS)}, got {self.codec!r}")

    def is_baseline(self) -> bool:
        """Return True for the released baseline's semantics, whatever the cube's codec (storage only)."""
        return replace(self, codec=FilterConfig.codec) == FilterConfig.baseline()

    @classmethod
    def baseline(cls) -> FilterConfig:
        """Return the released baseline's exact behaviour.

        See docs/baseline.md, "Cloud and snow filter" and "Monthly composites".
        """
        return cls(max_cover=0.5, min_prob=60.0, combine="sum", monthly=True, reducer="mean",
                   mask_pixels=False, skip_empty_months=True, ref_year=2021)

    # --- the command line round trip ------------------------------------------------------------------------
    @classmethod
    def from_flags(cls, *, preset: str | None = None, codec: str | None = None, **flags) -> FilterConfig:
        """Return the config the options of ``flair-lake filter`` ask for.

        Args:
            preset: ``"baseline"`` or None; a flag that agrees with the preset's value is accepted.
            codec: the monthly cube's codec; None: the default.
            **flags: values keyed by field name (``max_cover``, ``min_prob``, ``combine``, ``monthly``,
                ``reducer``, ``mask_pixels``); None means the option was not given.

        Raises:
            UsageError: an unknown preset or field, a value out of range, or a flag contradicting the preset.
        """
        unknown = sorted(set(flags) - set(FILTER_FLAGS))
        if unknown:
            raise UsageError(f"{', '.join(unknown)} cannot be set by an option of flair-lake filter; the options set "
                             f"{', '.join(FILTER_FLAGS)}")
        given = {k: v for k, v in flags.items() if v is not None}
        storage = {} if codec is None else {"codec": codec}
        if preset is None:
            return cls(**given, **storage)
        if preset not in FILTER_PRESETS:
            raise UsageError(f"--preset must be one of {', '.join(FILTER_PRESETS)}, got {preset!r}")
        base = cls.baseline()
        clashes = [(k, v) for k, v in given.items() if v != getattr(base, k)]
        if clashes:
            uses = {k: f"uses {_flag_text(k, getattr(base, k))}" if getattr(base, k) is not False
                    else f"runs without {FILTER_FLAGS[k]}" for k, _ in clashes}
            raise UsageError("; ".join(f"{_flag_text(k, v)} contradicts --preset {preset} (which {uses[k]})"
                                       for k, v in clashes) + "; drop one")
        return replace(base, **storage)

    def to_flags(self) -> list[str]:
        """Return the ``flair-lake filter`` options that rebuild exactly this config.

        ``skip_empty_months`` and ``ref_year`` are set by ``--preset baseline`` only, and ``--prob`` stops at
        100 (the config allows 101, "nothing is covered"), so some configs have no options.

        Raises:
            UsageError: no combination of options gives this config.
        """
        if self.is_baseline():
            out = ["--preset", BASELINE_PRESET]
        else:
            only_preset = [f"{k}={getattr(self, k)}" for k in ("skip_empty_months", "ref_year")
                           if getattr(self, k) != getattr(FilterConfig, k)]
            if only_preset or self.min_prob > 100:
                why = (f"{', '.join(only_preset)}: set only by --preset baseline, whose other parameters differ"
                       if only_preset else f"--prob stops at 100, got {self.min_prob:g}")
                raise UsageError(f"no flair-lake filter options give the filter parameters {asdict(self)}: {why}; "
                                 "pass them to pipelines.filter.run_filter from Python")
            out = ["--cloud", _number(self.max_cover), "--prob", _number(self.min_prob), "--combine", self.combine]
            if self.monthly:
                out.append("--monthly")
            if self.monthly or self.reducer != FilterConfig.reducer:
                out += ["--reducer", self.reducer]
            if self.mask_pixels:
                out.append("--mask-pixels")
        if self.codec != FilterConfig.codec:
            out += ["--codec", self.codec]
        return out

    @classmethod
    def from_params(cls, params: dict) -> FilterConfig:
        """Return the config recorded in a view's ``params`` attribute (the :func:`dataclasses.asdict` form).

        Raises:
            UsageError: a key that is no field, or a value of the wrong type or out of range.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise UsageError(f"view parameters {', '.join(unknown)} are not filter parameters "
                             f"({', '.join(sorted(names))}); the view was written by another flair-lake version")
        try:
            return cls(**params)
        except TypeError as exc:
            raise UsageError(f"view parameters {params} have a value of the wrong type ({exc})") from None

    def normalized(self) -> FilterConfig:
        """Return this config with the monthly cube's options at their defaults when it builds no cube: they change
        nothing then, so ``filter --codec zstd`` finds the view ``filter`` built (not one "with other parameters")."""
        if self.monthly:
            return self
        return replace(self, reducer=FilterConfig.reducer, mask_pixels=False, skip_empty_months=False,
                       ref_year=None, codec=FilterConfig.codec)

    def view_name(self) -> str:
        """Return the default name of the view this config produces (stable, readable): every parameter that
        changes its data away from the defaults is in it."""
        if self.is_baseline():
            return BASELINE_VIEW
        name = f"cloud{self.max_cover:g}-prob{self.min_prob:g}-{self.combine}"
        if self.monthly:
            name += f"-monthly-{self.reducer}" + ("-masked" if self.mask_pixels else "")
            name += "-skipempty" if self.skip_empty_months else ""
            name += f"-ref{self.ref_year}" if self.ref_year is not None else ""
            name += f"-{self.codec}" if self.codec != FilterConfig.codec else ""
        return name

    def describe(self) -> str:
        """Return one human line of the parameters (``flair-lake info``)."""
        text = f"cloud {self.max_cover:g}, prob {self.min_prob:g}, {self.combine}"
        if self.monthly:
            text += f", monthly {self.reducer}" + (", masked pixels" if self.mask_pixels else "")
            text += ", empty months skipped" if self.skip_empty_months else ""
            text += f", day offsets to 15 May {self.ref_year}" if self.ref_year is not None else ""
            text += f", {self.codec} cube"
        return ("released baseline: " if self.is_baseline() else "") + text


# --- loader ---------------------------------------------------------------------------------------------------
LOADER_PREFETCH = 4  # batches each loader worker reads ahead


# --- training ---------------------------------------------------------------------------------------------------
# geometric augmentation of the training batches (flair_lake/loader/transform.py): none; dihedral = a flip and a
# rotation by k x 90 degrees; paper = the datapaper's AUG: flips, random resize, random affine (shift-scale-rotate)
AUGMENTS = ("none", "dihedral", "paper")
AUG_P = 0.5  # probability of each of the paper's augmentations (its appendix: "a data augmentation probability of 0.5")
AUG_RESIZE = (0.8, 1.25)  # zoom factor range of the random resize
AUG_SHIFT, AUG_SCALE, AUG_ROTATE = 0.0625, 0.1, 45.0  # shift (fraction of the side), scale (+-), rotation (+-deg)


def augment_mode(value: bool | str) -> str:
    """Return the augmentation name of ``value``: True is "dihedral" (the default), False "none"."""
    mode = {True: "dihedral", False: "none"}.get(value, value) if isinstance(value, bool) else value
    if mode not in AUGMENTS:
        raise UsageError(f"--augment must be one of {', '.join(AUGMENTS)}, got {value!r}")
    return mode


OPTIMIZERS = ("sgd", "adamw")
# the names of flair_lake.models.MODELS, here so that `--model` is checked without importing torch
MODEL_NAMES = ("utt", "utt-fpn", "utt-deeplabv3", "unet", "utae")
AMP_MODES = ("bf16", "fp32")


@dataclass(frozen=True)
class TrainConfig:
    """Parameters of ``flair-lake train``; defaults follow the paper (§4; docs/baseline.md, "Training defaults")."""

    lake: str = DEFAULT_LAKE
    view: str | None = None  # default: the lake's latest view
    model: str = "utt"
    epochs: int = 100
    patience: int = 30  # early stopping on the validation loss
    batch_size: int = 10
    lr: float = 0.001
    optimizer: str = "sgd"  # the baseline: SGD without momentum, constant learning rate
    weight_decay: float = 0.0
    amp: str = "bf16"  # bf16 autocast on CUDA; CPU always runs fp32
    workers: int | None = None
    out: str = "runs/utt"
    resume: bool = False
    seed: int = 2022
    augment: str = "dihedral"  # AUGMENTS; True and False (older configs) mean "dihedral" and "none"
    metadata: bool = False  # feed the encoded aerial metadata (paper's +MTD)
    encoder_weights: str | None = None  # local state dict for the ResNet34 encoder; None: random init
    baseline_quirks: bool = False  # collapsed fusion from batch element 0, as the released code
    train_split: str = "train"
    val_split: str = "val"
    max_batches: int | None = None  # cap batches per epoch (quick runs, demos)
    device: str | None = None  # default: cuda when available

    def __post_init__(self) -> None:
        if self.model not in MODEL_NAMES:
            raise UsageError(f"--model must be one of {', '.join(MODEL_NAMES)}, got {self.model!r}")
        object.__setattr__(self, "augment", augment_mode(self.augment))
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.amp not in AMP_MODES:
            raise UsageError(f"--amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UsageError(f"--lr must be > 0, got {self.lr}")
        if self.workers is not None and self.workers < 0:
            raise UsageError(f"--workers must be >= 0, got {self.workers}")
        if self.max_batches is not None and self.max_batches < 1:
            raise UsageError(f"--max-batches must be >= 1, got {self.max_batches}")


# --- evaluation -------------------------------------------------------------------------------------------------
PREVIEW_SEED = 0  # seed of ``flair-lake preview --random``


@dataclass(frozen=True)
class EvaluateConfig:
    """Defaults of ``flair-lake evaluate`` and ``predict`` and of :func:`flair_lake.training.evaluate.evaluate`."""

    split: str = "test"
    batch_size: int = TrainConfig.batch_size
    examples: int = 4  # patches of lowest pixel accuracy drawn in examples_<split>.png; 0: none
    probabilities: bool = False  # also write PROB_<id>.tif beside the predictions
    tta: bool = False  # test-time augmentation: the mean of 4 flips


# --- experiments ------------------------------------------------------------------------------------------------
EXPERIMENT_SEEDS = 5  # runs per variant of `flair-lake experiment` (the paper: 5 runs of each configuration)
MAP_SPLIT = "test"  # the zones `flair-lake map` maps without --zones: those of the test split

# --- maps -------------------------------------------------------------------------------------------------------
BLENDS = ("cosine", "linear", "none")  # how overlapping windows are combined (flair_lake/maps/grid.py)


@dataclass(frozen=True)
class MapConfig:
    """Parameters of ``flair-lake map`` (docs/maps.md)."""

    tile: int | None = None  # window side, px; None: the checkpoint's patch size (what the model was trained on)
    overlap: int | None = None  # px shared by neighbouring windows; None: a quarter of the tile
    blend: str = "cosine"  # cosine or linear weight ramps over the overlaps; none: crop (nearest window centre)
    # job grid cell, px: the unit of resumption and of Dask tasks. A block recomputes the one row and column of
    # windows it shares with its neighbours, about 2 x (tile - overlap) / block more windows (10 % at 8192 px
    # for 512 px tiles with 128 px overlap); its accumulator holds 13 x tile x block floats (218 MB)
    block: int = 8192
    batch_size: int = 8  # windows per forward pass
    probabilities: bool = False  # also write <name>_prob.tif: 13 class probabilities and the confidence
    device: str | None = None  # default: cuda when available
    workers: int | None = None  # None: blocks run in this process; N: a local Dask cluster of N workers
    scheduler: str | None = None  # a Dask scheduler's address: blocks run on its workers

    def __post_init__(self) -> None:
        if self.blend not in BLENDS:
            raise UsageError(f"--blend must be one of {', '.join(BLENDS)}, got {self.blend!r}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers must be >= 1, got {self.workers}")

    def resolved(self, patch_size: int) -> MapConfig:
        """Return this config with the tile (the checkpoint's ``patch_size``) and overlap defaults filled in.

        Raises:
            UsageError: a tile that is no multiple of 32, an overlap not in [0, tile), a block under the tile.
        """
        tile = self.tile or patch_size
        overlap = tile // 4 if self.overlap is None else self.overlap
        if tile < 32 or tile % 32:
            raise UsageError(f"--tile must be a multiple of 32 (the encoder's output stride), got {tile}")
        if not 0 <= overlap < tile:
            raise UsageError(f"--overlap must be at least 0 and less than --tile ({tile}), got {overlap}")
        if self.block < tile:
            raise UsageError(f"--block must be at least --tile ({tile}), got {self.block}")
        return replace(self, tile=tile, overlap=overlap)
