"""Batch transform on the device: uint8 -> float, per-band normalisation, and geometric augmentation.

Two augmentations (``augment``, :data:`flair_lake.config.AUGMENTS`), drawn per sample and applied identically to
the aerial image, the labels and the Sentinel window about its centre (where the aerial patch sits) -- the
released baseline forgets the last (docs/baseline.md, "Defects fixed by default"):

- ``dihedral``: a flip and a rotation by k x 90 degrees (exact pixel moves).
- ``paper``: the datapaper's AUG (flip, resize, random affine): horizontal and vertical flips, a random resize
  (zoom) and a random shift-scale-rotate, each with probability :data:`~flair_lake.config.AUG_P`, composed into
  one affine map per sample and resampled once: bilinear for the images, nearest for the labels, whose pixels
  brought in from outside the patch are ignored by the loss. The Sentinel window gets the same map in metres
  (its 40 x 40 pixels span 400 m where the patch spans 102.4 m).

Works on CPU and CUDA tensors alike.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from flair_lake import config, schema


def _dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Rotate the last two dims by k x 90 degrees, after an optional horizontal flip."""
    if flip:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


class BatchTransform:
    """Normalise and (optionally) augment a batch dict from :func:`flair_lake.loader.collate`.

    Args:
        band_stats: the lake's ``band_stats`` attrs (aerial and sentinel mean and std per band).
        augment: ``"none"``, ``"dihedral"`` or ``"paper"`` (see the module docstring); True is ``"dihedral"``.
        channels_last: return the aerial tensor in channels_last memory format (faster convolutions on CUDA).
    """

    def __init__(self, band_stats: dict, *, augment: bool | str = False, channels_last: bool = False) -> None:
        aer = band_stats.get("aerial", {"mean": [0.0] * 5, "std": [255.0] * 5})
        sen = band_stats.get("sentinel", {"mean": [0.0] * 10, "std": [10_000.0] * 10})
        self.a_mean = torch.tensor(aer["mean"]).view(1, -1, 1, 1)
        self.a_std = torch.tensor(aer["std"]).clamp_min(1e-3).view(1, -1, 1, 1)
        self.s_mean = torch.tensor(sen["mean"]).view(1, 1, -1, 1, 1)
        self.s_std = torch.tensor(sen["std"]).clamp_min(1e-3).view(1, 1, -1, 1, 1)
        self.augment = config.augment_mode(augment)
        self.channels_last = channels_last

    def __call__(self, batch: dict, device: torch.device | str = "cpu", generator: torch.Generator | None = None
                 ) -> dict:
        """Return a new batch on ``device`` with float inputs (aerial, sentinel) and augmented geometry."""
        dev = torch.device(device)
        out = {k: (v.to(dev, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        aerial = (out["aerial"].float() - self.a_mean.to(dev)) / self.a_std.to(dev)
        sentinel = (out["sentinel"].float() - self.s_mean.to(dev)) / self.s_std.to(dev)
        sentinel = sentinel * (~out["pad_mask"])[:, :, None, None, None]  # padded steps stay exactly 0
        label = out["label"].long()  # compact batches carry uint8 labels
        if self.augment == "paper":
            aerial, label, sentinel = paper_augment(aerial, label, sentinel, generator)
        elif self.augment == "dihedral":
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


def _draw(b: int, lo: float, hi: float, generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(b, generator=generator, dtype=torch.float64)


def paper_theta(b: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return (b, 2, 3) float64 affine maps from output to input coordinates (``affine_grid``'s normalised
    units: the patch spans -1..1), one per sample: flips, resize and shift-scale-rotate, each with probability
    AUG_P, in that order."""
    p = config.AUG_P
    on = [torch.rand(b, generator=generator) < p for _ in range(4)]  # hflip, vflip, resize, affine
    m = torch.eye(3, dtype=torch.float64).repeat(b, 1, 1)
    m[:, 0, 0] = torch.where(on[0], -1.0, 1.0)
    m[:, 1, 1] = torch.where(on[1], -1.0, 1.0)
    zoom = torch.where(on[2], _draw(b, *config.AUG_RESIZE, generator), torch.ones(b, dtype=torch.float64))
    angle = torch.where(on[3], _draw(b, -config.AUG_ROTATE, config.AUG_ROTATE, generator) * math.pi / 180, 0.0)
    scale = torch.where(on[3], _draw(b, 1 - config.AUG_SCALE, 1 + config.AUG_SCALE, generator), 1.0)
    shift = [torch.where(on[3], _draw(b, -config.AUG_SHIFT, config.AUG_SHIFT, generator) * 2, 0.0)
             for _ in range(2)]  # a fraction of the side; the side spans 2 normalised units
    # the output pixel at u comes from the input at A u: A = flips o (zoom * scale * rotation)^-1, then shifted
    k = 1 / (zoom * scale)
    cos, sin = torch.cos(angle) * k, torch.sin(angle) * k
    affine = torch.zeros(b, 3, 3, dtype=torch.float64)
    affine[:, 0, 0], affine[:, 0, 1], affine[:, 0, 2] = cos, -sin, shift[0]
    affine[:, 1, 0], affine[:, 1, 1], affine[:, 1, 2] = sin, cos, shift[1]
    affine[:, 2, 2] = 1
    return (m @ affine)[:, :2]


def paper_augment(aerial: torch.Tensor, label: torch.Tensor, sentinel: torch.Tensor,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply the paper's AUG to a normalised batch: (aerial, label, sentinel) resampled by one affine map per
    sample (:func:`paper_theta`); label pixels from outside the patch become IGNORE_LABEL."""
    b = aerial.shape[0]
    theta = paper_theta(b, generator)
    dev = aerial.device
    grid = F.affine_grid(theta.float().to(dev), list(aerial.shape), align_corners=False)
    aerial = F.grid_sample(aerial, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    shifted = (label.float() + 1)[:, None]  # 0 marks "outside" after sampling with zero padding
    shifted = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0]
    label = torch.where(shifted == 0, schema.IGNORE_LABEL, shifted.long() - 1)
    if sentinel.numel():
        t, c, h, w = sentinel.shape[1:]
        ratio = schema.PATCH_FOOTPRINT_M / (w * schema.S2_PIXEL_M)  # the patch's side in the window's units
        theta_s = theta.clone()
        theta_s[:, :, 2] *= ratio  # the same shift in metres; rotations, flips and scales are the same
        g = F.affine_grid(theta_s.float().to(dev), [b, t * c, h, w], align_corners=False)
        sentinel = F.grid_sample(sentinel.reshape(b, t * c, h, w), g, mode="bilinear", padding_mode="zeros",
                                 align_corners=False).reshape(b, t, c, h, w)
    return aerial, label, sentinel
