"""SIGKILL at exact moments of an ingest, then the same command: the lake ends as an uninterrupted one.

A helper process wraps one function of the coordinator and kills itself (SIGKILL, no clean-up of any kind) on
its N-th call, then runs the real command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import killed_on_call

from flair_lake.config import SynthConfig
from flair_lake.synth import synthesize

pytestmark = pytest.mark.slow  # real processes killed and run again: about 10-60 s each

REPO = Path(__file__).resolve().parents[1]
TREE = SynthConfig(domains=("D006_2020", "D004_2021"), zones_per_domain=1, patches_per_zone=4, patch_size=32,
                   max_dates=22)
def run(*args: str, kill: tuple[str, str, int] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [*killed_on_call(*kill), *args] if kill else \
        [sys.executable, "-m", "flair_lake.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def content(lake: Path) -> dict:
    """What a reader sees of a lake: its landed patches with their pixels, and its complete runs."""
    root = zarr.open_group(str(lake), mode="r")
    ok = np.flatnonzero(root["status"][:] == 1)
    ids = root["patch_id"][:][ok]
    order = np.argsort(ids)
    runs = root.attrs["runs"]
    return {"ids": ids[order].tolist(), "aerial": root["aerial"][:][ok][order].tobytes(),
            "label": root["label"][:][ok][order].tobytes(), "runs": [r["status"] for r in runs],
            "rows": sorted(tuple(r["rows"]) for r in runs)}


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("trees")
    synthesize(base / "a", TREE)
    synthesize(base / "b", SynthConfig(**{**TREE.__dict__, "domains": ("D033_2021",)}))
    return base / "a", base / "b"


@pytest.fixture(scope="module")
def reference(trees, tmp_path_factory):
    """The lake of an uninterrupted ingest of tree a, then tree b."""
    lake = tmp_path_factory.mktemp("ref") / "lake.zarr"
    for tree in trees:
        assert run("ingest", str(tree), str(lake), "--workers", "1").returncode == 0
    return content(lake)


# (tree whose ingest is killed, module, function, n-th call in that ingest): the moment
KILLS = [
    (0, "flair_lake.lake", "finish_creation", 1),  # the root metadata is written, the arrays not yet
    (0, "flair_lake.zarr_compat", "create_arrays", 1),  # the same, inside the creation
    (0, "flair_lake.lake", "grow", 1),  # the lake exists; the first run's rows are not written
    (0, "flair_lake.lake", "update_run", 1),  # the first run's rows are written, its record not yet
    (0, "flair_lake.lake", "update_run", 2),  # every shard written, the run not yet recorded complete
    (1, "flair_lake.lake", "grow", 1),  # appending tree b: its rows not written
    (1, "flair_lake.lake", "update_run", 1),  # appending tree b: its rows written, its record not yet
]


@pytest.mark.parametrize("kill", KILLS, ids=lambda k: f"tree{k[0]}-{k[2]}#{k[3]}")
def test_a_kill_then_the_same_commands_give_the_uninterrupted_lake(trees, reference, tmp_path, kill):
    lake = tmp_path / "lake.zarr"
    killed, where = kill[0], kill[1:]
    for tree in trees[:killed]:
        assert run("ingest", str(tree), str(lake), "--workers", "1").returncode == 0
    res = run("ingest", str(trees[killed]), str(lake), "--workers", "1", kill=where)
    assert res.returncode == -9, res.stderr
    for tree in trees:  # the same commands as the reference's, run again
        res = run("ingest", str(tree), str(lake), "--workers", "1")
        assert res.returncode == 0, res.stderr
    assert content(lake) == reference
    assert run("validate", str(lake)).returncode == 0


VIEW = "cloud0.6-prob60-union-monthly-mean"


def view_content(lake: Path) -> dict:
    root = zarr.open_group(str(lake), mode="r")
    vg = root[f"views/{VIEW}"]
    return {"complete": vg.attrs["complete"], "latest": root["views"].attrs["latest"],
            "runs": [r["status"] for r in root.attrs["runs"] if r.get("command") == "filter"][-1:],
            **{name: vg[name][:].tobytes() for name in ("keep", "n_dates", "monthly", "month_count")}}


@pytest.fixture(scope="module")
def filtered(trees, tmp_path_factory):
    """A lake of tree a, and the same lake with the uninterrupted monthly view."""
    base = tmp_path_factory.mktemp("filtered")
    assert run("ingest", str(trees[0]), str(base / "lake.zarr"), "--workers", "1").returncode == 0
    import shutil

    shutil.copytree(base / "lake.zarr", base / "ref.zarr")
    assert run("filter", str(base / "ref.zarr"), "--monthly", "--workers", "1").returncode == 0
    return base / "lake.zarr", view_content(base / "ref.zarr")


@pytest.mark.parametrize("kill", [
    ("flair_lake.zarr_compat", "create_arrays", 1),  # the view's group is created, its arrays not
    ("flair_lake.lake", "update_run", 2),  # every shard filtered, the run not yet recorded complete
    ("pipelines.filter", "build_report", 1),  # the same, before the report
], ids=lambda k: f"{k[1]}#{k[2]}")
def test_a_killed_filter_then_the_same_command_gives_the_uninterrupted_view(filtered, tmp_path, kill):
    import shutil

    lake = tmp_path / "lake.zarr"
    shutil.copytree(filtered[0], lake)
    res = run("filter", str(lake), "--monthly", "--workers", "1", kill=kill)
    assert res.returncode == -9, res.stderr
    res = run("filter", str(lake), "--monthly", "--workers", "1")
    assert res.returncode == 0, res.stderr
    assert view_content(lake) == filtered[1]
    assert run("validate", str(lake)).returncode == 0


def test_a_training_run_killed_between_its_checkpoints_resumes_consistently(monthly_lake, tmp_path):
    """SIGKILL at each checkpoint write of a 3-epoch run, then --resume: best.pt and last.pt agree on the best
    epoch, best.pt holds that epoch's weights, and log.csv lists each epoch once."""
    import csv

    import torch

    args = ["train", "--lake", monthly_lake, "--model", "unet", "--epochs", "3", "--batch-size", "4", "--workers", "0",
            "--max-batches", "1", "--no-eval"]
    for nth in (1, 2, 3):
        out = tmp_path / f"run{nth}"
        res = run(*args, "--out", str(out), kill=("flair_lake.training.loop", "_atomic_save", nth))
        assert res.returncode == -9, res.stderr
        res = run(*args, "--out", str(out), "--resume")
        assert res.returncode == 0, res.stderr
        with open(out / "log.csv", newline="") as fh:
            assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [0, 1, 2]
        best = torch.load(out / "best.pt", weights_only=False)
        last = torch.load(out / "last.pt", weights_only=False)
        assert last["state"]["epoch"] == 3
        assert best["state"]["best_epoch"] == last["state"]["best_epoch"] == best["state"]["epoch"] - 1


@pytest.mark.parametrize("kill", [
    ("flair_lake.zarr_compat", "create_arrays", 1),  # the new generation's group is created, its arrays not
    ("pipelines.filter", "build_report", 1),  # the new generation is filtered, not yet complete
    ("pipelines.filter", "switch", 1),  # complete, not yet current
], ids=lambda k: f"{k[1]}#{k[2]}")
def test_a_killed_overwrite_then_the_same_command_gives_the_uninterrupted_one(filtered, tmp_path, kill):
    import shutil

    args = ["filter", "--monthly", "--cloud", "0.3", "--name", VIEW, "--overwrite", "--workers", "1"]
    reference, lake = tmp_path / "ref.zarr", tmp_path / "lake.zarr"
    for path in (reference, lake):
        shutil.copytree(filtered[0], path)
        assert run("filter", str(path), "--monthly", "--workers", "1").returncode == 0
    assert run(args[0], str(reference), *args[1:]).returncode == 0
    res = run(args[0], str(lake), *args[1:], kill=kill)
    assert res.returncode == -9, res.stderr
    root = zarr.open_group(str(lake), mode="r")
    assert root["views"].attrs["current"][VIEW] == VIEW  # readers still get the first generation
    res = run(args[0], str(lake), *args[1:])
    assert res.returncode == 0, res.stderr
    current = {str(p): zarr.open_group(str(p), mode="r")["views"].attrs["current"][VIEW] for p in (lake, reference)}
    assert current[str(lake)] == current[str(reference)] == f"{VIEW}~2"
    for name in ("keep", "n_dates", "monthly", "month_count"):
        a = zarr.open_group(str(lake), mode="r")[f"views/{VIEW}~2/{name}"][:]
        b = zarr.open_group(str(reference), mode="r")[f"views/{VIEW}~2/{name}"][:]
        np.testing.assert_array_equal(a, b)
    assert run("validate", str(lake)).returncode == 0
