"""``flair-lake validate``: check a lake against its contract (``docs/lake-format.md``) and say how to repair it.

Plain checks read only metadata and the small per-patch table: schema version, every per-patch array's shape,
dtype and chunking, cross-array consistency (ids, splits, string-table codes, super-areas, Sentinel windows),
views (row counts, keep flags) and shard completion markers. ``deep`` also decodes every shard of ``aerial``,
``label`` and of each view's ``monthly`` cube that holds written rows, and names the patches of shards that are
missing, truncated or fail their checksum.

Every problem is one line: what is wrong, where, and the command (or manual step) that repairs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flair_lake import lake as lk
from flair_lake import schema

EXIT_INVALID = 4
EXAMPLE_IDS = 5  # patch ids quoted per problem


@dataclass
class ValidationReport:
    """The outcome of :func:`validate`: the checks run and the problems found (one line each)."""

    lake: str
    deep: bool = False
    checks: int = 0
    problems: list[str] = field(default_factory=list)
    shards_decoded: int = 0

    @property
    def ok(self) -> bool:
        """Return True when no problem was found."""
        return not self.problems

    @property
    def exit_code(self) -> int:
        """Return 0 when the lake is sound, :data:`EXIT_INVALID` otherwise."""
        return 0 if self.ok else EXIT_INVALID

    def lines(self) -> list[str]:
        """Return the human summary: a verdict, then one line per problem."""
        scope = f"{self.checks} checks" + (f", {self.shards_decoded} shards decoded" if self.deep else "")
        if self.ok:
            return [f"{self.lake} is sound ({scope})"]
        return [f"{self.lake}: {len(self.problems)} problem(s) ({scope}):"] + [f"  {p}" for p in self.problems]


def _ids(ids: np.ndarray) -> str:
    """Return a short list of patch ids such as ``IMG_000001, IMG_000002 (+3 more)``."""
    ids = np.asarray(ids).ravel()
    head = ", ".join(f"IMG_{int(i):06d}" for i in ids[:EXAMPLE_IDS])
    return head + (f" (+{ids.size - EXAMPLE_IDS} more)" if ids.size > EXAMPLE_IDS else "")


class _Checker:
    """Collects problems while the checks run; holds the arrays every check shares."""

    def __init__(self, lake: str, root, deep: bool) -> None:
        self.lake, self.root = lake, root
        self.report = ValidationReport(lake=lake, deep=deep)
        self.attrs = root.attrs.asdict()
        self.per_shard = int(self.attrs.get("patches_per_shard", schema.PATCHES_PER_SHARD))
        self.n = lk.n_rows(root) if "patch_id" in root else 0
        self.status = root[lk.STATUS_ARRAY][:] if lk.STATUS_ARRAY in root else np.zeros(self.n, np.uint8)
        self.patch_id = root["patch_id"][:] if "patch_id" in root else np.full(self.n, -1, np.int32)
        self.areas_t: dict[int, int] = {}  # zone code -> dates of its super-area, filled by _check_areas

    def check(self, ok: bool, problem: str) -> bool:
        """Count a check; record ``problem`` when it failed. Return ``ok``."""
        self.report.checks += 1
        if not ok:
            self.report.problems.append(problem)
        return ok

    # --- helpers ---------------------------------------------------------------------------------------------
    def shard_rows(self, shard: int) -> tuple[int, int]:
        """Return the ``[start, stop)`` rows of a shard, clipped to the lake."""
        return shard * self.per_shard, min((shard + 1) * self.per_shard, self.n)

    def written_shards(self, ok_only: bool = False) -> list[int]:
        """Return the shards holding rows the ingest tasks wrote (status 1 or 2; status 1 only with ok_only)."""
        sel = self.status == lk.STATUS_OK if ok_only else self.status != lk.STATUS_EMPTY
        return sorted({int(r) // self.per_shard for r in np.flatnonzero(sel)})

    def run_of_row(self, row: int) -> dict | None:
        """Return the ingest run record owning ``row``."""
        for r in self.attrs.get("runs", []):
            rows = r.get("rows")
            if r.get("command") == "ingest" and rows and rows[0] <= row < rows[1]:
                return r
        return None

    def ingest_fix(self, shard: int, shard_key: str | None = None) -> str:
        """Return the honest repair of an image shard: ingest rewrites only marker-less shards of running runs.

        A corrupt shard object must be deleted too: a shard only partly covered by rows is read back and merged
        when it is rewritten, which fails on a corrupt one.
        """
        run = self.run_of_row(self.shard_rows(shard)[0]) or {}
        raw = run.get("raw", "RAW")
        marker = f"{self.lake}/{lk.shard_marker(shard)}"
        delete = f"the shard object {self.lake}/{shard_key} and " if shard_key else ""
        if run.get("status") == "running":
            return f"delete {delete}the marker {marker} if present, then re-run `flair-lake ingest {raw} {self.lake}`"
        return (f"ingest rewrites only marker-less shards of runs recorded as running and has no flag to reopen a "
                f"complete run: delete {delete}the marker {marker}, set the status of run {run.get('id', '?')} to "
                f"\"running\" in the root attrs (zarr: root.attrs['runs']), then re-run "
                f"`flair-lake ingest {raw} {self.lake}`; or re-ingest {raw} into a new lake")

    def view_fix(self, name: str, shard: int | None = None, shard_key: str | None = None) -> str:
        """Return the command that rebuilds (part of) a view."""
        vg = self.root[f"{schema.VIEWS_GROUP}/{name}"]
        cmd = f"`flair-lake filter {self.lake} {_filter_flags(name, vg.attrs.get('params', {}))}`"
        if shard is None:
            return f"re-run {cmd}"
        marker = f"{self.lake}/{lk.shard_marker(shard, f'{schema.VIEWS_GROUP}/{name}/done')}"
        delete = f"the shard object {self.lake}/{shard_key} and " if shard_key else ""
        return f"delete {delete}the marker {marker}, then re-run {cmd} (it rewrites marker-less shards)"


def _filter_flags(name: str, params: dict) -> str:
    """Return the ``flair-lake filter`` options that rebuild the view ``name`` from its recorded params."""
    from flair_lake.config import FilterConfig

    try:
        cfg = FilterConfig(**params)
    except TypeError:
        return f"--name {name} --overwrite"
    if cfg == FilterConfig.baseline():
        flags = "--preset baseline"
    else:
        flags = f"--cloud {cfg.max_cover:g} --prob {cfg.min_prob:g} --combine {cfg.combine}"
        if cfg.monthly:
            flags += f" --monthly --reducer {cfg.reducer}" + (" --mask-pixels" if cfg.mask_pixels else "")
    from pipelines.filter import view_name

    return flags + ("" if view_name(cfg) == name else f" --name {name}")


# --- the checks -------------------------------------------------------------------------------------------------
def _expected_arrays(p: int, s: int) -> dict[str, tuple[tuple[int, ...], str, tuple[int, ...], tuple | None]]:
    """Return name -> (trailing shape, dtype, chunks, shards) of every per-patch array, as create_lake makes it."""
    out = {
        "aerial": ((5, p, p), "uint8", (1, 5, p, p), (s, 5, p, p)),
        "label": ((p, p), "uint8", (1, p, p), (s, p, p)),
        lk.STATUS_ARRAY: ((), "uint8", (s,), None),
    }
    for spec in (*schema.COORDS, schema.TRANSFORM):
        rows = s if spec.name in lk.TASK_WRITTEN else 65_536
        trail = (6,) if spec.dims else ()
        out[spec.name] = (trail, spec.dtype, (rows, *trail), None)
    return out


def _check_root(c: _Checker) -> bool:
    """Schema version and the root attributes readers rely on. Return False when nothing else can be checked."""
    version = int(c.attrs.get("schema_version", 0))
    c.check(version == schema.SCHEMA_VERSION,
            f"schema version {version} (this flair-lake writes {schema.SCHEMA_VERSION}); fix: re-ingest the raw "
            f"tree into a new lake with `flair-lake ingest RAW NEWLAKE`")
    missing = [k for k in ("patch_size", "patches_per_shard", "domains", "areas", "cameras", "split_names", "runs")
               if k not in c.attrs]
    return c.check(not missing, f"root attrs lack {', '.join(missing)}; fix: the lake was not written by "
                   f"`flair-lake ingest`: re-ingest the raw tree into a new lake")


def _check_arrays(c: _Checker) -> bool:
    """Shape, dtype and chunking of every per-patch array. Return False when an array is absent."""
    p = int(c.attrs["patch_size"])
    fix = "fix: re-ingest the raw tree into a new lake (`flair-lake ingest RAW NEWLAKE`)"
    complete = True
    for name, (trail, dtype, chunks, shards) in _expected_arrays(p, c.per_shard).items():
        if not c.check(name in c.root, f"array {name} is missing; {fix}"):
            complete = False
            continue
        arr = c.root[name]
        c.check(tuple(arr.shape) == (c.n, *trail),
                f"array {name} has shape {tuple(arr.shape)}, expected {(c.n, *trail)} (rows of patch_id); {fix}")
        c.check(str(arr.dtype) == dtype, f"array {name} has dtype {arr.dtype}, expected {dtype}; {fix}")
        c.check(tuple(arr.chunks) == chunks, f"array {name} has chunks {tuple(arr.chunks)}, expected {chunks}; {fix}")
        got_shards = tuple(arr.shards) if arr.shards else None
        c.check(got_shards == shards, f"array {name} has shards {got_shards}, expected {shards}; {fix}")
    return complete


def _check_table(c: _Checker) -> None:
    """Cross-array consistency of the per-patch table, the run records and the Sentinel super-areas."""
    root, ok = c.root, c.status == lk.STATUS_OK
    bad_status = np.flatnonzero(c.status > lk.STATUS_QUARANTINED)
    c.check(bad_status.size == 0, f"status has values other than 0, 1, 2 at rows {bad_status[:EXAMPLE_IDS].tolist()}"
            f"; {c.ingest_fix(int(bad_status[0]) // c.per_shard) if bad_status.size else ''}")
    neg = np.flatnonzero(ok & (c.patch_id < 0))
    c.check(neg.size == 0, f"{neg.size} status-1 row(s) have no patch id (rows {neg[:EXAMPLE_IDS].tolist()}); "
            "fix: re-ingest the raw tree into a new lake")
    ids, counts = np.unique(c.patch_id[ok], return_counts=True)
    dup = ids[counts > 1]
    c.check(dup.size == 0, f"patch ids present in several status-1 rows: {_ids(dup)}; fix: re-ingest the raw "
            "tree into a new lake")
    split = root["split"][:][ok]
    valid_split = np.isin(split, [*schema.SPLIT_CODES.values(), schema.UNKNOWN_SPLIT])
    c.check(bool(valid_split.all()), f"invalid split codes {np.unique(split[~valid_split]).tolist()} for patches "
            f"{_ids(c.patch_id[ok][~valid_split])}; expected 0, 1, 2 or {schema.UNKNOWN_SPLIT}; fix: re-ingest")
    for col, table in (("domain", "domains"), ("zone", "areas"), ("camera", "cameras")):
        codes = root[col][:][ok]
        bad = (codes < 0) | (codes >= len(c.attrs[table]))
        if col == "camera":
            bad &= codes != -1
        c.check(not bad.any(), f"{col} codes outside attrs['{table}'] (size {len(c.attrs[table])}) for patches "
                f"{_ids(c.patch_id[ok][bad])}; fix: re-ingest the raw tree into a new lake")
    for r in c.attrs.get("runs", []):
        c.check(r.get("status") != "running",
                f"run {r.get('id')} ({r.get('command')}) is recorded as running: it was interrupted; fix: re-run "
                + (f"`flair-lake ingest {r.get('raw', 'RAW')} {c.lake}` (it resumes)" if r.get("command") == "ingest"
                   else f"`flair-lake filter {c.lake} ...` with the parameters of view {r.get('view')}"))
    _check_areas(c, ok)


def _check_areas(c: _Checker, ok: np.ndarray) -> None:
    """Every super-area a status-1 patch references exists, is complete, and holds the patch's window."""
    zone = c.root["zone"][:]
    rows, cols = c.root["s2_row"][:], c.root["s2_col"][:]
    areas = c.attrs["areas"]
    half = schema.S2_WINDOW // 2
    for code in np.unique(zone[ok]):
        if not 0 <= code < len(areas):
            continue
        name = areas[int(code)]
        members = ok & (zone == code)
        g = c.root.get(f"{schema.SENTINEL_GROUP}/{name}")
        run = c.run_of_row(int(np.flatnonzero(members)[0])) or {}
        fix = (f"re-run `flair-lake ingest {run.get('raw', 'RAW')} {c.lake}`" if run.get("status") == "running" else
               f"delete {c.lake}/{schema.SENTINEL_GROUP}/{name} and re-ingest (ingest rewrites areas without "
               "'complete' only while their run is recorded as running); or re-ingest into a new lake")
        if not c.check(g is not None and all(k in g for k in ("data", "masks", "dates")),
                       f"super-area {name} referenced by patches {_ids(c.patch_id[members])} is missing or lacks "
                       f"data/masks/dates; fix: {fix}"):
            continue
        c.check(bool(g.attrs.get("complete")), f"super-area {name} is not marked complete; fix: {fix}")
        t, _, h, w = g["data"].shape
        c.areas_t[int(code)] = t
        c.check(g["masks"].shape[0] == t and g["dates"].shape[0] == t,
                f"super-area {name}: data, masks and dates disagree on the number of dates; fix: {fix}")
        out = members & ((rows - half < 0) | (rows + half > h) | (cols - half < 0) | (cols + half > w))
        c.check(not out.any(), f"the {schema.S2_WINDOW}x{schema.S2_WINDOW} window of patches {_ids(c.patch_id[out])} "
                f"leaves super-area {name} ({h}x{w}); fix: re-ingest the raw tree into a new lake")


def _check_markers(c: _Checker) -> None:
    """A completion marker for every shard that holds written rows."""
    missing = [s for s in c.written_shards() if lk.read_marker(c.root, s) is None]
    for s in missing:
        a, b = c.shard_rows(s)
        c.check(False, f"shard {s} (rows {a}-{b}, patches {_ids(c.patch_id[a:b][c.status[a:b] > 0])}) has no "
                f"marker {lk.shard_marker(s)}; fix: {c.ingest_fix(s)}")
    c.report.checks += len(c.written_shards()) - len(missing)


def _check_views(c: _Checker) -> None:
    """Each view: row counts, completeness, n_dates against its areas, keep beyond n_dates, shard markers."""
    vg = c.root.get(schema.VIEWS_GROUP)
    if vg is None:
        return
    ok = c.status == lk.STATUS_OK
    zone = c.root["zone"][:]
    for name, g in sorted(vg.groups()):
        fix = c.view_fix(name)
        for arr_name, arr in g.arrays():
            c.check(arr.shape[0] == c.n, f"view {name}: {arr_name} has {arr.shape[0]} rows, the lake {c.n}; "
                    f"fix: {fix} (it grows the view)")
        if not c.check(all(k in g for k in ("cover", "keep", "n_dates")),
                       f"view {name} lacks cover, keep or n_dates; fix: {fix} --overwrite"):
            continue
        c.check(bool(g.attrs.get("complete")), f"view {name} is not complete; fix: {fix}")
        n_dates = g["n_dates"][:].astype(np.int64)
        keep = g["keep"][:]
        rows = min(keep.shape[0], c.n)
        beyond = np.arange(keep.shape[1])[None, :] >= n_dates[:rows, None]
        bad = (keep[:rows] & beyond).any(1)
        c.check(not bad.any(), f"view {name}: keep is True beyond n_dates for patches {_ids(c.patch_id[:rows][bad])}"
                f"; fix: {fix} --overwrite")
        expect = np.array([c.areas_t.get(int(z), -1) for z in zone[:rows]])
        wrong = ok[:rows] & (expect >= 0) & (n_dates[:rows] != expect)
        c.check(not wrong.any(), f"view {name}: n_dates differs from the super-area's dates for patches "
                f"{_ids(c.patch_id[:rows][wrong])}; fix: {fix} --overwrite")
        prefix = f"{schema.VIEWS_GROUP}/{name}/done"
        for s in c.written_shards(ok_only=True):
            a, b = c.shard_rows(s)
            c.check(lk.read_marker(c.root, s, prefix) is not None,
                    f"view {name}: shard {s} (rows {a}-{b}) has no marker {lk.shard_marker(s, prefix)}; fix: {fix}")


# --- deep: decode every shard -----------------------------------------------------------------------------------
def _shard_key(arr, shard: int) -> str:
    """Return the store key of the shard object holding rows of shard ``shard`` (trailing dims: one shard)."""
    coords = (shard, *(0 for _ in arr.shape[1:]))
    return f"{arr.path}/{arr.metadata.encode_chunk_key(coords)}"


def _decode_shard(arr, a: int, b: int) -> np.ndarray:
    """Decode rows ``[a, b)`` of ``arr``; return the rows that fail to decode (empty when the shard is sound)."""
    try:
        arr[a:b]
        return np.empty(0, np.int64)
    except Exception:  # noqa: BLE001 - codec and checksum errors have no common base; narrowed to rows below
        pass
    failed = []
    for r in range(a, b):  # basic indexing, one chunk at a time, to name the patches that are lost
        try:
            arr[r]
        except Exception:  # noqa: BLE001
            failed.append(r)
    return np.asarray(failed, np.int64)


def _check_deep(c: _Checker) -> None:
    """Decode every written shard of aerial, label and the views' monthly cubes; name the patches lost."""
    from zarr.core.sync import sync

    targets = [(name, c.root[name], c.written_shards(), c.ingest_fix) for name in ("aerial", "label") if name in c.root]
    vg = c.root.get(schema.VIEWS_GROUP)
    if vg is not None:
        for vname, g in sorted(vg.groups()):
            if "monthly" in g:
                targets.append((f"{schema.VIEWS_GROUP}/{vname}/monthly", g["monthly"], c.written_shards(ok_only=True),
                                lambda s, key=None, v=vname: c.view_fix(v, s, key)))
    store = c.root.store
    for path, arr, shards, fix in targets:
        sharded = bool(arr.shards) and arr.shards[0] == c.per_shard
        for s in shards:
            a, b = c.shard_rows(s)
            b = min(b, arr.shape[0])
            if a >= b:
                continue
            c.report.shards_decoded += 1
            held = c.status[a:b] > 0
            if sharded and not sync(store.exists(_shard_key(arr, s))):
                c.check(False, f"{path}: shard {s} (rows {a}-{b}) is missing from the store; it reads as zeros "
                        f"for patches {_ids(c.patch_id[a:b][held])}; fix: {fix(s)}")
                continue
            failed = _decode_shard(arr, a, b)
            c.check(failed.size == 0, f"{path}: shard {s} (rows {a}-{b}) is truncated or corrupt (decode or "
                    f"checksum error); lost patches {_ids(c.patch_id[failed][c.status[failed] > 0])}; "
                    f"fix: {fix(s, _shard_key(arr, s) if sharded else None)}")


def validate(lake: str, *, deep: bool = False, storage_options: dict | None = None) -> ValidationReport:
    """Check ``lake`` against the lake contract; with ``deep``, decode every image and monthly shard.

    Args:
        lake: path or object-store URL of the lake.
        deep: also decode every written shard of ``aerial``, ``label`` and the views' ``monthly`` cubes.
        storage_options: fsspec options of an object store.

    Returns:
        The report: ``ok``, ``exit_code`` and one line per problem with its repair.

    Raises:
        LakeNotFoundError: nothing at ``lake``.
        LakeStateError: not a flair-lake, or a schema newer than this code.
    """
    root = lk.open_lake(lake, storage_options=storage_options)
    c = _Checker(lake, root, deep)
    if not _check_root(c) or not _check_arrays(c):
        return c.report
    _check_table(c)
    _check_markers(c)
    _check_views(c)
    if deep:
        _check_deep(c)
    return c.report

