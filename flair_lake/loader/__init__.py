"""The zarr-streaming PyTorch loader: dataset, sampler, collate, device-side transform, ``make_loader``."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from flair_lake.loader.dataset import LakeDataset, collate, resolve_view, select_rows
from flair_lake.loader.sampler import EpochBatchSampler
from flair_lake.loader.transform import BatchTransform

__all__ = ["LakeDataset", "EpochBatchSampler", "BatchTransform", "collate", "make_loader", "resolve_view",
           "select_rows", "default_workers"]


def default_workers() -> int:
    """Return DataLoader workers for this machine: all cores but one for the trainer, at most 8."""
    return max(0, min((os.cpu_count() or 1) - 1, 8))


def _worker_init(_: int) -> None:
    """Give each DataLoader worker one decoding thread (no Blosc/zarr oversubscription, LAKE_NOTES §3)."""
    import zarr

    os.environ["BLOSC_NTHREADS"] = "1"
    torch.set_num_threads(1)
    zarr.config.set({"threading.max_workers": 1, "async.concurrency": 8})


def make_loader(lake: str, *, view: str | None = None, split: str | Sequence[str] | None = "train",
                batch_size: int = 10, num_workers: int | None = None, shuffle: bool | None = None,
                distributed: bool = False, seed: int = 0, drop_last: bool = False, prefetch_factor: int = 4,
                storage_options: dict | None = None, pin_memory: bool | None = None,
                skip_empty_months: bool | None = None, use_zarrs: bool | None = None
                ) -> torch.utils.data.DataLoader:
    """Return a DataLoader of batches (dicts, see ``schema.SAMPLE_KEYS``) from a lake view.

    Batches are read with one async gather per batch (``__getitems__``) and travel compact (labels uint8,
    monthly Sentinel-2 uint16) until :class:`BatchTransform` casts them on the device; workers are forkserver processes that
    open the store themselves, persistent, prefetching, with one decode thread each; memory is pinned when CUDA
    is present. With ``distributed`` the rank and world size come from ``torch.distributed`` and each rank
    reads a disjoint part of every epoch; call ``loader.batch_sampler.set_epoch(epoch)`` every epoch.
    """
    ds = LakeDataset(lake, view=view, split=split, storage_options=storage_options,
                     skip_empty_months=skip_empty_months, use_zarrs=use_zarrs, compact=True)
    rank, world = 0, 1
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    shuffle = (split == "train") if shuffle is None else shuffle
    sampler = EpochBatchSampler(len(ds), batch_size, shuffle=shuffle, rank=rank, world_size=world, seed=seed,
                                drop_last=drop_last)
    workers = default_workers() if num_workers is None else num_workers
    extra = {}
    if workers > 0:
        extra = dict(multiprocessing_context="forkserver", persistent_workers=True, prefetch_factor=prefetch_factor,
                     worker_init_fn=_worker_init)
    return torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                                       pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
                                       **extra)
