"""The ingest pipeline's tasks, run on Dask workers: one writes a shard of patches, one a super-area.

Each is a plain function of its own inputs (the lake URL, the rows and files it owns): it writes whole shards,
then its completion marker, so a task run twice writes the same bytes. The coordinator is :mod:`pipelines.ingest`.
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import numpy as np

from flair_lake import lake as lk
from flair_lake import schema, storage
from flair_lake.chunkio import write_shard
from flair_lake.config import STATS_CLEAR_PROB, STATS_STEP
from flair_lake.errors import RawFormatError
from flair_lake.raw.readers import read_geotiff, read_sentinel_area
from pipelines.ingest_plan import AreaTask, ShardTask

# FLAIR's GeoTIFFs are uncompressed and pixel-interleaved: GDAL maps them and copies the pixels straight into the
# shard buffer, past its block cache (64 aerial patches in 0.097 s, 0.155 s through the cache; compressed files
# ignore the option).
# GTIFF_DIRECT_IO is as fast but zero-fills a truncated file without an error; this one reports it.
GDAL_READ_OPTIONS = {"GTIFF_VIRTUAL_MEM_IO": "YES"}
_EPOCH, _EPOCH_DT = dt.date(1970, 1, 1), dt.datetime(1970, 1, 1)


def write_patch_shard(task: ShardTask) -> dict:
    """Read a shard's GeoTIFFs and write its aerial, label, transform, CRS and status rows, then its marker.

    A patch whose files are unreadable or malformed is written as zeros with status 2 and reported.
    """
    import rasterio
    import zarr

    n, p = len(task.items), task.patch_size
    aerial, label = _shard_buffers(n, p)
    transform = np.full((n, 6), np.nan)
    epsg = np.zeros(n, np.int32)
    status = np.full(n, schema.STATUS_OK, np.uint8)
    bad: dict[str, str] = {}
    with rasterio.Env(**GDAL_READ_OPTIONS):  # one GDAL environment for the whole shard, not one per file
        _read_items(task.items, p, aerial, label, transform, epsg, status, bad)
    ok = status == schema.STATUS_OK
    # normalisation statistics from a 1-in-16 pixel grid: as good for mean and std, 16x cheaper
    grid = aerial[:, :, ::STATS_STEP, ::STATS_STEP][ok].astype(np.float32)
    sums = grid.sum(axis=(0, 2, 3), dtype=np.float64)
    sq = np.square(grid).sum(axis=(0, 2, 3), dtype=np.float64)
    rows = slice(task.row0, task.row0 + n)
    # the image shards straight to their files, in zarr's layout (flair_lake.chunkio; O_DIRECT on local lakes);
    # the small columns encoded in Rust
    with storage.rust_codecs(task.lake), storage.direct_writes(task.lake), storage.fast_writes():
        root = zarr.open_group(store=task.lake, mode="r+", storage_options=task.storage_options)
        direct = storage.direct_io(task.lake)
        write_shard(root["aerial"], task.shard, aerial, direct=direct)
        write_shard(root["label"], task.shard, label, direct=direct)
        root["transform"][rows] = transform
        root["crs_epsg"][rows] = epsg
        root[schema.STATUS_ARRAY][rows] = status
    report = {"rows": [task.row0, task.row0 + n], "bad": bad, "aerial_sum": sums.tolist(),
              "aerial_sumsq": sq.tolist(), "pixels": int(grid.shape[0] * grid.shape[2] * grid.shape[3])}
    root.create_group(lk.shard_marker(task.shard), attributes=report, overwrite=True)
    return {"shard": task.shard, **report}


_BUFFERS = threading.local()


def _shard_buffers(n: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (aerial (n,5,p,p), label (n,p,p)) uint8 buffers kept by this worker thread between shard tasks.

    Every row is overwritten by the task (read, or zeroed when bad or unlabelled). A fresh 100 MB buffer per
    task is a fresh mmap whose pages the kernel must fault in and zero again (measured: 5% of the ingest's CPU
    in ``clear_page`` on the 2-core machine); a kept one is already mapped.
    """
    buf = getattr(_BUFFERS, "arrays", None)
    if buf is None or buf[0].shape[0] < n or buf[0].shape[2] != p:
        buf = _BUFFERS.arrays = (np.empty((n, schema.N_AERIAL_BANDS, p, p), np.uint8), np.empty((n, p, p), np.uint8))
    return buf[0][:n], buf[1][:n]


def _read_items(items, p, aerial, label, transform, epsg, status, bad) -> None:
    """Fill the shard buffers from the GeoTIFFs; a bad patch is zeroed, flagged 2 and reported."""
    for i, (pid, img, msk) in enumerate(items):
        try:
            _, gt, epsg[i] = read_geotiff(Path(img), bands=schema.N_AERIAL_BANDS, size=p, out=aerial[i])
            if epsg[i] != schema.CRS_EPSG:  # the lake's grid, the centroids and the maps are Lambert-93
                raise RawFormatError(f"{img}: CRS {f'EPSG:{epsg[i]}' if epsg[i] else 'missing'}, expected "
                                     f"EPSG:{schema.CRS_EPSG} (Lambert-93); reproject it (gdalwarp -t_srs "
                                     f"EPSG:{schema.CRS_EPSG}) or restore the original file")
            if msk is not None:
                read_geotiff(Path(msk), bands=1, size=p, out=label[i])
            else:
                label[i] = 0  # an unlabelled split: the label rows hold zeros
            transform[i] = gt
        except RawFormatError as exc:
            aerial[i], label[i], status[i] = 0, 0, schema.STATUS_QUARANTINED
            bad[str(pid)] = str(exc)


def write_area(task: AreaTask) -> dict:
    """Copy a super-area triple into the lake (read once), then mark the group complete."""
    import zarr

    data, masks, products, dates = read_sentinel_area(task.area.data, task.area.masks, task.area.products)
    t, _, h, w = data.shape
    root = zarr.open_group(store=task.lake, mode="r+", storage_options=task.storage_options)
    g = root.require_group(f"{schema.SENTINEL_GROUP}/{task.area.name}")
    days = np.array([(d - _EPOCH).days for d in dates], np.int32)
    values = {"data": data, "masks": masks, "dates": days}
    with storage.rust_codecs(task.lake), storage.direct_writes(task.lake), storage.fast_writes():
        for name, layout in schema.sentinel_arrays(t, h, w).items():
            kw = storage.create_kwargs(layout, t, storage.role_compressors(layout, task.codec, task.level))
            g.create_array(name, overwrite=True, **kw)[...] = values[name]
    # Sentinel normalisation statistics over the clear pixels of a 1-in-16 grid, as for the aerial bands (a 1-in-4
    # grid cost a fifth of the task in float temporaries, for the same mean and std to 3 digits)
    sub = data[:, :, ::STATS_STEP, ::STATS_STEP].astype(np.float32)
    clear = (masks[:, :, ::STATS_STEP, ::STATS_STEP].max(axis=1) < STATS_CLEAR_PROB)[:, None]
    vals = np.where(clear, sub, np.float32(0))
    g.attrs.update({"domain": task.area.domain, "zone": task.area.zone, "products": products,
                    "bands": list(schema.S2_BANDS), "mask_bands": list(schema.S2_MASK_BANDS),
                    "clear_sum": vals.sum(axis=(0, 2, 3), dtype=np.float64).tolist(),
                    "clear_sumsq": np.square(vals).sum(axis=(0, 2, 3), dtype=np.float64).tolist(),
                    "clear_pixels": int(clear.sum()), "complete": True})
    over = int(np.count_nonzero(masks > 100))  # probabilities are 0..100: counted as covered at any --prob
    return {"area": task.area.name, "dates": t, "masks_over_100": over}
