"""Pure stages: cover, keep flags and composites against plain numpy references; properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flair_lake.stages.clouds import cover_fraction, covered_count, keep_dates, window_cover
from flair_lake.stages.composite import composite_windows, month_day_offsets

W = 8


def _area(seed: int, t: int = 9, h: int = 14, w: int = 15):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 10_000, size=(t, 3, h, w), dtype=np.uint16)
    masks = rng.choice(np.array([0, 5, 59, 60, 61, 100], np.uint8), size=(t, 2, h, w))
    months = np.sort(rng.integers(0, 12, size=t))
    origins = np.array([[0, 0], [h - W, w - W], [3, 4], [3, 5]])
    return data, masks, months, origins


def _crop(a, o):
    return a[..., o[0]:o[0] + W, o[1]:o[1] + W]


def test_cover_union_and_sum_by_hand():
    masks = np.zeros((1, 2, 2, 2), np.uint8)
    masks[0, 0, 0, 0] = 60  # snow
    masks[0, 1, 0, 0] = 80  # cloud on the same pixel
    masks[0, 1, 1, 1] = 59  # below the threshold
    assert covered_count(masks, min_prob=60, combine="union")[0] == 1
    assert covered_count(masks, min_prob=60, combine="sum")[0] == 2
    assert cover_fraction(masks, min_prob=60, combine="sum")[0] == 0.5
    assert keep_dates(np.float32([0.5, 0.49]), max_cover=0.5).tolist() == [False, True]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), combine=st.sampled_from(["union", "sum"]))
def test_window_cover_equals_cropped_cover(seed, combine):
    _, masks, _, origins = _area(seed)
    fast = window_cover(masks, origins, window=W, min_prob=60, combine=combine)
    for i, o in enumerate(origins):
        np.testing.assert_array_equal(fast[i], cover_fraction(_crop(masks, o), min_prob=60, combine=combine))


def test_window_cover_past_16_bits_of_integral_image():
    """An area whose covered pixels number far more than 2**16 (the integral image wraps around): every window's
    cover is still exact, with the real 40 px window and both ways of combining."""
    rng = np.random.default_rng(7)
    masks = rng.choice(np.array([0, 60, 100], np.uint8), size=(3, 2, 301, 287), p=[0.2, 0.4, 0.4])
    origins = np.stack([rng.integers(0, 301 - 40, 25), rng.integers(0, 287 - 40, 25)], axis=1)
    origins[0] = 301 - 40, 287 - 40  # the last corner of the area
    for combine in ("union", "sum"):
        fast = window_cover(masks, origins, window=40, min_prob=60, combine=combine)
        for i, (r, c) in enumerate(origins):
            crop = masks[..., r:r + 40, c:c + 40]
            np.testing.assert_array_equal(fast[i], cover_fraction(crop, min_prob=60, combine=combine))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), c1=st.floats(0, 1), c2=st.floats(0, 1), p1=st.floats(0, 101),
       p2=st.floats(0, 101), combine=st.sampled_from(["union", "sum"]))
def test_keep_is_monotone_in_cloud_and_prob(seed, c1, c2, p1, p2, combine):
    _, masks, _, origins = _area(seed)
    lo_c, hi_c = sorted((c1, c2))
    lo_p, hi_p = sorted((p1, p2))
    cov = window_cover(masks, origins, window=W, min_prob=lo_p, combine=combine)
    # a larger --cloud keeps a superset of dates
    assert (keep_dates(cov, max_cover=lo_c) <= keep_dates(cov, max_cover=hi_c)).all()
    # a larger --prob covers fewer pixels, so keeps a superset of dates
    cov_hi = window_cover(masks, origins, window=W, min_prob=hi_p, combine=combine)
    assert (keep_dates(cov, max_cover=lo_c) <= keep_dates(cov_hi, max_cover=lo_c)).all()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_keep_everything_gives_plain_monthly_means(seed):
    data, masks, months, origins = _area(seed)
    cov = window_cover(masks, origins, window=W, min_prob=101, combine="union")
    keep = keep_dates(cov, max_cover=1.0)
    assert keep.all()
    comp, counts = composite_windows(data, months, keep, origins, window=W)
    for i, o in enumerate(origins):
        for m in range(12):
            sel = months == m
            assert counts[i, m] == sel.sum()
            expect = np.rint(_crop(data, o)[sel].astype(np.float64).mean(0)) if sel.any() else 0
            np.testing.assert_array_equal(comp[i, m], expect)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), reducer=st.sampled_from(["mean", "median"]), masked=st.booleans())
def test_composites_match_numpy_references(seed, reducer, masked):
    data, masks, months, origins = _area(seed)
    keep = keep_dates(window_cover(masks, origins, window=W, min_prob=60), max_cover=0.5)
    clear = masks.max(axis=1) < 60
    comp, counts = composite_windows(data, months, keep, origins, window=W, reducer=reducer,
                                     clear=clear if masked else None)
    fn = np.mean if reducer == "mean" else np.median
    for i, o in enumerate(origins):
        win, cl = _crop(data, o).astype(np.float64), _crop(clear, o)
        for m in range(12):
            idx = np.flatnonzero(keep[i] & (months == m))
            assert counts[i, m] == idx.size
            if idx.size == 0:
                assert not comp[i, m].any()
                continue
            expect = fn(win[idx], axis=0)
            if masked:
                for y in range(W):
                    for x in range(W):
                        good = idx[cl[idx, y, x]]
                        if good.size:
                            expect[:, y, x] = fn(win[good, :, y, x], axis=0)
            np.testing.assert_array_equal(comp[i, m], np.rint(expect))


def test_month_day_offsets_follow_the_baseline_convention():
    assert month_day_offsets(2021).tolist() == [120, 89, 61, 30, 0, -31, -61, -92, -123, -153, -184, -214]
    assert month_day_offsets(2020)[0] == 121  # the real (leap) year, not a forced 2021


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_composites_fill_a_given_buffer_in_place(seed):
    data, masks, months, origins = _area(seed)
    keep = keep_dates(window_cover(masks, origins, window=W, min_prob=60), max_cover=0.5)
    expect, counts = composite_windows(data, months, keep, origins, window=W)
    cube = np.zeros((len(origins) + 2, *expect.shape[1:]), np.uint16)
    got, got_counts = composite_windows(data, months, keep, origins, window=W, out=cube[1:-1])
    assert np.shares_memory(got, cube)
    np.testing.assert_array_equal(cube[1:-1], expect)
    np.testing.assert_array_equal(got_counts, counts)
    assert not cube[0].any() and not cube[-1].any()


def test_training_classes_follow_the_baseline_table():
    """Raw codes 1..12 become classes 0..11 and every other code (0, 13..255) becomes 'other' (12)."""
    from flair_lake import schema

    table = {code: code - 1 if 1 <= code <= 12 else schema.OTHER_CLASS for code in range(256)}
    raw = np.arange(256, dtype=np.uint8)
    assert schema.to_train_classes(raw).tolist() == [table[c] for c in range(256)]
    assert schema.to_train_classes(raw).dtype == np.uint8
    assert raw.tolist() == list(range(256))  # the input is not modified


def test_training_classes_refuse_labels_that_are_not_uint8():
    from flair_lake import schema

    with pytest.raises(ValueError, match="uint8"):
        schema.to_train_classes(np.array([257, 13], np.uint16))
