"""The trainer end to end on CPU through the real scripts: fit, resume, evaluate, georeferenced predictions."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import zarr
from click.testing import CliRunner

from flair_lake.cli import main
from flair_lake.config import TrainConfig
from flair_lake.training.loop import fit

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train_lake(monthly_lake):
    return monthly_lake


@pytest.mark.slow
def test_fit_resume_and_evaluate(train_lake, tmp_path):
    torch.set_num_threads(2)
    out = tmp_path / "run"
    cfg = TrainConfig(lake=train_lake, model="utt", epochs=2, batch_size=4, workers=0, out=str(out), lr=0.01,
                      max_batches=2)
    summary = fit(cfg, progress=False)
    assert summary["epochs_run"] == 2 and (out / "best.pt").exists() and (out / "last.pt").exists()
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(np.isfinite(float(r["val_loss"])) for r in rows)
    # resume: one more epoch continues from epoch 2, the log keeps the earlier rows
    resumed = fit(TrainConfig(**{**cfg.__dict__, "epochs": 3, "resume": True}), progress=False)
    assert resumed["epochs_run"] == 3
    assert [int(r["epoch"]) for r in csv.DictReader(open(out / "log.csv"))] == [0, 1, 2]
    # a checkpoint of another model is refused
    with pytest.raises(Exception, match="checkpoint"):
        fit(TrainConfig(**{**cfg.__dict__, "model": "unet", "resume": True, "epochs": 4}), progress=False)

    pred = tmp_path / "pred"
    res = CliRunner().invoke(main, ["evaluate", "--ckpt", str(out / "best.pt"), "--lake", train_lake, "--split",
                                    "test", "--predict", str(pred), "--workers", "0", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "official mIoU" in res.output
    metrics = json.loads((tmp_path / "metrics_test.json").read_text())
    assert metrics["patches"] == 8 and 0.0 <= metrics["miou"] <= 1.0
    assert (tmp_path / "confusion_test.png").stat().st_size > 1000
    from matplotlib.image import imread

    assert imread(tmp_path / "examples_test.png").shape[:2] == (1008, 1000)  # 4 rows of the worst patches
    root = zarr.open_group(train_lake, mode="r")
    files = sorted(pred.glob("PRED_*.tif"))
    assert len(files) == 8
    with rasterio.open(files[0]) as src:
        pid = int(files[0].stem.split("_")[1])
        row = int(np.flatnonzero(root["patch_id"][:] == pid)[0])
        assert src.crs.to_epsg() == 2154 and src.transform.to_gdal() == tuple(root["transform"][row])
        assert src.read(1).max() <= 12


@pytest.mark.slow
def test_loss_goes_down_and_resume_reproduces_the_next_epoch(train_lake, tmp_path):
    torch.set_num_threads(2)
    base = dict(lake=train_lake, model="unet", batch_size=4, workers=0, lr=3e-3, optimizer="adamw",
                max_batches=3, augment=True, seed=5)
    straight = fit(TrainConfig(**base, epochs=3, out=str(tmp_path / "a")), progress=False)
    log_a = list(csv.DictReader(open(tmp_path / "a" / "log.csv")))
    assert float(log_a[-1]["train_loss"]) < float(log_a[0]["train_loss"])
    fit(TrainConfig(**base, epochs=2, out=str(tmp_path / "b")), progress=False)
    fit(TrainConfig(**base, epochs=3, out=str(tmp_path / "b"), resume=True), progress=False)
    log_b = list(csv.DictReader(open(tmp_path / "b" / "log.csv")))
    assert [r["train_loss"] for r in log_b] == [r["train_loss"] for r in log_a]
    assert log_b[-1]["val_loss"] == log_a[-1]["val_loss"] and straight["epochs_run"] == 3


def test_predict_with_tta(train_lake, tmp_path):
    torch.set_num_threads(2)
    fit(TrainConfig(lake=train_lake, model="utt", epochs=1, batch_size=4, workers=0, out=str(tmp_path / "r"),
                    max_batches=1), progress=False)
    res = CliRunner().invoke(main, ["predict", "--ckpt", str(tmp_path / "r" / "best.pt"), "--lake", train_lake,
                                    "--split", "val", "--out", str(tmp_path / "p"), "--tta", "--probabilities",
                                    "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert "wrote 8 predictions" in res.output
    probs = sorted((tmp_path / "p").glob("PROB_*.tif"))
    assert len(probs) == 8
    with rasterio.open(probs[0]) as src:
        assert src.count == 13 and src.crs.to_epsg() == 2154
        total = src.read().astype(int).sum(0)
        assert abs(total.mean() - 255) < 8  # probabilities sum to 1


def test_train_errors(tmp_path, train_lake):
    res = CliRunner().invoke(main, ["train", "--lake", str(tmp_path / "none.zarr")])
    assert res.exit_code == 1 and "no lake at" in res.output
    res = CliRunner().invoke(main, ["train", "--lake", train_lake, "--view", "nope", "--workers", "0"])
    assert res.exit_code == 1 and "view 'nope' is not in" in res.output
    res = CliRunner().invoke(main, ["train", "--lake", train_lake, "--train-split", "D999_2020", "--workers", "0"])
    assert res.exit_code != 0 and "unknown split or domain" in res.output


def test_train_then_report(train_lake, tmp_path):
    """``flair-lake train`` trains, then evaluates best.pt on val and test; ``report`` charts the run."""
    torch.set_num_threads(2)
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--lake", train_lake, "--model", "unet", "--epochs", "1",
                                    "--max-batches", "1", "--batch-size", "4", "--workers", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    for split in ("val", "test"):
        assert f"{split}: official mIoU" in res.output and "(best epoch 0)" in res.output, res.output
        assert json.loads((out / f"metrics_{split}.json").read_text())["patches"] == 8
    res = CliRunner().invoke(main, ["report", str(out)])
    assert res.exit_code == 0, res.output
    assert f"wrote {out / 'curves.png'}" in res.output and "drawn by evaluation" in res.output


def test_scripts_run_the_commands():
    """train/*.py are the ``flair-lake`` commands, runnable from a checkout."""
    import importlib.util
    import subprocess

    from flair_lake.cli import train as commands

    for script, cmd in (("fit", commands.train), ("evaluate", commands.evaluate), ("predict", commands.predict),
                        ("report", commands.report)):
        spec = importlib.util.spec_from_file_location(f"_script_{script}", REPO / "train" / f"{script}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        assert mod.main is cmd and main.get_command(None, cmd.name) is cmd
    res = subprocess.run([sys.executable, str(REPO / "train" / "fit.py"), "--lake", "nowhere.zarr", "--model", "vit"],
                         capture_output=True, text=True, cwd=REPO / "tests", check=False)
    assert res.returncode == 2 and "'--model'" in res.stderr and "'vit' is not one of" in res.stderr, res.stderr


def test_examples_are_the_patches_of_lowest_pixel_accuracy():
    from flair_lake.training.evaluate import _keep_worst

    worst: list = []
    truth = torch.zeros(3, 4, 4, dtype=torch.long)
    for batch, wrong in enumerate(([0, 5, 16], [2, 9, 1])):  # wrong pixels of each patch (of 16)
        pred = torch.zeros_like(truth)
        for k, n in enumerate(wrong):
            pred[k].view(-1)[:n] = 1
        raw = {"patch_id": torch.tensor([10 * batch + k for k in range(3)]),
               "aerial": torch.zeros(3, 5, 4, 4, dtype=torch.uint8)}
        _keep_worst(worst, 3, raw, pred, truth)
    assert [e["patch_id"] for e in worst] == [2, 11, 1]  # 16, 9 and 5 wrong pixels
    assert [e["accuracy"] for e in worst] == [0.0, 7 / 16, 11 / 16]
    assert worst[0]["rgb"].shape == (4, 4, 3) and worst[0]["pred"].shape == (4, 4)


@pytest.mark.parametrize("case", ["missing", "empty", "text", "bare_state_dict", "other_dict", "other_options"])
def test_unusable_checkpoints_are_one_line_errors(tmp_path, case):
    from flair_lake.models import create_model
    from flair_lake.training.checkpoint import CheckpointError, load_weights, read_checkpoint

    model = create_model("unet")
    path = tmp_path / "ck.pt"
    ck = {"model_name": "unet", "model_kwargs": {"use_metadata": False}, "state_dict": model.state_dict()}
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("not a checkpoint\n")
    elif case == "bare_state_dict":
        torch.save(model.state_dict(), path)
    elif case == "other_dict":
        torch.save({"epoch": 3}, path)
    elif case == "other_options":  # a U-T&T checkpoint trained without metadata, loaded into one with it
        utt = create_model("utt")
        torch.save({**ck, "model_name": "utt", "state_dict": utt.state_dict()}, path)
        loaded = read_checkpoint(path)
        with pytest.raises(CheckpointError, match="does not fit model 'utt'.*--metadata"):
            load_weights(create_model("utt", use_metadata=True), loaded, path)
        return
    with pytest.raises(CheckpointError, match=str(path)) as info:
        read_checkpoint(path)
    assert "\n" not in str(info.value) and "train/fit.py" in str(info.value)


def test_report_names_keep_fits_own_reports():
    from flair_lake.training.evaluate import report_tag

    assert report_tag("test", "v1", "v1") == "test"  # fit's own evaluation
    assert report_tag("test", "v2", "v1") == "test-v2"  # another view: fit's files are not overwritten
    assert report_tag(["D006_2020", "D004_2021"], "v1", "v1") == "D006_2020+D004_2021"
