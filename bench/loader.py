"""Benchmark the lake loader against the baseline's per-sample raw reader, in the same run.

    python bench/loader.py [--raw DIR] [--workers 0 2] [--batches 30]

Ingests the benchmark tree (512 full-size patches) and builds the baseline-preset view, then reads shuffled
batches of 10 train+val samples (aerial, labels, monthly Sentinel-2) through (a) ``make_loader`` and (b) a
DataLoader over ``RawBaselineDataset`` (rasterio + super-area crop + per-sample filter and monthly mean, the
released baseline's data path). Prints samples/s of each and the ratio. The measured anchor for (b) on the
2-core machine is 73-92 samples/s per process.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_tree, machine, warm_cache  # noqa: E402


def rate(loader, batches: int) -> float:
    """Return samples/s over ``batches`` batches after a warm-up of two batches per worker (workers started)."""
    it = iter(loader)
    for _ in range(max(1, 2 * loader.num_workers)):
        next(it)
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            b = next(it)
        n += len(b["patch_id"])
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", default=str(Path(tempfile.gettempdir()) / "flair-lake-bench-raw"))
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--codec", default="zstd")
    args = ap.parse_args()
    from flair_lake.config import FilterConfig, IngestConfig
    from flair_lake.loader import collate, make_loader
    from flair_lake.loader.raw import RawBaselineDataset
    from pipelines.filter import run_filter
    from pipelines.ingest import ingest

    raw = bench_tree(args.raw)
    print(f"machine: {machine()}")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        lake = str(Path(tmp) / "lake.zarr")
        ingest(raw, lake, IngestConfig(codec=args.codec), progress=False)
        run_filter(lake, FilterConfig.baseline(), progress=False)
        warm_cache(lake, raw)  # both readers start from a warm page cache
        for w in args.workers:
            if w:
                threads = make_loader(lake, split=["D006_2020", "D033_2021", "D004_2021"], batch_size=10,
                                      num_workers=w, shuffle=True, worker_kind="thread")
                print(f"workers={w} as threads: lake loader {rate(threads, args.batches):.0f} samples/s", flush=True)
            lake_loader = make_loader(lake, split=["D006_2020", "D033_2021", "D004_2021"], batch_size=10,
                                      num_workers=w, shuffle=True, worker_kind="process")
            raw_ds = RawBaselineDataset(raw, split=None)
            raw_loader = torch.utils.data.DataLoader(
                raw_ds, batch_size=10, shuffle=True, num_workers=w, collate_fn=collate,
                **({"multiprocessing_context": "forkserver", "persistent_workers": True} if w else {}))
            lake_rate, raw_rate = rate(lake_loader, args.batches), rate(raw_loader, args.batches)
            print(f"workers={w} as processes: lake loader {lake_rate:.0f} samples/s, "
                  f"raw per-sample reader {raw_rate:.0f} "
                  f"samples/s, ratio {lake_rate / raw_rate:.2f}x", flush=True)


if __name__ == "__main__":
    main()
