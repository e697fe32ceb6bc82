"""Check a lake's metadata and per-patch table against the contract (``docs/lake-format.md``).

Schema version, root attributes, the layout of every per-patch, super-area and view array (:mod:`flair_lake.schema`,
metadata only), cross-array consistency, super-areas, shard markers and views. Each problem is one line with its fix
(:class:`Checker` builds the fixes).
"""

from __future__ import annotations

import math

import numpy as np

from flair_lake import lake as lk
from flair_lake import schema
from flair_lake.validate.report import EXAMPLE_IDS, ValidationReport, filter_command, ingest_command, patch_ids
from flair_lake.validate.scan import StoreMetadata, marker_of, node_key


class Checker:
    """Collects problems while the checks run; holds the arrays every check shares."""

    def __init__(self, lake: str, root, report: ValidationReport, meta: StoreMetadata) -> None:
        self.lake, self.root, self.report, self.meta = lake, root, report, meta
        self.attrs = root.attrs.asdict()
        self.per_shard = int(self.attrs.get("patches_per_shard", schema.PATCHES_PER_SHARD))
        self.n = lk.n_rows(root) if "patch_id" in root else 0
        self.status = root[schema.STATUS_ARRAY][:] if schema.STATUS_ARRAY in root else np.zeros(self.n, np.uint8)
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
        sel = self.status == schema.STATUS_OK if ok_only else self.status != schema.STATUS_EMPTY
        return sorted({int(r) // self.per_shard for r in np.flatnonzero(sel)})

    def held(self, shard: int) -> str:
        """Return the patch ids of a shard's written rows."""
        a, b = self.shard_rows(shard)
        return patch_ids(self.patch_id[a:b][self.status[a:b] > 0])

    def marker(self, shard: int, prefix: str = schema.DONE_GROUP) -> dict | None:
        """Return the report stored in a shard's marker (None when absent or unreadable)."""
        doc = self.meta.docs.get(lk.shard_marker(shard, prefix))
        return dict(doc.get("attributes", {})) if doc is not None and doc.get("node_type") == "group" else None

    def bad_markers(self, prefix: str) -> dict[int, str]:
        """Return shard -> why, for the unreadable markers under ``prefix``."""
        out = {}
        for path, why in self.meta.bad.items():
            m = marker_of(path)
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
        return ingest_command(self.lake, run)

    def filter_cmd(self, name: str, overwrite: bool = False) -> str:
        """Return the filter command that rebuilds (resumes, extends) the view group ``name``: a generation that an
        interrupted ``--overwrite`` was building is resumed by that command, with ``--overwrite``."""
        views = self.root[schema.VIEWS_GROUP]
        view, k = schema.view_name_of(name)
        current = lk.current_views(views).get(view, view)
        building = k > schema.view_name_of(current)[1]
        return filter_command(self.lake, name, views[name].attrs.get("params", {}), overwrite=overwrite or building)

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
                f"{', '.join(schema.SHARD_TASK_ARRAYS)} and its marker {self.lake}/{lk.shard_marker(shard)}{reopen}), "
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


def expected_arrays(p: int, s: int) -> dict[str, schema.ArrayLayout]:
    """Return the layout of every per-patch array (:func:`schema.lake_arrays`), in the order the checks report
    them: the images and the status first."""
    layouts = schema.lake_arrays(p, s)
    first = ("aerial", "label", schema.STATUS_ARRAY)
    return {**{k: layouts[k] for k in first}, **{k: v for k, v in layouts.items() if k not in first}}


def check_root(c: Checker) -> bool:
    """Schema version and the root attributes readers rely on. Return False when nothing else can be checked."""
    version = lk.schema_version(c.attrs, c.lake)
    c.check(version in schema.READABLE_SCHEMAS,
            f"schema version {version} (this flair-lake writes {schema.SCHEMA_VERSION}); fix: re-ingest the raw "
            f"tree into a new lake with `flair-lake ingest RAW NEWLAKE`")
    missing = [k for k in ("patch_size", "patches_per_shard", "domains", "areas", "cameras", "split_names", "runs")
               if k not in c.attrs]
    return c.check(not missing, f"root attrs lack {', '.join(missing)}; fix: the lake was not written by "
                   f"`flair-lake ingest`: re-ingest the raw tree into a new lake")


def check_storage(c: Checker, arr, layout: schema.ArrayLayout, where: str, fix: str) -> bool:
    """Check an array's dtype, chunks and shards against its layout (metadata only); each mismatch is one problem
    ``{where} has ..., expected ...; {fix}``. Return True when all three match."""
    got_shards = tuple(arr.shards) if arr.shards else None
    return all([
        c.check(str(arr.dtype) == layout.dtype, f"{where} has dtype {arr.dtype}, expected {layout.dtype}; {fix}"),
        c.check(tuple(arr.chunks) == layout.chunks,
                f"{where} has chunks {tuple(arr.chunks)}, expected {layout.chunks}; {fix}"),
        c.check(got_shards == layout.shards, f"{where} has shards {got_shards}, expected {layout.shards}; {fix}"),
    ])


def check_trailing(c: Checker, arr, layout: schema.ArrayLayout, where: str, fix: str) -> bool:
    """Check the shape of an array after its row axis (``layout.trailing``); a mismatch is one problem."""
    return c.check(tuple(arr.shape[1:]) == layout.trailing,
                   f"{where} has shape {tuple(arr.shape)}, expected {layout.trailing} after its {layout.dims[0]} "
                   f"axis; {fix}")


def check_arrays(c: Checker) -> bool:
    """Shape, dtype and chunking of every per-patch array. Return False when an array is absent."""
    p = int(c.attrs["patch_size"])
    fix = "fix: re-ingest the raw tree into a new lake (`flair-lake ingest RAW NEWLAKE`)"
    complete = True
    for name, layout in expected_arrays(p, c.per_shard).items():
        if not c.check(name in c.root, f"array {name} is missing; {fix}"):
            complete = False
            continue
        arr = c.root[name]
        c.check(tuple(arr.shape) == layout.shape(c.n),
                f"array {name} has shape {tuple(arr.shape)}, expected {layout.shape(c.n)} (rows of patch_id); {fix}")
        check_storage(c, arr, layout, f"array {name}", fix)
    return complete


def check_table(c: Checker) -> None:
    """Cross-array consistency of the per-patch table, the run records and the Sentinel super-areas."""
    root, ok = c.root, c.status == schema.STATUS_OK
    bad_status = np.flatnonzero(c.status > schema.STATUS_QUARANTINED)
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
    c.check(dup.size == 0, f"patch ids present in several status-1 rows: {patch_ids(dup)}; fix: re-ingest the raw "
            "tree into a new lake")
    split = root["split"][:][ok]
    valid_split = np.isin(split, [*schema.SPLIT_CODES.values(), schema.UNKNOWN_SPLIT])
    c.check(bool(valid_split.all()), f"invalid split codes {np.unique(split[~valid_split]).tolist()} for patches "
            f"{patch_ids(c.patch_id[ok][~valid_split])}; expected 0, 1, 2 or {schema.UNKNOWN_SPLIT}; fix: re-ingest")
    for col, table in (("domain", "domains"), ("zone", "areas"), ("camera", "cameras")):
        codes = root[col][:][ok]
        bad = (codes < 0) | (codes >= len(c.attrs[table]))
        if col == "camera":
            bad &= codes != -1
        c.check(not bad.any(), f"{col} codes outside attrs['{table}'] (size {len(c.attrs[table])}) for patches "
                f"{patch_ids(c.patch_id[ok][bad])}; fix: re-ingest the raw tree into a new lake")
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


def _check_areas(c: Checker, ok: np.ndarray) -> None:
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
        arrays = dict(g.arrays()) if g is not None else {}  # each zarr.json read once
        run = c.run_of_row(int(np.flatnonzero(members)[0])) or {}
        fix = (f"re-run `flair-lake ingest {run.get('raw', 'RAW')} {c.lake}`" if run.get("status") == "running" else
               f"delete {c.lake}/{schema.SENTINEL_GROUP}/{name} and re-ingest (ingest rewrites areas without "
               "'complete' only while their run is recorded as running); or re-ingest into a new lake")
        expected = tuple(schema.sentinel_arrays(0, 0, 0))
        if not c.check(g is not None and all(k in arrays for k in expected),
                       f"super-area {name} referenced by patches {patch_ids(c.patch_id[members])} is missing or lacks "
                       f"{'/'.join(expected)}; fix: {fix}"):
            continue
        c.check(bool(g.attrs.get("complete")), f"super-area {name} is not marked complete; fix: {fix}")
        if not _check_area_layout(c, arrays, name, f"fix: {fix}"):
            continue
        t, _, h, w = arrays["data"].shape
        c.areas_t[int(code)] = t
        c.check(arrays["masks"].shape[0] == t and arrays["dates"].shape[0] == t,
                f"super-area {name}: data, masks and dates disagree on the number of dates; fix: {fix}")
        out = members & ((rows - half < 0) | (rows + half > h) | (cols - half < 0) | (cols + half > w))
        c.check(not out.any(), f"the {schema.S2_WINDOW}x{schema.S2_WINDOW} window of patches "
                f"{patch_ids(c.patch_id[out])} leaves super-area {name} ({h}x{w}); fix: re-ingest the raw tree into "
                "a new lake")


def _check_area_layout(c: Checker, arrays: dict, name: str, fix: str) -> bool:
    """Check the ``arrays`` of super-area ``name`` against :func:`schema.sentinel_arrays` of its ``data``'s dates
    and grid (metadata only). Return False when ``data`` has not the four dims the other checks unpack."""
    shape = tuple(arrays["data"].shape)
    ndim = len(schema.sentinel_arrays(0, 0, 0)["data"].dims)
    if not c.check(len(shape) == ndim, f"super-area {name}: array data has shape {shape}, expected {ndim} dims; "
                   f"{fix}"):
        return False
    for arr_name, layout in schema.sentinel_arrays(shape[0], shape[2], shape[3]).items():
        where = f"super-area {name}: array {arr_name}"
        check_trailing(c, arrays[arr_name], layout, where, fix)
        check_storage(c, arrays[arr_name], layout, where, fix)
    return True


def view_layouts(c: Checker, g, arrays: dict) -> dict[str, schema.ArrayLayout]:
    """Return the layout of every array the view ``g`` (its ``arrays`` opened) should hold
    (:func:`schema.view_arrays` of its parameters and window), its date axis as long as the longest of its arrays
    that has one."""
    params = g.attrs.get("params", {})
    window = int(g.attrs.get("window", schema.S2_WINDOW))
    monthly = bool(params.get("monthly"))
    axes = schema.date_axes(schema.view_arrays(c.per_shard, 0, window, monthly))
    t = max((arrays[k].shape[axis] for k, axis in axes.items() if k in arrays and arrays[k].ndim > axis), default=0)
    return schema.view_arrays(c.per_shard, t, window, monthly, reducer=params.get("reducer"))


def check_markers(c: Checker) -> None:
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
            c.check(False, f"{where}: its marker {c.lake}/{node_key(path)} is corrupt ({corrupt[s]}); fix: {fix}",
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


def check_views(c: Checker) -> None:
    """Each view: row counts, completeness, n_dates against its areas, keep beyond n_dates, shard markers."""
    vg = c.root.get(schema.VIEWS_GROUP)
    if vg is None:
        return
    ok = c.status == schema.STATUS_OK
    zone = c.root["zone"][:]
    replaced = lk.replaced_generations(vg)  # read-only until collected: their readers hold them as they are
    for name, g in sorted(vg.groups()):
        if name in replaced:
            continue
        fix, action = c.view_fix(name)
        overwrite = f"re-run `{c.filter_cmd(name, overwrite=True)}`"
        arrays = dict(g.arrays())  # each zarr.json read once
        for arr_name, arr in arrays.items():
            c.check(arr.shape[0] == c.n, f"view {name}: {arr_name} has {arr.shape[0]} rows, the lake {c.n}; "
                    f"fix: {fix} (it grows the view)", action)
        layouts = view_layouts(c, g, arrays)
        missing = [k for k in layouts if k not in arrays]
        c.check(not missing, f"view {name} lacks {', '.join(missing)}; fix: {overwrite}")
        for arr_name, layout in layouts.items():
            if arr_name in arrays:
                check_trailing(c, arrays[arr_name], layout, f"view {name}: array {arr_name}", f"fix: {overwrite}")
                check_storage(c, arrays[arr_name], layout, f"view {name}: array {arr_name}", f"fix: {overwrite}")
        if set(missing) & set(schema.view_arrays(c.per_shard, 0, 0, monthly=False)):  # read below
            continue
        c.check(bool(g.attrs.get("complete")), f"view {name} is not complete; fix: {fix}", action)
        n_dates = arrays["n_dates"][:].astype(np.int64)
        keep = arrays["keep"][:]
        rows = min(keep.shape[0], c.n)
        prefix = f"{schema.VIEWS_GROUP}/{name}/done"
        done = np.zeros(rows, bool)  # rows of the shards filter finished; the others are still to be written
        for s in range(math.ceil(rows / c.per_shard)):
            done[s * c.per_shard:(s + 1) * c.per_shard] = c.marker(s, prefix) is not None
        beyond = np.arange(keep.shape[1])[None, :] >= n_dates[:rows, None]
        bad = (keep[:rows] & beyond).any(1) & done
        c.check(not bad.any(), f"view {name}: keep is True beyond n_dates for patches "
                f"{patch_ids(c.patch_id[:rows][bad])}; fix: {overwrite}")
        expect = np.array([c.areas_t.get(int(z), -1) for z in zone[:rows]])
        wrong = ok[:rows] & done & (expect >= 0) & (n_dates[:rows] != expect)
        c.check(not wrong.any(), f"view {name}: n_dates differs from the super-area's dates for patches "
                f"{patch_ids(c.patch_id[:rows][wrong])}; fix: {overwrite}")
        corrupt = c.bad_markers(prefix)
        for s in sorted(set(c.written_shards(ok_only=True)) | set(corrupt)):
            a, b = c.shard_rows(s)
            path = lk.shard_marker(s, prefix)
            if s in corrupt:
                sfix, saction = ((f"`flair-lake validate {c.lake} --repair` strips the padding", ("meta", path))
                                 if path in c.meta.fixed else c.view_fix(name, s))
                c.check(False, f"view {name}: shard {s} (rows {a}-{b}): its marker {c.lake}/{node_key(path)} is "
                        f"corrupt ({corrupt[s]}); fix: {sfix}", saction)
                continue
            c.check(c.marker(s, prefix) is not None,
                    f"view {name}: shard {s} (rows {a}-{b}) has no marker {path}; fix: {fix}", action)
