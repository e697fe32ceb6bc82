"""Score maps against a lake's labels with the official metric (``flair-lake evaluate --map DIR``).

Every labelled patch of the split is looked up in its zone's map (``DIR/<zone>.tif``) at the patch's own
transform, so a blended map and the per-patch predictions are scored on exactly the same pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flair_lake import lake as lk
from flair_lake import schema
from flair_lake import zarr_compat as zc
from flair_lake.errors import UsageError
from flair_lake.maps.grid import snap
from flair_lake.maps.infer import NODATA


def score_maps(folder: str | Path, lake: str, *, split="test", storage_options: dict | None = None) -> dict:
    """Return the official metrics of the maps in ``folder`` over the labelled patches of ``split``.

    Raises:
        UsageError: the split has no labelled patch, or no zone of it has a map in ``folder``.
    """
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    from flair_lake.loader.dataset import select_rows
    from flair_lake.training.loop import iou_table
    from flair_lake.training.metrics import miou

    folder = Path(folder)
    root = lk.open_lake(lake, storage_options=storage_options)
    rows = select_rows(root, split)
    cols = zc.read_arrays(root, ("has_label", "zone", "transform"))
    rows = rows[cols["has_label"][rows] == 1]
    if len(rows) == 0:
        raise UsageError(f"split {split!r} of {lake} has no labelled patches to score a map against")
    areas = root.attrs["areas"]
    size = int(root.attrs["patch_size"])
    matrix = np.zeros((schema.NUM_CLASSES, schema.NUM_CLASSES), np.int64)
    scored, missing_maps, nodata = 0, set(), 0
    for z in np.unique(cols["zone"][rows]):
        path = folder / f"{areas[int(z)]}.tif"
        if not path.exists():
            missing_maps.add(areas[int(z)])
            continue
        members = rows[cols["zone"][rows] == z]
        labels = np.empty((len(members), size, size), np.uint8)
        zc.read_rows([root["label"]], [int(r) for r in members], [labels])
        with rasterio.open(path) as ds:
            m = ds.transform
            for k, r in enumerate(members):
                t = Affine.from_gdal(*cols["transform"][r])
                # the patch's pixel offset in the map, to the nearest pixel as the map placed it
                col, row = snap(t.c - m.c, m.a)[0], snap(m.f - t.f, m.a)[0]
                pred = ds.read(1, window=Window(col, row, size, size), boundless=True, fill_value=NODATA)
                truth = schema.to_train_classes(labels[k])
                ok = (pred != NODATA) & (truth != schema.IGNORE_LABEL)
                nodata += int((pred == NODATA).sum())
                matrix += np.bincount(truth[ok].astype(np.int64) * schema.NUM_CLASSES + pred[ok],
                                      minlength=schema.NUM_CLASSES ** 2).reshape(schema.NUM_CLASSES, -1)
                scored += 1
    if scored == 0:
        raise UsageError(f"no map in {folder} for the zones of split {split!r} ({', '.join(sorted(missing_maps))}); "
                         "make them with flair-lake map --split ...")
    warnings = []
    if missing_maps:
        warnings.append(f"{len(missing_maps)} zone(s) of the split have no map in {folder} and are not scored: "
                        f"{', '.join(sorted(missing_maps))}")
    if nodata:
        warnings.append(f"{nodata} labelled pixel(s) have no data in the maps and are not scored")
    tag = split if isinstance(split, str) else "+".join(split)
    return {"maps": str(folder), "split": split, "tag": f"map-{tag}", "patches": scored, "labelled": True,
            "miou": miou(matrix), "per_class_iou": iou_table(matrix), "confusion_matrix": matrix.tolist(),
            "warnings": warnings}


def seam_ratio(prob: np.ndarray, rows: list[int], cols: list[int]) -> float:
    """Return how much more class probabilities jump across the given patch borders than between neighbouring
    pixels elsewhere: mean L1 change across the borders / mean L1 change between all other neighbours.

    ``prob`` is (13, H, W) (any scale), ``rows`` and ``cols`` the first row / column of each patch after a border.
    1 is seamless; per-patch predictions, which see no context across a border, score well above 1.
    """
    p = prob.astype(np.float32)
    dx = np.abs(np.diff(p, axis=2)).sum(0)  # (H, W - 1): change between columns c - 1 and c, at index c - 1
    dy = np.abs(np.diff(p, axis=1)).sum(0)  # (H - 1, W)
    at_x = np.zeros(dx.shape[1], bool)
    at_x[[c - 1 for c in cols]] = True
    at_y = np.zeros(dy.shape[0], bool)
    at_y[[r - 1 for r in rows]] = True
    border = np.concatenate([dx[:, at_x].ravel(), dy[at_y].ravel()])
    other = np.concatenate([dx[:, ~at_x].ravel(), dy[~at_y].ravel()])
    return float(border.mean() / max(other.mean(), 1e-12))
