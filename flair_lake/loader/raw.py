"""A raw-tree reader with the released baseline's per-sample semantics: the comparison path and a cross-check.

For each sample it does what the baseline's ``__getitem__`` does (docs/baseline.md, "Data path per sample"): read the
GeoTIFFs with rasterio, crop the super-area ``.npy`` at the centroid, drop dates whose summed snow + cloud
counts (probability >= 60) reach half the window, and average the kept dates per calendar month, skipping
empty months -- but it pairs files by id and keeps the real year. It returns the lake loader's sample
contract, so the two can be compared value for value.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
import torch

from flair_lake import schema
from flair_lake.config import FilterConfig, TrainConfig
from flair_lake.raw import names
from flair_lake.raw.discover import discover

BASELINE = FilterConfig.baseline()


class RawBaselineDataset(torch.utils.data.Dataset):
    """Samples read from a raw FLAIR tree, per sample, the baseline's way.

    Args:
        raw: root of the raw tree.
        patch_ids: the patches to serve, in order (default: every good patch of ``split``).
        split: official split used when ``patch_ids`` is None.
        max_cover, min_prob: the filter thresholds (default: the baseline's, 0.5 and 60).
    """

    def __init__(self, raw: str | Path, *, patch_ids: Sequence[int] | None = None,
                 split: str | None = TrainConfig.train_split, max_cover: float = BASELINE.max_cover,
                 min_prob: float = BASELINE.min_prob) -> None:
        self.tree = discover(raw)
        if patch_ids is None:
            patch_ids = sorted(p for p, f in self.tree.patches.items()
                               if split is None or schema.official_split(f.domain) == split)
        self.ids = list(patch_ids)
        self.max_cover, self.min_prob = max_cover, min_prob

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        pf = self.tree.patches[self.ids[i]]
        with rasterio.open(pf.image) as src:
            aerial = src.read()
        with rasterio.open(pf.label) as src:
            label = schema.to_train_classes(src.read(1)).astype(np.int64)
        area = self.tree.areas[pf.area]
        r, c = pf.centroid
        h = schema.S2_WINDOW // 2
        sp = np.load(area.data, mmap_mode="r")[:, :, r - h:r + h, c - h:c + h]
        mask = np.load(area.masks, mmap_mode="r")[:, :, r - h:r + h, c - h:c + h]
        lines = area.products.read_text().splitlines()
        dates = [names.parse_product_date(line) for line in lines]
        keep = []
        for t in range(mask.shape[0]):  # the baseline's filter_dates loop
            cover = np.count_nonzero(mask[t, 0] >= self.min_prob) + np.count_nonzero(mask[t, 1] >= self.min_prob)
            if cover / (2 * h) ** 2 < self.max_cover:
                keep.append(t)
        months, days = [], []
        for m in range(1, schema.MONTHS + 1):  # the baseline's monthly_image: months with a kept date, unmasked mean
            idx = [t for t in keep if dates[t].month == m]
            if idx:
                months.append(np.mean(sp[idx], axis=0))
                days.append((dt.date(BASELINE.ref_year, 5, 15) - dt.date(BASELINE.ref_year, m, 15)).days)
        empty = np.zeros((0, schema.N_S2_BANDS, 2 * h, 2 * h), np.float32)
        sen = np.stack(months).astype(np.float32) if months else empty
        return {"aerial": torch.from_numpy(aerial), "label": torch.from_numpy(label),
                "sentinel": torch.from_numpy(sen), "dates": torch.tensor(days, dtype=torch.int64),
                "pad_mask": torch.zeros(len(days), dtype=torch.bool),
                "mtd": torch.zeros(schema.MTD_DIM), "patch_id": torch.tensor(pf.patch_id), "row": torch.tensor(-1)}
