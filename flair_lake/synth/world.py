"""The synthetic world's geometry: zones of adjacent patches, their super-areas, and each zone's landscape."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from flair_lake import schema
from flair_lake.config import SynthConfig
from flair_lake.errors import UsageError


def seed_sequence(*parts: object) -> np.random.SeedSequence:
    """Return a seed sequence from the run seed and names (stable across runs and machines)."""
    return np.random.SeedSequence([zlib.crc32(str(p).encode()) for p in parts])


def domain_origin(code: str) -> tuple[float, float]:
    """Return a pseudo-geographic Lambert-93 origin for a departement code, inside France's bounding box."""
    h = zlib.crc32(code.encode())
    x = 200_000 + (h % 8000) * 100.0
    y = 6_200_000 + ((h // 8000) % 7500) * 100.0
    return x, y


@dataclass(frozen=True)
class Zone:
    """One zone of adjacent patches and its Sentinel super-area."""

    domain: str
    name: str
    index: int
    x0: float  # west edge of the patch grid, m
    y0: float  # north edge of the patch grid, m
    cols: int
    rows: int
    n_patches: int
    first_id: int
    margin_px: int  # super-area margin beyond the outermost centroids' minimal window, px

    def patch_centroid(self, k: int) -> tuple[float, float]:
        """Return the Lambert-93 centroid of the zone's k-th patch (row-major)."""
        r, c = divmod(k, self.cols)
        f = schema.PATCH_FOOTPRINT_M
        return self.x0 + (c + 0.5) * f, self.y0 - (r + 0.5) * f

    @property
    def area_origin(self) -> tuple[float, float]:
        """Return (west, north) of the super-area so that the outermost windows keep ``margin_px``."""
        half = schema.S2_WINDOW // 2
        # first centroid row = margin_px + half when the area's north edge is this far above the grid
        pad = (half + self.margin_px + 0.5) * schema.S2_PIXEL_M - schema.PATCH_FOOTPRINT_M / 2
        return self.x0 - pad, self.y0 + pad

    @property
    def area_shape(self) -> tuple[int, int]:
        """Return (H, W) of the super-area in 10 m pixels."""
        half = schema.S2_WINDOW // 2
        west, north = self.area_origin
        f = schema.PATCH_FOOTPRINT_M
        last_row = int(math.floor((north - (self.y0 - (self.rows - 0.5) * f)) / schema.S2_PIXEL_M))
        last_col = int(math.floor((self.x0 + (self.cols - 0.5) * f - west) / schema.S2_PIXEL_M))
        return last_row + half + self.margin_px, last_col + half + self.margin_px

    def centroid_pixel(self, k: int) -> tuple[int, int]:
        """Return the (row, col) of the k-th patch centroid in the super-area grid."""
        cx, cy = self.patch_centroid(k)
        west, north = self.area_origin
        return int(math.floor((north - cy) / schema.S2_PIXEL_M)), int(math.floor((cx - west) / schema.S2_PIXEL_M))


def plan_zones(cfg: SynthConfig) -> list[Zone]:
    """Return every zone of the tree; patch ids are ``<departement><4 digits>``, unique across trees.

    Raises:
        UsageError: a departement would need more than 9,999 ids.
    """
    per_domain = cfg.zones_per_domain * cfg.patches_per_zone
    if per_domain > 9_999:
        raise UsageError(f"{per_domain} patches per domain is more than the 9,999 ids a departement has; "
                         "lower --zones-per-domain or --patches-per-zone")
    zones = []
    cols = int(math.ceil(math.sqrt(cfg.patches_per_zone)))
    rows = int(math.ceil(cfg.patches_per_zone / cols))
    for domain in cfg.domains:
        code = domain.split("_")[0]
        ox, oy = domain_origin(code)
        rng = np.random.default_rng(seed_sequence(cfg.seed, domain, "zones"))
        for z in range(cfg.zones_per_domain):
            letters = "".join(rng.choice(list("UAFN"), size=2))
            margin = 0 if z == 0 else int(rng.integers(0, 25))
            zones.append(Zone(domain=domain, name=f"Z{z + 1}_{letters}", index=z,
                              x0=ox + z * 3000.0, y0=oy - (z % 3) * 2500.0, cols=cols, rows=rows,
                              n_patches=cfg.patches_per_zone,
                              first_id=int(code[1:]) * 10_000 + z * cfg.patches_per_zone + 1,
                              margin_px=margin))
    return zones


_PARCEL_CLASSES = np.array([11, 10, 12, 4, 9, 6, 7, 16, 8, 15, 18, 19, 2, 17])


@dataclass(frozen=True)
class Landscape:
    """A zone's land-cover field: evaluate :meth:`classes` at any Lambert-93 coordinates."""

    theta: float
    cell_w: float
    cell_h: float
    origin: tuple[float, float]
    table: np.ndarray  # (128, 128) raw codes of parcels
    road_every: int
    river: tuple[float, float, float, float] | None  # offset, amplitude, wavelength, half width
    village: tuple[float, float, float]  # centre x, y, radius
    house_seed: np.ndarray  # (64, 64) random numbers for building sizes

    @classmethod
    def draw(cls, rng: np.random.Generator, zone: Zone, mix: np.ndarray) -> Landscape:
        """Draw a zone's landscape from its generator and the domain's land-use mix."""
        f = schema.PATCH_FOOTPRINT_M
        cx, cy = zone.x0 + zone.cols * f / 2, zone.y0 - zone.rows * f / 2
        table = rng.choice(_PARCEL_CLASSES, size=(128, 128), p=mix)
        river = None
        if rng.random() < 0.6:
            river = (float(rng.uniform(-0.3, 0.3) * zone.rows * f), float(rng.uniform(10, 40)),
                     float(rng.uniform(250, 600)), float(rng.uniform(5, 12)))
        village = (cx + float(rng.uniform(-0.3, 0.3)) * zone.cols * f,
                   cy + float(rng.uniform(-0.3, 0.3)) * zone.rows * f,
                   float(rng.uniform(0.15, 0.35)) * max(zone.cols, zone.rows) * f)
        return cls(theta=float(rng.uniform(0, np.pi / 2)), cell_w=float(rng.uniform(35, 90)),
                   cell_h=float(rng.uniform(30, 80)), origin=(cx, cy), table=table,
                   road_every=int(rng.integers(3, 6)), river=river, village=village,
                   house_seed=rng.random((64, 64)))

    def classes(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Return the raw class codes (uint8) at Lambert-93 coordinates ``x``, ``y`` (same shape)."""
        c, s = math.cos(self.theta), math.sin(self.theta)
        dx, dy = x - self.origin[0], y - self.origin[1]
        u, v = c * dx + s * dy, -s * dx + c * dy
        iu, iv = np.floor(u / self.cell_w), np.floor(v / self.cell_h)
        out = self.table[(iu.astype(np.int64) + 64) % 128, (iv.astype(np.int64) + 64) % 128].astype(np.uint8)
        # hedges on parcel borders
        fu, fv = u / self.cell_w - iu, v / self.cell_h - iv
        hedge = (np.minimum(fu, 1 - fu) * self.cell_w < 1.2) | (np.minimum(fv, 1 - fv) * self.cell_h < 1.2)
        out[hedge] = 8
        # village: buildings on a jittered 20 m sub-grid, gardens, yards and pools
        vx, vy, vr = self.village
        inside = (x - vx) ** 2 + (y - vy) ** 2 < vr**2
        if inside.any():
            gu, gv = np.floor(u / 20.0), np.floor(v / 20.0)
            ru, rv = u / 20.0 - gu, v / 20.0 - gv
            h = self.house_seed[(gu.astype(np.int64) + 32) % 64, (gv.astype(np.int64) + 32) % 64]
            half = 0.22 + 0.18 * h
            house = (np.abs(ru - 0.5) < half) & (np.abs(rv - 0.5) < half * 0.8)
            pool = (np.abs(ru - 0.15) < 0.06) & (np.abs(rv - 0.85) < 0.09) & (h > 0.7)
            yard = (rv < 0.12)
            vill = np.where(house, 1, np.where(pool, 13, np.where(yard, 3, 2))).astype(np.uint8)
            out[inside] = vill[inside]
        # roads along every few parcel boundaries
        road_u = (np.abs(u - np.round(u / (self.cell_w * self.road_every)) * self.cell_w * self.road_every) < 3.0)
        out[road_u] = 3
        if self.river is not None:
            off, amp, lam, hw = self.river
            out[np.abs(v - off - amp * np.sin(2 * np.pi * u / lam)) < hw] = 5
        return out


def domain_mix(rng: np.random.Generator) -> np.ndarray:
    """Return a departement's land-use probabilities over :data:`_PARCEL_CLASSES`."""
    base = np.array([16, 14, 7, 3, 4, 6, 7, 3, 5, 1.5, 0.8, 0.8, 2, 1.5])
    w = base * rng.uniform(0.6, 1.5, size=base.size)
    return w / w.sum()
