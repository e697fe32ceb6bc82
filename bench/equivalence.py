"""Check that this checkout builds the same lake, views and loader batches as an earlier commit.

    python bench/equivalence.py --before REF [--raw DIR] [--preset bench|small|tiny] [--batches 3]

A refactor must not change what users get. This script exports REF (any git commit, tag or branch) to a
temporary folder and, for REF and for this checkout in turn, runs the commands a user types on the same raw tree:
``flair-lake ingest``, ``flair-lake filter --preset baseline`` and ``flair-lake filter --monthly`` (the default
monthly view), then reads the first batches of the train split of both views through ``make_loader``. Each side
runs in its own Python process with its own code first on ``sys.path``.

It then compares the two lakes file by file: every chunk and shard file byte for byte, every ``zarr.json`` as
JSON with the fields that record when and how long a run took left out (timestamps, durations, run ids), and
every loader batch array exactly. It prints one line per difference and exits 1 when there is any, 0 when the two
builds are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine  # noqa: E402

# Fields of the root, run and view attributes that say when or how long: they differ between any two builds.
VOLATILE = {"id", "created", "updated", "started", "finished", "resumed", "seconds", "startup_seconds", "lake_id",
            "current_since"}
VIEWS = ("baseline", None)  # None: the default monthly view, whatever its name

BUILD = r"""
import json, sys
import numpy as np
import flair_lake
from flair_lake.loader import make_loader

lake, out, batches = sys.argv[1], sys.argv[2], int(sys.argv[3])
print("code:", flair_lake.__file__, flush=True)
import zarr
views = sorted(zarr.open_group(lake, mode="r")["views"].group_keys())
arrays = {}
for view in views:
    loader = make_loader(lake, view=view, split="train", batch_size=10, num_workers=0, shuffle=False)
    for i, batch in enumerate(loader):
        if i == batches:
            break
        for key, value in batch.items():
            arrays[f"{view}/{i}/{key}"] = np.asarray(value)
np.savez(out, **arrays)
print(json.dumps({"views": views, "arrays": len(arrays)}))
"""


def run(code_root: Path, cwd: Path, *args: str) -> None:
    """Run ``flair-lake ARGS`` (or a Python snippet when args[0] == '-c') with ``code_root`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    if args[0] == "-c":
        cmd = [sys.executable, *args]
    else:
        cmd = [sys.executable, "-c", "import sys; from flair_lake.cli import main; sys.exit(main())", *args]
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"{' '.join(args[:2])} failed under {code_root} (exit {res.returncode}):\n{res.stdout}{res.stderr}")


def build(code_root: Path, raw: Path, folder: Path, batches: int) -> Path:
    """Build the lake, the two views and the first loader batches with the code at ``code_root``."""
    folder.mkdir(parents=True)
    run(code_root, folder, "ingest", str(raw), "lake.zarr", "--workers", "2")
    run(code_root, folder, "filter", "lake.zarr", "--preset", "baseline", "--workers", "2")
    run(code_root, folder, "filter", "lake.zarr", "--monthly", "--workers", "2")
    run(code_root, folder, "-c", BUILD, "lake.zarr", "batches.npz", str(batches))
    return folder


def _strip(doc):
    """Return a JSON document without its volatile fields."""
    if isinstance(doc, dict):
        return {k: _strip(v) for k, v in doc.items() if k not in VOLATILE}
    if isinstance(doc, list):
        return [_strip(v) for v in doc]
    return doc


def compare_lakes(a: Path, b: Path) -> list[str]:
    """Return one line per difference between the lakes ``a`` and ``b`` (empty when identical)."""
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    out = [f"only in the earlier lake: {p}" for p in sorted(files_a - files_b)]
    out += [f"only in this checkout's lake: {p}" for p in sorted(files_b - files_a)]
    for rel in sorted(files_a & files_b):
        da, db = (a / rel).read_bytes(), (b / rel).read_bytes()
        if rel.name == "zarr.json":
            ja, jb = _strip(json.loads(da)), _strip(json.loads(db))
            if ja != jb:
                keys = sorted(k for k in set(ja.get("attributes", {})) | set(jb.get("attributes", {}))
                              if ja.get("attributes", {}).get(k) != jb.get("attributes", {}).get(k))
                others = "equal" if {**ja, "attributes": 0} == {**jb, "attributes": 0} else "differ"
                out.append(f"metadata differs: {rel} (attributes {keys or 'equal'}; other fields {others})")
        elif da != db:
            out.append(f"bytes differ: {rel} ({len(da)} vs {len(db)} bytes)")
    return out


def compare_batches(a: Path, b: Path) -> tuple[list[str], int]:
    """Return the differences between two saved sets of loader batches, and the number of arrays compared."""
    with np.load(a) as xa, np.load(b) as xb:
        keys_a, keys_b = set(xa.files), set(xb.files)
        out = [f"batch array only in one build: {k}" for k in sorted(keys_a ^ keys_b)]
        for key in sorted(keys_a & keys_b):
            va, vb = xa[key], xb[key]
            if va.dtype != vb.dtype or va.shape != vb.shape or not np.array_equal(va, vb, equal_nan=True):
                out.append(f"batch differs: {key} ({va.dtype}{va.shape} vs {vb.dtype}{vb.shape})")
        return out, len(keys_a & keys_b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="git commit, tag or branch to compare against")
    ap.add_argument("--raw", help="raw FLAIR tree (default: a synthetic tree of --preset, generated once)")
    ap.add_argument("--preset", default="bench", help="synthetic tree when --raw is not given")
    ap.add_argument("--batches", type=int, default=3, help="loader batches compared per view")
    ap.add_argument("--keep", help="keep both builds in this folder")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    work = Path(args.keep or tempfile.mkdtemp(prefix="flair-equivalence-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        before_code = work / "code-before"
        shutil.rmtree(before_code, ignore_errors=True)
        before_code.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.before], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(before_code)], input=archive.stdout, check=True)
        if args.raw:
            raw = Path(args.raw).resolve()
        else:
            raw = work / f"raw-{args.preset}"
            if not raw.exists():
                run(REPO, work, "synth", str(raw), "--preset", args.preset)
        for side in ("before", "after"):
            shutil.rmtree(work / side, ignore_errors=True)
        build(before_code, raw, work / "before", args.batches)
        build(REPO, raw, work / "after", args.batches)
        diffs = compare_lakes(work / "before" / "lake.zarr", work / "after" / "lake.zarr")
        batch_diffs, n_arrays = compare_batches(work / "before" / "batches.npz", work / "after" / "batches.npz")
        diffs += batch_diffs
        n_files = sum(1 for p in (work / "after" / "lake.zarr").rglob("*") if p.is_file())
        for line in diffs:
            print(line)
        verdict = "IDENTICAL" if not diffs else f"{len(diffs)} DIFFERENCE(S)"
        print(f"{verdict}: {n_files} lake files and {n_arrays} loader batch arrays of {args.before} and this "
              f"checkout ({raw.name}: ingest, baseline view, default monthly view)")
        sys.exit(1 if diffs else 0)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
