"""The lake as labelled, lazy xarray objects: :func:`open_lake`, and georeferenced patches through rioxarray.

:func:`open_lake` returns an :class:`xarray.DataTree`:

- the root Dataset: ``aerial`` (patch, band, y, x) and ``label`` (patch, y, x), dask-backed with one dask chunk
  per stored chunk (one patch), indexed by patch names (``IMG_150001``) and carrying every per-patch column as a
  coordinate, the string codes decoded (domain, zone, split, camera), ``acquired`` as ``datetime64``;
- ``view``: the filter view (cover, keep and n_dates per patch; a monthly view adds the cube with ``month``
  1..12 and ``s2_band`` names, ``month_count`` and ``month_days``) on the root's patches, with their per-patch
  coordinates;
- ``sentinel/<area>``: each super-area's series (``data``, ``masks``) on a ``time`` coordinate from its dates.

Opening reads metadata and the small per-patch columns only (and each area's ``dates``); pixels are read when a
computation asks for them. :func:`patch` gives one patch's aerial image and label with x/y coordinates in its CRS
and the CRS and transform written for rioxarray, so ``.rio.to_raster`` writes the raw GeoTIFF's grid;
:func:`window` a patch's Sentinel-2 window. ``tree.flair.patch(...)`` and ``tree.flair.window(...)`` are the same.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import dask.array as da
import numpy as np
import xarray as xr
from xarray.backends import ZarrStore
from xarray.coding.times import CFDatetimeCoder

from flair_lake import lake as lk
from flair_lake import schema
from flair_lake import zarr_compat as zc
from flair_lake.errors import UsageError
from flair_lake.raw.names import parse_patch_name, patch_name

VIEW_NODE = "view"  # the child node holding the view
ROW_COORD = "lake_row"  # each patch's row in the lake's arrays
IMAGE_VARS = ("aerial", "label")  # the root's data variables: everything else of the root is a coordinate
DECODED = {"domain": "domains", "zone": "areas", "camera": "cameras"}  # column -> its string table in attrs
TIME_DIM = "time"  # a super-area's date axis, indexed by its sensing dates
DATES = "dates"  # a super-area's array of sensing dates
OPEN_THREADS = 8  # threads opening the super-areas: they mostly wait on metadata reads
UNKNOWN = "unknown"  # decoded split of a domain outside the official lists (and of rows without a patch)


def _open_group_dataset(path: str, group, drop: tuple[str, ...] = ()) -> xr.Dataset:
    """Return the Dataset of an open zarr group through xarray's zarr backend: lazy, one dask chunk per stored
    (inner) chunk, CF-decoded (times), the zarr fill value not taken as a missing-value mask."""
    store = ZarrStore(group, mode="r", use_zarr_fill_value_as_mask=False)
    return xr.open_dataset(path, engine="zarr", store=store, chunks={}, drop_variables=list(drop))


def _take(data, rows: np.ndarray, n: int):
    """Return ``data[rows]`` along the first axis, as a slice when ``rows`` is a contiguous run (cheaper graph)."""
    if rows.size and rows[-1] - rows[0] + 1 == rows.size:
        return data[int(rows[0]):int(rows[-1]) + 1] if rows.size != n else data
    return data[rows]


def _decode(codes: np.ndarray, table: list[str], missing: str = "") -> np.ndarray:
    """Return the strings of integer ``codes`` into ``table``; codes outside it (fill values) give ``missing``."""
    lut = np.asarray([*table, missing], dtype=object)
    idx = np.where((codes >= 0) & (codes < len(table)), codes, len(table))
    return lut[idx].astype(str)


def open_lake(path: str, view: str | None = None, storage_options: dict | None = None, *,
              landed_only: bool = True, sentinel: bool = True) -> xr.DataTree:
    """Open a lake as an :class:`xarray.DataTree` of lazy, labelled arrays (module docstring).

    Args:
        path: path or URL of the lake.
        view: view of the ``view`` node (default: the latest, as the loader picks it; no node when the lake has
            no view).
        storage_options: fsspec options of an object store.
        landed_only: keep only the ingested patches (status 1); False keeps every row (rows without a patch,
            padding between runs, are named ``row_<n>``).
        sentinel: add a ``sentinel/<area>`` node per super-area (False opens faster when only the patches and
            the view are wanted).

    Returns:
        The tree: root Dataset of images and per-patch coordinates, ``view`` and ``sentinel/<area>`` nodes.

    Raises:
        LakeNotFoundError, LakeStateError: no lake at ``path``, not a lake, or ``view`` is not in it.
    """
    root = lk.open_lake(path, storage_options=storage_options)
    top, rows = _root_dataset(path, root, landed_only)
    nodes: dict[str, xr.Dataset] = {"/": top}
    name = lk.resolve_view(root, path, view)
    if name is not None:
        per_patch = {k: v for k, v in top.coords.items() if v.dims == (schema.PATCH_DIM,) and k != schema.PATCH_DIM}
        nodes[f"/{VIEW_NODE}"] = _view_dataset(path, root, name, rows).assign_coords(per_patch)
    if sentinel:
        nodes.update(_sentinel_datasets(path, root))
    return xr.DataTree.from_dict(nodes)


def _root_dataset(path: str, root, landed_only: bool) -> tuple[xr.Dataset, np.ndarray]:
    """Return the root Dataset (images lazy, the per-patch columns read and decoded) and the lake rows it holds."""
    attrs = root.attrs.asdict()
    ds = _open_group_dataset(path, root)
    order = [*(c.name for c in schema.COORDS), schema.TRANSFORM.name, schema.STATUS_ARRAY]
    cols = [n for n in order if n in ds.data_vars]
    cols += sorted(n for n in ds.data_vars if n not in order and n not in IMAGE_VARS)
    # the small per-patch columns, read in one event-loop round (a third of the time of a dask compute of the
    # same columns), then CF-decoded as the backend would (times)
    raw = zc.read_arrays(root, cols)
    table = xr.decode_cf(xr.Dataset({c: xr.Variable(ds[c].dims, raw[c], root[c].attrs.asdict()) for c in cols}))
    n = ds.sizes[schema.PATCH_DIM]
    rows = np.flatnonzero(table[schema.STATUS_ARRAY].values == schema.STATUS_OK) if landed_only else np.arange(n)
    table = table.isel({schema.PATCH_DIM: rows})
    names = [patch_name(i) if i >= 0 else f"row_{r}" for i, r in zip(table["patch_id"].values.tolist(),
                                                                     rows.tolist())]
    coords: dict[str, xr.Variable] = {schema.PATCH_DIM: xr.Variable(schema.PATCH_DIM, np.asarray(names)),
                                      ROW_COORD: xr.Variable(schema.PATCH_DIM, rows),
                                      "band": xr.Variable("band", np.asarray(schema.AERIAL_BANDS))}
    for name in cols:
        var = table.variables[name]
        values = var.values
        if name in DECODED:
            values = _decode(values, attrs.get(DECODED[name], []))
        elif name == "split":
            values = _decode(values, attrs.get("split_names", list(schema.SPLIT_NAMES)), UNKNOWN)
        elif name == "has_label":
            values = values.astype(bool)
        coords[name] = xr.Variable(var.dims, values, var.attrs)
    data = {name: xr.Variable(ds[name].dims, _take(ds[name].data, rows, n), ds[name].attrs, ds[name].encoding)
            for name in IMAGE_VARS}
    codes = [int(k) for k in attrs.get("classes", {})]
    data["label"].attrs.update({"flag_values": codes,
                                "flag_meanings": [attrs["classes"][str(c)] for c in codes],
                                "flag_colors": [attrs.get("class_colors", {}).get(str(c), "") for c in codes]})
    return xr.Dataset(data, coords=coords, attrs=attrs), rows


def _view_dataset(path: str, root, name: str, rows: np.ndarray) -> xr.Dataset:
    """Return view ``name`` on the lake rows ``rows``: rows beyond the view's arrays (patches appended after it
    was built) read as the arrays' fill values, as rows the filter has not reached yet do."""
    group = root[f"{schema.VIEWS_GROUP}/{name}"]
    ds = _open_group_dataset(path, group)
    n = ds.sizes.get(schema.PATCH_DIM, 0)
    inside = rows[rows < n]
    out = {}
    for var_name, var in ds.data_vars.items():
        data = _take(var.data, inside, n)
        if inside.size < rows.size:  # rows are sorted: the missing ones come last
            fill = var.encoding.get("fill_value", 0)
            pad = da.full((rows.size - inside.size, *data.shape[1:]), fill, dtype=data.dtype,
                          chunks=(1, *data.shape[1:]))
            data = da.concatenate([data, pad])
        out[var_name] = xr.Variable(var.dims, data, var.attrs, var.encoding)
    coords = {}
    if "month" in ds.dims:
        coords["month"] = ("month", np.arange(1, schema.MONTHS + 1))
    if "s2_band" in ds.dims:
        coords["s2_band"] = ("s2_band", np.asarray(schema.S2_BANDS))
    return xr.Dataset(out, coords=coords, attrs={"name": name, **group.attrs.asdict()})


def _sentinel_datasets(path: str, root) -> dict[str, xr.Dataset]:
    """Return ``{"/sentinel/<area>": Dataset}`` of every super-area, its dates as the ``time`` index.

    The areas' ``dates`` are read in one event-loop round and the areas opened on a few threads: opening one
    waits on its metadata reads, and a lake holds hundreds of areas.
    """
    group = root.get(schema.SENTINEL_GROUP)
    areas = sorted(group.groups()) if group is not None else []
    if not areas:
        return {}
    days = zc.read_arrays(group, [f"{name}/{DATES}" for name, _ in areas])
    dates_attrs = schema.sentinel_arrays(0, 0, 0)[DATES].attributes()
    with ThreadPoolExecutor(OPEN_THREADS) as pool:
        datasets = pool.map(lambda g: _open_group_dataset(path, g[1], drop=(DATES,)), areas)
        return {f"/{schema.SENTINEL_GROUP}/{name}": _area(ds, days[f"{name}/{DATES}"], dates_attrs)
                for (name, _), ds in zip(areas, datasets)}


def _area(ds: xr.Dataset, days: np.ndarray, attrs: dict) -> xr.Dataset:
    """Return a super-area's Dataset on the ``time`` index (its ``days`` decoded by xarray's CF time decoding
    with the array's ``attrs``), with the band names as coordinates."""
    time = CFDatetimeCoder().decode(xr.Variable((TIME_DIM,), days, attrs), name=DATES)
    ds = ds.rename({schema.DATE_DIM: TIME_DIM})
    return ds.assign_coords({TIME_DIM: time, "s2_band": ("s2_band", np.asarray(schema.S2_BANDS)),
                             "mask_band": ("mask_band", np.asarray(schema.S2_MASK_BANDS))})


def _root(lake: xr.DataTree | xr.Dataset) -> xr.Dataset:
    """Return the root Dataset of a tree from :func:`open_lake` (or the Dataset itself)."""
    return lake.to_dataset() if isinstance(lake, xr.DataTree) else lake


def _select(ds: xr.Dataset, patch: str | int) -> xr.Dataset:
    """Return the patch ``patch`` (a name such as ``IMG_150001`` or its number) of the root Dataset."""
    pid = parse_patch_name(patch)
    name = patch_name(pid) if pid is not None else str(patch)
    if name not in ds.indexes[schema.PATCH_DIM]:
        raise UsageError(f"patch {patch!r} is not among the lake's {ds.sizes[schema.PATCH_DIM]} patches; give an "
                         "id such as IMG_150001 (`flair-lake info LAKE` lists the domains)")
    return ds.sel({schema.PATCH_DIM: name})


def patch(lake: xr.DataTree | xr.Dataset, patch_id: str | int) -> xr.Dataset:
    """Return one patch as a georeferenced Dataset: ``aerial`` (band, y, x) and ``label`` (y, x).

    ``x`` and ``y`` are the pixel centres in the patch's CRS (Lambert-93), from its GDAL transform; the CRS and
    the transform are written for rioxarray (``.rio.crs``, ``.rio.transform()``). ``.rio.to_raster(path,
    recalc_transform=False)`` writes the raw GeoTIFF's pixels, transform and CRS exactly; without
    ``recalc_transform=False`` rioxarray derives the transform from the coordinates, equal to ~1e-12 m.
    The pixels stay lazy until asked for.

    Args:
        lake: the tree of :func:`open_lake` (or its root Dataset).
        patch_id: ``IMG_150001``, ``150001`` or 150001.

    Raises:
        UsageError: the patch is not in the lake (or not landed, when the tree holds landed patches only).
    """
    import rioxarray  # noqa: F401 - registers the .rio accessor
    from affine import Affine

    one = _select(_root(lake), patch_id)
    if int(one[schema.STATUS_ARRAY]) != schema.STATUS_OK:
        raise UsageError(f"patch {patch_id!r} has status {int(one[schema.STATUS_ARRAY])}, not 1 (ingested): it has "
                         "no pixels; `flair-lake info LAKE` lists the quarantined patches and why")
    t = Affine.from_gdal(*one["transform"].values.tolist())
    x = t.c + t.a * (np.arange(one.sizes["x"]) + 0.5)
    y = t.f + t.e * (np.arange(one.sizes["y"]) + 0.5)
    out = one[list(IMAGE_VARS)].assign_coords(x=("x", x), y=("y", y))
    out.attrs = {}  # the lake's attributes (runs, statistics) say nothing about one patch
    return out.rio.write_crs(f"EPSG:{int(one['crs_epsg'])}").rio.write_transform(t)


@xr.register_datatree_accessor("flair")
class FlairAccessor:
    """``tree.flair``: shortcuts on a tree from :func:`open_lake`."""

    def __init__(self, tree: xr.DataTree):
        self._tree = tree

    def patch(self, patch_id: str | int) -> xr.Dataset:
        """Return one patch, georeferenced (:func:`patch`)."""
        return patch(self._tree, patch_id)

    def window(self, patch_id: str | int, size: int | None = None) -> xr.Dataset:
        """Return the patch's Sentinel-2 window (:func:`window`)."""
        return window(self._tree, patch_id, size)


def window(tree: xr.DataTree, patch_id: str | int, size: int | None = None) -> xr.Dataset:
    """Return a patch's Sentinel-2 window: ``data`` (time, s2_band, row, col) and ``masks`` of its super-area.

    ``row`` and ``col`` are the pixel indices in the area's 10 m grid (the raw super-areas carry no
    georeferencing, and a centroid only locates its pixel).

    Args:
        tree: the tree of :func:`open_lake`.
        patch_id: ``IMG_150001``, ``150001`` or 150001.
        size: window side in pixels (default: the view's ``window`` attribute, else schema.S2_WINDOW).
    """
    one = _select(tree.to_dataset(), patch_id)
    if size is None:
        size = int(tree[VIEW_NODE].attrs.get("window", schema.S2_WINDOW)) if VIEW_NODE in tree else \
            schema.S2_WINDOW
    r, c, h = int(one["s2_row"]), int(one["s2_col"]), size // 2
    node = f"{schema.SENTINEL_GROUP}/{str(one['zone'].values)}"
    if schema.SENTINEL_GROUP not in tree.children or node.split("/")[1] not in tree[schema.SENTINEL_GROUP].children:
        raise UsageError(f"the tree has no super-area {node}; open the lake with sentinel=True (the default)")
    area = tree[node].to_dataset(inherit=False)
    return area.isel(row=slice(r - h, r - h + size), col=slice(c - h, c - h + size)).assign_coords(
        row=("row", np.arange(r - h, r - h + size)), col=("col", np.arange(c - h, c - h + size)))
