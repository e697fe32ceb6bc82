"""One writer at a time per lake (flair_lake/lock.py): real processes, started together, killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zarr

from flair_lake.config import SynthConfig
from flair_lake.errors import EXIT_BUSY, LakeBusyError
from flair_lake.lock import Holder, WriterLock, lock_path, writer
from flair_lake.synth import synthesize

REPO = Path(__file__).resolve().parents[1]
TREE = SynthConfig(domains=("D006_2020", "D004_2021"), zones_per_domain=1, patches_per_zone=4, patch_size=32,
                   max_dates=22)


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "flair_lake.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


@pytest.fixture()
def trees(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    synthesize(a, TREE)
    synthesize(b, SynthConfig(**{**TREE.__dict__, "domains": ("D033_2021",)}))
    return a, b


def patch_ids(lake: Path) -> list[int]:
    root = zarr.open_group(str(lake), mode="r")
    return sorted(int(i) for i, s in zip(root["patch_id"][:], root["status"][:]) if s == 1)


@pytest.mark.slow
def test_a_second_writer_is_refused_in_one_line_naming_the_holder(trees, tmp_path):
    lake = tmp_path / "lake.zarr"
    first, second = start("ingest", str(trees[0]), str(lake), "--workers", "1"), None
    deadline = time.monotonic() + 60
    while not Path(lock_path(str(lake))).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    second = start("ingest", str(trees[1]), str(lake), "--workers", "1")
    rc2, _, err2 = finish(second)
    rc1, _, err1 = finish(first)
    assert rc1 == 0, err1
    assert rc2 == EXIT_BUSY and err2.count("\n") == 1, err2
    assert f"is being written by ingest (host {socket.gethostname()}, pid {first.pid}" in err2
    assert "--wait" in err2
    assert not Path(lock_path(str(lake))).exists()  # released


@pytest.mark.slow
def test_writers_started_together_with_wait_both_land(trees, tmp_path):
    """Two ingests of different trees and a filter, started together with --wait: every patch lands once,
    every run is recorded, the view covers them all."""
    lake = tmp_path / "lake.zarr"
    procs = [start("ingest", str(trees[0]), str(lake), "--workers", "1", "--wait"),
             start("ingest", str(trees[1]), str(lake), "--workers", "1", "--wait")]
    results = [finish(p) for p in procs]
    assert [r[0] for r in results] == [0, 0], results
    rc, out, err = finish(start("filter", str(lake), "--workers", "1", "--wait"))
    assert rc == 0, err
    root = zarr.open_group(str(lake), mode="r")
    assert len(root.attrs["runs"]) == 3 and all(r["status"] == "complete" for r in root.attrs["runs"])
    assert len(patch_ids(lake)) == 12 == len(set(patch_ids(lake)))
    assert subprocess.run([sys.executable, "-m", "flair_lake.cli", "validate", str(lake)], env={
        **os.environ, "PYTHONPATH": str(REPO)}, capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_killed_holder_is_taken_over_and_the_run_resumes(trees, tmp_path):
    lake = tmp_path / "lake.zarr"
    proc = start("ingest", str(trees[0]), str(lake), "--workers", "1")
    deadline = time.monotonic() + 60
    while not (lake / "done").exists() and time.monotonic() < deadline:  # holding the lock, writing
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert Path(lock_path(str(lake))).exists()  # left behind by the killed holder
    rc, out, err = finish(start("ingest", str(trees[0]), str(lake), "--workers", "1"))
    assert rc == 0, err
    assert "took over the lock" in err and f"pid {proc.pid}" in err
    assert len(patch_ids(lake)) == 8
    assert not Path(lock_path(str(lake))).exists()


def test_leases(tmp_path):
    lake = str(tmp_path / "lake.zarr")
    holder = {"command": "filter", "host": "elsewhere", "pid": 1, "since": "2026-01-01T00:00:00+00:00",
              "token": "t"}
    live = Holder.parse(json.dumps({**holder, "expires": time.time() + 60}))
    gone = Holder.parse(json.dumps({**holder, "expires": time.time() - 1}))
    assert not live.dead() and gone.dead()  # another host: only its lease tells
    assert Holder.parse(b'{"command": "filt') is None  # a holder that died writing its document
    Path(lock_path(lake)).write_text(json.dumps({**holder, "expires": time.time() + 60}))
    with pytest.raises(LakeBusyError, match="filter .host elsewhere, pid 1"):
        WriterLock(lake, "ingest").acquire()
    Path(lock_path(lake)).write_text(json.dumps({**holder, "expires": time.time() - 1}))
    with writer(lake, "ingest") as lock:
        assert json.loads(Path(lock_path(lake)).read_text())["token"] == lock.token
    assert not Path(lock_path(lake)).exists()
    Path(lock_path(lake)).write_text('{"command": "ing')  # half written: taken over
    with writer(lake, "ingest"):
        pass


def test_a_holder_renews_its_lease_and_never_renews_a_lock_taken_from_it(tmp_path):
    lake = str(tmp_path / "lake.zarr")
    lock = WriterLock(lake, "ingest", lease=0.3)
    lock.acquire()
    first = json.loads(Path(lock_path(lake)).read_text())["expires"]
    time.sleep(0.5)
    doc = json.loads(Path(lock_path(lake)).read_text())
    assert doc["token"] == lock.token and doc["expires"] > first  # renewed: never taken over while it runs
    Path(lock_path(lake)).write_text(json.dumps({**doc, "token": "another", "expires": time.time() + 60}))
    time.sleep(0.3)
    assert json.loads(Path(lock_path(lake)).read_text())["token"] == "another"  # not overwritten
    lock.release()
    assert json.loads(Path(lock_path(lake)).read_text())["token"] == "another"  # nor removed


def test_side_files_of_killed_processes_are_swept(tmp_path):
    lake = str(tmp_path / "lake.zarr")
    left = [Path(lock_path(lake) + suffix) for suffix in (".new-1a2b", ".stale-3c4d", ".renew-99")]
    for path in left:
        path.write_text("{}")
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    fresh = Path(lock_path(lake) + ".new-fresh")
    fresh.write_text("{}")  # another process's, being linked right now: kept
    with writer(lake, "ingest"):
        assert not any(p.exists() for p in left) and fresh.exists()
