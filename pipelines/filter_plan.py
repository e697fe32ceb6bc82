"""Plan a filter run from the lake's state; nothing here writes.

The plan says whether the view is created (new, or overwritten) or grown to the lake's rows and dates (an
extension after an append), which patch shards are still to be written (a killed run resumes: a shard with its
marker is done), whether the view is up to date, and which run record the run continues. :mod:`pipelines.filter`
prepares the view, runs the tasks on the cluster and records the report.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from flair_lake import lake as lk
from flair_lake import schema
from flair_lake import zarr_compat as zc
from flair_lake.config import FilterConfig
from flair_lake.errors import LakeStateError, UsageError

COORDS = (schema.STATUS_ARRAY, "zone", "year", "s2_row", "s2_col")  # what a task reads of its rows
REPORT_COORDS = ("patch_id", "domain")  # read with COORDS for the report


# --- the task's input (the function is in pipelines.filter) -----------------------------------------------------
@dataclass(frozen=True)
class FilterTask:
    """One patch shard of a view."""

    lake: str
    view: str
    shard: int
    rows: tuple[int, int]
    cfg: FilterConfig
    t_max: int
    window: int
    storage_options: dict | None = None
    coords: dict | None = None  # the shard's rows of COORDS, read once by the coordinator (None: read here)


# --- what the plan reads of the lake ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ViewState:
    """What the plan reads of an existing view."""

    params: dict | None  # the filter parameters it was built with
    complete: bool
    shapes: dict[str, tuple[int, ...]]  # array name -> shape
    finished: frozenset[int]  # shards whose marker exists


@dataclass(frozen=True)
class FilterState:
    """What the plan reads of a lake: its rows, the per-patch columns the tasks and the report need, the
    super-areas' shapes, the run records, and the view (None when there is none)."""

    per_shard: int
    areas: list[str]  # zone code -> super-area name
    area_shapes: dict[str, tuple[int, ...]]  # super-area -> shape of its data (dates, bands, rows, cols)
    coords: dict[str, np.ndarray]  # COORDS and REPORT_COORDS of every row
    runs: list[dict]
    view: ViewState | None = None  # the current generation of the view (None: no view of that name)
    group: str = ""  # its group under views/ (the view's name for a first generation)
    pending: tuple[str, ViewState] | None = None  # a newer generation an interrupted --overwrite left unswitched
    next_generation: int = 1  # the generation a new --overwrite builds

    @property
    def n(self) -> int:
        """Return the lake's rows."""
        return int(self.coords["patch_id"].shape[0])

    @classmethod
    def read(cls, root, view: str) -> FilterState:
        """Return the state of the lake ``root`` and of its view ``view`` (the columns in one event-loop round)."""
        attrs = root.attrs.asdict()
        sen = root.get(schema.SENTINEL_GROUP)
        shapes = {name: tuple(g["data"].shape) for name, g in sen.groups()} if sen is not None else {}
        views = root.get(schema.VIEWS_GROUP)
        group = lk.current_views(views).get(view, view)
        ks = {schema.view_name_of(g)[1]: g for g, _ in (views.groups() if views is not None else ())
              if schema.view_name_of(g)[0] == view}
        current_k = schema.view_name_of(group)[1]
        newest = max(ks, default=0)
        pending = (ks[newest], _view_state(root, ks[newest])) if newest > current_k else None
        return cls(per_shard=int(attrs["patches_per_shard"]), areas=list(attrs.get("areas", [])), area_shapes=shapes,
                   coords=zc.read_arrays(root, COORDS + REPORT_COORDS), runs=list(attrs.get("runs", [])),
                   view=_view_state(root, group), group=group, pending=pending, next_generation=newest + 1)


def _view_state(root, group: str) -> ViewState | None:
    """Return what the plan reads of the view group ``views/<group>`` (None when there is none)."""
    path = f"{schema.VIEWS_GROUP}/{group}"
    vg = root.get(path)
    if vg is None:
        return None
    return ViewState(params=vg.attrs.get("params"), complete=bool(vg.attrs.get("complete")),
                     shapes={name: tuple(arr.shape) for name, arr in vg.arrays()},
                     finished=frozenset(lk.read_markers(root, f"{path}/done")))


# --- the plan ---------------------------------------------------------------------------------------------------
@dataclass
class FilterPlan:
    """What a filter run does, decided before anything is written."""

    view: str  # the group the run writes under views/: the view's name, or a new generation (name~k)
    params: dict  # the config as the view and its run record store it
    t_max: int  # the most dates of any super-area: the date axis of cover and keep
    window: int
    create: bool  # the view's arrays are created (no view yet, or an overwritten one)
    delete: bool  # a view group whose creation was killed (not all its arrays) is deleted first
    resize: dict[str, tuple[int, ...]] = field(default_factory=dict)  # existing arrays grown (an extension)
    tasks: list[FilterTask] = field(default_factory=list)  # largest first
    shards_skipped: int = 0  # shards with patches whose marker exists
    up_to_date: bool = False  # nothing to write and the view is complete
    run_id: str = ""
    resumes: bool = False  # run_id is an interrupted run of this view, which this run finishes
    name: str = ""  # the view's name (what readers ask for); ``view`` becomes its current generation when complete


def plan_filter(state: FilterState, cfg: FilterConfig, lake: str, *, name: str | None = None,
                overwrite: bool = False, storage_options: dict | None = None,
                window: int = schema.S2_WINDOW) -> FilterPlan:
    """Return the plan of building (or resuming, or extending) the view of ``cfg`` in the lake of ``state``.

    Args:
        state: the lake's state (:meth:`FilterState.read` of the view ``name``).
        cfg: the filter parameters.
        lake: the lake's path or URL (the tasks write there).
        name: the view's name; None: :meth:`FilterConfig.view_name`.
        overwrite: rebuild a view of that name built with other parameters.
        storage_options: fsspec options of an object store, for the tasks.
        window: the Sentinel-2 window around each centroid, pixels.

    Raises:
        LakeStateError: no Sentinel data, or a view of that name with other parameters (without overwrite).
    """
    t_max = max((shape[0] for shape in state.area_shapes.values()), default=0)
    if t_max == 0:
        raise LakeStateError(f"{lake} holds no Sentinel-2 data (no sentinel/<area>); ingest a tree that has "
                             "its flair_sen_* folders")
    cfg = cfg.normalized()
    name = schema.check_view_name(name or cfg.view_name())
    params = dataclasses.asdict(cfg)
    view, group = state.view, state.group or name
    if view is not None and _normalized(view.params) != params and not overwrite:
        raise LakeStateError(f"view {name!r} exists in {lake} with other parameters "
                             f"({view.params}); pass --overwrite or choose another --name")
    if view is not None and overwrite:  # built aside, as a new generation; readers keep the current one
        if state.pending is not None and _normalized(state.pending[1].params) == params:  # interrupted: resumed
            group, view = state.pending
        else:
            k = max(state.next_generation, schema.view_name_of(group)[1] + 1)
            group, view = schema.view_generation(name, k), None
    expected = schema.view_arrays(state.per_shard, t_max, window, cfg.monthly, reducer=cfg.reducer)
    # a view whose creation was killed before all its arrays existed holds no data yet: it is created again
    half_created = view is not None and not set(expected) <= set(view.shapes)
    fresh = view is None or half_created
    plan = FilterPlan(view=group, name=name, params=params, t_max=t_max, window=window, create=fresh,
                      delete=half_created)
    if not fresh:
        dated = schema.date_axes(schema.view_arrays(state.per_shard, t_max, window, cfg.monthly))
        plan.resize = _grown(view.shapes, state.n, t_max, dated)
    _plan_tasks(plan, state, cfg, lake, frozenset() if fresh else view.finished, storage_options)
    plan.up_to_date = not plan.tasks and not fresh and view.complete
    _plan_run(plan, state)
    return plan


def _normalized(params: dict | None) -> dict | None:
    """Return a view's recorded parameters as this version records them (:meth:`FilterConfig.normalized`): a view
    built without a cube before its cube options were normalized still matches."""
    try:
        return dataclasses.asdict(FilterConfig.from_params(params).normalized())
    except (UsageError, TypeError, AttributeError):  # recorded by another version: compared as they are
        return params


def _grown(shapes: dict[str, tuple[int, ...]], n: int, t_max: int,
           dated: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Return the new shape of each array of an existing view that the lake's rows (or a longer super-area)
    outgrew: every array to ``n`` rows, the arrays with a date axis (``dated``: name -> axis, from
    :func:`schema.date_axes`) to ``t_max`` dates."""
    out = {}
    for arr_name, old in shapes.items():
        shape = list(old)
        shape[0] = max(shape[0], n)
        if arr_name in dated:
            shape[dated[arr_name]] = max(shape[dated[arr_name]], t_max)
        if tuple(shape) != old:
            out[arr_name] = tuple(shape)
    return out


def _plan_tasks(plan: FilterPlan, state: FilterState, cfg: FilterConfig, lake: str, finished: frozenset[int],
                storage_options: dict | None) -> None:
    """One task per patch shard that holds ingested patches and has no marker, largest first."""
    n, per_shard, coords = state.n, state.per_shard, state.coords
    status = coords[schema.STATUS_ARRAY]
    for s in range(math.ceil(n / per_shard)):
        a, b = s * per_shard, min((s + 1) * per_shard, n)
        if not (status[a:b] == schema.STATUS_OK).any():
            continue
        if s in finished:
            plan.shards_skipped += 1
            continue
        plan.tasks.append(FilterTask(lake, plan.view, s, (a, b), cfg, plan.t_max, plan.window, storage_options,
                                     {k: coords[k][a:b] for k in COORDS}))
    if len(plan.tasks) > 1:  # largest first (a task's time follows the size of the areas it reads): fewer idle workers
        zone = coords["zone"]
        area_size = np.array([math.prod(state.area_shapes.get(a, (0,))) for a in state.areas], np.int64)
        plan.tasks.sort(key=lambda t: -int(area_size[np.unique(zone[t.rows[0]:t.rows[1]])].sum()))


def _plan_run(plan: FilterPlan, state: FilterState) -> None:
    """The run record: an interrupted run of this view is finished by this one, not left running beside it."""
    interrupted = [r["id"] for r in state.runs
                   if r.get("command") == "filter" and r.get("view") == plan.view and r.get("status") == "running"]
    if interrupted:
        plan.run_id, plan.resumes = interrupted[-1], True
    else:
        plan.run_id = f"filter-{lk.now_iso()}-{len(state.runs)}"
