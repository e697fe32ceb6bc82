"""Pixel readers for raw FLAIR files, with the format checks that need the pixels."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from flair_lake.errors import RawFormatError
from flair_lake.raw import names


def read_geotiff(path: Path, *, bands: int, size: int, out: np.ndarray | None = None
                 ) -> tuple[np.ndarray, tuple[float, ...], int]:
    """Read a uint8 GeoTIFF and check it.

    Args:
        path: the file.
        bands: expected band count (5 aerial, 1 label).
        size: expected width and height.
        out: a (bands, size, size) uint8 array to read into (no intermediate copy); a new one when None.

    Returns:
        (array (bands, size, size) uint8, GDAL geotransform, EPSG code or 0).

    Raises:
        RawFormatError: unreadable, truncated, or wrong band count, dtype or size.
    """
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path) as src:
            shape = (src.count, src.height, src.width)
            if shape != (bands, size, size) or src.dtypes[0] != "uint8":
                raise RawFormatError(f"{path}: expected {bands} band(s) of uint8 {size}x{size}, got "
                                     f"{src.count} band(s) of {src.dtypes[0]} {src.width}x{src.height}; "
                                     "re-export the file in the FLAIR format")
            arr = src.read(out=out.reshape(bands, size, size) if out is not None else None)
            epsg = src.crs.to_epsg() if src.crs else 0
            return arr, tuple(src.transform.to_gdal()), int(epsg or 0)
    except RasterioError as exc:
        raise RawFormatError(f"{path}: unreadable or truncated GeoTIFF ({exc}); re-download the file and "
                             "ingest again") from None


def read_sentinel_area(data: Path, masks: Path, products: Path
                       ) -> tuple[np.ndarray, np.ndarray, list[str], list[dt.date]]:
    """Read a super-area triple: data (T,10,H,W) uint16, masks (T,2,H,W) uint8, product names, dates."""
    try:
        d = np.load(data)
        m = np.load(masks)
    except (ValueError, OSError, EOFError) as exc:
        raise RawFormatError(f"{data.parent}: unreadable or truncated .npy ({exc}); re-download") from None
    lines = names.read_product_lines(products)
    dates = [names.parse_product_date(ln, source=products) for ln in lines]
    if not (d.shape[0] == m.shape[0] == len(lines)):
        raise RawFormatError(f"{data.parent}: T of data {d.shape[0]}, masks {m.shape[0]} and products "
                             f"{len(lines)} disagree; they must match")
    return d, m, lines, dates
