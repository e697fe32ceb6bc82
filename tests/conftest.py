"""Shared fixtures: a tiny synthetic FLAIR tree generated once per test session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flair_lake.config import SynthConfig

os.environ.setdefault("BLOSC_NTHREADS", "1")

# Small but complete: every split, awkward Sentinel cases, 64 px patches with the real 102.4 m footprint.
BIN = Path(sys.executable).parent  # the venv's console scripts (dask scheduler, dask worker)
TINY = SynthConfig.from_preset("tiny", patches_per_zone=4, max_dates=30)


@pytest.fixture(scope="session")
def raw_tree(tmp_path_factory):
    """Return the root of a tiny synthetic raw FLAIR tree (read-only for tests)."""
    from flair_lake.synth import synthesize

    root = tmp_path_factory.mktemp("raw") / "flair"
    synthesize(root, TINY)
    return root


@pytest.fixture(scope="session")
def lake(raw_tree, tmp_path_factory):
    """Return the path of a lake ingested from :func:`raw_tree` (read-only for tests)."""
    from flair_lake.config import IngestConfig
    from pipelines.ingest import ingest

    path = str(tmp_path_factory.mktemp("lake") / "lake.zarr")
    summary = ingest(raw_tree, path, IngestConfig(workers=2, patches_per_shard=8))
    assert summary.exit_code == 0, summary.lines()
    return path


@pytest.fixture(scope="session")
def monthly_lake(lake, tmp_path_factory):
    """Return a copy of :func:`lake` with the default monthly view (read-only for tests)."""
    import shutil

    from flair_lake.config import FilterConfig
    from pipelines.filter import run_filter

    path = str(tmp_path_factory.mktemp("monthly") / "lake.zarr")
    shutil.copytree(lake, path)
    run_filter(path, FilterConfig(monthly=True), workers=2)
    return path


# A command line that runs `flair-lake ARGS` with one function of a module wrapped so that its N-th call kills the
# process (SIGKILL, no clean-up of any kind): argv = [module, function, N, *ARGS].
KILL_ON_CALL = """
import importlib, os, signal, sys
module, name, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
mod = importlib.import_module(module)
original, calls = getattr(mod, name), [0]
def wrapped(*args, **kwargs):
    calls[0] += 1
    if calls[0] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
setattr(mod, name, wrapped)
from flair_lake.cli import main
main(sys.argv[4:], prog_name="flair-lake")
"""


def killed_on_call(module: str, name: str, nth: int) -> list[str]:
    """Return the command prefix that runs flair-lake killed on the ``nth`` call of ``module.name``."""
    return [sys.executable, "-c", KILL_ON_CALL, module, name, str(nth)]


def start_cluster(tmp_path, *worker_args: str):
    """Start a scheduler and two single-threaded workers (with ``worker_args``); yield (address, workers)."""
    from distributed import Client

    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "BLOSC_NTHREADS": "1"}
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)]
    deadline = time.time() + 60
    while not sched_file.exists() and time.time() < deadline:
        time.sleep(0.1)
    workers = [subprocess.Popen([str(BIN / "dask"), "worker", "--scheduler-file", str(sched_file), "--nthreads",
                                 "1", "--no-dashboard", "--no-nanny", "--host", "127.0.0.1", *worker_args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                start_new_session=True) for _ in range(2)]
    procs += workers
    try:
        with Client(scheduler_file=str(sched_file), timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            address = client.scheduler.address
        yield address, workers
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


@pytest.fixture()
def cluster(tmp_path):
    """A real `dask scheduler` and two single-threaded `dask worker`s on loopback: (address, workers)."""
    yield from start_cluster(tmp_path)


@pytest.fixture()
def gpu_cluster(tmp_path):
    """The same, each worker declaring one GPU (``--resources GPU=1``; a label here: the runs use the CPU)."""
    yield from start_cluster(tmp_path, "--resources", "GPU=1")


def pytest_collection_modifyitems(config, items):
    """Skip the tests marked ``gpu`` on a machine without CUDA (every other test runs on the CPU)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
