"""Whole chunks and shards of local arrays, read and written straight from and to their files.

The heavy transfers of ingest and filter go through here: the shards of aerial images and labels an ingest task
writes (64 patches, 84 + 17 MB), the Sentinel-2 series of each super-area the filter reads one chunk of dates at
a time, and the shard of monthly cube each filter task writes (64 patches, 24.5 MB). Through zarr and zarrs each
of them is copied more than once into freshly allocated buffers (inner chunks cut out, encoded chunks joined,
the shard copied again for O_DIRECT); on the 2-core development machine a first touch of fresh memory runs at
~0.34 GB/s against ~8 GB/s for memory already mapped, so that bookkeeping cost as much as the codecs.

- :func:`write_shard` encodes each inner chunk with the array's own codec (the numcodecs codec zarr calls), and its
  CRC32C when the chain ends with one, into
  one page-aligned buffer kept by the thread, appends the shard index and its CRC32C exactly as the sharding
  codec lays them out (``index_location='end'``), and writes the file once (O_DIRECT where the filesystem takes
  it), its front by a writer thread while the rest still encodes: 31 ms for a cube shard that zarrs writes in
  53 ms (docs/benchmarks.md).
- :func:`iter_blocks` decodes each chunk file straight into one buffer reused for the whole series (the
  filter's composite phase takes a fifth less time than through zarrs).

Both take only the layouts they know: bytes, at most one Blosc or Zstd, and optionally a CRC32C (checked when
reading: a mismatch is an error naming the chunk), unsharded (reading) or sharded with a
(bytes, crc32c) index at the end (writing); chunks split along the first axis only; a local store; a
little-endian machine. Anything else goes through zarr, so this is an optimisation, never a format of its own:
zarr reads every file written here, a shard written here is byte for byte the one zarr-python writes under the
lake's :func:`~flair_lake.storage.fast_writes`, and what is read here equals what zarr reads (tests/test_chunkio.py).
What this relies on of zarr (its array metadata, codec objects and sharding layout) comes from
:mod:`flair_lake.zarr_compat`; on a zarr it was not checked against, both go through zarr.
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
from pathlib import Path

import numpy as np
import zarr

from flair_lake import zarr_compat as zc
from flair_lake.errors import LakeStateError

_ALIGN = 4096  # O_DIRECT: buffer address, file offset and length in multiples of the logical block size
_LOCAL = threading.local()  # per thread: the aligned buffer, reused (no fresh pages per shard)


def _buffer(size: int) -> mmap.mmap:
    """Return this thread's page-aligned scratch buffer of at least ``size`` bytes."""
    buf = getattr(_LOCAL, "buf", None)
    if buf is None or len(buf) < size:
        buf = mmap.mmap(-1, -(-size // (1 << 20)) * (1 << 20))  # whole MiB: fewer regrowths
        _LOCAL.buf = buf
    return buf


def _local_rows_layout(arr: zarr.Array, unit: tuple) -> bool:
    """Return True for a local array on a little-endian machine whose ``unit`` (chunk or shard) spans every axis
    but the first."""
    if sys.byteorder != "little" or not hasattr(os, "pwrite") or zc.array_folder(arr) is None:
        return False
    if not arr.dtype.isnative and arr.dtype.itemsize > 1:
        return False
    return tuple(unit[1:]) == tuple(arr.shape[1:])


def iter_blocks(arr: zarr.Array, start: int = 0, stop: int | None = None):
    """Yield ``(row, block)``: ``block`` is ``arr[row:row + len(block)]``, chunk by chunk along the first axis,
    covering rows ``start`` to ``stop`` (whole chunks: the first and last blocks may reach beyond them).

    Each block is decoded into one buffer reused for the next one: copy what must outlive the iteration step.
    Unsharded local arrays of bytes[+blosc|zstd] are read from their files here; any other array through zarr.
    """
    stop = int(arr.shape[0]) if stop is None else min(stop, int(arr.shape[0]))
    c = int(arr.chunks[0])
    first = max(start, 0) // c * c
    ok, comp, crc = zc.plain_codecs(zc.array_codecs(arr)) if arr.shards is None else (False, None, False)
    if not (ok and zc.internals_supported() and _local_rows_layout(arr, arr.chunks)):
        for row in range(first, stop, c):
            yield row, arr[row:row + c]
        return
    buf = np.empty(arr.chunks, arr.dtype)
    raw = buf.reshape(-1).view(np.uint8)
    for row in range(first, stop, c):
        n = min(c, int(arr.shape[0]) - row)
        path = zc.chunk_path(arr, row // c)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:  # a chunk never written holds the fill value
            buf[...] = arr.fill_value
            yield row, buf[:n]
            continue
        if crc:  # the chunk's last 4 bytes: the CRC32C of the rest
            data = memoryview(data)
            if len(data) < 4 or zc.crc32c_bytes(data[:-4]) != data[-4:]:
                raise LakeStateError(f"{path}: chunk checksum mismatch; the lake is damaged: `flair-lake validate "
                                     "--deep` names what to rebuild")
            data = data[:-4]
        decoder = comp
        size = _decoded_size(decoder, data)  # decoding into ``out`` would not notice a short chunk
        if size == -1:  # a frame that does not say: decode it apart
            data, decoder = decoder.decode(data), None
            size = len(data)
        if size != raw.nbytes:
            raise LakeStateError(f"{path}: chunk file does not hold the {raw.nbytes} bytes of a chunk; the lake is "
                                 "damaged: `flair-lake validate` names what to rebuild")
        if decoder is None:
            raw[:] = np.frombuffer(data, np.uint8)
        else:
            decoder.decode(data, out=raw)
        yield row, buf[:n]


def _decoded_size(comp, data: bytes) -> int:
    """Return the size ``data`` decodes to, from its Blosc or Zstd frame header (nothing is decoded): -1 when the
    header does not say, -2 when it is too short to be one."""
    if comp is None:
        return len(data)
    from numcodecs import Blosc

    if isinstance(comp, Blosc):  # the Blosc header: version, flags, typesize, then nbytes (uint32, little-endian)
        return int.from_bytes(data[4:8], "little") if len(data) >= 16 else -2
    return _zstd_content_size(data)


def _zstd_content_size(data: bytes) -> int:
    """Return the content size of a single Zstd frame, as its header declares it (-1 when it does not)."""
    if len(data) < 6 or data[:4] != b"\x28\xb5\x2f\xfd":
        return -1
    fhd = data[4]
    fcs_flag, single_segment, dict_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
    pos = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if size == 0 or len(data) < pos + size:
        return -1
    value = int.from_bytes(data[pos:pos + size], "little")
    return value + 256 if size == 2 else value


def _max_encoded(nbytes: int) -> int:
    """Return a bound on the encoded size of ``nbytes`` bytes: Blosc adds at most 16 bytes, Zstd ~1/256 + 64."""
    return nbytes + nbytes // 128 + 1024


def _layout(arr: zarr.Array):
    """Return (compressor or None, inner rows, crc) when :func:`write_shard` can write ``arr``'s shards (``crc``:
    each inner chunk ends with its CRC32C), else None."""
    layout = zc.shard_layout(arr) if zc.internals_supported() else None
    if layout is None or not _local_rows_layout(arr, arr.shards) or zc.is_read_only(arr):
        return None
    return layout


def write_shard(arr: zarr.Array, shard: int, data: np.ndarray, *, direct: bool = False) -> None:
    """Write ``data``, the rows of shard ``shard`` of ``arr`` (all of them, or the array's last rows), whole.

    Equivalent to ``arr[shard * s:shard * s + len(data)] = data`` with ``s`` rows a shard, every inner chunk
    stored (also an all-fill one, as with ``write_empty_chunks``). ``direct`` asks for O_DIRECT (the caller
    has probed that the folder takes it). Layouts this writer does not know are written through zarr.
    """
    layout = _layout(arr)
    s = int((arr.shards or arr.chunks)[0])  # an unsharded array: its chunks stand for shards
    rows = min(s, int(arr.shape[0]) - shard * s)
    if layout is None or data.shape != (rows, *arr.shape[1:]) or data.dtype != arr.dtype:
        arr[shard * s:shard * s + data.shape[0]] = data
        return
    comp, c, crc = layout
    data = np.ascontiguousarray(data)
    n_inner = s // c
    chunk_bytes = c * data[0].nbytes
    index = zc.empty_shard_index(n_inner)
    buf = _buffer(n_inner * (_max_encoded(chunk_bytes) + 4) + index.nbytes + 4 + _ALIGN)
    view = memoryview(buf)
    path = zc.chunk_path(arr, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _File(path, view, direct) as out:
        off = 0
        for k in range(-(-rows // c)):
            chunk = data[k * c:(k + 1) * c]
            if chunk.shape[0] < c:  # the array's last rows: the inner chunk is padded with the fill value
                full = np.full((c, *chunk.shape[1:]), arr.fill_value, arr.dtype)
                full[:chunk.shape[0]] = chunk
                chunk = full
            raw = chunk.reshape(-1).view(np.uint8)
            enc = memoryview(comp.encode(raw)) if comp is not None else memoryview(raw)
            view[off:off + enc.nbytes] = enc
            size = enc.nbytes
            if crc:  # zarr's crc32c codec: the CRC32C of the encoded chunk, after it
                view[off + size:off + size + 4] = zc.crc32c_bytes(enc)
                size += 4
            index[k] = off, size
            off += size
            out.written(off)
        tail = zc.shard_index_bytes(index)
        view[off:off + len(tail)] = tail
        out.close(off + len(tail))
    view.release()


_WRITER = None  # one thread a process writes the encoded front of a shard while the rest is encoded


def _forget_writer() -> None:
    global _WRITER
    _WRITER = None  # a forked child has no writer thread: it makes its own


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_writer)


def _writer():
    global _WRITER
    if _WRITER is None:
        from concurrent.futures import ThreadPoolExecutor

        _WRITER = ThreadPoolExecutor(1, thread_name_prefix="flair-lake-shard-writer")
    return _WRITER


class _File:
    """The file of one shard, written from the front of ``view`` while the caller fills the rest.

    ``written(n)`` says the first ``n`` bytes of ``view`` are final: whole blocks of at least 4 MiB of them are
    handed to a writer thread, so the disk works while the next chunks encode (O_DIRECT blocks the caller for
    the whole transfer: ~12 ms a cube shard on the development machine). ``close(size)`` writes the rest, the
    padding of O_DIRECT cut off, waits for every write and renames the file into place, as zarr's local store
    does: a reader never sees half a shard. On an exception every queued write is waited for before the file
    is closed and removed (no write may outlive its file descriptor, nor its buffer's next use).
    """

    STEP = 4 << 20

    def __init__(self, path: Path, view: memoryview, direct: bool):
        self.path, self.view, self.direct, self.sent, self.pending = path, view, direct, 0, []
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.partial")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0)
        self.fd = os.open(self.tmp, flags, 0o644)
        self.closed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self._wait()
        finally:
            if self.fd >= 0:
                os.close(self.fd)
            if not self.closed:
                self.tmp.unlink(missing_ok=True)

    def _wait(self) -> None:
        """Wait for every queued write; then raise the first error, if any."""
        pending, self.pending = self.pending, []
        errors = [f.exception() for f in pending]  # waits for each, whatever happened to the others
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first

    def written(self, n: int) -> None:
        end = n // _ALIGN * _ALIGN
        if end - self.sent >= self.STEP:
            self.pending.append(_writer().submit(_pwrite, self.fd, self.view[self.sent:end], self.sent))
            self.sent = end

    def close(self, size: int) -> None:
        length = -(-size // _ALIGN) * _ALIGN if self.direct else size
        try:
            _pwrite(self.fd, self.view[self.sent:length], self.sent)
        finally:
            self._wait()
        if length != size:
            os.ftruncate(self.fd, size)
        os.close(self.fd)
        self.fd = -1
        os.replace(self.tmp, self.path)
        self.closed = True


def _pwrite(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset``."""
    done = 0
    while done < data.nbytes:
        done += os.pwrite(fd, data[done:], offset + done)
