"""Dask cluster set-up: a right-sized LocalCluster, or a client of an existing scheduler."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time

from flair_lake import config
from flair_lake.cli.failures import DASK_LOGGERS, quiet_loggers
from flair_lake.errors import UnreachableError

log = logging.getLogger(__name__)

# Each worker process decodes with one thread: no Blosc or BLAS oversubscription (docs/benchmarks.md).
# zarr's codec thread pool too: a worker is one core, so 1 vs 2 workers compares 1 vs 2 cores.
WORKER_ENV = {"BLOSC_NTHREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1", "ZARR_THREADING__MAX_WORKERS": "1"}


# glibc in workers: distributed's default MALLOC_TRIM_THRESHOLD_ of 64 KiB also freezes the mmap threshold at
# 128 KiB, so every array a shard task allocates is a fresh mmap that is page-faulted in again; keeping freed
# memory took filter --monthly from 347 to ~500 patches/s on 2 cores (docs/benchmarks.md). Start external
# workers with these variables set too.
MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_MMAP_THRESHOLD_": str(32 << 20)}


def worker_dask_config() -> dict:
    """Return the dask config that gives LocalCluster workers :data:`MALLOC_ENV` before they start."""
    return {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in MALLOC_ENV.items()}


def rate_text(count: int, seconds: float, startup: float = 0.0) -> str:
    """Return "in 1.4 s (366 patches/s)", saying which part was the start of a local cluster when there was one.

    A small run on a fresh LocalCluster spends much of its time starting the workers; the rate after the
    start-up is what a larger run approaches.
    """
    rate = count / seconds if seconds else 0.0
    text = f"in {seconds:.1f} s ({rate:.0f} patches/s"
    if startup > 0 and seconds > startup:
        after = count / (seconds - startup)
        text += f"; {startup:.1f} s of it starting a local Dask cluster, {after:.0f} patches/s after"
    return text + ")"


class SchedulerUnreachableError(UnreachableError):
    """The Dask scheduler given with --scheduler cannot be reached."""


def default_workers() -> int:
    """Return the number of worker processes for this machine (one per core, at most 8)."""
    return max(1, min(os.cpu_count() or 1, 8))


def check_scheduler(scheduler: str | None) -> None:
    """Fail fast, before anything is written, when ``scheduler`` does not answer.

    Raises:
        SchedulerUnreachableError: no scheduler at that address within 5 seconds.
    """
    if not scheduler:
        return
    with dask_client(scheduler):
        pass


def _current_client(scheduler: str):
    """Return this process's default Dask client when it is connected to ``scheduler``, else None."""
    from distributed import default_client

    try:
        client = default_client()
    except ValueError:  # no client in this process
        return None
    if client.status == "running" and client.scheduler is not None and client.scheduler.address == scheduler:
        return client
    return None


def _quiet_teardown() -> None:
    """Silence what Dask, tornado and asyncio log while a failed or interrupted run closes its cluster (futures it
    cannot gather, callbacks cancelled mid-flight): the command's one line says what happened; -v keeps them."""
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        quiet_loggers((*DASK_LOGGERS, "asyncio"))


@contextlib.contextmanager
def _workers_ignore_ctrl_c():
    """Start the LocalCluster's worker processes ignoring SIGINT; this process takes Ctrl-C again after.

    Ctrl-C in a terminal signals the whole process group: worker processes that took it would each print their
    traceback. An ignored signal stays ignored across fork and exec (a blocked one does not: multiprocessing's
    spawn clears the mask), so only the coordinator sees Ctrl-C; it closes the cluster (``dask_client``) and says
    what landed. A Ctrl-C during the start-up itself (about a second) is ignored: press it again.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None,
                threads_per_worker: int = config.THREADS_PER_WORKER,
                timing: dict | None = None):
    """Yield a ``distributed.Client``: of ``scheduler`` when given, else of a new LocalCluster.

    ``timing``, when given, receives ``startup`` (seconds spent starting the LocalCluster) and ``workers`` (its
    worker count); nothing when a scheduler is given.

    Raises:
        SchedulerUnreachableError: the scheduler does not answer within seconds.
    """
    import dask
    from distributed import Client, LocalCluster

    for k, v in WORKER_ENV.items():
        os.environ.setdefault(k, v)
    # a task's failure reaches the coordinator, which says it in one line; the workers' own log of it (a
    # traceback per task and retry) only with -v
    quiet = logging.ERROR if logging.getLogger().isEnabledFor(logging.DEBUG) else logging.CRITICAL
    quiet_loggers(DASK_LOGGERS, quiet)
    if scheduler:
        current = _current_client(scheduler)
        if current is not None:  # a notebook or a benchmark already holds a client of that scheduler: reuse it
            yield current
            return
        try:
            client = Client(scheduler, timeout="5s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise SchedulerUnreachableError(
                f"cannot reach the Dask scheduler at {scheduler} ({exc.__class__.__name__}); start one with "
                "`dask scheduler` and `dask worker ADDRESS`, or drop --scheduler to use a local cluster") from None
        try:
            yield client
        except BaseException:
            _quiet_teardown()
            raise
        finally:
            client.close()
        return
    n = workers or default_workers()
    t0 = time.perf_counter()
    with dask.config.set({"distributed.worker.daemon": False,
                          "distributed.logging.distributed": logging.getLevelName(quiet).lower(),
                          **worker_dask_config()}):
        with _workers_ignore_ctrl_c():
            cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True,
                                   dashboard_address=":0", silence_logs=quiet, env=dict(WORKER_ENV))
        client = Client(cluster)
        if timing is not None:
            timing.update(startup=time.perf_counter() - t0, workers=n)
        try:
            yield client
        except BaseException:
            _quiet_teardown()
            raise
        finally:
            client.close()
            cluster.close()


def run_tasks(jobs, *, scheduler: str | None, workers: int | None,
              threads_per_worker: int = config.THREADS_PER_WORKER,
              desc: str, progress: bool | None = None, timing: dict | None = None):
    """Map ``(function, tasks)`` jobs over a cluster (``dask_client``) and yield each result as it completes.

    ``timing`` receives how long a new LocalCluster took to start (see :func:`dask_client`).

    The jobs run in the order given (Dask priorities: put the longest tasks first, so the short ones fill the
    tail). Tasks own whole shards and overwrite them, so Dask's retries are safe. A progress bar counts tasks.
    """
    from distributed import as_completed
    from tqdm import tqdm

    with dask_client(scheduler, workers, threads_per_worker, timing) as client:
        futures = [f for i, (fn, tasks) in enumerate(jobs)
                   for f in client.map(fn, tasks, pure=False, retries=1, priority=len(jobs) - i)]
        with tqdm(total=len(futures), desc=desc, unit="task",
                  disable=None if progress is None else not progress) as bar:
            for fut in as_completed(futures):
                yield fut.result()
                bar.update()


def forget_listings(store) -> None:
    """Drop the coordinator's cached directory listings of ``store`` (a zarr store) after tasks wrote to it.

    fsspec file systems of object stores cache listings; the tasks write from worker processes, so a listing
    the coordinator made before them (the shard markers of the plan) would be served stale afterwards. Local
    stores keep no listing cache.
    """
    fs = getattr(store, "fs", None)
    if fs is not None:
        fs.invalidate_cache()
