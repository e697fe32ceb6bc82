"""Write the synthetic tree: every zone's aerial, label and Sentinel-2 files, then the two JSON files."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np

from flair_lake import schema
from flair_lake.config import SynthConfig
from flair_lake.errors import TargetNotWritableError, UsageError
from flair_lake.raw import names
from flair_lake.synth.aerial import render_aerial
from flair_lake.synth.sentinel import render_sentinel
from flair_lake.synth.world import Landscape, Zone, domain_mix, plan_zones, seed_sequence

log = logging.getLogger(__name__)

# Years of the synthetic departements (the test and val years are the real ones; the rest are plausible).
DOMAIN_YEARS = {
    "D004": 2021, "D014": 2020, "D029": 2021, "D031": 2019, "D058": 2020, "D066": 2021, "D067": 2021,
    "D077": 2021, "D015": 2020, "D022": 2021, "D026": 2020, "D036": 2020, "D061": 2020, "D064": 2021,
    "D068": 2021, "D069": 2020, "D071": 2020, "D084": 2021, "D006": 2020, "D007": 2020, "D008": 2019,
    "D009": 2019, "D013": 2020, "D016": 2020, "D017": 2018, "D021": 2020, "D023": 2020, "D030": 2021,
    "D032": 2019, "D033": 2021, "D034": 2021, "D035": 2020, "D038": 2021, "D041": 2021, "D044": 2020,
    "D046": 2019, "D049": 2020, "D051": 2019, "D052": 2019, "D055": 2018, "D060": 2021, "D063": 2019,
    "D070": 2020, "D072": 2019, "D074": 2020, "D078": 2021, "D080": 2021, "D081": 2020, "D086": 2020,
    "D091": 2021,
}
CAMERAS = ("CAMERA#030", "UCE-M3-f120-s06", "UCE-M3-f120-s08", "UCE-M3-f120-s07", "CAMERA#017",
           "CAMERA#020", "UCE-M3-f120", "CAMERA#034", "UCE-M3-f100")


def _write_tif(path: Path, array: np.ndarray, transform) -> None:
    """Write a (bands, P, P) uint8 GeoTIFF in Lambert-93, uncompressed like the real files."""
    import rasterio
    from rasterio.crs import CRS

    bands, p, _ = array.shape
    with rasterio.open(path, "w", driver="GTiff", width=p, height=p, count=bands, dtype="uint8",
                       crs=CRS.from_epsg(schema.CRS_EPSG), transform=transform) as dst:
        dst.write(array)


def _zone_part(domain: str) -> str:
    """Return 'train' (train and val domains) or 'test': the part of the tree a domain's files go to."""
    return "test" if schema.official_split(domain) == "test" else "train"


def write_zone(root: Path, cfg: SynthConfig, zone: Zone, *, lock_cloud: bool
               ) -> tuple[dict[str, list[int]], dict[str, dict]]:
    """Write one zone's aerial, label and Sentinel files; return its centroids and metadata entries."""
    from affine import Affine

    code, year_s = zone.domain.split("_")
    year = int(year_s)
    drng = np.random.default_rng(seed_sequence(cfg.seed, zone.domain, "domain"))
    mix = domain_mix(drng)
    gain, offset = drng.uniform(0.9, 1.1, 4), drng.uniform(-8, 8, 4)
    altitude = float(drng.uniform(20, 1600))
    shift_days = float(drng.uniform(-10, 10))
    flight = dt.date(year, 5, 1) + dt.timedelta(days=int(drng.integers(0, 120)))
    cams = drng.choice(len(CAMERAS), size=2, replace=False)

    rng = np.random.default_rng(seed_sequence(cfg.seed, zone.domain, zone.name))
    land = Landscape.draw(rng, zone, mix)
    aer_part, lab_part, sen_part = names.PARTS[_zone_part(zone.domain)]
    img_dir = root / aer_part / zone.domain / zone.name / "img"
    msk_dir = root / lab_part / zone.domain / zone.name / "msk"
    sen_dir = root / sen_part / zone.domain / zone.name / "sen"
    for d in (img_dir, msk_dir, sen_dir):
        d.mkdir(parents=True, exist_ok=True)

    p = cfg.patch_size
    px = schema.PATCH_FOOTPRINT_M / p
    grid = (np.arange(p) + 0.5) * px
    centroids, meta = {}, {}
    zone_day = flight + dt.timedelta(days=int(rng.integers(0, 6)))
    for k in range(zone.n_patches):
        pid = zone.first_id + k
        cx, cy = zone.patch_centroid(k)
        xx, yy = np.meshgrid(cx - schema.PATCH_FOOTPRINT_M / 2 + grid, cy + schema.PATCH_FOOTPRINT_M / 2 - grid)
        labels = land.classes(xx, yy)
        prng = np.random.default_rng(seed_sequence(cfg.seed, zone.domain, zone.name, pid))
        aerial = render_aerial(prng, labels, xx, yy, gain, offset)
        transform = Affine(px, 0.0, cx - schema.PATCH_FOOTPRINT_M / 2, 0.0, -px, cy + schema.PATCH_FOOTPRINT_M / 2)
        _write_tif(img_dir / names.img_name(pid), aerial, transform)
        _write_tif(msk_dir / names.msk_name(pid), labels[None], transform)
        centroids[names.img_name(pid)] = list(zone.centroid_pixel(k))
        minute = 6 * 60 + 30 + int(prng.integers(0, 300))
        meta[names.metadata_key(pid)] = {
            "domain": zone.domain, "zone": zone.name,
            "patch_centroid_x": round(cx, 1), "patch_centroid_y": round(cy, 1),
            "patch_centroid_z": round(altitude + 30 * math.sin(cx / 700) + 20 * math.cos(cy / 900), 10),
            "date": zone_day.isoformat(), "time": f"{minute // 60:02d}h{minute % 60:02d}",
            "camera": CAMERAS[cams[k % 2 if zone.index % 2 else 0]],
        }

    n_dates = int(rng.integers(cfg.min_dates, cfg.max_dates + 1))
    locked = zone.centroid_pixel(zone.n_patches - 1) if lock_cloud else None
    data, masks, times = render_sentinel(rng, land, zone, year, n_dates, shift_days,
                                         snowy=altitude > 700 or lock_cloud, locked_cloud=locked)
    stem = sen_dir / names.sentinel_stem(zone.domain, zone.name)
    np.save(f"{stem}_data.npy", data)
    np.save(f"{stem}_masks.npy", masks)
    sat = "S2A" if zone.index % 2 else "S2B"
    tile = f"3{int(code[1:]) % 2}T{'XYZ'[int(code[1:]) % 3]}{'KLMN'[zone.index % 4]}"
    lines = [names.product_name(t, satellite=sat, orbit=8 + int(code[1:]) % 130, tile=tile) for t in times]
    Path(f"{stem}_products.txt").write_text("\n".join(lines) + "\n")
    return centroids, meta


def synthesize(out: str | Path, cfg: SynthConfig, *, overwrite: bool = False, progress: bool = False) -> dict:
    """Write a synthetic raw FLAIR #2 tree to ``out``.

    Args:
        out: folder to create (must be empty or absent unless ``overwrite``).
        cfg: sizes and seed.
        overwrite: replace the content of a non-empty ``out``.
        progress: show a progress bar.

    Returns:
        A summary: patches, zones, domains per split, bytes written.

    Raises:
        UsageError: ``out`` is not empty and ``overwrite`` is false, or a domain name is malformed.
        TargetNotWritableError: ``out`` cannot be created.
    """
    out = Path(out)
    for d in cfg.domains:
        if not names.DOMAIN_RE.match(d):
            raise UsageError(f"domain {d!r} is not a FLAIR domain name like D004_2021 (departement_year)")
        if d.split("_")[0] not in DOMAIN_YEARS and schema.official_split(d) is None:
            log.warning("domain %s is not in the official split lists: its patches get no split", d)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder; give a new folder for the synthetic tree")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"{out} is not empty; pick an empty folder or pass --overwrite to replace it")
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TargetNotWritableError(f"cannot create {out}: {exc.strerror}; choose a writable folder") from None

    zones = plan_zones(cfg)
    centroids: dict[str, list[int]] = {}
    metadata: dict[str, dict] = {}
    locked_domain = cfg.domains[0]
    it = zones
    if progress:
        from tqdm import tqdm

        it = tqdm(zones, desc="synth zones", unit="zone")
    for zone in it:
        c, m = write_zone(out, cfg, zone, lock_cloud=(zone.domain == locked_domain and zone.index == 0))
        centroids.update(c)
        metadata.update(m)
    (out / names.CENTROIDS_JSON).write_text(json.dumps(dict(sorted(centroids.items()))))
    (out / names.METADATA_JSON).write_text(json.dumps(dict(sorted(metadata.items())), indent=1))
    splits: dict[str, int] = {}
    for d in cfg.domains:
        s = schema.official_split(d) or "none"
        splits[s] = splits.get(s, 0) + cfg.zones_per_domain * cfg.patches_per_zone
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"root": str(out), "patches": len(metadata), "zones": len(zones), "domains": len(cfg.domains),
            "patches_per_split": splits, "bytes": size}
