"""The official metric: summed confusion matrix, IoU per class, mIoU over the first 12 classes."""

from __future__ import annotations

import numpy as np
import torch

from flair_lake.training.losses import UTTLoss, class_weights
from flair_lake.training.metrics import ConfusionMatrix, iou_per_class, miou


def _reference_miou(preds, targets):
    """The official procedure from its description: per-patch matrices summed, nanmean of IoU[0:12]."""
    total = np.zeros((13, 13), np.int64)
    for p, t in zip(preds, targets):
        for a, b in zip(t.ravel(), p.ravel()):
            total[a, b] += 1
    ious = []
    for c in range(13):
        tp = total[c, c]
        union = total[c, :].sum() + total[:, c].sum() - tp
        ious.append(tp / union if union else np.nan)
    return total, float(np.nanmean(ious[:12]))


def test_matches_the_official_procedure():
    rng = np.random.default_rng(0)
    preds = [rng.integers(0, 13, (8, 8)) for _ in range(5)]
    targets = [rng.integers(0, 13, (8, 8)) for _ in range(5)]
    targets[0][:2] = 12  # 'other' stays in the matrix
    cm = ConfusionMatrix()
    for p, t in zip(preds, targets):
        cm.update(torch.from_numpy(p), torch.from_numpy(t))
    total, ref = _reference_miou(preds, targets)
    np.testing.assert_array_equal(cm.numpy(), total)
    assert abs(miou(cm.numpy()) - ref) < 1e-12


def test_by_hand_other_counts_as_false_positive_and_absent_classes_are_skipped():
    m = np.zeros((13, 13), np.int64)
    m[0, 0] = 3  # building: 3 right
    m[12, 0] = 1  # an 'other' pixel predicted building: a false positive of building
    m[1, 1] = 2
    iou = iou_per_class(m)
    assert iou[0] == 3 / 4 and iou[1] == 1.0 and np.isnan(iou[5])
    assert miou(m) == (0.75 + 1.0) / 2
    cm = ConfusionMatrix()
    cm.update(torch.tensor([1, 2]), torch.tensor([255, 2]))  # unlabelled pixels are ignored
    assert cm.numpy().sum() == 1


def test_loss_weights_ignore_other_and_plowed_for_the_satellite_head():
    assert class_weights("aerial")[12] == 0 and class_weights("aerial")[11] == 1
    assert class_weights("sentinel")[11] == 0 and class_weights("sentinel")[12] == 0
    logits = torch.randn(2, 13, 4, 4, requires_grad=True)
    only_other = torch.full((2, 4, 4), 12)
    loss = UTTLoss()({"aerial": logits, "sentinel": logits * 2}, only_other)
    assert loss.item() == 0.0  # every pixel has weight 0: no NaN
    label = torch.randint(0, 12, (2, 4, 4))
    ce = torch.nn.functional.cross_entropy
    one_head = UTTLoss()({"aerial": logits, "sentinel": logits}, label)  # U-TAE alone: one head, one loss
    two_heads = UTTLoss()({"aerial": logits, "sentinel": logits.clone()}, label)
    sat = ce(logits, label, weight=class_weights("sentinel"))
    assert torch.allclose(one_head, sat)
    assert torch.allclose(two_heads, sat + ce(logits, label, weight=class_weights("aerial")))
    two_heads.backward()
    assert logits.grad is not None
