"""The synthetic generator writes the exact raw FLAIR #2 format, deterministically, with learnable content."""

from __future__ import annotations

import filecmp
import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from flair_lake import schema
from flair_lake.cli import main
from flair_lake.config import SynthConfig
from flair_lake.raw import metadata, names
from flair_lake.synth import class_spectra, synthesize

DATA = Path(__file__).parent / "data"


def _images(root: Path):
    return sorted(root.glob("flair_*aerial_*/D*/Z*/img/IMG_*.tif"))


def test_tree_layout_and_names(raw_tree):
    for part in ("flair_aerial_train", "flair_labels_train", "flair_sen_train", "flair_2_aerial_test",
                 "flair_2_labels_test", "flair_2_sen_test"):
        assert (raw_tree / part).is_dir(), part
    assert (raw_tree / names.CENTROIDS_JSON).is_file()
    assert (raw_tree / names.METADATA_JSON).is_file()
    for img in _images(raw_tree):
        assert names.DOMAIN_RE.match(img.parents[2].name)
        assert names.ZONE_RE.match(img.parents[1].name)
        assert names.IMG_RE.match(img.name) and len(img.stem.split("_")[1]) == 6
    test_domains = {p.name for p in (raw_tree / "flair_2_aerial_test").iterdir()}
    assert all(schema.official_split(d) == "test" for d in test_domains)


def test_aerial_and_labels_format(raw_tree):
    meta, bad = metadata.read_metadata(raw_tree / names.METADATA_JSON)
    assert not bad
    codes = set()
    for img in _images(raw_tree):
        pid = names.parse_id(img.name)
        msk = Path(str(img).replace("aerial", "labels")).parent.parent / "msk" / names.msk_name(pid)
        with rasterio.open(img) as src:
            assert (src.count, src.dtypes[0], src.width, src.height) == (5, "uint8", 64, 64)
            assert src.crs.to_epsg() == 2154
            t = src.transform
            m = meta[pid]
            # transform agrees with the metadata centroid: origin = (x - 51.2, y + 51.2), 102.4 m footprint
            assert math.isclose(t.c + 32 * t.a, m.x, abs_tol=0.06)
            assert math.isclose(t.f + 32 * t.e, m.y, abs_tol=0.06)
            assert math.isclose(t.a * 64, 102.4) and math.isclose(-t.e * 64, 102.4)
        with rasterio.open(msk) as src:
            assert (src.count, src.dtypes[0]) == (1, "uint8")
            lab = src.read(1)
            assert src.transform == t
        assert lab.min() >= 1 and lab.max() <= 19
        codes |= set(np.unique(lab).tolist())
    assert {1, 3, 10, 11}.issubset(codes)
    assert any(c > 13 for c in codes) or 13 in codes


def test_sentinel_files_and_centroids(raw_tree):
    centroids, _ = metadata.read_centroids(raw_tree / names.CENTROIDS_JSON)
    meta, _ = metadata.read_metadata(raw_tree / names.METADATA_JSON)
    assert set(centroids) == set(meta)
    half = schema.S2_WINDOW // 2
    tight = 0
    all_cloudy = 0
    snowy_dates = 0
    for data_f in sorted(raw_tree.glob("flair_*sen_*/D*/Z*/sen/*_data.npy")):
        domain, zone = data_f.parents[2].name, data_f.parents[1].name
        stem = names.sentinel_stem(domain, zone)
        assert data_f.name == f"{stem}_data.npy"
        data = np.load(data_f)
        masks = np.load(data_f.with_name(f"{stem}_masks.npy"))
        lines = data_f.with_name(f"{stem}_products.txt").read_text().splitlines()
        t, c, h, w = data.shape
        assert data.dtype == np.uint16 and c == 10 and 20 <= t <= 114
        assert masks.dtype == np.uint8 and masks.shape == (t, 2, h, w) and masks.max() <= 100
        assert len(lines) == t
        dates = [names.parse_product_date(line) for line in lines]
        assert dates == sorted(dates) and len(set(dates)) == t
        assert {d.year for d in dates} == {int(domain.split("_")[1])}
        snowy_dates += int((masks[:, 0] >= 60).any(axis=(1, 2)).sum())
        for pid, m in meta.items():
            if (m.domain, m.zone) != (domain, zone):
                continue
            r, cc = centroids[pid]
            assert half <= r <= h - half and half <= cc <= w - half, (pid, r, cc, h, w)
            tight += r == half or cc == half or r == h - half or cc == w - half
            win = masks[:, :, r - half:r + half, cc - half:cc + half]
            cover = ((win[:, 0] >= 60) | (win[:, 1] >= 60)).mean(axis=(1, 2))
            all_cloudy += bool((cover >= 0.6).all())
    assert tight > 0, "some centroid windows must touch the super-area edge"
    assert all_cloudy >= 1, "one patch has no clear date"
    assert snowy_dates > 0


def test_real_metadata_parses_with_the_ingest_reader():
    meta, bad = metadata.read_metadata(DATA / "real_metadata_sample.json")
    assert not bad and len(meta) == 12
    m = meta[717]
    assert (m.domain, m.zone, m.camera) == ("D004_2021", "Z8_NF", "UCE-M3-f120-s07")
    assert m.acquired.isoformat() == "2021-05-28T08:06:00"
    assert math.isclose(m.x, 924009.6) and math.isclose(m.z, 1661.9399414062)


def test_product_names_round_trip():
    import datetime as dt

    t = dt.datetime(2020, 2, 29, 10, 33, 12)
    assert names.parse_product_date(names.product_name(t)) == t.date()
    assert names.parse_product_date("S2B_MSIL2A_20210114T110329_N0214_R094_T30TYN_20210114T121822") == \
        dt.date(2021, 1, 14)


def test_same_seed_is_byte_identical(tmp_path):
    cfg = SynthConfig(domains=("D006_2020",), zones_per_domain=1, patches_per_zone=2, patch_size=32,
                      max_dates=22)
    synthesize(tmp_path / "a", cfg)
    synthesize(tmp_path / "b", cfg)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and files_a
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", [str(f) for f in files_a],
                                               shallow=False)
    assert not mismatch and not errors
    synthesize(tmp_path / "c", SynthConfig(**{**cfg.__dict__, "seed": 1}))
    assert not filecmp.cmp(tmp_path / "a" / names.METADATA_JSON, tmp_path / "c" / names.METADATA_JSON,
                           shallow=False) or not filecmp.cmp(
        next((tmp_path / "a").rglob("*_data.npy")), next((tmp_path / "c").rglob("*_data.npy")), shallow=False)


def test_look_alike_classes_differ_only_in_time():
    from flair_lake.synth.aerial import _LOOK

    assert _LOOK[10] == _LOOK[11]  # agricultural land and herbaceous vegetation: same aerial appearance
    doy = np.arange(1, 366, dtype=np.float32)
    spec = class_spectra(doy)
    with np.errstate(invalid="ignore"):  # class 0 is unused (all zeros)
        ndvi = (spec[:, :, 6] - spec[:, :, 2]) / (spec[:, :, 6] + spec[:, :, 2])
    # crops: bare in winter, green in June, harvested by August; grass green all year
    assert ndvi[11, 160] - ndvi[11, 20] > 0.4 and ndvi[11, 160] - ndvi[11, 230] > 0.4
    assert abs(ndvi[10, 160] - ndvi[10, 20]) < 0.25
    assert ndvi[7, 180] - ndvi[7, 15] > 0.3 and abs(ndvi[6, 180] - ndvi[6, 15]) < 0.1


@pytest.mark.parametrize("args, needle", [
    (["--patches-per-zone", "-3"], "--patches-per-zone must be >= 1"),
    (["--zones-per-domain", "0"], "--zones-per-domain must be >= 1"),
    (["--patch-size", "16"], "--patch-size must be a multiple of 32"),
    (["--patch-size", "100"], "--patch-size must be a multiple of 32"),
    (["--domains", "D06_2020"], "is not a FLAIR domain name"),
])
def test_cli_bad_sizes(tmp_path, args, needle):
    out = tmp_path / "raw"
    res = CliRunner().invoke(main, ["synth", str(out), *args])
    assert res.exit_code != 0
    assert needle in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_cli_refuses_non_empty_folder(tmp_path):
    out = tmp_path / "raw"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = CliRunner().invoke(main, ["synth", str(out), "--patches-per-zone", "1", "--patch-size", "32"])
    assert res.exit_code != 0 and "not empty" in res.output and "--overwrite" in res.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    res = CliRunner().invoke(main, ["synth", str(out), "--patches-per-zone", "1", "--patch-size", "32",
                                    "--domains", "D006_2020", "--zones-per-domain", "1", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert "wrote 1 patches" in res.output
    assert json.loads((out / names.METADATA_JSON).read_text())
