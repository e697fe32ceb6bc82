"""The two cross-entropy losses of U-T&T with the paper's class weights (docs/baseline.md, "Losses")."""

from __future__ import annotations

import torch

from flair_lake import schema


def class_weights(head: str) -> torch.Tensor:
    """Return the class weights of a head: 'aerial' ('other' 0) or 'sentinel' ('plowed land' and 'other' 0)."""
    w = torch.ones(schema.NUM_CLASSES)
    w[schema.OTHER_CLASS] = 0.0
    if head == "sentinel":
        w[11] = 0.0  # plowed land cannot be told at 10 m
    return w


class UTTLoss(torch.nn.Module):
    """Sum of the aerial and satellite cross-entropies; a weight of 0 acts as ignore (mean over weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.aerial = torch.nn.CrossEntropyLoss(weight=class_weights("aerial"), ignore_index=schema.IGNORE_LABEL)
        self.sentinel = torch.nn.CrossEntropyLoss(weight=class_weights("sentinel"),
                                                  ignore_index=schema.IGNORE_LABEL)

    def forward(self, out: dict[str, torch.Tensor], label: torch.Tensor) -> torch.Tensor:
        """Return the total loss of a model output dict against (B, P, P) int64 labels."""
        loss = label.new_zeros((), dtype=torch.float32)
        if "sentinel" in out:
            # the satellite head is trained on the labels of the aerial footprint (same augmentation applied)
            loss = loss + self.sentinel(out["sentinel"].float(), label)
        if "aerial" in out and out["aerial"] is not out.get("sentinel"):  # U-TAE alone has one head
            loss = loss + self.aerial(out["aerial"].float(), label)
        return _nan_safe(loss)


def _nan_safe(loss: torch.Tensor) -> torch.Tensor:
    """Return 0 for a batch whose every pixel has weight 0 (CrossEntropy's 0/0), keeping the graph."""
    return torch.nan_to_num(loss, nan=0.0)
