"""Monthly composites of Sentinel-2 windows, computed once per super-area.

Patches of one super-area overlap heavily and keep most dates, so a monthly mean is computed as the area's
sum over every date of the month, cut at the window, minus the few dates that patch dropped: one pass over the
area plus work proportional to the dropped dates. Sums are exact integers (int32 holds 32,768 dates of uint16)
divided in float32, which rounds exactly like ``np.rint(np.mean(...))`` (half to even): a sum below 2**24 is
exact and a non-tie quotient is never within float32 error of a half. Medians are
computed once per distinct keep-set over the bounding box of its windows.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

MONTHS = 12
PATCH_GROUP = 16  # patches whose window sums are computed together


def month_day_offsets(year: int) -> np.ndarray:
    """Return (12,) int16 day offsets of each month for the U-TAE positional encoding.

    The offset of month m is ``(15 May - 15 m).days`` in ``year``: positive before mid-May, 0 in May, negative
    after (Jan 120 ... Dec -214), the released baseline's convention (FLAIR2_BASELINE.md §2.4) with the real
    year instead of a forced 2021.
    """
    ref = dt.date(year, 5, 15)
    return np.array([(ref - dt.date(year, m, 15)).days for m in range(1, 13)], np.int16)


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
    if reducer == "mean":
        # patches in groups: the int32 sums of a group stay small enough for the allocator to reuse (no page
        # faults per call, measured 2x on a shard of 64)
        monthly_sums = None
        for g0 in range(0, p, PATCH_GROUP):
            sl = slice(g0, g0 + PATCH_GROUP)
            out[sl], monthly_sums = _mean_by_subtraction(data, months, keep[sl], origins[sl], window, clear,
                                                         keep_all=keep, area_sums=monthly_sums)
        return out, counts
    if reducer != "median":
        raise ValueError(f"reducer must be 'mean' or 'median', got {reducer!r}")
    sets, group = np.unique(keep, axis=0, return_inverse=True)
    group = group.reshape(-1)
    for g, kset in enumerate(sets):
        if not kset.any():
            continue
        members = np.flatnonzero(group == g)
        r0, r1, c0, c1 = _bbox(origins[members], window)
        comp = _median_box(data[:, :, r0:r1, c0:c1], months, kset, None if clear is None else clear[:, r0:r1, c0:c1])
        for i in members:
            rr, cc = origins[i, 0] - r0, origins[i, 1] - c0
            out[i] = comp[:, :, rr:rr + window, cc:cc + window]
    return out, counts


def _window_sums(area_sums: np.ndarray, origins: np.ndarray, window: int) -> np.ndarray:
    """Cut (12, C, H, W) sums at each window: (P, 12, C, window, window)."""
    view = np.lib.stride_tricks.sliding_window_view(area_sums, (window, window), axis=(2, 3))
    return np.ascontiguousarray(view[:, :, origins[:, 0], origins[:, 1]].transpose(2, 0, 1, 3, 4))


def _month_sums(values: np.ndarray, months: np.ndarray) -> np.ndarray:
    """Return (12, ...) int32 sums of ``values`` (T, ...) per month (dates with month -1 ignored)."""
    out = np.zeros((MONTHS, *values.shape[1:]), np.int32)
    for m in np.unique(months[months >= 0]):
        out[m] = values[months == m].sum(axis=0, dtype=np.int32)
    return out


def _dropped_sums(values: np.ndarray, months: np.ndarray, keep: np.ndarray, origins: np.ndarray,
                  window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (patch idx, month idx, sums (G, ...)) of the windows of dates each patch dropped, per month."""
    p_idx, t_idx = np.nonzero(~keep & (months >= 0)[None, :])
    if p_idx.size == 0:
        return p_idx, p_idx, np.zeros((0, *values.shape[1:-2], window, window), np.int32)
    view = np.lib.stride_tricks.sliding_window_view(values, (window, window), axis=(-2, -1))
    win = view[t_idx, ..., origins[p_idx, 0], origins[p_idx, 1], :, :]  # (K, ..., window, window)
    key = p_idx * MONTHS + months[t_idx]  # already sorted: nonzero is row-major and months are chronological
    order = np.argsort(key, kind="stable")
    key, win = key[order], win[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    sums = np.add.reduceat(win, starts, axis=0, dtype=np.int32)
    return key[starts] // MONTHS, key[starts] % MONTHS, sums


def _mean_by_subtraction(data: np.ndarray, months: np.ndarray, keep: np.ndarray, origins: np.ndarray,
                         window: int, clear: np.ndarray | None, *, keep_all: np.ndarray | None = None,
                         area_sums: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Return ((P, 12, C, window, window) uint16 monthly means of kept dates, the area's month sums).

    ``keep_all`` is the keep-set of every patch of the area (dates no patch keeps never enter the area sums);
    ``area_sums`` reuses the month sums of an earlier group. With ``clear``, only clear pixels are averaged.
    """
    months = np.where((keep if keep_all is None else keep_all).any(axis=0), months, -1)
    if clear is None:
        if area_sums is None:
            area_sums = _month_sums(data, months)
        num = _window_sums(area_sums, origins, window)
        gp, gm, drop = _dropped_sums(data, months, keep, origins, window)
        num[gp, gm] -= drop
        den = (keep[:, None, :] & (months[None, None, :] == np.arange(MONTHS)[None, :, None])).sum(-1)
        den = den[:, :, None, None, None].astype(np.float32)
    else:
        masked = data * clear[:, None]  # uint16 * bool: data of clear pixels, 0 elsewhere
        num = _window_sums(_month_sums(masked, months), origins, window)
        gp, gm, drop = _dropped_sums(masked, months, keep, origins, window)
        num[gp, gm] -= drop
        den = _window_sums(_month_sums(clear[:, None], months), origins, window)
        _, _, drop_n = _dropped_sums(clear[:, None], months, keep, origins, window)
        den[gp, gm] -= drop_n
        # a pixel never clear in a month falls back to the plain mean of the month's kept dates
        plain, _ = _mean_by_subtraction(data, months, keep, origins, window, None)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.rint(num / den.astype(np.float32))
        return np.where(den > 0, mean, plain).astype(np.uint16), None
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.rint(num / den)
    mean[np.broadcast_to(den == 0, mean.shape)] = 0
    return mean.astype(np.uint16), area_sums


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
