"""``flair-lake validate`` checks the layout of view and super-area arrays against the schema (metadata only)."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from flair_lake import schema
from flair_lake.cli import main
from flair_lake.config import FilterConfig
from flair_lake.validate import validate

VIEW = FilterConfig(monthly=True).view_name()  # the view of the monthly_lake fixture


def _copy(src: str, tmp_path: Path) -> Path:
    dst = tmp_path / "copy.zarr"
    shutil.copytree(src, dst)
    return dst


def _rewrite(array_dir: Path, **changes) -> None:
    """Rewrite an array's zarr.json: ``data_type``, ``chunk_shape`` (of its chunk grid) or ``shape``."""
    path = array_dir / "zarr.json"
    meta = json.loads(path.read_text())
    if "data_type" in changes:
        meta["data_type"] = changes["data_type"]
    if "chunk_shape" in changes:
        meta["chunk_grid"]["configuration"]["chunk_shape"] = list(changes["chunk_shape"])
    if "shape" in changes:
        meta["shape"] = list(changes["shape"])
    path.write_text(json.dumps(meta, indent=2))


def _problems(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.startswith("  ")]


@pytest.mark.parametrize("fixture", ["lake", "monthly_lake"])
def test_sound_lakes_pass_the_layout_checks(fixture, request):
    report = validate(request.getfixturevalue(fixture))
    assert report.ok, report.problems


def test_a_view_array_of_another_layout_is_one_line_each_and_filter_overwrite_rebuilds_it(monthly_lake, tmp_path):
    path = _copy(monthly_lake, tmp_path)
    view = path / schema.VIEWS_GROUP / VIEW
    s = int(json.loads((path / "zarr.json").read_text())["attributes"]["patches_per_shard"])
    _rewrite(view / "cover", data_type="float64")
    _rewrite(view / "month_count", chunk_shape=(s // 2, schema.MONTHS))
    shutil.rmtree(view / "month_days")
    res = CliRunner().invoke(main, ["validate", str(path)])
    assert res.exit_code == 4, res.output
    problems = _problems(res.output)
    assert len(problems) == 3, res.output
    assert problems[0].startswith(f"view {VIEW} lacks month_days; fix: re-run `flair-lake filter ")
    assert problems[1].startswith(f"view {VIEW}: array cover has dtype float64, expected float32; fix: re-run ")
    assert problems[2].startswith(f"view {VIEW}: array month_count has chunks ({s // 2}, {schema.MONTHS}), "
                                  f"expected ({s}, {schema.MONTHS}); fix: re-run ")
    commands = {p.split("`")[1] for p in problems}
    assert len(commands) == 1 and next(iter(commands)).endswith("--overwrite")
    args = shlex.split(next(iter(commands)))
    assert args[:2] == ["flair-lake", "filter"]
    res = CliRunner().invoke(main, args[1:])
    assert res.exit_code == 0, res.output
    assert validate(str(path)).ok


def test_a_super_area_array_of_another_layout_is_one_line_each(lake, tmp_path):
    path = _copy(lake, tmp_path)
    area = sorted(p for p in (path / schema.SENTINEL_GROUP).iterdir() if p.is_dir())[0]
    t, _, h, w = json.loads((area / "data" / "zarr.json").read_text())["shape"]
    _rewrite(area / "masks", data_type="uint16")
    _rewrite(area / "data", chunk_shape=(1, schema.N_S2_BANDS, h, w))
    _rewrite(area / "masks", shape=(t, len(schema.S2_MASK_BANDS) + 1, h, w))
    res = CliRunner().invoke(main, ["validate", str(path)])
    assert res.exit_code == 4, res.output
    problems = _problems(res.output)
    where = f"super-area {area.name}: array"
    assert problems == [p for p in problems if p.startswith(where)], res.output
    assert len(problems) == 3, res.output
    chunks = schema.sentinel_arrays(t, h, w)["data"].chunks
    assert problems[0].startswith(f"{where} data has chunks (1, {schema.N_S2_BANDS}, {h}, {w}), expected {chunks}; "
                                  "fix: ")
    assert problems[1].startswith(f"{where} masks has shape ({t}, 3, {h}, {w}), expected (2, {h}, {w}) after its "
                                  "date axis; fix: ")
    assert problems[2].startswith(f"{where} masks has dtype uint16, expected uint8; fix: ")
    assert all("re-ingest" in p for p in problems)


@pytest.mark.parametrize("target", ["aerial", "label", "monthly"])
def test_zeroed_bytes_inside_a_shard_are_found_by_deep(raw_tree, tmp_path, target):
    """1000 zeroed bytes in the payload of an uncompressed shard decode without error, to wrong values, unless each
    chunk carries its checksum: --deep names the shard and its patches."""
    from flair_lake.config import FilterConfig, IngestConfig
    from pipelines.filter import run_filter
    from pipelines.ingest import ingest

    path = tmp_path / "lake.zarr"
    ingest(raw_tree, str(path), IngestConfig(workers=1, patches_per_shard=8, codec="none"), progress=False)
    run_filter(str(path), FilterConfig(monthly=True, codec="none"), workers=1, progress=False)
    assert validate(str(path), deep=True).ok
    array = path / (f"views/{FilterConfig(monthly=True, codec='none').view_name()}/monthly"
                    if target == "monthly" else target)
    shard = sorted(p for p in array.joinpath("c").rglob("*") if p.is_file())[1]
    data = bytearray(shard.read_bytes())
    payload = np.flatnonzero(np.frombuffer(bytes(data[:len(data) // 2]), np.uint8))  # away from the index at the end
    start = int(payload[len(payload) // 2])  # a region with values: zeroing it changes the shard
    data[start:start + 1000] = bytes(1000)
    shard.write_bytes(bytes(data))
    report = validate(str(path), deep=True)
    assert not report.ok
    line = next(p for p in report.problems if "truncated or corrupt" in p)
    assert f"{target}: shard 1 " in line and "lost patches" in line and "IMG_" in line, line
