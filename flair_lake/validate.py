"""``flair-lake validate``: check a lake against its contract (``docs/lake-format.md``), say how to repair it, and
with ``repair`` do the repair.

Every metadata document (``zarr.json``) is read and parsed first, from one listing of the store: a corrupt one is
one problem naming the file. Plain checks then read only metadata and the small per-patch table: schema version,
every per-patch array's shape, dtype and chunking, cross-array consistency (ids, splits, string-table codes,
super-areas, Sentinel windows), views (row counts, keep flags), shard completion markers, and that the shard object
of ``aerial``, ``label`` and each view's ``monthly`` cube exists for every shard holding ingested patches (from
the same listing). ``deep`` also decodes every shard of ``aerial``, ``label`` and of each view's ``monthly`` cube
that holds written rows, and names the patches of shards that are missing, truncated or fail their checksum.

Every problem is one line: what is wrong, where, and the command (or manual step) that repairs it.

``repair`` fixes what the checks found, without touching anything healthy: metadata padded with NUL bytes is
stripped; a missing, truncated or corrupt per-patch shard (or one whose marker is missing or unreadable) is
deleted in every array one ingest task writes, with its marker, and the run that wrote it is set back to
``running``, so that ``flair-lake ingest RAW LAKE`` rewrites exactly those shards; a view's damaged shard is
deleted with its marker and the view marked incomplete, so that ``flair-lake filter`` with the view's parameters
rewrites it; side files left by interrupted writes (``*.partial``) are deleted. It then prints the commands to
run next.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flair_lake import lake as lk
from flair_lake import schema
from flair_lake.errors import CorruptMetadataError, FlairLakeError, LakeStateError

EXIT_INVALID = 4
EXAMPLE_IDS = 5  # patch ids quoted per problem
METADATA = "zarr.json"
_PADDING = b"\0 \t\r\n"
_MARKER = re.compile(rf"^({schema.DONE_GROUP}|{schema.VIEWS_GROUP}/[^/]+/done)/s(\d{{7}})$")
_FETCH_CONCURRENCY = 64  # metadata documents read at once (object stores)


@dataclass
class ValidationReport:
    """The outcome of :func:`validate`: the checks run, the problems found (one line each) and the repairs."""

    lake: str
    deep: bool = False
    repair: bool = False
    checks: int = 0
    problems: list[str] = field(default_factory=list)
    shards_decoded: int = 0
    # per problem: how --repair resolves it: ("shard", s), ("view_shard", view, s), ("meta", path): repaired;
    # ("ingest", raw), ("filter", view): resolved by the command printed next; None: by hand only
    actions: list[tuple | None] = field(default_factory=list, repr=False)
    repaired: list[str] = field(default_factory=list)
    next_commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: int = 0  # repairs that were refused or failed
    stopped: str = ""  # why the checks stopped early

    @property
    def ok(self) -> bool:
        """Return True when no problem was found."""
        return not self.problems

    @property
    def resolved(self) -> bool:
        """Return True when ``repair`` ran and every problem was repaired or is resolved by the next commands."""
        return self.repair and not self.failed and all(a is not None for a in self.actions)

    @property
    def exit_code(self) -> int:
        """Return 0 when the lake is sound or fully repaired, :data:`EXIT_INVALID` otherwise."""
        return 0 if self.ok or self.resolved else EXIT_INVALID

    def check(self, ok: bool, problem: str, action: tuple | None = None) -> bool:
        """Count a check; record ``problem`` (and how ``repair`` resolves it) when it failed. Return ``ok``."""
        self.checks += 1
        if not ok:
            self.problems.append(problem)
            self.actions.append(action)
        return ok

    def lines(self) -> list[str]:
        """Return the human summary: a verdict, one line per problem, then the repairs and the next commands."""
        scope = f"{self.checks} checks" + (f", {self.shards_decoded} shards decoded" if self.deep else "")
        scope += f"; {self.stopped}" if self.stopped else ""
        if self.ok:
            out = [f"{self.lake} is sound ({scope})" + ("; nothing to repair" if self.repair else "")]
        else:
            out = [f"{self.lake}: {len(self.problems)} problem(s) ({scope}):"] + [f"  {p}" for p in self.problems]
        if self.repair and self.problems:
            left = sum(a is None for a in self.actions)
            out += self.repaired or ["repaired nothing"]
            out += [f"note: {n}" for n in self.notes]
            if left:
                out.append(f"{left} problem(s) above need a manual repair (their fix)")
            out += [f"next: {cmd}" for cmd in self.next_commands]
        return out


def _ids(ids: np.ndarray) -> str:
    """Return a short list of patch ids such as ``IMG_000001, IMG_000002 (+3 more)``."""
    ids = np.asarray(ids).ravel()
    head = ", ".join(f"IMG_{int(i):06d}" for i in ids[:EXAMPLE_IDS])
    return head + (f" (+{ids.size - EXAMPLE_IDS} more)" if ids.size > EXAMPLE_IDS else "")


# --- metadata: every zarr.json of the store, read once ----------------------------------------------------------
@dataclass
class _Metadata:
    """Every key of the store, and its metadata documents parsed (or why they cannot be)."""

    keys: set[str]
    docs: dict[str, dict]  # node path ("" for the root) -> parsed zarr.json
    bad: dict[str, str]  # node path -> why its zarr.json cannot be read
    fixed: dict[str, bytes]  # node path -> its zarr.json without the NUL/blank padding, when that parses


def _node_key(path: str) -> str:
    """Return the key of a node's metadata document."""
    return f"{path}/{METADATA}" if path else METADATA


def _parse(raw: bytes) -> dict:
    """Return a parsed zarr v3 metadata document; raise when zarr could not open the node."""
    from zarr.core.group import GroupMetadata
    from zarr.core.metadata.v3 import ArrayV3Metadata

    text = raw.decode("utf-8")
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise TypeError("not a JSON object")
    if doc.get("zarr_format") != 3:
        raise ValueError(f"zarr_format is {doc.get('zarr_format')!r}, expected 3")
    kind = {"array": ArrayV3Metadata, "group": GroupMetadata}.get(doc.get("node_type"))
    if kind is None:
        raise ValueError(f"node_type is {doc.get('node_type')!r}")
    kind.from_dict(json.loads(text))  # the parse zarr does when it opens the node (on a copy: it may consume it)
    return doc


def _why(raw: bytes, exc: Exception) -> str:
    """Return why a metadata document cannot be read, in a few words."""
    nul = raw.count(b"\0")
    if not raw:
        return "empty file"
    if nul == len(raw):
        return f"all {len(raw)} bytes are NUL"
    why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return why + (f"; it holds {nul} NUL byte(s)" if nul else "")


async def _list_keys(store) -> list[str]:
    return [k async for k in store.list()]


async def _fetch(store, keys: list[str]) -> list[tuple[str, bytes | None]]:
    from zarr.core.buffer import default_buffer_prototype

    proto, gate = default_buffer_prototype(), asyncio.Semaphore(_FETCH_CONCURRENCY)

    async def one(key: str) -> tuple[str, bytes | None]:
        async with gate:
            buf = await store.get(key, prototype=proto)
        return key, None if buf is None else buf.to_bytes()

    return list(await asyncio.gather(*(one(k) for k in keys)))


def _scan(store) -> _Metadata:
    """List the store once and parse every metadata document (concurrently: one GET each on object stores)."""
    from zarr.core.sync import sync

    keys = set(sync(_list_keys(store)))
    meta = _Metadata(keys, {}, {}, {})
    wanted = sorted(k for k in keys if k == METADATA or k.endswith("/" + METADATA))
    for key, raw in sync(_fetch(store, wanted)):
        if raw is None:
            continue
        path = key[: -len(METADATA)].rstrip("/")
        try:
            meta.docs[path] = _parse(raw)
        except Exception as exc:  # noqa: BLE001 - json, unicode and zarr metadata errors: all mean unreadable
            meta.bad[path] = _why(raw, exc)
            stripped = raw.strip(_PADDING)
            if stripped and stripped != raw and _parses(stripped):
                meta.fixed[path] = stripped
    return meta


def _parses(raw: bytes) -> bool:
    """Return True when ``raw`` is a readable metadata document."""
    try:
        _parse(raw)
    except Exception:  # noqa: BLE001 - see _scan
        return False
    return True


def _open_store(lake: str, storage_options: dict | None, writable: bool):
    """Return the zarr store of ``lake`` without opening its root group (whose metadata may be unreadable)."""
    import zarr

    if lk.is_url(lake):
        return zarr.storage.FsspecStore.from_url(lake, storage_options=storage_options, read_only=not writable)
    return zarr.storage.LocalStore(lake, read_only=not writable)


def _marker_of(path: str) -> tuple[str, int] | None:
    """Return (marker prefix, shard) when ``path`` is a shard completion marker, else None."""
    m = _MARKER.match(path)
    return (m.group(1), int(m.group(2))) if m else None


def _runs_raw(docs: dict) -> str:
    """Return the raw trees recorded by the ingest runs of the root document (for messages)."""
    runs = docs.get("", {}).get("attributes", {}).get("runs", [])
    raws = list(dict.fromkeys(r.get("raw") for r in runs if r.get("command") == "ingest" and r.get("raw")))
    return " and ".join(raws) or "the raw tree"


def _metadata_problem(lake: str, path: str, why: str, meta: _Metadata) -> tuple[str, tuple | None]:
    """Return the problem line of an unreadable metadata document that is not a shard marker, and its action."""
    key = f"{lake}/{_node_key(path)}"
    if path in meta.fixed:
        text = (f"{key} is corrupt ({why}); the metadata before the padding is intact; fix: "
                f"`flair-lake validate {lake} --repair` strips the padding")
        return text, ("meta", path)
    node = "the lake's root group" if not path else path
    if path.startswith(f"{schema.VIEWS_GROUP}/") and path.count("/") >= 1:
        view = path.split("/")[1]
        params = meta.docs.get(f"{schema.VIEWS_GROUP}/{view}", {}).get("attributes", {}).get("params")
        cmd = (f"`flair-lake filter {lake} {_filter_flags(view, params)}`" if params is not None
               else f"`flair-lake filter {lake}` with the view's parameters")
        text = (f"{key} is corrupt ({why}); {node} cannot be opened; fix: delete the view {lake}/"
                f"{schema.VIEWS_GROUP}/{view} (derived data) and re-run {cmd}")
        return text, None
    text = (f"{key} is corrupt ({why}); {node} cannot be opened; fix: restore this file from a backup or a copy "
            f"of the lake, or re-ingest {_runs_raw(meta.docs)} into a new lake (`flair-lake ingest RAW NEWLAKE`)")
    return text, None


def _strip_padding(lake: str, store, meta: _Metadata, report: ValidationReport) -> None:
    """Rewrite the metadata documents that parse once their NUL/blank padding is removed (repair)."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    for path, data in sorted(meta.fixed.items()):
        key = _node_key(path)
        report.check(False, _metadata_problem(lake, path, meta.bad[path], meta)[0], ("meta", path))
        sync(store.set(key, default_buffer_prototype().buffer.from_bytes(data)))
        report.repaired.append(f"repaired {lake}/{key}: removed its padding (NUL or blank bytes); it parses again")


# --- the checker ------------------------------------------------------------------------------------------------
class _Checker:
    """Collects problems while the checks run; holds the arrays every check shares."""

    def __init__(self, lake: str, root, report: ValidationReport, meta: _Metadata) -> None:
        self.lake, self.root, self.report, self.meta = lake, root, report, meta
        self.attrs = root.attrs.asdict()
        self.per_shard = int(self.attrs.get("patches_per_shard", schema.PATCHES_PER_SHARD))
        self.n = lk.n_rows(root) if "patch_id" in root else 0
        self.status = root[lk.STATUS_ARRAY][:] if lk.STATUS_ARRAY in root else np.zeros(self.n, np.uint8)
        self.patch_id = root["patch_id"][:] if "patch_id" in root else np.full(self.n, -1, np.int32)
        self.areas_t: dict[int, int] = {}  # zone code -> dates of its super-area, filled by _check_areas
        self.missing: set[tuple[str, int]] = set()  # (array path, shard) whose shard object is missing
        self.layout_ok = True  # the root attrs and per-patch arrays are as ingest makes them

    def check(self, ok: bool, problem: str, action: tuple | None = None) -> bool:
        """Count a check; record ``problem`` when it failed. Return ``ok``."""
        return self.report.check(ok, problem, action)

    # --- helpers ---------------------------------------------------------------------------------------------
    def shard_rows(self, shard: int) -> tuple[int, int]:
        """Return the ``[start, stop)`` rows of a shard, clipped to the lake."""
        return shard * self.per_shard, min((shard + 1) * self.per_shard, self.n)

    def written_shards(self, ok_only: bool = False) -> list[int]:
        """Return the shards holding rows the ingest tasks wrote (status 1 or 2; status 1 only with ok_only)."""
        sel = self.status == lk.STATUS_OK if ok_only else self.status != lk.STATUS_EMPTY
        return sorted({int(r) // self.per_shard for r in np.flatnonzero(sel)})

    def held(self, shard: int) -> str:
        """Return the patch ids of a shard's written rows."""
        a, b = self.shard_rows(shard)
        return _ids(self.patch_id[a:b][self.status[a:b] > 0])

    def marker(self, shard: int, prefix: str = schema.DONE_GROUP) -> dict | None:
        """Return the report stored in a shard's marker (None when absent or unreadable)."""
        doc = self.meta.docs.get(lk.shard_marker(shard, prefix))
        return dict(doc.get("attributes", {})) if doc is not None and doc.get("node_type") == "group" else None

    def bad_markers(self, prefix: str) -> dict[int, str]:
        """Return shard -> why, for the unreadable markers under ``prefix``."""
        out = {}
        for path, why in self.meta.bad.items():
            m = _marker_of(path)
            if m is not None and m[0] == prefix:
                out[m[1]] = why
        return out

    def run_of_row(self, row: int) -> dict | None:
        """Return the ingest run record owning ``row``."""
        for r in self.attrs.get("runs", []):
            rows = r.get("rows")
            if r.get("command") == "ingest" and rows and rows[0] <= row < rows[1]:
                return r
        return None

    def ingest_cmd(self, run: dict) -> str:
        """Return the ingest command that resumes ``run`` (and the other running runs), with its tree's options."""
        opts = "".join(f" --{k} {shlex.quote(run[k])}" for k in ("metadata", "centroids") if run.get(k))
        return f"flair-lake ingest {shlex.quote(run.get('raw', 'RAW'))} {shlex.quote(self.lake)}{opts}"

    def filter_cmd(self, name: str) -> str:
        """Return the filter command that rebuilds (resumes, extends) the view ``name``."""
        vg = self.root[f"{schema.VIEWS_GROUP}/{name}"]
        return f"flair-lake filter {self.lake} {_filter_flags(name, vg.attrs.get('params', {}))}"

    def ingest_fix(self, shard: int, deep: bool = False) -> tuple[str, tuple | None]:
        """Return the repair of a damaged image shard, and its action.

        ``flair-lake ingest`` rewrites only marker-less shards of runs recorded as running; a damaged shard object
        must be deleted too (a shard only partly covered by rows is read back and merged when it is rewritten).
        ``validate --repair`` does both and reopens the run.
        """
        run = self.run_of_row(self.shard_rows(shard)[0])
        if run is None:
            text = ("no ingest run record owns these rows, so ingest cannot rewrite them: re-ingest the raw tree "
                    "into a new lake (`flair-lake ingest RAW NEWLAKE`)")
            return text, None
        reopen = "" if run.get("status") == "running" else f" and sets run {run.get('id')} back to running"
        text = (f"`flair-lake validate {self.lake}{' --deep' if deep else ''} --repair` (deletes shard {shard} of "
                f"{', '.join(lk.SHARD_TASK_ARRAYS)} and its marker {self.lake}/{lk.shard_marker(shard)}{reopen}), "
                f"then `{self.ingest_cmd(run)}`")
        return text, ("shard", shard)

    def view_fix(self, name: str, shard: int | None = None, deep: bool = False) -> tuple[str, tuple | None]:
        """Return the command that rebuilds (part of) a view, and its action."""
        cmd = f"`{self.filter_cmd(name)}`"
        if shard is None:
            return f"re-run {cmd}", ("filter", name)
        marker = f"{self.lake}/{lk.shard_marker(shard, f'{schema.VIEWS_GROUP}/{name}/done')}"
        text = (f"`flair-lake validate {self.lake}{' --deep' if deep else ''} --repair` (deletes shard {shard} of "
                f"view {name} and its marker {marker}, and marks the view incomplete), then {cmd}")
        return text, ("view_shard", name, shard)


def _filter_flags(name: str, params: dict) -> str:
    """Return the ``flair-lake filter`` options that rebuild the view ``name`` from its recorded params."""
    from flair_lake.config import FilterConfig

    try:
        cfg = FilterConfig(**params)
    except (TypeError, FlairLakeError):
        return f"--name {name} --overwrite"
    if cfg.is_baseline():
        flags = "--preset baseline"
    else:
        flags = f"--cloud {cfg.max_cover:g} --prob {cfg.min_prob:g} --combine {cfg.combine}"
        if cfg.monthly:
            flags += f" --monthly --reducer {cfg.reducer}" + (" --mask-pixels" if cfg.mask_pixels else "")
    if cfg.codec != FilterConfig.codec:
        flags += f" --codec {cfg.codec}"
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
    for s in sorted({int(r) // c.per_shard for r in bad_status}):
        a, b = c.shard_rows(s)
        rows = bad_status[(bad_status >= a) & (bad_status < b)]
        fix, action = c.ingest_fix(s)
        c.check(False, f"status has values other than 0, 1, 2 in shard {s} at rows {rows[:EXAMPLE_IDS].tolist()}; "
                f"fix: {fix}", action)
    c.report.checks += int(bad_status.size == 0)
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
    runs = c.attrs.get("runs", [])
    views = c.root.get(schema.VIEWS_GROUP)
    for i, r in enumerate(runs):
        if r.get("status") != "running":
            c.report.checks += 1
            continue
        where = f"run {r.get('id')} ({r.get('command')}) is recorded as running: it was interrupted"
        if r.get("command") == "ingest":
            c.check(False, f"{where}; fix: re-run `{c.ingest_cmd(r)}` (it resumes)",
                    ("ingest", r.get("raw")))
            continue
        view = r.get("view")
        # filter resumes under a new run record: an interrupted run followed by a complete one of its view is over
        if any(later.get("command") == "filter" and later.get("view") == view and later.get("status") == "complete"
               for later in runs[i + 1:]):
            c.report.checks += 1
            continue
        if views is not None and view in views:
            fix, action = c.view_fix(view)
            c.check(False, f"{where}; fix: {fix} (it resumes)", action)
        else:
            c.check(False, f"{where}; fix: re-run `flair-lake filter {c.lake}` with the parameters of view {view} "
                    f"({r.get('params')})")
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
    """A readable completion marker for every shard that holds written rows."""
    corrupt = c.bad_markers(schema.DONE_GROUP)
    for s in sorted(set(c.written_shards()) | set(corrupt)):
        a, b = c.shard_rows(s)
        where = f"shard {s} (rows {a}-{b}, patches {c.held(s)})"
        path = lk.shard_marker(s)
        if s in corrupt:
            if path in c.meta.fixed:
                fix = f"`flair-lake validate {c.lake} --repair` strips the padding (the marker before it is intact)"
                action = ("meta", path)
            else:
                fix, action = c.ingest_fix(s)
            c.check(False, f"{where}: its marker {c.lake}/{_node_key(path)} is corrupt ({corrupt[s]}); fix: {fix}",
                    action)
            continue
        if c.marker(s) is not None:
            c.report.checks += 1
            continue
        run = c.run_of_row(a) or {}
        if run.get("status") == "running":
            fix, action = (f"re-run `{c.ingest_cmd(run)}` (it resumes run {run.get('id')})",
                           ("ingest", run.get("raw")))
        else:
            fix, action = c.ingest_fix(s)
        c.check(False, f"{where} has no marker {path}; fix: {fix}", action)


def _check_views(c: _Checker) -> None:
    """Each view: row counts, completeness, n_dates against its areas, keep beyond n_dates, shard markers."""
    vg = c.root.get(schema.VIEWS_GROUP)
    if vg is None:
        return
    ok = c.status == lk.STATUS_OK
    zone = c.root["zone"][:]
    for name, g in sorted(vg.groups()):
        fix, action = c.view_fix(name)
        overwrite = f"re-run `{c.filter_cmd(name)} --overwrite`"
        for arr_name, arr in g.arrays():
            c.check(arr.shape[0] == c.n, f"view {name}: {arr_name} has {arr.shape[0]} rows, the lake {c.n}; "
                    f"fix: {fix} (it grows the view)", action)
        if not c.check(all(k in g for k in ("cover", "keep", "n_dates")),
                       f"view {name} lacks cover, keep or n_dates; fix: {overwrite}"):
            continue
        c.check(bool(g.attrs.get("complete")), f"view {name} is not complete; fix: {fix}", action)
        n_dates = g["n_dates"][:].astype(np.int64)
        keep = g["keep"][:]
        rows = min(keep.shape[0], c.n)
        prefix = f"{schema.VIEWS_GROUP}/{name}/done"
        done = np.zeros(rows, bool)  # rows of the shards filter finished; the others are still to be written
        for s in range(math.ceil(rows / c.per_shard)):
            done[s * c.per_shard:(s + 1) * c.per_shard] = c.marker(s, prefix) is not None
        beyond = np.arange(keep.shape[1])[None, :] >= n_dates[:rows, None]
        bad = (keep[:rows] & beyond).any(1) & done
        c.check(not bad.any(), f"view {name}: keep is True beyond n_dates for patches {_ids(c.patch_id[:rows][bad])}"
                f"; fix: {overwrite}")
        expect = np.array([c.areas_t.get(int(z), -1) for z in zone[:rows]])
        wrong = ok[:rows] & done & (expect >= 0) & (n_dates[:rows] != expect)
        c.check(not wrong.any(), f"view {name}: n_dates differs from the super-area's dates for patches "
                f"{_ids(c.patch_id[:rows][wrong])}; fix: {overwrite}")
        corrupt = c.bad_markers(prefix)
        for s in sorted(set(c.written_shards(ok_only=True)) | set(corrupt)):
            a, b = c.shard_rows(s)
            path = lk.shard_marker(s, prefix)
            if s in corrupt:
                sfix, saction = ((f"`flair-lake validate {c.lake} --repair` strips the padding", ("meta", path))
                                 if path in c.meta.fixed else c.view_fix(name, s))
                c.check(False, f"view {name}: shard {s} (rows {a}-{b}): its marker {c.lake}/{_node_key(path)} is "
                        f"corrupt ({corrupt[s]}); fix: {sfix}", saction)
                continue
            c.check(c.marker(s, prefix) is not None,
                    f"view {name}: shard {s} (rows {a}-{b}) has no marker {path}; fix: {fix}", action)


# --- shard objects: cheap existence (listing), deep decode ------------------------------------------------------
def _block_rows(arr) -> int:
    """Return the rows of one store object of ``arr`` (its shard, or its chunk when unsharded)."""
    return int((arr.shards or arr.chunks)[0])


def _shard_key(arr, shard: int) -> str:
    """Return the store key of the shard object holding rows of shard ``shard`` (trailing dims: one shard)."""
    coords = (shard, *(0 for _ in arr.shape[1:]))
    return f"{arr.path}/{arr.metadata.encode_chunk_key(coords)}"


def _block_keys(arr, shard: int, per_shard: int) -> list[str]:
    """Return the store keys of every object of ``arr`` holding rows of shard ``shard`` (all trailing blocks)."""
    block = arr.shards or arr.chunks
    if int(block[0]) != per_shard:
        raise LakeStateError(f"{arr.path} stores {block[0]} rows per object, not {per_shard}")
    grid = [range(max(1, math.ceil(n / c))) for n, c in zip(arr.shape[1:], block[1:])]
    return [f"{arr.path}/{arr.metadata.encode_chunk_key((shard, *idx))}" for idx in itertools.product(*grid)]


def _shard_targets(c: _Checker, deep: bool) -> list[tuple[str, object, list[int], str | None]]:
    """Return (path, array, shards to check, view or None) of aerial, label and every view's monthly cube.

    The cheap check covers the shards holding ingested patches whose marker is there (a marker-less shard is
    reported once, by the marker checks); deep decodes every written image shard, marker or not (ingest merges
    a partly covered shard into the old object when it resumes, which fails on a corrupt one). A view's shard
    without its marker is still to be written by filter: neither looks at it.
    """
    images = c.written_shards() if deep else [s for s in c.written_shards(True) if c.marker(s) is not None]
    targets = [(name, c.root[name], images, None) for name in ("aerial", "label") if name in c.root]
    vg = c.root.get(schema.VIEWS_GROUP)
    if vg is not None:
        for vname, g in sorted(vg.groups()):
            if "monthly" in g:
                prefix = f"{schema.VIEWS_GROUP}/{vname}/done"
                done = [s for s in c.written_shards(True) if c.marker(s, prefix) is not None]
                targets.append((f"{schema.VIEWS_GROUP}/{vname}/monthly", g["monthly"], done, vname))
    return targets


def _fix(c: _Checker, view: str | None, shard: int, deep: bool) -> tuple[str, tuple | None]:
    return c.ingest_fix(shard, deep) if view is None else c.view_fix(view, shard, deep)


def _check_shards_exist(c: _Checker) -> None:
    """The shard object of aerial, label and each monthly cube exists for every shard holding ingested patches.

    Answered from the store listing made once for the metadata (a local folder walk, or the object store's
    paginated list), so it costs no request per shard.
    """
    for path, arr, shards, view in _shard_targets(c, deep=False):
        if _block_rows(arr) != c.per_shard:  # a wrong layout: reported by _check_arrays
            continue
        for s in shards:
            a, b = c.shard_rows(s)
            b = min(b, arr.shape[0])
            if a >= b:
                continue
            if _shard_key(arr, s) in c.meta.keys:
                c.report.checks += 1
                continue
            c.missing.add((path, s))
            fix, action = _fix(c, view, s, deep=False)
            held = c.status[a:b] > 0
            c.check(False, f"{path}: shard {s} (rows {a}-{b}) is missing from the store; it reads as zeros for "
                    f"patches {_ids(c.patch_id[a:b][held])}; fix: {fix}", action)


def _decode_shard(arr, a: int, b: int) -> np.ndarray:
    """Decode rows ``[a, b)`` of ``arr``; return the rows that fail to decode (empty when the shard is sound)."""
    if _decodes(arr, slice(a, b)):
        return np.empty(0, np.int64)
    # basic indexing, one chunk at a time, to name the patches that are lost
    return np.asarray([r for r in range(a, b) if not _decodes(arr, r)], np.int64)


def _decodes(arr, sel) -> bool:
    """Return True when ``arr[sel]`` decodes."""
    try:
        arr[sel]
    except Exception:  # noqa: BLE001 - codec and checksum errors have no common base
        return False
    return True


def _check_deep(c: _Checker) -> None:
    """Decode every written shard of aerial, label and the views' monthly cubes; name the patches lost."""
    for path, arr, shards, view in _shard_targets(c, deep=True):
        sharded = bool(arr.shards) and arr.shards[0] == c.per_shard
        for s in shards:
            a, b = c.shard_rows(s)
            b = min(b, arr.shape[0])
            if a >= b or (path, s) in c.missing:  # a missing shard is reported once, by _check_shards_exist
                continue
            c.report.shards_decoded += 1
            held = c.status[a:b] > 0
            if sharded and _shard_key(arr, s) not in c.meta.keys:
                fix, action = _fix(c, view, s, deep=False)
                c.check(False, f"{path}: shard {s} (rows {a}-{b}) is missing from the store; it reads as zeros "
                        f"for patches {_ids(c.patch_id[a:b][held])}; fix: {fix}", action)
                continue
            failed = _decode_shard(arr, a, b)
            if not failed.size:
                c.report.checks += 1
                continue
            fix, action = _fix(c, view, s, deep=True)
            c.check(False, f"{path}: shard {s} (rows {a}-{b}) is truncated or corrupt (decode or checksum error); "
                    f"lost patches {_ids(c.patch_id[failed][c.status[failed] > 0])}; fix: {fix}", action)


def _check_leftovers(c: _Checker) -> None:
    """No side file of an interrupted write is left (``*.partial``: zarr's local store and flair_lake.chunkio
    write a file beside its place and rename it in; a killed write leaves it). Nothing reads them; they take
    room. From the same listing."""
    left = sorted(k for k in c.meta.keys if k.rsplit("/", 1)[-1].endswith(".partial"))
    c.check(not left, f"{len(left)} file(s) left by interrupted writes (e.g. {', '.join(left[:3])}); nothing reads "
            "them; fix: `flair-lake validate --repair` deletes them (while no ingest or filter runs on the lake)",
            ("leftovers", tuple(left)))


# --- repair -----------------------------------------------------------------------------------------------------
def _delete_node(store, path: str) -> None:
    """Delete a node (group or array) and everything under it."""
    from zarr.core.sync import sync
    from zarr.storage import LocalStore

    if isinstance(store, LocalStore):
        sync(store.delete(path))  # a folder: removed whole
    else:
        sync(store.delete_dir(path))


def _delete_blocks(c: _Checker, arrays, shard: int) -> list[str]:
    """Delete the objects of ``arrays`` holding rows of ``shard``; return the array names."""
    from zarr.core.sync import sync

    names = []
    for name, arr in arrays:
        for key in _block_keys(arr, shard, c.per_shard):
            if key in c.meta.keys:
                sync(c.root.store.delete(key))
        names.append(name)
    return names


def _repair(c: _Checker, storage_options: dict | None) -> None:
    """Delete the damaged shards found (data, then marker), reopen their runs and views; list the next commands.

    Order matters for an interrupted repair: the run is reopened (and the view marked incomplete) first, the
    marker deleted next, the data last, so that a lake left half-repaired is still seen, and resumed, as such.
    """
    rep, root = c.report, c.root
    from zarr.core.sync import sync

    for action in [a for a in rep.actions if a and a[0] == "leftovers"]:
        for key in action[1]:
            sync(root.store.delete(key))
        rep.repaired.append(f"deleted {len(action[1])} file(s) left by interrupted writes")
    shards = sorted({a[1] for a in rep.actions if a and a[0] == "shard"})
    view_shards = sorted({(a[1], a[2]) for a in rep.actions if a and a[0] == "view_shard"})
    if (shards or view_shards) and not c.layout_ok:
        rep.failed += 1
        rep.notes.append("shards not repaired: the lake's root attrs or per-patch arrays are not as ingest writes "
                         "them (see above); re-ingest the raw tree into a new lake")
        shards, view_shards = [], []
    runs = {}
    for s in shards:
        run = c.run_of_row(c.shard_rows(s)[0])
        runs.setdefault(run["id"], run)
    reopened = [rid for rid, run in runs.items() if run.get("status") != "running"]
    for rid in reopened:
        lk.update_run(root, rid, status="running")
    for s in shards:
        a, b = c.shard_rows(s)
        marker = lk.shard_marker(s)
        run = c.run_of_row(a)
        held = c.held(s)
        try:
            _delete_node(root.store, marker)
            # status first: no row says "ingested" once its pixels are gone; it reads 0 (empty) until re-ingested
            order = (lk.STATUS_ARRAY, *(n for n in lk.SHARD_TASK_ARRAYS if n != lk.STATUS_ARRAY))
            arrays = [(name, root[name]) for name in order]
            names = _delete_blocks(c, arrays, s)
        except Exception as exc:  # noqa: BLE001 - store errors have no common base; reported, exit 4
            rep.failed += 1
            rep.notes.append(f"could not repair shard {s}: {type(exc).__name__}: {exc}")
            continue
        state = "set back to running" if run["id"] in reopened else "still running"
        rep.repaired.append(f"repaired shard {s} (rows {a}-{b}, patches {held}): deleted its objects in "
                            f"{', '.join(names)} (its rows read status 0 until re-ingested) and its marker {marker}; "
                            f"run {run['id']} {state}")
    for name in sorted({v for v, _ in view_shards}):
        root[f"{schema.VIEWS_GROUP}/{name}"].attrs["complete"] = False
    for name, s in view_shards:
        a, b = c.shard_rows(s)
        vpath = f"{schema.VIEWS_GROUP}/{name}"
        marker = lk.shard_marker(s, f"{vpath}/done")
        try:
            _delete_node(root.store, marker)
            names = _delete_blocks(c, sorted(root[vpath].arrays()), s)
        except Exception as exc:  # noqa: BLE001
            rep.failed += 1
            rep.notes.append(f"could not repair shard {s} of view {name}: {type(exc).__name__}: {exc}")
            continue
        rep.repaired.append(f"repaired view {name} shard {s} (rows {a}-{b}, patches {c.held(s)}): deleted its "
                            f"objects in {', '.join(names)} and its marker {marker}; view marked incomplete")
    _next_commands(c, view_shards, storage_options)


def _storage_flags(storage_options: dict | None) -> str:
    """Return the ``--storage-option`` flags of a command, secrets elided."""
    secret = ("secret", "key", "token", "password")
    return "".join(f" --storage-option {shlex.quote(f'{k}={v}')}" if not any(w in k.lower() for w in secret)
                   else f" --storage-option {k}=..." for k, v in (storage_options or {}).items())


def _next_commands(c: _Checker, view_shards, storage_options: dict | None) -> None:
    """List the ingest (every run now recorded as running) and filter commands that finish the repair."""
    rep, lake = c.report, shlex.quote(c.lake)
    flags = _storage_flags(storage_options)
    raws: dict[str, str] = {}
    for r in c.root.attrs.asdict().get("runs", []):
        if r.get("command") == "ingest" and r.get("status") == "running":
            raws.setdefault(r.get("raw", "RAW"), r.get("id"))
    for raw, rid in raws.items():
        rep.next_commands.append(f"flair-lake ingest {shlex.quote(raw)} {lake}{flags}")
        if not lk.is_url(raw) and not Path(raw).exists():
            rep.notes.append(f"the raw tree {raw} recorded by run {rid} is not there; restore it first (ingest "
                             "rewrites the shards from the same files)")
    views = [v for v, _ in view_shards] + [a[1] for a in rep.actions if a and a[0] == "filter"]
    for name in dict.fromkeys(views):
        params = c.root[f"{schema.VIEWS_GROUP}/{name}"].attrs.get("params", {})
        rep.next_commands.append(f"flair-lake filter {lake} {_filter_flags(name, params)}{flags}")
    if raws and views:
        rep.notes.append("run the commands below in this order: filter reads the status rows that ingest restores")


# --- entry point ------------------------------------------------------------------------------------------------
def validate(lake: str, *, deep: bool = False, repair: bool = False,
             storage_options: dict | None = None) -> ValidationReport:
    """Check ``lake`` against the lake contract; with ``deep``, decode every image and monthly shard.

    Args:
        lake: path or object-store URL of the lake.
        deep: also decode every written shard of ``aerial``, ``label`` and the views' ``monthly`` cubes.
        repair: repair what the checks found (see the module docstring) and list the commands to run next.
        storage_options: fsspec options of an object store.

    Returns:
        The report: ``ok``, ``exit_code`` and one line per problem with its repair.

    Raises:
        LakeNotFoundError: nothing at ``lake``.
        LakeStateError: not a flair-lake, or a schema newer than this code.
    """
    report = ValidationReport(lake=lake, deep=deep, repair=repair)
    mode = "r+" if repair else "r"

    def open_root():
        try:
            return lk.open_lake(lake, mode=mode, storage_options=storage_options), None
        except CorruptMetadataError as exc:  # named below with its repair, like any unreadable zarr.json
            return None, exc
        except FlairLakeError:
            raise
        except Exception as exc:  # noqa: BLE001 - unreadable root metadata: named below, anything else re-raised
            return None, exc

    root, err = open_root()
    store = root.store if root is not None else _open_store(lake, storage_options, writable=repair)
    meta = _scan(store)
    if repair and meta.fixed:
        _strip_padding(lake, store, meta, report)
        meta = _scan(store)
        if root is None or "" in meta.fixed:
            root, err = open_root()
    if root is None and "" not in meta.bad:
        raise err
    unreadable = {p: why for p, why in meta.bad.items() if _marker_of(p) is None}
    if unreadable:
        for path, why in sorted(unreadable.items()):
            report.check(False, *_metadata_problem(lake, path, why, meta))
        report.stopped = "other checks skipped until the metadata is readable"
        return report
    c = _Checker(lake, root, report, meta)
    before = len(report.problems)
    if not _check_root(c) or not _check_arrays(c):
        return report
    c.layout_ok = len(report.problems) == before
    _check_table(c)
    _check_markers(c)
    _check_views(c)
    _check_shards_exist(c)
    _check_leftovers(c)
    if deep:
        _check_deep(c)
    if repair and report.problems:
        _repair(c, storage_options)
    return report
