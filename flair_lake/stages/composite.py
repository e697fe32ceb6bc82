"""Monthly composites of Sentinel-2 windows, computed once per super-area and distinct keep-set.

Patches of one super-area overlap heavily and usually keep the same dates, so the composite of each distinct
keep-set is computed once over the bounding box of its windows (one matmul of integer sums), then cut into
40x40 windows. Sums of uint16 values over at most a few hundred dates are exact in float32 and are divided in
float64, so a mean is the exact mean rounded to the nearest DN (half to even), like ``np.rint(np.mean(...))``.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

MONTHS = 12


def month_day_offsets(year: int) -> np.ndarray:
    """Return (12,) int16 day offsets of each month for the U-TAE positional encoding.

    The offset of month m is ``(15 May - 15 m).days`` in ``year``: positive before mid-May, 0 in May, negative
    after (Jan 120 ... Dec -214), the released baseline's convention (FLAIR2_BASELINE.md §2.4) with the real
    year instead of a forced 2021.
    """
    ref = dt.date(year, 5, 15)
    return np.array([(ref - dt.date(year, m, 15)).days for m in range(1, 13)], np.int16)


def _month_onehot(months: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Return (G, 12, T) float32 weights: 1 where date t is kept and falls in month m."""
    onehot = months[None, :] == np.arange(MONTHS)[:, None]  # (12, T)
    return (onehot[None] & keep[:, None, :]).astype(np.float32)


def _bbox(origins: np.ndarray, window: int) -> tuple[int, int, int, int]:
    """Return (r0, r1, c0, c1) covering every window whose top-left corners are ``origins`` (P, 2)."""
    return (int(origins[:, 0].min()), int(origins[:, 0].max()) + window,
            int(origins[:, 1].min()), int(origins[:, 1].max()) + window)


def composite_windows(data: np.ndarray, months: np.ndarray, keep: np.ndarray, origins: np.ndarray, *,
                      window: int, reducer: str = "mean", clear: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Return monthly composites of each patch's window and the number of kept dates per month.

    Args:
        data: (T, C, H, W) uint16 super-area reflectance.
        months: (T,) int month index 0..11 of each date (-1 for dates outside the acquisition year).
        keep: (P, T) bool kept dates of each patch.
        origins: (P, 2) int top-left (row, col) of each patch's window in the area.
        window: window side in pixels.
        reducer: 'mean' or 'median'.
        clear: optional (T, H, W) bool clear pixels; when given, only clear pixels of kept dates are reduced
            (a pixel never clear in a month falls back to all kept dates of that month).

    Returns:
        composite (P, 12, C, window, window) uint16, 0 in months without a kept date;
        counts (P, 12) uint8 kept dates per month.
    """
    t, c = data.shape[:2]
    p = keep.shape[0]
    keep = keep & (months >= 0)[None, :]
    out = np.zeros((p, MONTHS, c, window, window), np.uint16)
    onehot = months[None, :] == np.arange(MONTHS)[:, None]
    counts = (onehot[None] & keep[:, None, :]).sum(-1).astype(np.uint8)
    if p == 0 or t == 0:
        return out, counts
    sets, group = np.unique(keep, axis=0, return_inverse=True)
    group = group.reshape(-1)
    for g, kset in enumerate(sets):
        if not kset.any():
            continue
        members = np.flatnonzero(group == g)
        r0, r1, c0, c1 = _bbox(origins[members], window)
        box = data[:, :, r0:r1, c0:c1]
        if reducer == "mean":
            comp = _mean_box(box, _month_onehot(months, kset[None])[0], None if clear is None
                             else clear[:, r0:r1, c0:c1])
        elif reducer == "median":
            comp = _median_box(box, months, kset, None if clear is None else clear[:, r0:r1, c0:c1])
        else:
            raise ValueError(f"reducer must be 'mean' or 'median', got {reducer!r}")
        for i in members:
            rr, cc = origins[i, 0] - r0, origins[i, 1] - c0
            out[i] = comp[:, :, rr:rr + window, cc:cc + window]
    return out, counts


def _mean_box(box: np.ndarray, weights: np.ndarray, clear: np.ndarray | None) -> np.ndarray:
    """Return (12, C, h, w) uint16 means of ``box`` (T, C, h, w) under 0/1 ``weights`` (12, T)."""
    t, c, h, w = box.shape
    flat = box.reshape(t, -1).astype(np.float32)
    n = weights.sum(1)  # (12,)
    sums = (weights @ flat).reshape(MONTHS, c, h, w).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / n[:, None, None, None]
        if clear is not None:
            cl = clear.reshape(t, 1, h, w).astype(np.float32)
            csum = (weights @ (flat.reshape(t, c, h, w) * cl).reshape(t, -1)).reshape(MONTHS, c, h, w)
            cnt = (weights @ cl.reshape(t, -1)).reshape(MONTHS, 1, h, w).astype(np.float64)
            mean = np.where(cnt > 0, csum.astype(np.float64) / cnt, mean)
    mean = np.where(n[:, None, None, None] > 0, mean, 0.0)
    return np.rint(mean).astype(np.uint16)


def _median_box(box: np.ndarray, months: np.ndarray, kset: np.ndarray, clear: np.ndarray | None) -> np.ndarray:
    """Return (12, C, h, w) uint16 per-month medians of the kept dates of ``box``."""
    _, c, h, w = box.shape
    out = np.zeros((MONTHS, c, h, w), np.uint16)
    for m in range(MONTHS):
        idx = np.flatnonzero(kset & (months == m))
        if idx.size == 0:
            continue
        sel = box[idx].astype(np.float64)
        med = np.median(sel, axis=0)
        if clear is not None:
            cl = clear[idx][:, None]
            masked = np.where(cl, sel, np.nan)
            with np.errstate(all="ignore"):
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    mmed = np.nanmedian(masked, axis=0)
            med = np.where(np.isnan(mmed), med, mmed)
        out[m] = np.rint(med).astype(np.uint16)
    return out
