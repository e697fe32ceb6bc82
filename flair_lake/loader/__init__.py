"""The zarr-streaming PyTorch loader: dataset, sampler, collate, device-side transform, ``make_loader``."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from flair_lake.config import LOADER_PREFETCH, TrainConfig
from flair_lake.loader.dataset import LakeDataset, collate, select_rows
from flair_lake.loader.sampler import EpochBatchSampler
from flair_lake.loader.threaded import ThreadedLoader
from flair_lake.loader.transform import BatchTransform

__all__ = ["LakeDataset", "EpochBatchSampler", "BatchTransform", "ThreadedLoader", "collate", "make_loader",
           "select_rows", "default_workers", "default_worker_kind"]

THREAD_WORKERS_MAX_CORES = 4  # measured on 2 cores: 2 threads 522 samples/s, 2 processes 196 (docs/benchmarks.md)


def default_worker_kind() -> str:
    """Return 'thread' on small machines (inter-process copies cost more than decoding) else 'process'."""
    return "thread" if (os.cpu_count() or 1) <= THREAD_WORKERS_MAX_CORES else "process"


def default_workers(kind: str = "process") -> int:
    """Return loader workers: threads, one per core; processes: all cores but one, at most 8."""
    if kind == "thread":
        return max(1, os.cpu_count() or 1)
    return max(0, min((os.cpu_count() or 1) - 1, 8))


def _worker_init(_: int) -> None:
    """Give each DataLoader worker one decoding thread (no Blosc/zarr oversubscription, docs/benchmarks.md)."""
    import zarr

    os.environ["BLOSC_NTHREADS"] = "1"
    torch.set_num_threads(1)
    zarr.config.set({"threading.max_workers": 1, "async.concurrency": 8})


def make_loader(lake: str, *, view: str | None = None, split: str | Sequence[str] | None = TrainConfig.train_split,
                batch_size: int = TrainConfig.batch_size, num_workers: int | None = None, shuffle: bool | None = None,
                distributed: bool = False, seed: int = 0, drop_last: bool = False,
                prefetch_factor: int = LOADER_PREFETCH,
                storage_options: dict | None = None, pin_memory: bool | None = None,
                skip_empty_months: bool | None = None, use_zarrs: bool | None = None,
                worker_kind: str | None = None):
    """Return a loader of batches (dicts, see ``schema.SAMPLE_KEYS``) from a lake view.

    Batches are read whole (``__getitems__``: one codec call per array of a monthly view) and travel compact
    (labels uint8, monthly Sentinel-2 uint16) until :class:`BatchTransform` casts them on the device. On a small
    machine (<= 4 cores) the workers are threads of this process (:class:`ThreadedLoader`: decoding releases the
    GIL, and no inter-process copies); elsewhere they are forkserver DataLoader processes that open the store
    themselves, persistent, prefetching, one decode thread each. ``worker_kind`` overrides the choice. Memory
    is pinned when CUDA is present. With ``distributed`` each rank reads a disjoint part of every epoch; call
    ``loader.batch_sampler.set_epoch(epoch)`` every epoch.
    """
    ds = LakeDataset(lake, view=view, split=split, storage_options=storage_options,
                     skip_empty_months=skip_empty_months, use_zarrs=use_zarrs, compact=True)
    rank, world = 0, 1
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    shuffle = (split == "train") if shuffle is None else shuffle
    sampler = EpochBatchSampler(len(ds), batch_size, shuffle=shuffle, rank=rank, world_size=world, seed=seed,
                                drop_last=drop_last)
    kind = worker_kind or default_worker_kind()
    if kind not in ("thread", "process"):
        raise ValueError(f"worker_kind must be 'thread' or 'process', got {kind!r}")
    workers = default_workers(kind) if num_workers is None else num_workers
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    if kind == "thread" and workers > 0:
        return ThreadedLoader(ds, sampler, collate, threads=workers, prefetch=prefetch_factor, pin_memory=pin)
    extra = {}
    if workers > 0:
        extra = dict(multiprocessing_context="forkserver", persistent_workers=True, prefetch_factor=prefetch_factor,
                     worker_init_fn=_worker_init)
    return torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                                       pin_memory=pin, **extra)
