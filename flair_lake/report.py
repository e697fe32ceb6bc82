"""Charts of a training run folder: loss and mIoU curves from ``log.csv``, per-class IoU bars from ``iou_<split>.csv``.

Both files are written by :mod:`flair_lake.training.loop` and :mod:`flair_lake.training.evaluate`.
"""

from __future__ import annotations

import csv
from pathlib import Path

from flair_lake.errors import UsageError


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
