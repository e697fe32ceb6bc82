"""The lake as xarray (flair_lake.xr): labels against the raw tree, GeoTIFF round trips, views, super-areas, and
what opening a large lake reads."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import rasterio
import zarr
from zarr.storage import LocalStore

from flair_lake import lake as lk
from flair_lake import schema, storage
from flair_lake import zarr_compat as zc
from flair_lake.config import FilterConfig
from flair_lake.errors import LakeStateError, UsageError
from flair_lake.raw import names
from flair_lake.xr import VIEW_NODE, open_lake, patch, window

PATCH_SIZE = 512


def build_table_lake(path: str, n_patches: int = 4096, patches_per_area: int = 64, n_dates: int = 40, *,
                     status: np.ndarray | None = None, view_rows: int | None = None) -> dict:
    """Create a lake of ``n_patches`` 512 px patches whose images, Sentinel-2 series and monthly cube are never
    written (their arrays exist, their chunks do not); return the columns written.

    ``status`` gives each row's status (default: all landed; rows of status 0 get patch id -1, as padding rows
    do); ``view_rows`` the rows of the monthly view (default: all, fewer as after an append)."""
    root = lk.create_lake(path, lk.Layout(patch_size=PATCH_SIZE))
    lk.grow(root, n_patches)
    n_areas = -(-n_patches // patches_per_area)
    areas = [f"D0{6 + a % 3:02d}_2020-Z{a + 1}_NN" for a in range(n_areas)]
    domain_codes = lk.intern(root, "domains", [a.split("-")[0] for a in areas])
    lk.intern(root, "areas", areas)
    lk.intern(root, "cameras", ["UCE-M3-f120-s06"])
    area_of = np.arange(n_patches) // patches_per_area
    ids = np.arange(n_patches, dtype=np.int32) + 100_001
    x0 = 600_000.0 + 102.4 * (np.arange(n_patches) % 64)
    y0 = 6_500_000.0 - 102.4 * (np.arange(n_patches) // 64)
    step = schema.PATCH_FOOTPRINT_M / PATCH_SIZE
    cols = {
        "patch_id": ids,
        "domain": np.array([domain_codes[areas[a].split("-")[0]] for a in area_of], np.int16),
        "zone": area_of.astype(np.int32),
        "split": np.zeros(n_patches, np.uint8),
        "year": np.full(n_patches, 2020, np.int16),
        "camera": np.zeros(n_patches, np.int16),
        "centroid_x": x0 + 51.2, "centroid_y": y0 - 51.2, "centroid_z": np.full(n_patches, 200.0),
        "acquired": np.full(n_patches, 1_594_000_000, np.int64) + np.arange(n_patches),
        "s2_row": np.full(n_patches, 25, np.int32), "s2_col": np.full(n_patches, 25, np.int32),
        "crs_epsg": np.full(n_patches, schema.CRS_EPSG, np.int32),
        "has_label": np.ones(n_patches, np.uint8),
        "transform": np.stack([x0, np.full(n_patches, step), np.zeros(n_patches), y0, np.zeros(n_patches),
                               np.full(n_patches, -step)], axis=1),
        schema.STATUS_ARRAY: np.full(n_patches, schema.STATUS_OK, np.uint8) if status is None
        else np.asarray(status, np.uint8),
    }
    empty = cols[schema.STATUS_ARRAY] == schema.STATUS_EMPTY
    for spec in (*schema.COORDS, schema.TRANSFORM):  # rows without a patch hold fill values, as padding does
        cols[spec.name][empty] = spec.fill_value
    zc.write_arrays(list(cols.items()), slice(0, n_patches), root)
    dates = (np.arange(n_dates, dtype=np.int32) * 9 + 18_262)  # 2020-01-01 onwards
    for area in areas:
        g = root.require_group(f"{schema.SENTINEL_GROUP}/{area}")
        specs = {name: storage.create_kwargs(a, n_dates, storage.role_compressors(a))
                 for name, a in schema.sentinel_arrays(n_dates, 50, 50).items()}
        zc.create_arrays(g, specs)
        g["dates"][:] = dates
        g.attrs.update({"domain": area.split("-")[0], "zone": area.split("-")[1], "complete": True})
    cfg = FilterConfig(monthly=True)
    name = "cloud0.6-prob60-union-monthly-mean"
    vg = root.create_group(f"{schema.VIEWS_GROUP}/{name}", attributes={"params": {"monthly": True},
                                                                          "window": schema.S2_WINDOW,
                                                                          "complete": True})
    layouts = schema.view_arrays(schema.PATCHES_PER_SHARD, n_dates, schema.S2_WINDOW, True, reducer=cfg.reducer)
    rows = n_patches if view_rows is None else view_rows
    zc.create_arrays(vg, {k: storage.create_kwargs(a, rows, storage.role_compressors(a))
                               for k, a in layouts.items()})
    root[schema.VIEWS_GROUP].attrs["latest"] = name
    return cols


@pytest.fixture(scope="module")
def tree(monthly_lake):
    """Return the monthly lake opened as a tree."""
    return open_lake(monthly_lake)


def _raw_files(raw_tree, prefix: str) -> dict[str, object]:
    return {p.stem.replace(prefix, names.PATCH_PREFIX): p for p in raw_tree.rglob(f"{prefix}*.tif")}


def test_import_flair_lake_stays_light():
    code = "import sys, flair_lake; assert 'xarray' not in sys.modules; print(flair_lake.open_lake.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "flair_lake.xr"


def test_coordinates_match_the_raw_tree(tree, raw_tree):
    ds = tree.to_dataset()
    meta = json.loads((raw_tree / names.METADATA_JSON).read_text())
    images = _raw_files(raw_tree, "IMG_")
    assert sorted(ds.indexes["patch"]) == sorted(images)
    assert list(ds["band"].values) == list(schema.AERIAL_BANDS)
    for name in ds.indexes["patch"]:
        one, m = ds.sel(patch=name), meta[name]
        assert int(one.patch_id) == names.parse_patch_name(name)
        assert str(one.domain.values) == m["domain"]
        assert str(one.zone.values) == names.area_name(m["domain"], m["zone"])
        assert str(one.split.values) == (schema.official_split(m["domain"]) or "unknown")
        assert str(one.camera.values) == m["camera"]
        when = dt.datetime.strptime(f"{m['date']} {m['time']}", "%Y-%m-%d %Hh%M")
        assert one.acquired.values == np.datetime64(when, "ns")
        assert float(one.centroid_x) == pytest.approx(m["patch_centroid_x"])
        assert float(one.centroid_y) == pytest.approx(m["patch_centroid_y"])
        with rasterio.open(images[name]) as src:
            assert tuple(one.transform.values) == tuple(src.transform.to_gdal())
            assert int(one.crs_epsg) == src.crs.to_epsg()
    assert ds.aerial.dtype == np.uint8 and ds.aerial.chunks[0] == (1,) * ds.sizes["patch"]  # one patch per chunk
    assert ds.label.attrs["flag_meanings"][0] == schema.RAW_CLASSES[1][0]
    assert ds.attrs["class_colors"]["1"] == schema.RAW_CLASSES[1][1]


def test_patch_round_trip_through_rioxarray_equals_the_raw_geotiff(tree, raw_tree, tmp_path):
    images, labels = _raw_files(raw_tree, "IMG_"), _raw_files(raw_tree, "MSK_")
    ids = list(tree.to_dataset().indexes["patch"])
    for name in (ids[0], ids[-1]):
        one = tree.flair.patch(name)
        assert one.aerial.dims == ("band", "y", "x") and one.label.dims == ("y", "x")
        assert one.rio.crs.to_epsg() == schema.CRS_EPSG
        for var, raw in (("aerial", images[name]), ("label", labels[name])):
            out = tmp_path / f"{name}_{var}.tif"
            one[var].rio.to_raster(out, recalc_transform=False)
            with rasterio.open(out) as got, rasterio.open(raw) as want:
                assert np.array_equal(got.read(), want.read())
                assert got.transform == want.transform
                assert got.crs == want.crs
                centre = want.xy(0, 0)  # pixel centres: the x/y coordinates
                assert (float(one.x[0]), float(one.y[0])) == pytest.approx(centre, abs=1e-9)
            one[var].rio.to_raster(out)  # rioxarray derives the transform from x/y: equal to rounding
            with rasterio.open(out) as got, rasterio.open(raw) as want:
                assert np.allclose(got.transform.to_gdal(), want.transform.to_gdal(), rtol=1e-12, atol=1e-9)
    assert int(patch(tree.to_dataset(), names.parse_patch_name(ids[0])).patch_id) == names.parse_patch_name(ids[0])
    with pytest.raises(UsageError, match="IMG_999999"):
        patch(tree, "IMG_999999")


def test_view_and_super_areas_match_the_lake(tree, monthly_lake):
    root = zarr.open_group(monthly_lake, mode="r")
    name = lk.resolve_view(root, monthly_lake, None)
    vg = root[f"{schema.VIEWS_GROUP}/{name}"]
    view = tree[VIEW_NODE].to_dataset()
    assert view.attrs["name"] == name
    assert list(view.month.values) == list(range(1, schema.MONTHS + 1))
    assert list(view.s2_band.values) == list(schema.S2_BANDS)
    assert view.monthly.dims == ("patch", "month", "s2_band", "row", "col")
    rows = tree.to_dataset().lake_row.values
    np.testing.assert_array_equal(view.month_count.values, vg["month_count"][:][rows])
    np.testing.assert_array_equal(view.keep.values, vg["keep"][:][rows])
    k = len(rows) // 2
    np.testing.assert_array_equal(view.monthly.isel(patch=k).values, vg["monthly"][int(rows[k])])
    assert str(view.domain.values[k]) == str(tree.to_dataset().domain.values[k])  # inherited coordinates
    for area in root.attrs["areas"]:
        node = tree[f"{schema.SENTINEL_GROUP}/{area}"].to_dataset(inherit=False)
        days = root[f"{schema.SENTINEL_GROUP}/{area}/dates"][:]
        np.testing.assert_array_equal(node.time.values, np.datetime64("1970-01-01", "ns") + days.astype(
            "timedelta64[D]"))
        assert node.data.dims == ("time", "s2_band", "row", "col")
    one = tree.to_dataset().isel(patch=k)
    win = window(tree, str(one.patch.values))
    r, c, h = int(one.s2_row), int(one.s2_col), schema.S2_WINDOW // 2
    area = root[f"{schema.SENTINEL_GROUP}/{str(one.zone.values)}"]
    np.testing.assert_array_equal(win.data.values, area["data"][:, :, r - h:r + h, c - h:c + h])
    assert win.sizes["row"] == win.sizes["col"] == schema.S2_WINDOW


def test_a_lake_without_a_view(lake):
    tree = open_lake(lake, sentinel=False)
    assert VIEW_NODE not in tree.children and schema.SENTINEL_GROUP not in tree.children
    with pytest.raises(UsageError, match="sentinel=True"):
        window(tree, str(tree.to_dataset().patch.values[0]))
    with pytest.raises(LakeStateError, match="not in"):
        open_lake(lake, view="nope")


def test_landed_only_and_a_view_shorter_than_the_lake(tmp_path):
    n = 256
    status = np.full(n, schema.STATUS_OK, np.uint8)
    status[10:20], status[200:] = schema.STATUS_QUARANTINED, schema.STATUS_EMPTY
    cols = build_table_lake(str(tmp_path / "lake.zarr"), n, 64, status=status, view_rows=128)
    tree = open_lake(str(tmp_path / "lake.zarr"))
    ds = tree.to_dataset()
    landed = np.flatnonzero(status == schema.STATUS_OK)
    np.testing.assert_array_equal(ds.lake_row.values, landed)
    assert list(ds.indexes["patch"]) == [names.patch_name(i) for i in cols["patch_id"][landed]]
    assert ds.aerial.sizes["patch"] == landed.size
    view = tree[VIEW_NODE].to_dataset()  # rows 128.. are past the view's arrays: fill values, lazily
    assert view.monthly.sizes["patch"] == landed.size
    assert int(view.month_count.isel(patch=-1).sum()) == 0
    every = open_lake(str(tmp_path / "lake.zarr"), landed_only=False).to_dataset()
    assert every.sizes["patch"] == n
    assert str(every.patch.values[-1]) == f"row_{n - 1}" and str(every.split.values[-1]) == "unknown"
    assert str(every.domain.values[-1]) == ""
    with pytest.raises(UsageError, match="status 2"):
        patch(every, names.patch_name(cols["patch_id"][10]))


def test_opening_4096_patches_reads_no_image_or_cube_chunk(tmp_path, monkeypatch):
    path = str(tmp_path / "lake.zarr")
    build_table_lake(path, 4096)
    reads: list[str] = []
    get, get_partial = LocalStore.get, LocalStore.get_partial_values

    async def counting_get(self, key, *args, **kwargs):
        reads.append(key)
        return await get(self, key, *args, **kwargs)

    async def counting_get_partial(self, prototype, key_ranges):
        key_ranges = list(key_ranges)
        reads.extend(k for k, _ in key_ranges)
        return await get_partial(self, prototype, key_ranges)

    monkeypatch.setattr(LocalStore, "get", counting_get)
    monkeypatch.setattr(LocalStore, "get_partial_values", counting_get_partial)
    with zarr.config.set(zc.PYTHON_PIPELINE):  # zarr-python's pipeline reads through the store (zarrs does not)
        t0 = time.perf_counter()
        tree = open_lake(path)
        seconds = time.perf_counter() - t0
    print(f"open_lake of 4,096 patches, 64 super-areas and a monthly view: {seconds:.3f} s, {len(reads)} reads")
    chunk_reads = [k for k in reads if "/c/" in k or k.endswith("/c")]
    assert any(k.startswith(f"{schema.STATUS_ARRAY}/c/") for k in chunk_reads)  # the columns are read ...
    image = [k for k in chunk_reads if k.split("/")[0] in ("aerial", "label") or "/monthly/" in k
             or "/data/" in k or "/masks/" in k]
    assert image == []  # ... no image, label, cube or Sentinel-2 chunk is
    ds = tree.to_dataset()
    assert ds.aerial.shape == (4096, schema.N_AERIAL_BANDS, 512, 512)
    assert tree[VIEW_NODE].monthly.shape == (4096, schema.MONTHS, schema.N_S2_BANDS, schema.S2_WINDOW,
                                             schema.S2_WINDOW)
    assert isinstance(ds.aerial.data, type(tree[VIEW_NODE].monthly.data))  # dask, both
