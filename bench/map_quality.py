"""Blended maps against per-patch predictions on the test zones of the small synthetic world.

    python bench/map_quality.py [--dir DIR] [--epochs 12] [--ckpt CKPT] [--picture docs/img/map.png]

Builds the ``small`` world (320 patches of 128 px; test = two held-out departements, 4 zones), trains U-T&T as
bench/fusion.py does (AdamW, lr 1e-3, batch 8, seed 0) unless ``--ckpt`` is given, then maps the test zones
twice: one window per patch (``--overlap 0 --blend none``: the per-patch mosaic) and blended (the defaults:
overlap a quarter of the tile, cosine). Prints the official mIoU of each against the labels on the same pixels
(``evaluate --map``) and the seam ratio at the patch borders (1 = seamless), and draws one zone: truth,
per-patch mosaic, blended map.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine  # noqa: E402
from bench.map import world  # noqa: E402


def zone_truth(lake: str, zone: str) -> np.ndarray:
    """Return a zone's labels as training classes on the zone's grid (255 off the patches)."""
    import zarr

    from flair_lake import schema
    from flair_lake.maps.sources import ZoneSource

    root = zarr.open_group(lake, mode="r")
    rows = np.flatnonzero(np.array(root.attrs["areas"])[root["zone"][:]] == zone)
    src = ZoneSource(lake, zone, rows, view=None, fill=np.zeros(5, np.uint8))
    out = np.full((src.grid.height, src.grid.width), 255, np.uint8)
    s = src.size
    for k, r in enumerate(rows):
        y, x = src.offsets[k]
        out[y:y + s, x:x + s] = schema.to_train_classes(root["label"][int(r)])
    return out


def picture(path: Path, zone: str, panels: list[tuple[str, np.ndarray]], size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from flair_lake.maps.write import class_colours

    colours = [tuple(c / 255 for c in class_colours()[i]) for i in range(13)]
    cmap = ListedColormap(colours)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6))
    for ax, (title, img) in zip(axes, panels, strict=True):
        shown = np.ma.masked_equal(img, 255)
        ax.imshow(shown, cmap=cmap, vmin=-0.5, vmax=12.5, interpolation="nearest")
        for k in range(size, img.shape[0], size):
            ax.axhline(k - 0.5, color="white", lw=0.6, ls=":")
        for k in range(size, img.shape[1], size):
            ax.axvline(k - 0.5, color="white", lw=0.6, ls=":")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"synthetic zone {zone} (dotted: patch borders)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "flair-lake-map-quality"))
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--ckpt", default=None, help="a U-T&T checkpoint trained on this world (skips training)")
    ap.add_argument("--picture", default=None, help="PNG of one test zone: truth | per-patch | blended")
    args = ap.parse_args()
    import rasterio

    from flair_lake.config import MapConfig, TrainConfig
    from flair_lake.maps.score import score_maps, seam_ratio
    from pipelines.maps import run_map

    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}", flush=True)
    lake = world(work, "small")
    ckpt = Path(args.ckpt) if args.ckpt else work / "utt" / "best.pt"
    if not ckpt.exists():
        from flair_lake.training.loop import fit

        t0 = time.perf_counter()
        fit(TrainConfig(lake=lake, model="utt", epochs=args.epochs, batch_size=8, lr=1e-3, optimizer="adamw",
                        seed=0, out=str(ckpt.parent), workers=0))
        print(f"trained U-T&T in {time.perf_counter() - t0:.0f} s", flush=True)
    results = {}
    for name, cfg in (("per-patch", MapConfig(overlap=0, blend="none", probabilities=True)),
                      ("blended", MapConfig(probabilities=True))):
        out = work / f"maps-{name}"
        summary = run_map(str(ckpt), out, cfg, lake=lake, split="test", progress=False)
        score = score_maps(out, lake, split="test")
        seams = []
        for m in sorted(out.glob("*_prob.tif")):
            with rasterio.open(m) as ds:
                prob = ds.read()[:13]
            size = 128
            seams.append(seam_ratio(prob, list(range(size, prob.shape[1], size)),
                                    list(range(size, prob.shape[2], size))))
        results[name] = (score["miou"], float(np.mean(seams)), summary, out)
        print(f"{name}: test mIoU {score['miou']:.4f} over {score['patches']} patches; seam ratio at patch borders "
              f"{np.mean(seams):.3f}; {summary.windows} windows, {summary.km2:.3f} km^2 in {summary.seconds:.1f} s",
              flush=True)
    if args.picture:
        out = results["blended"][3]
        zone = sorted(p.stem for p in out.glob("*.tif") if not p.stem.endswith("_prob"))[0]
        panels = [("truth", zone_truth(lake, zone))]
        for name in ("per-patch", "blended"):
            with rasterio.open(results[name][3] / f"{zone}.tif") as ds:
                panels.append((f"{name}: mIoU {results[name][0]:.3f} (test zones)", ds.read(1)))
        picture(Path(args.picture), zone, panels, 128)
        print(f"wrote {args.picture}")


if __name__ == "__main__":
    main()
