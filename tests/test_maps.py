"""``flair-lake map``: seamless zone maps and raster maps, on the exact grid of the patches, as valid COGs.

Checkpoints are trained for one batch on the tiny synthetic lake (zones of 2 x 2 patches of 64 px).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from conftest import killed_on_call
from hypothesis import given, settings
from hypothesis import strategies as st

from flair_lake.cli import main
from flair_lake.config import TrainConfig
from flair_lake.maps.grid import Block, PixelGrid, Windows, axis_weights, window_starts
from flair_lake.maps.infer import predict_block
from flair_lake.maps.score import seam_ratio

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpts(monthly_lake, tmp_path_factory):
    """U-T&T and U-Net checkpoints trained for one batch on the monthly view."""
    from flair_lake.training.loop import fit

    out = {}
    for model in ("utt", "unet"):
        run = tmp_path_factory.mktemp(model)
        fit(TrainConfig(lake=monthly_lake, model=model, epochs=1, batch_size=4, max_batches=1, workers=0,
                        out=str(run), lr=0.01))
        out[model] = run / "best.pt"
    return out


def cli(*args) -> object:
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res


def ok(*args) -> str:
    res = cli(*args)
    assert res.exit_code == 0, res.output
    return res.output


# --- geometry -------------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(length=st.integers(1, 700), tile=st.sampled_from([32, 64, 128]), frac=st.floats(0, 0.9),
       blend=st.sampled_from(["cosine", "linear", "none"]))
def test_windows_cover_the_axis_and_weights_are_a_partition_of_unity(length, tile, frac, blend):
    overlap = int(tile * frac)
    starts = window_starts(length, tile, overlap)
    w = axis_weights(starts, tile, blend)
    total, count = np.zeros(max(length, tile)), np.zeros(max(length, tile), int)
    for s, wk in zip(starts, w, strict=True):
        total[s:s + tile] += wk
        count[s:s + tile] += 1
    assert starts[0] == 0 and (starts[-1] + tile >= length)
    assert np.all(w >= 0) and np.all(total[:length] > 0)  # every pixel has weight: the blender's sum divides
    pairs = count[:length] <= 2  # where at most two windows meet (a moved last window can make three)
    np.testing.assert_allclose(total[:length][pairs | (blend == "none")], 1.0, atol=1e-9)
    if blend == "none":  # one owner per pixel
        assert set(np.unique(w)) <= {0.0, 1.0}


def test_blocks_blend_windows_into_a_convex_combination():
    """A predictor whose windows are each one constant distribution: every blended pixel is the weighted mean
    of the windows over it, with weights summing to one, and blocks of any size give the same map."""
    grid = PixelGrid(0.0, 0.0, 1.0, 150, 170, None)
    windows = Windows.over(grid, 64, 24, "cosine")
    rng = np.random.default_rng(0)
    table = {(int(y), int(x)): rng.dirichlet(np.ones(13)).astype(np.float32)
             for y in windows.ys for x in windows.xs}

    class Source:
        def prefetch(self, *a):
            pass

        def read(self, r0, c0, h, w):
            return np.full((5, h, w), (r0 * 1000 + c0) % 251, np.uint8), np.ones((h, w), bool)

        def valid(self, r0, r1, c0, c1):
            return np.ones((r1 - r0, c1 - c0), bool)

    def predictor(imgs, _sen, _mtd):  # the window's origin is encoded in its pixels: look its distribution up
        out = []
        for img in imgs:
            code = int(img[0, 0, 0])
            key = next(k for k in table if (k[0] * 1000 + k[1]) % 251 == code)
            out.append(np.broadcast_to(table[key][:, None, None], (13, 64, 64)))
        return np.stack(out)

    # the expected map, from the full-size weights
    num, den = np.zeros((13, 150, 170)), np.zeros((150, 170))
    for i, y in enumerate(windows.ys):
        for j, x in enumerate(windows.xs):
            w = windows.wy[i][:, None] * windows.wx[j][None, :]
            num[:, y:y + 64, x:x + 64] += table[(int(y), int(x))][:, None, None] * w
            den[y:y + 64, x:x + 64] += w
    assert den.min() > 0  # (three windows meet near the bottom, where the last row of windows was moved back)
    expected = num / den
    for size in (170, 64, 50):
        got = np.zeros((13, 150, 170))
        for r in range(0, 150, size):
            for c in range(0, 170, size):
                block = Block(r, min(r + size, 150), c, min(c + size, 170))

                def write(rows, block=block, got=got):
                    h = rows.classes.shape[0]
                    got[:, block.r0 + rows.row:block.r0 + rows.row + h, block.c0:block.c1] = rows.probabilities

                predict_block(Source(), windows, block, predictor, write, batch_size=3, probabilities=True,
                              reads_sentinel=False, reads_mtd=False)
        np.testing.assert_allclose(got, np.rint(expected * 255), atol=1)


def test_the_super_area_grid_comes_from_centroids_and_disagreement_is_said():
    """Centroids with their Sentinel-2 rows and columns bound the area's corner to 10 m: the middle of the
    bounds puts every centroid back in its own pixel; a patch whose column is off is said in one line."""
    from flair_lake.maps.sources import area_corner

    rng = np.random.default_rng(0)
    west, north = 951_003.7, 6_212_408.2
    cx = west + rng.uniform(200, 900, 30)
    cy = north - rng.uniform(200, 900, 30)
    rows, cols = np.floor((north - cy) / 10).astype(int), np.floor((cx - west) / 10).astype(int)
    w, n, warning = area_corner(cx, cy, rows, cols, "Z")
    assert warning is None and abs(w - west) < 10 and abs(n - north) < 10
    np.testing.assert_array_equal(np.floor((cx - w) / 10), cols)
    np.testing.assert_array_equal(np.floor((n - cy) / 10), rows)
    cols[3] += 2
    *_, warning = area_corner(cx, cy, rows, cols, "Z")
    assert warning.startswith("zone Z: the centroids of its patches disagree") and "median" in warning


# --- zone maps ------------------------------------------------------------------------------------------------
def _read_at(map_path: Path, bounds) -> np.ndarray:
    with rasterio.open(map_path) as ds:
        win = ds.window(*bounds).round_offsets().round_lengths()
        return ds.read(1, window=win, boundless=True, fill_value=255)


@pytest.mark.parametrize("model", ["utt", "unet"])
def test_one_window_per_patch_is_the_per_patch_prediction_on_its_transform(monthly_lake, ckpts, tmp_path, model):
    """No overlap, a window per patch: the zone map equals `predict`'s GeoTIFFs pixel for pixel, each patch
    where its transform puts it (U-T&T included: its Sentinel-2 windows are rebuilt from the super-area)."""
    ok("predict", "--ckpt", ckpts[model], "--lake", monthly_lake, "--split", "test", "--out", tmp_path / "pred",
       "--batch-size", 1)
    out = ok("map", "--ckpt", ckpts[model], "--lake", monthly_lake, "--split", "test", "--out", tmp_path / "maps",
             "--overlap", 0, "--blend", "none")
    assert "mapped" in out and "km^2/hour" in out
    maps = sorted((tmp_path / "maps").glob("D*.tif"))
    assert len(maps) == 2  # the two test zones
    preds = sorted((tmp_path / "pred").glob("PRED_*.tif"))
    assert len(preds) == 8
    for p in preds:
        with rasterio.open(p) as ds:
            truth, bounds = ds.read(1), ds.bounds
        hits = [m for m in maps if not rasterio.coords.disjoint_bounds(bounds, rasterio.open(m).bounds)]
        assert len(hits) == 1
        np.testing.assert_array_equal(_read_at(hits[0], bounds), truth)


def test_maps_are_styled_cogs_with_an_index(monthly_lake, ckpts, tmp_path):
    from rio_cogeo.cogeo import cog_validate

    out = tmp_path / "maps"
    ok("map", "--ckpt", ckpts["unet"], "--lake", monthly_lake, "--zones", "D015_2020-Z1_NN,D006_2020-Z1_NN",
       "--out", out, "--probabilities", "--block", 64)
    files = sorted(out.glob("*.tif"))
    assert [f.name for f in files] == ["D006_2020-Z1_NN.tif", "D006_2020-Z1_NN_prob.tif", "D015_2020-Z1_NN.tif",
                                       "D015_2020-Z1_NN_prob.tif"]
    for f in files:
        valid, errors, warnings = cog_validate(str(f), quiet=True)
        assert valid and not errors, (f, errors, warnings)
    with rasterio.open(out / "D015_2020-Z1_NN.tif") as ds:
        assert ds.nodata == 255 and ds.crs.to_epsg() == 2154 and ds.res == (1.6, 1.6)
        assert ds.colormap(1)[0] == (219, 14, 154, 255)  # building, the official colour
        names = json.loads(ds.tags()["CLASS_NAMES"])
        assert names["0"] == "building" and names["12"] == "other"
        assert ds.tags()["OVERVIEW_RESAMPLING"] == "MODE"
        classes = ds.read(1)
        assert classes.max() <= 12  # the 2 x 2 patches cover the zone: no nodata
    with rasterio.open(out / "D015_2020-Z1_NN_prob.tif") as ds:
        prob = ds.read()
        assert ds.count == 14 and ds.descriptions[-1] == "confidence"
        total = prob[:13].astype(int).sum(0)
        assert np.all(np.abs(total - 255) <= 7)  # probabilities (rounded to 1/255) sum to one
        np.testing.assert_array_equal(prob[13], prob[:13].max(0))
        # the class is the most probable one (to the 1/255 the bands are rounded to)
        np.testing.assert_array_equal(np.take_along_axis(prob[:13], classes[None], 0)[0], prob[13])
    qml = ET.parse(out / "D015_2020-Z1_NN.qml").getroot()
    entries = qml.findall(".//paletteEntry")
    assert len(entries) == 13 and entries[0].get("label") == "building" and entries[0].get("color") == "#db0e9a"
    with rasterio.open(out / "index.vrt") as ds:  # one mosaic of both zones, each where it belongs
        assert ds.colormap(1)[4][:3] == (21, 83, 174)
        with rasterio.open(out / "D006_2020-Z1_NN.tif") as z:
            win = ds.window(*z.bounds).round_offsets().round_lengths()
            np.testing.assert_array_equal(ds.read(1, window=win), z.read(1))
    assert not list((out / ".jobs").rglob("*.tif"))  # block files are removed once their map is written


def test_blending_removes_seams_and_scores_on_the_same_pixels(monthly_lake, ckpts, tmp_path):
    """Probabilities jump across patch borders in the per-patch mosaic (each patch sees no context); the
    blended map's are smoother there, and --blend none's jumps move to its crop lines, where the cosine blend
    is smoother again. evaluate --map scores the per-patch mosaic exactly as evaluate scores the checkpoint."""
    zone = "D015_2020-Z1_NN"

    def prob(name, *args):
        ok("map", "--ckpt", ckpts["unet"], "--lake", monthly_lake, "--zones", zone, "--out", tmp_path / name,
           "--probabilities", *args)
        with rasterio.open(tmp_path / name / f"{zone}_prob.tif") as ds:
            return ds.read()[:13]

    mosaic = prob("mosaic", "--overlap", 0, "--blend", "none")
    cosine = prob("cosine", "--overlap", 32)
    crop = prob("crop", "--overlap", 32, "--blend", "none")
    assert seam_ratio(cosine, [64], [64]) < seam_ratio(mosaic, [64], [64])
    lines = [48, 80]  # windows at 0, 32, 64 (rows and columns): crop lines half-way between their centres
    assert seam_ratio(cosine, lines, lines) < seam_ratio(crop, lines, lines)
    ok("evaluate", "--ckpt", ckpts["unet"], "--lake", monthly_lake, "--split", "D015_2020", "--out", tmp_path / "ev")
    ok("evaluate", "--map", tmp_path / "mosaic", "--lake", monthly_lake, "--split", "D015_2020", "--out",
       tmp_path / "ev")
    by_ckpt = json.loads((tmp_path / "ev" / "metrics_D015_2020.json").read_text())
    by_map = json.loads((tmp_path / "ev" / "metrics_map-D015_2020.json").read_text())
    assert by_map["patches"] == 4  # zone Z1 of D015 only: the other zone has no map, which is said
    zone_only = np.array(by_map["confusion_matrix"])
    assert zone_only.sum() == 4 * 64 * 64
    ok("map", "--ckpt", ckpts["unet"], "--lake", monthly_lake, "--split", "D015_2020", "--out", tmp_path / "all",
       "--overlap", 0, "--blend", "none")
    ok("evaluate", "--map", tmp_path / "all", "--lake", monthly_lake, "--split", "D015_2020", "--out",
       tmp_path / "ev2")
    by_map = json.loads((tmp_path / "ev2" / "metrics_map-D015_2020.json").read_text())
    assert by_map["confusion_matrix"] == by_ckpt["confusion_matrix"] and by_map["miou"] == by_ckpt["miou"]


def test_errors_are_one_line(monthly_lake, ckpts, tmp_path):
    cases = [
        (["--ckpt", ckpts["utt"], "--lake", monthly_lake, "--tile", 128], "--tile must be its patch size, 64"),
        (["--ckpt", ckpts["unet"], "--lake", monthly_lake, "--tile", 100], "multiple of 32"),
        (["--ckpt", ckpts["unet"], "--lake", monthly_lake, "--overlap", 64], "--overlap must be"),
        (["--ckpt", ckpts["unet"], "--lake", monthly_lake, "--zones", "D999_2020-Z1_AA"], "unknown zone"),
        (["--ckpt", ckpts["unet"], "--lake", monthly_lake, "--sentinel", tmp_path], "go together"),
        (["--ckpt", ckpts["unet"], "--image", ckpts["utt"]], "not a raster"),
        (["--ckpt", ckpts["unet"], "--lake", monthly_lake, "--zones", "D015_2020-Z1_NN", "--split", "val"],
         "give one of them"),
        (["--ckpt", ckpts["unet"], "--image", ckpts["utt"], "--split", "val"], "--image maps one raster"),
    ]
    for args, text in cases:
        res = cli("map", *args, "--out", tmp_path / "m")
        assert res.exit_code == 2, res.output
        assert text in res.output and "Traceback" not in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
    res = cli("evaluate", "--lake", monthly_lake)
    assert res.exit_code == 2 and "--ckpt" in res.output and "--map" in res.output


def test_one_run_per_output_folder_and_no_stale_files(monthly_lake, ckpts, tmp_path):
    """A second map run into a folder another one is writing is refused (exit 6); a map started again (other
    options) loses its old files first; a finished map whose file was deleted is made again."""
    import fcntl

    zone = "D015_2020-Z1_NN"
    out = tmp_path / "maps"
    args = ["map", "--ckpt", ckpts["unet"], "--lake", monthly_lake, "--zones", zone, "--out", out]
    ok(*args, "--probabilities")
    assert (out / f"{zone}_prob.tif").exists()
    with open(out / ".jobs" / "lock", "a+") as fh:  # another run holds the folder
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        res = cli(*args)
        assert res.exit_code == 6 and "being written by another flair-lake map" in res.output, res.output
    changed = ok(*args)  # without --probabilities: another plan
    assert "computed again" in changed and not (out / f"{zone}_prob.tif").exists()
    before = (out / f"{zone}.tif").read_bytes()
    (out / f"{zone}.tif").unlink()
    again = ok(*args)
    assert "files in the output folder are gone" in again and (out / f"{zone}.tif").read_bytes() == before
    assert "1 already finished" in ok(*args)
    res = cli("map", "--ckpt", ckpts["unet"], "--image", out / f"{zone}.tif", "--out", out)
    assert res.exit_code == 2 and "another folder" in res.output, res.output


# --- rasters --------------------------------------------------------------------------------------------------
def _zone_raster(lake: str, zone: str, path: Path, *, drop_band: bool = False) -> PixelGrid:
    """Write a zone's aerial mosaic as a 5-band GeoTIFF, as an orthophoto would come; return its grid."""
    import zarr

    from flair_lake.maps.sources import ZoneSource

    root = zarr.open_group(lake, mode="r")
    rows = np.flatnonzero(np.array(root.attrs["areas"])[root["zone"][:]] == zone)
    src = ZoneSource(lake, zone, rows, view=None, fill=np.zeros(5, np.uint8))
    img, _ = src.read(0, 0, src.grid.height, src.grid.width)
    img = img[:4] if drop_band else img
    with rasterio.open(path, "w", driver="GTiff", width=src.grid.width, height=src.grid.height, count=len(img),
                       dtype="uint8", crs="EPSG:2154", transform=src.grid.transform) as ds:
        ds.write(img)
    return src


def test_a_raster_maps_like_its_zone(monthly_lake, raw_tree, ckpts, tmp_path):
    """The zone's aerial mosaic as a GeoTIFF, and for U-T&T its raw super-area triple with the grid corner the
    centroids give: --image makes the zone's map again."""
    from flair_lake.maps.sources import area_corner

    zone = "D015_2020-Z1_NN"
    src = _zone_raster(monthly_lake, zone, tmp_path / "ortho.tif")
    c = src.cols
    west, north, warning = area_corner(c["centroid_x"], c["centroid_y"], c["s2_row"], c["s2_col"], zone)
    assert warning is None
    sen = next(raw_tree.rglob(f"SEN2_sp_{zone}_data.npy")).parent
    for model, extra in (("unet", []), ("utt", ["--sentinel", sen, "--sentinel-grid", f"{west!r},{north!r}"])):
        ok("map", "--ckpt", ckpts[model], "--lake", monthly_lake, "--zones", zone, "--out", tmp_path / model,
           "--overlap", 0, "--blend", "none")
        ok("map", "--ckpt", ckpts[model], "--image", tmp_path / "ortho.tif", *extra, "--out", tmp_path / f"i{model}",
           "--overlap", 0, "--blend", "none")
        with rasterio.open(tmp_path / model / f"{zone}.tif") as a, \
                rasterio.open(tmp_path / f"i{model}" / "ortho.tif") as b:
            assert a.transform == b.transform
            np.testing.assert_array_equal(a.read(1), b.read(1))
    _zone_raster(monthly_lake, zone, tmp_path / "four.tif", drop_band=True)
    res = cli("map", "--ckpt", ckpts["unet"], "--image", tmp_path / "four.tif", "--out", tmp_path / "x")
    assert res.exit_code == 2 and "has 4 band(s)" in res.output
    res = cli("map", "--ckpt", ckpts["utt"], "--image", tmp_path / "ortho.tif", "--out", tmp_path / "x")
    assert res.exit_code == 2 and "--sentinel" in res.output


def _big_raster(path: Path, size: int) -> None:
    rng = np.random.default_rng(size)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=5, dtype="uint8", tiled=True,
                       blockxsize=256, blockysize=256, crs="EPSG:2154",
                       transform=Affine(0.2, 0, 900_000, 0, -0.2, 6_500_000)) as ds:
        for r in range(0, size, 256):
            ds.write(rng.integers(0, 255, (5, min(256, size - r), size), dtype=np.uint8),
                     window=rasterio.windows.Window(0, r, size, min(256, size - r)))


def _peak_rss_mb(args: list[str]) -> float:
    """Run the command in a fresh process; return its peak resident memory, MB."""
    code = ("import resource, sys; from flair_lake.cli import main\n"
            "try:\n    main(sys.argv[1:], prog_name='flair-lake')\nexcept SystemExit as e:\n    assert not e.code, e\n"
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    res = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return float(res.stdout.split("PEAK")[-1])


@pytest.mark.slow
def test_memory_stays_bounded_whatever_the_raster_size(ckpts, tmp_path):
    """Peak memory of a raster 16x larger grows by far less than what a whole-raster accumulator would take
    (13 float32 per pixel: 204 MB more at 2048 px)."""
    peaks = {}
    for size in (512, 2048):
        _big_raster(tmp_path / f"r{size}.tif", size)
        peaks[size] = _peak_rss_mb(["map", "--ckpt", ckpts["unet"], "--image", tmp_path / f"r{size}.tif",
                                    "--out", tmp_path / f"m{size}", "--tile", 128, "--overlap", 32, "--block", 512,
                                    "--batch-size", 8])
    assert peaks[2048] - peaks[512] < 80, peaks
    with rasterio.open(tmp_path / "m2048" / "r2048.tif") as ds:
        assert ds.shape == (2048, 2048) and ds.overviews(1)  # a COG with internal overviews


# --- resume and Dask ------------------------------------------------------------------------------------------
def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("kill", [("pipelines.maps", "run_block", 11),  # 10 blocks: 2 maps and half a third
                                  ("flair_lake.maps.write", "assemble", 3),  # 2 maps, the third's blocks
                                  ("rio_cogeo.cogeo", "copy", 5)])  # inside the 3rd map's COG: its temp file
def test_a_killed_map_resumes_to_the_same_files(monthly_lake, ckpts, tmp_path, kill):
    """SIGKILL in the middle of a run, then the same command: finished maps and blocks are kept, and the files
    are byte-identical to an uninterrupted run's; a third run does nothing; another plan starts again."""
    args = ["map", "--ckpt", ckpts["utt"], "--lake", monthly_lake, "--split", "all", "--block", 64,
            "--probabilities"]
    # every run in a fresh process with the same threads: convolutions sum in another order on another thread
    # count, which can move a probability by one 1/255 step
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    ref = subprocess.run([sys.executable, "-m", "flair_lake.cli", *map(str, args), "--out", str(tmp_path / "ref")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    run_args = [*map(str, args), "--out", str(tmp_path / "run")]
    killed = subprocess.run([*killed_on_call(*kill), *run_args], env=env,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "run" / "index.vrt").exists()
    res = subprocess.run([sys.executable, "-m", "flair_lake.cli", *run_args], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "(2 already finished" in res.stdout
    kept = 2 if kill[1] == "run_block" else 4
    assert f"{kept} block(s) kept from an earlier run" in res.stdout
    assert not list((tmp_path / "run").rglob("*.partial")) and not list((tmp_path / "run").rglob("tmp*"))
    assert _files(tmp_path / "run") == _files(tmp_path / "ref")
    again = ok(*args, "--out", tmp_path / "run")
    assert "(8 already finished" in again and ": 0 windows" in again
    changed = ok(*args, "--out", tmp_path / "run", "--blend", "linear")
    assert changed.count("computed again") == 8


@pytest.mark.slow
def test_blocks_on_a_dask_cluster_give_the_same_maps(monthly_lake, ckpts, tmp_path, cluster):
    address, _ = cluster
    args = ["map", "--ckpt", ckpts["unet"], "--lake", monthly_lake, "--split", "test", "--block", 64]
    ok(*args, "--out", tmp_path / "here")
    ok(*args, "--out", tmp_path / "dask", "--scheduler", address)
    assert _files(tmp_path / "dask") == _files(tmp_path / "here")
