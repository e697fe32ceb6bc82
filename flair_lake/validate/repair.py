"""Repair what ``flair-lake validate`` found, without touching anything healthy, and list the commands to run.

The commands finish the repair: ingest first, then filter (which reads the status rows ingest restores).
"""

from __future__ import annotations

from pathlib import Path

from flair_lake import lake as lk
from flair_lake import schema, storage
from flair_lake import zarr_compat as zc
from flair_lake.validate.checks import Checker
from flair_lake.validate.report import ValidationReport, filter_command, ingest_command
from flair_lake.validate.scan import StoreMetadata, metadata_problem, node_key
from flair_lake.validate.shards import block_keys


def strip_padding(lake: str, store, meta: StoreMetadata, report: ValidationReport) -> None:
    """Rewrite the metadata documents that parse once their NUL/blank padding is removed (repair)."""
    for path, data in sorted(meta.fixed.items()):
        key = node_key(path)
        report.check(False, metadata_problem(lake, path, meta.bad[path], meta)[0], ("meta", path))
        zc.sync(store.set(key, zc.buffer_from_bytes(data)))
        report.repaired.append(f"repaired {lake}/{key}: removed its padding (NUL or blank bytes); it parses again")


def _delete_node(store, path: str) -> None:
    """Delete a node (group or array) and everything under it."""
    from zarr.storage import LocalStore

    if isinstance(store, LocalStore):
        zc.sync(store.delete(path))  # a folder: removed whole
    else:
        zc.sync(store.delete_dir(path))


def _delete_blocks(c: Checker, arrays, shard: int) -> list[str]:
    """Delete the objects of ``arrays`` holding rows of ``shard``; return the array names."""
    names = []
    for name, arr in arrays:
        for key in block_keys(arr, shard, c.per_shard):
            if key in c.meta.keys:
                zc.sync(c.root.store.delete(key))
        names.append(name)
    return names


def repair_lake(c: Checker, storage_options: dict | None) -> None:
    """Delete the damaged shards found (data, then marker), reopen their runs and views; list the next commands.

    Order matters for an interrupted repair: the run is reopened (and the view marked incomplete) first, the
    marker deleted next, the data last, so that a lake left half-repaired is still seen, and resumed, as such.
    """
    rep, root = c.report, c.root
    for action in [a for a in rep.actions if a and a[0] == "leftovers"]:
        for key in action[1]:
            zc.sync(root.store.delete(key))
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
            order = (schema.STATUS_ARRAY, *(n for n in schema.SHARD_TASK_ARRAYS if n != schema.STATUS_ARRAY))
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


def _next_commands(c: Checker, view_shards, storage_options: dict | None) -> None:
    """List the ingest (every run now recorded as running) and filter commands that finish the repair."""
    rep = c.report
    raws: dict[str, dict] = {}
    for r in c.root.attrs.asdict().get("runs", []):
        if r.get("command") == "ingest" and r.get("status") == "running":
            raws.setdefault(r.get("raw", "RAW"), r)
    for raw, run in raws.items():
        rep.next_commands.append(ingest_command(c.lake, run, storage_options))
        if not storage.is_url(raw) and not Path(raw).exists():
            rep.notes.append(f"the raw tree {raw} recorded by run {run.get('id')} is not there; restore it first "
                             "(ingest rewrites the shards from the same files)")
    views = [v for v, _ in view_shards] + [a[1] for a in rep.actions if a and a[0] == "filter"]
    for name in dict.fromkeys(views):
        params = c.root[f"{schema.VIEWS_GROUP}/{name}"].attrs.get("params", {})
        rep.next_commands.append(filter_command(c.lake, name, params, storage_options=storage_options))
    if raws and views:
        rep.notes.append("run the commands below in this order: filter reads the status rows that ingest restores")
