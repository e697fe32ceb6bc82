"""Benchmark ``flair-lake map``: km^2/hour against the bare model's forward passes on the same windows, and the
peak memory of raster maps of two sizes.

    python bench/map.py [--model utt] [--preset small] [--rounds 3] [--sizes 1024 4096] [--dir DIR]

The map run reads the lake, rebuilds each window's Sentinel-2 input, blends, and writes block files and COGs;
the bare forward runs the model on the same windows' inputs, prepared in memory beforehand. Both run in this
process, alternated ``--rounds`` times; the goal is map time < 1.15 x forward time (I/O, blending and writing
under 15 % of the forward). The checkpoint is an untrained model saved in train's format (the forward costs
the same trained or not). Peak memory: ``flair-lake map --image`` of random rasters of ``--sizes`` px, each in a
fresh process (ru_maxrss).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def world(folder: Path, preset: str) -> str:
    """Return a lake of a synthetic world with the default monthly view (built once in ``folder``)."""
    from flair_lake.config import FilterConfig, IngestConfig, SynthConfig
    from flair_lake.synth import synthesize
    from pipelines.filter import run_filter
    from pipelines.ingest import ingest

    lake = folder / f"{preset}.zarr"
    if not (lake / "zarr.json").exists():
        synthesize(folder / f"raw-{preset}", SynthConfig.from_preset(preset), overwrite=True)
        ingest(folder / f"raw-{preset}", str(lake), IngestConfig())
        run_filter(str(lake), FilterConfig(monthly=True))
    return str(lake)


def checkpoint(lake: str, model: str, path: Path) -> Path:
    """Save an untrained ``model`` in train's checkpoint format, with the lake's view, stats and patch size."""
    import torch

    from flair_lake import lake as lk
    from flair_lake.loader.dataset import LakeDataset
    from flair_lake.models import create_model

    ds = LakeDataset(lake, split="all")
    torch.manual_seed(0)
    net = create_model(model)
    torch.save({"model_name": model, "model_kwargs": {}, "state_dict": net.state_dict(), "view": ds.view,
                "view_params": ds.view_params, "patch_size": ds.patch_size,
                "band_stats": lk.open_lake(lake).attrs.get("band_stats", {})}, path)
    return path


def window_inputs(lake: str, ckpt: Path, cfg, split: str):
    """Return the map's windows' model inputs, batched as the map batches them, and the predictor."""
    from flair_lake.maps.grid import Windows, blocks
    from flair_lake.maps.infer import Predictor
    from pipelines.maps import lake_targets

    pred = Predictor(ckpt)
    batches = []
    for target in lake_targets(lake, split=split, zones=None, view=_view(ckpt)):
        src = target.source(pred.fill, pred.reads_sentinel)
        w = Windows.over(src.grid, cfg.tile, cfg.overlap, cfg.blend)
        for block in blocks(src.grid, cfg.block):
            iy, ix = w.touching(block)
            for i in iy:
                y = int(w.ys[i])
                for k in range(0, len(ix), cfg.batch_size):
                    js = ix[k:k + cfg.batch_size]
                    imgs = np.stack([src.read(y, int(w.xs[j]), cfg.tile, cfg.tile)[0] for j in js])
                    centres = np.array([[y + cfg.tile / 2, w.xs[j] + cfg.tile / 2] for j in js], np.float64)
                    batches.append((imgs, src.sentinel(centres) if pred.reads_sentinel else None, None))
    return pred, batches


def _view(ckpt: Path) -> str | None:
    import torch

    return torch.load(ckpt, map_location="cpu", weights_only=False)["view"]


def peak_rss_mb(args: list[str]) -> float:
    """Run a flair-lake command in a fresh process and return its peak resident memory, MB."""
    code = ("import resource, sys; from flair_lake.cli import main\n"
            "try:\n    main(sys.argv[1:], prog_name='flair-lake')\nexcept SystemExit as e:\n    assert not e.code, e\n"
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    res = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    if res.returncode:
        raise SystemExit(res.stderr[-2000:])
    return float(res.stdout.split("PEAK")[-1])


def random_raster(path: Path, size: int) -> None:
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    rng = np.random.default_rng(size)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=5, dtype="uint8", tiled=True,
                       compress="lzw", crs="EPSG:2154", transform=Affine(0.2, 0, 900_000, 0, -0.2, 6_500_000)) as ds:
        for r in range(0, size, 512):
            h = min(512, size - r)
            ds.write(rng.integers(0, 255, (5, h, size), dtype=np.uint8), window=Window(0, r, size, h))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="utt")
    ap.add_argument("--preset", default="small", help="synthetic world (small: zones of 4 x 4 patches of 128 px)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs=2, default=[1024, 4096], help="raster sides for peak memory (px)")
    ap.add_argument("--dir", default=None, help="work folder (kept; default: a temporary one)")
    args = ap.parse_args()
    import torch

    from flair_lake.config import MapConfig
    from pipelines.maps import run_map

    work = Path(args.dir or tempfile.mkdtemp(prefix="flair-map-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}; "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}", flush=True)
    lake = world(work, args.preset)
    ckpt = checkpoint(lake, args.model, work / f"{args.model}.pt")
    import zarr

    size = int(zarr.open_group(lake, mode="r").attrs["patch_size"])
    cfg = MapConfig().resolved(size)
    pred, batches = window_inputs(lake, ckpt, cfg, args.split)
    n_windows = sum(len(b[0]) for b in batches)
    print(f"{args.model}, tile {cfg.tile} px, overlap {cfg.overlap}, {cfg.blend}, batch {cfg.batch_size}: "
          f"{n_windows} windows over the {args.split} zones", flush=True)
    for b in batches[:2]:  # warm-up: the model's first passes, and the map's one-time imports and GDAL set-up
        pred(*b)
    run_map(str(ckpt), work / "warm-up", cfg, lake=lake, split=args.split, progress=False)
    maps, fwd = [], []
    for r in range(args.rounds):
        t0 = time.perf_counter()
        for b in batches:
            pred(*b)
        fwd.append(time.perf_counter() - t0)
        out = work / "maps"
        shutil.rmtree(out, ignore_errors=True)
        summary = run_map(str(ckpt), out, cfg, lake=lake, split=args.split, progress=False)
        maps.append(summary.seconds)
        assert summary.windows == n_windows, (summary.windows, n_windows)
        print(f"round {r + 1}: forward {fwd[-1]:.2f} s, map {maps[-1]:.2f} s ({summary.km2:.3f} km^2, "
              f"{summary.km2 / maps[-1] * 3600:.2f} km^2/hour)", flush=True)
    f, m = statistics.median(fwd), statistics.median(maps)
    print(f"median: bare forward {f:.2f} s, map {m:.2f} s -> map / forward {m / f:.3f} "
          f"(I/O, blending and writing {100 * (m - f) / f:.1f} % of the forward; goal < 15 %); "
          f"{summary.km2 / m * 3600:.2f} km^2/hour")
    unet = checkpoint(lake, "unet", work / "unet.pt")
    peaks = {}
    for side in args.sizes:
        raster = work / f"raster{side}.tif"
        if not raster.exists():
            random_raster(raster, side)
        out = work / f"raster{side}"
        shutil.rmtree(out, ignore_errors=True)
        peaks[side] = peak_rss_mb(["map", "--ckpt", unet, "--image", raster, "--out", out, "--tile", 128,
                                   "--block", 1024])
        print(f"--image {side} x {side} px (unet, tile 128, block 1024): peak RSS {peaks[side]:.0f} MB", flush=True)
    a, b = args.sizes
    print(f"peak memory {peaks[b] / peaks[a]:.2f}x for {(b / a) ** 2:.0f}x the pixels")


if __name__ == "__main__":
    main()
