"""Batch transform on the device: uint8 -> float, per-band normalisation, and dihedral augmentation.

Flips and 90-degree rotations are drawn per sample and applied identically to the aerial image, the labels and
the Sentinel window about its centre (where the aerial patch sits) -- the released baseline forgets the last
(docs/baseline.md, "Defects fixed by default"). Works on CPU and CUDA tensors alike.
"""

from __future__ import annotations

import torch


def _dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Rotate the last two dims by k x 90 degrees, after an optional horizontal flip."""
    if flip:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


class BatchTransform:
    """Normalise and (optionally) augment a batch dict from :func:`flair_lake.loader.collate`.

    Args:
        band_stats: the lake's ``band_stats`` attrs (aerial and sentinel mean and std per band).
        augment: draw a random flip and rotation per sample.
        channels_last: return the aerial tensor in channels_last memory format (faster convolutions on CUDA).
    """

    def __init__(self, band_stats: dict, *, augment: bool = False, channels_last: bool = False) -> None:
        aer = band_stats.get("aerial", {"mean": [0.0] * 5, "std": [255.0] * 5})
        sen = band_stats.get("sentinel", {"mean": [0.0] * 10, "std": [10_000.0] * 10})
        self.a_mean = torch.tensor(aer["mean"]).view(1, -1, 1, 1)
        self.a_std = torch.tensor(aer["std"]).clamp_min(1e-3).view(1, -1, 1, 1)
        self.s_mean = torch.tensor(sen["mean"]).view(1, 1, -1, 1, 1)
        self.s_std = torch.tensor(sen["std"]).clamp_min(1e-3).view(1, 1, -1, 1, 1)
        self.augment, self.channels_last = augment, channels_last

    def __call__(self, batch: dict, device: torch.device | str = "cpu", generator: torch.Generator | None = None
                 ) -> dict:
        """Return a new batch on ``device`` with float inputs (aerial, sentinel) and augmented geometry."""
        dev = torch.device(device)
        out = {k: (v.to(dev, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        aerial = (out["aerial"].float() - self.a_mean.to(dev)) / self.a_std.to(dev)
        sentinel = (out["sentinel"].float() - self.s_mean.to(dev)) / self.s_std.to(dev)
        sentinel = sentinel * (~out["pad_mask"])[:, :, None, None, None]  # padded steps stay exactly 0
        label = out["label"].long()  # compact batches carry uint8 labels
        if self.augment:
            b = aerial.shape[0]
            k = torch.randint(0, 4, (b,), generator=generator)
            flip = torch.randint(0, 2, (b,), generator=generator).bool()
            aerial, label, sentinel = aerial.clone(), label.clone(), sentinel.clone()
            for kk in range(4):
                for ff in (False, True):
                    sel = ((k == kk) & (flip == ff)).nonzero().flatten().tolist()
                    if not sel or (kk == 0 and not ff):
                        continue
                    aerial[sel] = _dihedral(aerial[sel], kk, ff)
                    label[sel] = _dihedral(label[sel], kk, ff)
                    sentinel[sel] = _dihedral(sentinel[sel], kk, ff)
        if self.channels_last:
            aerial = aerial.contiguous(memory_format=torch.channels_last)
        out.update(aerial=aerial, label=label, sentinel=sentinel)
        return out
