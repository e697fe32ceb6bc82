"""Find the FLAIR tree(s) under a folder, pair files by patch id, and check what can be checked cheaply.

Nothing here reads pixels: images are listed, Sentinel arrays are opened by their ``.npy`` header only. A bad
patch or super-area is recorded as a problem (quarantined by the ingest) instead of stopping everything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flair_lake import schema
from flair_lake.errors import RawFormatError, RawTreeNotFoundError
from flair_lake.raw import metadata as md
from flair_lake.raw import names

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AreaFiles:
    """The Sentinel-2 triple of one zone (super-area)."""

    domain: str
    zone: str
    data: Path
    masks: Path
    products: Path

    @property
    def name(self) -> str:
        """Return ``D004_2021-Z8_NF``."""
        return names.area_name(self.domain, self.zone)


@dataclass(frozen=True)
class PatchFiles:
    """One patch's files and side data, paired by id."""

    patch_id: int
    domain: str
    zone: str
    image: Path
    label: Path | None
    meta: md.PatchMeta
    centroid: tuple[int, int]

    @property
    def area(self) -> str:
        """Return the name of the patch's super-area."""
        return names.area_name(self.domain, self.zone)


@dataclass
class RawTree:
    """Everything discovered under a raw root: good patches, areas and the problems found."""

    root: Path
    patches: dict[int, PatchFiles] = field(default_factory=dict)
    areas: dict[str, AreaFiles] = field(default_factory=dict)
    area_shapes: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # T, H, W
    problems: dict[int, str] = field(default_factory=dict)  # quarantined patch id -> reason
    duplicates: dict[str, str] = field(default_factory=dict)  # image ignored (its id is taken) -> reason
    area_problems: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # odd but accepted (docs/raw-format.md, "Checks")
    raw_bytes: int = 0


def _find(root: Path, name: str) -> list[Path]:
    """Return ``root/name`` and ``root/*/name`` that exist (a tree at the root or one level down)."""
    found = [root / name] if (root / name).exists() else []
    found += sorted(p for p in root.glob(f"*/{name}") if p.exists())
    return found


def _check_area(area: AreaFiles) -> tuple[tuple[int, int, int] | None, str | None]:
    """Return ((T, H, W), None) for a sound Sentinel triple, else (None, reason), reading headers only."""
    for f in (area.data, area.masks, area.products):
        if not f.exists():
            return None, f"{f}: missing; every zone needs _data.npy, _masks.npy and _products.txt"
    try:
        data = np.load(area.data, mmap_mode="r")
        masks = np.load(area.masks, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        return None, f"{area.data.parent}: unreadable or truncated .npy ({exc}); re-download the zone"
    if data.ndim != 4 or data.shape[1] != 10 or data.dtype != np.uint16:
        return None, (f"{area.data}: expected (T, 10, H, W) uint16, got {data.shape} {data.dtype}; "
                      "re-download the zone")
    if masks.ndim != 4 or masks.shape[1] != 2 or masks.dtype != np.uint8:
        return None, (f"{area.masks}: expected (T, 2, H, W) uint8, got {masks.shape} {masks.dtype}; "
                      "re-download the zone")
    try:
        lines = names.read_product_lines(area.products)
    except RawFormatError as exc:
        return None, str(exc)
    if not (data.shape[0] == masks.shape[0] == len(lines)) or data.shape[2:] != masks.shape[2:]:
        return None, (f"{area.data.parent}: data {data.shape}, masks {masks.shape} and {len(lines)} product "
                      f"names in {area.products.name} disagree; T (and H, W) must match across the triple: "
                      "re-download the zone")
    try:
        dates = [names.parse_product_date(ln, source=area.products) for ln in lines]
    except RawFormatError as exc:
        return None, str(exc)
    if dates != sorted(dates):
        return None, f"{area.products}: product names are not in chronological order; sort the triple by date"
    return (data.shape[0], data.shape[2], data.shape[3]), None


def _area_warning(area: AreaFiles) -> str | None:
    """Return what is odd but accepted in a sound triple: dates acquired twice (two orbits or tiles of one day;
    both are kept and both enter a monthly mean)."""
    dates = [names.parse_product_date(ln) for ln in names.read_product_lines(area.products)]
    twice = len(dates) - len(set(dates))
    if twice:
        return (f"super-area {area.name}: {twice} date(s) appear twice in {area.products.name} (kept: each product "
                "is filtered on its own and both enter a monthly mean)")
    return None


def discover(root: str | Path, *, metadata_path: str | Path | None = None,
             centroids_path: str | Path | None = None, sat_window: int = schema.S2_WINDOW) -> RawTree:
    """Discover the FLAIR tree(s) under ``root`` and pair every file by patch id.

    Raises:
        RawTreeNotFoundError: ``root`` does not exist or holds no FLAIR tree or no image.
        RawFormatError: a side JSON is missing or unreadable.
    """
    root = Path(root)
    parts = _find_parts(root)
    side = _read_side_data(root, metadata_path, centroids_path)
    tree = RawTree(root=root)
    for aer_dir, lab_dir, sen_dir in parts:
        images = _images_by_id(tree, aer_dir)
        labels = {names.parse_id(p.name, names.MSK_RE): p for p in lab_dir.glob("D*/Z*/msk/MSK_*.tif")}
        labels.pop(None, None)
        for pid in sorted(set(labels) - set(images)):
            tree.problems[pid] = f"{labels[pid]}: label without image {names.img_name(pid)}; add the image"
        _add_areas(tree, aer_dir, sen_dir)
        labelled = lab_dir.is_dir()
        for pid in sorted(images):
            _add_patch(tree, pid, images[pid], labels, lab_dir if labelled else None, side, sat_window)
    if not tree.patches and not tree.problems:
        raise RawTreeNotFoundError(f"the FLAIR tree under {root} holds no IMG_*.tif in <domain>/<zone>/img/; "
                                   "check the path or the download")
    return tree


def _find_parts(root: Path) -> list[tuple[Path, Path, Path]]:
    """Return (aerial dir, labels dir, sentinel dir) of every FLAIR part under ``root``.

    Raises:
        RawTreeNotFoundError: ``root`` does not exist, or holds no FLAIR part, or no image in any.
    """
    if not root.is_dir():
        raise RawTreeNotFoundError(f"raw folder {root} does not exist; give the folder that holds "
                                   "flair_aerial_train/ (or flair_2_aerial_test/) and the two JSON files")
    parts = []
    for aer, lab, sen in names.PARTS.values():
        for a in _find(root, aer):
            parts.append((a, a.parent / lab, a.parent / sen))
    if not parts:
        raise RawTreeNotFoundError(
            f"no FLAIR tree under {root}: expected flair_aerial_train/ or flair_2_aerial_test/ there or one "
            "level down; check the path (create a synthetic one with `flair-lake synth`)")
    if not any(next(a.glob("D*/Z*/img/IMG_*.tif"), None) for a, _, _ in parts):
        where = "/, ".join(a.name for a, _, _ in parts)
        raise RawTreeNotFoundError(f"the FLAIR tree under {root} holds no IMG_*.tif in "
                                   f"{where}/<domain>/<zone>/img/; check the path or the download")
    return parts


def _side_files(root: Path, path: str | Path | None, name: str, what: str) -> list[Path]:
    """Return the side JSON files to read: ``path`` when given, else every ``name`` found under ``root``.

    Raises:
        RawFormatError: none given and none found.
    """
    if path is not None:
        return [Path(path)]
    found = _find(root, name)
    if not found:
        raise RawFormatError(f"no {name} under {root}: the {what} is needed to ingest; put it next to the "
                             f"tree or pass its path with --{what.split()[-1]}")
    return found


@dataclass(frozen=True)
class _SideData:
    """What the side JSON files say, by patch id."""

    meta: dict[int, md.PatchMeta]
    bad_meta: dict[int, str]  # why an entry of the metadata, or the patch's centroid, cannot be read
    centroids: dict[int, tuple[int, int]]  # (row, col) in the zone's super-area


def _read_side_data(root: Path, metadata_path: str | Path | None, centroids_path: str | Path | None) -> _SideData:
    """Return what the aerial metadata and the Sentinel centroids files say."""
    meta: dict[int, md.PatchMeta] = {}
    bad_meta: dict[int, str] = {}
    for f in _side_files(root, metadata_path, names.METADATA_JSON, "aerial metadata"):
        m, b = md.read_metadata(f)
        meta.update(m)
        bad_meta.update(b)
    centroids: dict[int, tuple[int, int]] = {}
    for f in _side_files(root, centroids_path, names.CENTROIDS_JSON, "Sentinel centroids"):
        good, bad = md.read_centroids(f)
        centroids.update(good)
        bad_meta.update({pid: why for pid, why in bad.items() if pid not in bad_meta})
    return _SideData(meta, bad_meta, centroids)


def _add_areas(tree: RawTree, aer_dir: Path, sen_dir: Path) -> None:
    """Add the Sentinel-2 triple of every zone of a part, with its shape or its problem (headers only)."""
    for zone_dir in sorted(p for p in aer_dir.glob("D*/Z*") if p.is_dir()):
        domain, zone = zone_dir.parent.name, zone_dir.name
        s = sen_dir / domain / zone / "sen"
        stem = names.sentinel_stem(domain, zone)
        area = AreaFiles(domain, zone, s / f"{stem}_data.npy", s / f"{stem}_masks.npy", s / f"{stem}_products.txt")
        if not area.data.exists():  # tolerate other stems: the baseline globs *data.npy
            hits = sorted(s.glob("*data.npy"))
            if len(hits) == 1:
                pre = hits[0].name[: -len("data.npy")]
                area = AreaFiles(domain, zone, hits[0], s / f"{pre}masks.npy", s / f"{pre}products.txt")
        shape, why = _check_area(area)
        tree.areas[area.name] = area
        if why:
            tree.area_problems[area.name] = why
        else:
            tree.area_shapes[area.name] = shape
            warning = _area_warning(area)
            if warning:
                tree.warnings.append(warning)
            tree.raw_bytes += sum(f.stat().st_size for f in (area.data, area.masks, area.products))


def _images_by_id(tree: RawTree, aer_dir: Path) -> dict[int, Path]:
    """Return the images of one part by patch id; a second image of an id (in another zone) is a problem."""
    images: dict[int, Path] = {}
    for path in sorted(aer_dir.glob("D*/Z*/img/IMG_*.tif")):
        pid = names.parse_id(path.name)
        if pid is None:
            continue
        if pid in images:
            _add_duplicate(tree, pid, path, images[pid])
            continue
        images[pid] = path
    return images


def _add_duplicate(tree: RawTree, pid: int, img: Path, first: Path) -> None:
    """Record ``img`` as ignored: the image ``first`` already has its id."""
    tree.duplicates[str(img)] = f"{img}: id {pid} already seen at {first}; ids must be unique"


def _add_patch(tree: RawTree, pid: int, img: Path, labels: dict[int, Path], lab_dir: Path | None,
               side: _SideData, sat_window: int) -> None:
    """Add one image as a patch, or as a problem saying why it cannot be ingested.

    ``lab_dir``: the part's labels folder; None for an unlabelled part (its patches need no label).
    """
    domain, zone = img.parents[2].name, img.parents[1].name
    if pid in tree.patches:  # the first image of an id in path order is the patch; a second one is reported
        _add_duplicate(tree, pid, img, tree.patches[pid].image)
        return
    reason = _patch_problem(tree, pid, img, domain, zone, labels, lab_dir, side, sat_window)
    if reason:
        tree.problems[pid] = reason
        return
    tree.patches[pid] = PatchFiles(pid, domain, zone, img, labels.get(pid) if lab_dir is not None else None,
                                   side.meta[pid], side.centroids[pid])
    tree.raw_bytes += img.stat().st_size + (labels[pid].stat().st_size if pid in labels else 0)


def _patch_problem(tree: RawTree, pid: int, img: Path, domain: str, zone: str, labels: dict[int, Path],
                   lab_dir: Path | None, side: _SideData, sat_window: int) -> str | None:
    """Return why the image ``img`` of patch ``pid`` cannot be ingested (its first problem), or None."""
    meta, bad_meta, centroids = side.meta, side.bad_meta, side.centroids
    area_name = names.area_name(domain, zone)
    if lab_dir is not None and pid not in labels:
        return (f"{img}: no label {names.msk_name(pid)} in {lab_dir.name}/{domain}/{zone}/msk; "
                "add it or remove the image")
    if pid in bad_meta:
        return bad_meta[pid]
    if pid not in meta:
        return f"{img}: {names.metadata_key(pid)} missing from {names.METADATA_JSON}; add its entry"
    if (meta[pid].domain, meta[pid].zone) != (domain, zone):
        return (f"{img}: metadata says {meta[pid].domain}/{meta[pid].zone} but the file is in "
                f"{domain}/{zone}; fix the entry or move the file")
    if pid not in centroids:
        return f"{img}: {names.img_name(pid)} missing from {names.CENTROIDS_JSON}; add its centroid"
    if area_name in tree.area_problems:
        return f"super-area {area_name}: {tree.area_problems[area_name]}"
    _, h, w = tree.area_shapes[area_name]
    r, c = centroids[pid]
    half = sat_window // 2
    if r - half < 0 or c - half < 0 or r + half > h or c + half > w:
        return (f"patch {names.metadata_key(pid)}: centroid ({r}, {c}) is outside super-area {h}x{w} of "
                f"{domain}/{zone}; the {sat_window}x{sat_window} window needs {half} px of margin; fix the centroid "
                "JSON")
    return None
