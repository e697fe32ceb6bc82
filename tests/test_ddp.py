"""DDP on CPU (gloo): ranks read disjoint samples and reshuffle per epoch; torchrun fit writes from rank 0 only."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ddp_lake(monthly_lake):
    return monthly_lake


def _rank(rank: int, world: int, lake: str, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    from flair_lake.loader import make_loader

    loader = make_loader(lake, split="all", batch_size=3, num_workers=0, distributed=True, seed=1, shuffle=True)
    seen = []
    for epoch in range(2):
        loader.batch_sampler.set_epoch(epoch)
        seen.append([int(i) for b in loader for i in b["patch_id"]])
    Path(out, f"rank{rank}.txt").write_text("\n".join(",".join(map(str, s)) for s in seen))
    torch.distributed.destroy_process_group()


def test_ranks_read_disjoint_samples_and_reshuffle(ddp_lake, tmp_path):
    mp.start_processes(_rank, args=(2, ddp_lake, 29517, str(tmp_path)), nprocs=2, start_method="spawn")
    epochs = [[list(map(int, line.split(","))) for line in (tmp_path / f"rank{r}.txt").read_text().splitlines()]
              for r in range(2)]
    for e in range(2):
        a, b = set(epochs[0][e]), set(epochs[1][e])
        assert not a & b and len(a | b) == 32  # 32 patches split evenly: disjoint, complete
    assert epochs[0][0] != epochs[0][1]  # reshuffled by set_epoch


@pytest.mark.slow
def test_torchrun_fit_writes_from_rank_zero_and_learns(ddp_lake, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29518",
           str(REPO / "train" / "fit.py"), "--lake", ddp_lake, "--model", "unet", "--epochs", "3", "--batch-size",
           "4", "--workers", "0", "--optimizer", "adamw", "--lr", "0.003", "--out", str(out), "--no-eval",
           "--max-batches", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("model unet:") == 1  # one process speaks
    assert "2 process(es)" in res.stdout
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]  # one row per epoch: rank 0 alone writes
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "last.pt", "log.csv"]
