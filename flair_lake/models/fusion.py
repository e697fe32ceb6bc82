"""The U-T&T fusion module: U-TAE features added to the aerial encoder's features (paper §4, appendix A.5.2).

For each fused encoder stage of width C and size H x W, two terms are added to the stage's features:

- **cropped**: the U-TAE map's centre crop under the aerial footprint (10 x 10 S2 pixels = 100 m ~ 102.4 m),
  a 1x1 conv to C channels, resized bilinearly to H x W;
- **collapsed**: the spatial mean of the whole U-TAE map (40 x 40 = 400 m of context), a 3-layer MLP to C,
  broadcast over H x W.

Differences from the released code (docs/baseline.md, "Fusion module" and "Defects fixed by default"): the
collapsed term is computed per sample (the release uses batch element 0's map for the whole batch;
``baseline_quirks=True`` reproduces that), it is broadcast rather than materialised with ``.repeat``, and stages
the decoder never reads (stage 0, the raw input image, for U-Net) get no fusion module at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flair_lake.schema import S2_CENTRE_CROP


def centre_crop(x: torch.Tensor, size: int = S2_CENTRE_CROP) -> torch.Tensor:
    """Return the central ``size x size`` window of (..., H, W), placed as torchvision's CenterCrop does."""
    h, w = x.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"cannot crop {size}x{size} from a {h}x{w} map")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[..., top:top + size, left:left + size]  # rows 15..24 of a 40x40 window


class CollapsedMLP(nn.Sequential):
    """Linear-Dropout(0.3)-ReLU twice, then Linear; widths step by ``int(|c_in - c_out| / 3)``.

    Equal widths use ``c_in -> 2 c_in -> 2 c_in -> c_out``, as in the released ``FM_collapsed``.
    """

    def __init__(self, c_in: int, c_out: int, *, dropout: float = 0.3) -> None:
        step = int(abs(c_in - c_out) / 3)
        if c_in < c_out:
            w1, w2 = c_in + step, c_in + 2 * step
        elif c_in > c_out:
            w1, w2 = c_in - step, c_in - 2 * step
        else:
            w1 = w2 = 2 * c_in
        super().__init__(nn.Linear(c_in, w1), nn.Dropout(dropout), nn.ReLU(),
                         nn.Linear(w1, w2), nn.Dropout(dropout), nn.ReLU(),
                         nn.Linear(w2, c_out))


class FusionStage(nn.Module):
    """Cropped and collapsed terms for one encoder stage of width ``channels``."""

    def __init__(self, utae_channels: int, channels: int) -> None:
        super().__init__()
        self.cropped = nn.Conv2d(utae_channels, channels, kernel_size=1)
        self.collapsed = CollapsedMLP(utae_channels, channels)

    def forward(self, feature: torch.Tensor, crop: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        """Return feature (B, C, H, W) + resized conv(crop (B, U, c, c)) + MLP(summary (B or 1, U))."""
        local = F.interpolate(self.cropped(crop), size=feature.shape[-2:], mode="bilinear",
                              align_corners=False)  # B x C x H x W
        context = self.collapsed(summary)[:, :, None, None]  # B x C x 1 x 1, broadcast over H x W
        return feature + local.to(feature.dtype) + context.to(feature.dtype)


class Fusion(nn.Module):
    """Fuse a U-TAE map into the chosen stages of an encoder's feature list.

    Args:
        utae_channels: channels of the U-TAE map (64).
        stage_channels: widths of all encoder stages, stage 0 (the input) first.
        stages: indices of the stages to fuse; the others pass through untouched.
        crop: side of the centre crop under the aerial footprint, in S2 pixels.
        baseline_quirks: compute the collapsed term from batch element 0 for every sample, as the
            released code does (docs/baseline.md, "Defects fixed by default").
    """

    def __init__(self, utae_channels: int, stage_channels: Sequence[int], stages: Sequence[int], *,
                 crop: int = S2_CENTRE_CROP, baseline_quirks: bool = False) -> None:
        super().__init__()
        self.crop, self.baseline_quirks = crop, baseline_quirks
        self.stages = nn.ModuleDict({str(i): FusionStage(utae_channels, stage_channels[i]) for i in stages})

    def forward(self, features: Sequence[torch.Tensor], utae_map: torch.Tensor) -> list[torch.Tensor]:
        """Return a new feature list with the fused stages replaced.

        Args:
            features: encoder outputs, stage 0 first, each (B, C_i, H_i, W_i).
            utae_map: (B, U, W, W) last U-TAE decoder map.
        """
        crop = centre_crop(utae_map, self.crop)  # B x U x c x c
        source = utae_map[:1] if self.baseline_quirks else utae_map  # release: sample 0 for everyone
        summary = source.float().mean(dim=(-2, -1))  # B (or 1) x U
        out = list(features)
        for key, stage in self.stages.items():
            i = int(key)
            out[i] = stage(out[i], crop, summary)
        return out
