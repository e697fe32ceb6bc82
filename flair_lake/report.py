"""Charts of a training run folder: loss and mIoU curves from ``log.csv``, per-class IoU bars from ``iou_<split>.csv``,
and the grid of the worst-predicted patches (true colour, truth, prediction, errors) that evaluation draws.

The CSV files are written by :mod:`flair_lake.training.loop` and :mod:`flair_lake.training.evaluate`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from flair_lake.errors import UsageError
from flair_lake.raw.names import patch_name


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _num(v: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def render_run(run: str | Path, out: str | Path | None = None) -> list[str]:
    """Write ``curves.png`` (log.csv) and ``iou_<split>.png`` (each iou_<split>.csv) of ``run``; return the paths.

    Evaluation draws the other pictures of a run itself: ``confusion_<split>.png`` and ``examples_<split>.png``.

    Raises:
        UsageError: ``run`` is not a folder or holds neither log.csv nor any iou_<split>.csv.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run)
    out = Path(out) if out else run
    logs, ious = run / "log.csv", sorted(run.glob("iou_*.csv"))
    if not run.is_dir() or (not logs.exists() and not ious):
        raise UsageError(f"{run} holds no log.csv nor iou_<split>.csv; give the --out folder of "
                         "`python train/fit.py` (or of train/evaluate.py)")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if logs.exists():
        rows = _read(logs)
        epoch = [_num(r["epoch"]) for r in rows]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        for key in ("train_loss", "val_loss"):
            ax1.plot(epoch, [_num(r.get(key)) for r in rows], "o-", ms=3, label=key)
        ax1.set_xlabel("epoch")
        ax1.set_ylabel("loss")
        ax1.legend()
        ax1.grid(alpha=0.3)
        ax2.plot(epoch, [_num(r.get("val_miou")) for r in rows], "o-", ms=3, color="#2a7f2a")
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("val mIoU")
        ax2.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "curves.png", dpi=100)
        plt.close(fig)
        written.append(str(out / "curves.png"))
    for path in ious:
        rows = _read(path)
        fig, ax = plt.subplots(figsize=(10, 4))
        ax.bar(range(len(rows)), [0.0 if r["iou"] in ("", "None") else _num(r["iou"]) for r in rows],
               color="#4a7fb5")
        ax.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("IoU")
        ax.set_ylim(0, 1)
        ax.set_title(path.stem.replace("_", " "))
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        dst = out / f"{path.stem}.png"
        fig.savefig(dst, dpi=100)
        plt.close(fig)
        written.append(str(dst))
    return written


def class_colours() -> list[str]:
    """Return the official colour of each training class 0..12 ('other' in the raw 'other' colour)."""
    from flair_lake import schema

    return [schema.RAW_CLASSES[c + 1][1] for c in range(schema.METRIC_CLASSES)] + [schema.RAW_CLASSES[19][1]]


def plot_examples(examples: list[dict], path: str | Path, title: str = "") -> str:
    """Draw one row per patch: true colour, truth, prediction and errors (wrong pixels red); return the path.

    Args:
        examples: dicts with ``patch_id``, ``rgb`` (H, W, 3) uint8, ``truth`` and ``pred`` (H, W) training
            classes 0..12, and ``accuracy`` (pixel accuracy of the patch).
        path: PNG to write.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    from flair_lake import schema

    colours = class_colours()
    cmap, norm = ListedColormap(colours), BoundaryNorm(np.arange(-0.5, len(colours)), len(colours))
    n = len(examples)
    fig, axes = plt.subplots(n, 4, figsize=(12.5, 3.0 * n + 0.6), squeeze=False)
    present: set[int] = set()
    for i, ex in enumerate(examples):
        rgb, truth, pred = ex["rgb"], ex["truth"], ex["pred"]
        present.update(int(c) for c in np.unique(truth))
        present.update(int(c) for c in np.unique(pred))
        wrong = pred != truth
        errors = (rgb.astype(np.float32) * 0.35 + 255 * 0.4).astype(np.uint8)  # the image, faded
        errors[wrong] = (220, 20, 20)
        panels = (rgb, truth, pred, errors)
        for j, (ax, img) in enumerate(zip(axes[i], panels)):
            if j in (1, 2):
                ax.imshow(img, cmap=cmap, norm=norm, interpolation="nearest")
            else:
                ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(patch_name(ex['patch_id']), fontsize=9)
        axes[i, 3].set_xlabel(f"pixel accuracy {ex['accuracy']:.3f}", fontsize=8)
    for ax, name in zip(axes[0], ("true colour", "truth", "prediction", "errors (red)")):
        ax.set_title(name, fontsize=10)
    handles = [Patch(facecolor=colours[c], edgecolor="black", lw=0.4, label=f"{c} {schema.CLASS_NAMES[c]}")
               for c in sorted(present)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.6 / (3.0 * n + 0.6) + 0.03, 1, 0.97 if title else 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return str(path)
