"""Filter pipeline: injected clouds, the baseline preset against a plain reference, views, CLI, resume."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from flair_lake import lake as lk
from flair_lake import schema
from flair_lake.cli import main
from flair_lake.config import FilterConfig, IngestConfig, SynthConfig
from flair_lake.raw import names
from flair_lake.synth import synthesize
from pipelines.filter import build_report, run_filter
from pipelines.ingest import ingest


@pytest.fixture()
def lake_copy(lake, tmp_path):
    dst = tmp_path / "lake.zarr"
    shutil.copytree(lake, dst)
    return str(dst)


def _baseline_reference(raw_tree: Path, pid: int, domain: str, zone: str, row: int, col: int):
    """The released baseline's per-sample loops, as docs/baseline.md describes them.

    See its sections "Cloud and snow filter" and "Monthly composites".
    """
    sen = next(raw_tree.glob(f"*/{domain}/{zone}/sen"))
    stem = names.sentinel_stem(domain, zone)
    sp = np.load(sen / f"{stem}_data.npy", mmap_mode="r")[:, :, row - 20:row + 20, col - 20:col + 20]
    mask = np.load(sen / f"{stem}_masks.npy", mmap_mode="r")[:, :, row - 20:row + 20, col - 20:col + 20]
    mask = mask.astype(int)
    lines = (sen / f"{stem}_products.txt").read_text().splitlines()
    months = [int(line[15:17]) for line in lines]  # chars [15:19] = MMDD; the baseline forces the year
    keep = []
    for t in range(mask.shape[0]):  # filter_dates(mask, clouds=2, area_threshold=0.5, proba_threshold=60)
        cover = np.count_nonzero(mask[t, 0] >= 60) + np.count_nonzero(mask[t, 1] >= 60)
        if cover / (40 * 40) < 0.5:
            keep.append(t)
    sp = sp[keep]
    kept_months = [months[t] for t in keep]
    images, days = [], []
    for m in range(1, 13):  # monthly_image: months with a kept date, in order, unmasked mean
        idx = [i for i, mm in enumerate(kept_months) if mm == m]
        if idx:
            images.append(np.mean(sp[idx], axis=0))
            days.append((dt.datetime(2021, 5, 15) - dt.datetime(2021, m, 15)).days)
    return keep, images, days


def test_baseline_preset_equals_the_reference(raw_tree, lake_copy):
    summary = run_filter(lake_copy, FilterConfig.baseline(), workers=2)
    assert summary.view == "baseline"
    root = zarr.open_group(lake_copy, mode="r")
    vg = root["views/baseline"]
    areas, domains = root.attrs["areas"], root.attrs["domains"]
    ok = np.flatnonzero(root["status"][:] == 1)
    compared_months = 0
    for r in ok:
        pid = int(root["patch_id"][r])
        domain, zone = domains[root["domain"][r]], areas[root["zone"][r]].split("-")[1]
        keep, images, days = _baseline_reference(raw_tree, pid, domain, zone, int(root["s2_row"][r]),
                                                 int(root["s2_col"][r]))
        n = int(vg["n_dates"][r])
        assert np.flatnonzero(vg["keep"][r, :n]).tolist() == keep
        counts = vg["month_count"][r]
        present = np.flatnonzero(counts)
        assert len(present) == len(images)
        cube = vg["monthly"][r]
        for k, m in enumerate(present):
            np.testing.assert_array_equal(cube[m], np.rint(images[k]))
            compared_months += 1
        assert vg["month_days"][r][present].tolist() == days
        assert not cube[counts == 0].any()
    assert compared_months > 100


def test_injected_cloudy_dates_are_exactly_the_ones_dropped(tmp_path):
    raw = tmp_path / "raw"
    synthesize(raw, SynthConfig(domains=("D006_2020",), zones_per_domain=1, patches_per_zone=4, patch_size=32,
                                max_dates=24))
    sen = next(raw.glob("flair_sen_train/*/*/sen"))
    masks_f = next(sen.glob("*_masks.npy"))
    masks = np.load(masks_f)
    t = masks.shape[0]
    cloudy = sorted({1, 5, t - 1})
    masks[:] = 0
    masks[cloudy, 1] = 100  # cloud everywhere on those dates
    masks[3, 0] = 59  # snow just under the pixel threshold: kept
    np.save(masks_f, masks)
    path = str(tmp_path / "lake.zarr")
    assert ingest(raw, path, IngestConfig(workers=1)).exit_code == 0
    run_filter(path, FilterConfig(monthly=True), workers=1)
    vg = zarr.open_group(path, mode="r")["views"]["cloud0.6-prob60-union-monthly-mean"]
    keep = vg["keep"][:, :t]
    for r in range(4):
        assert np.flatnonzero(~keep[r]).tolist() == cloudy
    assert vg.attrs["report"]["per_domain"]["D006_2020"] == {"kept": 4 * (t - 3), "dropped": 12}


def test_views_noop_other_params_overwrite_and_report(lake_copy):
    first = run_filter(lake_copy, FilterConfig(monthly=True), workers=1)
    assert first.shards_written > 0
    again = run_filter(lake_copy, FilterConfig(monthly=True), workers=1)
    assert again.up_to_date and again.shards_written == 0
    other = run_filter(lake_copy, FilterConfig(max_cover=0.3, monthly=True, reducer="median"), workers=1)
    assert other.view == "cloud0.3-prob60-union-monthly-median"
    root = zarr.open_group(lake_copy, mode="r")
    assert sorted(n for n, _ in root["views"].groups()) == sorted([first.view, other.view])
    assert root["views"].attrs["latest"] == other.view
    with pytest.raises(Exception, match="exists .* with other parameters"):
        run_filter(lake_copy, FilterConfig(max_cover=0.2), name=first.view, workers=1)
    run_filter(lake_copy, FilterConfig(max_cover=0.2), name=first.view, overwrite=True, workers=1)
    root = zarr.open_group(lake_copy, mode="r")
    current = lk.resolve_view(root, lake_copy, first.view)  # its second generation, built aside
    assert current == f"{first.view}~2" and root["views"].attrs["current"][first.view] == current
    vg = root[f"views/{current}"]
    assert vg.attrs["params"]["max_cover"] == 0.2 and "monthly" not in vg
    assert root[f"views/{first.view}"].attrs["params"]["monthly"]  # the first stays for the readers that hold it
    rep = zarr.open_group(lake_copy, mode="r")[f"views/{other.view}"].attrs["report"]
    # the run built its report from what its tasks returned; read back from the lake it is the same
    assert build_report(zarr.open_group(lake_copy, mode="r"), other.view) == rep
    assert sum(rep["clear_month_histogram"]) == rep["patches"] == 32
    assert len(rep["no_clear_date"]) >= 1  # the synthetic tree parks a cloud over one zone all year
    # a patch with no clear date is valid output: count 0 everywhere, cube all zeros, never NaN
    ids = zarr.open_group(lake_copy, mode="r")["patch_id"][:]
    r = int(np.flatnonzero(ids == rep["no_clear_date"][0])[0])
    vg = zarr.open_group(lake_copy, mode="r")[f"views/{other.view}"]
    assert not vg["month_count"][r].any() and not vg["monthly"][r].any()


def test_resume_after_interruption_gives_the_same_view(lake_copy, tmp_path):
    cfg = FilterConfig(monthly=True, mask_pixels=True)
    full = run_filter(lake_copy, cfg, workers=1)
    root = zarr.open_group(lake_copy, mode="r+")
    vg = root[f"views/{full.view}"]
    before = {k: vg[k][:] for k in ("cover", "keep", "monthly", "month_count", "month_days")}
    # an interruption: two shards lost their data and markers, and the run record says "running"
    for s in (0, 2):
        del root[f"views/{full.view}/done"][f"s{s:07d}"]
        vg["monthly"][s * 8:(s + 1) * 8] = 0
        vg["keep"][s * 8:(s + 1) * 8] = False
    runs = root.attrs["runs"]
    runs[-1]["status"] = "running"
    root.attrs["runs"] = runs
    vg.attrs["complete"] = False
    resumed = run_filter(lake_copy, cfg, workers=1)
    assert resumed.shards_written == 2 and resumed.shards_skipped == 2
    runs_after = zarr.open_group(lake_copy, mode="r").attrs["runs"]
    assert len(runs_after) == len(runs) and all(r["status"] == "complete" for r in runs_after)
    assert runs_after[-1]["id"] == runs[-1]["id"] and "resumed" in runs_after[-1]
    for k, v in before.items():
        np.testing.assert_array_equal(vg[k][:], v, err_msg=k)


def test_filter_extends_a_view_after_an_append(lake_copy, tmp_path):
    run_filter(lake_copy, FilterConfig(monthly=True), workers=1)
    more = tmp_path / "more"
    synthesize(more, SynthConfig(domains=("D069_2020",), zones_per_domain=1, patches_per_zone=3, patch_size=64,
                                 max_dates=22))
    assert ingest(more, lake_copy, IngestConfig(workers=1)).added == 3
    res = run_filter(lake_copy, FilterConfig(monthly=True), workers=1)
    assert res.shards_written == 1 and res.shards_skipped == 4
    root = zarr.open_group(lake_copy, mode="r")
    vg = root[f"views/{res.view}"]
    assert vg["monthly"].shape[0] == lk.n_rows(root) and vg.attrs["report"]["patches"] == 35
    assert (vg["n_dates"][-3:] >= 20).all()  # the appended rows were filtered


def test_cli_user_sequence_and_errors(raw_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(main, ["filter", "--cloud", "0.6", "--monthly"])
    assert res.exit_code == 1 and "no lake at lake.zarr" in res.output and "flair-lake ingest" in res.output
    res = runner.invoke(main, ["ingest", str(raw_tree), "lake.zarr", "--workers", "2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["filter", "--cloud", "0.6", "--monthly", "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert "view cloud0.6-prob60-union-monthly-mean: 32 patches" in res.output
    assert "patches with no clear date" in res.output
    res = runner.invoke(main, ["filter", "--cloud", "0.6", "--monthly"])
    assert res.exit_code == 0 and "up to date" in res.output
    for args in (["--cloud", "1.2"], ["--cloud", "-0.1"], ["--prob", "101"], ["--prob", "-1"],
                 ["--preset", "baseline", "--cloud", "0.3"]):
        res = runner.invoke(main, ["filter", *args])
        assert res.exit_code == 2, (args, res.output)
    res = runner.invoke(main, ["filter", "--help"])
    assert "FRACTION" in res.output and "PERCENT" in res.output
    monkeypatch.setenv("FLAIR_LAKE", str(tmp_path / "lake.zarr"))
    monkeypatch.chdir(raw_tree.parent)
    res = runner.invoke(main, ["filter", "--preset", "baseline", "--workers", "1"])
    assert res.exit_code == 0 and "view baseline" in res.output
    res = runner.invoke(main, ["info"])
    assert "baseline" in res.output and "dates kept / dropped per domain" in res.output


def test_lake_without_sentinel_data(tmp_path):
    path = str(tmp_path / "empty.zarr")
    lk.create_lake(path, lk.Layout(patch_size=32))
    res = CliRunner().invoke(main, ["filter", path])
    assert res.exit_code == 1 and "no Sentinel-2 data" in res.output
    assert "views" in zarr.open_group(path) and not list(zarr.open_group(path)["views"].groups())


def test_pictures_default_to_the_latest_view_with_a_monthly_cube(tmp_path):
    from flair_lake.errors import LakeStateError

    root = zarr.open_group(str(tmp_path / "l.zarr"), mode="w")
    views = root.create_group(schema.VIEWS_GROUP)
    for name, monthly, updated in (("old-cube", True, "2026-01-01"), ("new-cube", True, "2026-02-01"),
                                   ("dates-only", False, "2026-03-01")):
        views.create_group(name).attrs.update({"params": {"monthly": monthly}, "updated": updated,
                                               "complete": True})
    views.attrs["latest"] = "dates-only"
    assert lk.resolve_view(root, "l.zarr", None) == "dates-only"  # the loader reads any view
    assert lk.resolve_view(root, "l.zarr", None, monthly=True) == "new-cube"
    assert lk.resolve_view(root, "l.zarr", "old-cube", monthly=True) == "old-cube"
    with pytest.raises(LakeStateError, match="views: dates-only, new-cube, old-cube"):
        lk.resolve_view(root, "l.zarr", "nope")


def test_cube_codec_is_storage_not_semantics(lake_copy):
    runner = CliRunner()
    res = runner.invoke(main, ["filter", lake_copy, "--preset", "baseline", "--codec", "zstd", "--workers", "1"])
    assert res.exit_code == 0 and "view baseline" in res.output, res.output
    res = runner.invoke(main, ["filter", lake_copy, "--cloud", "0.3", "--name", "lz4", "--preset", "baseline",
                               "--workers", "1"])
    assert res.exit_code == 2, res.output  # a flag contradicting the preset
    assert runner.invoke(main, ["filter", lake_copy, "--preset", "baseline", "--name", "lz4",
                                "--workers", "1"]).exit_code == 0
    views = zarr.open_group(lake_copy, mode="r")["views"]
    assert views["baseline/monthly"].compressors[0].cname.value == "zstd"
    assert views["lz4/monthly"].compressors[0].cname.value == "lz4"
    np.testing.assert_array_equal(views["baseline/monthly"][:], views["lz4/monthly"][:])


def test_validate_rebuilds_a_view_with_its_cube_codec():
    import dataclasses

    from flair_lake.validate.report import filter_command, filter_flags

    zstd_baseline = dataclasses.replace(FilterConfig.baseline(), codec="zstd")
    assert zstd_baseline.is_baseline() and zstd_baseline.view_name() == "baseline"
    assert filter_flags("baseline", dataclasses.asdict(zstd_baseline)) == "--preset baseline --codec zstd"
    cfg = FilterConfig(monthly=True, codec="none")
    assert filter_flags(cfg.view_name(), dataclasses.asdict(cfg)) == (
        "--cloud 0.6 --prob 60 --combine union --monthly --reducer mean --codec none")
    assert filter_flags("mine", dataclasses.asdict(cfg)).endswith("--codec none --name mine")
    # params this version cannot read: the view is rebuilt under its name with the default parameters
    assert filter_flags("old", {"cloud": 1}) == "--name old --overwrite"
    rebuild = filter_command("l.zarr", "old", {"cloud": 1}, overwrite=True)
    assert rebuild == "flair-lake filter l.zarr --name old --overwrite"


def test_validate_rebuild_commands_parse_back_to_the_view_config(lake_copy):
    """The filter command validate prints rebuilds the recorded config; a config no options give gets a Python call
    that does."""
    import dataclasses
    import shlex
    import subprocess
    import sys

    from flair_lake.validate.report import filter_command

    cfg = FilterConfig(max_cover=0.35, min_prob=40.0, monthly=True, reducer="median", mask_pixels=True)
    cmd = shlex.split(filter_command(lake_copy, "v1", dataclasses.asdict(cfg)))
    assert cmd[:3] == ["flair-lake", "filter", lake_copy] and cmd[-2:] == ["--name", "v1"]
    res = CliRunner().invoke(main, [*cmd[1:], "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert FilterConfig.from_params(zarr.open_group(lake_copy, mode="r")["views/v1"].attrs["params"]) == cfg
    odd = dataclasses.replace(cfg, ref_year=2020)  # set by --preset baseline only
    cmd = shlex.split(filter_command(lake_copy, "v2", dataclasses.asdict(odd)))
    assert cmd[:2] == ["python", "-c"]
    subprocess.run([sys.executable, "-c", cmd[2]], check=True, capture_output=True)
    assert FilterConfig.from_params(zarr.open_group(lake_copy, mode="r")["views/v2"].attrs["params"]) == odd
