"""U-TAE: a U-Net over each Sentinel-2 date, a lightweight temporal attention (L-TAE) at the bottom.

Our own implementation of the U-TAE of Sainte Fare Garnot & Landrieu (ICCV 2021) in the configuration of the
FLAIR #2 baseline (docs/baseline.md, "U-TAE branch"): input 10 bands, encoder and decoder widths [64, 64, 128, 128],
strided convolutions 4/2/1, L-TAE with 16 heads, d_model 256, d_k 4, MLP [256, 128], 'att_group' skips.

What differs from the released code, on purpose:

- the padding mask is an explicit ``(B, T)`` bool argument (True = padded), never guessed from zero frames;
- padded frames are never convolved (no dummy forward pass either), and the L-TAE input GroupNorm takes its
  statistics over the valid dates only, so a sample's output does not depend on how much padding its batch
  adds (docs/baseline.md, "Defects fixed by default");
- padded dates get exactly zero attention (not ``exp(-1000)``), and a sample with no valid date at all gets
  zero attention everywhere instead of a uniform average of padding;
- the unused ``out_conv`` classification head is not built: the model returns the last decoder map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flair_lake.errors import UsageError


def _group_norm(channels: int) -> nn.GroupNorm:
    """Return the encoder's GroupNorm: 4 groups (utae-paps ``ConvLayer`` default)."""
    return nn.GroupNorm(4, channels)


class ConvNormReLU(nn.Sequential):
    """Conv2d (reflect padding) -> norm -> ReLU; the unit of every U-TAE conv block."""

    def __init__(self, c_in: int, c_out: int, *, norm: str, kernel: int = 3, stride: int = 1,
                 padding: int = 1) -> None:
        conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, padding_mode="reflect")
        super().__init__(conv, _group_norm(c_out) if norm == "group" else nn.BatchNorm2d(c_out), nn.ReLU())


class InConv(nn.Sequential):
    """First block, shared over dates: two 3x3 convs at full resolution."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(ConvNormReLU(c_in, c_out, norm="group"), ConvNormReLU(c_out, c_out, norm="group"))


class DownBlock(nn.Module):
    """Strided conv (halves H and W), a 3x3 conv changing the width, and a residual 3x3 conv."""

    def __init__(self, c_in: int, c_out: int, *, kernel: int = 4, stride: int = 2, padding: int = 1) -> None:
        super().__init__()
        self.down = ConvNormReLU(c_in, c_in, norm="group", kernel=kernel, stride=stride, padding=padding)
        self.conv1 = ConvNormReLU(c_in, c_out, norm="group")
        self.conv2 = ConvNormReLU(c_out, c_out, norm="group")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map N x C_in x H x W to N x C_out x H/2 x W/2 (N = valid dates of the batch)."""
        x = self.conv1(self.down(x))
        return x + self.conv2(x)


class UpBlock(nn.Module):
    """Transposed conv (doubles H and W), concatenation with the aggregated skip, two 3x3 convs, BatchNorm."""

    def __init__(self, c_in: int, c_out: int, c_skip: int, *, kernel: int = 4, stride: int = 2,
                 padding: int = 1) -> None:
        super().__init__()
        self.skip_conv = nn.Sequential(nn.Conv2d(c_skip, c_skip, 1), nn.BatchNorm2d(c_skip), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(c_in, c_out, kernel, stride=stride, padding=padding),
                                nn.BatchNorm2d(c_out), nn.ReLU())
        self.conv1 = ConvNormReLU(c_out + c_skip, c_out, norm="batch")
        self.conv2 = ConvNormReLU(c_out, c_out, norm="batch")

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Map B x C_in x h x w and a B x C_skip x 2h x 2w skip to B x C_out x 2h x 2w."""
        x = torch.cat([self.up(x), self.skip_conv(skip)], dim=1)  # B x (C_out + C_skip) x 2h x 2w
        x = self.conv1(x)
        return x + self.conv2(x)


class MaskedGroupNorm(nn.Module):
    """GroupNorm over (channels of a group x valid dates), per sample and pixel; padded dates come out as 0.

    The released L-TAE normalises over all T steps, zero padding included, which makes a sample's features
    depend on the batch's longest series (docs/baseline.md, "Defects fixed by default"). Here the statistics use
    valid dates only.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"num_channels {num_channels} is not a multiple of num_groups {num_groups}")
        self.num_groups, self.eps = num_groups, eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Normalise x (B, T, C, H, W) using the dates where valid (B, T) bool is True; return float32."""
        b, t, c, h, w = x.shape
        g = self.num_groups
        xg = x.float().view(b, t, g, c // g, h, w)  # B x T x G x C/G x H x W
        keep = valid.to(xg.dtype).view(b, t, 1, 1, 1, 1)
        count = (keep.sum(dim=1, keepdim=True) * (c // g)).clamp_min(1.0)  # B x 1 x 1 x 1 x 1 x 1
        mean = (xg * keep).sum(dim=(1, 3), keepdim=True) / count  # B x 1 x G x 1 x H x W
        var = ((xg - mean).square() * keep).sum(dim=(1, 3), keepdim=True) / count
        xg = (xg - mean) * torch.rsqrt(var + self.eps) * keep
        out = xg.view(b, t, c, h, w) * self.weight.view(1, 1, c, 1, 1) + self.bias.view(1, 1, c, 1, 1)
        return out * keep.view(b, t, 1, 1, 1)


class PositionalEncoding(nn.Module):
    """Sinusoidal encoding of day offsets: d values with period ``T**(2*floor(i/2)/d)``, repeated per head."""

    def __init__(self, d: int, *, period: float = 1000.0, repeat: int = 1) -> None:
        super().__init__()
        i = torch.arange(d, dtype=torch.float64)
        denom = torch.pow(period, 2 * torch.div(i, 2, rounding_mode="floor") / d)
        self.register_buffer("denom", denom.float(), persistent=False)
        self.repeat = repeat

    def forward(self, days: torch.Tensor) -> torch.Tensor:
        """Map day offsets (B, T) int or float to (B, T, d * repeat) float32."""
        angle = days.float()[..., None] / self.denom  # B x T x d
        table = torch.empty_like(angle)
        table[..., 0::2] = torch.sin(angle[..., 0::2])
        table[..., 1::2] = torch.cos(angle[..., 1::2])
        return table.repeat(1, 1, self.repeat)  # B x T x (d * repeat): every head sees the same d values


class LTAE(nn.Module):
    """Lightweight temporal attention encoder applied to every pixel: (B, T, C, h, w) -> (B, C_out, h, w).

    One learnt query per head attends over the dates; keys come from a linear map of the normalised,
    projected, position-encoded inputs; values are the head's slice of those inputs. The heads' outputs are
    concatenated and passed through an MLP (Linear, BatchNorm, ReLU), dropout and a GroupNorm.
    """

    def __init__(self, in_channels: int = 128, *, n_head: int = 16, d_k: int = 4, d_model: int = 256,
                 mlp: Sequence[int] = (256, 128), dropout: float = 0.2, attn_dropout: float = 0.1,
                 period: float = 1000.0) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model {d_model} is not a multiple of n_head {n_head}")
        if mlp[0] != d_model:
            raise ValueError(f"the MLP must start at d_model {d_model}, got {list(mlp)}")
        self.n_head, self.d_k = n_head, d_k
        self.in_norm = MaskedGroupNorm(n_head, in_channels)
        self.in_proj = nn.Linear(in_channels, d_model)
        self.positions = PositionalEncoding(d_model // n_head, period=period, repeat=n_head)
        self.query = nn.Parameter(torch.empty(n_head, d_k))
        self.key = nn.Linear(d_model, n_head * d_k)
        nn.init.normal_(self.query, std=math.sqrt(2.0 / d_k))  # as the reference L-TAE
        nn.init.normal_(self.key.weight, std=math.sqrt(2.0 / d_k))
        self.attn_dropout = nn.Dropout(attn_dropout)
        layers: list[nn.Module] = []
        for a, b in zip(mlp[:-1], mlp[1:]):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
        self.mlp = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.out_norm = nn.GroupNorm(n_head, mlp[-1])

    def forward(self, x: torch.Tensor, days: torch.Tensor, pad_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a series.

        Args:
            x: (B, T, C, h, w) float feature maps, one per date.
            days: (B, T) int64 day offsets.
            pad_mask: (B, T) bool, True on padded dates.

        Returns:
            (B, C_out, h, w) float map and (B, n_head, T, h, w) attention weights (0 on padded dates).
        """
        b, t, _, h, w = x.shape
        valid = ~pad_mask
        z = self.in_norm(x, valid).permute(0, 3, 4, 1, 2)  # B x h x w x T x C
        z = self.in_proj(z) + self.positions(days)[:, None, None]  # B x h x w x T x d_model
        keys = self.key(z).unflatten(-1, (self.n_head, self.d_k))  # B x h x w x T x n_head x d_k
        scores = torch.einsum("byxtnk,nk->byxnt", keys, self.query.to(keys.dtype)) / math.sqrt(self.d_k)
        blocked = pad_mask[:, None, None, None, :]  # B x 1 x 1 x 1 x T
        scores = scores.float().masked_fill(blocked, torch.finfo(torch.float32).min)
        attn = torch.softmax(scores, dim=-1) * valid[:, None, None, None, :]  # all-padded series -> all 0
        attn = self.attn_dropout(attn)  # B x h x w x n_head x T
        values = z.unflatten(-1, (self.n_head, -1))  # B x h x w x T x n_head x d_model/n_head
        out = torch.einsum("byxnt,byxtnd->byxnd", attn.to(values.dtype), values)  # B x h x w x n_head x d
        out = self.dropout(self.mlp(out.reshape(b * h * w, -1)))  # (B*h*w) x C_out, heads concatenated
        out = self.out_norm(out).view(b, h, w, -1).permute(0, 3, 1, 2)  # B x C_out x h x w
        return out, attn.permute(0, 3, 4, 1, 2)  # B x n_head x T x h x w


def aggregate_skip(x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Collapse the dates of a skip map with the heads' attention ('att_group').

    The channels are split into ``n_head`` groups; group g is averaged over dates with head g's attention,
    bilinearly resized from the L-TAE resolution to the skip's.

    Args:
        x: (B, T, C, H, W) skip maps (0 on padded dates), C a multiple of n_head.
        attn: (B, n_head, T, h, w) attention weights, 0 on padded dates.

    Returns:
        (B, C, H, W) float map.
    """
    b, t, c, hh, ww = x.shape
    n = attn.shape[1]
    a = attn.flatten(0, 1)  # (B*n_head) x T x h x w
    if a.shape[-2:] != (hh, ww):
        a = F.interpolate(a, size=(hh, ww), mode="bilinear", align_corners=False)
    a = a.view(b, n, t, hh, ww).to(x.dtype)
    out = torch.einsum("btgchw,bgthw->bgchw", x.view(b, t, n, c // n, hh, ww), a)  # B x n_head x C/n x H x W
    return out.reshape(b, c, hh, ww)


class UTAE(nn.Module):
    """U-TAE feature extractor: (B, T, 10, W, W) series -> (B, decoder_widths[0], W, W) map.

    Args:
        in_channels: bands of the Sentinel-2 series.
        encoder_widths: widths of the encoder stages, top (full resolution) to bottom.
        decoder_widths: widths of the decoder stages, same order; the last must equal the encoder's.
        n_head, d_model, d_k, mlp, dropout, attn_dropout, period: L-TAE settings.
        str_kernel, str_stride, str_padding: the strided (transposed) convolutions between stages.
    """

    def __init__(self, in_channels: int = 10, *, encoder_widths: Sequence[int] = (64, 64, 128, 128),
                 decoder_widths: Sequence[int] = (64, 64, 128, 128), n_head: int = 16, d_model: int = 256,
                 d_k: int = 4, mlp: Sequence[int] = (256, 128), dropout: float = 0.2,
                 attn_dropout: float = 0.1, period: float = 1000.0, str_kernel: int = 4, str_stride: int = 2,
                 str_padding: int = 1) -> None:
        super().__init__()
        enc, dec = list(encoder_widths), list(decoder_widths)
        if len(enc) != len(dec) or enc[-1] != dec[-1]:
            raise ValueError(f"encoder/decoder widths must have equal length and bottom, got {enc} / {dec}")
        if mlp[-1] != enc[-1]:
            raise ValueError(f"the L-TAE MLP must end at the bottom width {enc[-1]}, got {list(mlp)}")
        strided = {"kernel": str_kernel, "stride": str_stride, "padding": str_padding}
        self.in_channels, self.out_channels, self.n_head = in_channels, dec[0], n_head
        self.scale = str_stride ** (len(enc) - 1)
        self.in_conv = InConv(in_channels, enc[0])
        self.down = nn.ModuleList(DownBlock(enc[i], enc[i + 1], **strided) for i in range(len(enc) - 1))
        self.ltae = LTAE(enc[-1], n_head=n_head, d_k=d_k, d_model=d_model, mlp=mlp, dropout=dropout,
                         attn_dropout=attn_dropout, period=period)
        # bottom to top: up[0] leaves the L-TAE resolution, up[-1] returns to full resolution
        self.up = nn.ModuleList(UpBlock(dec[i], dec[i - 1], enc[i - 1], **strided)
                                for i in range(len(enc) - 1, 0, -1))

    def forward(self, sentinel: torch.Tensor, dates: torch.Tensor, pad_mask: torch.Tensor | None = None, *,
                return_attention: bool = False):
        """Encode a batch of Sentinel-2 series.

        Args:
            sentinel: (B, T, C, W, W) float series; values on padded dates are ignored.
            dates: (B, T) int64 day offsets.
            pad_mask: (B, T) bool, True on padded dates; None means no padding.
            return_attention: also return the L-TAE attention.

        Returns:
            (B, decoder_widths[0], W, W) float map; with ``return_attention`` also the
            (B, n_head, T, W/8, W/8) attention weights.
        """
        b, t, c, h, w = sentinel.shape
        if c != self.in_channels or h % self.scale or w % self.scale:
            raise UsageError(f"sentinel must be (B, T, {self.in_channels}, H, W) with H and W multiples of "
                             f"{self.scale}, got {tuple(sentinel.shape)}")
        if pad_mask is None:
            pad_mask = torch.zeros(b, t, dtype=torch.bool, device=sentinel.device)
        frames = sentinel.flatten(0, 1)  # (B*T) x C x H x W
        idx = None
        if bool(pad_mask.any()):  # convolve the real acquisitions only
            idx = (~pad_mask).flatten().nonzero().squeeze(1)
            frames = frames.index_select(0, idx)  # N x C x H x W

        def per_date(f: torch.Tensor) -> torch.Tensor:  # N x C' x H' x W' -> B x T x C' x H' x W', 0 on pads
            if idx is not None:
                f = f.new_zeros((b * t, *f.shape[1:])).index_copy(0, idx, f)
            return f.view(b, t, *f.shape[1:])

        f = self.in_conv(frames)
        skips = [f]
        for block in self.down:
            f = block(f)
            skips.append(f)
        out, attn = self.ltae(per_date(skips.pop()), dates, pad_mask)  # B x C x h x w, B x n_head x T x h x w
        for block in self.up:
            out = block(out, aggregate_skip(per_date(skips.pop()), attn))
        return (out, attn) if return_attention else out
