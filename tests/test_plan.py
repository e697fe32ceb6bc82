"""The plans of ingest and filter, without a Dask cluster: what resumes, what is retried or quarantined, the new
rows and the tasks, from a tiny synthetic tree and a lake state."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pytest

from flair_lake import lake as lk
from flair_lake import schema
from flair_lake.config import FilterConfig, IngestConfig, SynthConfig
from flair_lake.errors import FlairLakeError, LakeStateError
from flair_lake.raw.discover import RawTree, discover
from flair_lake.synth import synthesize
from pipelines.filter_plan import FilterState, ViewState, plan_filter
from pipelines.ingest_plan import LakeState, plan_ingest

# 10 patches in two super-areas, 4 patches a shard: a run of the whole tree fills shards 0, 1 and half of 2
SYNTH = SynthConfig(domains=("D006_2020", "D004_2021"), zones_per_domain=1, patches_per_zone=5, patch_size=32,
                    max_dates=22)
PER_SHARD = 4
CFG = IngestConfig(patches_per_shard=PER_SHARD)
LAKE = "lake.zarr"  # the plan only names it in the tasks


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan") / "raw"
    synthesize(root, SYNTH)
    return root


@pytest.fixture(scope="module")
def tree(raw) -> RawTree:
    return discover(raw)


def _order(tree: RawTree) -> list[int]:
    """Return the tree's patch ids in the row order a run gives them (super-area, then id)."""
    return [p.patch_id for p in sorted(tree.patches.values(), key=lambda p: (p.area, p.patch_id))]


def _state(**kw) -> LakeState:
    """Return the state of an empty lake of 32 px patches, 4 a shard, with ``kw`` replaced."""
    empty = LakeState(patch_size=32, per_shard=PER_SHARD, runs=[], patch_id=np.zeros(0, np.int32),
                      status=np.zeros(0, np.uint8), quarantine={}, complete_shards=frozenset(),
                      complete_areas=frozenset(), next_start=0)
    return dataclasses.replace(empty, **kw)


def _run(rid: str, raw, rows: tuple[int, int], status: str, started: str = "2026-01-01T00:00:00+00:00") -> dict:
    return {"id": rid, "command": "ingest", "status": status, "raw": str(raw.resolve()), "rows": list(rows),
            "started": started}


def _lake_of(tree: RawTree, raw, status: str, started: str = "2026-01-01T00:00:00+00:00", **kw) -> LakeState:
    """Return the state of a lake holding one run of the whole tree (rows 0-10, every row status 1)."""
    ids = np.array(_order(tree), np.int32)
    return _state(runs=[_run("ingest-a", raw, (0, ids.size), status, started)], patch_id=ids,
                  status=np.ones(ids.size, np.uint8), next_start=12, **kw)


def _shards(plan) -> list[tuple[int, int, int]]:
    return [(t.shard, t.row0, len(t.items)) for t in plan.shard_tasks]


def test_a_new_lake_gets_every_patch_in_area_order(tree, raw):
    plan = plan_ingest(_state(), tree, raw, LAKE, CFG)
    assert plan.rows == range(10) and plan.has_new_run
    assert [p.patch_id for p in plan.new] == _order(tree)
    assert [w.run_id for w in plan.work] == [plan.run_id]
    assert _shards(plan) == [(0, 0, 4), (1, 4, 4), (2, 8, 2)]
    assert [i[0] for t in plan.shard_tasks for i in t.items] == _order(tree)  # each task's rows, in order
    assert sorted(t.area.name for t in plan.area_tasks) == sorted(tree.areas)
    assert not (plan.resumed or plan.retries or plan.reopened or plan.new_problems)
    assert plan.shards_skipped == plan.areas_skipped == plan.already_present == 0


def test_new_rows_start_on_the_shard_boundary_after_every_run(tree, raw):
    # an earlier run of another tree filled rows 0-6: shard 1 is half full and stays its run's
    other = np.arange(900001, 900007, dtype=np.int32)
    state = _state(runs=[{"id": "ingest-0", "command": "ingest", "status": "complete", "raw": "/elsewhere",
                          "rows": [0, 6], "started": "2026-01-01T00:00:00+00:00"}],
                   patch_id=other, status=np.ones(6, np.uint8), complete_shards=frozenset({0, 1}), next_start=8)
    plan = plan_ingest(state, tree, raw, LAKE, CFG)
    assert plan.rows == range(8, 18)
    assert _shards(plan) == [(2, 8, 4), (3, 12, 4), (4, 16, 2)]


def test_the_next_run_start_is_read_from_the_lake(tmp_path):
    root = lk.create_lake(str(tmp_path / "lake.zarr"), lk.Layout(32, PER_SHARD))
    assert LakeState.read(root).next_start == 0
    lk.update_run(root, "ingest-0", command="ingest", status="complete", raw="/elsewhere", rows=[0, 6])
    lk.grow(root, 6)
    state = LakeState.read(root)
    assert state.next_start == 8 and state.patch_id.shape == (6,) and not state.complete_shards
    assert (state.patch_size, state.per_shard) == (32, PER_SHARD)


def test_an_interrupted_run_resumes_its_shards_without_a_marker(tree, raw):
    area = min(tree.areas)
    state = _lake_of(tree, raw, "running", complete_shards=frozenset({0}), complete_areas=frozenset({area}))
    plan = plan_ingest(state, tree, raw, LAKE, CFG)
    assert plan.resumed == ["ingest-a"] and plan.rows is None and not plan.new
    assert [(w.run_id, w.rows) for w in plan.work] == [("ingest-a", range(10))]
    assert _shards(plan) == [(1, 4, 4), (2, 8, 2)] and plan.shards_skipped == 1
    assert [t.area.name for t in plan.area_tasks] == sorted(tree.areas)[1:] and plan.areas_skipped == 1
    assert plan.already_present == 10


def test_an_interrupted_run_whose_patches_left_the_tree_cannot_resume(tree, raw):
    state = _lake_of(tree, raw, "running")
    gone = dataclasses.replace(state, patch_id=np.where(state.patch_id == state.patch_id[3], 999999,
                                                        state.patch_id))
    with pytest.raises(FlairLakeError, match="cannot resume run ingest-a: 1 patch"):
        plan_ingest(gone, tree, raw, LAKE, CFG)


def test_a_quarantined_patch_whose_file_changed_is_retried_in_its_own_shard(tree, raw):
    status = np.ones(10, np.uint8)
    status[5] = schema.STATUS_QUARANTINED
    pid = _order(tree)[5]
    # the run started long before the tree's files were written: the quarantined patch's files "changed since"
    state = _lake_of(tree, raw, "complete", started="2000-01-01T00:00:00+00:00",
                     complete_shards=frozenset({0, 1, 2}), complete_areas=frozenset(tree.areas))
    state = dataclasses.replace(state, status=status, quarantine={str(pid): "truncated"})
    plan = plan_ingest(state, tree, raw, LAKE, CFG)
    assert plan.retries == {"ingest-a": {pid}} and plan.reopened == {"ingest-a": [1]}
    assert [(w.run_id, w.rows) for w in plan.work] == [("ingest-a", range(10))]
    assert _shards(plan) == [(1, 4, 4)] and plan.shards_skipped == 2  # the whole shard, in its own rows
    assert plan.rows is None and not plan.area_tasks


def test_a_quarantined_patch_whose_file_did_not_change_is_left_alone(tree, raw):
    status = np.ones(10, np.uint8)
    status[5] = schema.STATUS_QUARANTINED
    later = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 3600))
    state = _lake_of(tree, raw, "complete", started=later, complete_shards=frozenset({0, 1, 2}))
    plan = plan_ingest(dataclasses.replace(state, status=status), tree, raw, LAKE, CFG)
    assert not (plan.retries or plan.reopened or plan.work or plan.shard_tasks) and plan.rows is None


def test_a_retry_needs_every_patch_of_its_run(tree, raw):
    status = np.ones(10, np.uint8)
    status[5] = schema.STATUS_QUARANTINED
    state = _lake_of(tree, raw, "complete", started="2000-01-01T00:00:00+00:00")
    left = _order(tree)[0]
    smaller = RawTree(tree.root, {k: v for k, v in tree.patches.items() if k != left}, tree.areas)
    plan = plan_ingest(dataclasses.replace(state, status=status), smaller, raw, LAKE, CFG)
    assert not (plan.retries or plan.work)


def test_the_plan_quarantines_bad_patches_once(tree, raw):
    bad = _order(tree)[2]
    broken = RawTree(tree.root, {k: v for k, v in tree.patches.items() if k != bad}, tree.areas,
                     problems={bad: "no label"})
    plan = plan_ingest(_state(), broken, raw, LAKE, CFG)
    assert plan.new_problems == {bad: "no label"} and plan.rows == range(9)
    # ingested again while still bad: nothing new, no run
    ids = np.array([i for i in _order(tree) if i != bad], np.int32)
    state = _state(runs=[_run("ingest-a", raw, (0, 9), "complete")], patch_id=ids, status=np.ones(9, np.uint8),
                   quarantine={str(bad): "no label"}, complete_shards=frozenset({0, 1, 2}), next_start=12)
    plan = plan_ingest(state, broken, raw, LAKE, CFG)
    assert plan.rows is None and not plan.new_problems and plan.already_present == 9 and not plan.work
    # a bad patch the lake has not seen: a run of its own records it, with no rows
    plan = plan_ingest(dataclasses.replace(state, quarantine={}), broken, raw, LAKE, CFG)
    assert plan.has_new_run and plan.rows == range(12, 12) and plan.new_problems == {bad: "no label"}
    assert not plan.work and not plan.shard_tasks
    # fixed since: it lands in a new run of its own, on the next shard boundary
    plan = plan_ingest(state, tree, raw, LAKE, CFG)
    assert [p.patch_id for p in plan.new] == [bad] and plan.rows == range(12, 13)
    assert _shards(plan) == [(3, 12, 1)]


def test_the_plan_writes_nothing(tree, raw, tmp_path):
    lake = str(tmp_path / "lake.zarr")
    root = lk.create_lake(lake, lk.Layout(32, PER_SHARD))
    before = sorted((p, os.path.getmtime(p)) for p in _files(lake))
    plan = plan_ingest(LakeState.read(root), tree, raw, lake, CFG)
    assert plan.rows == range(10) and len(plan.shard_tasks) == 3
    assert sorted((p, os.path.getmtime(p)) for p in _files(lake)) == before


def _files(folder: str) -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]


# --- filter -----------------------------------------------------------------------------------------------------
FILTER_SHARD = 8
SHAPES = {"A": (30, 10, 100, 100), "B": (20, 10, 200, 200)}  # B: fewer dates, the larger area


def _filter_state(view: ViewState | None = None, runs: list[dict] | None = None, **kw) -> FilterState:
    """Return a lake of 32 rows, 8 a shard: shard 0 in area A, 1 in B, 2 in A, 3 empty (an append's padding)."""
    n = 32
    zone = np.repeat(np.array([0, 1, 0, 0], np.int32), FILTER_SHARD)
    status = np.repeat(np.array([1, 1, 1, 0], np.uint8), FILTER_SHARD)
    status[17] = schema.STATUS_QUARANTINED
    coords = {schema.STATUS_ARRAY: status, "zone": zone, "year": np.full(n, 2021, np.int16),
              "s2_row": np.full(n, 50, np.int32), "s2_col": np.full(n, 50, np.int32),
              "patch_id": np.arange(n, dtype=np.int32), "domain": np.zeros(n, np.int16)}
    state = FilterState(per_shard=FILTER_SHARD, areas=["A", "B"], area_shapes=SHAPES, coords=coords,
                        runs=runs or [], view=view)
    return dataclasses.replace(state, **kw)


def _view(cfg: FilterConfig, finished=(), complete: bool = False, rows: int = 32, dates: int = 30) -> ViewState:
    layouts = schema.view_arrays(FILTER_SHARD, dates, schema.S2_WINDOW, cfg.monthly, reducer=cfg.reducer)
    shapes = {name: layout.shape(rows) for name, layout in layouts.items()}
    return ViewState(dataclasses.asdict(cfg), complete, shapes, frozenset(finished))


def _tasks(plan) -> list[int]:
    return [t.shard for t in plan.tasks]


def test_a_new_view_gets_a_task_per_shard_with_patches_largest_area_first():
    cfg = FilterConfig()
    plan = plan_filter(_filter_state(), cfg, LAKE)
    assert plan.view == cfg.view_name() and plan.create and not plan.delete and not plan.resize
    assert plan.t_max == 30 and _tasks(plan) == [1, 0, 2]  # shard 3 holds no ingested patch
    assert plan.tasks[0].rows == (8, 16) and plan.tasks[0].coords["zone"].tolist() == [1] * 8
    assert not plan.up_to_date and not plan.resumes and plan.run_id.startswith("filter-")
    assert plan_filter(_filter_state(), cfg, LAKE, name="mine").view == "mine"


def test_no_sentinel_data_or_other_parameters_stop_the_plan():
    with pytest.raises(LakeStateError, match="no Sentinel-2 data"):
        plan_filter(_filter_state(area_shapes={}), FilterConfig(), LAKE)
    cfg = FilterConfig()
    other = _filter_state(_view(FilterConfig(max_cover=0.3), finished={0, 1, 2}, complete=True))
    with pytest.raises(LakeStateError, match="exists in lake.zarr with other parameters"):
        plan_filter(other, cfg, LAKE)
    plan = plan_filter(other, cfg, LAKE, overwrite=True)  # rebuilt whole, aside, as its second generation
    assert plan.view == f"{cfg.view_name()}~2" and plan.name == cfg.view_name()
    assert plan.create and not plan.delete and _tasks(plan) == [1, 0, 2] and plan.shards_skipped == 0
    # an --overwrite killed before its switch is resumed, not started again as a third generation
    pending = (f"{cfg.view_name()}~2", _view(cfg, finished={1}))
    plan = plan_filter(dataclasses.replace(other, pending=pending, next_generation=3), cfg, LAKE, overwrite=True)
    assert plan.view == f"{cfg.view_name()}~2" and not plan.create and _tasks(plan) == [0, 2]


def test_a_view_whose_creation_was_killed_is_created_again():
    cfg = FilterConfig(monthly=True)
    half = dataclasses.replace(_view(cfg), shapes={"cover": (32, 30)})
    plan = plan_filter(_filter_state(half), cfg, LAKE)
    assert plan.delete and plan.create and _tasks(plan) == [1, 0, 2]


def test_an_interrupted_view_resumes_its_unfinished_shards_and_its_run():
    cfg = FilterConfig(monthly=True)
    runs = [{"id": "filter-1", "command": "filter", "view": cfg.view_name(), "status": "running"},
            {"id": "filter-2", "command": "filter", "view": "other", "status": "running"}]
    plan = plan_filter(_filter_state(_view(cfg, finished={1}), runs), cfg, LAKE)
    assert _tasks(plan) == [0, 2] and plan.shards_skipped == 1 and not plan.create and not plan.resize
    assert plan.resumes and plan.run_id == "filter-1" and not plan.up_to_date


def test_a_complete_view_with_every_shard_is_up_to_date():
    cfg = FilterConfig()
    plan = plan_filter(_filter_state(_view(cfg, finished={0, 1, 2}, complete=True)), cfg, LAKE)
    assert plan.up_to_date and not plan.tasks and plan.shards_skipped == 3 and not plan.resize


def test_a_view_grows_after_an_append_and_writes_only_the_new_shards():
    cfg = FilterConfig()
    view = _view(cfg, finished={0, 1}, complete=True, rows=16, dates=25)
    view = dataclasses.replace(view, shapes={**view.shapes, "monthly": (16, 12, 10, 40, 40)})
    plan = plan_filter(_filter_state(view), cfg, LAKE)
    assert plan.resize == {"cover": (32, 30), "keep": (32, 30), "n_dates": (32,), "monthly": (32, 12, 10, 40, 40)}
    assert _tasks(plan) == [2] and plan.shards_skipped == 2 and not plan.up_to_date and not plan.create


def test_the_filter_state_is_read_from_the_lake(tmp_path):
    root = lk.create_lake(str(tmp_path / "lake.zarr"), lk.Layout(32, FILTER_SHARD))
    lk.grow(root, 8)
    root[schema.STATUS_ARRAY][:] = schema.STATUS_OK
    root.attrs["areas"] = ["A"]
    root.create_array(f"{schema.SENTINEL_GROUP}/A/data", shape=(5, 10, 50, 50), dtype="uint16")
    state = FilterState.read(root, "v")
    assert state.n == 8 and state.per_shard == FILTER_SHARD and state.view is None
    assert state.area_shapes == {"A": (5, 10, 50, 50)} and state.areas == ["A"]
    plan = plan_filter(state, FilterConfig(), str(tmp_path / "lake.zarr"), name="v")
    assert _tasks(plan) == [0] and plan.t_max == 5 and plan.create


def test_cube_options_name_a_cube_and_mean_nothing_without_one():
    plain = FilterConfig()
    assert FilterConfig(codec="zstd", reducer="median").normalized() == plain
    assert FilterConfig(codec="zstd", reducer="median").view_name() == plain.view_name()
    built = _filter_state(_view(plain, finished={0, 1, 2}, complete=True))
    plan = plan_filter(built, FilterConfig(codec="zstd"), LAKE)  # the same view: up to date, not "other parameters"
    assert plan.up_to_date and plan.view == plain.view_name()
    cube = FilterConfig(monthly=True)
    assert FilterConfig(monthly=True, codec="zstd").view_name() == f"{cube.view_name()}-zstd"
    assert FilterConfig(monthly=True, ref_year=2021).view_name() == f"{cube.view_name()}-ref2021"
