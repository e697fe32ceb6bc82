"""``flair-lake map``: a checkpoint over whole zones of a lake, or over a raster, into Cloud-Optimized GeoTIFFs.

Each map is cut into the blocks of a job grid (``--block`` px). A block is one task: it runs the model over the
windows that reach into it, blends them and writes ``OUT/.jobs/<map>/<block>.tif`` (written aside, renamed when
complete). When every block of a map is there, the coordinator mosaics them into the map's COG(s) and style,
and records the map finished. Killed at any moment, the same command skips finished maps and blocks and ends
with the same files. Blocks run in this process, on a local Dask cluster (``--workers N``) or on a scheduler's
workers (``--scheduler``), each worker loading the model once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from flair_lake import lake as lk
from flair_lake import schema, storage
from flair_lake.config import MAP_SPLIT, MapConfig
from flair_lake.errors import Interrupted, UsageError
from flair_lake.locations import output_lock
from flair_lake.maps.grid import Block, PixelGrid, Windows, blocks
from flair_lake.maps.write import QML_NAME, write_index, write_qml

log = logging.getLogger(__name__)
JOBS = ".jobs"  # OUT/.jobs/<map>/: the job grid of each map (plan.json, block files, done)


@dataclass(frozen=True)
class SentinelSpec:
    """A super-area triple for ``--image``: its folder and the (west, north) corner of its 10 m grid."""

    folder: str
    west: float
    north: float


@dataclass(frozen=True)
class Target:
    """One map to compute: a zone of a lake (``rows``) or a raster (``image``). Picklable: sent to workers."""

    name: str
    lake: str | None = None
    rows: tuple[int, ...] = ()
    view: str | None = None
    image: str | None = None
    sentinel: SentinelSpec | None = None
    view_params: tuple | None = None  # --image with a Sentinel-2 model: its view's filter parameters (items)
    storage_options: dict | None = field(default=None, hash=False, compare=False)
    table: dict | None = field(default=None, hash=False, compare=False)  # a zone's lake columns (zone_columns)

    def source(self, fill: np.ndarray, reads_sentinel: bool):
        """Return this target's source (:mod:`flair_lake.maps.sources`)."""
        from flair_lake.maps.sources import RasterSource, ZoneSource

        if self.image is None:
            return ZoneSource(self.lake, self.name, np.array(self.rows), view=self.view if reads_sentinel else None,
                              fill=fill, columns=self.table, storage_options=self.storage_options)
        area = None
        if reads_sentinel and self.sentinel:
            area = read_sentinel(self.sentinel, dict(self.view_params) if self.view_params else None)
        return RasterSource(self.image, fill=fill, sentinel=area)


@dataclass(frozen=True)
class BlockTask:
    """What one Dask task computes: a block of a target's map with a checkpoint."""

    target: Target
    block: Block
    ckpt: str
    cfg: MapConfig
    folder: str
    band_stats: str  # JSON of the lake's band statistics, for checkpoints that carry none
    run: str  # this run's id: workers keep a zone's source for the blocks of one run only


@dataclass
class MapSummary:
    """What a map run did, for the command's closing lines."""

    maps: list[Path] = field(default_factory=list)
    skipped: int = 0
    blocks_run: int = 0
    blocks_kept: int = 0
    windows: int = 0
    km2: float = 0.0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        rate = self.km2 / self.seconds * 3600 if self.seconds > 0 else 0.0
        out = [f"warning: {w}" for w in self.warnings]
        out.append(f"mapped {self.km2:.3f} km^2 in {len(self.maps)} map(s) ({self.skipped} already finished, "
                   f"{self.blocks_kept} block(s) kept from an earlier run): {self.windows} windows in "
                   f"{self.seconds:.1f} s, {rate:.2f} km^2/hour")
        return out


# --- worker side --------------------------------------------------------------------------------------------------
_SOURCES: dict = {}  # a worker's open sources of a run (a zone's super-area is read once for all its blocks)


def _source(run: str, target: Target, fill: np.ndarray, reads_sentinel: bool):
    key = (run, target, fill.tobytes(), reads_sentinel)
    if key not in _SOURCES:
        while len(_SOURCES) >= 4:
            _SOURCES.pop(next(iter(_SOURCES)))
        _SOURCES[key] = target.source(fill, reads_sentinel)
    return _SOURCES[key]


def run_block(task: BlockTask) -> dict:
    """Compute one block and write its file; return its windows, km^2 and seconds."""
    from flair_lake.maps.infer import cached_predictor, predict_block
    from flair_lake.maps.write import BlockWriter

    t0 = time.perf_counter()
    predictor = cached_predictor(task.ckpt, os.path.getmtime(task.ckpt), task.cfg.device, task.band_stats)
    source = _source(task.run, task.target, predictor.fill, predictor.reads_sentinel)
    cfg = task.cfg
    windows = Windows.over(source.grid, cfg.tile, cfg.overlap, cfg.blend)
    writer = BlockWriter(Path(task.folder), source.grid, task.block, cfg.probabilities)
    try:
        n = predict_block(source, windows, task.block, predictor, writer, batch_size=cfg.batch_size,
                          probabilities=cfg.probabilities, reads_sentinel=predictor.reads_sentinel,
                          reads_mtd=predictor.reads_mtd)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return {"target": task.target.name, "block": task.block.key, "windows": n,
            "km2": source.grid.km2(task.block.pixels), "seconds": time.perf_counter() - t0}


# --- coordinator ------------------------------------------------------------------------------------------------
def read_sentinel(spec: SentinelSpec, params: dict | None):
    """Return the :class:`~flair_lake.maps.sources.SentinelArea` of an ``--image`` run's super-area triple."""
    from flair_lake.config import FilterConfig
    from flair_lake.maps.sources import SentinelArea
    from flair_lake.raw.readers import read_sentinel_area

    folder = Path(spec.folder)
    found = {kind: sorted(folder.glob(f"*_{kind}.*")) for kind in ("data", "masks", "products")}
    missing = [k for k, v in found.items() if len(v) != 1]
    if missing:
        raise UsageError(f"--sentinel {folder}: expected one *_data.npy, *_masks.npy and *_products.txt, found "
                         f"{', '.join(f'{len(found[k])} {k}' for k in missing)}")
    if params is None:
        raise UsageError("the checkpoint does not record its view's filter parameters; give --lake, the lake it "
                         "was trained on, so that they are read from the view")
    data, masks, _, dates = read_sentinel_area(found["data"][0], found["masks"][0], found["products"][0])
    days = np.array(dates, dtype="datetime64[D]")
    year = int(np.bincount(days.astype("datetime64[Y]").astype(int) + 1970).argmax()) if len(days) else 1970
    params = dict(params)
    window = int(params.pop("window", schema.S2_WINDOW))
    return SentinelArea(data, masks, days, spec.west, spec.north, FilterConfig.from_params(params), window, year)


def lake_targets(lake: str, *, split, zones: list[str] | None, view: str | None,
                 storage_options: dict | None = None) -> list[Target]:
    """Return one target per zone of a lake: the zones named, or those with ingested patches in ``split``."""
    from flair_lake.loader.dataset import select_rows
    from flair_lake.maps.sources import zone_columns

    root = lk.open_lake(lake, storage_options=storage_options)
    areas = list(root.attrs["areas"])
    zone_col = root["zone"][:]
    if zones:
        unknown = [z for z in zones if z not in areas]
        if unknown:
            raise UsageError(f"unknown zone(s) {', '.join(unknown)} in {lake}; zones are named like {areas[0]} "
                             "(flair-lake info lists them)" if areas else f"{lake} has no zones")
        rows = select_rows(root, "all")
        wanted = {areas.index(z) for z in zones}
        rows = rows[np.isin(zone_col[rows], list(wanted))]
    else:
        rows = select_rows(root, split)
    if len(rows) == 0:
        raise UsageError(f"no ingested patches to map in {lake} for split {split!r}")
    table = zone_columns(lake, root=root)  # read once, each target carries its rows
    targets = []
    for z in np.unique(zone_col[rows]):
        members = rows[zone_col[rows] == z]
        cols = {k: v[members] for k, v in table["columns"].items()}
        targets.append(Target(areas[int(z)], lake=lake, rows=tuple(int(r) for r in members), view=view,
                              storage_options=storage_options, table={**table, "columns": cols}))
    return targets


def _stat(path: str) -> dict:
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _plan_record(target: Target, grid: PixelGrid, cfg: MapConfig, ckpt: str, inputs: dict) -> dict:
    """Return what a map's blocks depend on: reused only while all of it is unchanged (the grid, the checkpoint,
    the map options, and its inputs: the zone's rows, the lake's id and ingest runs and the view generation, or
    the raster and super-area files)."""
    if target.image is None:
        source = {"lake": inputs["lake"], "rows": list(target.rows), "provenance": inputs["provenance"]}
    else:
        source = {"image": _stat(target.image),
                  "sentinel": None if target.sentinel is None else
                  {"folder": str(Path(target.sentinel.folder).resolve()), "west": target.sentinel.west,
                   "north": target.sentinel.north, "files": [_stat(str(f)) for f in
                                                             sorted(Path(target.sentinel.folder).iterdir())]},
                  "view_params": dict(target.view_params or ())}
    return {"grid": asdict(grid), "tile": cfg.tile, "overlap": cfg.overlap, "blend": cfg.blend,
            "block": cfg.block, "probabilities": cfg.probabilities, "checkpoint": _stat(ckpt), "source": source,
            "band_stats": inputs["band_stats"]}


def outputs(out: Path, name: str, probabilities: bool) -> list[Path]:
    """Return the files a finished map has in OUT."""
    return [out / f"{name}.tif", out / f"{name}.qml"] + ([out / f"{name}_prob.tif"] if probabilities else [])


def prepare(folder: Path, record: dict, name: str, out: Path, warnings: list[str]) -> bool:
    """Make a map's job folder ready; return True when the map was already finished with the same plan.

    A plan that differs from the recorded one (other checkpoint, options or inputs), or a finished map whose
    files were since removed, starts the map again: its blocks and its files in OUT are deleted first. Side
    files of a killed write are removed.
    """
    plan = folder / "plan.json"
    if plan.exists():
        try:
            same = json.loads(plan.read_text()) == record
        except ValueError:
            same = False
        complete = all(p.exists() for p in outputs(out, name, record["probabilities"]))
        if same and (complete or not (folder / "done").exists()):
            for leftover in [*folder.glob("*.partial"), *folder.glob("tmp*.tif")]:  # killed writes (rio-cogeo's)
                leftover.unlink(missing_ok=True)
            return (folder / "done").exists()
        kept = len(list(folder.glob("r*_c*.tif")))
        why = ("its files in the output folder are gone" if same else
               "the checkpoint, the map options or its input changed since its last run")
        warnings.append(f"map {name}: {why}; it is computed again" + (f" ({kept} finished block(s) dropped)"
                                                                      if kept else ""))
        shutil.rmtree(folder)
    for old in outputs(out, name, True):  # a map that is started is not finished: no stale file stays
        old.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "plan.json.partial"
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(tmp, plan)
    return False


def absolute(path: str | None) -> str | None:
    """Return a local path made absolute (workers of a scheduler run elsewhere), a URL as it is."""
    return path if path is None or storage.is_url(path) else str(Path(path).resolve())


def run_map(ckpt: str, out: str | Path, cfg: MapConfig, *, lake: str | None = None, split=MAP_SPLIT,
            zones: list[str] | None = None, view: str | None = None, image: str | None = None,
            sentinel: SentinelSpec | None = None, storage_options: dict | None = None,
            progress: bool | None = None) -> MapSummary:
    """Map zones of ``lake`` (``split`` or ``zones``), or the raster ``image``, with ``ckpt`` into ``out``."""
    from flair_lake.maps.infer import SENTINEL_MODELS
    from flair_lake.training.checkpoint import read_checkpoint
    from flair_lake.training.evaluate import trained_view

    t_start = time.perf_counter()
    ckpt, lake, image = absolute(str(ckpt)), absolute(lake), absolute(image)
    if sentinel is not None:
        sentinel = SentinelSpec(absolute(sentinel.folder), sentinel.west, sentinel.north)
    ck = read_checkpoint(ckpt)
    ck = {k: v for k, v in ck.items() if k not in ("state_dict", "optimizer")}  # workers load the weights
    reads_sentinel = ck["model_name"] in SENTINEL_MODELS
    band_stats, provenance = {}, None
    patch_size = ck.get("patch_size")
    if lake is not None:
        root = lk.open_lake(lake, storage_options=storage_options)
        band_stats = root.attrs.get("band_stats", {})
        patch_size = patch_size or int(root.attrs["patch_size"])
        view = lk.resolve_view(root, lake, view or trained_view(lake, ck), complete=True) if reads_sentinel \
            else None
        provenance = lk.provenance(root, view)
    if reads_sentinel and patch_size is None:
        raise UsageError(f"{ckpt} does not record the patch size it was trained on; give --lake, the lake it was "
                         "trained on")
    cfg = cfg.resolved(int(patch_size or 512))
    if reads_sentinel and cfg.tile != patch_size:
        raise UsageError(f"{ck['model_name']} reads the Sentinel-2 pixels under its window, as it was trained: "
                         f"--tile must be its patch size, {patch_size} px (got {cfg.tile})")
    out = Path(out).resolve()
    if image is not None:
        target = _image_target(ck, image, sentinel, lake, view, reads_sentinel, storage_options)
        if Path(image) in [p.resolve() for p in outputs(out, target.name, True)]:
            raise UsageError(f"--image {image} is in --out {out} under the name its map would take; map into "
                             "another folder")
        # opened here: a bad raster, super-area folder or missing filter parameters is one line before any work
        targets = [target]
        sources = {target.name: target.source(np.zeros(schema.N_AERIAL_BANDS, np.uint8), reads_sentinel)}
    elif lake is None:
        raise UsageError("give --lake (zones of a lake) or --image (a raster)")
    else:
        targets = lake_targets(lake, split=split, zones=zones, view=view, storage_options=storage_options)
        sources = {}
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out / JOBS, "flair-lake map"):
        return _run(targets, sources, ckpt, out, cfg,
                    {"lake": lake, "provenance": provenance, "band_stats": band_stats}, progress, t_start)


def _image_target(ck: dict, image: str, sentinel: SentinelSpec | None, lake: str | None, view: str | None,
                  reads_sentinel: bool, storage_options: dict | None) -> Target:
    """Return the target of ``--image``."""
    params = ck.get("view_params")  # the filter parameters and window of the view it was trained on
    if reads_sentinel and lake is not None and view:
        attrs = lk.open_lake(lake, storage_options=storage_options)[f"{schema.VIEWS_GROUP}/{view}"].attrs
        params = {**attrs["params"], "window": int(attrs.get("window", schema.S2_WINDOW))}
    if reads_sentinel and sentinel is None:
        raise UsageError(f"{ck['model_name']} reads Sentinel-2 windows: give --sentinel FOLDER (the super-area's "
                         "*_data.npy, *_masks.npy, *_products.txt) and --sentinel-grid WEST,NORTH, or map with "
                         "an aerial-only model (unet)")
    target = Target(Path(image).stem, image=image, sentinel=sentinel if reads_sentinel else None,
                    view_params=tuple(sorted(params.items())) if params else None)
    return target


def _run(targets: list[Target], sources: dict, ckpt: str, out: Path, cfg: MapConfig, inputs: dict, progress,
         t_start: float) -> MapSummary:
    """Plan every target's blocks, run those not finished, assemble each map when its last block lands."""
    write_qml(out / QML_NAME)
    summary = MapSummary()
    run_id = uuid.uuid4().hex
    fill = np.zeros(schema.N_AERIAL_BANDS, np.uint8)
    band_stats = json.dumps(inputs["band_stats"])
    plans = {}  # name -> (grid, blocks, folder, tasks left)
    for target in targets:
        # its grid and warnings (workers open their own)
        src = sources.get(target.name) or target.source(fill, target.sentinel is not None)
        summary.warnings.extend(src.warnings)
        if target.sentinel is not None:
            summary.warnings.extend(_beyond_area(src, cfg))
        folder = out / JOBS / target.name
        grid_blocks = blocks(src.grid, cfg.block)
        if prepare(folder, _plan_record(target, src.grid, cfg, ckpt, inputs), target.name, out, summary.warnings):
            summary.skipped += 1
            summary.maps.append(out / f"{target.name}.tif")
            plans[target.name] = (src.grid, grid_blocks, folder, [])
            continue
        todo = [b for b in grid_blocks if not (folder / f"{b.key}.tif").exists()]
        summary.blocks_kept += len(grid_blocks) - len(todo)
        tasks = [BlockTask(target, b, ckpt, cfg, str(folder), band_stats, run_id) for b in todo]
        plans[target.name] = (src.grid, grid_blocks, folder, tasks)
    left = {name: len(p[3]) for name, p in plans.items()}
    all_tasks = [t for p in plans.values() for t in p[3]]
    total_km2 = sum(p[0].km2(sum(b.pixels for b in p[1])) for p in plans.values())
    done_km2 = total_km2 - sum(plans[t.target.name][0].km2(t.block.pixels) for t in all_tasks)

    def finish(name: str) -> None:
        from flair_lake.maps.write import assemble

        grid, grid_blocks, folder, _ = plans[name]
        summary.maps.append(out / f"{name}.tif")
        assemble(folder, grid, grid_blocks, out, name, probabilities=cfg.probabilities)
        (folder / "done").write_text(lk.now_iso() + "\n")
        for f in [*folder.glob("*.tif"), *folder.glob("*.vrt")]:  # the blocks are in the COG now
            f.unlink()

    for name, n in left.items():  # maps whose blocks were all finished by an earlier, killed run
        if n == 0 and not (plans[name][2] / "done").exists():
            finish(name)
    from tqdm import tqdm

    bar = tqdm(total=round(total_km2, 4), initial=round(done_km2, 4), unit="km2", desc="map",
               disable=None if progress is None else not progress,
               bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} km^2 [{elapsed}<{remaining}, {postfix}]")
    t_run = time.perf_counter()
    try:
        for res in _execute(all_tasks, cfg):
            summary.blocks_run += 1
            summary.windows += res["windows"]
            summary.km2 += res["km2"]
            bar.update(res["km2"])
            bar.set_postfix_str(f"{summary.km2 / max(time.perf_counter() - t_run, 1e-9) * 3600:.2f} km^2/hour")
            left[res["target"]] -= 1
            if left[res["target"]] == 0:
                finish(res["target"])
    except KeyboardInterrupt as exc:
        raise Interrupted.of(exc, landed=f"{summary.blocks_run + summary.blocks_kept} of "
                             f"{summary.blocks_kept + len(all_tasks)} block(s) are finished in {out / JOBS} and "
                             "kept") from None
    finally:
        bar.close()
    summary.warnings.extend(write_index(out / "index.vrt", [(out / f"{n}.tif", p[0]) for n, p in plans.items()]))
    summary.seconds = time.perf_counter() - t_start
    return summary


def _beyond_area(src, cfg: MapConfig) -> list[str]:
    """Return a warning when windows of a raster reach beyond its --sentinel super-area."""
    w = Windows.over(src.grid, cfg.tile, cfg.overlap, cfg.blend)
    centres = np.array([[y + cfg.tile / 2, x + cfg.tile / 2] for y in w.ys for x in w.xs], np.float64)
    area = src.area_
    x, y = src.grid.centre(centres[:, 0], centres[:, 1])
    area.moved = 0
    area.origins(x, y)
    if not area.moved:
        return []
    return [f"{area.moved} of {len(centres)} windows of {src.name} reach beyond the --sentinel super-area and use "
            "its nearest window instead; check --sentinel-grid (the top-left corner of its 10 m grid)"]


def _execute(tasks: list[BlockTask], cfg: MapConfig):
    """Yield each block's result: in this process, or on a Dask cluster (local with --workers, or a scheduler's)."""
    if not tasks:
        return
    if cfg.scheduler is None and cfg.workers is None:
        for task in tasks:
            yield run_block(task)
        return
    from distributed import as_completed

    from pipelines.cluster import dask_client

    with dask_client(cfg.scheduler, cfg.workers, threads_per_worker=1) as client:
        futures = client.map(run_block, tasks, pure=False, retries=1)
        for fut in as_completed(futures):
            yield fut.result()
