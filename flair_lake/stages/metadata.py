"""Encoding of the aerial metadata into a fixed-length vector (paper §4, appendix A.5.1).

32 Fourier features of the Lambert-93 centroid (sin and cos of x and y at 8 frequencies, as the baseline),
the altitude scaled by the dataset maximum, a one-hot of the acquisition year (2018-2021; other years give
zeros instead of the baseline's crash), a one-hot of the camera family (UCE or other), and the day of year and
the hour as cyclic (sin, cos) pairs -- the baseline's month term is a constant by an operator-precedence bug
(docs/baseline.md, "Metadata encoding"), so it is not reproduced.
"""

from __future__ import annotations

import numpy as np

from flair_lake import schema

_FREQS = 1.0 / (1e8 ** (2 * np.arange(8) / 16))


def encode_metadata(x: np.ndarray, y: np.ndarray, z: np.ndarray, acquired_s: np.ndarray, year: np.ndarray,
                    uce_camera: np.ndarray) -> np.ndarray:
    """Return (N, MTD_DIM) float32 metadata vectors.

    Args:
        x, y: (N,) Lambert-93 centroid, metres.
        z: (N,) altitude, metres.
        acquired_s: (N,) acquisition time, seconds since 1970-01-01.
        year: (N,) acquisition year.
        uce_camera: (N,) bool, camera name contains 'UCE'.
    """
    coords = np.stack([x, y], axis=1)[:, :, None] / 1e8 * _FREQS[None, None, :]  # (N, 2, 8)
    fourier = np.concatenate([np.sin(coords), np.cos(coords)], axis=2).reshape(len(x), 32)
    alt = (np.asarray(z, np.float64) / schema.ALTITUDE_SCALE_M)[:, None]
    years = (np.asarray(year)[:, None] == np.array(schema.YEARS)[None, :]).astype(np.float64)
    cam = np.stack([uce_camera, ~np.asarray(uce_camera, bool)], axis=1).astype(np.float64)
    t = np.asarray(acquired_s, np.int64).astype("datetime64[s]")
    day = (t - t.astype("datetime64[Y]")).astype(np.float64) / (366 * 86_400)  # fraction of the year
    hour = (t - t.astype("datetime64[D]")).astype(np.float64) / 86_400
    cyc = np.stack([np.sin(2 * np.pi * day), np.cos(2 * np.pi * day), np.sin(2 * np.pi * hour),
                    np.cos(2 * np.pi * hour)], axis=1)
    out = np.concatenate([fourier, alt, years, cam, cyc], axis=1).astype(np.float32)
    assert out.shape[1] == schema.MTD_DIM
    return out
