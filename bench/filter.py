"""Benchmark ``flair-lake filter --monthly``: patches/s with 2 Dask workers, against the baseline's loops.

    python bench/filter.py [--raw DIR] [--workers 2]

Ingests the benchmark tree (512 full-size patches, generated once into --raw) into a temporary lake, then
times ``filter --cloud 0.6 --monthly`` on a LocalCluster started beforehand. The comparison, measured in the
same run, is the released baseline's per-sample path (crop the super-area at the centroid, Python loops over
dates for the filter and over months for the means, docs/baseline.md, "Cloud and snow filter") on the same patches.
Target (2-core machine): >= 1,000 patches/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_tree, machine  # noqa: E402


def baseline_per_sample(tree, n: int) -> float:
    """Return samples/s of the baseline's per-sample filter and monthly mean on ``n`` patches."""
    patches = sorted(tree.patches.values(), key=lambda p: p.patch_id)[:n]
    t0 = time.perf_counter()
    for p in patches:
        area = tree.areas[p.area]
        r, c = p.centroid
        sp = np.load(area.data, mmap_mode="r")[:, :, r - 20:r + 20, c - 20:c + 20]
        mask = np.load(area.masks, mmap_mode="r")[:, :, r - 20:r + 20, c - 20:c + 20].astype(int)
        months = [int(line[15:17]) for line in area.products.read_text().splitlines()]
        keep = [t for t in range(mask.shape[0])
                if (np.count_nonzero(mask[t, 0] >= 60) + np.count_nonzero(mask[t, 1] >= 60)) / 1600 < 0.6]
        sp = sp[keep]
        kept = [months[t] for t in keep]
        for m in range(1, 13):
            idx = [i for i, mm in enumerate(kept) if mm == m]
            if idx:
                np.mean(sp[idx], axis=0)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", default=str(Path(tempfile.gettempdir()) / "flair-lake-bench-raw"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="threads per worker")
    ap.add_argument("--codec", default="zstd", help="ingest codec of the lake the filter reads")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs (a fresh view each)")
    args = ap.parse_args()
    from distributed import Client, LocalCluster

    from flair_lake.config import FilterConfig, IngestConfig
    from flair_lake.raw.discover import discover
    from pipelines.cluster import WORKER_ENV
    from pipelines.filter import run_filter
    from pipelines.ingest import ingest

    raw = bench_tree(args.raw)
    print(f"machine: {machine()}")
    import dask

    from pipelines.cluster import worker_dask_config

    dask.config.set(worker_dask_config())  # the LocalCluster below gets what `dask_client` gives its workers
    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(n_workers=args.workers, threads_per_worker=args.threads, processes=True,
                         dashboard_address=":0",
                         env=dict(WORKER_ENV)) as cluster, Client(cluster):
        lake = str(Path(tmp) / "lake.zarr")
        ingest(raw, lake, IngestConfig(scheduler=cluster.scheduler_address, codec=args.codec), progress=False)
        rates: list[float] = []
        for i in range(args.repeat):
            # start each run with no dirty pages: otherwise the disk's writeback of the ingest (or of the previous
            # run) throttles this run's writes, and the number measures the disk rather than the filter
            os.sync()
            t0 = time.perf_counter()
            s = run_filter(lake, FilterConfig(monthly=True), name=f"bench{i}", scheduler=cluster.scheduler_address,
                           progress=False)
            wall = time.perf_counter() - t0
            rate = s.patches / wall
            rates.append(rate)
            phases = _phases(lake, f"bench{i}")
            print(f"run {i}: {s.patches} patches in {wall:.2f} s = {rate:.0f} patches/s; worker seconds "
                  + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()))
    base = baseline_per_sample(discover(raw), 128)
    best, median = max(rates), float(np.median(rates))
    print(f"filter --monthly, {args.workers} workers: best {best:.0f} patches/s, median {median:.0f} of "
          f"{len(rates)} runs (target >= 1000)")
    print(f"baseline per-sample loops, 1 process: {base:.0f} patches/s; ratio {best / base:.1f}x (best), "
          f"{median / base:.1f}x (median)")


def _phases(lake: str, view: str) -> dict[str, float]:
    """Return the worker seconds of a view's shard tasks by phase (from the shard markers)."""
    import zarr

    phases: dict[str, float] = {}
    for _, marker in zarr.open_group(lake, mode="r")[f"views/{view}/done"].groups():
        for k, v in marker.attrs["seconds"].items():
            phases[k] = phases.get(k, 0.0) + v
    return phases


if __name__ == "__main__":
    main()
