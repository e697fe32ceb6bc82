"""Ingest: bit-exact round trip, resume after SIGKILL, append, no-op re-ingest, CLI."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr
from click.testing import CliRunner

from flair_lake import schema, storage
from flair_lake.cli import main
from flair_lake.config import IngestConfig, SynthConfig
from flair_lake.raw import metadata, names
from flair_lake.synth import synthesize
from pipelines.ingest import ingest

PER_ARRAY = ("aerial", "label", "status", "patch_id", "domain", "zone", "split", "year", "camera", "centroid_x",
             "centroid_y", "centroid_z", "acquired", "s2_row", "s2_col", "crs_epsg", "transform", "has_label")


def _rows_by_id(root) -> dict[int, int]:
    ids = root["patch_id"][:]
    ok = root["status"][:] == schema.STATUS_OK
    return {int(i): r for r, i in enumerate(ids) if ok[r]}


def test_round_trip_is_bit_exact(raw_tree, lake):
    root = zarr.open_group(lake, mode="r")
    rows = _rows_by_id(root)
    meta, _ = metadata.read_metadata(raw_tree / names.METADATA_JSON)
    cents, _ = metadata.read_centroids(raw_tree / names.CENTROIDS_JSON)
    assert set(rows) == set(meta)
    rng = np.random.default_rng(0)
    areas = root.attrs["areas"]
    domains = root.attrs["domains"]
    for pid in rng.choice(sorted(rows), size=10, replace=False):
        pid, r = int(pid), rows[int(pid)]
        m = meta[pid]
        img = next(raw_tree.glob(f"*/{m.domain}/{m.zone}/img/{names.img_name(pid)}"))
        msk = next(raw_tree.glob(f"*/{m.domain}/{m.zone}/msk/{names.msk_name(pid)}"))
        with rasterio.open(img) as src:
            np.testing.assert_array_equal(root["aerial"][r], src.read())
            assert tuple(root["transform"][r]) == src.transform.to_gdal()
            assert root["crs_epsg"][r] == src.crs.to_epsg() == 2154
        with rasterio.open(msk) as src:
            np.testing.assert_array_equal(root["label"][r], src.read(1))
        assert domains[root["domain"][r]] == m.domain
        area = areas[root["zone"][r]]
        assert area == f"{m.domain}-{m.zone}"
        assert (root["centroid_x"][r], root["centroid_y"][r], root["centroid_z"][r]) == (m.x, m.y, m.z)
        assert root["year"][r] == m.acquired.year
        assert dt.datetime(1970, 1, 1) + dt.timedelta(seconds=int(root["acquired"][r])) == m.acquired
        assert root.attrs["cameras"][root["camera"][r]] == m.camera
        assert schema.SPLIT_NAMES[root["split"][r]] == schema.official_split(m.domain)
        # the Sentinel window at the centroid, with dates keeping the real year
        row, col = cents[pid]
        assert (root["s2_row"][r], root["s2_col"][r]) == (row, col)
        stem = raw_tree.glob(f"*/{m.domain}/{m.zone}/sen/*_data.npy")
        data_f = next(stem)
        raw = np.load(data_f)
        g = root[f"sentinel/{area}"]
        np.testing.assert_array_equal(g["data"][:, :, row - 20:row + 20, col - 20:col + 20],
                                      raw[:, :, row - 20:row + 20, col - 20:col + 20])
        masks = np.load(str(data_f).replace("_data.npy", "_masks.npy"))
        np.testing.assert_array_equal(g["masks"][:], masks)
        lines = Path(str(data_f).replace("_data.npy", "_products.txt")).read_text().split()
        dates = [dt.date(1970, 1, 1) + dt.timedelta(days=int(d)) for d in g["dates"][:]]
        assert dates == [names.parse_product_date(x) for x in lines]
        assert {d.year for d in dates} == {int(m.domain[-4:])}
        assert g.attrs["products"] == lines


def test_lake_opens_with_plain_xarray_and_zarr(lake):
    ds = xr.open_zarr(lake, consolidated=False)
    assert ds["aerial"].dims == ("patch", "band", "y", "x")
    assert ds["acquired"].dtype.kind == "M"  # CF-decoded datetimes
    root = zarr.open_group(lake, mode="r")
    assert root.attrs["schema_version"] == schema.SCHEMA_VERSION
    assert root["aerial"].shards == (8, 5, 64, 64) and root["aerial"].chunks == (1, 5, 64, 64)
    run = root.attrs["runs"][-1]
    assert run["status"] == "complete" and run["ingested"] == 32
    stats = root.attrs["band_stats"]
    assert len(stats["aerial"]["mean"]) == 5 and len(stats["sentinel"]["std"]) == 10


def _arrays(path: str) -> dict[str, np.ndarray]:
    root = zarr.open_group(path, mode="r")
    out = {k: root[k][:] for k in PER_ARRAY}
    for name, g in root["sentinel"].groups():
        for k in ("data", "masks", "dates"):
            out[f"{name}/{k}"] = g[k][:]
    return out


def _assert_same_lake(a: str, b: str) -> None:
    xa, xb = _arrays(a), _arrays(b)
    assert sorted(xa) == sorted(xb)
    for k in xa:
        np.testing.assert_array_equal(xa[k], xb[k], err_msg=k)


@pytest.fixture(scope="module")
def medium_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("medium") / "raw"
    synthesize(root, SynthConfig(domains=("D006_2020", "D004_2021"), zones_per_domain=2, patches_per_zone=9,
                                 patch_size=64, max_dates=24))
    return root


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_lake(medium_tree, tmp_path):
    reference = str(tmp_path / "ref.zarr")
    assert ingest(medium_tree, reference, IngestConfig(workers=1, patches_per_shard=4)).exit_code == 0
    killed_mid_run = False
    for attempt in range(3):
        target = tmp_path / f"killed{attempt}.zarr"
        cmd = [sys.executable, "-m", "flair_lake.cli", "ingest", str(medium_tree), str(target), "--workers", "1",
               "--patches-per-shard", "4"]
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            done = list((target / "done").glob("s*")) if (target / "done").exists() else []
            if len(done) >= 1 + attempt:
                break
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        root = zarr.open_group(str(target), mode="r")
        pending = [r for r in root.attrs["runs"] if r["status"] == "running"]
        n_done = len(list((target / "done").glob("s*")))
        killed_mid_run |= bool(pending) and 0 < n_done < 9
        res = CliRunner().invoke(main, ["ingest", str(medium_tree), str(target), "--workers", "1"])
        assert res.exit_code == 0, res.output
        if pending:
            assert "already complete" in res.output and "resumed 1" in res.output
            # the summary counts what this session wrote (4 patches a shard); the rest had landed before the kill
            now = int(res.output.split("ingested ")[1].split()[0])
            before = int(res.output.split("whose ")[1].split()[0])
            written = int(res.output.split("shards written ")[1].split(",")[0])
            assert now + before == 36 and now == 4 * written, res.output
        _assert_same_lake(reference, str(target))
        root = zarr.open_group(str(target), mode="r")
        assert all(r["status"] == "complete" for r in root.attrs["runs"])
    assert killed_mid_run, "no attempt killed the ingest between two shards"


def test_append_and_noop(medium_tree, tmp_path):
    second = tmp_path / "second"
    synthesize(second, SynthConfig(domains=("D015_2020",), zones_per_domain=1, patches_per_zone=5, patch_size=64,
                                   max_dates=22))
    path = str(tmp_path / "lake.zarr")
    first = ingest(medium_tree, path, IngestConfig(workers=1, patches_per_shard=4))
    assert first.added == 36
    before = _arrays(path)
    again = ingest(medium_tree, path, IngestConfig(workers=1))
    assert again.added == 0 and again.shards_written == 0 and again.exit_code == 0
    after = _arrays(path)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    more = ingest(second, path, IngestConfig(workers=1))
    assert more.added == 5 and more.areas_written == 1
    root = zarr.open_group(path, mode="r")
    ids = root["patch_id"][:]
    status = root["status"][:]
    assert (status == schema.STATUS_OK).sum() == 41
    # the appended run starts on a shard boundary: rows 36..39 are padding, never written
    assert root.attrs["runs"][-1]["rows"] == [36, 41]
    grown = _arrays(path)
    for k in PER_ARRAY:
        np.testing.assert_array_equal(grown[k][:36], before[k][:36], err_msg=k)
    assert set(ids[status == 1]) == set(ids[:36]) | {150001, 150002, 150003, 150004, 150005}
    assert "D015_2020" in root.attrs["domains"]


def test_cli_ingest_and_info(raw_tree, tmp_path):
    path = str(tmp_path / "lake.zarr")
    res = CliRunner().invoke(main, ["ingest", str(raw_tree), path, "--workers", "2", "--codec", "lz4"])
    assert res.exit_code == 0, res.output
    assert "ingested 32 patches" in res.output
    res = CliRunner().invoke(main, ["info", path])
    assert res.exit_code == 0, res.output
    assert "train 16" in res.output and "val 8" in res.output and "blosc-lz4" in res.output
    res = CliRunner().invoke(main, ["info", path, "--json"])
    import json

    rep = json.loads(res.output)
    assert rep["patches"] == 32 and rep["per_domain"]["D015_2020"] == 8
    assert rep["compression_ratio"] > 1.0
    res = CliRunner().invoke(main, ["info", str(tmp_path / "nope.zarr")])
    assert res.exit_code == 1 and "no lake at" in res.output and "flair-lake ingest" in res.output


def test_direct_writes_round_trip_and_leave_no_probe(tmp_path):
    """Shards written past the page cache (O_DIRECT, where the filesystem allows it) read back bit-exact, odd
    sizes included; the probe file is removed, and object-store URLs never get the option."""
    lake = tmp_path / "direct.zarr"
    lake.mkdir()
    values = np.random.default_rng(3).integers(0, 255, (7, 3, 33, 35), dtype=np.uint8)
    with storage.rust_codecs(str(lake)), storage.direct_writes(str(lake)):
        if storage.zarrs_available() and storage._direct_io_supported(str(lake)):
            assert zarr.config.get("codec_pipeline.direct_io") is True
        z = zarr.create_array(str(lake / "a"), shape=values.shape, chunks=(1, 3, 33, 35), shards=(4, 3, 33, 35),
                              dtype="uint8", compressors=storage.compressors("zstd"))
        z[:] = values
    assert np.array_equal(zarr.open_array(str(lake / "a"), mode="r")[:], values)
    assert not list(lake.glob(".direct-io-probe*"))
    assert not zarr.config.get("codec_pipeline.direct_io", False)
    with storage.direct_writes("s3://bucket/lake.zarr"):
        assert not zarr.config.get("codec_pipeline.direct_io", False)


def test_a_run_with_explicit_side_files_resumes_from_another_tree_and_validate_names_them(tmp_path):
    """--metadata and --centroids are kept in the run record: resuming it while ingesting another tree finds its
    side files, and validate's fix command passes them."""
    from flair_lake.raw.discover import _find

    first, second = tmp_path / "first", tmp_path / "second"
    synthesize(first, SynthConfig(domains=("D006_2020",), zones_per_domain=1, patches_per_zone=4, patch_size=32,
                                  max_dates=22))
    synthesize(second, SynthConfig(domains=("D015_2020",), zones_per_domain=1, patches_per_zone=3, patch_size=32,
                                   max_dates=22, seed=5))
    side = tmp_path / "side"
    side.mkdir()
    moved = {}
    for key, name in (("metadata", names.METADATA_JSON), ("centroids", names.CENTROIDS_JSON)):
        (src,) = _find(first, name)
        moved[key] = side / name
        src.rename(moved[key])
    lake = str(tmp_path / "lake.zarr")
    assert ingest(first, lake, IngestConfig(workers=1), metadata_path=str(moved["metadata"]),
                  centroids_path=str(moved["centroids"])).exit_code == 0
    root = zarr.open_group(lake, mode="r+")
    runs = root.attrs["runs"]
    assert runs[0]["metadata"] == str(moved["metadata"]) and runs[0]["centroids"] == str(moved["centroids"])
    runs[0]["status"] = "running"  # as if killed; its shards are rewritten on resume
    root.attrs["runs"] = runs
    shutil.rmtree(Path(lake) / "done")
    res = CliRunner().invoke(main, ["validate", lake])
    assert (f"flair-lake ingest {first.resolve()} {lake} --metadata {moved['metadata']} --centroids "
            f"{moved['centroids']}") in res.output, res.output
    summary = ingest(second, lake, IngestConfig(workers=1))
    assert summary.resumed_runs == 1 and summary.added == 4 + 3, summary.lines()
    assert all(r["status"] == "complete" for r in zarr.open_group(lake, mode="r").attrs["runs"])


def test_config_contexts_of_interleaved_threads_leave_nothing_set():
    """Two worker threads whose write contexts interleave (A in, B in, A out, B out) leave zarr's process-wide
    config as it was; zarr.config.set alone would leave it set for good."""
    import threading

    key = "array.write_empty_chunks"
    before = zarr.config.get(key)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with storage.fast_writes():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def b():
        a_in.wait(5)
        with storage.fast_writes():
            b_in.set()
            a_out.wait(5)
            seen["b_inside_after_a_left"] = zarr.config.get(key)

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen["b_inside_after_a_left"] is True  # still set for the thread inside
    assert zarr.config.get(key) == before  # and undone once both left


def test_band_stats_are_the_sampled_statistics_of_the_raw_files(lake, raw_tree):
    """Aerial: mean and std over every 4th row and column of the images; Sentinel-2: over the clear pixels
    (snow and cloud below 60 %) of every 4th row and column of the super-areas."""
    from flair_lake.config import STATS_STEP

    stats = zarr.open_group(lake, mode="r").attrs["band_stats"]
    imgs = [rasterio.open(p).read()[:, ::STATS_STEP, ::STATS_STEP] for p in sorted(Path(raw_tree).rglob("IMG_*.tif"))]
    aer = np.stack(imgs).astype(np.float64)
    np.testing.assert_allclose(stats["aerial"]["mean"], aer.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(stats["aerial"]["std"], aer.std(axis=(0, 2, 3)), rtol=1e-5)
    vals = []
    for data in sorted(Path(raw_tree).rglob("SEN2_*_data.npy")):
        d = np.load(data)[:, :, ::STATS_STEP, ::STATS_STEP].astype(np.float64)
        m = np.load(str(data).replace("_data.npy", "_masks.npy"))[:, :, ::STATS_STEP, ::STATS_STEP]
        clear = m.max(axis=1) < 60
        vals.append(d.transpose(1, 0, 2, 3)[:, clear])
    sen = np.concatenate(vals, axis=1)
    np.testing.assert_allclose(stats["sentinel"]["mean"], sen.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(stats["sentinel"]["std"], sen.std(axis=1), rtol=1e-5)


def test_open_array_reuses_an_unchanged_array_and_reopens_a_changed_one(tmp_path):
    lake = str(tmp_path / "l.zarr")
    root = zarr.open_group(lake, mode="w")
    root.create_array("a", shape=(4, 3), chunks=(2, 3), dtype="uint8", compressors=storage.compressors("zstd"))
    first = storage.open_array(root, lake, "a")
    assert storage.open_array(root, lake, "a") is first  # unchanged: the same object
    first.resize((8, 3))
    grown = storage.open_array(root, lake, "a")
    assert grown is not first and grown.shape == (8, 3)  # resized: opened again
    del root["a"]
    root.create_array("a", shape=(8, 3), chunks=(2, 3), dtype="uint8", compressors=storage.compressors("lz4"))
    again = storage.open_array(root, lake, "a")
    assert again.compressors == zarr.open_array(lake + "/a", mode="r").compressors  # recreated: its own codec
    with storage.fast_writes():
        assert storage.open_array(root, lake, "a") is not again  # other zarr settings: another array object
