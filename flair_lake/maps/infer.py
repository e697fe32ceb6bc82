"""Run a model over the windows of one block of a map and blend them: the map's compute.

The block is computed one row of windows at a time, in an accumulator as tall as a window: before a row of
windows is added, every map row above its top is final (no later window reaches it), so it is normalised
(probability sums divided by weight sums), turned into classes and handed to the writer. Memory is bounded by
``13 x tile x block width`` floats whatever the map's size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flair_lake import schema
from flair_lake.config import TrainConfig
from flair_lake.maps.grid import Block, Windows

NODATA = 255  # class value of map pixels on no patch (gaps in a zone, masked pixels of a raster)
SENTINEL_MODELS = ("utt", "utt-fpn", "utt-deeplabv3", "utae")  # models with a Sentinel-2 branch


@dataclass
class Rows:
    """Finished map rows ``[row, row + len)`` of a block: classes, and with probabilities the 13 class
    probabilities and the confidence (the largest), all uint8 scaled to 0..255 (0 where the map has no data)."""

    row: int
    classes: np.ndarray
    probabilities: np.ndarray | None
    confidence: np.ndarray | None


class Predictor:
    """A checkpoint's model in eval mode, its input normalisation and what it reads.

    Called with a batch of windows, it returns their class probabilities (B, 13, t, t) float32 on the CPU.
    """

    def __init__(self, ckpt: str | Path, *, device: str | None = None, band_stats: dict | None = None) -> None:
        from flair_lake.loader import BatchTransform
        from flair_lake.training.evaluate import load_checkpoint

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, ck = load_checkpoint(ckpt, self.device)
        self.name = ck["model_name"]
        self.reads_sentinel = self.name in SENTINEL_MODELS
        self.reads_mtd = bool((ck.get("model_kwargs") or {}).get("use_metadata"))
        self.patch_size = ck.get("patch_size")
        stats = ck.get("band_stats") or band_stats or {}
        self.tf = BatchTransform(stats, channels_last=self.device.type == "cuda")
        self.amp = (ck.get("config") or {}).get("amp", TrainConfig.amp)
        mean = (stats.get("aerial") or {}).get("mean")
        self.fill = np.clip(np.rint(mean), 0, 255).astype(np.uint8) if mean else np.zeros(5, np.uint8)

    @torch.no_grad()
    def __call__(self, aerial: np.ndarray, sentinel: dict | None = None, mtd: np.ndarray | None = None
                 ) -> np.ndarray:
        from flair_lake.training.loop import _autocast, forward

        b = aerial.shape[0]
        if sentinel is None:  # the model reads none: one padded date
            sentinel = {"sentinel": np.zeros((b, 1, schema.N_S2_BANDS, 2, 2), np.float32),
                        "dates": np.zeros((b, 1), np.int64), "pad_mask": np.ones((b, 1), bool)}
        raw = {"aerial": torch.from_numpy(aerial), "sentinel": torch.from_numpy(sentinel["sentinel"]),
               "dates": torch.from_numpy(sentinel["dates"]), "pad_mask": torch.from_numpy(sentinel["pad_mask"]),
               "mtd": torch.from_numpy(mtd if mtd is not None else np.zeros((b, schema.MTD_DIM), np.float32)),
               "label": torch.zeros(1, dtype=torch.uint8)}
        batch = self.tf(raw, self.device)
        with _autocast(self.device, self.amp):
            logits = forward(self.model, batch)["aerial"].float()
        return torch.softmax(logits, 1).cpu().numpy()


@functools.lru_cache(maxsize=2)
def cached_predictor(ckpt: str, mtime: float, device: str | None, band_stats_json: str) -> Predictor:
    """Return a process's predictor of a checkpoint, loaded once (Dask workers compute many blocks)."""
    import json

    return Predictor(ckpt, device=device, band_stats=json.loads(band_stats_json))


def predict_block(source, windows: Windows, block: Block, predictor: Callable, write: Callable[[Rows], None], *,
                  batch_size: int, probabilities: bool, reads_sentinel: bool, reads_mtd: bool,
                  counter: Callable[[int], None] | None = None) -> int:
    """Compute one block of a map and hand its rows to ``write`` as they are final; return the windows run.

    Args:
        source: a :mod:`flair_lake.maps.sources` source (``read``, ``valid``, ``prefetch``, ``sentinel``, ``mtd``).
        predictor: (aerial, sentinel, mtd) -> probabilities, as :class:`Predictor`.
        write: receives :class:`Rows` top to bottom, covering the block's rows exactly once.
        counter: called with the number of windows of each batch once it ran (forward-rate accounting).
    """
    t = windows.tile
    iy, ix = windows.touching(block)
    width = block.c1 - block.c0
    height = min(t, block.r1 - block.r0)
    acc = np.zeros((schema.NUM_CLASSES, height, width), np.float32)
    wsum = np.zeros((height, width), np.float32)
    top = block.r0  # the map row of the accumulator's first row
    ran = 0

    def flush(upto: int) -> None:
        nonlocal top
        n = upto - top
        if n <= 0:
            return
        valid = source.valid(top, upto, block.c0, block.c1) & (wsum[:n] > 0)
        prob = acc[:, :n] / np.where(wsum[:n] > 0, wsum[:n], 1)[None]
        classes = prob.argmax(0).astype(np.uint8)
        classes[~valid] = NODATA
        p8 = conf = None
        if probabilities:
            p8 = np.rint(prob * 255).astype(np.uint8)
            p8[:, ~valid] = 0
            conf = p8.max(0)
        write(Rows(top - block.r0, classes, p8, conf))
        acc[:, :height - n] = acc[:, n:].copy()
        acc[:, height - n:] = 0
        wsum[:height - n] = wsum[n:].copy()
        wsum[height - n:] = 0
        top = upto

    for i in iy:
        y = int(windows.ys[i])
        flush(max(y, block.r0))
        xs = [int(windows.xs[j]) for j in ix]
        source.prefetch(y, y + t, xs[0], xs[-1] + t)
        for k in range(0, len(ix), batch_size):
            js = ix[k:k + batch_size]
            imgs = np.stack([source.read(y, int(windows.xs[j]), t, t)[0] for j in js])
            centres = np.array([[y + t / 2, windows.xs[j] + t / 2] for j in js], np.float64)
            sen = source.sentinel(centres) if reads_sentinel else None
            mtd = source.mtd(centres) if reads_mtd else None
            probs = predictor(imgs, sen, mtd)
            ran += len(js)
            if counter is not None:
                counter(len(js))
            for b, j in enumerate(js):
                x = int(windows.xs[j])
                w = windows.wy[i][:, None] * windows.wx[j][None, :]
                ry0, ry1 = max(y, top), min(y + t, block.r1)
                rx0, rx1 = max(x, block.c0), min(x + t, block.c1)
                if ry0 >= ry1 or rx0 >= rx1:
                    continue
                ww = w[ry0 - y:ry1 - y, rx0 - x:rx1 - x].astype(np.float32)
                acc[:, ry0 - top:ry1 - top, rx0 - block.c0:rx1 - block.c0] += \
                    probs[b][:, ry0 - y:ry1 - y, rx0 - x:rx1 - x] * ww
                wsum[ry0 - top:ry1 - top, rx0 - block.c0:rx1 - block.c0] += ww
    flush(block.r1)
    return ran
