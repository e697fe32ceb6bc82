"""The zarr-internals guard: on a zarr whose internals are not supported (forced off here), every fast path takes
zarr's public API and the same lake bytes, arrays and batches come out."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from flair_lake import lake as lk
from flair_lake import schema, storage
from flair_lake import zarr_compat as zc
from flair_lake.loader import LakeDataset, collate

VOLATILE = {"runs", "created", "updated", "seconds", "lake_id", "current_since"}  # times, ids, and the run records


def _clean(doc):
    if isinstance(doc, dict):
        return {k: _clean(v) for k, v in doc.items() if k not in VOLATILE}
    if isinstance(doc, list):
        return [_clean(v) for v in doc]
    return doc


def _files(lake: str) -> dict[str, Path]:
    return {str(p.relative_to(lake)): p for p in sorted(Path(lake).rglob("*")) if p.is_file()}


def test_the_guard_follows_the_version_and_the_environment(monkeypatch):
    monkeypatch.delenv(zc.INTERNALS_ENV, raising=False)
    assert zc.internals_supported() == (zarr.__version__ in zc.ZARR_CHECKED)
    with zc.internals_forced(False):
        assert not zc.internals_supported() and not zc.zarrs_supported() and not storage.zarrs_available()
    with zc.internals_forced(True):
        assert zc.internals_supported()
    assert zc.INTERNALS_ENV not in os.environ  # restored


def test_lake_helpers_give_the_same_lake_either_way(tmp_path):
    """create_lake, grow, write_arrays and read_arrays: one event-loop round each, or one public call an array;
    the same files come out."""
    lakes = {}
    cols = {"patch_id": np.arange(10, dtype=np.int32), "split": np.array([0, 1, 2, 255, 0, 1, 2, 0, 0, 1], np.uint8)}
    for mode in (True, False):
        path = str(tmp_path / f"lake-{mode}")
        with zc.internals_forced(mode):
            root = lk.create_lake(path, lk.Layout(patch_size=16, patches_per_shard=4))
            lk.grow(root, 10)
            zc.write_arrays([("patch_id", cols["patch_id"]), (root["split"], cols["split"])], slice(0, 10), root)
            got = zc.read_arrays(root, ("patch_id", "split", "status"))
        assert np.array_equal(got["patch_id"], cols["patch_id"]) and np.array_equal(got["split"], cols["split"])
        assert np.array_equal(got["status"], np.zeros(10, np.uint8))
        lakes[mode] = _files(path)
    assert set(lakes[True]) == set(lakes[False])
    for name, p in lakes[True].items():
        a, b = p.read_bytes(), lakes[False][name].read_bytes()
        if name == "zarr.json":  # the root: each lake has its own id
            a, b = (json.dumps(_clean(json.loads(x))).encode() for x in (a, b))
        assert a == b, name


@pytest.mark.parametrize("enabled", [True, False])
def test_metadata_documents_are_checked_either_way(lake, enabled):
    """Every zarr.json of a lake parses; a document zarr cannot open is refused (validate's check)."""
    with zc.internals_forced(enabled):
        for p in Path(lake).rglob("zarr.json"):
            zc.check_metadata(p.read_text())
        doc = json.loads((Path(lake) / "aerial" / "zarr.json").read_text())
        doc["chunk_grid"]["configuration"]["chunk_shape"] = "not a shape"
        with pytest.raises(Exception):  # noqa: B017 - zarr's own errors, whichever its parser raises
            zc.check_metadata(json.dumps(doc))
        with pytest.raises(Exception):  # noqa: B017
            zc.check_metadata(json.dumps({"zarr_format": 3, "node_type": "table"}))


def test_metadata_buffers_and_chunk_keys(tmp_path):
    """What validate reads and writes through: store get and set in zarr's buffers, run on zarr's loop; chunk
    keys as the array's metadata encodes them."""
    store = zarr.storage.LocalStore(str(tmp_path / "s"))
    zc.sync(store.set("a/zarr.json", zc.buffer_from_bytes(b'{"x": 1}')))
    assert zc.sync(store.get("a/zarr.json", prototype=zc.buffer_prototype())).to_bytes() == b'{"x": 1}'
    arr = zarr.create_array(str(tmp_path / "arr"), shape=(8, 3), chunks=(1, 3), shards=(4, 3), dtype="uint8")
    assert zc.chunk_key(arr, (1, 0)) == "c/1/0"
    assert zc.chunk_path(arr, 1) == tmp_path / "arr" / "c" / "1" / "0"


@pytest.mark.slow
def test_ingest_and_filter_write_the_same_lake_without_internals(raw_tree, monthly_lake, tmp_path):
    """Ingest and a monthly filter with zarr's internals off write the same lake: every metadata document, every
    shard the direct writer writes (now written by zarr), every array's values. Other chunk files are compared
    whole when zarrs is absent; with it, the lake's small columns are encoded by zarrs on one side and by
    zarr-python on the other, whose Zstd output may differ by a byte for the same values."""
    from flair_lake.config import FilterConfig, IngestConfig
    from pipelines.filter import run_filter
    from pipelines.ingest import ingest

    path = str(tmp_path / "lake.zarr")
    with zc.internals_forced(False):  # Dask's worker processes inherit it
        ingest(raw_tree, path, IngestConfig(workers=1, patches_per_shard=8), progress=False)
        run_filter(path, FilterConfig(monthly=True), workers=1, progress=False)
    ours, theirs = _files(monthly_lake), _files(path)
    assert set(ours) == set(theirs)
    for name, p in ours.items():
        a, b = p.read_bytes(), theirs[name].read_bytes()
        if p.name == "zarr.json":
            doc = json.loads(a)
            if doc["node_type"] == "group":
                assert _clean(doc) == _clean(json.loads(b)), name
                continue
        written_whole = name.split("/")[0] in ("aerial", "label") or "/monthly/" in name
        if p.name == "zarr.json" or written_whole or not storage.zarrs_available():
            assert a == b, name
    root_a, root_b = zarr.open_group(monthly_lake, mode="r"), zarr.open_group(path, mode="r")
    groups = [""] + [f"{top}/{sub}" for top in (schema.SENTINEL_GROUP, schema.VIEWS_GROUP)
                     for sub, _ in root_a[top].groups()]
    paths = [f"{g}/{n}".lstrip("/") for g in groups for n, _ in (root_a[g] if g else root_a).arrays()]
    assert len(paths) > 20 and "aerial" in paths
    for p in paths:
        np.testing.assert_array_equal(root_a[p][...], root_b[p][...], err_msg=p)


def test_the_loader_reads_the_same_batches_without_internals(monthly_lake, lake):
    """The batch read (one codec-pipeline call per array) and its public fallback (one read a row) give the
    same batches: a monthly view's, read whole, and samples without a view; rows in any order, repeated."""
    order = [5, 0, 3, 3, 11, 7]
    for path in (monthly_lake, lake):
        batches = []
        for enabled in (True, False):
            with zc.internals_forced(enabled):
                ds = LakeDataset(path, split="all")
                batches.append(collate(ds.__getitems__(order)))
        assert batches[0].keys() == batches[1].keys() == set(schema.SAMPLE_KEYS)
        for key in batches[0]:
            assert torch.equal(batches[0][key], batches[1][key]), key


def test_the_table_reads_the_same_either_way(lake):
    """read_arrays of the lake's whole table equals zarr's own reads, in one round or one array at a time."""
    root = zarr.open_group(lake, mode="r")
    names = schema.lake_arrays(int(root.attrs["patch_size"]), int(root.attrs["patches_per_shard"]))
    table = [n for n in names if n not in ("aerial", "label")]
    for enabled in (True, False):
        with zc.internals_forced(enabled):
            got = zc.read_arrays(root, table)
        for n in table:
            np.testing.assert_array_equal(got[n], root[n][:], err_msg=n)
