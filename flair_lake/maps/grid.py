"""The geometry of a map: its pixel grid, the inference windows over it, their blending weights, and the blocks
(the job grid) it is computed in.

Along each axis, the fewest windows that overlap by at least ``overlap`` pixels are spread evenly from the
grid's first pixel to its last, so that no window reaches past the edge (a grid smaller than a tile gets one
window, padded); with ``overlap`` 0 on a grid of whole tiles they are the tiles. Weights are separable: each
axis ramps up over the pixels a window shares with its predecessor and down over those it shares with its
successor, and never ramps on the grid's edge. ``linear`` and ``cosine`` ramps are partitions of unity
(t + (1 - t) = 1, sin^2 + cos^2 = 1), so where two windows overlap their weights sum to 1; where three meet (an
overlap above half the tile) the blender's division by the weight sum still makes every output a convex
combination of the windows' probabilities. ``none`` gives each pixel to
the window whose centre is nearest (FLAIR-HUB's cropped margins), weight 1, others 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flair_lake.config import BLENDS
from flair_lake.errors import UsageError


@dataclass(frozen=True)
class PixelGrid:
    """A north-up raster grid: top-left corner (``west``, ``north``), square pixels of ``res`` metres."""

    west: float
    north: float
    res: float
    height: int
    width: int
    crs: str | None  # as rasterio.crs.CRS.from_user_input reads it: "EPSG:2154", or WKT

    @property
    def transform(self):
        """Return the grid's ``affine.Affine`` transform."""
        from affine import Affine

        return Affine(self.res, 0.0, self.west, 0.0, -self.res, self.north)

    def km2(self, pixels: int | None = None) -> float:
        """Return the area of ``pixels`` pixels (default: the whole grid), km^2."""
        n = self.height * self.width if pixels is None else pixels
        return n * self.res * self.res / 1e6

    def centre(self, row: float, col: float) -> tuple[float, float]:
        """Return the (x, y) coordinates of the point ``row``, ``col`` (pixel units from the top-left corner)."""
        return self.west + col * self.res, self.north - row * self.res


def window_starts(length: int, tile: int, overlap: int) -> np.ndarray:
    """Return the start of every window along an axis of ``length`` pixels (int64, increasing)."""
    if length <= tile:
        return np.zeros(1, np.int64)
    n = 1 + math.ceil((length - tile) / (tile - overlap))  # gaps of at most the stride
    return np.unique(np.rint(np.linspace(0, length - tile, n)).astype(np.int64))


def _ramp(t: np.ndarray, blend: str) -> np.ndarray:
    return t if blend == "linear" else np.sin(np.pi / 2 * t) ** 2


def axis_weights(starts: np.ndarray, tile: int, blend: str) -> np.ndarray:
    """Return (n, tile) float64 weights of each window along one axis (see the module docstring)."""
    if blend not in BLENDS:
        raise UsageError(f"--blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    n = len(starts)
    u = np.arange(tile, dtype=np.float64)
    out = np.ones((n, tile))
    if blend == "none":
        centres = starts + tile / 2
        bounds = np.concatenate([[-np.inf], (centres[:-1] + centres[1:]) / 2, [np.inf]])
        for k in range(n):
            pix = starts[k] + u + 0.5
            out[k] = (pix >= bounds[k]) & (pix < bounds[k + 1])
        return out
    for k in range(n):
        if k > 0:  # shared with the previous window: [starts[k], starts[k - 1] + tile)
            shared = int(starts[k - 1] + tile - starts[k])
            if shared > 0:
                out[k] *= np.where(u < shared, _ramp(np.clip((u + 0.5) / shared, 0, 1), blend), 1.0)
        if k < n - 1:  # shared with the next window: [starts[k + 1], starts[k] + tile)
            shared = int(starts[k] + tile - starts[k + 1])
            if shared > 0:
                back = tile - 1 - u
                out[k] *= np.where(back < shared, _ramp(np.clip((back + 0.5) / shared, 0, 1), blend), 1.0)
    return out


@dataclass(frozen=True)
class Block:
    """One cell of the job grid: output rows ``[r0, r1)`` and columns ``[c0, c1)`` of a map."""

    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def key(self) -> str:
        """Return the block's name in the job grid (``r<r0>_c<c0>``)."""
        return f"r{self.r0}_c{self.c0}"

    @property
    def pixels(self) -> int:
        return (self.r1 - self.r0) * (self.c1 - self.c0)


def blocks(grid: PixelGrid, size: int) -> list[Block]:
    """Return the job grid of ``grid``: blocks of ``size`` x ``size`` pixels in row-major order."""
    return [Block(r, min(r + size, grid.height), c, min(c + size, grid.width))
            for r in range(0, grid.height, size) for c in range(0, grid.width, size)]


@dataclass(frozen=True)
class Windows:
    """The windows of a map and their weights: starts and (n, tile) weights along each axis."""

    tile: int
    ys: np.ndarray
    xs: np.ndarray
    wy: np.ndarray
    wx: np.ndarray

    @classmethod
    def over(cls, grid: PixelGrid, tile: int, overlap: int, blend: str) -> Windows:
        ys, xs = window_starts(grid.height, tile, overlap), window_starts(grid.width, tile, overlap)
        return cls(tile, ys, xs, axis_weights(ys, tile, blend), axis_weights(xs, tile, blend))

    def touching(self, block: Block) -> tuple[np.ndarray, np.ndarray]:
        """Return the indices of the window rows and columns that reach into ``block`` with a non-zero weight."""
        def along(starts, weights, a, b):
            keep = []
            for k, s in enumerate(starts):
                lo, hi = max(a, s), min(b, s + self.tile)
                if lo < hi and weights[k, lo - s:hi - s].any():
                    keep.append(k)
            return np.array(keep, np.int64)
        return along(self.ys, self.wy, block.r0, block.r1), along(self.xs, self.wx, block.c0, block.c1)

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)


def snap(value: float, res: float) -> tuple[int, float]:
    """Return (nearest whole number of pixels, distance to it in pixels) of ``value`` metres."""
    px = value / res
    k = math.floor(px + 0.5)
    return k, abs(px - k)
