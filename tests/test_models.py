"""The model contract, parametrised over every registered model, and known answers for the parts.

Small inputs (P = 64, batch 2, T = 5 with one padded date) keep the whole file to a few seconds on 2 cores.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from flair_lake.errors import UsageError
from flair_lake.models import MODELS, count_parameters, create_model
from flair_lake.models.fusion import CollapsedMLP, centre_crop
from flair_lake.models.utae import LTAE, MaskedGroupNorm, PositionalEncoding
from flair_lake.models.utt import SatelliteHead, adapt_first_conv
from flair_lake.schema import MTD_DIM, NUM_CLASSES, S2_WINDOW

NAMES = sorted(MODELS)
UTT_NAMES = [n for n in NAMES if n.startswith("utt")]
HAS_AERIAL_BRANCH = {"utt", "utt-fpn", "utt-deeplabv3", "unet"}
USES_SENTINEL = {"utt", "utt-fpn", "utt-deeplabv3", "utae"}
# paper Tables 3 and 5, millions of parameters
PAPER_PARAMS_M = {"utt": 27.3, "utt-fpn": 26.1, "utt-deeplabv3": 28.8, "unet": 24.4, "utae": 2.3}


@pytest.fixture(scope="module", autouse=True)
def _two_threads():
    """Run this module on 2 threads (fast and stable timings), restoring the count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def build(name: str, **options) -> torch.nn.Module:
    """Create a model with a fixed seed; metadata on wherever the model has an aerial branch."""
    torch.manual_seed(0)
    options.setdefault("use_metadata", name in HAS_AERIAL_BRANCH)
    return create_model(name, **options)


def make_batch(b: int = 2, t: int = 5, p: int = 64, *, seed: int = 1) -> dict[str, torch.Tensor]:
    """Return a model batch: sample 1 has its last date padded (zeros, as the loader writes them)."""
    g = torch.Generator().manual_seed(seed)
    pad_mask = torch.zeros(b, t, dtype=torch.bool)
    pad_mask[1:, -1] = True
    sentinel = torch.randn(b, t, 10, S2_WINDOW, S2_WINDOW, generator=g) * ~pad_mask[:, :, None, None, None]
    return {"aerial": torch.randn(b, 5, p, p, generator=g), "sentinel": sentinel,
            "dates": torch.randint(-150, 200, (b, t), generator=g), "pad_mask": pad_mask,
            "mtd": torch.rand(b, MTD_DIM, generator=g)}


def with_garbage_padding(batch: dict, extra: int = 3, *, seed: int = 2) -> dict:
    """Append ``extra`` padded dates holding garbage values and dates to every sample."""
    g = torch.Generator().manual_seed(seed)
    b = batch["sentinel"].shape[0]
    junk = 1e3 * torch.randn(b, extra, 10, S2_WINDOW, S2_WINDOW, generator=g)
    return {**batch, "sentinel": torch.cat([batch["sentinel"], junk], 1),
            "dates": torch.cat([batch["dates"], torch.randint(-10**6, 10**6, (b, extra), generator=g)], 1),
            "pad_mask": torch.cat([batch["pad_mask"], torch.ones(b, extra, dtype=torch.bool)], 1)}


def assert_same(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    """Assert a == b within ``tol`` relative to the output's scale (random-init logits reach ~100)."""
    err = (a - b).abs().max().item()
    assert err <= tol * max(1.0, b.abs().max().item()), f"max difference {err} (scale {b.abs().max().item()})"


@pytest.mark.parametrize("name", NAMES)
def test_contract(name):
    """Forward and backward run; keys, shapes, dtypes; finite; every parameter gets a gradient."""
    model = build(name).train()
    out = model(**make_batch())
    expected = {"aerial", "sentinel"} if name in USES_SENTINEL else {"aerial"}
    assert set(out) == expected
    for key, value in out.items():
        assert value.shape == (2, NUM_CLASSES, 64, 64), key
        assert value.dtype == torch.float32, key
        assert torch.isfinite(value).all(), key
    sum(v.mean() for v in out.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters that never get a gradient: {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_padded_dates_change_nothing(name):
    """Extra padded dates with garbage values leave every output unchanged; so does removing the padding."""
    model = build(name).eval()
    batch = make_batch()
    with torch.no_grad():
        ref = model(**batch)
        padded = model(**with_garbage_padding(batch))
        alone = model(**{k: (v[1:2, :4] if k in ("sentinel", "dates", "pad_mask") else v[1:2])
                         for k, v in batch.items()})  # sample 1 without its padded date
    for key in ref:
        assert_same(padded[key], ref[key])
        assert_same(alone[key], ref[key][1:2])


def test_utae_map_ignores_padding():
    """The U-TAE map itself (scale ~1) agrees to 1e-5 absolute with and without padding."""
    model = build("utae").eval()
    batch = make_batch()
    padded = with_garbage_padding(batch)
    with torch.no_grad():
        ref = model.utae(batch["sentinel"], batch["dates"], batch["pad_mask"])
        out = model.utae(padded["sentinel"], padded["dates"], padded["pad_mask"])
        alone = model.utae(batch["sentinel"][1:, :4], batch["dates"][1:, :4], batch["pad_mask"][1:, :4])
    assert ref.shape == (2, 64, S2_WINDOW, S2_WINDOW)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(alone, ref[1:], rtol=0, atol=1e-5)


def test_attention_is_zero_on_padded_dates():
    """Padded dates get no attention; valid dates' weights sum to 1; an all-padded series gets none."""
    model = build("utae").eval()
    batch = make_batch()
    batch["pad_mask"][0] = True  # sample 0: nothing valid at all
    with torch.no_grad():
        out, attn = model.utae(batch["sentinel"], batch["dates"], batch["pad_mask"], return_attention=True)
    assert attn.shape == (2, 16, 5, 5, 5)  # B x heads x T x h x w
    assert torch.isfinite(out).all()
    assert attn[0].abs().max() == 0
    assert attn[1, :, -1].abs().max() == 0
    torch.testing.assert_close(attn[1].sum(dim=1), torch.ones(16, 5, 5))


@pytest.mark.parametrize("name", UTT_NAMES)
def test_collapsed_fusion_is_per_sample(name):
    """By default sample 1's series cannot reach sample 0's logits; with baseline_quirks sample 0's does."""
    batch = make_batch()
    changed = {**batch, "sentinel": batch["sentinel"].clone()}
    changed["sentinel"][1, :4] += 5.0
    model = build(name).eval()
    with torch.no_grad():
        ref, out = model(**batch)["aerial"], model(**changed)["aerial"]
    assert_same(out[0], ref[0])
    assert not torch.allclose(out[1], ref[1])

    changed = {**batch, "sentinel": batch["sentinel"].clone()}
    changed["sentinel"][0] += 5.0
    quirky = build(name, baseline_quirks=True).eval()
    with torch.no_grad():
        ref, out = quirky(**batch)["aerial"], quirky(**changed)["aerial"]
    assert not torch.allclose(out[1], ref[1])  # the release: sample 0's summary for everyone


@pytest.mark.parametrize("size", [64, 512])
def test_satellite_head_conv_then_upsample_equals_upsample_then_conv(size):
    torch.manual_seed(0)
    head = SatelliteHead(64)
    utae_map = torch.randn(1, 64, S2_WINDOW, S2_WINDOW)
    with torch.no_grad():
        ours = head(utae_map, (size, size))
        release = F.conv2d(F.interpolate(centre_crop(utae_map), size=size, mode="nearest"),
                           head.conv.weight, head.conv.bias)
    assert ours.shape == (1, NUM_CLASSES, size, size)
    torch.testing.assert_close(ours, release, rtol=1e-5, atol=1e-5)


def test_centre_crop_is_the_aerial_footprint():
    x = torch.arange(40.0)[None, :, None].expand(1, 40, 40)
    assert centre_crop(x).shape == (1, 10, 10)
    assert centre_crop(x)[0, :, 0].tolist() == list(range(15, 25))  # rows 15..24 (docs/baseline.md, "Fusion module")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [32, 128, 512])
def test_patch_sizes(name, size):
    """Every multiple of 32 up to the full 512 px patch works, the fusion resized to each stage."""
    model = build(name).eval()
    with torch.no_grad():
        out = model(**make_batch(b=1, t=3, p=size))
    assert all(v.shape == (1, NUM_CLASSES, size, size) for v in out.values())


def test_bad_patch_size_is_a_clear_error():
    with pytest.raises(UsageError, match="multiple of 32"):
        build("utt").eval()(**make_batch(b=1, p=48))


def test_parameter_counts(capsys):
    """Within 3% of the paper; the parts match the hand count of the release (docs/baseline.md, "Parameter counts")."""
    counts = {name: count_parameters(build(name, use_metadata=False)) for name in NAMES}
    with capsys.disabled():
        print("\nparameters:", ", ".join(f"{n} {c:,}" for n, c in counts.items()))
    for name, count in counts.items():
        assert abs(count / 1e6 - PAPER_PARAMS_M[name]) <= 0.03 * PAPER_PARAMS_M[name], (name, count)
    assert counts["unet"] == 24_444_381  # the release's U-Net exactly
    # the release's 27,254,744 less its unused out_conv (22,311) and stage-0 fusion (325 + 4,256)
    assert counts["utt"] == 27_254_744 - 22_311 - 325 - 4_256
    utae = build("utae").utae
    parts = {k: count_parameters(getattr(utae, k)) for k in ("in_conv", "down", "ltae", "up")}
    assert parts == {"in_conv": 43_008, "down": 985_728, "ltae": 83_200, "up": 1_149_952}
    mlp_widths = [m.out_features for m in CollapsedMLP(64, 512) if isinstance(m, torch.nn.Linear)]
    assert mlp_widths == [213, 362, 512]
    assert [m.out_features for m in CollapsedMLP(64, 64) if isinstance(m, torch.nn.Linear)] == [128, 128, 64]


def test_local_encoder_weights(tmp_path, caplog):
    """A 3-channel ResNet34 state dict is loaded from a local file, conv1 adapted to 5 bands as smp does."""
    from torchvision.models import resnet34

    torch.manual_seed(3)
    state = resnet34(weights=None).state_dict()  # torchvision layout, fc included, conv1 (64, 3, 7, 7)
    path = tmp_path / "resnet34.pth"
    torch.save(state, path)
    with caplog.at_level(logging.INFO, logger="flair_lake.models"):
        model = create_model("utt", encoder_weights=str(path))
    enc = model.aerial.encoder
    w = state["conv1.weight"]
    cycled = torch.stack([w[:, i % 3] for i in range(5)], 1) * 3 / 5  # R, G, B, R, G
    torch.testing.assert_close(enc.conv1.weight.detach(), cycled)
    torch.testing.assert_close(enc.conv1.weight.detach(), adapt_first_conv(w, 5))
    torch.testing.assert_close(enc.layer4[2].conv2.weight.detach(), state["layer4.2.conv2.weight"])
    torch.testing.assert_close(enc.bn1.running_var, state["bn1.running_var"])
    assert any("weights from" in r.getMessage() for r in caplog.records)

    # an smp-style (prefixed) 5-channel dict loads as is
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in enc.state_dict().items()}}, tmp_path / "smp.pt")
    again = create_model("unet", encoder_weights=str(tmp_path / "smp.pt")).aerial.encoder
    torch.testing.assert_close(again.conv1.weight, enc.conv1.weight)

    with pytest.raises(UsageError, match="not found"):
        create_model("unet", encoder_weights=str(tmp_path / "missing.pth"))
    del state["layer1.0.conv1.weight"]
    torch.save(state, path)
    with pytest.raises(UsageError, match="missing"):
        create_model("unet", encoder_weights=str(path))


def test_random_init_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="flair_lake.models"):
        build("unet", use_metadata=False)
    messages = [r.getMessage() for r in caplog.records]
    assert any("random initialisation (no ImageNet weights offline)" in m for m in messages)


def test_create_model_errors():
    with pytest.raises(UsageError, match="expected one of: .*utt"):
        create_model("segformer")
    with pytest.raises(UsageError, match="does not support baseline_quirks"):
        create_model("unet", baseline_quirks=True)
    with pytest.raises(UsageError, match="does not support use_metadata"):
        create_model("utae", use_metadata=True)
    with pytest.raises(UsageError, match="does not support colour"):
        create_model("utt", colour=None)
    # what the trainer passes with its defaults works for every model
    for name in NAMES:
        create_model(name, use_metadata=False, encoder_weights=None, baseline_quirks=False)
    with pytest.raises(UsageError, match="needs the 'mtd' input"):
        build("utt").eval()(**{**make_batch(), "mtd": None})


def test_masked_group_norm_equals_group_norm_without_padding():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 128, 3, 3)  # B x T x C x h x w
    norm = MaskedGroupNorm(16, 128)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    reference = torch.nn.GroupNorm(16, 128)
    reference.load_state_dict(norm.state_dict())
    # the release's layout: (B*h*w) x C x T
    flat = x.permute(0, 3, 4, 2, 1).reshape(-1, 128, 6)
    expected = reference(flat).view(2, 3, 3, 128, 6).permute(0, 4, 3, 1, 2)
    torch.testing.assert_close(norm(x, torch.ones(2, 6, dtype=torch.bool)), expected, rtol=1e-5, atol=1e-5)


def test_positional_encoding_known_values():
    pe = PositionalEncoding(16, period=1000.0, repeat=16)
    days = torch.tensor([[0, 100]])
    table = pe(days)
    assert table.shape == (1, 2, 256)
    assert table[0, 0, 0::2].abs().max() == 0 and torch.all(table[0, 0, 1::2] == 1)
    i = torch.arange(16)
    angle = 100 / 1000 ** (2 * (i // 2) / 16)
    expected = torch.where(i % 2 == 0, torch.sin(angle), torch.cos(angle))
    torch.testing.assert_close(table[0, 1, :16], expected.float())
    torch.testing.assert_close(table[0, 1, 16:32], table[0, 1, :16])  # repeated for every head


def test_ltae_shapes():
    torch.manual_seed(0)
    ltae = LTAE(128).eval()
    pad_mask = torch.zeros(2, 4, dtype=torch.bool)
    out, attn = ltae(torch.randn(2, 4, 128, 5, 5), torch.randint(0, 300, (2, 4)), pad_mask)
    assert out.shape == (2, 128, 5, 5) and attn.shape == (2, 16, 4, 5, 5)


def test_deeplabv3_refuses_to_train_on_one_sample():
    """smp's ASPP pooling BatchNorm cannot train on one sample: say so instead of a bare BatchNorm error."""
    model = build("utt-deeplabv3").train()
    with pytest.raises(UsageError, match="batch of 1"):
        model(**make_batch(b=1))
    model.eval()(**make_batch(b=1))  # inference on one sample is fine
