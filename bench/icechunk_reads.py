"""Icechunk against the lake's own reads, in the same run: should the lake live in an Icechunk repository?

    pip install icechunk   # not a dependency of flair-lake
    python bench/icechunk_reads.py [--raw DIR] [--batches 40]

Icechunk gives a Zarr store transactions and snapshot isolation, which the lake gets from its own writer lock,
ordered writes and view generations (docs/lake-format.md). This measures what moving the lake into an Icechunk
repository would cost the two hot reads, on the benchmark tree (512 full-size patches):

- the loader's batches (10 shuffled train patches: aerial, label, monthly cube, month counts): the loader's own
  path (zarrs pipeline, one read per inner-chunk row run) on the local lake, zarr-python on the local lake, and
  zarr-python on an Icechunk repository holding the same arrays (same chunks, shards and codecs; Icechunk has no
  zarrs pipeline and the loader's direct reads cannot address its chunk files);
- the filter's read of whole super-area series (every ``sentinel/<area>/data``): the filter's block reader
  (flair_lake.chunkio) on the local lake, zarr-python on the local lake, and zarr-python on Icechunk.

Each reader is timed twice, alternated (A B C A B C); the best of each is printed with its ratio to the lake's
own path.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_tree, machine, warm_cache  # noqa: E402

LOADER_ARRAYS = ("aerial", "label")
VIEW_ARRAYS = ("monthly", "month_count")


def copy_to_icechunk(lake: str, view: str, path: Path):
    """Copy the arrays both reads use into a new Icechunk repository at ``path``; return its read-only store."""
    import icechunk
    import zarr

    src = zarr.open_group(lake, mode="r")
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(path)))
    session = repo.writable_session("main")
    root = zarr.group(store=session.store, zarr_format=3)
    names = [*LOADER_ARRAYS, *(f"views/{view}/{a}" for a in VIEW_ARRAYS),
             *(f"sentinel/{area}/data" for area, _ in src["sentinel"].groups())]
    for name in names:
        a = src[name]
        dst = root.create_array(name, shape=a.shape, chunks=a.chunks, shards=a.shards, dtype=a.dtype,
                                fill_value=a.fill_value, compressors=a.compressors, serializer=a.serializer)
        step = (a.shards or a.chunks)[0]
        for r in range(0, a.shape[0], step):
            dst[r:r + step] = a[r:r + step]
    session.commit("the arrays of the benchmark")
    return repo.readonly_session("main").store


def zarr_rows(group, view: str, rows) -> int:
    """Read each row of the loader's arrays through zarr-python; return the bytes read."""
    n = 0
    for name in (*LOADER_ARRAYS, *(f"views/{view}/{a}" for a in VIEW_ARRAYS)):
        arr = group[name]
        for r in rows:
            n += arr[int(r)].nbytes
    return n


def time_batches(read, batches: list[np.ndarray]) -> float:
    """Return samples/s of ``read(rows)`` over ``batches``."""
    t0 = time.perf_counter()
    for rows in batches:
        read(rows)
    return sum(len(b) for b in batches) / (time.perf_counter() - t0)


def time_series(read, areas: list[str]) -> float:
    """Return MB/s of ``read(area)`` (the bytes it returns) over every super-area."""
    t0, n = time.perf_counter(), 0
    for area in areas:
        n += read(area)
    return n / 1e6 / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", default=str(Path(tempfile.gettempdir()) / "flair-lake-bench-raw"))
    ap.add_argument("--batches", type=int, default=40)
    args = ap.parse_args()
    import importlib.util

    if importlib.util.find_spec("icechunk") is None:
        sys.exit("icechunk is not installed (`pip install icechunk`); it is not a dependency of flair-lake")
    import zarr

    from flair_lake.chunkio import iter_blocks
    from flair_lake.config import FilterConfig, IngestConfig
    from flair_lake.loader import LakeDataset
    from pipelines.filter import run_filter
    from pipelines.ingest import ingest

    raw = bench_tree(args.raw)
    from importlib.metadata import version

    print(f"machine: {machine()}; icechunk {version('icechunk')}, zarr {zarr.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        lake = str(Path(tmp) / "lake.zarr")
        ingest(raw, lake, IngestConfig(), progress=False)
        view = run_filter(lake, FilterConfig(monthly=True), progress=False).view
        ice = zarr.open_group(copy_to_icechunk(lake, view, Path(tmp) / "repo"), mode="r")
        local = zarr.open_group(lake, mode="r")
        warm_cache(tmp)
        ds = LakeDataset(lake, view=view, split="train")
        rng = np.random.default_rng(0)
        batches = [rng.choice(len(ds), 10, replace=False) for _ in range(args.batches)]
        row_batches = [ds.rows[b] for b in batches]
        areas = sorted(a for a, _ in local["sentinel"].groups())

        def blocks(area: str) -> int:
            return sum(block.nbytes for _, block in iter_blocks(local[f"sentinel/{area}/data"]))

        loaders = {"lake loader (zarrs, row runs)": lambda: time_batches(ds.read_batch, batches),
                   "zarr-python, local lake": lambda: time_batches(lambda r: zarr_rows(local, view, r), row_batches),
                   "zarr-python, Icechunk": lambda: time_batches(lambda r: zarr_rows(ice, view, r), row_batches)}
        series = {"filter block reader": lambda: time_series(blocks, areas),
                  "zarr-python, local lake": lambda: time_series(
                      lambda a: local[f"sentinel/{a}/data"][:].nbytes, areas),
                  "zarr-python, Icechunk": lambda: time_series(lambda a: ice[f"sentinel/{a}/data"][:].nbytes, areas)}
        for title, readers, unit in (("loader batches", loaders, "samples/s"),
                                     ("whole super-area series", series, "MB/s")):
            best = {name: 0.0 for name in readers}
            for _ in range(2):
                for name, run in readers.items():
                    best[name] = max(best[name], run())
            first = next(iter(best.values()))
            print(f"{title}:")
            for name, value in best.items():
                print(f"  {name}: {value:.0f} {unit} ({value / first:.2f}x the lake's own)")


if __name__ == "__main__":
    main()
