"""A torch ``Dataset`` streaming training samples from a lake view, one batch-level read at a time.

Every batch reads each array with one codec-pipeline call that asks for one row slice per inner chunk; a
monthly view's batch comes back already collated (:meth:`LakeDataset.read_batch`). Never integer-array
selection on sharded arrays (docs/benchmarks.md).
Stores are opened lazily in the process that reads, so the dataset is safe with forkserver/spawn DataLoader
workers. Samples follow :data:`schema.SAMPLE_KEYS`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch

from flair_lake import lake as lk
from flair_lake import schema, storage
from flair_lake import zarr_compat as zc
from flair_lake.config import TrainConfig
from flair_lake.errors import LakeStateError, UsageError
from flair_lake.stages.metadata import encode_metadata

log = logging.getLogger(__name__)


def select_rows(root, split: str | Sequence[str] | None) -> np.ndarray:
    """Return the ingested rows of an official split ('train', 'val', 'test'), a list of domains, or all."""
    status = root[schema.STATUS_ARRAY][:]
    ok = status == schema.STATUS_OK
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

    def __init__(self, lake: str, *, view: str | None = None,
                 split: str | Sequence[str] | None = TrainConfig.train_split,
                 storage_options: dict | None = None, skip_empty_months: bool | None = None,
                 use_zarrs: bool | None = None, compact: bool = False) -> None:
        root = lk.open_lake(lake, storage_options=storage_options)
        self.compact = compact
        # zarrs reads local stores; object-store URLs go through fsspec and zarr-python's pipeline
        self.use_zarrs = (storage.zarrs_available() and not storage.is_url(lake)) if use_zarrs is None else use_zarrs
        self.lake, self.storage_options = lake, storage_options
        self.view = lk.resolve_view(root, lake, view, complete=True)  # a generation: read to the end, isolated
        self.provenance = lk.provenance(root, self.view)
        self.rows = select_rows(root, split)
        self.patch_size = int(root.attrs["patch_size"])
        params = root[f"{schema.VIEWS_GROUP}/{self.view}"].attrs["params"] if self.view else {}
        self.monthly = bool(params.get("monthly"))
        self.skip_empty = params.get("skip_empty_months", False) if skip_empty_months is None else skip_empty_months
        self.window = int(root[f"{schema.VIEWS_GROUP}/{self.view}"].attrs.get("window", schema.S2_WINDOW)) \
            if self.view else schema.S2_WINDOW
        self.view_params = {**params, "window": self.window} if self.view else None  # recorded in checkpoints
        cams = np.array(["UCE" in c for c in root.attrs["cameras"]] or [False])
        r = self.rows
        cols = zc.read_arrays(root, ("patch_id", "centroid_x", "centroid_y", "centroid_z", "acquired", "year",
                                     "camera", "zone", "s2_row", "s2_col", "has_label"))
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

            with self._pipeline():
                root = zarr.open_group(store=self.lake, mode="r", storage_options=self.storage_options)
                arrays = {"aerial": root["aerial"], "label": root["label"]}
                if self.view:
                    vg = root.get(f"{schema.VIEWS_GROUP}/{self.view}")
                    if vg is None:  # collected since this dataset resolved it (config.VIEW_RETAIN_S)
                        raise LakeStateError(f"view generation {self.view} of {self.lake} was collected after it "
                                             "was replaced; open the view again (its current generation)")
                    arrays["keep"] = vg["keep"]
                    arrays["n_dates"] = vg["n_dates"]
                    if self.monthly:
                        # (patch, 12) tables of a few bytes per patch: read whole once, not one chunk per sample
                        arrays.update(monthly=vg["monthly"], month_count=vg["month_count"][:],
                                      month_days=vg["month_days"][:])
            self._root, self._arrays, self._pid = root, arrays, os.getpid()
        return self._arrays

    def _pipeline(self):
        """Return the context in which this dataset opens its arrays: the zarrs (Rust) codec pipeline when
        ``use_zarrs``. An array keeps the pipeline it was opened with; zarr's settings outside are left as they
        are, so other zarr users of the process keep theirs."""
        return zc.config(zc.ZARRS_PIPELINE) if self.use_zarrs else contextlib.nullcontext()

    def _read_rows(self, names: Sequence[str], rows: Sequence[int]) -> dict[str, np.ndarray]:
        """Read rows ``rows`` of each named array into one (len(rows), ...) array per name.

        One codec-pipeline call per array and batch (zarrs decodes its chunks in parallel, in Rust), straight
        into the batch's array: no per-chunk Python round trip and no stacking copy afterwards. This is what
        ``oindex`` should do but does not on sharded arrays (it decodes whole shards, docs/benchmarks.md): the
        selection here is one row slice per chunk (:func:`flair_lake.zarr_compat.read_rows`; on a zarr whose
        internals it was not checked against, one read a row).
        """
        arrays = self._open()
        outs = {n: np.empty((len(rows), *arrays[n].shape[1:]), arrays[n].dtype) for n in names}
        zc.read_rows([arrays[n] for n in names], rows, [outs[n] for n in names])
        return outs

    def _raw_series(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (kept dates' windows (T, 10, W, W), day offsets (T,)) of a non-monthly view from raw S2."""
        arrays = self._open()
        row = int(self.rows[i])
        n = int(arrays["n_dates"][row])
        keep = np.asarray(arrays["keep"][row, :n], bool)
        with self._pipeline():
            g = self._root[f"{schema.SENTINEL_GROUP}/{self.areas[int(self.zone[i])]}"]
            data, dates = g["data"], g["dates"]
        half = self.window // 2
        r0, c0 = int(self.s2_row[i]) - half, int(self.s2_col[i]) - half
        win = data[:, :, r0:r0 + self.window, c0:c0 + self.window][keep]
        days = dates[:][keep].astype("datetime64[D]")
        ref = np.datetime64(f"{int(self.year[i]):04d}-05-15")
        return win.astype(np.float32), (ref - days).astype(np.int64)

    # --- samples ----------------------------------------------------------------------------------------------
    def __getitem__(self, i: int) -> dict:
        if not self.monthly:
            return self._samples([i])[0]
        sample = self.read_batch([i])[0]
        if self.skip_empty:  # its own clear months only (a batch keeps at least one step)
            t = int((~sample["pad_mask"]).sum())
            sample.update({k: sample[k][:t] for k in ("sentinel", "dates", "pad_mask")})
        return sample

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """Return the samples of a batch: a monthly view's as one :class:`Batch` read whole, others one by one."""
        return self.read_batch(indices) if self.monthly else self._samples(indices)

    def _samples(self, indices: Sequence[int]) -> list[dict]:
        """Return each sample of a view without monthly composites (its own series length), or of no view."""
        rows = [int(self.rows[i]) for i in indices]
        got = self._read_rows(["aerial", "label"], rows)
        labels = self._labels(got["label"], indices)
        out = []
        for k, i in enumerate(indices):
            if self.view:
                sen, days = self._raw_series(i)
                pad = np.zeros(len(days), bool)
            else:
                sen = np.zeros((0, schema.N_S2_BANDS, self.window, self.window), np.float32)
                days, pad = np.zeros(0, np.int64), np.zeros(0, bool)
            out.append({
                "aerial": torch.from_numpy(got["aerial"][k]),
                "label": torch.from_numpy(labels[k]),
                "sentinel": torch.from_numpy(np.ascontiguousarray(sen)),
                "dates": torch.from_numpy(days),
                "pad_mask": torch.from_numpy(pad),
                "mtd": torch.from_numpy(self.mtd[i]),
                "patch_id": torch.tensor(self.patch_ids[i]),
                "row": torch.tensor(rows[k]),
            })
        return out

    def _labels(self, raw: np.ndarray, indices: Sequence[int]) -> np.ndarray:
        """Return a batch's raw label codes (B, y, x) as training classes (uint8 compact, else int64)."""
        labels = schema.to_train_classes(raw)
        unlabelled = ~self.has_label[np.asarray(indices, dtype=np.int64)]
        if unlabelled.any():
            labels[unlabelled] = schema.IGNORE_LABEL
        return labels if self.compact else labels.astype(np.int64)

    def read_batch(self, indices: Sequence[int]) -> Batch:
        """Return the samples of ``indices`` of a monthly view, already collated.

        Every array of the batch is read straight into its batch array; the returned :class:`Batch` is also the
        list of its samples (views into the batch), so it serves as ``__getitems__``'s result and
        :func:`collate` passes it through without a copy. Equal to collating :meth:`_samples`: with
        ``skip_empty`` each patch's clear months move to the front, in order, and the time axis is cut to the
        batch's longest series (at least 1); what lies beyond a patch's own months is zero and masked.
        """
        rows = [int(self.rows[i]) for i in indices]
        got = self._read_rows(["aerial", "label", "monthly"], rows)
        arrays = self._open()
        count, days = arrays["month_count"][rows], arrays["month_days"][rows].astype(np.int64)
        sen, pad = got["monthly"], count == 0
        if self.skip_empty:
            pad, days, sen = clear_months_first(pad, days, sen)
        sen = sen if self.compact else sen.astype(np.float32)
        idx = np.asarray(indices, dtype=np.int64)
        batch = {
            "aerial": torch.from_numpy(got["aerial"]),
            "label": torch.from_numpy(self._labels(got["label"], indices)),
            "sentinel": torch.from_numpy(sen),
            "dates": torch.from_numpy(days),
            "pad_mask": torch.from_numpy(pad),
            "mtd": torch.from_numpy(self.mtd[idx]),
            "patch_id": torch.from_numpy(self.patch_ids[idx]),
            "row": torch.tensor(rows, dtype=torch.int64),
        }
        return Batch(batch)


def clear_months_first(pad: np.ndarray, days: np.ndarray, sen: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (pad, days, sentinel) of a batch of monthly series with each series' clear months moved to the
    front, in order, and the month axis cut to the batch's longest (at least 1); what lies beyond a series' own
    months is zero and masked (the baseline's T' <= 12, ``skip_empty_months``)."""
    order = np.argsort(pad, axis=1, kind="stable")[:, :max(1, int((~pad).sum(1).max(initial=0)))]
    b = np.arange(len(pad))[:, None]  # (patch, month) pairs: whole 10 x W x W blocks are gathered
    pad, days, sen = pad[b, order], days[b, order], sen[b, order]
    days[pad], sen[pad] = 0, 0
    return pad, days, sen


class Batch(list):
    """A collated batch that is also the list of its samples (views into the batch's tensors).

    :func:`collate` returns :attr:`collated` as it is; anything else that iterates the list sees samples.
    """

    def __init__(self, collated: dict) -> None:
        n = len(collated["row"])
        super().__init__({k: v[i] for k, v in collated.items()} for i in range(n))
        self.collated = collated


def collate(samples: list[dict]) -> dict:
    """Stack samples into a batch, padding the time axis to the batch's longest series (padded = masked).

    A :class:`Batch` (read whole by :meth:`LakeDataset.read_batch`) is returned as it was collated.
    """
    if isinstance(samples, Batch):
        return samples.collated
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


__all__ = ["Batch", "LakeDataset", "clear_months_first", "collate", "select_rows"]
