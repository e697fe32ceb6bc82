"""The ingest pipeline: a raw FLAIR tree into a Zarr lake, one Dask task per output shard.

Reads top to bottom: discover the tree (no pixels) -> plan the rows of the new patches (a run starts at a shard
boundary, so no two runs share a shard) -> record the run -> write the coordinates -> map the shard and
super-area tasks over the cluster -> record the outcome. The tasks are plain functions of their own inputs
(the lake URL, the rows and files they own); each writes whole shards, then its marker. Re-running after a
kill skips every shard and area whose marker exists and writes the rest: the result is the same lake.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flair_lake import lake as lk
from flair_lake import schema
from flair_lake.chunkio import write_shard
from flair_lake.config import IngestConfig
from flair_lake.errors import FlairLakeError, RawFormatError
from flair_lake.raw import names
from flair_lake.raw.discover import AreaFiles, PatchFiles, RawTree, discover
from flair_lake.raw.readers import read_geotiff, read_sentinel_area

log = logging.getLogger(__name__)

EXIT_OK, EXIT_PARTIAL = 0, 3
STATS_STEP = 4  # band statistics are sampled every 4th row and column
# FLAIR's GeoTIFFs are uncompressed and pixel-interleaved: GDAL maps them and copies the pixels straight into the
# shard buffer, past its block cache (64 aerial patches: 0.155 -> 0.097 s; compressed files ignore the option).
# GTIFF_DIRECT_IO is as fast but zero-fills a truncated file without an error; this one reports it.
GDAL_READ_OPTIONS = {"GTIFF_VIRTUAL_MEM_IO": "YES"}
_EPOCH, _EPOCH_DT = dt.date(1970, 1, 1), dt.datetime(1970, 1, 1)


@dataclass
class IngestSummary:
    """What an ingest run did."""

    lake: str
    run_id: str
    added: int = 0
    quarantined: dict[int, str] = field(default_factory=dict)
    areas_written: int = 0
    areas_skipped: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    resumed_runs: int = 0
    retried: int = 0  # quarantined patches whose shards were written again (their files may have been fixed)
    already_present: int = 0  # patches of the tree that an earlier run had already ingested
    landed_before: int = 0  # patches of resumed runs that their interrupted session had written
    seconds: float = 0.0
    startup_seconds: float = 0.0  # of ``seconds``, starting a local Dask cluster (0 with --scheduler)
    raw_bytes: int = 0

    @property
    def exit_code(self) -> int:
        """Return 0 when everything landed, 3 ("partial") when some patches were quarantined."""
        return EXIT_PARTIAL if self.quarantined else EXIT_OK

    def lines(self) -> list[str]:
        """Return a human summary."""
        from pipelines.cluster import rate_text

        out = [f"ingested {self.added} patches into {self.lake} "
               f"{rate_text(self.added, self.seconds, self.startup_seconds)}; "
               f"shards written {self.shards_written}, already complete {self.shards_skipped}; "
               f"super-areas written {self.areas_written}, already complete {self.areas_skipped}"
               + (f"; resumed {self.resumed_runs} interrupted run(s), whose {self.landed_before} other patch(es) "
                  "had landed before" if self.resumed_runs else "")
               + (f"; retried {self.retried} quarantined patch(es)" if self.retried else "")]
        if not self.added and not self.quarantined and self.already_present:
            out.append(f"nothing new: the tree's {self.already_present} patches are already in {self.lake}")
        if self.quarantined:
            out.append(f"quarantined {len(self.quarantined)} patch(es) (exit code {EXIT_PARTIAL}, partial):")
            out += [f"  {names.metadata_key(pid)}: {why}" for pid, why in sorted(self.quarantined.items())]
        return out


# --- tasks (run on Dask workers) --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardTask:
    """One output shard: the rows it owns and the files that fill them."""

    lake: str
    shard: int
    row0: int
    items: tuple[tuple[int, str, str | None], ...]  # (patch id, image path, label path or None), row order
    patch_size: int
    storage_options: dict | None = None


def write_patch_shard(task: ShardTask) -> dict:
    """Read a shard's GeoTIFFs and write its aerial, label, transform, CRS and status rows, then its marker.

    A patch whose files are unreadable or malformed is written as zeros with status 2 and reported.
    """
    import rasterio
    import zarr

    n, p = len(task.items), task.patch_size
    aerial, label = _shard_buffers(n, p)
    transform = np.full((n, 6), np.nan)
    epsg = np.zeros(n, np.int32)
    status = np.full(n, lk.STATUS_OK, np.uint8)
    bad: dict[str, str] = {}
    with rasterio.Env(**GDAL_READ_OPTIONS):  # one GDAL environment for the whole shard, not one per file
        _read_items(task.items, p, aerial, label, transform, epsg, status, bad)
    ok = status == lk.STATUS_OK
    # normalisation statistics from a 1-in-16 pixel grid: as good for mean and std, 16x cheaper
    grid = aerial[:, :, ::STATS_STEP, ::STATS_STEP][ok].astype(np.float32)
    sums = grid.sum(axis=(0, 2, 3), dtype=np.float64)
    sq = np.square(grid).sum(axis=(0, 2, 3), dtype=np.float64)
    rows = slice(task.row0, task.row0 + n)
    # the image shards straight to their files, in zarr's layout (flair_lake.chunkio; O_DIRECT on local lakes);
    # the small columns encoded in Rust
    with lk.rust_codecs(task.lake), lk.direct_writes(task.lake), lk.fast_writes():
        root = zarr.open_group(store=task.lake, mode="r+", storage_options=task.storage_options)
        direct = lk.direct_io(task.lake)
        write_shard(root["aerial"], task.shard, aerial, direct=direct)
        write_shard(root["label"], task.shard, label, direct=direct)
        root["transform"][rows] = transform
        root["crs_epsg"][rows] = epsg
        root[lk.STATUS_ARRAY][rows] = status
    report = {"rows": [task.row0, task.row0 + n], "bad": bad, "aerial_sum": sums.tolist(),
              "aerial_sumsq": sq.tolist(), "pixels": int(grid.shape[0] * grid.shape[2] * grid.shape[3])}
    root.create_group(lk.shard_marker(task.shard), attributes=report, overwrite=True)
    return {"shard": task.shard, **report}


_BUFFERS = threading.local()


def _shard_buffers(n: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (aerial (n,5,p,p), label (n,p,p)) uint8 buffers kept by this worker thread between shard tasks.

    Every row is overwritten by the task (read, or zeroed when bad or unlabelled). A fresh 100 MB buffer per
    task is a fresh mmap whose pages the kernel must fault in and zero again (measured: 5% of the ingest's CPU
    in ``clear_page`` on the 2-core machine); a kept one is already mapped.
    """
    buf = getattr(_BUFFERS, "arrays", None)
    if buf is None or buf[0].shape[0] < n or buf[0].shape[2] != p:
        buf = _BUFFERS.arrays = (np.empty((n, 5, p, p), np.uint8), np.empty((n, p, p), np.uint8))
    return buf[0][:n], buf[1][:n]


def _read_items(items, p, aerial, label, transform, epsg, status, bad) -> None:
    """Fill the shard buffers from the GeoTIFFs; a bad patch is zeroed, flagged 2 and reported."""
    for i, (pid, img, msk) in enumerate(items):
        try:
            _, gt, epsg[i] = read_geotiff(Path(img), bands=5, size=p, out=aerial[i])
            if msk is not None:
                read_geotiff(Path(msk), bands=1, size=p, out=label[i])
            else:
                label[i] = 0  # an unlabelled split: the label rows hold zeros
            transform[i] = gt
        except RawFormatError as exc:
            aerial[i], label[i], status[i] = 0, 0, lk.STATUS_QUARANTINED
            bad[str(pid)] = str(exc)


@dataclass(frozen=True)
class AreaTask:
    """One Sentinel-2 super-area to copy into ``sentinel/<area>``."""

    lake: str
    area: AreaFiles
    codec: str
    level: int
    storage_options: dict | None = None


def write_area(task: AreaTask) -> dict:
    """Copy a super-area triple into the lake (read once), then mark the group complete."""
    import zarr

    data, masks, products, dates = read_sentinel_area(task.area.data, task.area.masks, task.area.products)
    t, _, h, w = data.shape
    root = zarr.open_group(store=task.lake, mode="r+", storage_options=task.storage_options)
    g = root.require_group(f"{schema.SENTINEL_GROUP}/{task.area.name}")
    tc = min(t, 8)
    days = np.array([(d - _EPOCH).days for d in dates], np.int32)
    specs = (("data", data, ("date", "s2_band", "row", "col"), lk.compressors(task.codec, task.level, typesize=2),
              (tc, 10, h, w), {}),
             ("masks", masks, ("date", "mask_band", "row", "col"), lk.compressors(task.codec, task.level),
              (tc, 2, h, w), {}),
             ("dates", days, ("date",), (), (max(t, 1),),
              {"units": "days since 1970-01-01", "calendar": "proleptic_gregorian"}))
    with lk.rust_codecs(task.lake), lk.direct_writes(task.lake), lk.fast_writes():
        for name, values, dims, comps, chunks, attrs in specs:
            g.create_array(name, shape=values.shape, chunks=chunks, dtype=values.dtype, fill_value=0,
                           compressors=comps, overwrite=True, dimension_names=dims, attributes=attrs)[...] = values
    # Sentinel normalisation statistics over the clear pixels of a 1-in-16 grid, as for the aerial bands (a 1-in-4
    # grid cost a fifth of the task in float temporaries, for the same mean and std to 3 digits)
    sub = data[:, :, ::STATS_STEP, ::STATS_STEP].astype(np.float32)
    clear = (masks[:, :, ::STATS_STEP, ::STATS_STEP].max(axis=1) < 60)[:, None]
    vals = np.where(clear, sub, np.float32(0))
    g.attrs.update({"domain": task.area.domain, "zone": task.area.zone, "products": products,
                    "bands": list(schema.S2_BANDS), "mask_bands": list(schema.S2_MASK_BANDS),
                    "clear_sum": vals.sum(axis=(0, 2, 3), dtype=np.float64).tolist(),
                    "clear_sumsq": np.square(vals).sum(axis=(0, 2, 3), dtype=np.float64).tolist(),
                    "clear_pixels": int(clear.sum()), "complete": True})
    return {"area": task.area.name, "dates": t}




# --- coordinator ------------------------------------------------------------------------------------------------
def _patch_size(tree: RawTree, sample: int = 25) -> int:
    """Return the aerial patch size of the tree: the most common size among the headers of up to ``sample``
    well-formed images (square, 5 bands, uint8) spread over the tree, so one odd file cannot set it."""
    from collections import Counter

    import rasterio

    files = [pf.image for pf in tree.patches.values()]
    sizes: Counter[int] = Counter()
    for f in files[:: max(1, len(files) // sample)]:
        try:
            with rasterio.open(f) as src:
                if src.count == 5 and src.dtypes[0] == "uint8" and src.width == src.height:
                    sizes[int(src.width)] += 1
        except Exception:  # noqa: BLE001 - a bad file: the others decide, the task quarantines it
            continue
    if not sizes:
        raise RawFormatError(f"no readable 5-band uint8 IMG_*.tif under {tree.root}; check the download")
    # ties (tiny trees): prefer a FLAIR-like size (multiple of 32), then the larger
    return max(sizes, key=lambda s: (sizes[s], s % 32 == 0, s))


def _write_coords(root, rows: range, patches: list[PatchFiles]) -> None:
    """Write the coordinator-owned per-patch columns of ``rows`` from the metadata (idempotent)."""
    dom = lk.intern(root, "domains", [p.domain for p in patches])
    area = lk.intern(root, "areas", [p.area for p in patches])
    cam = lk.intern(root, "cameras", [p.meta.camera for p in patches])
    split = [schema.official_split(p.domain) for p in patches]
    cols = {
        "patch_id": np.array([p.patch_id for p in patches], np.int32),
        "domain": np.array([dom[p.domain] for p in patches], np.int16),
        "zone": np.array([area[p.area] for p in patches], np.int32),
        "split": np.array([schema.SPLIT_CODES.get(s, schema.UNKNOWN_SPLIT) for s in split], np.uint8),
        "year": np.array([p.meta.acquired.year for p in patches], np.int16),
        "camera": np.array([cam[p.meta.camera] for p in patches], np.int16),
        "centroid_x": np.array([p.meta.x for p in patches]),
        "centroid_y": np.array([p.meta.y for p in patches]),
        "centroid_z": np.array([p.meta.z for p in patches]),
        "acquired": np.array([int((p.meta.acquired - _EPOCH_DT).total_seconds()) for p in patches], np.int64),
        "s2_row": np.array([p.centroid[0] for p in patches], np.int32),
        "s2_col": np.array([p.centroid[1] for p in patches], np.int32),
        "has_label": np.array([p.label is not None for p in patches], np.uint8),
    }
    lk.write_arrays(list(cols.items()), slice(rows.start, rows.stop), root)


def _present_ids(root, still_bad: set[int]) -> set[int]:
    """Return the patch ids a new run must skip: those in the rows of recorded runs (ingested, or quarantined
    by a shard task), and those quarantined before they got a row that are still bad. A patch whose problem
    was fixed since (its label added, its centroid corrected, ...) is ingested by the next run."""
    ids: set[int] = set()
    for r in root.attrs.get("runs", []):
        if "rows" in r:
            a, b = r["rows"]
            ids.update(int(i) for i in root["patch_id"][a:b] if i >= 0)
    ids.update(int(k) for k in root.attrs.get("quarantine", {}) if int(k) in still_bad)
    return ids


def _plan_retries(root, tree: RawTree, raw: str | Path, work: list, per_shard: int) -> dict[str, set[int]]:
    """Plan to write again the shards of finished runs of this tree that hold patches a shard task quarantined
    (an unreadable or malformed file) whose files changed after that run started: re-downloaded or re-exported.
    Whole shards are rewritten, so every patch of the run must still be in the tree. The run is marked running
    and the shards' markers removed before anything is written: a kill in between is resumed like any
    interrupted run. Unchanged bad files are left alone: re-ingesting the same tree adds nothing.

    Returns:
        run id -> the quarantined patch ids whose shards are written again.
    """
    status = root[lk.STATUS_ARRAY][:]
    planned = {rid for rid, *_ in work}
    retries: dict[str, set[int]] = {}
    for r in root.attrs.get("runs", []):
        if r.get("command") != "ingest" or r.get("status") != "complete" or r["id"] in planned \
                or "rows" not in r or Path(r["raw"]) != Path(raw).resolve():
            continue
        a, b = r["rows"]
        bad_rows = a + np.flatnonzero(status[a:b] == lk.STATUS_QUARANTINED)
        ids = [int(i) for i in root["patch_id"][a:b]]
        started = dt.datetime.fromisoformat(r["started"]).timestamp() + 1  # recorded to the second, rounded down
        bad_rows = [row for row in bad_rows if ids[row - a] in tree.patches and _changed_since(
            tree.patches[ids[row - a]], started)]
        if not bad_rows:
            continue
        if any(i not in tree.patches for i in ids):
            log.warning("run %s: quarantined patches not retried, some of its patches left the tree", r["id"])
            continue
        lk.update_run(root, r["id"], status="running", retried=lk.now_iso())
        for shard in sorted({int(row) // per_shard for row in bad_rows}):
            marker = lk.shard_marker(shard)
            if root.get(marker) is not None:
                del root[marker]
        retries[r["id"]] = {ids[row - a] for row in bad_rows}
        work.append((r["id"], range(a, b), [tree.patches[i] for i in ids], tree.areas))
    return retries


def _changed_since(patch: PatchFiles, when: float) -> bool:
    """Return True when the patch's image or label file was modified after the POSIX time ``when``."""
    files = [f for f in (patch.image, patch.label) if f is not None]
    return any(Path(f).stat().st_mtime > when for f in files if Path(f).exists())


def ingest(raw: str | Path, lake: str, cfg: IngestConfig = IngestConfig(), *,
           metadata_path: str | None = None, centroids_path: str | None = None,
           storage_options: dict | None = None, progress: bool | None = None) -> IngestSummary:
    """Ingest the FLAIR tree(s) under ``raw`` into ``lake``: create, append, or resume an interrupted run.

    Raises:
        FlairLakeError: wrong root, empty tree, unwritable target (nothing is written then).
    """
    from pipelines.cluster import check_scheduler

    t0 = time.perf_counter()
    lk.check_writable(lake)
    check_scheduler(cfg.scheduler)
    tree = discover(raw, metadata_path=metadata_path, centroids_path=centroids_path, sat_window=cfg.sat_window)
    exists = lk.lake_exists(lake, storage_options=storage_options)
    if exists:
        root = lk.open_lake(lake, mode="r+", storage_options=storage_options)
        size = _patch_size(tree) if tree.patches else int(root.attrs["patch_size"])
        if int(root.attrs["patch_size"]) != size:
            raise FlairLakeError(f"{raw} has {size} px patches but {lake} holds "
                                 f"{root.attrs['patch_size']} px ones; ingest into another lake")
    else:
        if not tree.patches:
            first = next(iter(sorted(tree.problems.items())))
            raise RawFormatError(f"no valid patch under {raw}; first problem: {first[1]}")
        root = lk.create_lake(lake, lk.Layout(_patch_size(tree), cfg.patches_per_shard, cfg.codec,
                                              cfg.zstd_level), storage_options=storage_options)
    patch_size = int(root.attrs["patch_size"])
    per_shard = int(root.attrs["patches_per_shard"])
    run_id = f"ingest-{lk.now_iso()}-{len(root.attrs.get('runs', []))}"
    summary = IngestSummary(lake=lake, run_id=run_id, raw_bytes=tree.raw_bytes)

    # 1. interrupted runs: their rows are recorded; write the shards that have no marker
    work: list[tuple[str, range, list[PatchFiles], dict[str, AreaFiles]]] = []
    for r in root.attrs.get("runs", []):
        if r.get("command") == "ingest" and r.get("status") == "running":
            rtree = tree if Path(r["raw"]) == Path(raw).resolve() else discover(
                r["raw"], metadata_path=r.get("metadata"), centroids_path=r.get("centroids"), sat_window=cfg.sat_window)
            ids = root["patch_id"][r["rows"][0]:r["rows"][1]]
            missing = [int(i) for i in ids if int(i) not in rtree.patches]
            if missing:
                raise FlairLakeError(f"cannot resume run {r['id']}: {len(missing)} patch(es) of {r['raw']} are "
                                     f"gone (e.g. {names.img_name(missing[0])}); restore the raw tree")
            work.append((r["id"], range(*r["rows"]), [rtree.patches[int(i)] for i in ids], rtree.areas))
            summary.resumed_runs += 1
    retried = _plan_retries(root, tree, raw, work, per_shard)
    summary.retried = sum(len(v) for v in retried.values())

    # 2. the new patches: not yet in the lake, sorted by super-area then id (filter reads areas in order)
    present = _present_ids(root, set(tree.problems))
    summary.already_present = len(present & tree.patches.keys())
    new = sorted((p for pid, p in tree.patches.items() if pid not in present), key=lambda p: (p.area, p.patch_id))
    new_problems = {pid: why for pid, why in tree.problems.items() if pid not in present}
    if new or new_problems:
        start = lk.next_run_start(root)
        rows = range(start, start + len(new))
        # the tree's explicit options are recorded: a resume from another tree, and validate's fix, reuse them
        options = {k: str(Path(v).resolve()) for k, v in (("metadata", metadata_path), ("centroids", centroids_path))
                   if v}
        lk.update_run(root, run_id, command="ingest", status="running", raw=str(Path(raw).resolve()),
                      rows=[rows.start, rows.stop], started=lk.now_iso(), codec=root.attrs["codec"],
                      patches_planned=len(new), **options)
        if new:
            work.append((run_id, rows, new, tree.areas))
    for _, rows, patches, _ in work:  # idempotent: also repairs a run killed before its coordinates landed
        lk.grow(root, rows.stop)
        _write_coords(root, rows, patches)

    # 3. tasks: shards without a marker, super-areas not yet complete
    shard_tasks, area_tasks = [], []
    complete = lk.read_markers(root)
    for _, rows, patches, areas in work:
        for s0 in range(rows.start, rows.stop, per_shard):
            shard = s0 // per_shard
            if shard in complete:
                summary.shards_skipped += 1
                continue
            chunk = patches[s0 - rows.start: s0 - rows.start + per_shard]
            shard_tasks.append(ShardTask(lake, shard, s0, tuple(
                (p.patch_id, str(p.image), str(p.label) if p.label else None) for p in chunk),
                patch_size, storage_options))
        for name in sorted({p.area for p in patches}):
            if root.get(f"{schema.SENTINEL_GROUP}/{name}") is not None and \
                    root[f"{schema.SENTINEL_GROUP}/{name}"].attrs.get("complete"):
                summary.areas_skipped += 1
                continue
            area_tasks.append(AreaTask(lake, areas[name], cfg.sentinel_codec, cfg.zstd_level, storage_options))
    written = _run_tasks(shard_tasks, area_tasks, cfg, progress, summary) if shard_tasks or area_tasks else set()

    # 4. outcome: per-run counts, quarantine, statistics; runs that were resumed are complete now
    complete = lk.read_markers(root)
    reports = {s: complete.get(s) for _, rows, _, _ in work
               for s in range(rows.start // per_shard, math.ceil(rows.stop / per_shard))}
    quarantine = dict(root.attrs.get("quarantine", {}))
    run_bad: dict[str, set[int]] = {}
    records = {r["id"]: r for r in root.attrs.get("runs", [])}
    for rid, rows, patches, _ in work:
        bad = {k: v for s in range(rows.start // per_shard, math.ceil(rows.stop / per_shard))
               for k, v in (reports[s] or {}).get("bad", {}).items()}
        bad_ids = run_bad[rid] = {int(k) for k in bad}
        # an earlier session of this run (resumed or retried) also left out patches when it planned: keep them
        rows_ids = {p.patch_id for p in patches}
        planned_out = {i for i in records.get(rid, {}).get("quarantined_ids", []) if i not in rows_ids}
        lk.update_run(root, rid, status="complete", finished=lk.now_iso(), ingested=len(patches) - len(bad_ids),
                      quarantined=len(bad_ids | planned_out), quarantined_ids=sorted(bad_ids | planned_out))
        for p in patches:  # a patch quarantined by an earlier run and fixed since has landed now
            if str(p.patch_id) not in bad:
                quarantine.pop(str(p.patch_id), None)
        quarantine.update(bad)
        summary.quarantined.update({int(k): v for k, v in bad.items()})
        # a retried run adds the patches that were quarantined and landed now; others what this session wrote
        if rid in retried:
            summary.added += len(retried[rid] - bad_ids)
        else:
            now = sum(min(rows.stop, (s + 1) * per_shard) - max(rows.start, s * per_shard)
                      - len((reports[s] or {}).get("bad", {})) for s in written
                      if rows.start // per_shard <= s < math.ceil(rows.stop / per_shard))
            summary.added += now
            summary.landed_before += len(patches) - len(bad_ids) - now
    quarantine.update({str(k): v for k, v in new_problems.items()})
    summary.quarantined.update(new_problems)
    root.attrs["quarantine"] = quarantine
    _update_band_stats(root, complete)
    summary.seconds = time.perf_counter() - t0
    if new or new_problems:  # this run's quarantine: patches its tasks rejected and those its plan left out
        ids = run_bad.get(run_id, set()) | set(new_problems)
        lk.update_run(root, run_id, status="complete", finished=lk.now_iso(), seconds=round(summary.seconds, 2),
                      raw_bytes=tree.raw_bytes, plan_quarantined=len(new_problems), quarantined=len(ids),
                      quarantined_ids=sorted(ids))
    return summary


def _run_tasks(shard_tasks, area_tasks, cfg: IngestConfig, progress, summary: IngestSummary) -> set[int]:
    """Map the super-area and shard tasks over the cluster, counting what was written; return the shards."""
    from pipelines.cluster import run_tasks

    written: set[int] = set()
    timing: dict = {}
    # longest first: the shard tasks (~0.5 s each) go before the super-areas (~0.15 s), which fill the tail
    for res in run_tasks([(write_patch_shard, shard_tasks), (write_area, area_tasks)], scheduler=cfg.scheduler,
                         workers=cfg.workers, threads_per_worker=cfg.threads_per_worker, desc="ingest",
                         progress=progress, timing=timing):
        if "shard" in res:
            summary.shards_written += 1
            written.add(int(res["shard"]))
        else:
            summary.areas_written += 1
    summary.startup_seconds = timing.get("startup", 0.0)
    return written


def _update_band_stats(root, markers: dict[int, dict]) -> None:
    """Recompute per-band mean and std of the aerial bands (from the reports of every complete shard,
    ``markers``) and of the Sentinel clear pixels."""
    tot, sq, n = np.zeros(5), np.zeros(5), 0
    for rep in markers.values():
        tot += rep["aerial_sum"]
        sq += rep["aerial_sumsq"]
        n += rep["pixels"]
    stats = dict(root.attrs.get("band_stats", {}))
    if n:
        mean = tot / n
        stats["aerial"] = {"mean": mean.tolist(), "std": np.sqrt(np.maximum(sq / n - mean**2, 0)).tolist(),
                           "bands": list(schema.AERIAL_BANDS)}
    s_tot, s_sq, s_n = np.zeros(10), np.zeros(10), 0
    sen = root.get(schema.SENTINEL_GROUP)
    if sen is not None:
        for _, g in sen.groups():
            a = g.attrs
            if a.get("complete") and a.get("clear_pixels"):
                s_tot += a["clear_sum"]
                s_sq += a["clear_sumsq"]
                s_n += a["clear_pixels"]
    if s_n:
        mean = s_tot / s_n
        stats["sentinel"] = {"mean": mean.tolist(), "std": np.sqrt(np.maximum(s_sq / s_n - mean**2, 0)).tolist(),
                             "bands": list(schema.S2_BANDS)}
    root.attrs["band_stats"] = stats
