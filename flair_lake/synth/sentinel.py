"""The synthetic Sentinel-2 series: class spectra with their yearly phenology, dates, clouds and snow."""

from __future__ import annotations

import datetime as dt

import numpy as np

from flair_lake import schema
from flair_lake.synth.aerial import smooth_noise
from flair_lake.synth.world import Landscape, Zone

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
            field = smooth_noise(rng, (h, w), int(rng.integers(8, 25)))
            blob = field > rng.uniform(0.0, 1.2)
            cloud[t] = np.where(blob, np.clip(70 + 30 * field, 0, 100), cloud[t])
        winter = month[t] in (12, 1, 2) and rng.random() < 0.6
        if snowy and (winter or (locked_cloud is not None and t == 0)):
            field = smooth_noise(rng, (h, w), 20)
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
