"""Checkpoints written by ``train/fit.py``: read them, and load their weights, with one-line errors.

A checkpoint is a dict saved by :func:`torch.save` with at least ``model_name``, ``model_kwargs`` and
``state_dict`` (``fit`` adds the optimizer, the early-stopping state, the random generators, the view, the band
statistics and the configuration).
"""

from __future__ import annotations

from pathlib import Path

import torch

from flair_lake.errors import FlairLakeError

REQUIRED_KEYS = ("model_name", "state_dict")


class CheckpointError(FlairLakeError, ValueError):
    """A checkpoint cannot be read, or cannot be used for this run."""


def read_checkpoint(path: str | Path) -> dict:
    """Return the checkpoint dict at ``path``.

    Raises:
        CheckpointError: no file, not a torch file (empty, truncated, another format), or not a flair-lake
            checkpoint (a bare state dict, another tool's dict).
    """
    path = Path(path)
    fix = "give the best.pt or last.pt that `python train/fit.py --out RUN` wrote"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; {fix}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle, zip, EOF and format errors all mean "not a readable torch file"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path} ({first}); {fix}") from exc
    if not isinstance(ck, dict) or any(k not in ck for k in REQUIRED_KEYS):
        what = f"a dict without {', '.join(k for k in REQUIRED_KEYS if k not in ck)}" if isinstance(ck, dict) \
            else type(ck).__name__
        raise CheckpointError(f"{path} is not a flair-lake checkpoint (found {what}); {fix}")
    return ck


def load_weights(module: torch.nn.Module, ck: dict, path: str | Path) -> None:
    """Load ``ck['state_dict']`` into ``module``.

    Raises:
        CheckpointError: the weights do not fit (another model, or other model options such as --metadata).
    """
    try:
        module.load_state_dict(ck["state_dict"])
    except RuntimeError as exc:
        missing, unexpected = _key_diff(module.state_dict(), ck["state_dict"])
        detail = f"{missing} missing and {unexpected} unexpected weights" if missing or unexpected \
            else "weights of other shapes"
        raise CheckpointError(f"{path} does not fit model {ck['model_name']!r} with options "
                              f"{ck.get('model_kwargs', {})} ({detail}); train and load with the same --model "
                              "and --metadata, or use another --out") from exc


def _key_diff(expected: dict, got: dict) -> tuple[int, int]:
    return len(expected.keys() - got.keys()), len(got.keys() - expected.keys())
