"""An S3-compatible object store on loopback (moto's server mode): ingest, filter, info, loader, trainer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from flair_lake import lake as lk  # noqa: E402
from flair_lake.cli import main  # noqa: E402
from flair_lake.config import TrainConfig  # noqa: E402
from flair_lake.errors import EXIT_SYSTEM  # noqa: E402
from flair_lake.loader import LakeDataset  # noqa: E402

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """Start moto's S3 server on loopback; yield its endpoint; the env points s3fs/boto at it."""
    port = _free_port()
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "flair", "AWS_SECRET_ACCESS_KEY": "flair-secret", "AWS_ENDPOINT_URL": endpoint,
           "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="flair")
    try:
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.slow
def test_the_whole_path_on_an_object_store(s3, raw_tree, lake, tmp_path):
    url = "s3://flair/lake.zarr"
    runner = CliRunner()
    res = runner.invoke(main, ["ingest", str(raw_tree), url, "--workers", "1"])
    assert res.exit_code == 0, res.output
    # the coordinator sees what the workers wrote (no stale listing): both kinds of band statistics are there
    assert set(lk.open_lake(url).attrs["band_stats"]) == {"aerial", "sentinel"}
    res = runner.invoke(main, ["filter", url, "--monthly", "--workers", "1"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["info", url])
    assert res.exit_code == 0 and "patches: 32 ingested" in res.output
    # the loader reads the same samples from the object store as from the local lake
    import shutil

    from flair_lake.config import FilterConfig
    from pipelines.filter import run_filter

    local = str(tmp_path / "local.zarr")
    shutil.copytree(lake, local)
    run_filter(local, FilterConfig(monthly=True), workers=1)
    a = LakeDataset(url, split="val").__getitems__([0, 3])
    b = LakeDataset(local, split="val").__getitems__([0, 3])
    for x, y in zip(a, b):
        for k in ("aerial", "label", "sentinel", "dates", "pad_mask", "patch_id"):
            assert torch.equal(x[k], y[k]), k
    # and the trainer trains from it
    from flair_lake.training.loop import fit

    torch.set_num_threads(2)
    summary = fit(TrainConfig(lake=url, model="unet", epochs=1, batch_size=4, workers=0, out=str(tmp_path / "run"),
                              max_batches=1), progress=False)
    assert summary["epochs_run"] == 1 and np.isfinite(summary["best_val_loss"])


def test_object_store_errors(s3, raw_tree, monkeypatch):
    runner = CliRunner()
    res = runner.invoke(main, ["info", "s3://no-such-bucket/lake.zarr"])
    assert res.exit_code == EXIT_SYSTEM and "does not exist" in res.output
    res = runner.invoke(main, ["ingest", str(raw_tree), "s3://no-such-bucket/lake.zarr", "--workers", "1"])
    assert res.exit_code == EXIT_SYSTEM and "does not exist" in res.output
    t0 = time.time()  # a dead endpoint (fsspec caches filesystems per options, so pass it as an option)
    res = runner.invoke(main, ["info", "s3://flair/lake.zarr", "--storage-option",
                               f"endpoint_url=http://127.0.0.1:{_free_port()}"])
    assert res.exit_code == EXIT_SYSTEM and "cannot reach the object store" in res.output and time.time() - t0 < 60


@pytest.mark.slow
def test_a_dead_endpoint_is_one_line_from_the_real_command(tmp_path):
    # the pending reads a dead store leaves behind must not print their own tracebacks at exit
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}", "AWS_ACCESS_KEY_ID": "k",
           "AWS_SECRET_ACCESS_KEY": "s"}
    for args in (["info", "s3://flair/lake.zarr"], ["filter", "s3://flair/lake.zarr", "--monthly"]):
        res = subprocess.run([str(BIN / "flair-lake"), *args], capture_output=True, text=True, env=env,
                             timeout=120, cwd=tmp_path)
        assert res.returncode == EXIT_SYSTEM
        assert res.stderr.count("\n") == 1 and "cannot reach the object store" in res.stderr, res.stderr[-2000:]


def test_one_writer_at_a_time_on_the_object_store(s3):
    """The lock on S3: an exclusive create (If-None-Match), refused while held, taken over by a conditional put
    (If-Match) once the lease has expired, released by its holder only."""
    import json

    from flair_lake.errors import LakeBusyError
    from flair_lake.lock import WriterLock, lock_path

    lake = "s3://flair/locked.zarr"
    first = WriterLock(lake, "ingest")
    first.acquire()
    with pytest.raises(LakeBusyError, match="is being written by ingest"):
        WriterLock(lake, "filter").acquire()
    first.release()
    import fsspec

    fs = fsspec.filesystem("s3")
    key = lock_path(lake).split("://")[1]
    gone = {"command": "filter", "host": "a-lost-machine", "pid": 1, "since": "2026-01-01T00:00:00+00:00",
            "token": "gone"}
    fs.pipe_file(key, json.dumps({**gone, "expires": time.time() + 60}).encode())
    with pytest.raises(LakeBusyError, match="host a-lost-machine"):  # its lease runs: it may still be writing
        WriterLock(lake, "ingest").acquire()
    fs.pipe_file(key, json.dumps({**gone, "expires": time.time() - 1}).encode())  # its lease ran out
    third = WriterLock(lake, "validate --repair")
    third.acquire()  # took over, by a put conditional on the ETag it read
    fs.invalidate_cache()
    assert json.loads(fs.cat_file(key))["token"] == third.token
    assert third.backend.renew(third._doc(), third.token)  # its own lock: renewed
    fs.pipe_file(key, json.dumps({**gone, "expires": time.time() + 60}).encode())  # taken from it
    assert not third.backend.renew(third._doc(), third.token)  # the If-Match refusal is recognised
    third.release()  # not its lock any more: left alone
    fs.invalidate_cache()
    assert json.loads(fs.cat_file(key))["token"] == "gone"
    fs.rm(key)
