"""The official FLAIR #2 metric (docs/baseline.md, "Official metric"), accumulated on the device.

One 13x13 confusion matrix summed over the whole evaluation set (rows = truth, columns = prediction); IoU per
class ``C_cc / (row_c + col_c - C_cc)``; mIoU = mean over the first 12 classes of the classes whose IoU is
defined (0/0 classes are left out). 'other' stays in the matrix: predicting a real class on an 'other' pixel is
a false positive of that class. Unlabelled pixels (255) are ignored.
"""

from __future__ import annotations

import numpy as np
import torch

from flair_lake import schema


class ConfusionMatrix:
    """A running confusion matrix over ``num_classes`` classes, kept on the tensors' device."""

    def __init__(self, num_classes: int = schema.NUM_CLASSES, device: torch.device | str = "cpu") -> None:
        self.n = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` are integer tensors of the same shape."""
        valid = target != schema.IGNORE_LABEL
        t, p = target[valid].long(), pred[valid].long()
        self.matrix += torch.bincount(t * self.n + p, minlength=self.n * self.n).view(self.n, self.n)

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another matrix (e.g. from another rank)."""
        self.matrix += other.matrix.to(self.matrix.device)

    def numpy(self) -> np.ndarray:
        """Return the matrix as an int64 array."""
        return self.matrix.cpu().numpy()


def iou_per_class(matrix: np.ndarray) -> np.ndarray:
    """Return the IoU of every class (NaN where undefined: never seen nor predicted)."""
    m = matrix.astype(np.float64)
    tp = np.diag(m)
    union = m.sum(0) + m.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def miou(matrix: np.ndarray) -> float:
    """Return the official mIoU: the mean IoU of classes 0..11 that are defined."""
    iou = iou_per_class(matrix)[: schema.METRIC_CLASSES]
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
