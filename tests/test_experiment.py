"""``flair-lake experiment``: variants x seeds trained and tabled; resume; failures; plans; Dask GPU resources."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import killed_on_call

from flair_lake.cli import main
from flair_lake.experiments.plan import TABLE3, TABLE5, load_plan

REPO = Path(__file__).resolve().parents[1]
QUICK = {"max_batches": 1, "batch_size": 4, "workers": 0}


@pytest.fixture()
def exp_lake(monthly_lake, tmp_path):
    """A private copy of the monthly lake (experiments build their views in it)."""
    path = tmp_path / "lake.zarr"
    shutil.copytree(monthly_lake, path)
    return str(path)


def write_plan(path: Path, variants: list[dict], name: str = "tiny") -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"name": name, "variants": variants}, allow_unicode=True))
    return path


TINY = [
    {"name": "U-Net", "model": "unet", "mtd": False, "aug": False, "train": QUICK},
    {"name": "U-T&T +FILT +AVG M +AUG", "model": "utt", "filt": True, "avg_m": True, "mtd": False, "aug": True,
     "paper": "56.9 ± 1.1", "train": QUICK},
]


def test_built_in_plans_are_the_papers_tables():
    assert [v.name for v in TABLE3.variants][:3] == ["UTAE", "UTAE +FILT +AVG M", "U-Net"]
    assert len(TABLE3.variants) == 10 and len(TABLE5.variants) == 6
    full = TABLE3.variants[-1]
    assert (full.model, full.filt, full.avg_m, full.mtd, full.aug, full.paper) == \
        ("utt", True, True, True, True, "56.9 ± 1.1")
    cfg = full.filter_config()
    assert (cfg.max_cover, cfg.min_prob, cfg.monthly) == (0.6, 50.0, True)  # FILT: 60 % cover at p >= 0.5
    bare = TABLE3.variants[4].filter_config()
    assert bare.min_prob == 101 and not bare.monthly  # no FILT: every date kept; no AVG M: the raw dates
    assert TABLE3.variants[2].filter_config() is None  # U-Net reads no Sentinel-2
    assert full.train_flags() == {"model": "utt", "metadata": True, "augment": "paper"}
    assert {v.model for v in TABLE5.variants} == {"utt", "utt-fpn", "utt-deeplabv3"}
    assert load_plan("table5") is TABLE5


def test_plan_names_become_file_names(tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", [{"model": "unet"}], name="a/b")
    with pytest.raises(Exception, match="names its report files"):
        load_plan(str(plan))


@pytest.mark.parametrize("variants, text", [
    ([{"model": "utt", "colour": "red"}], "unknown key(s) colour"),
    ([{"model": "segformer"}], "unknown model 'segformer'"),
    ([{"model": "utt", "filt": "yes"}], "filt must be true or false"),
    ([{"model": "unet", "train": {"momentum": 0.9}}], "unknown trainer flag(s) momentum"),
    ([{"model": "unet", "train": {"lr": -1}}], "--lr must be > 0"),
    ([{"name": "a", "model": "utt", "filt": True, "avg_m": True}, {"name": "a", "model": "unet"}],
     "variant names must differ"),
    ([{"model": "unet", "filt": True}], "filt do(es) not apply to model unet"),
    ([{"model": "utt", "filt": True}], "give avg_m"),
    ([{"model": "utt", "filt": True, "avg_m": True, "train": {"augment": "paper"}}], "unknown trainer flag(s) augment"),
])
def test_a_bad_plan_is_one_line(tmp_path, exp_lake, variants, text):
    plan = write_plan(tmp_path / "plan.yaml", variants)
    res = CliRunner().invoke(main, ["experiment", str(plan), "--lake", exp_lake, "--out", str(tmp_path / "exp")])
    assert res.exit_code == 2, res.output
    assert text in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "exp").exists()  # nothing started


def test_tables_are_the_runs_own_numbers(tmp_path, exp_lake):
    """2 variants x 2 seeds, one batch each: the tables' mean and std are those of the runs' own metrics
    files, the per-class table holds each model's best run, and the view the variant needs was built."""
    plan = write_plan(tmp_path / "plan.yaml", TINY)
    out = tmp_path / "exp"
    res = CliRunner().invoke(main, ["experiment", str(plan), "--lake", exp_lake, "--out", str(out), "--seeds", "2",
                                    "--epochs", "1"])
    assert res.exit_code == 0, res.output
    assert "4 run(s) trained, 0 already finished, 0 failed, of 4" in res.output
    assert "views built: cloud0.6-prob50-union-monthly-mean" in res.output
    with open(out / "tiny.csv", newline="") as fh:
        rows = {r["variant"]: r for r in csv.DictReader(fh)}
    for v in TINY:
        ious = [json.loads((out / "runs" / slug(v["name"]) / f"seed{k}" / "metrics_test.json").read_text())["miou"]
                for k in range(2)]
        row = rows[v["name"]]
        assert float(row["miou_mean"]) == pytest.approx(np.mean(ious), abs=1e-12)
        assert float(row["miou_std"]) == pytest.approx(np.std(ious, ddof=1), abs=1e-12)
        assert row["mIoU"] == f"{100 * np.mean(ious):.1f} ± {100 * np.std(ious, ddof=1):.1f}"
        assert row["runs"] == "2" and row["EP."] == "1"  # epochs counted from 1, as the paper's
    assert rows["U-T&T +FILT +AVG M +AUG"]["paper mIoU"] == "56.9 ± 1.1"
    assert rows["U-Net"]["INPUT"] == "aerial" and rows["U-Net"]["FILT."] == "-"
    md = (out / "tiny.md").read_text()
    assert "| variant | INPUT | FILT. | AVG M. | MTD | AUG | PARA. | EP. | mIoU | runs | paper EP. | paper mIoU |" in md
    per_class = (out / "tiny_per_class.csv").read_text().splitlines()
    assert len(per_class) == 3  # header, the best U-Net run, the best U-T&T run
    assert (out / "tiny_spread.png").stat().st_size > 1000
    config = json.loads((out / "runs" / "U-T-T-FILT-AVG-M-AUG" / "seed1" / "config.json").read_text())
    assert config["augment"] == "paper" and config["seed"] == 1
    again = CliRunner().invoke(main, ["experiment", str(plan), "--lake", exp_lake, "--out", str(out), "--seeds", "1",
                                      "--epochs", "1"])
    assert "0 run(s) trained, 2 already finished" in again.output and "views built: none" in again.output
    with open(out / "tiny.csv", newline="") as fh:  # seed 1's runs stay out of a 1-seed table
        assert all(r["runs"] == "1" for r in csv.DictReader(fh))
    TINY[0]["train"] = {**QUICK, "lr": 0.05}  # the U-Net variant changed: its runs are trained again
    try:
        write_plan(tmp_path / "plan.yaml", TINY)
        changed = CliRunner().invoke(main, ["experiment", str(plan), "--lake", exp_lake, "--out", str(out), "--seeds",
                                            "1", "--epochs", "1"])
    finally:
        TINY[0]["train"] = QUICK
    assert "U-Net seed 0: its folder held a run of other settings" in changed.output
    assert "1 run(s) trained, 1 already finished" in changed.output


def slug(name: str) -> str:
    from flair_lake.experiments.plan import Variant

    return Variant(name, "utt").slug


def test_a_failed_run_is_reported_and_the_others_go_on(tmp_path, exp_lake):
    bad = {"name": "broken", "model": "unet", "train": {**QUICK, "train_split": "D999_2020"}}
    plan = write_plan(tmp_path / "plan.yaml", [TINY[0], bad])
    res = CliRunner().invoke(main, ["experiment", str(plan), "--lake", exp_lake, "--out", str(tmp_path / "exp"),
                                    "--seeds", "1", "--epochs", "1"])
    assert res.exit_code == 3, res.output
    assert "failed: broken seed 0: unknown split or domain D999_2020" in res.output
    assert "1 run(s) trained, 0 already finished, 1 failed, of 2" in res.output
    assert (tmp_path / "exp" / "runs" / "broken" / "seed0" / "failed.json").exists()
    assert "| broken | aerial |" in (tmp_path / "exp" / "tiny.md").read_text()  # listed, with no runs


@pytest.mark.slow
def test_a_killed_experiment_resumes_without_redoing_finished_runs(tmp_path, exp_lake):
    plan = write_plan(tmp_path / "plan.yaml", TINY)
    out = tmp_path / "exp"
    args = ["experiment", str(plan), "--lake", exp_lake, "--out", str(out), "--seeds", "2", "--epochs", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run([*killed_on_call("pipelines.experiment", "run_one", 3), *args],
                            env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    finished = sorted(out.glob("runs/*/seed*/result.json"))
    assert len(finished) == 2
    stamps = {p: p.stat().st_mtime_ns for p in finished}
    res = subprocess.run([sys.executable, "-m", "flair_lake.cli", *args], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    assert "2 run(s) trained, 2 already finished, 0 failed, of 4" in res.stdout
    assert {p: p.stat().st_mtime_ns for p in finished} == stamps
    assert len(list(out.glob("runs/*/seed*/result.json"))) == 4


@pytest.mark.slow
def test_runs_go_one_per_gpu_to_a_dask_cluster(tmp_path, exp_lake, gpu_cluster):
    address, _ = gpu_cluster
    plan = write_plan(tmp_path / "plan.yaml", [TINY[0]])
    out = tmp_path / "exp"
    res = CliRunner().invoke(main, ["experiment", str(plan), "--lake", exp_lake, "--out", str(out), "--seeds", "4",
                                    "--epochs", "1", "--scheduler", address])
    assert res.exit_code == 0, res.output
    assert "2 Dask worker(s), 2 declaring a GPU resource: one run per GPU at a time" in res.output
    records = [json.loads(p.read_text()) for p in out.glob("runs/*/seed*/result.json")]
    assert len(records) == 4 and len({r["dask_worker"] for r in records}) == 2  # both workers took runs
