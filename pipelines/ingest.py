"""The ingest pipeline: a raw FLAIR tree into a Zarr lake, one Dask task per output shard.

The coordinator, top to bottom: discover the tree (no pixels) -> open or create the lake
-> plan (:mod:`pipelines.ingest_plan`: what resumes, what is retried, the rows of the new patches, the tasks;
nothing written) -> record the runs and write their coordinates -> map the shard and super-area tasks over the
cluster (:mod:`pipelines.ingest_tasks`) -> record the outcome (run records, quarantine, band statistics). Re-running
after a kill skips every shard and area whose marker exists and writes the rest: the result is the same lake.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flair_lake import lake as lk
from flair_lake import schema
from flair_lake import zarr_compat as zc
from flair_lake.config import IngestConfig
from flair_lake.errors import EXIT_OK, EXIT_PARTIAL, FlairLakeError, Interrupted, RawFormatError
from flair_lake.lock import writer
from flair_lake.raw import names
from flair_lake.raw.discover import PatchFiles, RawTree, discover
from pipelines.ingest_plan import IngestPlan, LakeState, plan_ingest
from pipelines.ingest_tasks import write_area, write_patch_shard

log = logging.getLogger(__name__)

_EPOCH_DT = dt.datetime(1970, 1, 1)


@dataclass
class IngestSummary:
    """What an ingest run did."""

    lake: str
    run_id: str
    added: int = 0
    quarantined: dict[int, str] = field(default_factory=dict)
    areas_written: int = 0
    areas_skipped: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    resumed_runs: int = 0
    retried: int = 0  # quarantined patches whose shards were written again (their files may have been fixed)
    already_present: int = 0  # patches of the tree that an earlier run had already ingested
    landed_before: int = 0  # patches of resumed runs that their interrupted session had written
    seconds: float = 0.0
    startup_seconds: float = 0.0  # of ``seconds``, starting a local Dask cluster (0 with --scheduler)
    raw_bytes: int = 0
    duplicates: list[str] = field(default_factory=list)  # images not ingested: another image has their id
    warnings: list[str] = field(default_factory=list)  # odd but accepted input (docs/raw-format.md, "Checks")

    @property
    def exit_code(self) -> int:
        """Return 0 when everything landed, 3 ("partial") when some patches were quarantined."""
        return EXIT_PARTIAL if self.quarantined else EXIT_OK

    def lines(self) -> list[str]:
        """Return a human summary."""
        from pipelines.cluster import rate_text

        out = [f"ingested {self.added} patches into {self.lake} "
               f"{rate_text(self.added, self.seconds, self.startup_seconds)}; "
               f"shards written {self.shards_written}, already complete {self.shards_skipped}; "
               f"super-areas written {self.areas_written}, already complete {self.areas_skipped}"
               + (f"; resumed {self.resumed_runs} interrupted run(s), whose {self.landed_before} other patch(es) "
                  "had landed before" if self.resumed_runs else "")
               + (f"; retried {self.retried} quarantined patch(es)" if self.retried else "")]
        if not self.added and not self.quarantined and self.already_present:
            out.append(f"nothing new: the tree's {self.already_present} patches are already in {self.lake}")
        if self.quarantined:
            out.append(f"quarantined {len(self.quarantined)} patch(es) (exit code {EXIT_PARTIAL}, partial):")
            out += [f"  {names.metadata_key(pid)}: {why}" for pid, why in sorted(self.quarantined.items())]
        out += [f"warning: {w}" for w in self.warnings]
        if self.duplicates:
            out.append(f"ignored {len(self.duplicates)} image(s) whose id an earlier image in path order has "
                       "(remove or rename them):")
            out += [f"  {why}" for why in self.duplicates]
        return out


# --- coordinator ------------------------------------------------------------------------------------------------
def _patch_size(tree: RawTree, sample: int = 25) -> int:
    """Return the aerial patch size of the tree: the most common size among the headers of up to ``sample``
    well-formed images (square, 5 bands, uint8) spread over the tree, so one odd file cannot set it."""
    from collections import Counter

    import rasterio

    files = [pf.image for pf in tree.patches.values()]
    sizes: Counter[int] = Counter()
    for f in files[:: max(1, len(files) // sample)]:
        try:
            with rasterio.open(f) as src:
                if src.count == schema.N_AERIAL_BANDS and src.dtypes[0] == "uint8" and src.width == src.height:
                    sizes[int(src.width)] += 1
        except Exception:  # noqa: BLE001 - a bad file: the others decide, the task quarantines it
            continue
    if not sizes:
        raise RawFormatError(f"no readable {schema.N_AERIAL_BANDS}-band uint8 IMG_*.tif under {tree.root}; "
                             "check the download")
    # ties (tiny trees): prefer a FLAIR-like size (multiple of 32), then the larger
    return max(sizes, key=lambda s: (sizes[s], s % 32 == 0, s))


def _write_coords(root, rows: range, patches: list[PatchFiles]) -> None:
    """Write the coordinator-owned per-patch columns of ``rows`` from the metadata (idempotent)."""
    dom = lk.intern(root, "domains", [p.domain for p in patches])
    area = lk.intern(root, "areas", [p.area for p in patches])
    cam = lk.intern(root, "cameras", [p.meta.camera for p in patches])
    split = [schema.official_split(p.domain) for p in patches]
    cols = {
        "patch_id": np.array([p.patch_id for p in patches], np.int32),
        "domain": np.array([dom[p.domain] for p in patches], np.int16),
        "zone": np.array([area[p.area] for p in patches], np.int32),
        "split": np.array([schema.SPLIT_CODES.get(s, schema.UNKNOWN_SPLIT) for s in split], np.uint8),
        "year": np.array([p.meta.acquired.year for p in patches], np.int16),
        "camera": np.array([cam[p.meta.camera] for p in patches], np.int16),
        "centroid_x": np.array([p.meta.x for p in patches]),
        "centroid_y": np.array([p.meta.y for p in patches]),
        "centroid_z": np.array([p.meta.z for p in patches]),
        "acquired": np.array([int((p.meta.acquired - _EPOCH_DT).total_seconds()) for p in patches], np.int64),
        "s2_row": np.array([p.centroid[0] for p in patches], np.int32),
        "s2_col": np.array([p.centroid[1] for p in patches], np.int32),
        "has_label": np.array([p.label is not None for p in patches], np.uint8),
    }
    zc.write_arrays(list(cols.items()), slice(rows.start, rows.stop), root)


def ingest(raw: str | Path, lake: str, cfg: IngestConfig | None = None, *,
           metadata_path: str | None = None, centroids_path: str | None = None,
           storage_options: dict | None = None, progress: bool | None = None) -> IngestSummary:
    """Ingest the FLAIR tree(s) under ``raw`` into ``lake``: create, append, or resume an interrupted run.

    Plan (:func:`pipelines.ingest_plan.plan_ingest`, nothing written) -> execute (record the runs and their
    coordinates, then map the tasks over the cluster) -> record the outcome.

    Raises:
        FlairLakeError: wrong root, empty tree, unwritable target (nothing is written then).
    """
    from pipelines.cluster import check_scheduler

    t0 = time.perf_counter()
    cfg = cfg or IngestConfig()
    lk.check_writable(lake)
    check_scheduler(cfg.scheduler)
    tree = discover(raw, metadata_path=metadata_path, centroids_path=centroids_path, sat_window=cfg.sat_window)
    with writer(lake, "ingest", storage_options=storage_options, wait=cfg.wait):  # one writer at a time
        return _ingest_tree(raw, lake, tree, cfg, metadata_path, centroids_path, storage_options, progress, t0)


def _ingest_tree(raw, lake: str, tree: RawTree, cfg: IngestConfig, metadata_path, centroids_path,
                 storage_options: dict | None, progress, t0: float) -> IngestSummary:
    """Plan, execute and record the ingest of the discovered ``tree``, holding the lake's writer lock."""
    from pipelines.cluster import forget_listings

    root = _open_or_create(raw, lake, tree, cfg, storage_options)
    lk.sweep_leftovers(lake)  # side files of a killed run's writes: the same command ends with a clean lake
    # the tree's explicit options are recorded: a resume from another tree, and validate's fix, reuse them
    options = {k: str(Path(v).resolve()) for k, v in (("metadata", metadata_path), ("centroids", centroids_path)) if v}
    plan = plan_ingest(LakeState.read(root), tree, raw, lake, cfg, options=options, storage_options=storage_options)
    summary = IngestSummary(lake=lake, run_id=plan.run_id, raw_bytes=tree.raw_bytes, resumed_runs=len(plan.resumed),
                            retried=sum(len(v) for v in plan.retries.values()), already_present=plan.already_present,
                            shards_skipped=plan.shards_skipped, areas_skipped=plan.areas_skipped,
                            duplicates=sorted(tree.duplicates.values()), warnings=list(tree.warnings))
    begin_runs(root, plan)
    try:
        written = (_run_tasks(plan.shard_tasks, plan.area_tasks, cfg, progress, summary)
                   if plan.shard_tasks or plan.area_tasks else set())
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the runs stay "running"; the same command resumes
        raise Interrupted.of(exc, landed=f"{summary.shards_written} of {len(plan.shard_tasks)} shard(s) and "
                             f"{summary.areas_written} of {len(plan.area_tasks)} super-area(s) landed in {lake} "
                             "and are kept", resume="run the same command again to write the rest") from None
    forget_listings(root.store)  # the markers and super-areas the tasks wrote are listed next
    record_outcome(root, plan, written, summary, t0)
    return summary


def _open_or_create(raw: str | Path, lake: str, tree: RawTree, cfg: IngestConfig, storage_options: dict | None):
    """Return the root group of ``lake``, created with the tree's patch size when there is none.

    Raises:
        FlairLakeError: the lake holds patches of another size, or there is no lake and no valid patch.
    """
    if lk.lake_exists(lake, storage_options=storage_options):
        root = lk.finish_creation(lk.open_lake(lake, mode="r+", storage_options=storage_options))
        size = _patch_size(tree) if tree.patches else int(root.attrs["patch_size"])
        if int(root.attrs["patch_size"]) != size:
            raise FlairLakeError(f"{raw} has {size} px patches but {lake} holds "
                                 f"{root.attrs['patch_size']} px ones; ingest into another lake")
        return root
    if not tree.patches:
        first = next(iter(sorted(tree.problems.items())))
        raise RawFormatError(f"no valid patch under {raw}; first problem: {first[1]}")
    return lk.create_lake(lake, lk.Layout(_patch_size(tree), cfg.patches_per_shard, cfg.codec, cfg.zstd_level),
                          storage_options=storage_options)


def begin_runs(root, plan: IngestPlan) -> None:
    """Record what the plan is about to write before any task runs: retried runs set back to running (the
    markers of their shards removed), this run as running with its rows, and every run's coordinate columns.

    A kill after this point is resumed like any interrupted run.
    """
    for rid, shards in plan.reopened.items():
        lk.update_run(root, rid, status="running", retried=lk.now_iso())
        _invalidate_views(root, shards)  # first: a view never claims rows whose patches are written again
        for shard in shards:
            marker = lk.shard_marker(shard)
            if root.get(marker) is not None:
                del root[marker]
    for w in plan.work:  # idempotent: the new run's rows before its record, so that a recorded run has them
        lk.grow(root, w.rows.stop)
        _write_coords(root, w.rows, w.patches)
    if plan.has_new_run:  # a kill before this line leaves rows no run owns: the next run writes over them
        lk.update_run(root, plan.run_id, command="ingest", status="running", raw=plan.raw,
                      rows=[plan.rows.start, plan.rows.stop], started=lk.now_iso(), codec=root.attrs["codec"],
                      patches_planned=len(plan.new), **plan.options)


def _invalidate_views(root, shards: list[int]) -> None:
    """Mark every view incomplete and drop its markers of ``shards``, whose patches a retry writes again: the next
    ``flair-lake filter`` of the view filters them (readers are told to run it)."""
    views = root.get(schema.VIEWS_GROUP)
    for name, group in (views.groups() if views is not None else ()):
        group.attrs["complete"] = False
        for shard in shards:
            marker = lk.shard_marker(shard, f"{schema.VIEWS_GROUP}/{name}/done")
            if root.get(marker) is not None:
                del root[marker]


def record_outcome(root, plan: IngestPlan, written: set[int], summary: IngestSummary, t0: float) -> None:
    """Record each run of the work complete with its counts, the lake's quarantine and the band statistics, and
    this session's run with its time; count what was added and quarantined into ``summary``.

    Args:
        root: the lake's root group.
        plan: the plan that was executed.
        written: the shards this session's tasks wrote.
        summary: the session's summary, completed here.
        t0: when the session started (``time.perf_counter``).
    """
    per_shard = int(root.attrs["patches_per_shard"])
    complete = lk.read_markers(root)
    reports = {s: complete.get(s) for w in plan.work
               for s in range(w.rows.start // per_shard, math.ceil(w.rows.stop / per_shard))}
    quarantine = dict(root.attrs.get("quarantine", {}))
    run_bad: dict[str, set[int]] = {}
    records = {r["id"]: r for r in root.attrs.get("runs", [])}
    for w in plan.work:
        rid, rows, patches = w.run_id, w.rows, w.patches
        bad = {k: v for s in range(rows.start // per_shard, math.ceil(rows.stop / per_shard))
               for k, v in (reports[s] or {}).get("bad", {}).items()}
        bad_ids = run_bad[rid] = {int(k) for k in bad}
        # an earlier session of this run (resumed or retried) also left out patches when it planned: keep them
        rows_ids = {p.patch_id for p in patches}
        planned_out = {i for i in records.get(rid, {}).get("quarantined_ids", []) if i not in rows_ids}
        lk.update_run(root, rid, status="complete", finished=lk.now_iso(), ingested=len(patches) - len(bad_ids),
                      quarantined=len(bad_ids | planned_out), quarantined_ids=sorted(bad_ids | planned_out))
        for p in patches:  # a patch quarantined by an earlier run and fixed since has landed now
            if str(p.patch_id) not in bad:
                quarantine.pop(str(p.patch_id), None)
        quarantine.update(bad)
        summary.quarantined.update({int(k): v for k, v in bad.items()})
        # a retried run adds the patches that were quarantined and landed now; others what this session wrote
        if rid in plan.retries:
            summary.added += len(plan.retries[rid] - bad_ids)
        else:
            now = sum(min(rows.stop, (s + 1) * per_shard) - max(rows.start, s * per_shard)
                      - len((reports[s] or {}).get("bad", {})) for s in written
                      if rows.start // per_shard <= s < math.ceil(rows.stop / per_shard))
            summary.added += now
            summary.landed_before += len(patches) - len(bad_ids) - now
    quarantine.update({str(k): v for k, v in plan.new_problems.items()})
    summary.quarantined.update(plan.new_problems)
    root.attrs["quarantine"] = quarantine
    _update_band_stats(root, complete)
    summary.seconds = time.perf_counter() - t0
    for rid in plan.resumed:  # an interrupted run's sessions never recorded their time: this one finished it
        record = records.get(rid, {})
        extra = {"raw_bytes": summary.raw_bytes} if record.get("raw") == plan.raw and not record.get("raw_bytes") \
            else {}
        lk.update_run(root, rid, seconds=round(float(record.get("seconds") or 0) + summary.seconds, 2), **extra)
    if plan.has_new_run:  # this run's quarantine: patches its tasks rejected and those its plan left out
        ids = run_bad.get(plan.run_id, set()) | set(plan.new_problems)
        lk.update_run(root, plan.run_id, status="complete", finished=lk.now_iso(), seconds=round(summary.seconds, 2),
                      raw_bytes=summary.raw_bytes, plan_quarantined=len(plan.new_problems), quarantined=len(ids),
                      quarantined_ids=sorted(ids))


def _run_tasks(shard_tasks, area_tasks, cfg: IngestConfig, progress, summary: IngestSummary) -> set[int]:
    """Map the super-area and shard tasks over the cluster, counting what was written; return the shards."""
    from pipelines.cluster import run_tasks

    written: set[int] = set()
    timing: dict = {}
    # longest first: the shard tasks (~0.5 s each) go before the super-areas (~0.15 s), which fill the tail
    for res in run_tasks([(write_patch_shard, shard_tasks), (write_area, area_tasks)], scheduler=cfg.scheduler,
                         workers=cfg.workers, threads_per_worker=cfg.threads_per_worker, desc="ingest",
                         progress=progress, timing=timing):
        if "shard" in res:
            summary.shards_written += 1
            written.add(int(res["shard"]))
        else:
            summary.areas_written += 1
            if res.get("masks_over_100"):
                summary.warnings.append(f"super-area {res['area']}: {res['masks_over_100']} mask value(s) above 100 "
                                        "(snow and cloud probabilities are 0..100; counted as covered at any --prob)")
    summary.startup_seconds = timing.get("startup", 0.0)
    return written


def _update_band_stats(root, markers: dict[int, dict]) -> None:
    """Recompute per-band mean and std of the aerial bands (from the reports of every complete shard,
    ``markers``) and of the Sentinel clear pixels."""
    tot, sq, n = np.zeros(schema.N_AERIAL_BANDS), np.zeros(schema.N_AERIAL_BANDS), 0
    for rep in markers.values():
        tot += rep["aerial_sum"]
        sq += rep["aerial_sumsq"]
        n += rep["pixels"]
    stats = dict(root.attrs.get("band_stats", {}))
    if n:
        mean = tot / n
        stats["aerial"] = {"mean": mean.tolist(), "std": np.sqrt(np.maximum(sq / n - mean**2, 0)).tolist(),
                           "bands": list(schema.AERIAL_BANDS)}
    s_tot, s_sq, s_n = np.zeros(schema.N_S2_BANDS), np.zeros(schema.N_S2_BANDS), 0
    sen = root.get(schema.SENTINEL_GROUP)
    if sen is not None:
        for _, g in sen.groups():
            a = g.attrs
            if a.get("complete") and a.get("clear_pixels"):
                s_tot += a["clear_sum"]
                s_sq += a["clear_sumsq"]
                s_n += a["clear_pixels"]
    if s_n:
        mean = s_tot / s_n
        stats["sentinel"] = {"mean": mean.tolist(), "std": np.sqrt(np.maximum(s_sq / s_n - mean**2, 0)).tolist(),
                             "bands": list(schema.S2_BANDS)}
    root.attrs["band_stats"] = stats
