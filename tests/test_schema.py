"""The lake layout has one home: schema's declarations are what the lake and its views hold, and what
docs/lake-format.md lists; the patch id format has one home too."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import zarr

from flair_lake import lake as lk
from flair_lake import schema, storage
from flair_lake.raw import names

DOC = Path(__file__).resolve().parents[1] / "docs" / "lake-format.md"
HEADER = "| array | dims | dtype | fill | chunk | shard | codec | content |"
# distinct sizes, so that every size in a declaration can be written back as the symbol the doc uses
P, S, T_MAX, WINDOW, T, H, W = 1001, 1002, 1003, 1004, 1005, 1006, 1007


def _tuple(values, symbols: dict[int, str]) -> str:
    return "(" + ", ".join(symbols.get(v, str(v)) if isinstance(v, int) else v for v in values) + ")"


def _fill(value) -> str:
    if isinstance(value, bool):
        return str(value)
    return "NaN" if isinstance(value, float) and math.isnan(value) else f"{value:g}"


def _row(layout: schema.ArrayLayout, symbols: dict[int, str]) -> list[str]:
    shards = _tuple(layout.shards, symbols) if layout.shards else "-"
    return [f"`{layout.name}`", _tuple(layout.dims, {}), layout.dtype, _fill(layout.fill_value),
            _tuple(layout.chunks, symbols), shards, layout.codec_role]


def _doc_tables() -> list[dict[str, list[str]]]:
    """Return each array table of the doc: {array cell: its cells but the content}."""
    tables, current = [], None
    for line in DOC.read_text().splitlines():
        if line.strip() == HEADER:
            current = {}
            tables.append(current)
        elif current is not None and line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not set(cells[0]) <= set("-"):
                current[cells[0]] = cells[:7]
        else:
            current = None
    return tables


def test_the_doc_tables_are_the_declarations():
    lake, sentinel, view = _doc_tables()
    for table, layouts, symbols in (
            (lake, schema.lake_arrays(P, S), {P: "P", S: "S"}),
            (sentinel, schema.sentinel_arrays(T, H, W), {T: "T", H: "H", W: "W"}),
            (view, schema.view_arrays(S, T_MAX, WINDOW, monthly=True), {S: "S", T_MAX: "T_max", WINDOW: "W"})):
        assert list(table) == [f"`{name}`" for name in layouts]
        for layout in layouts.values():
            assert table[f"`{layout.name}`"] == _row(layout, symbols), layout.name
    text = DOC.read_text()
    legend = text[text.index("| codec | codecs |"):].split("\n\n")[0].splitlines()[2:]
    assert [line.split("|")[1].strip() for line in legend] == list(schema.CODEC_ROLES)


def test_view_arrays_without_monthly_and_small_series():
    arrays = schema.view_arrays(8, 0, 40, monthly=False)
    assert list(arrays) == ["cover", "keep", "n_dates"]
    assert arrays["cover"].shape(5) == (5, 0) and arrays["cover"].chunks == (8, 1)
    assert schema.sentinel_arrays(3, 10, 12)["data"].chunks == (3, 10, 10, 12)
    assert schema.sentinel_arrays(0, 10, 12)["dates"].chunks == (1,)


def _assert_stored_as(arr: zarr.Array, layout: schema.ArrayLayout, n_rows: int, compressors: tuple) -> None:
    """Check an array's metadata against its declaration and the codecs its role gives."""
    name = layout.name
    assert arr.shape == layout.shape(n_rows), name
    assert arr.chunks == layout.chunks and arr.shards == layout.shards, name
    assert str(arr.dtype) == layout.dtype and arr.metadata.dimension_names == layout.dims, name
    assert np.array_equal(np.asarray(arr.fill_value), np.asarray(layout.fill_value), equal_nan=True), name
    assert arr.attrs.asdict() == layout.attributes(), name
    assert [c.to_dict() for c in arr.compressors] == [c.to_dict() for c in compressors], name


def test_a_lake_holds_what_is_declared(lake):
    """Per-patch arrays, Sentinel super-areas: shape, chunks, shards, dtype, dims, fill value, attributes, codecs."""
    from flair_lake.config import IngestConfig

    root = zarr.open_group(lake, mode="r")
    p, s, codec = int(root.attrs["patch_size"]), int(root.attrs["patches_per_shard"]), root.attrs["codec"]
    n = lk.n_rows(root)
    layouts = schema.lake_arrays(p, s)
    assert sorted(layouts) == sorted(name for name, _ in root.arrays())
    for name, layout in layouts.items():
        _assert_stored_as(root[name], layout, n, storage.role_compressors(layout, codec, IngestConfig.zstd_level))
    areas = list(root[schema.SENTINEL_GROUP].groups())
    assert areas
    for _, g in areas:
        t, _, h, w = g["data"].shape
        for name, layout in schema.sentinel_arrays(t, h, w).items():
            comps = storage.role_compressors(layout, IngestConfig.sentinel_codec, IngestConfig.zstd_level)
            _assert_stored_as(g[name], layout, t, comps)


def test_a_view_holds_what_is_declared(monthly_lake):
    from flair_lake.config import MONTHLY_LEVEL

    root = zarr.open_group(monthly_lake, mode="r")
    name = root[schema.VIEWS_GROUP].attrs["latest"]
    vg = root[f"{schema.VIEWS_GROUP}/{name}"]
    params = vg.attrs["params"]
    t_max = vg["cover"].shape[1]
    layouts = schema.view_arrays(int(root.attrs["patches_per_shard"]), t_max, int(vg.attrs["window"]),
                                 params["monthly"], reducer=params["reducer"])
    assert sorted(layouts) == sorted(n for n, _ in vg.arrays())
    for layout in layouts.values():
        comps = storage.role_compressors(layout, params["codec"], MONTHLY_LEVEL)
        _assert_stored_as(vg[layout.name], layout, lk.n_rows(root), comps)


def test_create_kwargs_leave_out_shards_of_unsharded_arrays():
    layouts = schema.lake_arrays(32, 4)
    kw = storage.create_kwargs(layouts["aerial"], 0, ())
    assert kw["shape"] == (0, 5, 32, 32) and kw["chunks"] == (1, 5, 32, 32) and kw["shards"] == (4, 5, 32, 32)
    assert "shards" not in storage.create_kwargs(layouts["patch_id"], 0, ())
    assert storage.create_kwargs(layouts["status"], 3, ())["attributes"]["flag_values"] == [0, 1, 2]


@pytest.mark.parametrize("pid", [0, 1, 123, 40001, 999999, 1234567])
def test_patch_names_round_trip(pid):
    name = names.patch_name(pid)
    assert name == f"IMG_{pid:06d}" and names.img_name(pid) == f"{name}.tif"
    assert names.parse_patch_name(name) == pid and names.parse_patch_name(name.lower()) == pid
    assert names.parse_patch_name(str(pid)) == pid and names.parse_id(names.img_name(pid)) == pid


@pytest.mark.parametrize("text", ["", "IMG_", "IMG_12a", "MSK_000001", "-3", "1.5", "²"])
def test_what_is_not_a_patch_name(text):
    assert names.parse_patch_name(text) is None
