"""Cloud and snow cover of Sentinel-2 windows, and the date keep flags derived from it.

A pixel is *covered* when its snow or cloud probability (%) is at least ``min_prob``. ``combine='union'``
counts a pixel flagged as both once; ``combine='sum'`` counts it twice, as the released baseline does
(docs/baseline.md, "Cloud and snow filter"), so its cover can exceed 1. A date is kept when its covered
fraction of the window is strictly below ``max_cover``.
"""

from __future__ import annotations

import numpy as np


def covered_count(masks: np.ndarray, *, min_prob: float, combine: str = "union") -> np.ndarray:
    """Count covered pixels per window and date.

    Args:
        masks: (..., 2, H, W) uint8 snow and cloud probabilities in percent (channel 0 snow, 1 cloud).
        min_prob: pixel threshold in percent; ``>=`` counts as covered (101 covers nothing).
        combine: 'union' or 'sum'.

    Returns:
        (...,) int32 covered-pixel counts.
    """
    if combine == "union":
        flagged = masks.max(axis=-3) >= min_prob  # one max, one comparison
        return flagged.sum(axis=(-2, -1), dtype=np.int32)
    if combine == "sum":
        return (masks >= min_prob).sum(axis=(-3, -2, -1), dtype=np.int32)
    raise ValueError(f"combine must be 'union' or 'sum', got {combine!r}")


def cover_fraction(masks: np.ndarray, *, min_prob: float, combine: str = "union") -> np.ndarray:
    """Return the covered fraction (float32, (...,)) of each (..., 2, H, W) window."""
    h, w = masks.shape[-2:]
    return (covered_count(masks, min_prob=min_prob, combine=combine) / np.float32(h * w)).astype(np.float32)


def keep_dates(cover: np.ndarray, *, max_cover: float) -> np.ndarray:
    """Return True where a date is kept: its covered fraction is below ``max_cover``."""
    return cover < np.float32(max_cover)


def clear_pixels(masks: np.ndarray, *, min_prob: float) -> np.ndarray:
    """Return (..., H, W) bool: pixels neither snowy nor cloudy at ``min_prob`` (for per-pixel masking)."""
    return masks.max(axis=-3) < min_prob


def window_cover(masks: np.ndarray, origins: np.ndarray, *, window: int, min_prob: float,
                 combine: str = "union") -> np.ndarray:
    """Return the covered fraction of every patch window on every date of a super-area, by integral images.

    Equal to :func:`cover_fraction` on each cropped window, but the flags are computed once per area pixel
    instead of once per overlapping window.

    Args:
        masks: (T, 2, H, W) uint8 area snow and cloud probabilities.
        origins: (P, 2) int top-left (row, col) of each window.
        window: window side.
        min_prob, combine: as in :func:`covered_count`.

    Returns:
        (P, T) float32 covered fractions.
    """
    if combine == "union":
        flags = masks.max(axis=1) >= min_prob
    elif combine == "sum":
        flags = (masks >= min_prob).sum(axis=1, dtype=np.uint8)
    else:
        raise ValueError(f"combine must be 'union' or 'sum', got {combine!r}")
    t, h, w = flags.shape
    # The integral image in uint16 (wrapping: a difference modulo 2**16 is exact, since a window's count is at most
    # 2 * window**2 < 2**16), built by one vector add per row, down the rows and then (transposed) along them:
    # 2.5x faster than np.cumsum along the last axis in int32.
    ii = np.zeros((t, h + 1, w + 1), np.uint16 if 2 * window * window < 1 << 16 else np.int64)
    ii[:, 1:, 1:] = flags
    for r in range(2, h + 1):
        np.add(ii[:, r], ii[:, r - 1], out=ii[:, r])
    ii = np.ascontiguousarray(ii.transpose(0, 2, 1))  # (t, w + 1, h + 1): now the columns are rows
    for c in range(2, w + 1):
        np.add(ii[:, c], ii[:, c - 1], out=ii[:, c])
    r0, c0 = origins[:, 0], origins[:, 1]
    r1, c1 = r0 + window, c0 + window
    counts = ii[:, c1, r1] - ii[:, c1, r0] - ii[:, c0, r1] + ii[:, c0, r0]  # (T, P), modulo 2**16
    return (counts.T / np.float64(window * window)).astype(np.float32)  # as cover_fraction: int / float64
