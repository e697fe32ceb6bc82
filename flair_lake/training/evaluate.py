"""Evaluate a checkpoint with the official metric, and write georeferenced predictions.

Predictions are ``PRED_<id>.tif``: one band of classes 0..12 (uint8, LZW), with the patch's own transform and
CRS from the lake -- the released baseline's are not georeferenced. ``probabilities`` adds
``PROB_<id>.tif``: 13 bands of softmax probabilities scaled to 0..255.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import torch

from flair_lake import lake as lk
from flair_lake import schema
from flair_lake.config import EvaluateConfig, TrainConfig
from flair_lake.errors import FlairLakeError
from flair_lake.loader import BatchTransform, make_loader
from flair_lake.raw.names import ID_DIGITS
from flair_lake.training.checkpoint import CheckpointError, load_weights, read_checkpoint
from flair_lake.training.loop import _autocast, forward, iou_table
from flair_lake.training.metrics import ConfusionMatrix, miou

log = logging.getLogger(__name__)


def load_checkpoint(path: str | Path, device: torch.device):
    """Return (model in eval mode, checkpoint dict) of a checkpoint written by ``fit``."""
    from flair_lake.models import create_model

    ck = read_checkpoint(path)
    try:
        model = create_model(ck["model_name"], **ck.get("model_kwargs", {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot build model {ck['model_name']!r} with options "
                              f"{ck.get('model_kwargs', {})} ({exc}); was it written by another version?") from exc
    load_weights(model, ck, path)
    return model.to(device).eval(), ck


def predict_logits(model, batch: dict, *, tta: bool = False) -> torch.Tensor:
    """Return aerial logits (B, 13, P, P); with ``tta`` the mean softmax over 4 flips of aerial and Sentinel."""
    if not tta:
        return forward(model, batch)["aerial"].float()
    probs = 0
    for dims in ((), (-1,), (-2,), (-2, -1)):
        flipped = dict(batch)
        if dims:
            flipped["aerial"] = torch.flip(batch["aerial"], dims)
            flipped["sentinel"] = torch.flip(batch["sentinel"], dims)
        out = forward(model, flipped)["aerial"].float().softmax(1)
        probs = probs + (torch.flip(out, dims) if dims else out)
    return torch.log(probs / 4)


@torch.no_grad()
def evaluate(ckpt: str | Path, lake: str, *, split: str = EvaluateConfig.split, view: str | None = None,
             out_dir: str | Path | None = None, predict_dir: str | Path | None = None,
             probabilities: bool = EvaluateConfig.probabilities, batch_size: int = EvaluateConfig.batch_size,
             workers: int | None = None, device: str | None = None, max_batches: int | None = None,
             tta: bool = EvaluateConfig.tta, examples: int = EvaluateConfig.examples) -> dict:
    """Evaluate ``ckpt`` on a split of ``lake``; write metrics (and predictions) and return the metrics.

    With ``out_dir`` and labels, ``examples_<split>.png`` shows the ``examples`` patches of lowest pixel accuracy
    (true colour, truth, prediction, errors); 0 draws none.
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, ck = load_checkpoint(ckpt, dev)
    loader = make_loader(lake, view=view or trained_view(lake, ck), split=split, batch_size=batch_size,
                         num_workers=workers, shuffle=False)
    changes = lk.provenance_changes(ck.get("trained_on"), loader.dataset.provenance)
    if changes:
        log.warning("%s was trained on other data than it is evaluated on: %s", ckpt, "; ".join(changes))
    if len(loader.dataset) == 0:
        raise FlairLakeError(f"split {split!r} has no patches in {lake}")
    tf = BatchTransform(ck.get("band_stats") or lk.open_lake(lake).attrs.get("band_stats", {}),
                        channels_last=dev.type == "cuda")
    amp = (ck.get("config") or {}).get("amp", TrainConfig.amp)
    cm = ConfusionMatrix(device=dev)
    root = lk.open_lake(lake)
    transforms, epsg = root["transform"][:], root["crs_epsg"][:]
    if predict_dir:
        Path(predict_dir).mkdir(parents=True, exist_ok=True)
    labelled = bool(loader.dataset.has_label.any())
    worst: list[dict] = []  # the `examples` patches of lowest pixel accuracy so far, best last
    for i, raw in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        batch = tf(raw, dev)
        with _autocast(dev, amp):
            logits = predict_logits(model, batch, tta=tta)
        pred = logits.argmax(1)
        if labelled:
            cm.update(pred, batch["label"])
            if examples and out_dir:
                _keep_worst(worst, examples, raw, pred, batch["label"])
        if predict_dir:
            prob = torch.softmax(logits, 1) if probabilities else None
            for k in range(pred.shape[0]):
                row = int(raw["row"][k])
                _write_prediction(Path(predict_dir), int(raw["patch_id"][k]), pred[k].to(torch.uint8).cpu().numpy(),
                                  transforms[row], int(epsg[row]),
                                  None if prob is None else (prob[k] * 255).round().to(torch.uint8).cpu().numpy())
    matrix = cm.numpy()
    result = {"checkpoint": str(ckpt), "split": split, "view": loader.dataset.view,
              "tag": report_tag(split, loader.dataset.provenance["view"],
                                schema.view_generation_id(ck["view"]) if ck.get("view") else None),
              "patches": len(loader.dataset), "labelled": labelled,
              "miou": miou(matrix) if labelled else None, "per_class_iou": iou_table(matrix) if labelled else None,
              "confusion_matrix": matrix.tolist()}
    if out_dir:
        write_reports(result, Path(out_dir))
        if worst:
            from flair_lake.report import plot_examples

            plot_examples(worst, Path(out_dir) / f"examples_{result['tag']}.png",
                          title=f"{result['tag']}: the {len(worst)} patches of lowest pixel accuracy")
    return result


def trained_view(lake: str, ck: dict) -> str | None:
    """Return the exact view generation a checkpoint was trained on (``name~k``), or its view's current
    generation when that one was collected since (the difference is reported)."""
    trained = ck.get("view")
    if trained is None:
        return None
    views = lk.open_lake(lake).get(schema.VIEWS_GROUP)
    if views is not None and schema.view_generation(*schema.view_name_of(trained)) in views:
        return trained
    return schema.view_name_of(trained)[0]


def report_tag(split, view: str | None, trained_view: str | None) -> str:
    """Return the name part of a split's report files: the split (or its domains joined by '+'), with the
    view appended when it is not the one the checkpoint was trained on (so fit's own reports are kept)."""
    tag = split if isinstance(split, str) else "+".join(split)
    return tag if view == trained_view else f"{tag}-{view}"


def _keep_worst(worst: list[dict], k: int, raw: dict, pred: torch.Tensor, truth: torch.Tensor) -> None:
    """Add this batch's patches to ``worst`` where they are among the ``k`` of lowest pixel accuracy."""
    acc = (pred == truth).float().mean((1, 2)).cpu().numpy()
    for j in np.argsort(acc, kind="stable"):
        if len(worst) == k and acc[j] >= worst[-1]["accuracy"]:
            break
        worst.append({"accuracy": float(acc[j]), "patch_id": int(raw["patch_id"][j]),
                      "rgb": raw["aerial"][j, :3].permute(1, 2, 0).cpu().numpy(),
                      "truth": truth[j].cpu().numpy(), "pred": pred[j].cpu().numpy()})
        worst.sort(key=lambda e: e["accuracy"])
        del worst[k:]


def _write_prediction(folder: Path, pid: int, pred: np.ndarray, gdal_transform, epsg: int,
                      prob: np.ndarray | None) -> None:
    """Write PRED_<id>.tif (and PROB_<id>.tif) georeferenced like the input patch."""
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS

    profile = {"driver": "GTiff", "height": pred.shape[0], "width": pred.shape[1], "dtype": "uint8",
               "compress": "lzw", "transform": Affine.from_gdal(*gdal_transform),
               "crs": CRS.from_epsg(epsg) if epsg else None}
    with rasterio.open(folder / f"PRED_{pid:0{ID_DIGITS}d}.tif", "w", count=1, **profile) as dst:
        dst.write(pred, 1)
    if prob is not None:
        with rasterio.open(folder / f"PROB_{pid:0{ID_DIGITS}d}.tif", "w", count=prob.shape[0], **profile) as dst:
            dst.write(prob)


def write_reports(result: dict, out: Path) -> None:
    """Write metrics JSON, per-class IoU CSV, the confusion matrix CSV and its row-normalised plot."""
    out.mkdir(parents=True, exist_ok=True)
    tag = result["tag"]
    (out / f"metrics_{tag}.json").write_text(json.dumps(result, indent=1))
    if not result["labelled"]:
        return
    with open(out / f"iou_{tag}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["class", "name", "iou"])
        w.writeheader()
        w.writerows(result["per_class_iou"])
    matrix = np.array(result["confusion_matrix"])
    np.savetxt(out / f"confusion_{tag}.csv", matrix, fmt="%d", delimiter=",",
               header=",".join(schema.CLASS_NAMES))
    with np.errstate(invalid="ignore", divide="ignore"):
        np.save(out / f"confusion_{tag}_normalised.npy", np.nan_to_num(matrix / matrix.sum(1, keepdims=True)))
    plot_confusion(matrix, out / f"confusion_{tag}.png", title=f"{tag}: mIoU {result['miou']:.4f}")


def plot_confusion(matrix: np.ndarray, path: Path, title: str = "") -> None:
    """Save the row-normalised confusion matrix as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with np.errstate(invalid="ignore", divide="ignore"):
        norm = matrix / matrix.sum(1, keepdims=True)
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.imshow(np.nan_to_num(norm), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(schema.CLASS_NAMES)), schema.CLASS_NAMES, rotation=90, fontsize=7)
    ax.set_yticks(range(len(schema.CLASS_NAMES)), schema.CLASS_NAMES, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    for (r, c), v in np.ndenumerate(np.nan_to_num(norm)):
        if v >= 0.01:
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=5, color="white" if v > 0.5 else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
