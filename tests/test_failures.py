"""Every failure is one line: bad arguments, bad lakes, full disks, read-only and forbidden folders, signals.

Through the real command in a subprocess: the exact exit code (flair_lake.errors.EXIT_CODES), and stderr is one
line ``error: ...`` without -v. Full disks and read-only folders are real: a small tmpfs mounted in a private
user and mount namespace (``unshare``), skipped where the machine does not allow one.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zarr

from flair_lake.cli.failures import describe
from flair_lake.errors import (
    EXIT_ERROR,
    EXIT_INTERNAL,
    EXIT_SYSTEM,
    EXIT_USAGE,
    Interrupted,
    LakeStateError,
)

REPO = Path(__file__).resolve().parents[1]
VIEW = "cloud0.6-prob60-union-monthly-mean"


def cli(*args: str, prefix: tuple[str, ...] = (), cwd: Path | None = None, timeout: float = 240):
    """Run ``flair-lake ARGS`` (after ``prefix``, e.g. unshare) and return the CompletedProcess."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FLAIR_LAKE", None)
    return subprocess.run([*prefix, sys.executable, "-m", "flair_lake.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def assert_one_line(res, code: int, *needles: str) -> str:
    """Assert the exit code and that stderr is one ``error:`` line holding every needle; return the line."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == code, (res.returncode, res.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --- the mapping itself --------------------------------------------------------------------------------------
class KilledWorker(Exception):
    """Named as distributed's: a worker died running the task (matched by name, distributed not imported)."""


@pytest.mark.parametrize(("exc", "code", "needle"), [
    (OSError(errno.ENOSPC, "No space left on device", "lake.zarr/aerial/c/0"), EXIT_SYSTEM, "no space left"),
    (RuntimeError("No space left on device (os error 28)"), EXIT_SYSTEM, "no space left"),
    (RuntimeError("write failed (os error 30)"), EXIT_SYSTEM, "read-only file system"),
    (PermissionError(errno.EACCES, "Permission denied", "x"), EXIT_SYSTEM, "permission denied on lake.zarr (x)"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "a/b"), EXIT_SYSTEM, "not a folder"),
    (KilledWorker("task"), EXIT_SYSTEM, "Dask worker died"),
    (MemoryError(), EXIT_SYSTEM, "out of memory"),
    (ValueError("boom"), EXIT_INTERNAL, "internal error: ValueError: boom"),
    (KeyboardInterrupt(), 130, "Ctrl-C"),
    (Interrupted(signal.SIGTERM, landed="3 of 4 shards landed"), 143, "3 of 4 shards landed"),
    (LakeStateError("view x is incomplete"), EXIT_ERROR, "view x is incomplete"),
])
def test_every_failure_has_one_line_and_a_code(exc, code, needle):
    line, got = describe(exc, "lake.zarr")
    assert got == code and needle in line and "\n" not in line


def test_an_error_raised_from_an_os_error_is_that_os_error():
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system", "views/x")
        except OSError as inner:
            raise RuntimeError("store write failed") from inner
    except RuntimeError as exc:
        line, code = describe(exc, "lake.zarr")
    assert code == EXIT_SYSTEM and "lake.zarr (views/x) is on a read-only file system" in line


# --- bad arguments and bad lakes: one line, before any work ---------------------------------------------------
@pytest.fixture(scope="module")
def damaged(lake, tmp_path_factory):
    """Lakes whose root records a bad schema_version, and a plain file."""
    base = tmp_path_factory.mktemp("damaged")
    out = {}
    for name, value in (("abc", "abc"), ("null", None)):
        path = base / f"{name}.zarr"
        shutil.copytree(lake, path)
        doc = json.loads((path / "zarr.json").read_text())
        doc["attributes"]["schema_version"] = value
        (path / "zarr.json").write_text(json.dumps(doc))
        out[name] = str(path)
    (base / "afile.txt").write_text("not a lake")
    zarr.open_group(str(base / "foreign.zarr"), mode="w", attributes={"title": "someone else's"})
    out["foreign"] = str(base / "foreign.zarr")
    out["file"] = str(base / "afile.txt")
    return out


ARGUMENT_CASES = [  # (args with {lake} {file} {abc} {null}, exit code, needles)
    (["filter", "{file}"], EXIT_ERROR, ["is a file, not a lake"]),
    (["info", "{file}"], EXIT_ERROR, ["is a file, not a lake"]),
    (["validate", "{file}"], EXIT_ERROR, ["is a file, not a lake"]),
    (["train", "--lake", "{file}", "--epochs", "1"], EXIT_ERROR, ["is a file, not a lake"]),
    (["info", "{abc}"], EXIT_ERROR, ["schema_version 'abc'"]),
    (["info", "{foreign}"], EXIT_ERROR, ["is a Zarr group but not a flair-lake"]),
    (["ingest", "{raw}", "{foreign}"], EXIT_ERROR, ["is a Zarr group but not a flair-lake"]),
    (["filter", "{null}"], EXIT_ERROR, ["schema_version None"]),
    (["validate", "{null}"], EXIT_ERROR, ["schema_version None"]),
    (["train", "--lake", "{lake}", "--workers", "-1"], EXIT_USAGE, ["--workers", "-1"]),
    (["train", "--lake", "{lake}", "--epochs", "0"], EXIT_USAGE, ["--epochs"]),
    (["train", "--lake", "{lake}", "--out", "{file}"], EXIT_USAGE, ["--out", "is a file, not a folder"]),
    (["evaluate", "--ckpt", "x.pt", "--lake", "{lake}", "--workers", "-2"], EXIT_USAGE, ["--workers"]),
    (["evaluate", "--ckpt", "x.pt", "--lake", "{lake}", "--batch-size", "0"], EXIT_USAGE, ["--batch-size"]),
    (["evaluate", "--ckpt", "x.pt", "--lake", "{lake}", "--predict", "{file}"], EXIT_USAGE, ["--predict"]),
    (["predict", "--ckpt", "x.pt", "--lake", "{lake}", "--out", "/proc/flair-lake/p"], EXIT_USAGE, ["not writable"]),
    (["stats", "{lake}", "-o", "{file}/sub"], EXIT_USAGE, ["is a file, not a folder"]),
    (["filter", "{lake}", "--name", ".."], EXIT_USAGE, ["view name '..' is not allowed"]),
    (["filter", "{lake}", "--name", "zarr.json"], EXIT_USAGE, ["view name 'zarr.json'"]),
    (["filter", "{lake}", "--name", "a/b"], EXIT_USAGE, ["view name 'a/b'"]),
    (["filter", "{lake}", "--workers", "0"], EXIT_USAGE, ["--workers"]),
    (["ingest", "{file}", "{file}"], EXIT_USAGE, ["'RAW'", "is a file"]),
    (["info", "{lake}", "--no-such-option"], EXIT_USAGE, ["No such option"]),
    (["evaluate", "--ckpt", "{file}", "--lake", "{lake}"], EXIT_ERROR, ["cannot read checkpoint"]),
]


@pytest.mark.parametrize(("args", "code", "needles"), ARGUMENT_CASES, ids=lambda v: " ".join(v)
                         if isinstance(v, list) and v and isinstance(v[0], str) and v[0][0] != "-" and "{" not in v[0]
                         else None)
def test_bad_arguments_and_lakes_are_one_line(raw_tree, lake, damaged, args, code, needles):
    res = cli(*[a.format(raw=raw_tree, lake=lake, **damaged) for a in args])
    assert_one_line(res, code, *needles)


def test_verbose_shows_the_traceback(damaged):
    res = cli("-v", "info", damaged["abc"])
    assert res.returncode != 0 and "Traceback" in res.stderr
    res = cli("info", damaged["abc"], "-v")  # -v after the command too
    assert "Traceback" in res.stderr


def test_the_train_scripts_fail_in_one_line_too(lake):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, str(REPO / "train" / "fit.py"), "--lake", lake, "--batch-size", "0"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert_one_line(res, EXIT_USAGE, "--batch-size")


def test_a_stale_view_says_how_to_extend_it(monthly_lake, raw_tree, tmp_path):
    """fit and evaluate on a view built before an append: one line naming the filter command that extends it."""
    from flair_lake.config import IngestConfig, SynthConfig
    from flair_lake.synth import synthesize
    from pipelines.ingest import ingest

    lake = tmp_path / "lake.zarr"
    shutil.copytree(monthly_lake, lake)
    more = tmp_path / "more"
    synthesize(more, SynthConfig.from_preset("tiny", domains=("D013_2020",), patches_per_zone=4, max_dates=30))
    assert ingest(more, str(lake), IngestConfig(workers=1, patches_per_shard=8)).exit_code == 0
    line = assert_one_line(cli("train", "--lake", str(lake), "--view", VIEW, "--epochs", "1", "--workers", "0"),
                           EXIT_ERROR, f"view {VIEW!r} covers the first", "extend it with `flair-lake filter")
    extend = line.split("`")[1].split()[1:]
    assert cli(*extend, "--workers", "1").returncode == 0
    res = cli("evaluate", "--ckpt", "none.pt", "--lake", str(lake), "--view", VIEW)
    assert "covers the first" not in res.stderr  # now only the missing checkpoint is wrong


# --- the system refuses: full disk, read-only, permission denied ------------------------------------------------
def _unshare_works(*flags: str, script: str = "true") -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", *flags, "sh", "-c", script], capture_output=True).returncode == 0


def _tmpfs_works() -> bool:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return _unshare_works(*TMPFS_FLAGS, script=f'mount -t tmpfs -o size=1m tmpfs "{d}" && touch "{d}/x"')


TMPFS_FLAGS = ("--user", "--map-root-user", "--mount")
OTHER_USER_FLAGS = ("--user", "--map-user=65534", "--map-group=65534")
needs_tmpfs = pytest.mark.skipif(not _tmpfs_works(),
                                 reason="no private mount namespace here (unshare --user --mount refused)")
needs_other_user = pytest.mark.skipif(not _unshare_works(*OTHER_USER_FLAGS),
                                      reason="no user namespace here (unshare --user refused)")


def in_tmpfs(mount: Path, size: str, setup: str = "true") -> tuple[str, ...]:
    """Return the prefix that runs a command with a ``size`` tmpfs at ``mount``, after ``setup`` (sh)."""
    mount.mkdir(exist_ok=True)
    return ("unshare", *TMPFS_FLAGS, "sh", "-c",
            f'mount -t tmpfs -o size={size} tmpfs "{mount}" && {setup} && exec "$@"', "sh")


@needs_tmpfs
def test_ingest_on_a_full_disk(raw_tree, tmp_path):
    fs = tmp_path / "fs"
    res = cli("ingest", str(raw_tree), str(fs / "lake.zarr"), "--workers", "2", prefix=in_tmpfs(fs, "3m"))
    assert_one_line(res, EXIT_SYSTEM, "no space left on the disk of", "run the same command again")


@needs_tmpfs
def test_filter_on_a_full_disk(lake, tmp_path):
    fs = tmp_path / "fs"
    kib = sum(p.stat().st_size for p in Path(lake).rglob("*") if p.is_file()) // 1024
    setup = f'cp -r "{lake}" "{fs}/lake.zarr"'
    res = cli("filter", str(fs / "lake.zarr"), "--monthly", "--workers", "2",
              prefix=in_tmpfs(fs, f"{kib + 2048}k", setup))
    assert_one_line(res, EXIT_SYSTEM, "no space left on the disk of")


@needs_tmpfs
def test_train_on_a_full_disk(monthly_lake, tmp_path):
    fs = tmp_path / "fs"
    res = cli("train", "--lake", monthly_lake, "--out", str(fs / "run"), "--epochs", "1", "--max-batches", "1",
              "--workers", "0", "--no-eval", prefix=in_tmpfs(fs, "1m"))
    assert_one_line(res, EXIT_SYSTEM, "no space left on the disk of", "best.pt")
    assert "unexpected pos" not in res.stderr


@needs_tmpfs
@pytest.mark.parametrize("args", [["filter", "{lake}", "--name", "other", "--cloud", "0.3"],
                                  ["filter", "{lake}", "--name", VIEW, "--cloud", "0.3", "--overwrite"]])
def test_filter_on_a_read_only_lake(monthly_lake, tmp_path, args):
    fs = tmp_path / "fs"
    setup = f'cp -r "{monthly_lake}" "{fs}/lake.zarr" && mount -o remount,ro "{fs}"'
    res = cli(*[a.format(lake=fs / "lake.zarr") for a in args], "--workers", "1", prefix=in_tmpfs(fs, "64m", setup))
    assert_one_line(res, EXIT_SYSTEM, "read-only file system")


@needs_tmpfs
def test_ingest_into_a_read_only_folder(raw_tree, tmp_path):
    fs = tmp_path / "fs"
    res = cli("ingest", str(raw_tree), str(fs / "lake.zarr"), prefix=in_tmpfs(fs, "1m", f'mount -o remount,ro "{fs}"'))
    assert_one_line(res, EXIT_USAGE, "is not writable (Read-only file system)")


@needs_other_user
def test_filter_on_a_write_protected_lake(lake, tmp_path):
    path = tmp_path / "lake.zarr"
    shutil.copytree(lake, path)
    for p in [path, *path.rglob("*")]:
        p.chmod(p.stat().st_mode & 0o555)
    try:
        res = cli("filter", str(path), "--workers", "1", prefix=("unshare", *OTHER_USER_FLAGS))
        assert_one_line(res, EXIT_SYSTEM, "permission denied on")
    finally:
        for p in [path, *path.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)


# --- signals: Ctrl-C to the process group, SIGTERM ---------------------------------------------------------------
def _signal_when(cmd: list[str], ready, sig: int, timeout: float = 120) -> subprocess.CompletedProcess:
    """Start ``flair-lake CMD`` in its own process group, send ``sig`` to the group once ``ready()``, wait."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "flair_lake.cli", *cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_ingest_says_what_landed_and_resumes(raw_tree, tmp_path, sig):
    lake = tmp_path / "lake.zarr"
    cmd = ["ingest", str(raw_tree), str(lake), "--workers", "2", "--patches-per-shard", "1"]
    for _ in range(3):  # a run that ends before the signal lands (a fast machine) is tried again, afresh
        shutil.rmtree(lake, ignore_errors=True)
        res = _signal_when(cmd, lambda: any((lake / "done").glob("s*")), sig)
        if res.returncode != 0:
            break
    line = assert_one_line(res, 128 + sig, "shard(s)", "landed in", "run the same command again")
    assert ("Ctrl-C" in line) == (sig == signal.SIGINT)
    again = cli(*cmd)
    assert again.returncode == 0, again.stderr
    assert "resumed 1 interrupted run(s)" in again.stdout
    assert cli("validate", str(lake)).returncode == 0
    run = json.loads(cli("info", str(lake), "--json").stdout)["runs"][0]  # the resumed run's record is whole
    assert run["status"] == "complete" and run["seconds"] > 0 and run["raw_bytes"] > 0, run


@pytest.mark.slow
def test_interrupted_filter_says_what_landed_and_resumes(lake, tmp_path):
    path = tmp_path / "lake.zarr"
    cmd = ["filter", str(path), "--monthly", "--workers", "2"]
    for _ in range(3):  # a run that ends before the signal lands (a fast machine) is tried again, afresh
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(lake, path)
        res = _signal_when(cmd, lambda: any((path / "views" / VIEW / "done").glob("s*")), signal.SIGINT)
        if res.returncode != 0:
            break
    assert_one_line(res, 130, "of view", "landed in", "run the same command again")
    again = cli(*cmd)
    assert again.returncode == 0 and "already complete" in again.stdout, again.stderr


def test_readme_lists_every_exit_code():
    from flair_lake.errors import EXIT_CODES

    text = (REPO / "README.md").read_text()
    table = text.split("| exit code | meaning |")[1].split("\n\n")[0]
    rows = {int(line.split("|")[1]): line.split("|")[2].strip() for line in table.splitlines()[2:]}
    assert rows == EXIT_CODES


# --- odd inputs: quarantined with their reason, or accepted with a warning; never a traceback -------------------
def _odd_tree(tmp_path: Path) -> tuple[Path, dict[int, str]]:
    """A small tree with odd values: three bad centroids, a non-UTF-8 product line, a twice-acquired date, mask
    values above 100. Return the tree and the quarantined ids with a piece of their reason."""
    import numpy as np

    from flair_lake.config import SynthConfig
    from flair_lake.raw import names
    from flair_lake.synth import synthesize

    raw = tmp_path / "raw"
    synthesize(raw, SynthConfig(domains=("D006_2020", "D004_2021", "D033_2021"), zones_per_domain=1,
                                patches_per_zone=4, patch_size=32, max_dates=22))
    zone_ids = {names.parse_id(p.name) for p in raw.glob("flair_*aerial_*/D004_2021/*/img/*.tif")}
    cents = json.loads((raw / names.CENTROIDS_JSON).read_text())
    ids = sorted(names.parse_id(k) for k in cents if names.parse_id(k) not in zone_ids)
    odd = {ids[0]: [float("nan"), 20], ids[1]: ["abc", 20], ids[2]: [None, 20]}
    for pid, value in odd.items():
        cents[names.img_name(pid)] = value
    (raw / names.CENTROIDS_JSON).write_text(json.dumps(cents))
    sens = sorted(raw.glob("flair_*sen_*/D*/Z*/sen"))
    products = next(sens[0].glob("*_products.txt"))  # D004: its zone is quarantined
    lines = products.read_bytes().splitlines()
    lines[1] = b"\xff\xfe" + lines[1]
    products.write_bytes(b"\n".join(lines) + b"\n")
    products = next(sens[1].glob("*_products.txt"))  # D006: the same date twice (kept, with a warning)
    lines = products.read_text().splitlines()
    lines[4] = lines[3]
    products.write_text("\n".join(lines) + "\n")
    masks_file = next(sens[2].glob("*_masks.npy"))  # D033: probabilities above 100 (kept, with a warning)
    masks = np.load(masks_file)
    masks[0, 1, :2, :2] = 200
    np.save(masks_file, masks)
    bad = {pid: "not [row, col] in whole pixels" for pid in odd}
    bad.update({pid: "is not UTF-8 text" for pid in zone_ids})
    return raw, bad


def test_odd_inputs_are_quarantined_or_warned_through_the_command(tmp_path):
    from flair_lake.raw import names

    raw, bad = _odd_tree(tmp_path)
    res = cli("ingest", str(raw), str(tmp_path / "lake.zarr"), "--workers", "1")
    assert res.returncode == 3, res.stderr
    assert res.stderr.strip() == "", res.stderr
    for pid, why in bad.items():
        line = next(ln for ln in res.stdout.splitlines() if ln.strip().startswith(f"{names.metadata_key(pid)}:"))
        assert why in line, line
    warnings = [ln for ln in res.stdout.splitlines() if ln.startswith("warning: ")]
    assert any("appear twice" in w and "D006_2020" in w for w in warnings), res.stdout
    assert any("above 100" in w and "D033_2021" in w and "4 mask value(s)" in w for w in warnings), res.stdout


@needs_other_user
def test_a_file_made_readable_again_is_retried(tmp_path):
    """An image nobody may read is quarantined; chmod (content unchanged) makes the next ingest retry it."""
    from flair_lake.config import SynthConfig
    from flair_lake.synth import synthesize

    raw, lake = tmp_path / "raw", tmp_path / "lake.zarr"
    synthesize(raw, SynthConfig(domains=("D006_2020",), zones_per_domain=1, patches_per_zone=4, patch_size=32,
                                max_dates=22))
    img = sorted(raw.glob("flair_*aerial_*/D*/Z*/img/IMG_*.tif"))[-1]
    img.chmod(0)
    try:
        res = cli("ingest", str(raw), str(lake), "--workers", "1", prefix=("unshare", *OTHER_USER_FLAGS))
        assert res.returncode == 3 and img.name in res.stdout, (res.stdout, res.stderr)
    finally:
        img.chmod(0o644)
    res = cli("ingest", str(raw), str(lake), "--workers", "1", prefix=("unshare", *OTHER_USER_FLAGS))
    assert res.returncode == 0 and "retried 1 quarantined patch(es)" in res.stdout, (res.stdout, res.stderr)
    assert cli("validate", str(lake)).returncode == 0
