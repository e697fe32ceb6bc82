"""Every use of zarr's private modules and of its on-disk layout facts, behind one version guard.

flair-lake's fast paths lean on parts of zarr that are not its public API: the event-loop runner that lets a
coordinator run many array operations in one round, the selection machinery the loader's batch read drives
(an indexer of its own, ``_get_selection`` into a preallocated buffer), the metadata classes that parse a
``zarr.json``, the sharding codec's byte layout that :mod:`flair_lake.chunkio` writes itself, and the numcodecs
codecs behind zarr's Blosc and Zstd. They were checked against the versions in :data:`ZARR_CHECKED` (and
:data:`ZARRS_CHECKED` for the optional Rust codec pipeline, which plugs into zarr's internal codec-pipeline
interface). On any other zarr, :func:`internals_supported` is False and every caller takes zarr-python's public
API instead, only slower: the same arrays and metadata, the same shard files; only chunks that zarrs would have
encoded may differ in their compressed bytes (its Zstd and zarr-python's can differ by a byte for the same data).

Set :data:`INTERNALS_ENV` to ``0`` to turn the fast paths off (tests compare both ways; the variable reaches Dask
worker processes), or to ``1`` to try them on an unchecked zarr.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
import importlib.util
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.storage import LocalStore

ZARR_CHECKED = ("3.1.6",)  # zarr versions whose internals this module was checked against (pyproject pins 3.1.6)
ZARRS_CHECKED = ("0.2.3",)  # zarrs (Rust codec pipeline, extra "fast") versions checked with them
INTERNALS_ENV = "FLAIR_LAKE_ZARR_INTERNALS"  # "0": public API only; "1": internals even on an unchecked zarr

# zarr config: the codec pipelines, and the keys flair-lake sets around its writes
PYTHON_PIPELINE = {"codec_pipeline.path": "zarr.core.codec_pipeline.BatchedCodecPipeline"}
ZARRS_PIPELINE = {"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}
ZARRS_DIRECT_IO = {"codec_pipeline.direct_io": True}  # zarrs: write chunks with O_DIRECT
WRITE_EMPTY_CHUNKS = {"array.write_empty_chunks": True}  # store all-fill-value chunks too (no check per chunk)

# The sharding codec's layout as chunkio writes it (zarr v3 sharding, index_location "end"): the encoded inner
# chunks, then the index, one (offset, nbytes) pair of little-endian uint64 per inner chunk in C order, then the
# CRC32C of the index (little-endian uint32). A chunk that is not stored has both fields 2**64 - 1.
SHARD_INDEX_DTYPE = "<u8"
SHARD_EMPTY_CHUNK = np.uint64(2**64 - 1)


# --- the guard --------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _zarr_checked() -> bool:
    return zarr.__version__ in ZARR_CHECKED


def internals_supported() -> bool:
    """Return True when the fast paths may use zarr's internals: a checked zarr, unless the environment says."""
    forced = os.environ.get(INTERNALS_ENV, "")
    if forced in ("0", "1"):
        return forced == "1"
    return _zarr_checked()


@contextlib.contextmanager
def internals_forced(enabled: bool):
    """Set :data:`INTERNALS_ENV` for a block (tests); Dask workers started inside the block inherit it."""
    old = os.environ.get(INTERNALS_ENV)
    os.environ[INTERNALS_ENV] = "1" if enabled else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(INTERNALS_ENV, None)
        else:
            os.environ[INTERNALS_ENV] = old


@functools.lru_cache(maxsize=1)
def _zarrs_version() -> str | None:
    if importlib.util.find_spec("zarrs") is None:
        return None
    try:
        return importlib.metadata.version("zarrs")
    except importlib.metadata.PackageNotFoundError:
        return None


def zarrs_supported() -> bool:
    """Return True when the zarrs codec pipeline is installed in a checked version and the internals are on (it
    plugs into zarr's codec-pipeline interface, which follows zarr's own version)."""
    return internals_supported() and _zarrs_version() in ZARRS_CHECKED


# --- zarr's event loop ------------------------------------------------------------------------------------------
def sync(coro):
    """Run a zarr coroutine (a store or async-array call) to completion on zarr's event loop; return its result.

    The stores' clients (aiohttp sessions of object stores) live on that loop, so there is no public
    equivalent; should the runner move, a fresh event loop serves local stores.
    """
    try:
        from zarr.core.sync import sync as zarr_sync
    except ImportError:  # pragma: no cover - only on a zarr without the runner
        return asyncio.run(coro)
    return zarr_sync(coro)


def in_one_round(coros) -> list:
    """Run zarr coroutines concurrently on zarr's event loop; return their results in order.

    The small per-patch tables are a millisecond or more apiece on a local disk (metadata, then chunks) and a
    request round trip each on an object store; a coordinator handles several at once.
    """
    async def gather():
        return await asyncio.gather(*coros)

    return sync(gather())


def read_arrays(group: zarr.Group, paths: Sequence[str], rows: slice = slice(None)) -> dict[str, np.ndarray]:
    """Return ``{path: group[path][rows]}``, in one event-loop round (one by one without the internals)."""
    if not internals_supported():
        return {p: group[p][rows] for p in paths}

    async def read(path: str):
        arr = await group._async_group.getitem(path)
        return await arr.getitem(rows)

    return dict(zip(paths, in_one_round([read(p) for p in paths])))


def create_arrays(group: zarr.Group, specs: dict[str, dict]) -> None:
    """Create the arrays ``{name: create_array keyword arguments}`` in ``group`` in one event-loop round."""
    if not internals_supported():
        for name, kw in specs.items():
            group.create_array(name, **kw)
        return
    in_one_round([group._async_group.create_array(name, **kw) for name, kw in specs.items()])


def write_arrays(items: Sequence[tuple[zarr.Array | str, np.ndarray]], rows: slice,
                 group: zarr.Group | None = None) -> None:
    """Write ``array[rows] = values`` for each ``(array, values)`` in one event-loop round; an array given by its
    path in ``group`` is opened in the same round."""
    if not internals_supported():
        for arr, values in items:
            (group[arr] if isinstance(arr, str) else arr)[rows] = values
        return

    async def write(arr, values):
        arr = await group._async_group.getitem(arr) if isinstance(arr, str) else arr._async_array
        await arr.setitem(rows, values)

    in_one_round([write(arr, values) for arr, values in items])


def grow_arrays(group: zarr.Group, paths: Sequence[str], total_rows: int) -> None:
    """Resize each array of ``paths`` in ``group`` to at least ``total_rows`` rows, in one event-loop round."""
    if not internals_supported():
        for path in paths:
            arr = group[path]
            if arr.shape[0] < total_rows:
                arr.resize((total_rows, *arr.shape[1:]))
        return

    async def grow_one(path: str) -> None:
        arr = await group._async_group.getitem(path)
        if arr.shape[0] < total_rows:
            await arr.resize((total_rows, *arr.shape[1:]))

    in_one_round([grow_one(p) for p in paths])


# --- buffers, metadata and keys (validate) ----------------------------------------------------------------------
def buffer_prototype():
    """Return zarr's default buffer prototype, which store ``get`` calls take."""
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype()


def buffer_from_bytes(data: bytes):
    """Return ``data`` as the zarr buffer that store ``set`` calls take."""
    return buffer_prototype().buffer.from_bytes(data)


def check_metadata(text: str) -> None:
    """Parse the zarr v3 metadata document ``text`` as zarr does when it opens the node; raise when zarr could not.

    The caller checks first that it is a JSON object of ``zarr_format`` 3 (its messages name what is wrong).
    """
    doc = json.loads(text)  # a copy of its own: zarr's parsers may take it apart
    if not internals_supported():
        from zarr.buffer.cpu import Buffer

        zarr.open(store=zarr.storage.MemoryStore({"zarr.json": Buffer.from_bytes(text.encode())}), mode="r")
        return
    from zarr.core.group import GroupMetadata
    from zarr.core.metadata.v3 import ArrayV3Metadata

    kind = {"array": ArrayV3Metadata, "group": GroupMetadata}.get(doc.get("node_type"))
    if kind is None:
        raise ValueError(f"node_type is {doc.get('node_type')!r}")
    kind.from_dict(doc)


def chunk_key(arr: zarr.Array, coords: Sequence[int]) -> str:
    """Return the store key, relative to the array, of the chunk (or shard) at grid position ``coords``."""
    return arr.metadata.encode_chunk_key(tuple(coords))


# --- config -----------------------------------------------------------------------------------------------------
_CONFIG_LOCK = threading.Lock()
_CONFIG_USERS: dict[tuple[str, Any], list] = {}  # (key, value) -> [threads inside, zarr's set-context]


@contextlib.contextmanager
def config(options: dict):
    """Set zarr config ``options`` for a block, safely when the threads of one worker enter and leave in any order.

    zarr's config is process-wide and ``zarr.config.set`` restores what it saw on entry, so two threads whose
    blocks interleave (A in, B in, A out, B out) would leave the options set for good. Here each (key, value)
    is set by the first thread that needs it and restored by the last one to leave.
    """
    items = tuple(sorted(options.items()))
    with _CONFIG_LOCK:
        for item in items:
            entry = _CONFIG_USERS.get(item)
            if entry is None:
                _CONFIG_USERS[item] = [1, zarr.config.set(dict([item]))]
            else:
                entry[0] += 1
    try:
        yield
    finally:
        with _CONFIG_LOCK:
            for item in items:
                entry = _CONFIG_USERS[item]
                entry[0] -= 1
                if entry[0] == 0:
                    entry[1].__exit__(None, None, None)
                    del _CONFIG_USERS[item]


# --- chunk files and codecs (chunkio) ---------------------------------------------------------------------------
def array_folder(arr: zarr.Array) -> Path | None:
    """Return the folder of an array in a local store (None for any other store)."""
    store = arr.store_path.store
    if not isinstance(store, LocalStore):
        return None
    return Path(store.root) / arr.store_path.path


def is_read_only(arr: zarr.Array) -> bool:
    """Return True when the array's store was opened read-only."""
    return arr.store_path.store.read_only


def chunk_path(arr: zarr.Array, index: int) -> Path:
    """Return the file of chunk (or shard) ``index`` along the first axis of a local array."""
    key = chunk_key(arr, (index,) + (0,) * (arr.ndim - 1))
    return Path(arr.store_path.store.root) / arr.store_path.path / key


def array_codecs(arr: zarr.Array) -> tuple:
    """Return the array's codecs (zarr v3 metadata; empty for anything else)."""
    return tuple(getattr(arr.metadata, "codecs", ()))


def _blosc(codec: BloscCodec):
    """Return the numcodecs Blosc that encodes and decodes exactly as zarr's ``codec``."""
    from numcodecs import Blosc

    shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
    return Blosc(cname=codec.cname.value, clevel=codec.clevel, shuffle=shuffle[codec.shuffle.value],
                 blocksize=codec.blocksize, typesize=codec.typesize)


def plain_codecs(codecs: tuple):
    """Return (True, compressor or None, crc) when ``codecs`` are bytes (little-endian), then at most one Blosc or
    Zstd (as the numcodecs codec that zarr itself calls), then optionally a CRC32C (``crc`` True); else
    (False, None, False)."""
    crc = bool(codecs) and isinstance(codecs[-1], Crc32cCodec)
    if crc:
        codecs = codecs[:-1]
    if not codecs or not isinstance(codecs[0], BytesCodec):
        return False, None, False
    if codecs[0].endian is not None and codecs[0].endian.value != "little":
        return False, None, False
    if len(codecs) == 1:
        return True, None, crc
    if len(codecs) == 2 and isinstance(codecs[1], BloscCodec):
        return True, _blosc(codecs[1]), crc
    if len(codecs) == 2 and isinstance(codecs[1], ZstdCodec):
        from numcodecs import Zstd

        return True, Zstd(level=codecs[1].level, checksum=codecs[1].checksum), crc
    return False, None, False


def crc32c_bytes(data) -> bytes:
    """Return the CRC32C of ``data`` as the 4 little-endian bytes zarr's crc32c codec appends to a chunk."""
    import google_crc32c

    # as a uint8 array: google_crc32c takes those (and bytes) without a copy, not memoryviews
    return int(google_crc32c.value(np.frombuffer(data, np.uint8))).to_bytes(4, "little")


def shard_layout(arr: zarr.Array):
    """Return (compressor or None, inner rows, crc) when ``arr``'s shards are sharding-codec shards with the index
    (bytes, crc32c) at the end and inner chunks of bytes[+blosc|zstd][+crc32c] split along the first axis only;
    else None. Whether the array is local and its rows whole is the caller's check."""
    codecs = array_codecs(arr)
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    sharding = codecs[0]
    index = tuple(sharding.index_codecs)
    if sharding.index_location.value != "end" or len(index) != 2 or not isinstance(index[1], Crc32cCodec) or \
            not plain_codecs(index[:1])[0]:
        return None
    ok, comp, crc = plain_codecs(tuple(sharding.codecs))
    chunk = tuple(arr.chunks)
    if not ok or chunk[1:] != tuple(arr.shards[1:]) or arr.shards[0] % chunk[0]:
        return None  # only shards split into inner chunks along the first axis
    return comp, chunk[0], crc


def empty_shard_index(n_chunks: int) -> np.ndarray:
    """Return the (n_chunks, 2) index of a shard that stores none of its inner chunks yet."""
    return np.full((n_chunks, 2), SHARD_EMPTY_CHUNK, SHARD_INDEX_DTYPE)


def shard_index_bytes(index: np.ndarray) -> bytes:
    """Return the tail of a shard: its index followed by the index's CRC32C."""
    raw = index.tobytes()
    return raw + crc32c_bytes(raw)


# --- the loader's batch read ------------------------------------------------------------------------------------
def read_rows(arrays: Sequence[zarr.Array], rows: Sequence[int], outs: Sequence[np.ndarray]) -> None:
    """Read rows ``rows`` of each array into its ``outs`` array (``len(rows)`` rows), in one event-loop round.

    One codec-pipeline call per array (zarrs decodes its chunks in parallel, in Rust), straight into ``out``: no
    per-chunk Python round trip and no stacking copy afterwards. Without the internals: one public read a row.
    """
    if not internals_supported():
        for arr, out in zip(arrays, outs):
            for k, r in enumerate(rows):
                out[k] = arr[int(r)]
        return
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.buffer.cpu import NDBuffer

    async def read_all():
        await asyncio.gather(*(arr._async_array._get_selection(
            _RowsIndexer(arr._async_array, rows), prototype=default_buffer_prototype(),
            out=NDBuffer.from_ndarray_like(out)) for arr, out in zip(arrays, outs)))

    sync(read_all())


class _RowsIndexer:
    """A zarr indexer of whole rows (axis 0) in any order: one row slice per chunk, output row k for row k.

    zarr's own orthogonal indexer turns such a selection into integer-array selections inside each shard, which
    its codec pipelines serve by decoding whole shards; this one asks for exactly the inner chunks needed.
    """

    def __init__(self, arr, rows: Sequence[int]) -> None:
        from zarr.core.indexing import BasicIndexer

        self._projections = []
        for k, r in enumerate(rows):
            for p in BasicIndexer((slice(int(r), int(r) + 1),), arr.shape, arr.metadata.chunk_grid):
                self._projections.append(p._replace(out_selection=(slice(k, k + 1), *p.out_selection[1:])))
        self.shape = (len(rows), *arr.shape[1:])
        self.drop_axes = ()

    def __iter__(self):
        return iter(self._projections)
