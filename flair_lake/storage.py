"""How a lake's arrays are stored and reached: codecs, batched reads and writes, and the write paths.

Holds what every module that reads or writes lake arrays shares: whether a lake is a local path or an
object-store URL, the codecs of each codec role (:data:`flair_lake.schema.CODEC_ROLES`) and the keyword
arguments that create an array of a :class:`~flair_lake.schema.ArrayLayout`, reads, writes and creations of many
arrays in one event-loop round, the contexts that choose how chunks are encoded and written (the zarrs Rust
pipeline, O_DIRECT, no all-fill-value check), and this process's cache of opened arrays. What it needs of zarr
beyond its public API comes from :mod:`flair_lake.zarr_compat`; the lake's state (runs, rows, markers, views)
is :mod:`flair_lake.lake`.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import numpy as np
import zarr
import zarr.codecs

from flair_lake import schema
from flair_lake import zarr_compat as zc


def is_url(lake: str) -> bool:
    """Return True for object-store URLs such as ``s3://bucket/lake.zarr``."""
    return "://" in str(lake)


def compressors(codec: str, level: int = 3, typesize: int = 1) -> tuple:
    """Return the bytes-to-bytes codecs for ``codec`` ('zstd', 'lz4' or 'none'), each chunk's CRC32C last.

    uint8 imagery gains nothing from byte-shuffle (docs/benchmarks.md). uint16 reflectance (12-bit values) is
    bit-shuffled first: measured on Sentinel-2 windows, 2x the encode and 1.2-1.4x the decode speed of
    byte-shuffle, for the same size with zstd and 10 % smaller with lz4. The checksum (4 bytes a chunk) makes a
    damaged chunk a decode error instead of wrong values: ``validate --deep`` names the patches it holds.
    """
    return (*_compression(codec, level, typesize), zarr.codecs.Crc32cCodec())


def _compression(codec: str, level: int, typesize: int) -> tuple:
    """Return the compression codecs of ``codec`` (none for 'none')."""
    if codec == "none":
        return ()
    if codec == "lz4":
        shuffle = "bitshuffle" if typesize > 1 else "noshuffle"
        return (zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle=shuffle, typesize=typesize),)
    if typesize > 1:
        return (zarr.codecs.BloscCodec(cname="zstd", clevel=level, shuffle="bitshuffle", typesize=typesize),)
    return (zarr.codecs.ZstdCodec(level=level),)


def role_compressors(layout: schema.ArrayLayout, codec: str = "zstd", level: int = 3) -> tuple:
    """Return the codecs of an array of ``layout``: its codec role takes ``codec`` at ``level`` (the run's
    choice), or fixed codecs (:data:`schema.CODEC_ROLES`)."""
    if layout.codec_role == "table":
        return compressors("zstd")
    if layout.codec_role == "none":
        return compressors("none")
    return compressors(codec, level, typesize=np.dtype(layout.dtype).itemsize)


def create_kwargs(layout: schema.ArrayLayout, n_rows: int, compressors: tuple) -> dict:
    """Return the keyword arguments of zarr's ``create_array`` for an array of ``layout`` with ``n_rows`` rows."""
    kw = {"shape": layout.shape(n_rows), "chunks": layout.chunks, "dtype": layout.dtype,
          "fill_value": layout.fill_value, "compressors": compressors, "dimension_names": layout.dims,
          "attributes": layout.attributes()}
    if layout.shards is not None:
        kw["shards"] = layout.shards
    return kw


def zarrs_available() -> bool:
    """Return True when the zarrs codec pipeline (Rust; extra ``fast``) is installed and usable with this zarr
    (:func:`flair_lake.zarr_compat.zarrs_supported`)."""
    return zc.zarrs_supported()


def rust_codecs(lake: str):
    """Return a context in which arrays opened use the zarrs (Rust) codec pipeline, when it is installed.

    Measured (docs/benchmarks.md): 1.3-3.8x zarr-python's decode and 2x its encode of a shard of 64 chunks.
    zarrs reads and writes local stores only: object-store URLs keep zarr-python's pipeline.
    """
    if zarrs_available() and not is_url(lake):
        return zc.config(zc.ZARRS_PIPELINE)
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=16)
def _direct_io_supported(folder: str) -> bool:
    """Return True when files in ``folder`` can be written with O_DIRECT (probed once per folder and process)."""
    import mmap
    import socket
    import uuid

    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    # unique across the hosts of a cluster sharing the folder
    probe = Path(folder) / f".direct-io-probe-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flag, 0o644)
        try:
            os.write(fd, mmap.mmap(-1, 4096))  # page-aligned, as O_DIRECT requires
        finally:
            os.close(fd)
        return True
    except OSError:  # tmpfs on older kernels, some FUSE and network filesystems, read-only folders
        return False
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:  # a read-only filesystem refuses even this
            pass


def direct_io(lake: str) -> bool:
    """Return True when files of the local lake ``lake`` can be written with O_DIRECT (probed once a process)."""
    return not is_url(lake) and Path(lake).is_dir() and _direct_io_supported(str(Path(lake)))


def direct_writes(lake: str):
    """Return a context in which arrays opened write their chunks with O_DIRECT (zarrs, local lakes only; the
    filter's cube shards, written by :mod:`flair_lake.chunkio`, take O_DIRECT from :func:`direct_io`).

    Writing a new file through the page cache makes the kernel find, fill and later write back a fresh page for
    every 4 KiB; O_DIRECT hands the encoded shard to the disk instead. Measured on the 2-core machine: 196 MB of
    shards in 0.45-0.51 s of CPU buffered, 0.10-0.13 s direct. Readers are unaffected (they read through the
    cache as usual); where the filesystem refuses O_DIRECT the writes stay buffered.
    """
    if zarrs_available() and direct_io(lake):
        return zc.config(zc.ZARRS_DIRECT_IO)
    return contextlib.nullcontext()


_ARRAYS: dict[tuple, tuple[tuple, zarr.Array]] = {}


def open_array(root: zarr.Group, lake: str, path: str) -> zarr.Array:
    """Return ``root[path]``, reusing this process's earlier open of it while its ``zarr.json`` is unchanged.

    Opening an array reads and parses its metadata and builds its codec pipeline (~0.9 ms, a tenth of a filter
    shard task that opens a dozen); building it again from the same file is wasted. The reuse is keyed by the
    file's inode, size and mtime and by the zarr settings that shape the array object, so a resized, rewritten
    or recreated array, or another codec pipeline, opens afresh. Object-store lakes are opened every time.
    """
    if is_url(lake):
        return root[path]
    try:
        st = os.stat(os.path.join(lake, path, "zarr.json"))
    except OSError:
        return root[path]
    key = (os.path.abspath(lake), path, root.store.read_only, zarr.config.get("codec_pipeline.path"),
           zarr.config.get("codec_pipeline.direct_io", False), zarr.config.get("array.write_empty_chunks"))
    stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    hit = _ARRAYS.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    arr = root[path]
    _ARRAYS[key] = (stamp, arr)
    return arr


def fast_writes():
    """Return a context in which whole-chunk writes skip zarr's all-fill-value check of every chunk.

    The check (``np.array_equal`` per chunk) took a third of a shard write; our tasks write whole shards of real
    data, so an all-zero chunk is rare and costs only its compressed bytes.
    """
    return zc.config(zc.WRITE_EMPTY_CHUNKS)
