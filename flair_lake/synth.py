"""A learnable synthetic FLAIR #2 world, written in the exact raw layout of the real dataset.

There is no real FLAIR data on our machines, so tests, demos and benchmarks run on this generator. It writes
the published tree (docs/raw-format.md): 5-band uint8 aerial GeoTIFFs and 1-band label GeoTIFFs in
EPSG:2154, per zone a Sentinel-2 super-area (``_data.npy`` (T,10,H,W) uint16, ``_masks.npy`` (T,2,H,W) uint8
0-100 with channel 0 = snow and channel 1 = cloud, ``_products.txt`` with one L2A product name per line), the
centroids JSON and the aerial metadata JSON with the real schema.

The world
---------
Each zone is a grid of adjacent 102.4 m patches laid over a landscape defined as a function of Lambert-93
coordinates, so the aerial patches, their labels and the 10 m Sentinel pixels all see the same ground:

* **Parcels.** A rotated grid of fields (30-90 m) whose land use is drawn per zone from a domain-specific mix:
  agricultural land, herbaceous vegetation, plowed land, bare soil, vineyards (row texture), coniferous,
  deciduous and mixed forest, brushwood, clear cuts, greenhouses and 'other'. Hedges (brushwood) line the
  parcels.
* **Roads** (impervious surface) follow every few parcel boundaries; a meandering **river** (water) crosses
  some zones; a **village** disc holds buildings on a jittered sub-grid, gardens (pervious surface), yards
  (impervious) and a few swimming pools. Raw codes above 13 (pool, clear cut, mixed, greenhouse, other)
  appear, as in the real masks.
* **Aerial image.** Each class has its own R, G, B, NIR colour, texture scale and strength, and height
  (band 5, nDSM at 0.2 m per digital number: buildings and trees stand out). *Agricultural land and
  herbaceous vegetation are rendered identically*: in the aerial image they cannot be told apart.
* **Sentinel-2.** Every 10 m pixel mixes the spectra of the classes under it (4x4 sub-samples). Each class
  has a yearly vegetation profile (the paper's Figure 2): crops green up in spring and are harvested in July,
  grassland stays green, deciduous trees lose their leaves, conifers do not, plowed land stays bare. The pair
  above therefore differs only through time, so a model that uses the time series must beat one that does not.
* **Clouds and snow.** Most dates are clear; some carry cloud blobs, some are fully cloudy, and winter dates in
  high domains carry snow (with pixels flagged both snow and cloud, as Sen2Cor does). Cloudy and snowy pixels
  are brightened in the reflectance too. In the first zone of the first domain a cloud sits over one patch on
  every date: that patch has no clear date at all. The first zone of every domain has the tightest legal
  super-area: its corner patches' 40x40 windows touch the area's edge.
* **Domain shift.** Each departement has its own colour gain and offset, land-use mix, altitude, phenology
  shift of a few days, flight date and camera.

A smaller ``patch_size`` keeps the 102.4 m footprint with coarser pixels, so the Sentinel geometry (the 10x10
centre of the 40x40 window covers the patch) stays valid. Every zone draws from its own seeded generator:
a second run with the same seed writes byte-identical files.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flair_lake import schema
from flair_lake.config import SynthConfig
from flair_lake.errors import TargetNotWritableError, UsageError
from flair_lake.raw import names

log = logging.getLogger(__name__)

# Years of the synthetic departements (the test and val years are the real ones; the rest are plausible).
DOMAIN_YEARS = {
    "D004": 2021, "D014": 2020, "D029": 2021, "D031": 2019, "D058": 2020, "D066": 2021, "D067": 2021,
    "D077": 2021, "D015": 2020, "D022": 2021, "D026": 2020, "D036": 2020, "D061": 2020, "D064": 2021,
    "D068": 2021, "D069": 2020, "D071": 2020, "D084": 2021, "D006": 2020, "D007": 2020, "D008": 2019,
    "D009": 2019, "D013": 2020, "D016": 2020, "D017": 2018, "D021": 2020, "D023": 2020, "D030": 2021,
    "D032": 2019, "D033": 2021, "D034": 2021, "D035": 2020, "D038": 2021, "D041": 2021, "D044": 2020,
    "D046": 2019, "D049": 2020, "D051": 2019, "D052": 2019, "D055": 2018, "D060": 2021, "D063": 2019,
    "D070": 2020, "D072": 2019, "D074": 2020, "D078": 2021, "D080": 2021, "D081": 2020, "D086": 2020,
    "D091": 2021,
}
CAMERAS = ("CAMERA#030", "UCE-M3-f120-s06", "UCE-M3-f120-s08", "UCE-M3-f120-s07", "CAMERA#017",
           "CAMERA#020", "UCE-M3-f120", "CAMERA#034", "UCE-M3-f100")
ELEVATION_DN_PER_M = 5.0  # band 5 digital numbers per metre of height above ground

# --- class appearance -------------------------------------------------------------------------------------------
# raw code: (R, G, B, NIR) mean DN, texture strength, texture scale (m), height (m)
_LOOK = {
    1: ((150, 120, 115, 110), 14, 2.0, 9.0),     # building (roofs)
    2: ((105, 120, 85, 140), 12, 1.5, 0.3),      # pervious surface (gardens)
    3: ((120, 118, 118, 95), 8, 4.0, 0.0),       # impervious surface
    4: ((160, 135, 105, 120), 10, 6.0, 0.0),     # bare soil
    5: ((45, 70, 85, 25), 4, 10.0, 0.0),         # water
    6: ((45, 70, 50, 120), 16, 1.2, 18.0),       # coniferous
    7: ((70, 100, 60, 165), 16, 1.6, 16.0),      # deciduous
    8: ((95, 105, 70, 140), 14, 1.0, 2.5),       # brushwood
    9: ((115, 120, 85, 135), 10, 1.0, 1.2),      # vineyard (rows added below)
    10: ((110, 135, 80, 170), 9, 5.0, 0.2),      # herbaceous vegetation  } identical on purpose:
    11: ((110, 135, 80, 170), 9, 5.0, 0.2),      # agricultural land      } told apart only through time
    12: ((140, 118, 92, 105), 9, 3.0, 0.0),      # plowed land (furrows added below)
    13: ((70, 170, 200, 40), 5, 10.0, 0.0),      # swimming pool
    14: ((235, 238, 242, 200), 3, 10.0, 0.0),    # snow
    15: ((125, 115, 90, 125), 15, 2.0, 0.8),     # clear cut
    16: ((58, 85, 55, 145), 16, 1.4, 17.0),      # mixed forest
    17: ((85, 100, 65, 150), 14, 1.0, 3.0),      # ligneous
    18: ((200, 205, 210, 170), 6, 8.0, 3.0),     # greenhouse
    19: ((100, 100, 100, 100), 20, 3.0, 0.5),    # other
}

# Sentinel-2 endmember spectra (DN = reflectance x 10000), bands B2..B12.
_SOIL = np.array([900, 1200, 1500, 1800, 2000, 2200, 2400, 2500, 3000, 2600], np.float32)
_VEG = np.array([300, 600, 350, 900, 2600, 3200, 3600, 3800, 2000, 1000], np.float32)
_WATER = np.array([600, 700, 500, 400, 300, 250, 200, 180, 100, 80], np.float32)
_URBAN = np.array([1100, 1200, 1300, 1400, 1500, 1550, 1600, 1650, 1800, 1700], np.float32)
_SNOW = np.array([9000, 9000, 8800, 8500, 8000, 7800, 7500, 7300, 1000, 800], np.float32)
_CLOUD = np.array([7000, 7200, 7400, 7500, 7600, 7600, 7700, 7700, 6000, 5000], np.float32)


def _bump(doy: np.ndarray, start: float, peak: float, end: float) -> np.ndarray:
    """Return a 0..1 seasonal bump rising from ``start`` to ``peak`` day and falling to 0 at ``end``."""
    up = np.clip((doy - start) / max(peak - start, 1.0), 0.0, 1.0)
    down = np.clip((end - doy) / 12.0, 0.0, 1.0)
    return np.sin(up * np.pi / 2) ** 2 * down


def vegetation_profile(code: int, doy: np.ndarray) -> np.ndarray:
    """Return the green vegetation fraction (0..1) of a raw class on the given days of year.

    Args:
        code: raw FLAIR class code 1..19.
        doy: day of year, float array of any shape.
    """
    season = 0.5 - 0.5 * np.cos(2 * np.pi * (doy - 15) / 365.0)  # 0 mid-January, 1 mid-July
    if code == 11:  # crop: bare in winter, green-up from April, peak in June, harvested mid-July
        return 0.12 + 0.8 * _bump(doy, 85, 150, 200)
    if code == 10:  # grassland: green all year, a little more in spring
        return 0.62 + 0.12 * np.sin(2 * np.pi * (doy - 60) / 365.0)
    if code == 12:  # plowed: bare, a thin cover crop in autumn
        return 0.08 + 0.2 * _bump(doy, 260, 320, 366)
    if code == 7:  # deciduous: leaf-off in winter
        return 0.2 + 0.65 * _bump(doy, 95, 140, 305)
    if code in (6, 16):  # coniferous and mixed: evergreen
        return 0.7 + (0.1 if code == 16 else 0.03) * season
    if code in (8, 17):  # brushwood, ligneous
        return 0.4 + 0.25 * season
    if code == 9:  # vineyard: late leaf-out
        return 0.18 + 0.45 * _bump(doy, 130, 190, 290)
    if code == 2:  # gardens
        return 0.45 + 0.15 * season
    if code == 15:  # clear cut: regrowth in summer
        return 0.2 + 0.25 * season
    return np.zeros_like(doy) + {4: 0.05, 1: 0.0, 3: 0.0, 5: 0.0, 13: 0.0, 14: 0.0, 18: 0.1, 19: 0.2}[code]


def class_spectra(doy: np.ndarray, shift_days: float = 0.0) -> np.ndarray:
    """Return the (20, T, 10) float32 Sentinel-2 spectrum of every raw class (index 0 unused) on each date."""
    d = np.asarray(doy, np.float32) - shift_days
    out = np.zeros((20, d.size, 10), np.float32)
    for code in range(1, 20):
        if code in (1, 3, 18):
            base = _URBAN[None, :] * (1.15 if code == 18 else 1.0)
            out[code] = np.broadcast_to(base, (d.size, 10))
        elif code in (5, 13):
            out[code] = _WATER[None, :] * (1.3 if code == 13 else 1.0)
        elif code == 14:
            out[code] = _SNOW[None, :]
        else:
            v = vegetation_profile(code, d)[:, None]
            out[code] = (1 - v) * _SOIL[None, :] + v * _VEG[None, :]
    return out


# --- geometry ---------------------------------------------------------------------------------------------------
def _seed(*parts: object) -> np.random.SeedSequence:
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
        rng = np.random.default_rng(_seed(cfg.seed, domain, "zones"))
        for z in range(cfg.zones_per_domain):
            letters = "".join(rng.choice(list("UAFN"), size=2))
            margin = 0 if z == 0 else int(rng.integers(0, 25))
            zones.append(Zone(domain=domain, name=f"Z{z + 1}_{letters}", index=z,
                              x0=ox + z * 3000.0, y0=oy - (z % 3) * 2500.0, cols=cols, rows=rows,
                              n_patches=cfg.patches_per_zone,
                              first_id=int(code[1:]) * 10_000 + z * cfg.patches_per_zone + 1,
                              margin_px=margin))
    return zones


# --- the landscape ----------------------------------------------------------------------------------------------
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
    def draw(cls, rng: np.random.Generator, zone: Zone, mix: np.ndarray) -> "Landscape":
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


def _domain_mix(rng: np.random.Generator) -> np.ndarray:
    """Return a departement's land-use probabilities over :data:`_PARCEL_CLASSES`."""
    base = np.array([16, 14, 7, 3, 4, 6, 7, 3, 5, 1.5, 0.8, 0.8, 2, 1.5])
    w = base * rng.uniform(0.6, 1.5, size=base.size)
    return w / w.sum()


# --- rendering --------------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Return zero-mean, unit-ish smooth noise of ``shape`` with features about ``cell`` pixels wide."""
    cell = max(int(cell), 1)
    gh, gw = shape[0] // cell + 2, shape[1] // cell + 2
    g = rng.standard_normal((gh, gw)).astype(np.float32)
    yy = (np.arange(shape[0], dtype=np.float32) + 0.5) / cell
    xx = (np.arange(shape[1], dtype=np.float32) + 0.5) / cell
    y0, x0 = yy.astype(int), xx.astype(int)
    ty, tx = (yy - y0)[:, None], (xx - x0)[None, :]
    a = g[y0][:, x0]
    b = g[y0][:, x0 + 1]
    c = g[y0 + 1][:, x0]
    d = g[y0 + 1][:, x0 + 1]
    return (a * (1 - tx) + b * tx) * (1 - ty) + (c * (1 - tx) + d * tx) * ty


def render_aerial(rng: np.random.Generator, labels: np.ndarray, x: np.ndarray, y: np.ndarray,
                  gain: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Return the (5, P, P) uint8 aerial image of a label patch.

    Args:
        rng: the patch's generator.
        labels: (P, P) uint8 raw codes.
        x, y: (P, P) Lambert-93 pixel centres.
        gain, offset: (4,) per-departement colour shift.
    """
    p = labels.shape[0]
    px_m = schema.PATCH_FOOTPRINT_M / p
    look = np.zeros((20, 7), np.float32)
    for code, (rgbn, strength, scale, height) in _LOOK.items():
        look[code] = (*rgbn, strength, scale, height)
    lut = look[labels]  # (P, P, 7)
    fine = _smooth_noise(rng, (p, p), max(1, round(1.0 / px_m)))
    coarse = _smooth_noise(rng, (p, p), max(2, round(6.0 / px_m)))
    small_scale = lut[..., 5] < 3.0
    tex = np.where(small_scale, fine, coarse) * lut[..., 4]
    # rows in vineyards, furrows in plowed land
    stripes = np.sin(2 * np.pi * (x * 0.8 + y * 0.6) / 2.5).astype(np.float32)
    tex = tex + np.where(labels == 9, 14 * stripes, 0) + np.where(labels == 12, 8 * stripes, 0)
    img = np.empty((5, p, p), np.float32)
    for b in range(4):
        img[b] = lut[..., b] * gain[b] + offset[b] + tex * (1.0 if b < 3 else 1.3)
    img[:4] += rng.normal(0, 3.0, size=(4, p, p)).astype(np.float32)
    height = lut[..., 6] * (1 + 0.25 * coarse) + np.abs(fine) * (lut[..., 6] > 5) * 2.0
    img[4] = height * ELEVATION_DN_PER_M
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _dates_of_year(rng: np.random.Generator, year: int, n: int) -> list[dt.datetime]:
    """Return ``n`` distinct chronological sensing times within ``year``."""
    n_days = 366 if year % 4 == 0 else 365
    days = np.sort(rng.choice(n_days, size=n, replace=False))
    start = dt.datetime(year, 1, 1, 10, 30)
    return [start + dt.timedelta(days=int(d), minutes=int(rng.integers(0, 40)), seconds=int(rng.integers(60)))
            for d in days]


def render_sentinel(rng: np.random.Generator, land: Landscape, zone: Zone, year: int, n_dates: int,
                    shift_days: float, snowy: bool, locked_cloud: tuple[int, int] | None
                    ) -> tuple[np.ndarray, np.ndarray, list[dt.datetime]]:
    """Return a zone's super-area ``data`` (T,10,H,W) uint16, ``masks`` (T,2,H,W) uint8 and sensing times."""
    h, w = zone.area_shape
    west, north = zone.area_origin
    sub = 4  # 4x4 class samples per 10 m pixel
    step = schema.S2_PIXEL_M / sub
    xs = west + (np.arange(w * sub) + 0.5) * step
    ys = north - (np.arange(h * sub) + 0.5) * step
    codes = land.classes(xs[None, :], ys[:, None])  # (H*sub, W*sub)
    onehot = np.zeros((20, h, w), np.float32)
    blocks = codes.reshape(h, sub, w, sub)
    for code in np.unique(codes):
        onehot[code] = (blocks == code).mean(axis=(1, 3))
    times = _dates_of_year(rng, year, n_dates)
    doy = np.array([t.timetuple().tm_yday for t in times], np.float32)
    spectra = class_spectra(doy, shift_days)  # (20, T, 10)
    surface = np.einsum("chw,ctb->tbhw", onehot, spectra, optimize=True)
    surface *= 1 + 0.04 * rng.standard_normal((n_dates, 1, h, w)).astype(np.float32)
    surface += rng.normal(0, 40, size=surface.shape).astype(np.float32)

    cloud = np.clip(rng.normal(4, 3, size=(n_dates, h, w)), 0, 100).astype(np.float32)
    snow = np.zeros((n_dates, h, w), np.float32)
    kind = rng.random(n_dates)
    month = np.array([t.month for t in times])
    for t in range(n_dates):
        if kind[t] < 0.07:  # fully cloudy
            cloud[t] = rng.uniform(85, 100, size=(h, w))
        elif kind[t] < 0.27:  # cloud blobs
            field = _smooth_noise(rng, (h, w), int(rng.integers(8, 25)))
            blob = field > rng.uniform(0.0, 1.2)
            cloud[t] = np.where(blob, np.clip(70 + 30 * field, 0, 100), cloud[t])
        winter = month[t] in (12, 1, 2) and rng.random() < 0.6
        if snowy and (winter or (locked_cloud is not None and t == 0)):
            field = _smooth_noise(rng, (h, w), 20)
            cover = field > rng.uniform(-0.8, 0.6)
            snow[t] = np.where(cover, np.clip(80 + 20 * field, 0, 100), rng.uniform(0, 10, (h, w)))
            both = cover & (field > 0.9)  # Sen2Cor flags some snow as cloud too
            cloud[t] = np.where(both, np.maximum(cloud[t], 65), cloud[t])
    if locked_cloud is not None:  # the awkward zone: one fully cloudy date for sure, and
        cloud[min(1, n_dates - 1)] = 100
        # a cloud parked over one patch for the whole year
        rr, cc = np.mgrid[0:h, 0:w]
        disc = (rr - locked_cloud[0]) ** 2 + (cc - locked_cloud[1]) ** 2 < 32**2
        cloud[:, disc] = 97
    a_cloud = np.clip((cloud - 40) / 60, 0, 1)[:, None]
    a_snow = np.clip((snow - 40) / 60, 0, 1)[:, None]
    data = surface * (1 - a_snow) + _SNOW[None, :, None, None] * a_snow
    data = data * (1 - a_cloud) + _CLOUD[None, :, None, None] * a_cloud
    data = np.clip(np.rint(data), 1, 10_000).astype(np.uint16)
    masks = np.stack([snow, cloud], axis=1)
    return data, np.clip(np.rint(masks), 0, 100).astype(np.uint8), times


# --- writing ----------------------------------------------------------------------------------------------------
def _write_tif(path: Path, array: np.ndarray, transform) -> None:
    """Write a (bands, P, P) uint8 GeoTIFF in Lambert-93, uncompressed like the real files."""
    import rasterio
    from rasterio.crs import CRS

    bands, p, _ = array.shape
    with rasterio.open(path, "w", driver="GTiff", width=p, height=p, count=bands, dtype="uint8",
                       crs=CRS.from_epsg(schema.CRS_EPSG), transform=transform) as dst:
        dst.write(array)


def _zone_part(domain: str) -> str:
    """Return 'train' (train and val domains) or 'test': the part of the tree a domain's files go to."""
    return "test" if schema.official_split(domain) == "test" else "train"


def write_zone(root: Path, cfg: SynthConfig, zone: Zone, *, lock_cloud: bool
               ) -> tuple[dict[str, list[int]], dict[str, dict]]:
    """Write one zone's aerial, label and Sentinel files; return its centroids and metadata entries."""
    from affine import Affine

    code, year_s = zone.domain.split("_")
    year = int(year_s)
    drng = np.random.default_rng(_seed(cfg.seed, zone.domain, "domain"))
    mix = _domain_mix(drng)
    gain, offset = drng.uniform(0.9, 1.1, 4), drng.uniform(-8, 8, 4)
    altitude = float(drng.uniform(20, 1600))
    shift_days = float(drng.uniform(-10, 10))
    flight = dt.date(year, 5, 1) + dt.timedelta(days=int(drng.integers(0, 120)))
    cams = drng.choice(len(CAMERAS), size=2, replace=False)

    rng = np.random.default_rng(_seed(cfg.seed, zone.domain, zone.name))
    land = Landscape.draw(rng, zone, mix)
    aer_part, lab_part, sen_part = names.PARTS[_zone_part(zone.domain)]
    img_dir = root / aer_part / zone.domain / zone.name / "img"
    msk_dir = root / lab_part / zone.domain / zone.name / "msk"
    sen_dir = root / sen_part / zone.domain / zone.name / "sen"
    for d in (img_dir, msk_dir, sen_dir):
        d.mkdir(parents=True, exist_ok=True)

    p = cfg.patch_size
    px = schema.PATCH_FOOTPRINT_M / p
    grid = (np.arange(p) + 0.5) * px
    centroids, meta = {}, {}
    zone_day = flight + dt.timedelta(days=int(rng.integers(0, 6)))
    for k in range(zone.n_patches):
        pid = zone.first_id + k
        cx, cy = zone.patch_centroid(k)
        xx, yy = np.meshgrid(cx - schema.PATCH_FOOTPRINT_M / 2 + grid, cy + schema.PATCH_FOOTPRINT_M / 2 - grid)
        labels = land.classes(xx, yy)
        prng = np.random.default_rng(_seed(cfg.seed, zone.domain, zone.name, pid))
        aerial = render_aerial(prng, labels, xx, yy, gain, offset)
        transform = Affine(px, 0.0, cx - schema.PATCH_FOOTPRINT_M / 2, 0.0, -px, cy + schema.PATCH_FOOTPRINT_M / 2)
        _write_tif(img_dir / names.img_name(pid), aerial, transform)
        _write_tif(msk_dir / names.msk_name(pid), labels[None], transform)
        centroids[names.img_name(pid)] = list(zone.centroid_pixel(k))
        minute = 6 * 60 + 30 + int(prng.integers(0, 300))
        meta[names.metadata_key(pid)] = {
            "domain": zone.domain, "zone": zone.name,
            "patch_centroid_x": round(cx, 1), "patch_centroid_y": round(cy, 1),
            "patch_centroid_z": round(altitude + 30 * math.sin(cx / 700) + 20 * math.cos(cy / 900), 10),
            "date": zone_day.isoformat(), "time": f"{minute // 60:02d}h{minute % 60:02d}",
            "camera": CAMERAS[cams[k % 2 if zone.index % 2 else 0]],
        }

    n_dates = int(rng.integers(cfg.min_dates, cfg.max_dates + 1))
    locked = zone.centroid_pixel(zone.n_patches - 1) if lock_cloud else None
    data, masks, times = render_sentinel(rng, land, zone, year, n_dates, shift_days,
                                         snowy=altitude > 700 or lock_cloud, locked_cloud=locked)
    stem = sen_dir / names.sentinel_stem(zone.domain, zone.name)
    np.save(f"{stem}_data.npy", data)
    np.save(f"{stem}_masks.npy", masks)
    sat = "S2A" if zone.index % 2 else "S2B"
    tile = f"3{int(code[1:]) % 2}T{'XYZ'[int(code[1:]) % 3]}{'KLMN'[zone.index % 4]}"
    lines = [names.product_name(t, satellite=sat, orbit=8 + int(code[1:]) % 130, tile=tile) for t in times]
    Path(f"{stem}_products.txt").write_text("\n".join(lines) + "\n")
    return centroids, meta


def synthesize(out: str | Path, cfg: SynthConfig, *, overwrite: bool = False, progress: bool = False) -> dict:
    """Write a synthetic raw FLAIR #2 tree to ``out``.

    Args:
        out: folder to create (must be empty or absent unless ``overwrite``).
        cfg: sizes and seed.
        overwrite: replace the content of a non-empty ``out``.
        progress: show a progress bar.

    Returns:
        A summary: patches, zones, domains per split, bytes written.

    Raises:
        UsageError: ``out`` is not empty and ``overwrite`` is false, or a domain name is malformed.
        TargetNotWritableError: ``out`` cannot be created.
    """
    out = Path(out)
    for d in cfg.domains:
        if not names.DOMAIN_RE.match(d):
            raise UsageError(f"domain {d!r} is not a FLAIR domain name like D004_2021 (departement_year)")
        if d.split("_")[0] not in DOMAIN_YEARS and schema.official_split(d) is None:
            log.warning("domain %s is not in the official split lists: its patches get no split", d)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder; give a new folder for the synthetic tree")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"{out} is not empty; pick an empty folder or pass --overwrite to replace it")
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TargetNotWritableError(f"cannot create {out}: {exc.strerror}; choose a writable folder") from None

    zones = plan_zones(cfg)
    centroids: dict[str, list[int]] = {}
    metadata: dict[str, dict] = {}
    locked_domain = cfg.domains[0]
    it = zones
    if progress:
        from tqdm import tqdm

        it = tqdm(zones, desc="synth zones", unit="zone")
    for zone in it:
        c, m = write_zone(out, cfg, zone, lock_cloud=(zone.domain == locked_domain and zone.index == 0))
        centroids.update(c)
        metadata.update(m)
    (out / names.CENTROIDS_JSON).write_text(json.dumps(dict(sorted(centroids.items()))))
    (out / names.METADATA_JSON).write_text(json.dumps(dict(sorted(metadata.items())), indent=1))
    splits: dict[str, int] = {}
    for d in cfg.domains:
        s = schema.official_split(d) or "none"
        splits[s] = splits.get(s, 0) + cfg.zones_per_domain * cfg.patches_per_zone
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"root": str(out), "patches": len(metadata), "zones": len(zones), "domains": len(cfg.domains),
            "patches_per_split": splits, "bytes": size}
