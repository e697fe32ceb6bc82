"""What a map is computed from: a zone of a lake (its patches on one pixel grid and its Sentinel-2 super-area),
or any georeferenced 5-band raster (``--image``, with an optional super-area triple).

A source answers three questions about a window of its grid: the aerial pixels (uint8, 5 bands, with a fill
where there is no data) and which of them are real (:meth:`read`), the Sentinel-2 series centred on it
(:meth:`SentinelArea.series`) and the encoded metadata (:meth:`mtd`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

import numpy as np

from flair_lake import lake as lk
from flair_lake import schema, storage
from flair_lake import zarr_compat as zc
from flair_lake.config import FilterConfig
from flair_lake.errors import LakeStateError, UsageError
from flair_lake.loader.dataset import clear_months_first
from flair_lake.maps.grid import PixelGrid, snap
from flair_lake.stages.clouds import keep_dates, window_cover
from flair_lake.stages.composite import composite_windows, month_day_offsets
from flair_lake.stages.metadata import encode_metadata

log = logging.getLogger(__name__)
OFF_GRID_PX = 0.01  # a patch whose corner is further than this (pixels) from the zone's grid is reported


def zone_grid(transforms: np.ndarray, epsg: np.ndarray, size: int, name: str
              ) -> tuple[PixelGrid, np.ndarray, list[str]]:
    """Return the pixel grid covering a zone's patches, each patch's (row, col) offset in it, and warnings.

    Raises:
        LakeStateError: the patches are not north-up with square pixels, or differ in pixel size or CRS.
    """
    t = np.asarray(transforms, np.float64)
    res = t[:, 1]
    if np.any(t[:, 2] != 0) or np.any(t[:, 4] != 0) or not np.allclose(-t[:, 5], res, rtol=1e-9, atol=0):
        raise LakeStateError(f"zone {name}: patches are not north-up with square pixels; only such patches "
                             "can be mosaicked")
    if not np.allclose(res, res[0], rtol=1e-9, atol=0) or len(set(epsg.tolist())) > 1:
        raise LakeStateError(f"zone {name}: its patches differ in pixel size ({res.min():g}-{res.max():g} m) or CRS "
                             f"({sorted(set(epsg.tolist()))}); they cannot share one map: warp them to one grid "
                             "(gdalwarp) and ingest them again")
    r = float(res[0])
    west, north = float(t[:, 0].min()), float(t[:, 3].max())
    cols = [snap(x - west, r) for x in t[:, 0]]
    rows = [snap(north - y, r) for y in t[:, 3]]
    offsets = np.array([[a[0], b[0]] for a, b in zip(rows, cols, strict=True)], np.int64)
    worst = max(max(a[1], b[1]) for a, b in zip(rows, cols, strict=True))
    warnings = []
    if worst > OFF_GRID_PX:
        warnings.append(f"zone {name}: some patches are off the zone's pixel grid by up to {worst:.3f} px; they "
                        "are mapped at the nearest pixel")
    grid = PixelGrid(west, north, r, int(offsets[:, 0].max()) + size, int(offsets[:, 1].max()) + size,
                     f"EPSG:{int(epsg[0])}" if int(epsg[0]) else None)
    return grid, offsets, warnings


def area_corner(cx: np.ndarray, cy: np.ndarray, rows: np.ndarray, cols: np.ndarray, name: str
                ) -> tuple[float, float, str | None]:
    """Return the (west, north) corner of a super-area's 10 m grid from its patches' centroids and their
    centroid rows and columns, and a warning when they disagree.

    A centroid in column c means ``c * 10 <= x - west < (c + 1) * 10``: each patch bounds ``west`` to an interval
    of 10 m, and the corner is the middle of their intersection (likewise ``north``). When the intersection is
    empty the patches disagree; the middle of each patch's own interval, their median, is used then.
    """
    px = schema.S2_PIXEL_M
    lo_w, hi_w = np.max(cx - (cols + 1) * px), np.min(cx - cols * px)
    lo_n, hi_n = np.max(cy + rows * px), np.min(cy + (rows + 1) * px)
    if lo_w < hi_w and lo_n < hi_n:
        return float(lo_w + hi_w) / 2, float(lo_n + hi_n) / 2, None
    west = float(np.median(cx - (cols + 0.5) * px))
    north = float(np.median(cy + (rows + 0.5) * px))
    off = max(lo_w - hi_w, lo_n - hi_n, 0.0)
    return west, north, (f"zone {name}: the centroids of its patches disagree with their Sentinel-2 rows and "
                         f"columns by up to {off:.1f} m; windows use the median grid corner")


@dataclass
class SentinelArea:
    """A super-area's Sentinel-2 series and the filter that reads windows of it, as the view's cube was built.

    ``data`` (T, 10, H, W) uint16, ``masks`` (T, 2, H, W) uint8, ``dates`` (T,) datetime64[D]; the grid's
    top-left corner (``west``, ``north``) in the CRS of the map; ``window`` the view's window side; ``year``
    the acquisition year whose months the composites cover.
    """

    data: np.ndarray
    masks: np.ndarray
    dates: np.ndarray
    west: float
    north: float
    params: FilterConfig
    window: int
    year: int
    moved: int = 0  # windows moved to stay inside the area (reported once by the caller)

    def origins(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Return (n, 2) top-left (row, col) of the windows centred on the points (x, y), kept inside the area
        (:attr:`moved` counts the windows that had to move)."""
        half = self.window // 2
        px = schema.S2_PIXEL_M
        rows = np.floor((self.north - np.asarray(y)) / px).astype(np.int64) - half
        cols = np.floor((np.asarray(x) - self.west) / px).astype(np.int64) - half
        h, w = self.masks.shape[-2:]
        out = np.stack([np.clip(rows, 0, max(h - self.window, 0)), np.clip(cols, 0, max(w - self.window, 0))], 1)
        self.moved += int((out != np.stack([rows, cols], 1)).any(1).sum())
        return out

    def series(self, origins: np.ndarray) -> dict[str, np.ndarray]:
        """Return the model's Sentinel-2 inputs of windows at ``origins``, as a view gives them for a patch there:
        ``sentinel`` (n, T', 10, W, W) float32, ``dates`` (n, T') int64 day offsets, ``pad_mask`` (n, T') bool."""
        p, w = self.params, self.window
        cover = window_cover(self.masks, origins, window=w, min_prob=p.min_prob, combine=p.combine)
        keep = keep_dates(cover, max_cover=p.max_cover)
        n = len(origins)
        if p.monthly:
            date_year = self.dates.astype("datetime64[Y]").astype(int) + 1970
            months = np.where(date_year == self.year, self.dates.astype("datetime64[M]").astype(int) % 12, -1)
            clear = (self.masks.max(axis=1) < p.min_prob) if p.mask_pixels else None
            cube, counts = composite_windows(self.data, months, keep, origins, window=w, reducer=p.reducer,
                                             clear=clear)
            pad = counts == 0
            cube[pad] = 0
            days = np.broadcast_to(month_day_offsets(p.ref_year or self.year).astype(np.int64), pad.shape).copy()
            if p.skip_empty_months:  # as the loader serves such a view
                pad, days, cube = clear_months_first(pad, days, cube)
            return {"sentinel": cube.astype(np.float32), "dates": days, "pad_mask": pad}
        t = max(int(keep.sum(1).max(initial=0)), 1)
        sen = np.zeros((n, t, schema.N_S2_BANDS, w, w), np.float32)
        days = np.zeros((n, t), np.int64)
        pad = np.ones((n, t), bool)
        offsets = (np.datetime64(f"{self.year:04d}-05-15") - self.dates).astype(np.int64)
        for i, (r, c) in enumerate(origins):
            kept = np.flatnonzero(keep[i])
            sen[i, :len(kept)] = self.data[kept, :, r:r + w, c:c + w]
            days[i, :len(kept)], pad[i, :len(kept)] = offsets[kept], False
        return {"sentinel": sen, "dates": days, "pad_mask": pad}


ZONE_COLUMNS = ("transform", "crs_epsg", "centroid_x", "centroid_y", "centroid_z", "acquired", "year", "camera",
                "s2_row", "s2_col")


def zone_columns(lake: str, rows: np.ndarray | None = None, storage_options: dict | None = None,
                 root=None) -> dict:
    """Return what a :class:`ZoneSource` needs of the lake's table, for ``rows`` (all when None): the columns of
    :data:`ZONE_COLUMNS`, the patch size, and which cameras are UCE (metadata encoding)."""
    root = root or lk.open_lake(lake, storage_options=storage_options)
    cols = zc.read_arrays(root, ZONE_COLUMNS)
    return {"columns": cols if rows is None else {k: v[rows] for k, v in cols.items()},
            "patch_size": int(root.attrs["patch_size"]),
            "uce_cameras": tuple("UCE" in c for c in root.attrs["cameras"]) or (False,)}


class ZoneSource:
    """One zone of a lake: its ingested patches on the zone's pixel grid and its super-area.

    Args:
        lake: the lake; ``rows`` its rows of the zone (ingested ones).
        sentinel: the view whose filter parameters build the Sentinel-2 inputs (None: the model reads none).
        fill: (5,) uint8 value of each band where no patch is (the band means: 0 once normalised).
    """

    def __init__(self, lake: str, name: str, rows: np.ndarray, *, view: str | None, fill: np.ndarray,
                 columns: dict | None = None, storage_options: dict | None = None) -> None:
        self.lake, self.name, self.storage_options = lake, name, storage_options
        self.rows = np.asarray(rows, np.int64)
        table = columns or zone_columns(lake, self.rows, storage_options)
        self.size, self.cols = table["patch_size"], table["columns"]
        self.grid, self.offsets, self.warnings = zone_grid(self.cols["transform"], self.cols["crs_epsg"],
                                                           self.size, name)
        self.fill = np.asarray(fill, np.uint8)
        self.cameras = np.array(table["uce_cameras"])
        self.year = int(np.bincount(self.cols["year"].astype(np.int64)).argmax())
        self.view = view
        self._area = None
        self._cache: dict[int, np.ndarray] = {}
        self._arrays = None

    # --- aerial -----------------------------------------------------------------------------------------------
    def _aerial(self):
        if self._arrays is None:
            import zarr

            fast = storage.zarrs_available() and not storage.is_url(self.lake)
            with zc.config(zc.ZARRS_PIPELINE) if fast else contextlib.nullcontext():
                root = zarr.open_group(store=self.lake, mode="r", storage_options=self.storage_options)
                self._arrays = (root["aerial"], root["label"])
        return self._arrays

    def patches_in(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Return the indices (into the zone's rows) of the patches intersecting rows [r0, r1), cols [c0, c1)."""
        o, s = self.offsets, self.size
        return np.flatnonzero((o[:, 0] < r1) & (o[:, 0] + s > r0) & (o[:, 1] < c1) & (o[:, 1] + s > c0))

    def prefetch(self, r0: int, r1: int, c0: int, c1: int) -> None:
        """Read the patches of a strip in one call and keep only them (the next strip shares some)."""
        need = self.patches_in(r0, r1, c0, c1)
        self._cache = {k: v for k, v in self._cache.items() if k in set(need.tolist())}
        missing = [int(k) for k in need if int(k) not in self._cache]
        if missing:
            aerial = self._aerial()[0]
            out = np.empty((len(missing), *aerial.shape[1:]), aerial.dtype)
            zc.read_rows([aerial], [int(self.rows[k]) for k in missing], [out])
            self._cache.update({k: out[i] for i, k in enumerate(missing)})

    def read(self, r0: int, c0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the aerial pixels (5, h, w) uint8 of a window (``fill`` outside patches) and their validity."""
        img = np.broadcast_to(self.fill[:, None, None], (schema.N_AERIAL_BANDS, h, w)).copy()
        valid = np.zeros((h, w), bool)
        need = self.patches_in(r0, r0 + h, c0, c0 + w)
        if any(int(k) not in self._cache for k in need):
            self.prefetch(r0, r0 + h, c0, c0 + w)
        s = self.size
        for k in need:
            pr, pc = self.offsets[k]
            y0, y1, x0, x1 = max(r0, pr), min(r0 + h, pr + s), max(c0, pc), min(c0 + w, pc + s)
            img[:, y0 - r0:y1 - r0, x0 - c0:x1 - c0] = self._cache[int(k)][:, y0 - pr:y1 - pr, x0 - pc:x1 - pc]
            valid[y0 - r0:y1 - r0, x0 - c0:x1 - c0] = True
        return img, valid

    def valid(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Return where rows [r0, r1), cols [c0, c1) lie on a patch."""
        out = np.zeros((r1 - r0, c1 - c0), bool)
        s = self.size
        for k in self.patches_in(r0, r1, c0, c1):
            pr, pc = self.offsets[k]
            out[max(r0, pr) - r0:min(r1, pr + s) - r0, max(c0, pc) - c0:min(c1, pc + s) - c0] = True
        return out

    # --- Sentinel-2 and metadata ------------------------------------------------------------------------------
    def area(self) -> SentinelArea:
        """Return the zone's super-area (read once) with the view's filter parameters."""
        if self._area is None:
            root = lk.open_lake(self.lake, storage_options=self.storage_options)
            group = root.get(f"{schema.VIEWS_GROUP}/{self.view}")
            if group is None:  # collected since the run resolved it (config.VIEW_RETAIN_S)
                raise LakeStateError(f"view generation {self.view} of {self.lake} was collected after it was "
                                     "replaced; run the same command again (it maps with the view's current one)")
            attrs = group.attrs
            params = FilterConfig.from_params(attrs["params"])
            g = root[f"{schema.SENTINEL_GROUP}/{self.name}"]
            c = self.cols
            west, north, warning = area_corner(c["centroid_x"], c["centroid_y"], c["s2_row"], c["s2_col"],
                                               self.name)
            if warning:
                self.warnings.append(warning)
            self._area = SentinelArea(g["data"][:], g["masks"][:], g["dates"][:].astype("datetime64[D]"),
                                      west, north, params, int(attrs.get("window", schema.S2_WINDOW)), self.year)
        return self._area

    def sentinel(self, centres: np.ndarray) -> dict[str, np.ndarray]:
        """Return the Sentinel-2 inputs of windows centred on grid points ``centres`` (n, 2) (row, col)."""
        area = self.area()
        x, y = self.grid.centre(centres[:, 0], centres[:, 1])
        origins = area.origins(x, y)
        # a window centred on a patch's centroid reads the patch's own window, as the view does
        half = area.window // 2
        k, exact = self._nearest(centres)
        own = np.stack([self.cols["s2_row"][k] - half, self.cols["s2_col"][k] - half], 1)
        origins[exact] = own[exact]
        return area.series(origins)

    def _nearest(self, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return each centre's nearest patch (index into the zone's rows) and whether it is that patch's centre."""
        pc = self.offsets + self.size / 2
        d = np.abs(centres[:, None, :] - pc[None, :, :]).max(-1)
        k = d.argmin(1)
        return k, d[np.arange(len(k)), k] < 1e-6

    def mtd(self, centres: np.ndarray) -> np.ndarray:
        """Return the encoded metadata of windows: their centre, the nearest patch's altitude, date and camera."""
        k, _ = self._nearest(centres)
        c = self.cols
        x, y = self.grid.centre(centres[:, 0], centres[:, 1])
        return encode_metadata(np.asarray(x, np.float64), np.asarray(y, np.float64), c["centroid_z"][k],
                               c["acquired"][k], c["year"][k], self.cameras[c["camera"][k]])


class RasterSource:
    """A georeferenced 5-band raster (R, G, B, NIR, elevation) read in windows: any size, bounded memory.

    Args:
        path: the raster; north-up with square pixels.
        sentinel: optional super-area (its grid in the raster's CRS) for models with a Sentinel-2 branch.
    """

    def __init__(self, path: str, *, fill: np.ndarray, sentinel: SentinelArea | None = None,
                 acquired: int = 0, altitude: float = 0.0) -> None:
        import rasterio

        self.path = path
        try:
            self.ds = rasterio.open(path)
        except rasterio.errors.RasterioIOError as exc:
            raise UsageError(f"--image {path}: not a raster GDAL can open ({exc})") from None
        t = self.ds.transform
        if self.ds.count != schema.N_AERIAL_BANDS:
            raise UsageError(f"--image {path} has {self.ds.count} band(s); the models read "
                             f"{schema.N_AERIAL_BANDS} ({', '.join(schema.AERIAL_BANDS)})")
        if t.b != 0 or t.d != 0 or not math.isclose(t.a, -t.e, rel_tol=1e-9):
            raise UsageError(f"--image {path} is not north-up with square pixels; warp it first "
                             "(gdalwarp -tr R R)")
        crs = self.ds.crs.to_string() if self.ds.crs else None  # "EPSG:2154", or the WKT of a CRS without a code
        self.grid = PixelGrid(t.c, t.f, t.a, self.ds.height, self.ds.width, crs)
        self.name = _stem(path)
        self.fill = np.asarray(fill, np.uint8)
        self.area_ = sentinel
        self.acquired, self.altitude = acquired, altitude
        self.warnings: list[str] = []

    def prefetch(self, r0: int, r1: int, c0: int, c1: int) -> None:
        """Nothing to do: windows are read from the file as they are asked for."""

    def read(self, r0: int, c0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        from rasterio.windows import Window

        win = Window(c0, r0, w, h)
        img = self.ds.read(window=win, boundless=True, fill_value=0, out_dtype="uint8")
        valid = self.ds.read_masks(1, window=win, boundless=True) > 0
        img[:, ~valid] = self.fill[:, None]
        return img, valid

    def valid(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        from rasterio.windows import Window

        return self.ds.read_masks(1, window=Window(c0, r0, c1 - c0, r1 - r0), boundless=True) > 0

    def sentinel(self, centres: np.ndarray) -> dict[str, np.ndarray]:
        if self.area_ is None:
            raise UsageError("this model reads Sentinel-2 windows: give --sentinel with --sentinel-grid")
        x, y = self.grid.centre(centres[:, 0], centres[:, 1])
        return self.area_.series(self.area_.origins(x, y))

    def mtd(self, centres: np.ndarray) -> np.ndarray:
        x, y = self.grid.centre(centres[:, 0], centres[:, 1])
        n = len(centres)
        year = self.area_.year if self.area_ is not None else 1970
        return encode_metadata(np.asarray(x, np.float64), np.asarray(y, np.float64), np.full(n, self.altitude),
                               np.full(n, self.acquired), np.full(n, year), np.zeros(n, bool))


def _stem(path: str) -> str:
    from pathlib import Path

    return Path(path).stem
