"""CUDA paths, run on a machine with a GPU (marked ``gpu``: skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from flair_lake.loader.transform import BatchTransform

pytestmark = pytest.mark.gpu


def _batch(b: int = 4, p: int = 64, t: int = 12) -> dict:
    g = torch.Generator().manual_seed(0)
    pad = torch.zeros(b, t, dtype=torch.bool)
    pad[:, -3:] = True
    return {
        "aerial": torch.randint(0, 256, (b, 5, p, p), generator=g, dtype=torch.uint8),
        "label": torch.randint(0, 13, (b, p, p), generator=g, dtype=torch.uint8),
        "sentinel": torch.randint(0, 10_000, (b, t, 10, 40, 40), generator=g).to(torch.int32),
        "pad_mask": pad,
    }


def test_batch_transform_on_cuda_equals_cpu():
    stats = {"aerial": {"mean": [100.0] * 5, "std": [50.0] * 5},
             "sentinel": {"mean": [1000.0] * 10, "std": [500.0] * 10}}
    tf = BatchTransform(stats, augment=True, channels_last=True)
    cpu = tf(_batch(), "cpu", torch.Generator().manual_seed(1))
    gpu = tf(_batch(), "cuda", torch.Generator().manual_seed(1))
    for key in ("aerial", "label", "sentinel"):
        assert gpu[key].device.type == "cuda"
        torch.testing.assert_close(gpu[key].cpu(), cpu[key], rtol=1e-6, atol=1e-5)
