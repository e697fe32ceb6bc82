"""The whole-shard writer: what it writes, zarr reads back exactly (both codec pipelines); what it does not
know, it leaves to zarr."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from flair_lake import lake as lk
from flair_lake.shards import _layout, write_shard

ROW = (3, 2, 5, 7)  # one row's shape (like a patch's months x bands x rows x cols, smaller)


def _array(path, codec: str, *, rows: int, inner: int = 1, dtype="uint16", per_shard: int = 4, fill=0):
    typesize = np.dtype(dtype).itemsize
    return zarr.create_array(str(path), shape=(rows, *ROW), chunks=(inner, *ROW), shards=(per_shard, *ROW),
                             dtype=dtype, fill_value=fill, compressors=lk.compressors(codec, 1, typesize=typesize))


def _read(path, pipeline: str) -> np.ndarray:
    conf = {"codec_pipeline.path": "zarr.core.codec_pipeline.BatchedCodecPipeline"} if pipeline == "python" \
        else lk.ZARRS_PIPELINE
    with zarr.config.set(conf):
        return zarr.open_array(str(path), mode="r")[:]


@pytest.mark.parametrize("codec", ["lz4", "zstd", "none"])
@pytest.mark.parametrize("direct", [False, True])
def test_whole_shards_read_back_exactly(tmp_path, codec, direct):
    """Full shards and the array's last, partial shard (inner chunks of 1 and of 3 rows: a padded last chunk and
    unstored chunks past the end) read back bit-exact through zarr-python (which checks the index CRC32C) and
    zarrs; rewriting a shard replaces it whole."""
    if direct and not lk._direct_io_supported(str(tmp_path)):
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


def test_bool_and_single_byte_arrays(tmp_path):
    arr = _array(tmp_path / "b", "zstd", rows=6, dtype="bool", fill=False)
    values = np.random.default_rng(1).random((6, *ROW)) > 0.5
    write_shard(arr, 0, values[:4])
    write_shard(arr, 1, values[4:])
    assert np.array_equal(_read(tmp_path / "b", "python"), values)


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
