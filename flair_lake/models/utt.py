"""U-T&T (paper §4, Fig. 6): a ResNet34 aerial branch and a U-TAE satellite branch joined by fusion.

Every model here has the same call (the keyword contract of :mod:`flair_lake.models`)::

    model(aerial=(B, 5, P, P) float, sentinel=(B, T, 10, 40, 40) float, dates=(B, T) int64,
          pad_mask=(B, T) bool, mtd=(B, MTD_DIM) float)
        -> {"aerial": (B, 13, P, P), "sentinel": (B, 13, P, P)}

with P a multiple of 32; inputs a model does not use may be None.
"""

from __future__ import annotations

import logging
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from flair_lake.errors import UsageError
from flair_lake.models.fusion import Fusion, centre_crop
from flair_lake.models.utae import UTAE
from flair_lake.schema import AERIAL_BANDS, MTD_DIM, NUM_CLASSES, S2_BANDS, S2_CENTRE_CROP

log = logging.getLogger(__name__)

ENCODER = "resnet34"
OUTPUT_STRIDE = 32  # the ResNet34 encoder halves the patch five times

# decoder name -> (smp class, encoder stages the decoder reads, i.e. the stages worth fusing).
# U-Net reads stages 1..5 (stage 0, the input, only gives the output size); FPN reads 2..5; DeepLabV3 reads
# only the last (dilated, stride 8) stage, so its fusion is applied to that one map before the ASPP decoder.
DECODERS: dict[str, tuple[type[nn.Module], tuple[int, ...]]] = {
    "unet": (smp.Unet, (1, 2, 3, 4, 5)),
    "fpn": (smp.FPN, (2, 3, 4, 5)),
    "deeplabv3": (smp.DeepLabV3, (5,)),
}


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Map a (O, 3, k, k) RGB first-conv weight to ``in_channels`` inputs the way smp does.

    The RGB filters are cycled over the new inputs (R, G, B, R, G for 5 bands) and scaled by 3 / in_channels,
    so that the response to an input of equal bands keeps its magnitude.
    """
    src = weight.shape[1]
    new = torch.stack([weight[:, i % src] for i in range(in_channels)], dim=1)
    return new * (src / in_channels)


def _strip_prefixes(key: str) -> str:
    """Drop wrapper prefixes (DDP ``module.``, smp ``encoder.``) from a state-dict key."""
    changed = True
    while changed:
        changed = False
        for prefix in ("module.", "encoder."):
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a local ResNet34 state dict into an smp ResNet encoder, adapting a 3-channel first conv.

    Args:
        encoder: smp ``ResNetEncoder`` (torchvision key names: ``conv1.weight``, ``layer1.0.conv1.weight``).
        path: file written by ``torch.save`` holding a state dict (or a dict with a ``state_dict`` entry), in
            torchvision or smp-encoder layout; ``fc.*`` entries are ignored.

    Raises:
        UsageError: the file is missing or unreadable, or its keys or shapes do not fit a ResNet34.
    """
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"encoder weights {str(p)!r} not found: expected a local state-dict file of a "
                         f"{ENCODER} (e.g. torchvision's resnet34-b627a593.pth); nothing is downloaded "
                         "offline")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and format errors all mean "not a readable state dict"
        raise UsageError(f"cannot read encoder weights {p}: {exc}") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise UsageError(f"encoder weights {p}: expected a state dict (name -> tensor), "
                         f"got {type(obj).__name__}")
    state = {_strip_prefixes(k): v for k, v in obj.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    target = encoder.conv1.weight
    conv1 = state.get("conv1.weight")
    adapted = ""
    if conv1 is not None and conv1.ndim == 4 and conv1.shape[1] != target.shape[1]:
        if conv1.shape[1] != 3:
            raise UsageError(f"encoder weights {p}: conv1 has {conv1.shape[1]} input channels; expected 3 "
                             f"(RGB, adapted here) or {target.shape[1]}")
        state["conv1.weight"] = adapt_first_conv(conv1, target.shape[1])
        n = target.shape[1]
        adapted = f" (conv1 adapted 3 -> {n} channels: RGB filters cycled, x3/{n})"
    try:
        result = nn.Module.load_state_dict(encoder, state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise UsageError(f"encoder weights {p} do not fit a {ENCODER}: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise UsageError(f"encoder weights {p} do not fit a {ENCODER}: missing {result.missing_keys[:5]}"
                         f"{'...' if len(result.missing_keys) > 5 else ''}, unexpected "
                         f"{result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}")
    log.info("encoder: weights from %s%s", p, adapted)


class AerialBranch(nn.Module):
    """ResNet34 encoder, smp decoder and head, run stage by stage so that features can be changed in between.

    Args:
        decoder: one of :data:`DECODERS` ('unet', 'fpn', 'deeplabv3'), smp defaults otherwise.
        encoder_weights: local state-dict file for the encoder, or None for random initialisation.
    """

    def __init__(self, decoder: str = "unet", *, encoder_weights: str | Path | None = None) -> None:
        super().__init__()
        if decoder not in DECODERS:
            raise UsageError(f"unknown decoder {decoder!r}; expected one of {', '.join(DECODERS)}")
        cls, self.fused_stages = DECODERS[decoder]
        self.decoder_name = decoder
        # encoder_weights=None: smp must not try to download; local weights are loaded below
        net = cls(encoder_name=ENCODER, encoder_weights=None, in_channels=len(AERIAL_BANDS),
                  classes=NUM_CLASSES)
        self.encoder, self.decoder, self.head = net.encoder, net.decoder, net.segmentation_head
        self.stage_channels: tuple[int, ...] = tuple(net.encoder.out_channels)  # (5, 64, 64, 128, 256, 512)
        if encoder_weights is None:
            log.info("encoder: random initialisation (no ImageNet weights offline)")
        else:
            load_encoder_weights(self.encoder, encoder_weights)

    def encode(self, aerial: torch.Tensor) -> list[torch.Tensor]:
        """Return the encoder's stage outputs, stage 0 (the input itself) first."""
        h, w = aerial.shape[-2:]
        bands = self.stage_channels[0]
        if aerial.ndim != 4 or aerial.shape[1] != bands or h % OUTPUT_STRIDE or w % OUTPUT_STRIDE:
            raise UsageError(f"aerial must be (B, {bands}, P, P) with P a multiple of {OUTPUT_STRIDE}, got "
                             f"{tuple(aerial.shape)}; choose a patch size of 32, 64, ..., 512")
        if self.training and self.decoder_name == "deeplabv3" and aerial.shape[0] < 2:
            # smp's ASPP pooling branch has a BatchNorm over a 1x1 map: one sample gives it one value
            raise UsageError("the DeepLabV3 decoder cannot train on a batch of 1 (BatchNorm after the ASPP "
                             "global pooling); use a batch size >= 2 per process and drop the last batch")
        return self.encoder(aerial)

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Return (B, 13, P, P) logits from the (possibly fused) stage outputs."""
        return self.head(self.decoder(features))


class MetadataEncoder(nn.Sequential):
    """MLP from the encoded aerial metadata to the bottleneck width, added to the last encoder stage.

    The paper's 'bottom' strategy (appendix A.5.1, Fig. 10): a shallow MLP with dropout 0.4 and ReLU whose
    output matches the last ResNet34 stage, added to every pixel of it. (The released code instead lays a
    16-vector along the rows of the map, docs/baseline.md, "Metadata encoding".)
    """

    def __init__(self, in_dim: int = MTD_DIM, out_dim: int = 512, *, hidden: tuple[int, int] = (64, 128),
                 dropout: float = 0.4) -> None:
        super().__init__(nn.Linear(in_dim, hidden[0]), nn.Dropout(dropout), nn.ReLU(),
                         nn.Linear(hidden[0], hidden[1]), nn.Dropout(dropout), nn.ReLU(),
                         nn.Linear(hidden[1], out_dim))
        self.in_dim = in_dim

    def forward(self, mtd: torch.Tensor) -> torch.Tensor:
        """Map (B, MTD_DIM) float metadata to (B, out_dim)."""
        if mtd.ndim != 2 or mtd.shape[1] != self.in_dim:
            raise UsageError(f"mtd must be (B, {self.in_dim}) (schema.MTD_DIM), got {tuple(mtd.shape)}")
        return super().forward(mtd)


class SatelliteHead(nn.Module):
    """Per-pixel classifier of the U-TAE map under the aerial footprint, upsampled to the aerial grid.

    The 1x1 conv runs on the 10 x 10 crop first and the logits are then upsampled (nearest): the same
    numbers as the release's upsample-then-conv, without a 64 x P x P intermediate (docs/baseline.md, "Fusion module").
    """

    def __init__(self, channels: int = 64, classes: int = NUM_CLASSES, *, crop: int = S2_CENTRE_CROP) -> None:
        super().__init__()
        self.crop = crop
        self.conv = nn.Conv2d(channels, classes, kernel_size=1)

    def forward(self, utae_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Map (B, 64, W, W) to (B, classes, *size) logits."""
        logits = self.conv(centre_crop(utae_map, self.crop))  # B x classes x crop x crop
        return F.interpolate(logits, size=tuple(size), mode="nearest")


def _need(name: str, value, model: str):
    if value is None:
        raise UsageError(f"model {model!r} needs the {name!r} input, got None")
    return value


class UTT(nn.Module):
    """U-T&T: aerial branch + U-TAE, fused at every encoder stage the decoder reads; two heads.

    Args:
        decoder: aerial decoder, 'unet' (the paper's model), 'fpn' or 'deeplabv3' (paper Table 5). FPN reads
            encoder stages 2-5 and DeepLabV3 only stage 5, so fusion goes into those stages only.
        use_metadata: add the metadata MLP's output to the last encoder stage (paper's +MTD).
        encoder_weights: local ResNet34 state-dict file; None = random initialisation.
        baseline_quirks: collapsed fusion from batch element 0 for every sample, as the released code.
    """

    def __init__(self, decoder: str = "unet", *, use_metadata: bool = False,
                 encoder_weights: str | Path | None = None, baseline_quirks: bool = False) -> None:
        super().__init__()
        self.name = "utt" if decoder == "unet" else f"utt-{decoder}"
        self.aerial = AerialBranch(decoder, encoder_weights=encoder_weights)
        self.metadata = MetadataEncoder(MTD_DIM, self.aerial.stage_channels[-1]) if use_metadata else None
        self.utae = UTAE(len(S2_BANDS))
        self.fusion = Fusion(self.utae.out_channels, self.aerial.stage_channels, self.aerial.fused_stages,
                             baseline_quirks=baseline_quirks)
        self.sat_head = SatelliteHead(self.utae.out_channels)

    def forward(self, aerial: torch.Tensor, sentinel: torch.Tensor | None = None,
                dates: torch.Tensor | None = None, pad_mask: torch.Tensor | None = None,
                mtd: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Return {"aerial": (B, 13, P, P), "sentinel": (B, 13, P, P)} logits (see the module docstring)."""
        features = self.aerial.encode(aerial)  # [(B, 5, P, P), (B, 64, P/2, P/2), ..., (B, 512, P/32, P/32)]
        if self.metadata is not None:
            features[-1] = features[-1] + self.metadata(_need("mtd", mtd, self.name))[:, :, None, None]
        utae_map = self.utae(_need("sentinel", sentinel, self.name), _need("dates", dates, self.name),
                             pad_mask)  # B x 64 x 40 x 40
        logits = self.aerial.decode(self.fusion(features, utae_map))
        return {"aerial": logits, "sentinel": self.sat_head(utae_map, aerial.shape[-2:])}


class UNet(nn.Module):
    """The aerial branch alone (paper Table 3 'U-Net'); the Sentinel inputs are ignored.

    Args:
        use_metadata: add the metadata MLP's output to the last encoder stage (paper's +MTD).
        encoder_weights: local ResNet34 state-dict file; None = random initialisation.
    """

    def __init__(self, *, use_metadata: bool = False, encoder_weights: str | Path | None = None) -> None:
        super().__init__()
        self.aerial = AerialBranch("unet", encoder_weights=encoder_weights)
        self.metadata = MetadataEncoder(MTD_DIM, self.aerial.stage_channels[-1]) if use_metadata else None

    def forward(self, aerial: torch.Tensor, sentinel: torch.Tensor | None = None,
                dates: torch.Tensor | None = None, pad_mask: torch.Tensor | None = None,
                mtd: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Return {"aerial": (B, 13, P, P)} logits."""
        features = self.aerial.encode(aerial)
        if self.metadata is not None:
            features[-1] = features[-1] + self.metadata(_need("mtd", mtd, "unet"))[:, :, None, None]
        return {"aerial": self.aerial.decode(features)}


class UTAEClassifier(nn.Module):
    """The U-TAE alone with the satellite head (paper Table 3 'UTAE'), its logits upsampled to the patch.

    Returns the same tensor under "sentinel" and "aerial", so that metrics read "aerial" as for every model
    while the loss counts it once (with the satellite class weights).
    """

    def __init__(self) -> None:
        super().__init__()
        self.utae = UTAE(len(S2_BANDS))
        self.sat_head = SatelliteHead(self.utae.out_channels)

    def forward(self, aerial: torch.Tensor, sentinel: torch.Tensor | None = None,
                dates: torch.Tensor | None = None, pad_mask: torch.Tensor | None = None,
                mtd: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Return {"sentinel": (B, 13, P, P), "aerial": the same tensor}; ``aerial`` only gives P."""
        utae_map = self.utae(_need("sentinel", sentinel, "utae"), _need("dates", dates, "utae"), pad_mask)
        logits = self.sat_head(utae_map, aerial.shape[-2:])
        return {"sentinel": logits, "aerial": logits}
