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
    assert "label: shard 3 (rows 24-32) is missing from the store" in out  # found from the listing, no --deep
    res = CliRunner().invoke(main, ["validate", path, "--deep"])
    assert res.output.count("label: shard 3 (rows 24-32) is missing from the store") == 1


def _problems(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("  ")]


def _no_traceback(res) -> None:
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output


@pytest.mark.parametrize("damage", ["nul", "padded", "empty-marker"])
def test_validate_corrupt_metadata_is_one_line(lake, tmp_path, damage):
    """A corrupt zarr.json is one problem naming the file and its repair (exit 4), never a traceback."""
    path = _copy(lake, tmp_path)
    node = "done/s0000001" if damage == "empty-marker" else "aerial"
    meta = os.path.join(path, node, "zarr.json")
    with open(meta, "rb") as fh:
        good = fh.read()
    with open(meta, "wb") as fh:
        fh.write({"nul": b"\0" * len(good), "padded": good + b"\0" * 512, "empty-marker": b""}[damage])
    res = CliRunner().invoke(main, ["validate", path])
    _no_traceback(res)
    assert res.exit_code == 4, res.output
    problems = _problems(res.output)
    assert len(problems) == 1, res.output
    assert f"{path}/{node}/zarr.json is corrupt" in problems[0] and "fix:" in problems[0]
    if damage == "nul":
        assert f"all {len(good)} bytes are NUL" in problems[0] and "restore this file" in problems[0]
        assert CliRunner().invoke(main, ["validate", path, "--repair"]).exit_code == 4  # nothing to strip
        return
    assert "--repair" in problems[0]
    res = CliRunner().invoke(main, ["validate", path, "--repair"])
    _no_traceback(res)
    assert res.exit_code == 0, res.output
    if damage == "padded":  # the JSON before the NUL bytes is intact: stripped, nothing else touched
        with open(meta, "rb") as fh:
            assert fh.read() == good
        assert "is sound" in CliRunner().invoke(main, ["validate", path, "--deep"]).output
    else:  # an unreadable marker: the shard is deleted and its run reopened, so that ingest rewrites it
        assert not os.path.exists(os.path.join(path, node))
        assert "repaired shard 1" in res.output and "next: flair-lake ingest" in res.output
        root = _root(path)
        assert root.attrs["runs"][0]["status"] == "running" and not root["status"][8:16].any()


def test_validate_finds_deleted_shard_without_deep(lake, tmp_path):
    path = _copy(lake, tmp_path)
    os.remove(_shard_file(path, "aerial", shard=2))
    root = _root(path)
    ids = root["patch_id"][16:24][root["status"][16:24] == 1]
    res = CliRunner().invoke(main, ["validate", path])
    assert res.exit_code == 4, res.output
    problems = _problems(res.output)
    assert len(problems) == 1 and "aerial: shard 2 (rows 16-24) is missing from the store" in problems[0]
    assert f"IMG_{int(ids[0]):06d}" in problems[0] and f"validate {path} --repair" in problems[0]


def _files(path: str) -> dict[str, bytes]:
    out = {}
    for d, _, names in os.walk(path):
        for n in names:
            with open(os.path.join(d, n), "rb") as fh:
                out[os.path.relpath(os.path.join(d, n), path)] = fh.read()
    return out


def test_validate_repair_then_ingest_restores_the_lake(viewed, raw_tree, tmp_path):
    """--deep --repair deletes exactly the damaged shards and reopens the run; ingest then rewrites only them."""
    from flair_lake.config import IngestConfig
    from pipelines.ingest import ingest

    path = _copy(viewed, tmp_path)
    f = _shard_file(path, "aerial", shard=1)
    os.truncate(f, os.path.getsize(f) // 2)  # only --deep sees this one
    os.remove(_shard_file(path, "label", shard=3))  # the plain check sees this one
    before = _files(path)
    res = CliRunner().invoke(main, ["validate", path, "--deep", "--repair"])
    _no_traceback(res)
    assert res.exit_code == 0, res.output
    assert len(_problems(res.output)) == 2
    assert "repaired shard 1 (rows 8-16" in res.output and "repaired shard 3 (rows 24-32" in res.output
    run = _root(viewed).attrs["runs"][0]
    assert res.output.splitlines()[-1] == f"next: flair-lake ingest {run['raw']} {path}"
    after = _files(path)
    gone = sorted(set(before) - set(after))
    expect = sorted(os.path.join(*k) for s in ("1", "3") for k in (
        ("aerial", "c", s, "0", "0", "0"), ("label", "c", s, "0", "0"), ("transform", "c", s, "0"),
        ("crs_epsg", "c", s), ("status", "c", s), ("done", f"s000000{s}", "zarr.json")) if os.path.join(*k) in before)
    assert len(expect) == 11 and gone == expect  # the two shards in every array of the task; nothing healthy
    assert all(after[k] == before[k] for k in after if k != "zarr.json")  # ... nor changed
    root = _root(path)
    assert root.attrs["runs"][0]["status"] == "running"
    status = root["status"][:]
    assert not status[8:16].any() and not status[24:32].any() and status[:8].all()  # no row claims lost pixels
    res = CliRunner().invoke(main, ["validate", path])
    assert res.exit_code == 4 and "is recorded as running" in res.output and "flair-lake ingest" in res.output

    summary = ingest(raw_tree, path, IngestConfig(workers=1))
    assert summary.shards_written == 2 and summary.resumed_runs == 1, summary.lines()
    res = CliRunner().invoke(main, ["validate", path, "--deep"])
    assert res.exit_code == 0 and "is sound" in res.output, res.output
    fresh, repaired = _root(viewed), _root(path)
    for name in ("aerial", "label", "status", "crs_epsg"):
        np.testing.assert_array_equal(repaired[name][:], fresh[name][:], err_msg=name)
    assert repaired.attrs["runs"][0]["status"] == "complete"
    assert repaired.attrs["band_stats"] == fresh.attrs["band_stats"]


def test_validate_repair_view_shard_then_filter(viewed, tmp_path):
    import shlex

    path = _copy(viewed, tmp_path)
    view = _root(path)["views"].attrs["latest"]
    f = os.path.join(path, "views", view, "monthly", "c", "2", "0", "0", "0", "0")
    os.truncate(f, 100)
    res = CliRunner().invoke(main, ["validate", path, "--deep", "--repair"])
    assert res.exit_code == 0, res.output
    assert f"repaired view {view} shard 2 (rows 16-24" in res.output
    assert not os.path.exists(os.path.join(path, "views", view, "done", "s0000002"))
    assert _root(path)[f"views/{view}"].attrs["complete"] is False
    nxt = [line[len("next: "):] for line in res.output.splitlines() if line.startswith("next: ")]
    assert len(nxt) == 1 and nxt[0].startswith("flair-lake filter")  # the image shards are healthy: no ingest
    res = CliRunner().invoke(main, [*shlex.split(nxt[0])[1:], "--workers", "1"])
    assert res.exit_code == 0 and "shards written 1" in res.output, res.output
    res = CliRunner().invoke(main, ["validate", path, "--deep"])
    assert res.exit_code == 0, res.output
    for name in ("monthly", "month_count", "cover", "keep", "n_dates"):
        np.testing.assert_array_equal(_root(path)[f"views/{view}/{name}"][:], _root(viewed)[f"views/{view}/{name}"][:])


def test_validate_repair_leaves_a_sound_lake_alone(viewed, tmp_path):
    path = _copy(viewed, tmp_path)
    before = _files(path)
    res = CliRunner().invoke(main, ["validate", path, "--repair"])
    assert res.exit_code == 0 and "nothing to repair" in res.output, res.output
    assert _files(path) == before


def test_validate_names_and_repair_deletes_files_left_by_interrupted_writes(viewed, tmp_path):
    """A write killed between its side file and the rename leaves a ``*.partial`` (zarr's own store and the
    direct shard writer alike): validate names it, --repair deletes it and touches nothing else."""
    path = _copy(viewed, tmp_path)
    before = _files(path)
    shard = _shard_file(path)
    left = [os.path.join(os.path.dirname(shard), ".0.4242-7.partial"), os.path.join(path, "zarr.0123abcd.partial")]
    for f in left:
        with open(f, "wb") as fh:
            fh.write(b"half a shard")
    res = CliRunner().invoke(main, ["validate", path])
    assert res.exit_code == 4 and "2 file(s) left by interrupted writes" in res.output, res.output
    res = CliRunner().invoke(main, ["validate", path, "--repair"])
    assert res.exit_code == 0 and "deleted 2 file(s)" in res.output, res.output
    assert _files(path) == before
    assert CliRunner().invoke(main, ["validate", path]).exit_code == 0


def test_the_next_writer_deletes_files_left_by_interrupted_writes(viewed, tmp_path):
    """A writer holds the lake's lock, so no other write is in flight: the next filter (or ingest) deletes the
    side files a killed run left, and the same command ends with a lake that validates."""
    path = _copy(viewed, tmp_path)
    before = _files(path)
    left = [os.path.join(os.path.dirname(_shard_file(path)), ".0.4242-7.partial"),
            os.path.join(path, "zarr.0123abcd.partial")]
    for f in left:
        with open(f, "wb") as fh:
            fh.write(b"half a shard")
    res = CliRunner().invoke(main, ["filter", path, "--monthly", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert not any(os.path.exists(f) for f in left) and set(_files(path)) == set(before)
    assert CliRunner().invoke(main, ["validate", path]).exit_code == 0


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
    res = CliRunner().invoke(main, ["report", str(tmp_path), "-o", str(tmp_path / "charts")])
    assert res.exit_code == 0 and f"wrote {tmp_path / 'charts' / 'iou_val.png'}" in res.output, res.output
    res = CliRunner().invoke(main, ["report", str(tmp_path / "empty")])
    assert res.exit_code == 2 and res.output.startswith("error: ") and "no log.csv" in res.output, res.output


def test_a_damaged_array_metadata_file_is_one_line_from_any_command(lake, tmp_path):
    copy = tmp_path / "lake.zarr"
    shutil.copytree(lake, copy)
    meta = copy / "aerial" / "zarr.json"
    meta.write_bytes(meta.read_bytes()[: meta.stat().st_size // 2])
    for args in (["info", str(copy)], ["preview", str(copy), "--random", "1", "-o", str(tmp_path / "p.png")]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 1, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and "zarr.json" in lines[0] and f"flair-lake validate {copy}" in lines[0]
    res = CliRunner().invoke(main, ["validate", str(copy)])
    assert res.exit_code == 4 and "aerial/zarr.json is corrupt" in res.output
