"""``flair-lake experiment``: a plan's variants x seeds, each one training run, then the tables.

1. **Views.** Each variant's filter view is built if the lake lacks it, through ``filter``'s own code and lock
   (one writer at a time; ``wait``: behind another writer).
2. **Runs.** Each (variant, seed) trains into ``OUT/runs/<variant>/seed<k>/`` and is evaluated on the test
   split; ``result.json`` (written last, atomically) marks it finished. A rerun skips finished runs and resumes
   an interrupted one from its ``last.pt``. A failed run is recorded (``failed.json``) and reported; the others go
   on. Runs go one after the other in this process, or in parallel on a Dask cluster (``--scheduler``): on
   workers that declare a ``GPU`` resource (``dask worker ... --resources GPU=1``, one worker per GPU), one run
   per GPU at a time.
3. **Reports.** The tables of :mod:`flair_lake.experiments.report` from every finished run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from flair_lake import lake as lk
from flair_lake.config import EXPERIMENT_SEEDS
from flair_lake.errors import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, Interrupted, LakeStateError, UsageError
from flair_lake.experiments.plan import Plan, Variant, variant_record
from flair_lake.experiments.report import read_results, write_reports
from flair_lake.locations import output_lock

log = logging.getLogger(__name__)
GPU = "GPU"  # the Dask worker resource that marks one GPU


@dataclass(frozen=True)
class RunSpec:
    """One training run of an experiment: what a (possibly remote) worker needs."""

    variant: Variant
    seed: int
    lake: str
    view: str | None
    folder: str
    epochs: int | None = None
    device: str | None = None


@dataclass
class ExperimentSummary:
    """What an experiment did."""

    plan: str
    runs: int = 0
    finished: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    views_built: list[str] = field(default_factory=list)
    reports: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if not self.failed:
            return EXIT_OK
        return EXIT_PARTIAL if self.finished + self.skipped else EXIT_ERROR

    def lines(self) -> list[str]:
        out = [f"note: {n}" for n in self.notes]
        out += [f"failed: {f}" for f in self.failed]
        out.append(f"{self.plan}: {self.finished} run(s) trained, {self.skipped} already finished, "
                   f"{len(self.failed)} failed, of {self.runs}; views built: {', '.join(self.views_built) or 'none'}; "
                   f"{self.seconds:.0f} s")
        out += [f"wrote {p}" for p in self.reports]
        return out


def run_one(spec: RunSpec) -> dict:
    """Train and evaluate one run (or return its record when finished); write ``result.json`` last."""
    from flair_lake.config import TrainConfig
    from flair_lake.training.evaluate import evaluate
    from flair_lake.training.loop import fit

    folder = Path(spec.folder)
    result = folder / "result.json"
    if result.exists():
        return {**json.loads(result.read_text()), "skipped": True}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "failed.json").unlink(missing_ok=True)
    (folder / "spec.json").write_text(json.dumps(spec_record(spec), indent=1))
    flags = spec.variant.train_flags()
    if spec.epochs is not None:
        flags["epochs"] = spec.epochs
    worker = _dask_worker()
    if worker:
        flags["workers"] = 0  # a Dask worker process may not start DataLoader processes
    t0 = time.perf_counter()
    cfg = TrainConfig(lake=spec.lake, view=spec.view, seed=spec.seed, out=str(folder),
                      resume=(folder / "last.pt").exists(), device=spec.device, **flags)
    summary = fit(cfg, progress=False)
    res = evaluate(folder / "best.pt", spec.lake, split="test", out_dir=folder, examples=0,
                   workers=flags.get("workers"), device=spec.device)
    if not res["labelled"]:
        raise LakeStateError(f"the test split of {spec.lake} has no labels: an experiment scores its runs on it; "
                             "ingest the test part with its labels")
    record = {"variant": variant_record(spec.variant), "seed": spec.seed, "miou": res["miou"],
              "per_class_iou": res["per_class_iou"], "best_epoch": summary["best_epoch"],
              "epochs_run": summary["epochs_run"], "parameters": summary["parameters"], "view": res["view"],
              "test_patches": res["patches"], "seconds": round(time.perf_counter() - t0, 1), "dask_worker": worker}
    tmp = folder / "result.json.partial"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, result)
    return record


def spec_record(spec: RunSpec) -> dict:
    """Return what a run's result depends on (its folder's ``spec.json``): a run whose record differs is
    trained again rather than resumed or reused."""
    return {"variant": variant_record(spec.variant), "seed": spec.seed, "epochs": spec.epochs, "view": spec.view,
            "lake": spec.lake}


def _dask_worker() -> str | None:
    """Return the address of the Dask worker running this, None outside one."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None


def build_views(plan: Plan, lake: str, summary: ExperimentSummary, scheduler: str | None = None
                ) -> dict[str, str | None]:
    """Build the view of every variant that reads Sentinel-2 and lacks one; return variant name -> view name.

    Variants without a Sentinel-2 branch get the plan's first view (what their loader reads beside the aerial
    patches, and records), so that they do not follow whichever view is the lake's latest.
    """
    from pipelines.filter import run_filter

    views: dict[str, str | None] = {}
    built: dict = {}
    for v in plan.variants:
        cfg = v.filter_config()
        if cfg is None:
            continue
        cfg = cfg.normalized()
        if cfg not in built:
            res = run_filter(lake, cfg, wait=True, progress=False, scheduler=scheduler)
            built[cfg] = res.view
            if not res.up_to_date:
                summary.views_built.append(res.view)
        views[v.name] = built[cfg]
    first = next(iter(built.values()), None)
    return {v.name: views.get(v.name, first) for v in plan.variants}


def run_experiment(plan: Plan, lake: str, out: str | Path, *, seeds: int = EXPERIMENT_SEEDS, epochs: int | None = None,
                   scheduler: str | None = None, device: str | None = None) -> ExperimentSummary:
    """Run ``plan`` on ``lake`` into ``out``: views, runs (skipping finished ones), then the reports."""
    import torch  # noqa: F401 - before a local cluster sets OMP_NUM_THREADS=1 here: CPU runs keep every core

    from pipelines.cluster import check_scheduler
    from pipelines.maps import absolute

    t0 = time.perf_counter()
    lake, out = absolute(lake), Path(out).resolve()
    lk.open_lake(lake)  # one line now when it is not there
    check_scheduler(scheduler)
    summary = ExperimentSummary(plan.name)
    with output_lock(out / "runs", "flair-lake experiment"):
        views = build_views(plan, lake, summary, scheduler)
        (out / "plan.json").write_text(json.dumps({"plan": plan.name, "lake": str(lake), "seeds": seeds,
                                                   "epochs": epochs, "views": views,
                                                   "variants": [variant_record(v) for v in plan.variants]},
                                                  indent=1))
        specs = [RunSpec(v, seed, lake, views[v.name], str(out / "runs" / v.slug / f"seed{seed}"), epochs, device)
                 for v in plan.variants for seed in range(seeds)]
        for spec in specs:
            _check_folder(spec, summary)
        summary.runs = len(specs)
        _run_all(specs, scheduler, summary, out)
    source = (f"lake {Path(lake).name}, {seeds} seed(s)" + (f", {epochs} epoch(s)" if epochs else ""))
    summary.reports = write_reports(plan, read_results(out, plan, seeds), out, source=source)
    summary.seconds = time.perf_counter() - t0
    return summary


def _check_folder(spec: RunSpec, summary: ExperimentSummary) -> None:
    """Start a run's folder afresh when it holds a run of other settings (variant, epochs, view, lake)."""
    folder = Path(spec.folder)
    recorded = folder / "spec.json"
    if not recorded.exists():
        return
    try:
        same = json.loads(recorded.read_text()) == json.loads(json.dumps(spec_record(spec)))
    except ValueError:
        same = False
    if not same:
        shutil.rmtree(folder)
        summary.notes.append(f"{spec.variant.name} seed {spec.seed}: its folder held a run of other settings "
                             "(variant, epochs, view or lake); it is trained again")


def _run_all(specs: list[RunSpec], scheduler: str | None, summary: ExperimentSummary, out: Path) -> None:
    """Run every spec (skipping finished ones), counting what finished and what failed in ``summary``."""
    try:
        for spec, outcome in _execute(specs, scheduler, summary):
            if isinstance(outcome, str):
                line = f"{spec.variant.name} seed {spec.seed}: {outcome}"
                summary.failed.append(line)
                Path(spec.folder).mkdir(parents=True, exist_ok=True)
                (Path(spec.folder) / "failed.json").write_text(json.dumps({"error": line}))
            elif outcome.get("skipped"):
                summary.skipped += 1
            else:
                summary.finished += 1
                print(f"{spec.variant.name} seed {spec.seed}: test mIoU {outcome['miou']:.4f} "
                      f"(best epoch {outcome['best_epoch']}, {outcome['seconds']:.0f} s)", flush=True)
    except KeyboardInterrupt as exc:
        raise Interrupted(getattr(exc, "signum", signal.SIGINT),
                          landed=f"{summary.finished + summary.skipped} of {len(specs)} run(s) are finished in "
                          f"{out / 'runs'} and kept", resume="run the same command again: finished runs are "
                          "skipped and an interrupted one resumes from its last.pt") from None


def _free_memory() -> None:
    """Release what a finished or failed run left (its model and batches; CUDA's cached blocks)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _one_line(exc: BaseException) -> str:
    from flair_lake.cli.failures import describe

    return describe(exc)[0]


def _execute(specs: list[RunSpec], scheduler: str | None, summary: ExperimentSummary):
    """Yield (spec, its record, or the one line of its failure) per run: in this process, or on a Dask
    scheduler's workers."""
    if scheduler is None:
        for spec in specs:
            try:
                outcome = run_one(spec)
            except Exception as exc:  # noqa: BLE001 - a failed run is reported; the others go on
                log.debug("run failed", exc_info=True)
                outcome = _one_line(exc)  # not the exception: its traceback would hold the run's model alive
            _free_memory()
            yield spec, outcome
        return
    from distributed import as_completed

    from pipelines.cluster import dask_client

    with dask_client(scheduler) as client:
        info = client.scheduler_info()["workers"].values()
        gpus = sum(w.get("resources", {}).get(GPU, 0) for w in info)
        threads = max((w.get("nthreads", 1) for w in info), default=1)
        if not gpus and threads > 1:
            raise UsageError(f"the workers of {scheduler} run {threads} tasks at once and declare no {GPU}: two "
                             f"trainings would share a process; start them with --nthreads 1, or with --resources "
                             f"{GPU}=1 (one per GPU)")
        resources = {GPU: 1} if gpus else None
        summary.notes.append(f"{len(info)} Dask worker(s), {gpus:g} declaring a {GPU} resource: "
                             + ("one run per GPU at a time" if gpus else "one run per worker at a time"))
        tag = uuid.uuid4().hex[:8]  # keys of this invocation only: another experiment may share the scheduler
        futures = {client.submit(run_one, spec, pure=False, resources=resources,
                                 key=f"flair-run-{tag}-{spec.variant.slug}-{spec.seed}"): spec for spec in specs}
        for fut in as_completed(futures):
            spec = futures[fut]
            try:
                outcome = fut.result()
            except Exception as exc:  # noqa: BLE001
                outcome = _one_line(exc)
            yield spec, outcome
