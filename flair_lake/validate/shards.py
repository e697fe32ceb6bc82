"""Check the shard objects of ``aerial``, ``label`` and each view's ``monthly`` cube, and leftover side files.

That each shard object exists is answered from the store listing (no request per shard); with ``--deep`` each
is decoded and the patches of a shard that fails are named. Side files of interrupted writes are named too.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from flair_lake import lake as lk
from flair_lake import schema
from flair_lake import zarr_compat as zc
from flair_lake.errors import LakeStateError
from flair_lake.validate.checks import Checker
from flair_lake.validate.report import patch_ids


def _block_rows(arr) -> int:
    """Return the rows of one store object of ``arr`` (its shard, or its chunk when unsharded)."""
    return int((arr.shards or arr.chunks)[0])


def _shard_key(arr, shard: int) -> str:
    """Return the store key of the shard object holding rows of shard ``shard`` (trailing dims: one shard)."""
    coords = (shard, *(0 for _ in arr.shape[1:]))
    return f"{arr.path}/{zc.chunk_key(arr, coords)}"


def block_keys(arr, shard: int, per_shard: int) -> list[str]:
    """Return the store keys of every object of ``arr`` holding rows of shard ``shard`` (all trailing blocks)."""
    block = arr.shards or arr.chunks
    if int(block[0]) != per_shard:
        raise LakeStateError(f"{arr.path} stores {block[0]} rows per object, not {per_shard}")
    grid = [range(max(1, math.ceil(n / c))) for n, c in zip(arr.shape[1:], block[1:])]
    return [f"{arr.path}/{zc.chunk_key(arr, (shard, *idx))}" for idx in itertools.product(*grid)]


def _shard_targets(c: Checker, deep: bool) -> list[tuple[str, object, list[int], str | None]]:
    """Return (path, array, shards to check, view or None) of aerial, label and every view's monthly cube.

    The cheap check covers the shards holding ingested patches whose marker is there (a marker-less shard is
    reported once, by the marker checks); deep decodes every written image shard, marker or not (ingest merges
    a partly covered shard into the old object when it resumes, which fails on a corrupt one). A view's shard
    without its marker is still to be written by filter: neither looks at it.
    """
    images = c.written_shards() if deep else [s for s in c.written_shards(True) if c.marker(s) is not None]
    targets = [(name, c.root[name], images, None) for name in ("aerial", "label") if name in c.root]
    vg = c.root.get(schema.VIEWS_GROUP)
    if vg is not None:
        replaced = lk.replaced_generations(vg)  # kept as they are for their readers until collected
        for vname, g in sorted(vg.groups()):
            if "monthly" in g and vname not in replaced:
                prefix = f"{schema.VIEWS_GROUP}/{vname}/done"
                done = [s for s in c.written_shards(True) if c.marker(s, prefix) is not None]
                targets.append((f"{schema.VIEWS_GROUP}/{vname}/monthly", g["monthly"], done, vname))
    return targets


def _fix(c: Checker, view: str | None, shard: int, deep: bool) -> tuple[str, tuple | None]:
    return c.ingest_fix(shard, deep) if view is None else c.view_fix(view, shard, deep)


def check_shards_exist(c: Checker) -> None:
    """The shard object of aerial, label and each monthly cube exists for every shard holding ingested patches.

    Answered from the store listing made once for the metadata (a local folder walk, or the object store's
    paginated list), so it costs no request per shard.
    """
    for path, arr, shards, view in _shard_targets(c, deep=False):
        if _block_rows(arr) != c.per_shard:  # a wrong layout: reported by check_arrays
            continue
        for s in shards:
            a, b = c.shard_rows(s)
            b = min(b, arr.shape[0])
            if a >= b:
                continue
            if _shard_key(arr, s) in c.meta.keys:
                c.report.checks += 1
                continue
            c.missing.add((path, s))
            fix, action = _fix(c, view, s, deep=False)
            held = c.status[a:b] > 0
            c.check(False, f"{path}: shard {s} (rows {a}-{b}) is missing from the store; it reads as zeros for "
                    f"patches {patch_ids(c.patch_id[a:b][held])}; fix: {fix}", action)


def _decode_shard(arr, a: int, b: int) -> np.ndarray:
    """Decode rows ``[a, b)`` of ``arr``; return the rows that fail to decode (empty when the shard is sound)."""
    if _decodes(arr, slice(a, b)):
        return np.empty(0, np.int64)
    # basic indexing, one chunk at a time, to name the patches that are lost
    return np.asarray([r for r in range(a, b) if not _decodes(arr, r)], np.int64)


def _decodes(arr, sel) -> bool:
    """Return True when ``arr[sel]`` decodes."""
    try:
        arr[sel]
    except Exception:  # noqa: BLE001 - codec and checksum errors have no common base
        return False
    return True


def check_deep(c: Checker) -> None:
    """Decode every written shard of aerial, label and the views' monthly cubes; name the patches lost."""
    for path, arr, shards, view in _shard_targets(c, deep=True):
        sharded = bool(arr.shards) and arr.shards[0] == c.per_shard
        for s in shards:
            a, b = c.shard_rows(s)
            b = min(b, arr.shape[0])
            if a >= b or (path, s) in c.missing:  # a missing shard is reported once, by check_shards_exist
                continue
            c.report.shards_decoded += 1
            held = c.status[a:b] > 0
            if sharded and _shard_key(arr, s) not in c.meta.keys:
                fix, action = _fix(c, view, s, deep=False)
                c.check(False, f"{path}: shard {s} (rows {a}-{b}) is missing from the store; it reads as zeros "
                        f"for patches {patch_ids(c.patch_id[a:b][held])}; fix: {fix}", action)
                continue
            failed = _decode_shard(arr, a, b)
            if not failed.size:
                c.report.checks += 1
                continue
            fix, action = _fix(c, view, s, deep=True)
            c.check(False, f"{path}: shard {s} (rows {a}-{b}) is truncated or corrupt (decode or checksum error); "
                    f"lost patches {patch_ids(c.patch_id[failed][c.status[failed] > 0])}; fix: {fix}", action)


def check_leftovers(c: Checker) -> None:
    """No side file of an interrupted write is left (``*.partial``: zarr's local store and flair_lake.chunkio
    write a file beside its place and rename it in; a killed write leaves it). Nothing reads them; they take
    room. From the same listing."""
    left = sorted(k for k in c.meta.keys if k.rsplit("/", 1)[-1].endswith(".partial"))
    c.check(not left, f"{len(left)} file(s) left by interrupted writes (e.g. {', '.join(left[:3])}); nothing reads "
            "them; fix: `flair-lake validate --repair` deletes them (so does the next ingest or filter)",
            ("leftovers", tuple(left)))
