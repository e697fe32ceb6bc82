"""Benchmark ``flair-lake ingest``: patches/s with 1 and 2 Dask workers, speed-up, lake size vs raw.

    python bench/ingest.py [--raw DIR] [--workers 1 2] [--repeat 3]

The tree (512 full-size 512x512 patches, 8 super-areas) is generated once into --raw. One LocalCluster per
worker count is started beforehand and kept; each first ingests the tree once untimed (a warm-up: the workers
import rasterio, zarr and zarrs and set up GDAL, as a long-lived cluster has long done), then the timed runs
alternate between the worker counts, each into a fresh lake, so that a drift of the machine hits both alike.
The best run of each count is kept. Targets (2-core machine): >= 100 patches/s with 2 workers, speed-up
>= 1.7x, lake smaller than raw.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_tree, machine  # noqa: E402


def run(raw: Path, client, workers: int, workdir: Path, codec: str = "zstd") -> dict:
    """Ingest ``raw`` into a fresh lake on the cluster of ``client`` (``workers`` single-threaded workers)."""
    from flair_lake.config import IngestConfig
    from flair_lake.info import describe
    from pipelines.ingest import ingest

    lake = workdir / f"lake-w{workers}.zarr"
    shutil.rmtree(lake, ignore_errors=True)
    with client.as_current():  # ingest reuses this client of the scheduler it is given
        t0 = time.perf_counter()
        summary = ingest(raw, str(lake), IngestConfig(scheduler=client.scheduler.address, codec=codec),
                         progress=False)
        seconds = time.perf_counter() - t0
    rep = describe(str(lake))
    return {"workers": workers, "patches": summary.added, "seconds": seconds, "rate": summary.added / seconds,
            "lake_bytes": rep["stored_bytes"], "raw_bytes": rep["raw_bytes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", default=str(Path(tempfile.gettempdir()) / "flair-lake-bench-raw"))
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=3, help="runs per worker count (alternating); the best is kept")
    ap.add_argument("--codec", default="zstd", help="image codec of the lake (zstd, lz4, none)")
    args = ap.parse_args()
    raw = bench_tree(args.raw)
    print(f"machine: {machine()}")
    import dask
    from distributed import Client, LocalCluster

    from pipelines.cluster import WORKER_ENV, worker_dask_config

    dask.config.set(worker_dask_config())  # the LocalClusters below get what `dask_client` gives its workers
    results: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        clients = {}
        for w in args.workers:
            t0 = time.perf_counter()
            cluster = stack.enter_context(LocalCluster(n_workers=w, threads_per_worker=1, processes=True,
                                                       dashboard_address=":0", env=dict(WORKER_ENV)))
            clients[w] = stack.enter_context(Client(cluster, set_as_default=False))
            warm = run(raw, clients[w], w, Path(tmp), args.codec)
            print(f"workers={w}: cluster started in {time.perf_counter() - t0 - warm['seconds']:.1f} s, warm-up "
                  f"ingest {warm['rate']:.0f} patches/s (not counted)", flush=True)
        for i in range(args.repeat):  # worker counts alternate, so a drift of the machine hits both alike
            for w in args.workers:
                r = run(raw, clients[w], w, Path(tmp), args.codec)
                print(f"run {i + 1} workers={w}: {r['patches']} patches in {r['seconds']:.2f} s = {r['rate']:.0f} "
                      "patches/s", flush=True)
                if w not in results or r["rate"] > results[w]["rate"]:
                    results[w] = r
    for w, best in results.items():
        print(f"workers={w}: best {best['rate']:.0f} patches/s of {args.repeat} run(s)")
    base, top = results[min(results)], results[max(results)]
    speedup = top["rate"] / base["rate"]
    ratio = top["lake_bytes"] / top["raw_bytes"]
    print(f"speed-up {max(results)} vs {min(results)} workers: {speedup:.2f}x (target >= 1.7)")
    print(f"throughput with {max(results)} workers: {top['rate']:.0f} patches/s (target >= 100)")
    print(f"lake / raw bytes: {top['lake_bytes'] / 1e6:.0f} MB / {top['raw_bytes'] / 1e6:.0f} MB = {ratio:.3f} "
          "(target < 1)")


if __name__ == "__main__":
    main()
