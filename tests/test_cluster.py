"""A real Dask cluster on loopback: `dask scheduler` and two `dask worker` processes."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from flair_lake.cli import main
from flair_lake.config import FilterConfig, IngestConfig, SynthConfig
from flair_lake.errors import EXIT_SYSTEM
from flair_lake.synth import synthesize
from pipelines.filter import run_filter
from pipelines.ingest import ingest

BIN = Path(sys.executable).parent


def _arrays(path):
    root = zarr.open_group(path, mode="r")
    out = {k: root[k][:] for k in ("aerial", "label", "status", "patch_id", "transform")}
    for name, g in root["sentinel"].groups():
        out[name] = g["data"][:]
    for name, g in root["views"].groups():
        for k, a in g.arrays():
            out[f"{name}/{k}"] = a[:]
    return out


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("clusterraw") / "raw"
    synthesize(root, SynthConfig(domains=("D006_2020", "D004_2021"), zones_per_domain=2, patches_per_zone=9,
                                 patch_size=64, max_dates=24))
    return root


@pytest.mark.slow
def test_real_cluster_gives_the_same_lake_and_survives_a_killed_worker(cluster, small_tree, tmp_path):
    address, workers = cluster
    local = str(tmp_path / "local.zarr")
    ingest(small_tree, local, IngestConfig(workers=1, patches_per_shard=4))
    run_filter(local, FilterConfig(monthly=True), workers=1)

    remote = str(tmp_path / "remote.zarr")
    res = CliRunner().invoke(main, ["ingest", str(small_tree), remote, "--scheduler", address,
                                    "--patches-per-shard", "4"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["filter", remote, "--monthly", "--scheduler", address])
    assert res.exit_code == 0, res.output
    a, b = _arrays(local), _arrays(remote)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    # a worker killed mid-ingest: its tasks are re-run on the other worker, the lake is whole
    killed = str(tmp_path / "killed.zarr")
    result = {}
    t = threading.Thread(target=lambda: result.update(s=ingest(small_tree, killed, IngestConfig(
        scheduler=address, patches_per_shard=4), progress=False)))
    t.start()
    deadline = time.time() + 60
    while time.time() < deadline and not list((Path(killed) / "done").glob("s*")):
        time.sleep(0.005)
    os.killpg(workers[0].pid, signal.SIGKILL)
    t.join(timeout=120)
    assert result["s"].exit_code == 0
    c = _arrays(killed)
    for k in ("aerial", "label", "status", "patch_id", "transform"):
        np.testing.assert_array_equal(a[k], c[k], err_msg=k)


def test_unreachable_scheduler_fails_fast_and_writes_nothing(small_tree, tmp_path):
    lake = tmp_path / "lake.zarr"
    t0 = time.time()
    res = CliRunner().invoke(main, ["ingest", str(small_tree), str(lake), "--scheduler", "tcp://127.0.0.1:9"])
    assert res.exit_code == EXIT_SYSTEM and time.time() - t0 < 30
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not lake.exists()
