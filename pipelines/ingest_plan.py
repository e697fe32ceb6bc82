"""Plan an ingest run from the discovered raw tree and the lake's current state; nothing here writes.

The plan says which interrupted runs resume, which finished runs write again the shards of quarantined patches
whose files changed since, which patches are new (and the rows they get: a run starts at a shard boundary, so no
two runs share a shard), which the plan itself quarantines, and the shard and super-area tasks that remain.
:mod:`pipelines.ingest` records the runs, runs the tasks on the cluster and records the outcome.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flair_lake import lake as lk
from flair_lake import schema
from flair_lake import zarr_compat as zc
from flair_lake.config import IngestConfig
from flair_lake.errors import FlairLakeError
from flair_lake.raw import names
from flair_lake.raw.discover import AreaFiles, PatchFiles, RawTree, discover

log = logging.getLogger(__name__)


# --- the tasks' inputs (the functions are in pipelines.ingest) --------------------------------------------------
@dataclass(frozen=True)
class ShardTask:
    """One output shard: the rows it owns and the files that fill them."""

    lake: str
    shard: int
    row0: int
    items: tuple[tuple[int, str, str | None], ...]  # (patch id, image path, label path or None), row order
    patch_size: int
    storage_options: dict | None = None


@dataclass(frozen=True)
class AreaTask:
    """One Sentinel-2 super-area to copy into ``sentinel/<area>``."""

    lake: str
    area: AreaFiles
    codec: str
    level: int
    storage_options: dict | None = None


# --- what the plan reads of the lake ----------------------------------------------------------------------------
@dataclass(frozen=True)
class LakeState:
    """What the plan reads of a lake: its layout, run records, per-patch ids and status, quarantine, markers."""

    patch_size: int
    per_shard: int
    runs: list[dict]
    patch_id: np.ndarray  # every row
    status: np.ndarray  # every row
    quarantine: dict[str, str]  # patch id (text) -> why, as the root attrs record it
    complete_shards: frozenset[int]  # shards whose completion marker exists
    complete_areas: Container[str]  # super-areas marked complete
    next_start: int  # the first row a new run may use (lk.next_run_start)

    @classmethod
    def read(cls, root) -> LakeState:
        """Return the state of the lake ``root`` (the per-patch columns in one event-loop round)."""
        attrs = root.attrs.asdict()
        cols = zc.read_arrays(root, ("patch_id", schema.STATUS_ARRAY))
        return cls(patch_size=int(attrs["patch_size"]), per_shard=int(attrs["patches_per_shard"]),
                   runs=list(attrs.get("runs", [])), patch_id=cols["patch_id"], status=cols[schema.STATUS_ARRAY],
                   quarantine=dict(attrs.get("quarantine", {})), complete_shards=frozenset(lk.read_markers(root)),
                   complete_areas=_CompleteAreas(root), next_start=lk.next_run_start(root))

    def run_ids(self, run: dict) -> np.ndarray:
        """Return the patch ids of the rows a run record owns."""
        a, b = run["rows"]
        return self.patch_id[a:b]


class _CompleteAreas:
    """The super-areas of a lake marked complete, looked up one by one as the plan asks (a metadata read each).

    Not from a listing of ``sentinel/``: on an object store the listing is cached by the coordinator's file
    system, and one made before the tasks write would be served, stale, to whatever lists it afterwards.
    """

    def __init__(self, root) -> None:
        self._root = root
        self._known: dict[object, bool] = {}

    def __contains__(self, name: object) -> bool:
        if name not in self._known:
            g = self._root.get(f"{schema.SENTINEL_GROUP}/{name}")
            self._known[name] = g is not None and bool(g.attrs.get("complete"))
        return self._known[name]


# --- the plan ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunRows:
    """Rows of one run that this session writes: the run, its rows, their patches in row order, the tree's areas."""

    run_id: str
    rows: range
    patches: list[PatchFiles]
    areas: dict[str, AreaFiles]


@dataclass
class IngestPlan:
    """What an ingest session does, decided before anything is written."""

    run_id: str  # this session's run: recorded when the tree has new patches or the plan quarantines some
    raw: str  # the tree, resolved, as run records name it
    options: dict[str, str]  # the tree's explicit side files (metadata, centroids), resolved
    rows: range | None = None  # this run's rows; None when the tree brings nothing new
    new: list[PatchFiles] = field(default_factory=list)  # in row order: by super-area, then id
    new_problems: dict[int, str] = field(default_factory=dict)  # patches the plan quarantines (not in the lake)
    already_present: int = 0  # patches of the tree an earlier run ingested
    resumed: list[str] = field(default_factory=list)  # interrupted runs this session finishes
    retries: dict[str, set[int]] = field(default_factory=dict)  # finished run -> quarantined ids written again
    reopened: dict[str, list[int]] = field(default_factory=dict)  # retried run -> shards whose markers go first
    work: list[RunRows] = field(default_factory=list)  # resumed runs, retried runs, then the new rows
    shard_tasks: list[ShardTask] = field(default_factory=list)
    area_tasks: list[AreaTask] = field(default_factory=list)
    shards_skipped: int = 0  # shards of the work whose marker exists
    areas_skipped: int = 0  # super-areas of the work already complete

    @property
    def has_new_run(self) -> bool:
        """Return True when this session records a run of its own (new patches, or patches it quarantines)."""
        return self.rows is not None


def plan_ingest(state: LakeState, tree: RawTree, raw: str | Path, lake: str, cfg: IngestConfig,
                *, options: dict[str, str] | None = None, storage_options: dict | None = None) -> IngestPlan:
    """Return the plan of ingesting ``tree`` (discovered under ``raw``) into the lake whose state is ``state``.

    Reads the files' modification times (retries) and discovers the trees of interrupted runs recorded from
    another folder; writes nothing.

    Args:
        state: the lake's state (:meth:`LakeState.read`).
        tree: the discovered tree.
        raw: the folder ``tree`` was discovered under.
        lake: the lake's path or URL (the tasks write there).
        cfg: the ingest parameters (Sentinel codec, window of the trees of resumed runs).
        options: the tree's explicit side files, recorded with the run (``metadata``, ``centroids``).
        storage_options: fsspec options of an object store, for the tasks.

    Raises:
        FlairLakeError: an interrupted run cannot resume because patches of its tree are gone.
    """
    raw_path = Path(raw).resolve()
    plan = IngestPlan(run_id=f"ingest-{lk.now_iso()}-{len(state.runs)}", raw=str(raw_path), options=options or {})
    _plan_resumes(plan, state, tree, raw_path, cfg)
    _plan_retries(plan, state, tree, raw_path)
    _plan_new(plan, state, tree)
    _plan_tasks(plan, state, lake, cfg, storage_options)
    return plan


def _plan_resumes(plan: IngestPlan, state: LakeState, tree: RawTree, raw: Path, cfg: IngestConfig) -> None:
    """Interrupted runs: their rows are recorded; the shards without a marker are written."""
    for r in state.runs:
        if r.get("command") == "ingest" and r.get("status") == "running":
            rtree = tree if Path(r["raw"]) == raw else discover(
                r["raw"], metadata_path=r.get("metadata"), centroids_path=r.get("centroids"), sat_window=cfg.sat_window)
            ids = state.run_ids(r)
            missing = [int(i) for i in ids if int(i) not in rtree.patches]
            if missing:
                raise FlairLakeError(f"cannot resume run {r['id']}: {len(missing)} patch(es) of {r['raw']} are "
                                     f"gone (e.g. {names.img_name(missing[0])}); restore the raw tree")
            plan.work.append(RunRows(r["id"], range(*r["rows"]), [rtree.patches[int(i)] for i in ids], rtree.areas))
            plan.resumed.append(r["id"])


def _plan_retries(plan: IngestPlan, state: LakeState, tree: RawTree, raw: Path) -> None:
    """Write again the shards of finished runs of this tree that hold patches a shard task quarantined (an
    unreadable or malformed file) whose files changed after that run started: re-downloaded or re-exported.

    Whole shards are rewritten, so every patch of the run must still be in the tree. The run is marked running
    and the shards' markers removed before anything is written (:attr:`IngestPlan.reopened`): a kill in between
    is resumed like any interrupted run. Unchanged bad files are left alone: re-ingesting the same tree adds
    nothing.
    """
    planned = {w.run_id for w in plan.work}
    for r in state.runs:
        if r.get("command") != "ingest" or r.get("status") != "complete" or r["id"] in planned \
                or "rows" not in r or Path(r["raw"]) != raw:
            continue
        a, b = r["rows"]
        bad_rows = a + np.flatnonzero(state.status[a:b] == schema.STATUS_QUARANTINED)
        ids = [int(i) for i in state.patch_id[a:b]]
        started = dt.datetime.fromisoformat(r["started"]).timestamp() + 1  # recorded to the second, rounded down
        bad_rows = [row for row in bad_rows if ids[row - a] in tree.patches and _changed_since(
            tree.patches[ids[row - a]], started)]
        if not bad_rows:
            continue
        if any(i not in tree.patches for i in ids):
            log.warning("run %s: quarantined patches not retried, some of its patches left the tree", r["id"])
            continue
        plan.reopened[r["id"]] = sorted({int(row) // state.per_shard for row in bad_rows})
        plan.retries[r["id"]] = {ids[row - a] for row in bad_rows}
        plan.work.append(RunRows(r["id"], range(a, b), [tree.patches[i] for i in ids], tree.areas))


def _changed_since(patch: PatchFiles, when: float) -> bool:
    """Return True when the patch's image or label file changed after the POSIX time ``when``: its content
    (modification time) or its status (change time: permissions fixed with chmod, owner, a copy over it)."""
    files = [Path(f) for f in (patch.image, patch.label) if f is not None]
    return any(max(st.st_mtime, st.st_ctime) > when for st in (f.stat() for f in files if f.exists()))


def _present_ids(state: LakeState, still_bad: set[int]) -> set[int]:
    """Return the patch ids a new run must skip: those in the rows of recorded runs (ingested, or quarantined
    by a shard task), and those quarantined before they got a row that are still bad. A patch whose problem
    was fixed since (its label added, its centroid corrected, ...) is ingested by the next run."""
    ids: set[int] = set()
    for r in state.runs:
        if "rows" in r:
            ids.update(int(i) for i in state.run_ids(r) if i >= 0)
    ids.update(int(k) for k in state.quarantine if int(k) in still_bad)
    return ids


def _plan_new(plan: IngestPlan, state: LakeState, tree: RawTree) -> None:
    """The new patches: not yet in the lake, sorted by super-area then id (filter reads areas in order), in rows
    from the shard boundary after every recorded run."""
    present = _present_ids(state, set(tree.problems))
    plan.already_present = len(present & tree.patches.keys())
    plan.new = sorted((p for pid, p in tree.patches.items() if pid not in present),
                      key=lambda p: (p.area, p.patch_id))
    plan.new_problems = {pid: why for pid, why in tree.problems.items() if pid not in present}
    if plan.new or plan.new_problems:
        plan.rows = range(state.next_start, state.next_start + len(plan.new))
        if plan.new:
            plan.work.append(RunRows(plan.run_id, plan.rows, plan.new, tree.areas))


def _plan_tasks(plan: IngestPlan, state: LakeState, lake: str, cfg: IngestConfig,
                storage_options: dict | None) -> None:
    """The tasks: shards of the work without a marker (or whose marker a retry removes), super-areas not yet
    complete."""
    reopened = {s for shards in plan.reopened.values() for s in shards}
    complete = state.complete_shards - reopened
    per_shard = state.per_shard
    for w in plan.work:
        for s0 in range(w.rows.start, w.rows.stop, per_shard):
            shard = s0 // per_shard
            if shard in complete:
                plan.shards_skipped += 1
                continue
            chunk = w.patches[s0 - w.rows.start: s0 - w.rows.start + per_shard]
            plan.shard_tasks.append(ShardTask(lake, shard, s0, tuple(
                (p.patch_id, str(p.image), str(p.label) if p.label else None) for p in chunk),
                state.patch_size, storage_options))
        for name in sorted({p.area for p in w.patches}):
            if name in state.complete_areas:
                plan.areas_skipped += 1
                continue
            plan.area_tasks.append(AreaTask(lake, w.areas[name], cfg.sentinel_codec, cfg.zstd_level, storage_options))
