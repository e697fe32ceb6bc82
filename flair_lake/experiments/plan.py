"""Experiment plans: the variants of a table, each trained with several seeds (``flair-lake experiment``).

A variant is a model, the filter that builds its Sentinel-2 view, and trainer flags. The datapaper's
enhancements map to them as follows (docs/experiments.md):

- FILT: drop the dates whose window is covered at >= 60 % by snow or cloud, a pixel counting as covered at a
  probability of 50 % (paper §4); without FILT every date is kept (``prob 101``: no pixel is ever covered).
- AVG M: monthly mean composites of the kept dates (the ``--monthly`` cube); without it, the raw kept dates.
- MTD: the encoded aerial metadata (``train --metadata``).
- AUG: the paper's augmentation (``train --augment paper``); without it, none.

Built-in plans: ``table3`` (Table 3: U-TAE, U-Net and U-T&T with each enhancement) and ``table5`` (Table 5:
U-T&T's aerial decoder U-Net, FPN or DeepLabV3, without and with all enhancements), with the paper's numbers.
A YAML plan lists variants with the same keys (see :data:`VARIANT_KEYS`).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flair_lake.config import MODEL_NAMES, FilterConfig, TrainConfig
from flair_lake.errors import UsageError

INPUTS = {"utae": "sat", "unet": "aerial"}  # the INPUT column; every other model reads both
SENTINEL_FREE = ("unet",)
# the filter of each (FILT, AVG M) pair
FILT = {"max_cover": 0.6, "min_prob": 50.0}
NO_FILT = {"max_cover": 1.0, "min_prob": 101.0}
# trainer flags a plan may set (TrainConfig fields)
# (not metadata and augment: the MTD and AUG columns set them)
TRAIN_KEYS = ("epochs", "patience", "batch_size", "lr", "optimizer", "weight_decay", "amp", "encoder_weights",
              "baseline_quirks", "max_batches", "train_split", "val_split", "workers")


@dataclass(frozen=True)
class Variant:
    """One row of a table: a model, its Sentinel-2 filter (None: the model reads none) and trainer flags.

    ``filt``, ``avg_m``, ``mtd`` and ``aug`` are the table's columns (None: "-", not applicable); ``paper`` the
    paper's mIoU of this row ("54.9 ± 0.7"), ``paper_epoch`` its best epoch.
    """

    name: str
    model: str
    filt: bool | None = None
    avg_m: bool | None = None
    mtd: bool | None = None
    aug: bool | None = None
    paper: str | None = None
    paper_epoch: int | None = None
    train: tuple[tuple[str, object], ...] = ()  # extra trainer flags (TRAIN_KEYS), as items

    @property
    def slug(self) -> str:
        """Return a folder name for the variant (letters, digits, - and _)."""
        return re.sub(r"[^A-Za-z0-9_-]+", "-", self.name).strip("-") or "variant"

    @property
    def input(self) -> str:
        return INPUTS.get(self.model, "aerial+sat")

    def filter_config(self) -> FilterConfig | None:
        """Return the filter of this variant's view (None for models without a Sentinel-2 branch)."""
        if self.model in SENTINEL_FREE:
            return None
        return FilterConfig(**(FILT if self.filt else NO_FILT), monthly=bool(self.avg_m))

    def train_flags(self) -> dict:
        """Return the TrainConfig fields this variant sets (the model, MTD, AUG and its extra flags)."""
        flags = {"model": self.model, "metadata": bool(self.mtd), "augment": "paper" if self.aug else "none"}
        flags.update(dict(self.train))
        return flags


@dataclass(frozen=True)
class Plan:
    """A table: its name, variants, and what it reports beside ours (``paper_table``: the paper's number)."""

    name: str
    variants: tuple[Variant, ...]
    paper_table: str | None = None
    per_class: dict = field(default_factory=dict)  # model -> the paper's per-class IoU of its best run (Table 4)


X, V = False, True
TABLE3 = Plan("table3", (
    Variant("UTAE", "utae", X, X, None, None, "36.1 ± 0.3", 16),
    Variant("UTAE +FILT +AVG M", "utae", V, V, None, None, "36.9 ± 0.2", 18),
    Variant("U-Net", "unet", None, None, X, X, "54.7 ± 0.1", 62),
    Variant("U-Net +MTD +AUG", "unet", None, None, V, V, "55.2 ± 0.1", 52),
    Variant("U-T&T", "utt", X, X, X, X, "54.9 ± 0.7", 9),
    Variant("U-T&T +FILT", "utt", V, X, X, X, "55.2 ± 1.4", 11),
    Variant("U-T&T +AVG M", "utt", X, V, X, X, "55.0 ± 0.7", 10),
    Variant("U-T&T +MTD", "utt", X, X, V, X, "54.9 ± 0.6", 7),
    Variant("U-T&T +AUG", "utt", X, X, X, V, "55.5 ± 1.5", 22),
    Variant("U-T&T +FILT +AVG M +MTD +AUG", "utt", V, V, V, V, "56.9 ± 1.1", 21),
), "Table 3", per_class={
    # Table 4: the best run of each (mIoU, then the 12 classes' IoU, in percent)
    "unet": (54.7, 80.1, 47.3, 69.9, 30.8, 79.9, 57.6, 70.1, 23.9, 60.1, 46.5, 54.5, 35.8),
    "utt": (58.6, 83.5, 52.0, 74.0, 43.7, 82.2, 64.2, 73.7, 25.6, 64.6, 47.17, 55.2, 37.0),
})
TABLE5 = Plan("table5", (
    Variant("U-Net decoder", "utt", X, X, X, X, "54.9 ± 0.7"),
    Variant("FPN decoder", "utt-fpn", X, X, X, X, "55.5 ± 1.0"),
    Variant("DeepLabV3 decoder", "utt-deeplabv3", X, X, X, X, "55.8 ± 1.6"),
    Variant("U-Net decoder +FILT +AVG M +MTD +AUG", "utt", V, V, V, V, "56.9 ± 1.1"),
    Variant("FPN decoder +FILT +AVG M +MTD +AUG", "utt-fpn", V, V, V, V, "56.2 ± 0.6"),
    Variant("DeepLabV3 decoder +FILT +AVG M +MTD +AUG", "utt-deeplabv3", V, V, V, V, "57.3 ± 0.9"),
), "Table 5")
BUILTIN = {p.name: p for p in (TABLE3, TABLE5)}

VARIANT_KEYS = ("name", "model", "filt", "avg_m", "mtd", "aug", "paper", "train")


def load_plan(spec: str) -> Plan:
    """Return a built-in plan by name, or the plan of a YAML file.

    A YAML plan::

        name: my-ablation           # optional (default: the file's stem)
        variants:
          - name: U-T&T +FILT
            model: utt              # utt, utt-fpn, utt-deeplabv3, unet, utae
            filt: true              # FILT, AVG M, MTD, AUG: true/false (omit for models without that input)
            avg_m: false
            mtd: false
            aug: false
            paper: "55.2 ± 1.4"     # optional: a number to print beside ours
            train: {lr: 0.01}       # optional trainer flags

    Raises:
        UsageError: an unreadable file, an unknown key or model, a value of the wrong type, two variants of one name.
    """
    if spec in BUILTIN:
        return BUILTIN[spec]
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"PLAN {spec!r} is neither a built-in plan ({', '.join(BUILTIN)}) nor a YAML file")
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("variants"), list) or not doc["variants"]:
        raise UsageError(f"{path}: a plan is a mapping with a non-empty list 'variants'")
    _known(doc, ("name", "variants"), f"{path}: unknown key(s)", "a plan has")
    variants = tuple(_variant(path, k, v) for k, v in enumerate(doc["variants"]))
    names = [v.name for v in variants]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup or len({v.slug for v in variants}) < len(variants):
        raise UsageError(f"{path}: variant names must differ (also as folder names): {', '.join(dup or names)}")
    name = str(doc.get("name") or path.stem)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise UsageError(f"{path}: the plan's name {name!r} names its report files: use letters, digits, . _ -")
    return Plan(name, variants)


def _known(mapping: dict, allowed: tuple[str, ...], what: str, has: str) -> None:
    """Raise UsageError naming the keys of ``mapping`` that are not ``allowed``."""
    unknown = sorted(map(str, set(mapping) - set(allowed)))
    if unknown:
        raise UsageError(f"{what} {', '.join(unknown)}; {has} {', '.join(allowed)}")


def _variant(path: Path, k: int, entry) -> Variant:
    where = f"{path}: variant {k + 1}"
    if not isinstance(entry, dict):
        raise UsageError(f"{where} is not a mapping of {', '.join(VARIANT_KEYS)}")
    _known(entry, VARIANT_KEYS, f"{where}: unknown key(s)", "a variant has")
    model = entry.get("model")
    if model not in MODEL_NAMES:
        raise UsageError(f"{where}: unknown model {model!r}; expected one of {', '.join(MODEL_NAMES)}")
    for key in ("filt", "avg_m", "mtd", "aug"):
        if key in entry and not isinstance(entry[key], bool):
            raise UsageError(f"{where}: {key} must be true or false, got {entry[key]!r}")
    # what each model reads decides which columns apply ("-" in the table) and which must be given
    applies = {"filt": model not in SENTINEL_FREE, "avg_m": model not in SENTINEL_FREE, "mtd": model != "utae",
               "aug": model != "utae"}
    extra = [k for k, ok in applies.items() if not ok and k in entry]
    if extra:
        raise UsageError(f"{where}: {', '.join(extra)} do(es) not apply to model {model} (its column is '-'); "
                         "leave it out")
    missing = [k for k in ("filt", "avg_m") if applies[k] and k not in entry]
    if missing:
        raise UsageError(f"{where}: model {model} reads Sentinel-2: give {' and '.join(missing)} (true or false)")
    train = entry.get("train") or {}
    if not isinstance(train, dict):
        raise UsageError(f"{where}: train must be a mapping of trainer flags")
    _known(train, TRAIN_KEYS, f"{where}: unknown trainer flag(s)", "allowed:")
    v = Variant(str(entry.get("name") or f"variant {k + 1}"), model, entry.get("filt"), entry.get("avg_m"),
                entry.get("mtd"), entry.get("aug"), None if entry.get("paper") is None else str(entry["paper"]),
                None, tuple(sorted(train.items())))
    try:  # the trainer's own checks, now rather than in the middle of the experiment
        TrainConfig(**v.train_flags())
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{where}: {exc}") from None
    return v


def variant_record(v: Variant) -> dict:
    """Return a variant as JSON-ready data (recorded in each run's folder)."""
    out = asdict(v)
    out["train"] = dict(v.train)
    return out


__all__ = ["BUILTIN", "Plan", "TABLE3", "TABLE5", "Variant", "load_plan", "variant_record"]
