"""Helpers shared by the benchmarks: the synthetic benchmark tree and a machine description."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    """Return a one-line description of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} cores ({cpu}){mem}, Python {platform.python_version()}"


def bench_tree(path: str | Path) -> Path:
    """Return a synthetic tree of 512 full-size patches at ``path``, generating it when absent."""
    from flair_lake.config import SynthConfig
    from flair_lake.raw.names import METADATA_JSON
    from flair_lake.synth import synthesize

    path = Path(path)
    if not (path / METADATA_JSON).exists():
        print(f"generating the benchmark tree in {path} (once) ...", flush=True)
        synthesize(path, SynthConfig.from_preset("bench"), overwrite=True)
    return path


def warm_cache(*roots: str | Path) -> int:
    """Read every file under ``roots`` once, so timings start from a warm page cache; return the bytes read.

    Ingest and filter write their shards past the page cache (O_DIRECT), so a lake just built is cold.
    """
    total = 0
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 24):
                        total += len(chunk)
    return total
