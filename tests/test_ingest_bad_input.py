"""Bad input to ``flair-lake ingest`` (docs/raw-format.md, "What ingest checks").

Bad patches are quarantined and the rest lands; bad trees and targets stop with one clear line and write
nothing; nothing already in the lake is lost.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from click.testing import CliRunner

from flair_lake import schema
from flair_lake.cli import main
from flair_lake.config import IngestConfig, SynthConfig
from flair_lake.raw import names
from flair_lake.synth import synthesize
from pipelines.ingest import ingest

CFG = SynthConfig(domains=("D006_2020", "D004_2021"), zones_per_domain=1, patches_per_zone=4, patch_size=32,
                  max_dates=22)
VAL_AREA = "D004_2021-Z1_FF"  # the zone of D004 (ids 040001..040004) written by CFG


# --- helpers ------------------------------------------------------------------------------------------------
def make_tree(tmp_path: Path, name: str = "raw", cfg: SynthConfig = CFG) -> Path:
    root = tmp_path / name
    synthesize(root, cfg)
    return root


def images(raw: Path) -> dict[int, Path]:
    return {names.parse_id(p.name): p for p in raw.glob("flair_*aerial_*/D*/Z*/img/IMG_*.tif")}


def labels(raw: Path) -> dict[int, Path]:
    return {names.parse_id(p.name, names.MSK_RE): p for p in raw.glob("flair_*labels_*/D*/Z*/msk/MSK_*.tif")}


def area_ids(raw: Path, area: str) -> set[int]:
    return {pid for pid, p in images(raw).items()
            if names.area_name(p.parents[2].name, p.parents[1].name) == area}


def sentinel_files(raw: Path, area: str) -> tuple[Path, Path, Path]:
    domain, zone = area.split("-")
    d = next(raw.glob(f"flair_*sen_*/{domain}/{zone}/sen"))
    stem = names.sentinel_stem(domain, zone)
    return d / f"{stem}_data.npy", d / f"{stem}_masks.npy", d / f"{stem}_products.txt"


def run_ingest(raw: Path, lake: Path):
    return CliRunner().invoke(main, ["ingest", str(raw), str(lake), "--workers", "1"])


def info(lake: Path) -> dict:
    res = CliRunner().invoke(main, ["info", str(lake), "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def rewrite_tif(path: Path, *, count: int | None = None, dtype: str | None = None, size: int | None = None):
    """Rewrite a GeoTIFF with another band count, dtype or size (same georeferencing)."""
    with rasterio.open(path) as src:
        prof, arr = src.profile, src.read()
    count, size = count or arr.shape[0], size or arr.shape[1]
    arr = np.resize(arr, (count, size, size)).astype(dtype or arr.dtype)
    prof.update(count=count, dtype=arr.dtype.name, width=size, height=size)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(arr)


def read_tif(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def assert_landed(lake: Path, imgs: dict[int, Path], msks: dict[int, Path]) -> None:
    """Every patch of ``imgs`` sits in exactly one status-1 row whose pixels equal its TIFFs."""
    root = zarr.open_group(str(lake), mode="r")
    ids, status = root["patch_id"][:], root["status"][:]
    for pid, img in sorted(imgs.items()):
        rows = np.flatnonzero(ids == pid)
        assert rows.size == 1, (pid, rows)
        r = int(rows[0])
        assert status[r] == 1, (pid, status[r])
        np.testing.assert_array_equal(root["aerial"][r], read_tif(img))
        if pid in msks:
            np.testing.assert_array_equal(root["label"][r], read_tif(msks[pid])[0])


def assert_quarantined(lake: Path, bad: set[int], output: str) -> None:
    """``bad`` is exactly the lake's quarantine and the last run's, no bad patch has a status-1 row, and the
    summary names each one."""
    report = info(lake)
    assert {int(k) for k in report["quarantine"]} == bad
    root = zarr.open_group(str(lake), mode="r")
    last = root.attrs["runs"][-1]
    assert last["command"] == "ingest" and last["status"] == "complete"
    assert set(last["quarantined_ids"]) == bad and last["quarantined"] == len(bad)
    ok_ids = set(root["patch_id"][:][root["status"][:] == 1].tolist())
    assert not ok_ids & bad
    assert report["patches"] == len(ok_ids)
    assert f"quarantined {len(bad)} patch(es)" in output
    for pid in bad:
        assert names.metadata_key(pid) in output


# --- bad patches inside a good tree: quarantined, exit 3, everything else lands -----------------------------
def _truncate(raw, pid):
    f = images(raw)[pid]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return {pid}, [f.name, "unreadable or truncated", "re-download"]


def _three_bands(raw, pid):
    rewrite_tif(images(raw)[pid], count=3)
    return {pid}, [images(raw)[pid].name, "expected 5 band(s) of uint8", "got 3 band(s)", "re-export"]


def _uint16(raw, pid):
    rewrite_tif(images(raw)[pid], dtype="uint16")
    return {pid}, [images(raw)[pid].name, "got 5 band(s) of uint16", "re-export"]


def _small(raw, pid):
    rewrite_tif(images(raw)[pid], size=16)
    return {pid}, [images(raw)[pid].name, "uint8 32x32, got 5 band(s) of uint8 16x16", "re-export"]


def _no_label(raw, pid):
    f = labels(raw)[pid]
    f.unlink()
    return {pid}, [images(raw)[pid].name, f"no label {f.name}", "add it or remove the image"]


def _no_image(raw, pid):
    f = images(raw)[pid]
    f.unlink()
    return {pid}, [labels(raw)[pid].name, f"label without image {f.name}", "add the image"]


def _edit_json(raw, name, fn):
    f = raw / name
    obj = json.loads(f.read_text())
    fn(obj)
    f.write_text(json.dumps(obj))


def _no_centroid(raw, pid):
    _edit_json(raw, names.CENTROIDS_JSON, lambda o: o.pop(names.img_name(pid)))
    return {pid}, [f"missing from {names.CENTROIDS_JSON}", "add its centroid"]


def _no_metadata(raw, pid):
    _edit_json(raw, names.METADATA_JSON, lambda o: o.pop(names.metadata_key(pid)))
    return {pid}, [f"missing from {names.METADATA_JSON}", "add its entry"]


def _centroid_outside(raw, pid):
    _edit_json(raw, names.CENTROIDS_JSON, lambda o: o.__setitem__(names.img_name(pid), [3, 3]))
    return {pid}, ["centroid (3, 3) is outside super-area", "fix the centroid JSON"]


def _products_short(raw, pid):
    products = sentinel_files(raw, VAL_AREA)[2]
    products.write_text("\n".join(products.read_text().splitlines()[:-1]) + "\n")
    return area_ids(raw, VAL_AREA), [f"super-area {VAL_AREA}", products.name, "disagree",
                                     "re-download the zone"]


def _products_garbage(raw, pid):
    products = sentinel_files(raw, VAL_AREA)[2]
    lines = products.read_text().splitlines()
    lines[3] = "not-a-product-name"
    products.write_text("\n".join(lines) + "\n")
    return area_ids(raw, VAL_AREA), [f"super-area {VAL_AREA}", str(products), "'not-a-product-name'",
                                     "fix or remove that line"]


def _centroid_nan(raw, pid):
    _edit_json(raw, names.CENTROIDS_JSON, lambda o: o.__setitem__(names.img_name(pid), [float("nan"), 20]))
    return {pid}, [f"centroid of {names.img_name(pid)} is [NaN, 20]", "not [row, col] in whole pixels",
                   "fix the entry"]


def _centroid_text(raw, pid):
    _edit_json(raw, names.CENTROIDS_JSON, lambda o: o.__setitem__(names.img_name(pid), ["abc", 20]))
    return {pid}, ['is ["abc", 20]', "fix the entry"]


def _centroid_null(raw, pid):
    _edit_json(raw, names.CENTROIDS_JSON, lambda o: o.__setitem__(names.img_name(pid), [None, 20]))
    return {pid}, ["is [null, 20]", "fix the entry"]


def _products_not_utf8(raw, pid):
    products = sentinel_files(raw, VAL_AREA)[2]
    lines = products.read_bytes().splitlines()
    lines[2] = b"S2B_MSIL2A_\xff\xfe"
    products.write_bytes(b"\n".join(lines) + b"\n")
    return area_ids(raw, VAL_AREA), [f"super-area {VAL_AREA}", "line 3 is not UTF-8 text", "fix or remove"]


def _other_crs(raw, pid):
    from rasterio.crs import CRS

    path = images(raw)[pid]
    with rasterio.open(path) as src:
        prof, arr = src.profile, src.read()
    prof.update(crs=CRS.from_epsg(4326))
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(arr)
    return {pid}, [path.name, "CRS EPSG:4326, expected EPSG:2154", "gdalwarp -t_srs EPSG:2154"]


# The damaged patch is the tree's first (040001, of the val area): the one whose header the coordinator reads
# first, so a bad first file must not decide the lake's patch size either.
@pytest.mark.parametrize("damage", [_truncate, _three_bands, _uint16, _small, _no_label, _no_image,
                                    _no_centroid, _no_metadata, _centroid_outside, _products_short,
                                    _products_garbage, _centroid_nan, _centroid_text, _centroid_null,
                                    _products_not_utf8, _other_crs],
                         ids=lambda f: f.__name__.strip("_"))
def test_bad_patch_is_quarantined_and_the_rest_lands(tmp_path, damage):
    raw, lake = make_tree(tmp_path), tmp_path / "lake.zarr"
    imgs, msks = images(raw), labels(raw)
    bad, needles = damage(raw, min(imgs))
    assert bad and bad < set(imgs)
    res = run_ingest(raw, lake)
    assert res.exit_code == 3, res.output
    assert f"ingested {len(imgs) - len(bad)} patches" in res.output
    for needle in needles:
        assert needle in res.output, (needle, res.output)
    assert_quarantined(lake, bad, res.output)
    assert_landed(lake, {k: v for k, v in imgs.items() if k not in bad}, msks)
    root = zarr.open_group(str(lake), mode="r")
    assert root.attrs["patch_size"] == CFG.patch_size
    # Sentinel: every area with a landed patch is copied exactly; a bad area is not copied at all
    areas = {names.area_name(p.parents[2].name, p.parents[1].name) for k, p in imgs.items() if k not in bad}
    assert set(dict(root[schema.SENTINEL_GROUP].groups())) == areas
    for area in areas:
        np.testing.assert_array_equal(root[f"sentinel/{area}/data"][:], np.load(sentinel_files(raw, area)[0]))


def test_bad_patches_from_the_plan_and_from_the_tasks_together(tmp_path):
    raw, lake = make_tree(tmp_path), tmp_path / "lake.zarr"
    imgs, msks = images(raw), labels(raw)
    bad = _truncate(raw, 40002)[0] | _no_label(raw, 60003)[0] | _small(raw, 60004)[0]
    res = run_ingest(raw, lake)
    assert res.exit_code == 3, res.output
    assert_quarantined(lake, bad, res.output)
    assert_landed(lake, {k: v for k, v in imgs.items() if k not in bad}, msks)
    # task-quarantined patches keep their row, as zeros with status 2
    root = zarr.open_group(str(lake), mode="r")
    ids, status = root["patch_id"][:], root["status"][:]
    for pid in (40002, 60004):
        r = int(np.flatnonzero(ids == pid)[0])
        assert status[r] == 2 and not root["aerial"][r].any()
    assert 60003 not in ids


def test_ingest_function_reports_the_quarantine(tmp_path):
    raw, lake = make_tree(tmp_path), tmp_path / "lake.zarr"
    _three_bands(raw, 60002)
    summary = ingest(raw, str(lake), IngestConfig(workers=1), progress=False)
    assert summary.exit_code == 3 and summary.added == 7
    assert set(summary.quarantined) == {60002}
    assert "got 3 band(s)" in summary.quarantined[60002]


# --- fatal: one line, exit 1, nothing written ---------------------------------------------------------------
def _assert_fatal(res, lake: Path, *needles: str, code: int = 1) -> None:
    assert res.exit_code == code, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert res.stderr.strip() == lines[0] and not res.stdout.strip()
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_wrong_root(tmp_path):
    lake = tmp_path / "lake.zarr"
    res = run_ingest(tmp_path / "nope", lake)
    _assert_fatal(res, lake, str(tmp_path / "nope"), "does not exist", "flair_aerial_train/")
    assert not lake.exists()


def test_folder_without_a_flair_tree(tmp_path):
    (tmp_path / "raw" / "stuff").mkdir(parents=True)
    lake = tmp_path / "lake.zarr"
    res = run_ingest(tmp_path / "raw", lake)
    _assert_fatal(res, lake, "no FLAIR tree", "flair_aerial_train/", "check the path")
    assert not lake.exists()


def test_empty_tree(tmp_path):
    (tmp_path / "raw" / "flair_aerial_train").mkdir(parents=True)
    lake = tmp_path / "lake.zarr"
    res = run_ingest(tmp_path / "raw", lake)
    _assert_fatal(res, lake, str(tmp_path / "raw"), "no IMG_*.tif", "check the path or the download")
    assert not lake.exists()


def test_every_patch_bad_writes_nothing(tmp_path):
    raw, lake = make_tree(tmp_path), tmp_path / "lake.zarr"
    (raw / names.CENTROIDS_JSON).write_text("{}")
    res = run_ingest(raw, lake)
    _assert_fatal(res, lake, "no valid patch", names.CENTROIDS_JSON, "add its centroid")
    assert not lake.exists()


def test_target_under_a_file(tmp_path):
    raw = make_tree(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    lake = tmp_path / "afile" / "lake.zarr"
    res = run_ingest(raw, lake)
    _assert_fatal(res, lake, str(lake), "is a file, not a folder", code=2)
    assert (tmp_path / "afile").read_text() == "not a folder"


def test_target_in_a_folder_nobody_can_write(tmp_path):
    # permission bits say yes to root; a pseudo file system refuses every new file all the same
    raw = make_tree(tmp_path)
    lake = Path("/proc/flair-lake-test/lake.zarr")
    res = run_ingest(raw, lake)
    _assert_fatal(res, lake, str(lake), "/proc is not writable", "choose a writable folder", code=2)


def test_target_is_a_file(tmp_path):
    raw = make_tree(tmp_path)
    lake = tmp_path / "lake.zarr"
    lake.write_text("mine")
    res = run_ingest(raw, lake)
    _assert_fatal(res, lake, str(lake), "is not a folder", "give a new path", code=2)
    assert lake.read_text() == "mine"


def test_target_is_a_non_lake_folder(tmp_path):
    raw = make_tree(tmp_path)
    lake = tmp_path / "lake.zarr"
    lake.mkdir()
    (lake / "notes.txt").write_text("mine")
    res = run_ingest(raw, lake)
    _assert_fatal(res, lake, str(lake), "non-empty folder that is not a lake", "give a new path", code=2)
    assert [p.name for p in lake.iterdir()] == ["notes.txt"]


# --- nothing already in the lake is lost --------------------------------------------------------------------
def _files(lake: Path, *parts: str) -> dict[str, bytes]:
    return {str(p.relative_to(lake)): p.read_bytes()
            for part in parts for p in sorted((lake / part).rglob("*")) if p.is_file()}


def test_appending_a_bad_tree_keeps_the_lake(tmp_path):
    raw_a, lake = make_tree(tmp_path, "a"), tmp_path / "lake.zarr"
    assert run_ingest(raw_a, lake).exit_code == 0
    root = zarr.open_group(str(lake), mode="r")
    n = int(root["patch_id"].shape[0])
    per_patch = [name for name, arr in root.arrays() if arr.shape[:1] == (n,)]
    before = {name: root[name][:] for name in per_patch}
    area_files = [f"sentinel/{a}" for a in dict(root["sentinel"].groups())]
    files_before = _files(lake, "aerial/c", "label/c", "done", *area_files)

    cfg_b = SynthConfig(**{**CFG.__dict__, "domains": ("D015_2020",)})
    raw_b = make_tree(tmp_path, "b", cfg_b)
    imgs_b = images(raw_b)
    bad = _truncate(raw_b, min(imgs_b))[0] | _no_label(raw_b, max(imgs_b))[0]
    res = run_ingest(raw_b, lake)
    assert res.exit_code == 3, res.output
    assert_quarantined(lake, bad, res.output)

    root = zarr.open_group(str(lake), mode="r")
    for name, values in before.items():
        np.testing.assert_array_equal(root[name][:n], values, err_msg=name)
    files_after = _files(lake, "aerial/c", "label/c", "done", *area_files)
    assert {k: files_after.get(k) for k in files_before} == files_before  # the old shards are untouched
    assert_landed(lake, images(raw_a), labels(raw_a))
    assert_landed(lake, {k: v for k, v in imgs_b.items() if k not in bad}, labels(raw_b))
    assert [r["status"] for r in root.attrs["runs"]] == ["complete", "complete"]
    assert root.attrs["runs"][1]["rows"][0] == schema.PATCHES_PER_SHARD  # the second run starts a new shard
    assert not root["status"][n:schema.PATCHES_PER_SHARD].any()  # padding rows: status 0


# --- re-ingesting -------------------------------------------------------------------------------------------
def test_reingesting_a_tree_with_quarantined_patches_adds_nothing(tmp_path):
    raw, lake = make_tree(tmp_path), tmp_path / "lake.zarr"
    bad = _truncate(raw, 40003)[0] | _no_label(raw, 60001)[0]
    assert run_ingest(raw, lake).exit_code == 3
    root = zarr.open_group(str(lake), mode="r")
    runs, quarantine, n = root.attrs["runs"], root.attrs["quarantine"], root["patch_id"].shape[0]

    res = run_ingest(raw, lake)
    assert res.exit_code == 0, res.output
    assert res.output.startswith("ingested 0 patches") and "quarantined" not in res.output
    root = zarr.open_group(str(lake), mode="r")
    assert root.attrs["runs"] == runs and root.attrs["quarantine"] == quarantine
    assert root["patch_id"].shape[0] == n
    assert {int(k) for k in info(lake)["quarantine"]} == bad


def test_a_fixed_patch_lands_on_the_next_ingest(tmp_path):
    raw, lake = make_tree(tmp_path), tmp_path / "lake.zarr"
    pristine = make_tree(tmp_path, "pristine")  # same seed: byte-identical files
    msk = labels(raw)[60002]
    _no_label(raw, 60002)
    _no_centroid(raw, 40004)
    assert run_ingest(raw, lake).exit_code == 3
    assert {int(k) for k in info(lake)["quarantine"]} == {60002, 40004}

    shutil.copy(labels(pristine)[60002], msk)  # the fix the message asked for
    res = run_ingest(raw, lake)
    assert res.exit_code == 0, res.output
    assert res.output.startswith("ingested 1 patches")
    assert {int(k) for k in info(lake)["quarantine"]} == {40004}
    imgs = images(raw)
    assert_landed(lake, {k: v for k, v in imgs.items() if k != 40004}, labels(raw))


def test_a_redownloaded_file_lands_on_the_next_ingest(tmp_path):
    raw, lake = make_tree(tmp_path), tmp_path / "lake.zarr"
    pristine = make_tree(tmp_path, "pristine")  # same seed: byte-identical files
    _truncate(raw, 40003)
    assert run_ingest(raw, lake).exit_code == 3
    n = zarr.open_group(str(lake), mode="r")["patch_id"].shape[0]
    shutil.copy(images(pristine)[40003], images(raw)[40003])  # the fix the message asked for
    later = time.time() + 5  # a download that finishes after the run started
    os.utime(images(raw)[40003], (later, later))
    res = run_ingest(raw, lake)
    assert res.exit_code == 0, res.output
    assert res.output.startswith("ingested 1 patches") and "retried 1 quarantined patch(es)" in res.output
    assert info(lake)["quarantine"] == {}
    root = zarr.open_group(str(lake), mode="r")
    assert root["patch_id"].shape[0] == n  # written again in its own row, not appended
    assert [r["status"] for r in root.attrs["runs"]] == ["complete"]
    assert_landed(lake, images(raw), labels(raw))
    res = run_ingest(raw, lake)  # nothing changed since: nothing is rewritten
    assert res.exit_code == 0 and "shards written 0" in res.output and "nothing new" in res.output, res.output


def test_a_retried_patch_is_filtered_by_the_next_filter(tmp_path):
    """A view built while a patch was quarantined is incomplete once the retry writes the patch; readers say so
    in one line and the next filter fills the patch's series."""
    from flair_lake.errors import LakeStateError
    from flair_lake.loader import LakeDataset

    raw, lake = make_tree(tmp_path), tmp_path / "lake.zarr"
    pristine = make_tree(tmp_path, "pristine")
    _truncate(raw, 40003)
    assert run_ingest(raw, lake).exit_code == 3
    runner = CliRunner()
    assert runner.invoke(main, ["filter", str(lake), "--monthly", "--workers", "1"]).exit_code == 0
    shutil.copy(images(pristine)[40003], images(raw)[40003])
    later = time.time() + 5
    os.utime(images(raw)[40003], (later, later))
    assert run_ingest(raw, lake).exit_code == 0
    view = "cloud0.6-prob60-union-monthly-mean"
    with pytest.raises(LakeStateError, match="is incomplete; run `flair-lake filter` again"):
        LakeDataset(str(lake), view=view, split="val")
    res = runner.invoke(main, ["filter", str(lake), "--monthly", "--workers", "1"])
    assert res.exit_code == 0 and "shards written 1" in res.output, res.output
    root = zarr.open_group(str(lake), mode="r")
    row = int(np.flatnonzero(root["patch_id"][:] == 40003)[0])
    assert root[f"views/{view}/n_dates"][row] > 0 and root[f"views/{view}/month_count"][row].sum() > 0
    assert len(LakeDataset(str(lake), view=view, split="val")) == 4


def test_a_second_image_of_an_id_is_reported_and_the_first_lands(raw_tree, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(raw_tree, raw)
    images = sorted(raw.glob("flair_aerial_train/D*/Z*/img/IMG_*.tif"))
    first = images[0]
    other_zone = next(p.parent for p in images if p.parents[1] != first.parents[1])
    copy = other_zone / first.name
    shutil.copy(first, copy)
    kept, ignored = min(first, copy), max(first, copy)
    lake = str(tmp_path / "lake.zarr")
    res = CliRunner().invoke(main, ["ingest", str(raw), lake, "--workers", "1"])
    assert res.exit_code == 0, res.output  # every patch landed; the extra file is reported, not quarantined
    assert f"{ignored}: id {names.parse_id(first.name)} already seen at {kept}; ids must be unique" in res.output
    root = zarr.open_group(lake, mode="r")
    assert root.attrs["quarantine"] == {}
    assert names.parse_id(first.name) in root["patch_id"][:].tolist()
