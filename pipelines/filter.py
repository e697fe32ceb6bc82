"""The filter pipeline: cloud/snow date flags and monthly composites, once, as a named view in the lake.

Reads top to bottom: the task, then the coordinator: open the lake -> name the view from its parameters -> plan
(:mod:`pipelines.filter_plan`: create, overwrite or grow the view, the shards still to write, up to date, the run
record to continue; nothing written) -> prepare the view's arrays -> one Dask task per patch shard (it reads
each super-area it touches once, computes the cover of every window by integral images, the keep flags, and the
composites per distinct keep-set) -> the report. Each task writes whole shards of the view, then its marker; a
killed run resumes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from flair_lake import lake as lk
from flair_lake import schema, storage
from flair_lake import zarr_compat as zc
from flair_lake.chunkio import write_shard
from flair_lake.config import MONTHLY_LEVEL, VIEW_RETAIN_S, FilterConfig
from flair_lake.errors import Interrupted
from flair_lake.info import report_lines
from flair_lake.lock import writer
from flair_lake.stages.clouds import keep_dates, window_cover
from flair_lake.stages.composite import composite_windows, month_day_offsets
from pipelines.filter_plan import COORDS, FilterPlan, FilterState, FilterTask, plan_filter

log = logging.getLogger(__name__)


@dataclass
class FilterSummary:
    """What a filter run did."""

    lake: str
    view: str
    shards_written: int = 0
    shards_skipped: int = 0
    patches: int = 0
    up_to_date: bool = False
    seconds: float = 0.0
    startup_seconds: float = 0.0  # of ``seconds``, starting a local Dask cluster (0 with --scheduler)
    report: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Return a human summary."""
        if self.up_to_date:
            return [f"view {self.view} in {self.lake} is up to date with these parameters: nothing to do"]
        from pipelines.cluster import rate_text

        out = [(f"view {self.view}: {self.patches} patches filtered "
                f"{rate_text(self.patches, self.seconds, self.startup_seconds)}; "
                f"shards written {self.shards_written}, already complete {self.shards_skipped}")]
        out += [f"  {line}" for line in report_lines(self.report)]
        return out


# --- task -------------------------------------------------------------------------------------------------------
def filter_shard(task: FilterTask) -> dict:
    """Compute and write one shard of a view: cover, keep, and (monthly) composites, counts and day offsets."""
    with storage.rust_codecs(task.lake), storage.fast_writes():  # arrays opened here decode and encode in Rust (local)
        return _filter_shard(task)


def _filter_shard(task: FilterTask) -> dict:
    import zarr

    t_start = time.perf_counter()
    phases = dict.fromkeys(("read", "cover", "composite", "write"), 0.0)
    root = zarr.open_group(store=task.lake, mode="r+", storage_options=task.storage_options)
    a, b = task.rows
    n, w, half = b - a, task.window, task.window // 2
    coords = task.coords or {k: root[k][a:b] for k in COORDS}
    status, zone, year = coords[schema.STATUS_ARRAY], coords["zone"], coords["year"]
    origins = np.stack([coords["s2_row"] - half, coords["s2_col"] - half], axis=1)
    cover = np.zeros((n, task.t_max), np.float32)
    keep = np.zeros((n, task.t_max), bool)
    n_dates = np.zeros(n, np.int16)
    # not zero-filled: the composites write every (patch, month) that has a kept date, the rest is zeroed after
    monthly = np.empty((n, schema.MONTHS, schema.N_S2_BANDS, w, w), np.uint16) if task.cfg.monthly else None
    counts = np.zeros((n, schema.MONTHS), np.uint8)
    days = np.zeros((n, schema.MONTHS), np.int16)
    areas = root.attrs["areas"]
    ok = status == schema.STATUS_OK
    for area_code in np.unique(zone[ok]):
        t0 = time.perf_counter()
        area = f"{schema.SENTINEL_GROUP}/{areas[int(area_code)]}"
        masks = storage.open_array(root, task.lake, f"{area}/masks")[:]
        dates = storage.open_array(root, task.lake, f"{area}/dates")[:].astype("datetime64[D]")
        phases["read"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        t = masks.shape[0]
        members = np.flatnonzero(ok & (zone == area_code))
        cov = window_cover(masks, origins[members], window=w, min_prob=task.cfg.min_prob,
                           combine=task.cfg.combine)
        kp = keep_dates(cov, max_cover=task.cfg.max_cover)
        cover[members, :t], keep[members, :t], n_dates[members] = cov, kp, t
        phases["cover"] += time.perf_counter() - t0
        if monthly is None:
            continue
        t0 = time.perf_counter()
        years = np.unique(year[members])
        streamed = len(years) == 1 and task.cfg.reducer == "mean" and not task.cfg.mask_pixels
        # the default mean streams the area one chunk of dates at a time (composite phase); otherwise it is read
        # whole, once per task
        data = storage.open_array(root, task.lake, f"{area}/data")
        data = data if streamed else data[:]
        phases["read"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        clear = (masks.max(axis=1) < task.cfg.min_prob) if task.cfg.mask_pixels else None
        date_year = dates.astype("datetime64[Y]").astype(int) + 1970
        date_month = dates.astype("datetime64[M]").astype(int) % schema.MONTHS
        for y in years:  # months of the patch's own acquisition year
            sub = members[year[members] == y]
            months = np.where(date_year == y, date_month, -1)
            contiguous = sub[-1] - sub[0] + 1 == sub.size  # the usual case: fill the shard's cube in place
            comp, counts[sub] = composite_windows(
                data, months, kp[np.searchsorted(members, sub)], origins[sub], window=w, reducer=task.cfg.reducer,
                clear=clear, out=monthly[sub[0]:sub[-1] + 1] if contiguous else None)
            if not contiguous:
                monthly[sub] = comp
            days[sub] = month_day_offsets(task.cfg.ref_year or int(y))
        phases["composite"] += time.perf_counter() - t0
    if monthly is not None:
        monthly[counts == 0] = 0  # empty months, and the rows of patches without Sentinel data
    t0 = time.perf_counter()
    view = f"{schema.VIEWS_GROUP}/{task.view}"
    if monthly is not None:  # the cube's whole shard in one encode pass and one file write (flair_lake.chunkio)
        write_shard(storage.open_array(root, task.lake, f"{view}/monthly"), task.shard, monthly,
                    direct=storage.direct_io(task.lake))
    columns = {"cover": cover, "keep": keep, "n_dates": n_dates}
    if monthly is not None:
        columns.update(month_count=counts, month_days=days)
    zc.write_arrays([(storage.open_array(root, task.lake, f"{view}/{k}"), v) for k, v in columns.items()],
                         slice(a, b))
    phases["write"] = time.perf_counter() - t0
    phases["total"] = time.perf_counter() - t_start
    report = {"rows": [a, b], "patches": int(ok.sum()), "seconds": {k: round(v, 4) for k, v in phases.items()}}
    root.create_group(lk.shard_marker(task.shard, f"{schema.VIEWS_GROUP}/{task.view}/done"), attributes=report,
                      overwrite=True)
    # what the coordinator's report needs of these rows, so that it need not read them back
    per_row = {"kept": keep.sum(1, dtype=np.int16), "n_dates": n_dates,
               "clear_months": (counts > 0).sum(1, dtype=np.int8) if monthly is not None else None}
    return {"shard": task.shard, **report, "columns": per_row}


# --- coordinator ------------------------------------------------------------------------------------------------
def run_filter(lake: str, cfg: FilterConfig, *, name: str | None = None, overwrite: bool = False,
               scheduler: str | None = None, workers: int | None = None, storage_options: dict | None = None,
               progress: bool | None = None, window: int = schema.S2_WINDOW, wait: bool = False) -> FilterSummary:
    """Build (or resume, or extend) the view of ``cfg`` in ``lake``, as the lake's one writer (``wait``: for the
    writer that holds it, else refuse).

    Plan (:func:`pipelines.filter_plan.plan_filter`, nothing written) -> execute (prepare the view, record the
    run, map the shard tasks over the cluster) -> record the report.

    Raises:
        LakeNotFoundError: no lake at ``lake``.
        LakeStateError: no Sentinel data, or a view of that name with other parameters (without overwrite).
    """
    from pipelines.cluster import check_scheduler

    t0 = time.perf_counter()
    cfg = cfg.normalized()  # the cube's options mean nothing without a cube
    lk.open_lake(lake, storage_options=storage_options)  # a lake is there: checked before the lock is taken
    check_scheduler(scheduler)
    with writer(lake, "filter", storage_options=storage_options, wait=wait):  # one writer at a time
        root = lk.open_lake(lake, mode="r+", storage_options=storage_options)
        return _filter_view(root, lake, cfg, name, overwrite, scheduler, workers, storage_options, progress,
                            window, t0)


def _filter_view(root, lake: str, cfg: FilterConfig, name: str | None, overwrite: bool, scheduler, workers,
                 storage_options: dict | None, progress, window: int, t0: float) -> FilterSummary:
    """Plan, execute and record the view, holding the lake's writer lock."""
    from pipelines.cluster import forget_listings

    name = name or cfg.view_name()
    lk.sweep_leftovers(lake)  # side files of a killed run's writes
    collect_generations(root)
    state = FilterState.read(root, name)
    plan = plan_filter(state, cfg, lake, name=name, overwrite=overwrite, storage_options=storage_options,
                       window=window)
    summary = FilterSummary(lake=lake, view=name, shards_skipped=plan.shards_skipped)
    prepare_view(root, plan, cfg, state.per_shard, state.n)
    if plan.up_to_date:
        if lk.current_views(root[schema.VIEWS_GROUP]).get(name) != plan.view:  # complete, killed before its switch
            switch(root, name, plan.view)
        summary.up_to_date = True
        return summary
    begin_run(root, plan)
    try:
        results = _run_tasks(plan.tasks, scheduler, workers, progress, summary) if plan.tasks else []
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the view stays incomplete; the same command resumes
        raise Interrupted.of(exc, landed=f"{summary.shards_written} of {len(plan.tasks)} shard(s) of view "
                             f"{name} landed in {lake} and are kept",
                             resume="run the same command again to filter the rest") from None
    forget_listings(root.store)  # the view's markers the tasks wrote: listed by whatever reads the view next
    record_report(root, plan, state, results, summary, t0)
    return summary


def prepare_view(root, plan: FilterPlan, cfg: FilterConfig, per_shard: int, n: int) -> None:
    """Create the view's group and arrays at ``n`` rows (a new view, or a new generation of an overwritten one;
    a group whose creation was killed is deleted first), or grow them (the plan's
    :attr:`~pipelines.filter_plan.FilterPlan.resize`)."""
    if plan.delete:
        del root[schema.VIEWS_GROUP][plan.view]
    if plan.create:
        _create_view(root, plan.view, cfg, per_shard, n, plan.t_max, plan.window)
        return
    vg = root[f"{schema.VIEWS_GROUP}/{plan.view}"]
    for arr_name, shape in plan.resize.items():
        vg[arr_name].resize(shape)


def _create_view(root, name: str, cfg: FilterConfig, s: int, n: int, t_max: int, window: int) -> None:
    """Create the view's group, with its attributes, and its arrays at ``n`` rows."""
    vg = root.create_group(f"{schema.VIEWS_GROUP}/{name}", attributes={
        "params": dataclasses.asdict(cfg), "window": window, "complete": False, "created": lk.now_iso(),
        "month_days_reference": f"15 May of {cfg.ref_year or 'the acquisition year'}"})
    layouts = schema.view_arrays(s, t_max, window, cfg.monthly, reducer=cfg.reducer)
    specs = {name: storage.create_kwargs(a, n, storage.role_compressors(a, cfg.codec, MONTHLY_LEVEL))
             for name, a in layouts.items()}
    zc.create_arrays(vg, specs)  # one round of metadata writes, not one per array


def begin_run(root, plan: FilterPlan) -> None:
    """Record the run as running before any task: a new record, or the interrupted one this run finishes."""
    if plan.resumes:  # its record is completed, not left running beside a new one
        lk.update_run(root, plan.run_id, resumed=lk.now_iso(), params=plan.params)
    else:
        lk.update_run(root, plan.run_id, command="filter", view=plan.view, name=plan.name, status="running",
                      started=lk.now_iso(), params=plan.params)


def record_report(root, plan: FilterPlan, state: FilterState, results: list[dict], summary: FilterSummary,
                  t0: float) -> None:
    """Record the view complete with its report, make it the latest, and complete the run record.

    The report is built from the tasks' columns when the run wrote every shard of the view, else from the lake.
    """
    every_shard = summary.shards_skipped == 0 and len(results) == len(plan.tasks) and bool(plan.tasks)
    report = build_report(root, plan.view, state.coords, results if every_shard else None)
    summary.patches = int((state.coords[schema.STATUS_ARRAY] == schema.STATUS_OK).sum())
    summary.seconds = time.perf_counter() - t0
    summary.report = report
    # the complete flag last: a kill before it leaves a view the next run finishes (its shards all marked), never
    # a complete view whose run or whose 'latest' was not recorded
    lk.update_run(root, plan.run_id, status="complete", finished=lk.now_iso(), seconds=round(summary.seconds, 2),
                  patches=summary.patches)
    root[f"{schema.VIEWS_GROUP}/{plan.view}"].attrs.update({"complete": True, "rows": state.n, "report": report,
                                                             "updated": lk.now_iso()})
    switch(root, plan.name, plan.view)


def switch(root, name: str, group: str) -> None:
    """Make ``group`` the current generation of the view ``name`` and ``name`` the latest view: one write of the
    views group's attributes, so a reader resolves either the old generation or the new one, never a mix."""
    views = root[schema.VIEWS_GROUP]
    attrs = views.attrs.asdict()
    current = {**attrs.get("current", {}), name: group}
    since = {**attrs.get("current_since", {}), name: lk.now_iso()} if current != attrs.get("current") \
        else attrs.get("current_since", {})
    views.attrs.update({"current": current, "current_since": since, "latest": name})


def collect_generations(root, now: float | None = None) -> list[str]:
    """Delete the view generations replaced more than :data:`config.VIEW_RETAIN_S` ago; return their groups.

    A reader (a training run) that opened a generation before it was replaced keeps reading it until then.
    """
    views = root.get(schema.VIEWS_GROUP)
    if views is None:
        return []
    now = time.time() if now is None else now
    current, since = lk.current_views(views), views.attrs.get("current_since", {})
    gone = []
    for group, _ in list(views.groups()):
        name, k = schema.view_name_of(group)
        cur = current.get(name)
        if cur is None or k >= schema.view_name_of(cur)[1] or name not in since:
            continue
        if now - dt.datetime.fromisoformat(since[name]).timestamp() > VIEW_RETAIN_S:
            del views[group]
            gone.append(group)
    return gone


def _run_tasks(tasks, scheduler, workers, progress, summary: FilterSummary) -> list[dict]:
    """Map the shard tasks over the cluster, counting the shards written; return the tasks' results."""
    from pipelines.cluster import run_tasks

    results, timing = [], {}
    for result in run_tasks([(filter_shard, tasks)], scheduler=scheduler, workers=workers, desc="filter",
                            progress=progress, timing=timing):
        summary.shards_written += 1
        results.append(result)
    summary.startup_seconds = timing.get("startup", 0.0)
    return results


def build_report(root, name: str, coords: dict | None = None, results: list[dict] | None = None) -> dict:
    """Return the view's report: dates kept and dropped per domain, clear-month histogram, empty patches.

    ``coords`` (status, domain, patch_id of every row) and ``results`` (the tasks' per-row columns, when the run
    wrote every shard of the view) spare reading them back from the lake.
    """
    path = f"{schema.VIEWS_GROUP}/{name}"
    vg = root[path]
    monthly = "month_count" in vg
    need = [k for k in (schema.STATUS_ARRAY, "patch_id", "domain") if coords is None or k not in coords]
    if results is None:
        need += [f"{path}/keep", f"{path}/n_dates"] + ([f"{path}/month_count"] if monthly else [])
    cols = {**(coords or {}), **zc.read_arrays(root, need)}
    n = cols[schema.STATUS_ARRAY].shape[0]
    if results is None:
        kept, n_dates = cols[f"{path}/keep"].sum(1), cols[f"{path}/n_dates"]
        clear_months = (cols[f"{path}/month_count"] > 0).sum(1) if monthly else None
    else:
        kept, n_dates = np.zeros(n, np.int64), np.zeros(n, np.int64)
        clear_months = np.zeros(n, np.int64) if monthly else None
        for r in results:
            a, b = r["rows"]
            kept[a:b], n_dates[a:b] = r["columns"]["kept"], r["columns"]["n_dates"]
            if monthly:
                clear_months[a:b] = r["columns"]["clear_months"]
    ok = cols[schema.STATUS_ARRAY] == schema.STATUS_OK
    kept, n_dates = kept[ok].astype(np.int64), n_dates[ok].astype(np.int64)
    ids, dom = cols["patch_id"][ok], cols["domain"][ok]
    domains = root.attrs["domains"]
    per_domain = {}
    for d in np.unique(dom):
        sel = dom == d
        per_domain[domains[int(d)]] = {"kept": int(kept[sel].sum()), "dropped": int((n_dates - kept)[sel].sum())}
    report = {"per_domain": per_domain, "patches": int(ok.sum()),
              "no_clear_date": [int(i) for i in ids[kept == 0]]}
    if monthly:
        report["clear_month_histogram"] = np.bincount(clear_months[ok], minlength=schema.MONTHS + 1).tolist()
    return report
