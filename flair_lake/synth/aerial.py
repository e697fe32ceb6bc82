"""The synthetic aerial image: each class's colour, texture and height, rendered over a label patch."""

from __future__ import annotations

import numpy as np

from flair_lake import schema

ELEVATION_DN_PER_M = 5.0  # band 5 digital numbers per metre of height above ground

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


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
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
    fine = smooth_noise(rng, (p, p), max(1, round(1.0 / px_m)))
    coarse = smooth_noise(rng, (p, p), max(2, round(6.0 / px_m)))
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
