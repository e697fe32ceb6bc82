"""Direct chunk I/O: the shard writer writes byte for byte the shards zarr writes, which zarr reads back exactly
(both codec pipelines); what the block reader reads equals zarr's reads; layouts they do not know, and any
layout on a zarr whose internals are not supported, are left to zarr."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from flair_lake import storage
from flair_lake import zarr_compat as zc
from flair_lake.chunkio import _decoded_size, _layout, _max_encoded, iter_blocks, write_shard
from flair_lake.errors import LakeStateError

ROW = (3, 2, 5, 7)  # one row's shape (like a patch's months x bands x rows x cols, smaller)


def _array(path, codec: str, *, rows: int, inner: int = 1, dtype="uint16", per_shard: int = 4, fill=0):
    typesize = np.dtype(dtype).itemsize
    return zarr.create_array(str(path), shape=(rows, *ROW), chunks=(inner, *ROW), shards=(per_shard, *ROW),
                             dtype=dtype, fill_value=fill, compressors=storage.compressors(codec, 1, typesize=typesize))


def _read(path, pipeline: str) -> np.ndarray:
    with zarr.config.set(zc.PYTHON_PIPELINE if pipeline == "python" else zc.ZARRS_PIPELINE):
        return zarr.open_array(str(path), mode="r")[:]


@pytest.mark.parametrize("codec", ["lz4", "zstd", "none"])
@pytest.mark.parametrize("direct", [False, True])
def test_whole_shards_read_back_exactly(tmp_path, codec, direct):
    """Full shards and the array's last, partial shard (inner chunks of 1 and of 3 rows: a padded last chunk and
    unstored chunks past the end) read back bit-exact through zarr-python (which checks the index CRC32C) and
    zarrs; rewriting a shard replaces it whole."""
    if direct and not storage._direct_io_supported(str(tmp_path)):
        pytest.skip("this filesystem refuses O_DIRECT")
    rng = np.random.default_rng(5)
    for inner, per_shard in ((1, 4), (3, 6)):
        path = tmp_path / f"{codec}-{inner}"
        rows = 2 * per_shard + per_shard // 2 + 1  # two full shards and a partial one
        arr = _array(path, codec, rows=rows, inner=inner, per_shard=per_shard, fill=7)
        assert _layout(arr) is not None
        values = rng.integers(0, 4096, (rows, *ROW)).astype(np.uint16)
        values[1] = 7  # an inner chunk of fill values is stored too, and reads back
        for s in range(3):
            write_shard(arr, s, np.zeros_like(values[s * per_shard:(s + 1) * per_shard]), direct=direct)
            write_shard(arr, s, values[s * per_shard:(s + 1) * per_shard], direct=direct)
        for pipeline in ("python", "zarrs"):
            assert np.array_equal(_read(path, pipeline), values), (pipeline, inner)


# (inner rows, rows per shard, rows): full shards and a partial last one; inner chunks of 1 row, and of 3 rows with
# the last one padded with the fill value
SHARD_CASES = ((1, 4, 10), (3, 6, 14), (1, 4, 8))


def _shard_bytes(path, shard: int) -> bytes:
    return zc.chunk_path(zarr.open_array(str(path), mode="r"), shard).read_bytes()


def _values(rng, dtype: str, rows: int, fill) -> np.ndarray:
    values = rng.random((rows, *ROW)) > 0.5 if dtype == "bool" else rng.integers(0, 200, (rows, *ROW)).astype(dtype)
    values[1] = fill  # an all-fill-value row: a whole inner chunk of 1 row
    return values


@pytest.mark.parametrize("codec", ["zstd", "lz4", "none"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "bool"])
@pytest.mark.parametrize("direct", [False, True])
def test_shards_are_byte_identical_to_what_zarr_writes(tmp_path, codec, dtype, direct):
    """Every shard file is byte for byte the one zarr-python writes for the same rows, with the codecs
    storage.compressors makes (zstd; blosc-lz4 and blosc-zstd with bit-shuffle for uint16), full and partial last
    shards, padded inner chunks, buffered and O_DIRECT. zarr compared under the settings the lake writes with
    (storage.fast_writes(): an all-fill inner chunk is stored too, as the shard writer always does)."""
    if direct and not storage._direct_io_supported(str(tmp_path)):
        pytest.skip("this filesystem refuses O_DIRECT")
    rng = np.random.default_rng(17)
    fill = True if dtype == "bool" else 7
    for inner, per_shard, rows in SHARD_CASES:
        values = _values(rng, dtype, rows, fill)
        ours = _array(tmp_path / f"ours-{inner}-{rows}", codec, rows=rows, inner=inner, dtype=dtype,
                      per_shard=per_shard, fill=fill)
        assert _layout(ours) is not None
        shards = range(-(-rows // per_shard))
        for s in shards:
            write_shard(ours, s, values[s * per_shard:(s + 1) * per_shard], direct=direct)
        with zarr.config.set(zc.PYTHON_PIPELINE), storage.fast_writes():  # arrays take both when opened
            theirs = _array(tmp_path / f"zarr-{inner}-{rows}", codec, rows=rows, inner=inner, dtype=dtype,
                            per_shard=per_shard, fill=fill)
            for s in shards:
                theirs[s * per_shard:(s + 1) * per_shard] = values[s * per_shard:(s + 1) * per_shard]
        for s in shards:
            assert _shard_bytes(tmp_path / f"ours-{inner}-{rows}", s) == \
                _shard_bytes(tmp_path / f"zarr-{inner}-{rows}", s), (inner, rows, s)


@pytest.mark.parametrize("direct", [False, True])
def test_a_large_shard_is_byte_identical_too(tmp_path, direct):
    """An incompressible 5 MiB shard of aerial-like rows, whose front the writer thread writes while the rest
    encodes, equals zarr's shard."""
    if direct and not storage._direct_io_supported(str(tmp_path)):
        pytest.skip("this filesystem refuses O_DIRECT")
    shape = (16, 5, 256, 256)
    values = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    make = {"shape": (20, *shape[1:]), "chunks": (1, *shape[1:]), "shards": shape, "dtype": "uint8",
            "compressors": storage.compressors("zstd", 1)}
    ours = zarr.create_array(str(tmp_path / "ours"), **make)
    write_shard(ours, 0, values, direct=direct)
    write_shard(ours, 1, values[:4], direct=direct)
    with zarr.config.set(zc.PYTHON_PIPELINE), storage.fast_writes():
        theirs = zarr.create_array(str(tmp_path / "zarr"), **make)
        theirs[:16] = values
        theirs[16:] = values[:4]
    for s in (0, 1):
        assert _shard_bytes(tmp_path / "ours", s) == _shard_bytes(tmp_path / "zarr", s)


def _inner_chunks(data: bytes, n: int) -> dict[int, bytes]:
    """Return {inner chunk: its encoded bytes} of a shard of ``n`` inner chunks (index at the end)."""
    index = np.frombuffer(data[-(16 * n + 4):-4], zc.SHARD_INDEX_DTYPE).reshape(n, 2)
    return {k: data[int(o):int(o) + int(size)] for k, (o, size) in enumerate(index) if o != zc.SHARD_EMPTY_CHUNK}


@pytest.mark.parametrize("codec", ["zstd", "lz4", "none"])
def test_inner_chunks_are_the_bytes_zarrs_encodes(tmp_path, codec):
    """zarrs encodes every inner chunk to the same bytes; its shards differ in layout only: it places the chunks
    in the order its threads finish them and leaves an all-fill chunk out whatever ``write_empty_chunks`` says
    (zarrs 0.2.3), so its shard files are not compared whole."""
    pytest.importorskip("zarrs")
    values = _values(np.random.default_rng(8), "uint16", 8, 0)
    ours = _array(tmp_path / "ours", codec, rows=8)
    for s in (0, 1):
        write_shard(ours, s, values[s * 4:(s + 1) * 4])
    with zarr.config.set(zc.ZARRS_PIPELINE), storage.fast_writes():
        theirs = _array(tmp_path / "zarrs", codec, rows=8)
        theirs[:] = values
    for s in (0, 1):
        mine, rust = (_inner_chunks(_shard_bytes(tmp_path / name, s), 4) for name in ("ours", "zarrs"))
        assert len(mine) == 4 and all(mine[k] == chunk for k, chunk in rust.items())
        assert all((values[s * 4 + k] == 0).all() for k in set(mine) - set(rust))


def test_without_zarr_internals_zarr_writes_and_reads(tmp_path):
    """On a zarr whose internals are not supported (forced here), shards are written and blocks read through
    zarr: the same shard bytes under the lake's fast_writes(), the same blocks."""
    rng = np.random.default_rng(9)
    values = _values(rng, "uint16", 10, 0)
    fast = _array(tmp_path / "fast", "lz4", rows=10)
    for s in range(3):
        write_shard(fast, s, values[s * 4:(s + 1) * 4])
    with zc.internals_forced(False), zarr.config.set(zc.PYTHON_PIPELINE), storage.fast_writes():
        plain = _array(tmp_path / "plain", "lz4", rows=10)
        assert _layout(plain) is None
        for s in range(3):
            write_shard(plain, s, values[s * 4:(s + 1) * 4])
    for s in range(3):
        assert _shard_bytes(tmp_path / "fast", s) == _shard_bytes(tmp_path / "plain", s)
    arr = zarr.create_array(str(tmp_path / "blocks"), shape=values.shape, chunks=(4, *ROW), dtype="uint16",
                            compressors=storage.compressors("zstd", typesize=2))
    arr[:] = values
    with zc.internals_forced(False):
        blocks = [(row, block.copy()) for row, block in iter_blocks(arr, 2, 9)]
        first, second = [block for _, (_, block) in zip(range(2), iter_blocks(arr))]
    assert [row for row, _ in blocks] == [0, 4, 8]
    for row, block in blocks:
        np.testing.assert_array_equal(block, values[row:row + 4])
    assert not np.shares_memory(first, second)  # zarr's reads, not the reused buffer


def test_bool_and_single_byte_arrays(tmp_path):
    """Single-byte arrays take plain Zstd (the aerial images and labels): bool, and random bytes that Zstd cannot
    compress (its output is larger than its input)."""
    arr = _array(tmp_path / "b", "zstd", rows=6, dtype="bool", fill=False)
    assert _layout(arr) is not None
    values = np.random.default_rng(1).random((6, *ROW)) > 0.5
    write_shard(arr, 0, values[:4])
    write_shard(arr, 1, values[4:])
    assert np.array_equal(_read(tmp_path / "b", "python"), values)
    noise = np.random.default_rng(2).integers(0, 256, (4, 5, 64, 64), dtype=np.uint8)
    arr = zarr.create_array(str(tmp_path / "u"), shape=noise.shape, chunks=(1, 5, 64, 64), shards=noise.shape,
                            dtype="uint8", compressors=storage.compressors("zstd", 1))
    assert _layout(arr) is not None
    write_shard(arr, 0, noise, direct=storage._direct_io_supported(str(tmp_path)))
    for pipeline in ("python", "zarrs"):
        assert np.array_equal(_read(tmp_path / "u", pipeline), noise)


def test_layouts_it_does_not_know_go_through_zarr(tmp_path):
    """Unsharded arrays, shards split along other axes and rows of the wrong shape are written by zarr, with
    the same result."""
    plain = zarr.create_array(str(tmp_path / "plain"), shape=(8, *ROW), chunks=(4, *ROW), dtype="uint16")
    split = zarr.create_array(str(tmp_path / "split"), shape=(8, *ROW), chunks=(1, 1, *ROW[1:]),
                              shards=(4, *ROW), dtype="uint16")
    assert _layout(plain) is None and _layout(split) is None
    values = np.arange(8 * np.prod(ROW), dtype=np.uint16).reshape(8, *ROW)
    for arr, name in ((plain, "plain"), (split, "split")):
        write_shard(arr, 1, values[4:])
        assert np.array_equal(_read(tmp_path / name, "python")[4:], values[4:])
    arr = _array(tmp_path / "short", "lz4", rows=8)
    write_shard(arr, 0, values[:3])  # fewer rows than the shard holds (not the last shard): zarr writes them
    assert np.array_equal(_read(tmp_path / "short", "python")[:3], values[:3])


@pytest.mark.parametrize("codec", ["lz4", "zstd", "none"])
def test_blocks_equal_what_zarr_reads(tmp_path, codec):
    """Chunk by chunk, from any start to any stop, the array's last partial chunk and a chunk never written (the
    fill value) included, the blocks are zarr's own reads; the fast path decodes into one reused buffer."""
    rng = np.random.default_rng(11)
    values = rng.integers(0, 4096, (23, *ROW)).astype(np.uint16)
    values[8:12] = 3  # a whole chunk of the fill value: zarr does not store it
    arr = zarr.create_array(str(tmp_path / "a"), shape=values.shape, chunks=(4, *ROW), dtype="uint16",
                            fill_value=3, compressors=storage.compressors(codec, typesize=2))
    arr[:] = values
    assert not (tmp_path / "a" / "c" / "2").exists()
    for start, stop in ((0, None), (5, 14), (9, 10), (20, 23)):
        blocks = [(row, block.copy()) for row, block in iter_blocks(arr, start, stop)]
        assert blocks[0][0] <= start and blocks[0][0] % 4 == 0
        assert blocks[-1][0] + len(blocks[-1][1]) >= (stop or 23)
        for row, block in blocks:
            np.testing.assert_array_equal(block, values[row:row + len(block)])
    first, second = [block for _, (_, block) in zip(range(2), iter_blocks(arr))]
    assert np.shares_memory(first, second)  # read from the files here, not through zarr


def test_blocks_of_sharded_arrays_come_through_zarr(tmp_path):
    values = np.arange(8 * np.prod(ROW), dtype=np.uint16).reshape(8, *ROW)
    arr = _array(tmp_path / "s", "lz4", rows=8)
    arr[:] = values
    blocks = list(iter_blocks(arr))
    assert [row for row, _ in blocks] == list(range(8))
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), values)


def test_a_damaged_chunk_is_an_error_not_short_data(tmp_path):
    """A truncated uncompressed chunk, and a compressed chunk that decodes to fewer bytes than a chunk (Blosc and
    Zstd would fill the front of the reused buffer and leave the previous block's rows behind), are errors that
    name the file."""
    import numcodecs

    arr = zarr.create_array(str(tmp_path / "a"), shape=(8, *ROW), chunks=(4, *ROW), dtype="uint16", compressors=())
    arr[:] = 1
    chunk = tmp_path / "a" / "c" / "1" / "0" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-2])
    with pytest.raises(LakeStateError, match="does not hold"):
        list(iter_blocks(arr))
    for codec, typesize in (("lz4", 2), ("zstd", 1)):
        dtype = "uint16" if typesize == 2 else "uint8"
        arr = zarr.create_array(str(tmp_path / codec), shape=(8, *ROW), chunks=(4, *ROW), dtype=dtype,
                                compressors=storage.compressors(codec, typesize=typesize))
        arr[:] = 5
        ok, comp, crc = zc.plain_codecs(zc.array_codecs(arr))
        assert ok and crc
        short = np.zeros(np.prod(ROW) * 2, dtype)  # half a chunk, validly encoded, with its checksum
        enc = comp.encode(short.view(np.uint8))
        path = tmp_path / codec / "c" / "1" / "0" / "0" / "0" / "0"
        path.write_bytes(enc + zc.crc32c_bytes(enc))
        with pytest.raises(LakeStateError, match="does not hold"):
            list(iter_blocks(arr))
        assert isinstance(comp, numcodecs.Blosc if codec == "lz4" else numcodecs.Zstd)
        damaged = bytearray(path.read_bytes())
        damaged[len(damaged) // 2] ^= 0xFF  # one flipped bit of payload: the checksum says so
        path.write_bytes(bytes(damaged))
        with pytest.raises(LakeStateError, match="checksum mismatch"):
            list(iter_blocks(arr))


def test_the_shard_buffer_bounds_incompressible_chunks():
    """What the shard buffer reserves per chunk holds the codecs' worst case (random bytes, small and large), and
    the decoded size the block reader checks is the one in the frame header."""
    import numcodecs

    rng = np.random.default_rng(4)
    codecs = [numcodecs.Zstd(level=1), numcodecs.Zstd(level=3),
              numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE, typesize=2),
              numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.BITSHUFFLE, typesize=2)]
    for n in (1, 100, 4096, 131_072, 1_310_720):
        raw = rng.integers(0, 256, n, dtype=np.uint8)
        for codec in codecs:
            enc = codec.encode(raw)
            assert len(enc) <= _max_encoded(n), (codec, n)
            assert _decoded_size(codec, enc) == n, (codec, n)  # read from the frame header


def test_a_failed_write_leaves_the_shard_as_it_was(tmp_path, monkeypatch):
    """A shard is written to a side file and renamed into place: when a write fails (here the writer thread's,
    as on a full disk), the error comes out once every queued write has finished, no side file is left, and the
    shard the lake held before is intact; the next write succeeds."""
    import errno

    from flair_lake import chunkio

    shape = (16, 5, 256, 256)  # 5 MiB uncompressed: its front goes to the writer thread
    arr = zarr.create_array(str(tmp_path / "a"), shape=shape, chunks=(1, *shape[1:]), shards=shape,
                            dtype="uint8", compressors=())
    old = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    write_shard(arr, 0, old)
    calls = []
    real = chunkio._pwrite

    def failing(fd, data, offset):
        calls.append(offset)
        if offset == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(chunkio, "_pwrite", failing)
    with pytest.raises(OSError, match="No space"):
        write_shard(arr, 0, np.zeros(shape, np.uint8))
    assert len(calls) >= 2  # the background write failed, the last one still ran: all were waited for
    assert not list((tmp_path / "a").rglob("*.partial"))
    assert np.array_equal(_read(tmp_path / "a", "python"), old)
    monkeypatch.setattr(chunkio, "_pwrite", real)
    write_shard(arr, 0, old[::-1].copy())
    assert np.array_equal(_read(tmp_path / "a", "python"), old[::-1])
