"""Look inside a lake: ``validate`` (plain and --deep), ``preview`` and ``stats``."""

from __future__ import annotations

import csv
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from flair_lake import schema
from flair_lake.cli import main


@pytest.fixture(scope="module")
def viewed(monthly_lake):
    return monthly_lake


def _copy(src: str, tmp_path) -> str:
    dst = str(tmp_path / "copy.zarr")
    shutil.copytree(src, dst)
    return dst


def _shard_file(lake: str, name: str = "aerial", shard: int = 1) -> str:
    zeros = ("0",) * (3 if name == "aerial" else 2)
    path = os.path.join(lake, name, "c", str(shard), *zeros)
    assert os.path.isfile(path)
    return path


def _root(path):
    import zarr

    return zarr.open_group(path, mode="r")


def test_validate_passes_on_healthy_lake(viewed):
    res = CliRunner().invoke(main, ["validate", viewed])
    assert res.exit_code == 0, res.output
    assert "is sound" in res.output
    res = CliRunner().invoke(main, ["validate", viewed, "--deep"])
    assert res.exit_code == 0, res.output
    assert "shards decoded" in res.output


def test_validate_deep_names_patches_of_truncated_shard(viewed, tmp_path):
    path = _copy(viewed, tmp_path)
    f = _shard_file(path, "aerial", shard=1)
    os.truncate(f, os.path.getsize(f) // 2)
    root = _root(path)
    per = int(root.attrs["patches_per_shard"])
    ok = root["status"][per:2 * per] == 1
    lost = root["patch_id"][per:2 * per][ok]
    assert CliRunner().invoke(main, ["validate", path]).exit_code == 0  # metadata alone cannot see it
    res = CliRunner().invoke(main, ["validate", path, "--deep"])
    assert res.exit_code == 4, res.output
    problems = [line for line in res.output.splitlines() if line.startswith("  ")]
    assert len(problems) == 1 and "aerial: shard 1" in problems[0] and "truncated or corrupt" in problems[0]
    for pid in lost[:5]:
        assert f"IMG_{int(pid):06d}" in problems[0]
    assert "done/s0000001" in problems[0] and "flair-lake ingest" in problems[0] and "fix:" in problems[0]


def test_validate_repair_instructions_work(viewed, raw_tree, tmp_path):
    """Following the printed repair (delete shard and marker, reopen the run, re-ingest) gives a sound lake."""
    import zarr

    from flair_lake.config import IngestConfig
    from pipelines.ingest import ingest

    path = _copy(viewed, tmp_path)
    f = _shard_file(path, "aerial", shard=0)
    os.truncate(f, 100)
    os.remove(f)
    shutil.rmtree(os.path.join(path, "done", "s0000000"))
    root = zarr.open_group(path, mode="r+")
    runs = root.attrs["runs"]
    runs[0]["status"] = "running"
    root.attrs["runs"] = runs
    ingest(raw_tree, path, IngestConfig(workers=1))
    res = CliRunner().invoke(main, ["validate", path, "--deep"])
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(_root(path)["aerial"][0:8], _root(viewed)["aerial"][0:8])


def test_validate_plain_problems(viewed, tmp_path):
    import zarr

    path = _copy(viewed, tmp_path)
    shutil.rmtree(os.path.join(path, "done", "s0000002"))
    os.remove(_shard_file(path, "label", shard=3))
    root = zarr.open_group(path, mode="r+")
    view = root["views"].attrs["latest"]
    keep = root[f"views/{view}/keep"]
    n_dates = root[f"views/{view}/n_dates"][:]
    row = int(np.flatnonzero(n_dates < keep.shape[1])[0])
    flags = keep[row]
    flags[n_dates[row]:] = True
    keep[row] = flags
    split = root["split"][:]
    split[1] = 7
    root["split"][:] = split
    res = CliRunner().invoke(main, ["validate", path])
    assert res.exit_code == 4
    out = res.output
    assert "no marker done/s0000002" in out
    assert "keep is True beyond n_dates" in out
    assert "invalid split codes [7]" in out
    assert "label: shard 3" not in out  # a missing shard needs --deep
    res = CliRunner().invoke(main, ["validate", path, "--deep"])
    assert "label: shard 3 (rows 24-32) is missing from the store" in res.output


def test_validate_errors(tmp_path):
    res = CliRunner().invoke(main, ["validate", str(tmp_path / "nope.zarr")])
    assert res.exit_code == 1 and "no lake at" in res.output


def test_preview_png(viewed, tmp_path):
    from matplotlib.image import imread

    from flair_lake.preview import figure_size

    ids = _root(viewed)["patch_id"][:3]
    out = tmp_path / "p.png"
    args = ["preview", viewed, "--patch", f"IMG_{ids[0]:06d}", "--patch", str(ids[2]), "-o", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    img = imread(out)
    assert img.shape[:2] == figure_size(2)[::-1] == (round((2 * 2.4 + 0.9) * 100), 1900)
    assert img[..., :3].std() > 0.05  # not blank
    res = CliRunner().invoke(main, ["preview", viewed, "--random", "3", "-o", str(tmp_path / "r.png")])
    assert res.exit_code == 0 and imread(tmp_path / "r.png").shape[0] == figure_size(3)[1]


def test_preview_errors(viewed, tmp_path):
    out = str(tmp_path / "x.png")
    res = CliRunner().invoke(main, ["preview", viewed, "--patch", "999999", "-o", out])
    assert res.exit_code == 2 and "IMG_999999 is not an ingested patch" in res.output
    assert "flair-lake info" in res.output and "e.g. IMG_" in res.output
    res = CliRunner().invoke(main, ["preview", viewed, "--random", "1", "--view", "nope", "-o", out])
    view = _root(viewed)["views"].attrs["latest"]
    assert res.exit_code == 1 and "view 'nope' is not in" in res.output and view in res.output
    res = CliRunner().invoke(main, ["preview", viewed, "-o", out])
    assert res.exit_code == 2 and "--patch ID" in res.output
    assert not os.path.exists(out)


def _read(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_stats_files(viewed, tmp_path):
    from matplotlib.image import imread

    from flair_lake.preview import centre_ndvi

    out = tmp_path / "stats"
    res = CliRunner().invoke(main, ["stats", viewed, "-o", str(out)])
    assert res.exit_code == 0, res.output
    root = _root(viewed)
    ok = root["status"][:] == 1
    label, split = root["label"][:][ok], root["split"][:][ok]
    # class distribution == bincount of the labels per split
    rows = _read(out / "class_distribution.csv")
    for code in np.unique(split):
        counts = np.bincount(label[split == code].ravel(), minlength=20)[1:20]
        got = [r for r in rows if r["split"] == schema.SPLIT_NAMES[code]]
        assert [int(r["pixels"]) for r in got] == counts.tolist()
        if counts.sum():
            np.testing.assert_allclose([float(r["fraction"]) for r in got], counts / counts.sum())
    # NDVI per class: label-pixel weighted mean of the centre NDVI
    view = root["views"].attrs["latest"]
    vg = root[f"views/{view}"]
    ndvi = centre_ndvi(vg["monthly"][:][ok], vg["month_count"][:][ok])
    c, m = 10, 6
    w = (label == c).sum((1, 2)).astype(float)
    have = np.isfinite(ndvi[:, m - 1])
    expect = (w[have] * ndvi[have, m - 1]).sum() / w[have].sum()
    row = next(r for r in _read(out / "ndvi_by_class.csv") if r["class"] == str(c) and r["month"] == str(m))
    assert float(row["ndvi"]) == pytest.approx(expect) and int(row["pixels"]) == int(w[have].sum())
    # clouds: totals per domain equal the view's report
    report = vg.attrs["report"]["per_domain"]
    clouds = _read(out / "clouds.csv")
    for dom, counts in report.items():
        assert sum(int(r["kept"]) for r in clouds if r["domain"] == dom) == counts["kept"]
        assert sum(int(r["dropped"]) for r in clouds if r["domain"] == dom) == counts["dropped"]
    for name in ("class_distribution", "ndvi_by_class", "clouds"):
        assert imread(out / f"{name}.png").shape[1] == 1000  # 10 in at 100 dpi


def test_stats_without_view_and_unknown_view(lake, tmp_path):
    res = CliRunner().invoke(main, ["stats", lake, "-o", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(tmp_path / "s")) == ["class_distribution.csv", "class_distribution.png"]
    assert "cloud statistics skipped" in res.output
    res = CliRunner().invoke(main, ["stats", lake, "--view", "v", "-o", str(tmp_path / "t")])
    assert res.exit_code == 1 and "view 'v' is not in" in res.output and "views: none" in res.output


def test_run_report(tmp_path):
    from matplotlib.image import imread

    from flair_lake.errors import UsageError
    from flair_lake.report import render_run

    (tmp_path / "log.csv").write_text("epoch,train_loss,val_loss,val_miou,lr,seconds,train_samples_per_s\n"
                                      "1,2.0,1.9,0.10,0.001,3,10\n2,1.5,1.6,0.20,0.001,3,10\n")
    rows = "\n".join(f"{i},{n},{0.1 * (i % 10):.2f}" for i, n in enumerate(schema.CLASS_NAMES[:12]))
    (tmp_path / "iou_val.csv").write_text("class,name,iou\n" + rows + "\n")
    paths = render_run(tmp_path)
    assert [os.path.basename(p) for p in paths] == ["curves.png", "iou_val.png"]
    assert imread(paths[0]).shape[:2] == (400, 1000)
    with pytest.raises(UsageError, match="no log.csv"):
        render_run(tmp_path / "empty")
