"""Models: U-T&T and its parts, a registry and :func:`create_model`.

Every registered model is called with the same keywords and returns a dict of logits::

    out = model(aerial=(B, 5, P, P) float, sentinel=(B, T, 10, 40, 40) float, dates=(B, T) int64,
                pad_mask=(B, T) bool, mtd=(B, MTD_DIM) float)
    out["aerial"]    (B, 13, P, P)  the prediction (metrics and predictions read this one)
    out["sentinel"]  (B, 13, P, P)  satellite-head logits, where the model has one

P is a multiple of 32 (32 ... 512); ``pad_mask`` is True on padded dates, which never change the output.

=================  ===============================================================================
``utt``            U-T&T: U-Net/ResNet34 + U-TAE + fusion at encoder stages 1-5 (paper §4)
``utt-fpn``        U-T&T with an FPN aerial decoder (paper Table 5); fusion at stages 2-5
``utt-deeplabv3``  U-T&T with a DeepLabV3 aerial decoder (paper Table 5); fusion at stage 5
``unet``           U-Net/ResNet34 on the aerial patch alone; returns "aerial" only
``utae``           U-TAE alone, satellite head upsampled to P; "aerial" is the "sentinel" tensor
=================  ===============================================================================

Options (keywords of :func:`create_model`): ``use_metadata`` (metadata MLP added to the bottleneck; models
with an aerial branch), ``encoder_weights`` (local ResNet34 state-dict file; default None = random
initialisation), ``baseline_quirks`` (U-T&T: collapsed fusion from batch element 0, as the release).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

from torch import nn

from flair_lake.errors import UsageError
from flair_lake.models import _compat  # noqa: F401  (before anything imports smp/torchvision)
from flair_lake.models.fusion import Fusion
from flair_lake.models.utae import UTAE
from flair_lake.models.utt import UTT, AerialBranch, SatelliteHead, UNet, UTAEClassifier, load_encoder_weights

MODELS: dict[str, Callable[..., nn.Module]] = {
    "utt": partial(UTT, "unet"),
    "utt-fpn": partial(UTT, "fpn"),
    "utt-deeplabv3": partial(UTT, "deeplabv3"),
    "unet": UNet,
    "utae": UTAEClassifier,
}

OPTIONS = ("use_metadata", "encoder_weights", "baseline_quirks")  # what a trainer may pass to any model

__all__ = ["MODELS", "UTAE", "UTT", "AerialBranch", "Fusion", "SatelliteHead", "UNet", "UTAEClassifier",
           "count_parameters", "create_model", "load_encoder_weights"]


def _accepted(factory: Callable[..., nn.Module]) -> set[str]:
    """Return the keyword names a factory accepts."""
    return {n for n, p in inspect.signature(factory).parameters.items()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def create_model(name: str, **options) -> nn.Module:
    """Build a registered model.

    The :data:`OPTIONS` a model has no use for may be passed when they are off (False or None), so that a
    trainer can pass its whole configuration to any model; turning one on for a model without it is an error.

    Args:
        name: a key of :data:`MODELS`.
        **options: ``use_metadata``, ``encoder_weights``, ``baseline_quirks`` (see the module docstring).

    Raises:
        UsageError: unknown name, or an option the model does not support.
    """
    if name not in MODELS:
        raise UsageError(f"unknown model {name!r}; expected one of: {', '.join(MODELS)}")
    factory = MODELS[name]
    accepted = _accepted(factory)
    kwargs = {}
    for key, value in options.items():
        if key in accepted:
            kwargs[key] = value
        elif key not in OPTIONS or value not in (None, False):
            raise UsageError(f"model {name!r} does not support {key}={value!r}; "
                             f"it accepts: {', '.join(sorted(accepted)) or 'no options'}")
    return factory(**kwargs)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Return the number of parameters (elements) of a model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
