"""A torch ``Dataset`` streaming training samples from a lake view, one batch-level read at a time.

Each batch is read with one ``asyncio.gather`` of per-patch chunk reads (``__getitems__``), never with
integer-array selection on sharded arrays (LAKE_NOTES §3). Stores are opened lazily in the process that reads,
so the dataset is safe with forkserver/spawn DataLoader workers. Samples follow :data:`schema.SAMPLE_KEYS`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch

from flair_lake import lake as lk
from flair_lake import schema
from flair_lake.errors import UsageError
from flair_lake.stages.metadata import encode_metadata

log = logging.getLogger(__name__)


def select_rows(root, split: str | Sequence[str] | None) -> np.ndarray:
    """Return the ingested rows of an official split ('train', 'val', 'test'), a list of domains, or all."""
    status = root[lk.STATUS_ARRAY][:]
    ok = status == lk.STATUS_OK
    if split is None or split == "all":
        return np.flatnonzero(ok)
    if isinstance(split, str) and split in schema.SPLIT_CODES:
        return np.flatnonzero(ok & (root["split"][:] == schema.SPLIT_CODES[split]))
    domains = [split] if isinstance(split, str) else list(split)
    table = root.attrs["domains"]
    unknown = [d for d in domains if d not in table]
    if unknown:
        raise UsageError(f"unknown split or domain {', '.join(unknown)}; use train, val, test or domains "
                         f"among {', '.join(table)}")
    codes = [table.index(d) for d in domains]
    return np.flatnonzero(ok & np.isin(root["domain"][:], codes))


class LakeDataset(torch.utils.data.Dataset):
    """Samples of one split (or domain list) of a lake, with the Sentinel-2 series of a view.

    Args:
        lake: lake path or URL.
        view: filter view to read (default: the latest); a monthly view gives T = 12 with empty months
            masked, a non-monthly view gives the kept dates of the raw series (padded per batch).
        split: 'train', 'val', 'test', 'all', or a list of domains.
        storage_options: object-store options.
        skip_empty_months: drop empty months instead of masking them (the baseline's T' <= 12); default from
            the view's parameters.
        use_zarrs: decode with the zarrs (Rust) codec pipeline; default: when installed (extra ``fast``),
            falling back to zarr-python's pipeline otherwise.
        compact: keep labels uint8 and Sentinel-2 uint16 (monthly views) so that worker-to-trainer transfers
            are 4-8x smaller; :class:`~flair_lake.loader.BatchTransform` casts them to the contract's int64 and
            float32 on the device. ``make_loader`` sets it.
    """

    def __init__(self, lake: str, *, view: str | None = None, split: str | Sequence[str] | None = "train",
                 storage_options: dict | None = None, skip_empty_months: bool | None = None,
                 use_zarrs: bool | None = None, compact: bool = False) -> None:
        root = lk.open_lake(lake, storage_options=storage_options)
        self.compact = compact
        # zarrs reads local stores; object-store URLs go through fsspec and zarr-python's pipeline
        self.use_zarrs = (lk.zarrs_available() and not lk.is_url(lake)) if use_zarrs is None else use_zarrs
        self.lake, self.storage_options = lake, storage_options
        self.view = lk.resolve_view(root, lake, view, complete=True)
        self.rows = select_rows(root, split)
        self.patch_size = int(root.attrs["patch_size"])
        params = root[f"{schema.VIEWS_GROUP}/{self.view}"].attrs["params"] if self.view else {}
        self.monthly = bool(params.get("monthly"))
        self.skip_empty = params.get("skip_empty_months", False) if skip_empty_months is None else skip_empty_months
        self.window = int(root[f"{schema.VIEWS_GROUP}/{self.view}"].attrs.get("window", schema.S2_WINDOW)) \
            if self.view else schema.S2_WINDOW
        cams = np.array(["UCE" in c for c in root.attrs["cameras"]] or [False])
        r = self.rows
        cols = {k: root[k][:] for k in ("patch_id", "centroid_x", "centroid_y", "centroid_z", "acquired", "year",
                                        "camera", "zone", "s2_row", "s2_col", "has_label")}
        self.patch_ids = cols["patch_id"][r].astype(np.int64)
        self.mtd = encode_metadata(cols["centroid_x"][r], cols["centroid_y"][r], cols["centroid_z"][r],
                                   cols["acquired"][r], cols["year"][r], cams[cols["camera"][r]])
        self.has_label = cols["has_label"][r].astype(bool)
        self.zone, self.s2_row, self.s2_col = cols["zone"][r], cols["s2_row"][r], cols["s2_col"][r]
        self.year = cols["year"][r]
        self.areas = list(root.attrs["areas"])
        self.band_stats = root.attrs.get("band_stats", {})
        self._arrays = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.rows)

    # --- store access (opened lazily, once per process) ---------------------------------------------------------
    def _open(self):
        if self._arrays is None or self._pid != os.getpid():
            import zarr

            if self.use_zarrs:  # the Rust codec pipeline: safe here, workers are forkserver/spawn processes
                zarr.config.set(lk.ZARRS_PIPELINE)

            root = zarr.open_group(store=self.lake, mode="r", storage_options=self.storage_options)
            arrays = {"aerial": root["aerial"], "label": root["label"]}
            if self.view:
                vg = root[f"{schema.VIEWS_GROUP}/{self.view}"]
                arrays["keep"] = vg["keep"]
                arrays["n_dates"] = vg["n_dates"]
                if self.monthly:
                    # (patch, 12) tables of a few bytes per patch: read whole once, not one chunk per sample
                    arrays.update(monthly=vg["monthly"], month_count=vg["month_count"][:],
                                  month_days=vg["month_days"][:])
            self._root, self._arrays, self._pid = root, arrays, os.getpid()
        return self._arrays

    def _gather(self, names: Sequence[str], rows: Sequence[int]) -> dict[str, list[np.ndarray]]:
        """Read row ``r`` of each named array for every row, in one asyncio.gather of chunk reads."""
        from zarr.core.sync import sync

        arrays = self._open()

        async def read_all():
            return await asyncio.gather(*(arrays[n]._async_array.getitem((int(r),)) for n in names for r in rows))

        flat = sync(read_all())
        k = len(rows)
        return {n: flat[i * k:(i + 1) * k] for i, n in enumerate(names)}

    def _raw_series(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (kept dates' windows (T, 10, W, W), day offsets (T,)) of a non-monthly view from raw S2."""
        arrays = self._open()
        row = int(self.rows[i])
        n = int(arrays["n_dates"][row])
        keep = np.asarray(arrays["keep"][row, :n], bool)
        g = self._root[f"{schema.SENTINEL_GROUP}/{self.areas[int(self.zone[i])]}"]
        half = self.window // 2
        r0, c0 = int(self.s2_row[i]) - half, int(self.s2_col[i]) - half
        win = g["data"][:, :, r0:r0 + self.window, c0:c0 + self.window][keep]
        days = g["dates"][:][keep].astype("datetime64[D]")
        ref = np.datetime64(f"{int(self.year[i]):04d}-05-15")
        return win.astype(np.float32), (ref - days).astype(np.int64)

    # --- samples ----------------------------------------------------------------------------------------------
    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        rows = [int(self.rows[i]) for i in indices]
        names = ["aerial", "label"] + (["monthly"] if self.monthly else [])
        got = self._gather(names, rows)
        if self.monthly:
            arrays = self._open()
            got["month_count"] = arrays["month_count"][rows]
            got["month_days"] = arrays["month_days"][rows]
        out = []
        for k, i in enumerate(indices):
            label = schema.to_train_classes(got["label"][k]) if self.has_label[i] else \
                np.full((self.patch_size,) * 2, schema.IGNORE_LABEL, np.uint8)
            if self.monthly:
                count = got["month_count"][k]
                sen = got["monthly"][k] if self.compact else got["monthly"][k].astype(np.float32)
                days, pad = got["month_days"][k].astype(np.int64), count == 0
                if self.skip_empty:
                    sen, days, pad = sen[~pad], days[~pad], pad[~pad]
            elif self.view:
                sen, days = self._raw_series(i)
                pad = np.zeros(len(days), bool)
            else:
                sen = np.zeros((0, 10, self.window, self.window), np.float32)
                days, pad = np.zeros(0, np.int64), np.zeros(0, bool)
            out.append({
                "aerial": torch.from_numpy(got["aerial"][k]),
                "label": torch.from_numpy(label if self.compact else label.astype(np.int64)),
                "sentinel": torch.from_numpy(np.ascontiguousarray(sen)),
                "dates": torch.from_numpy(days),
                "pad_mask": torch.from_numpy(pad),
                "mtd": torch.from_numpy(self.mtd[i]),
                "patch_id": torch.tensor(self.patch_ids[i]),
                "row": torch.tensor(rows[k]),
            })
        return out


def collate(samples: list[dict]) -> dict:
    """Stack samples into a batch, padding the time axis to the batch's longest series (padded = masked)."""
    t_max = max((s["sentinel"].shape[0] for s in samples), default=0)
    t_max = max(t_max, 1)
    batch = {}
    for key in ("aerial", "label", "mtd", "patch_id", "row"):
        batch[key] = torch.stack([s[key] for s in samples])
    sen, dates, pad = [], [], []
    for s in samples:
        t = s["sentinel"].shape[0]
        extra = t_max - t
        sen.append(torch.nn.functional.pad(s["sentinel"], (0, 0, 0, 0, 0, 0, 0, extra)))
        dates.append(torch.nn.functional.pad(s["dates"], (0, extra)))
        pad.append(torch.cat([s["pad_mask"], torch.ones(extra, dtype=torch.bool)]))
    batch["sentinel"], batch["dates"], batch["pad_mask"] = torch.stack(sen), torch.stack(dates), torch.stack(pad)
    return batch


__all__ = ["LakeDataset", "collate", "select_rows"]
