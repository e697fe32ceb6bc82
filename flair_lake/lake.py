"""Open, create and grow a lake; its run records, completion markers and views.

Every read and write of the store goes through zarr's API (no filesystem calls), so a path and an object-store
URL behave the same; the one exception, local lakes only, is the heavy transfers of ingest and filter (image
and cube shards, Sentinel-2 chunks), in zarr's own layout (:mod:`flair_lake.chunkio`). The layout of every array
(names, dims, dtypes, chunks, shards, codec roles) comes from :mod:`flair_lake.schema`; how arrays are encoded,
batched and written (codecs, one event-loop round for many arrays, the zarrs and O_DIRECT write paths, cached
opens) from :mod:`flair_lake.storage`; what this module needs of zarr beyond its public API from
:mod:`flair_lake.zarr_compat`.

Crash safety: rows are appended in whole shards (a run starts at a shard boundary); each Dask task writes whole
shards and then its own marker group ``done/s<shard>`` (whose attrs carry the task's report); the run record in
the root attrs says which rows a run owns. A run killed at any moment is resumed by writing the shards that have
no marker.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from flair_lake import schema, storage
from flair_lake import zarr_compat as zc
from flair_lake.config import IngestConfig
from flair_lake.errors import (
    CorruptMetadataError,
    FlairLakeError,
    LakeNotFoundError,
    LakeStateError,
    TargetNotWritableError,
    UnreachableError,
)
from flair_lake.locations import unwritable

log = logging.getLogger(__name__)

FORMAT_NAME = "flair-lake"
CREATING = "creating"  # root attribute of a lake whose arrays are not all created yet (create_lake)


class StoreUnreachableError(UnreachableError):
    """The object store of a lake URL cannot be used (endpoint, credentials, bucket)."""


def explain_store_error(lake: str, exc: BaseException) -> FlairLakeError | None:
    """Return a one-line error for an object-store failure of ``lake`` (None when it is not one)."""
    name = type(exc).__name__
    bucket = lake.split("://", 1)[1].split("/", 1)[0] if storage.is_url(lake) else ""
    text = str(exc)
    if "NoCredentials" in name or "credentials" in text.lower() and "not" in text.lower():
        return StoreUnreachableError(f"no credentials for {lake}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                                     "(or --storage-option key=... secret=...)")
    if "bucket does not exist" in text or "NoSuchBucket" in name:
        return StoreUnreachableError(f"bucket {bucket!r} of {lake} does not exist; create it first "
                                     f"(e.g. `aws s3 mb s3://{bucket}`)")
    if "EndpointConnection" in name or "ClientConnector" in name or isinstance(exc, (ConnectionError, TimeoutError)):
        return StoreUnreachableError(f"cannot reach the object store of {lake} ({text.splitlines()[0][:160]}); "
                                     "check AWS_ENDPOINT_URL or --storage-option endpoint_url=...")
    if storage.is_url(lake) and ("Forbidden" in text or "AccessDenied" in text or "InvalidAccessKeyId" in text):
        return StoreUnreachableError(f"access to {lake} was refused ({text.splitlines()[0][:160]}); check the "
                                     "credentials")
    return None


def _bucket_missing(lake: str, storage_options: dict | None) -> bool:
    """Return True when the bucket of an object-store URL does not exist."""
    import fsspec

    protocol, rest = lake.split("://", 1)
    try:
        return not fsspec.filesystem(protocol, **(storage_options or {})).exists(rest.split("/", 1)[0])
    except Exception:  # noqa: BLE001 - unreachable store: reported by the caller's own error
        return False


def _open_group(lake: str, **kw) -> zarr.Group:
    """``zarr.open_group`` with object-store failures turned into one-line errors."""
    try:
        return zarr.open_group(store=lake, **kw)
    except (zarr.errors.GroupNotFoundError, zarr.errors.ContainsGroupError):
        if storage.is_url(lake) and _bucket_missing(lake, kw.get("storage_options")):
            raise StoreUnreachableError(f"bucket of {lake} does not exist; create it first") from None
        raise
    except Exception as exc:  # noqa: BLE001 - botocore/aiohttp errors have no common base
        err = explain_store_error(lake, exc) if storage.is_url(lake) else None
        if err is None:
            raise
        raise err from None


def open_lake(lake: str, *, mode: str = "r", storage_options: dict | None = None) -> zarr.Group:
    """Open an existing lake's root group, checking it is a flair-lake of a schema this code reads.

    Raises:
        LakeNotFoundError: nothing at ``lake``.
        LakeStateError: something is there but it is not a flair-lake, or its schema is newer.
    """
    if not storage.is_url(lake) and not Path(lake).exists():
        raise LakeNotFoundError(f"no lake at {lake}; create one with `flair-lake ingest RAW {lake}`")
    if not storage.is_url(lake) and not Path(lake).is_dir():
        raise LakeStateError(f"{lake} is a file, not a lake (a lake is a folder holding zarr.json); give the lake's "
                             "folder, e.g. lake.zarr")
    try:
        group = _open_group(lake, mode=mode, storage_options=storage_options)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        err = explain_store_error(lake, exc) if storage.is_url(lake) else None
        raise err or LakeNotFoundError(f"no lake at {lake}; create one with `flair-lake ingest RAW {lake}`") \
            from None
    except ValueError as exc:  # JSONDecodeError and zarr's metadata errors: the root zarr.json is damaged
        first = str(exc).splitlines()[0][:120]
        raise CorruptMetadataError(f"{lake}/zarr.json is not valid Zarr metadata ({first}); `flair-lake validate "
                                   f"{lake} --repair` fixes padding, otherwise restore the file from a backup"
                                   ) from None
    attrs = group.attrs.asdict()
    if attrs.get("format") != FORMAT_NAME:
        raise LakeStateError(f"{lake} is a Zarr group but not a flair-lake (no format attribute); "
                             "give the path of a lake written by `flair-lake ingest`")
    if CREATING in attrs and mode == "r":
        raise LakeStateError(f"{lake} is being created (or its creation was interrupted); wait for the ingest that "
                             f"creates it, or run that ingest again")
    if schema_version(attrs, lake) > schema.SCHEMA_VERSION:
        raise LakeStateError(f"{lake} has schema {attrs['schema_version']}, newer than this flair-lake "
                             f"({schema.SCHEMA_VERSION}); upgrade flair-lake")
    return group


def schema_version(attrs: dict, lake: str) -> int:
    """Return the schema version the root attrs ``attrs`` of ``lake`` record.

    Raises:
        CorruptMetadataError: it is missing or not a whole number (the root zarr.json was edited or damaged).
    """
    value = attrs.get("schema_version")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise CorruptMetadataError(f"{lake}/zarr.json records schema_version {value!r}, not a version number; the file "
                               f"was edited or damaged: restore it from a backup, or set attributes.schema_version "
                               f"back to {schema.SCHEMA_VERSION} if the lake was written by this flair-lake")


def lake_exists(lake: str, *, storage_options: dict | None = None) -> bool:
    """Return True when a Zarr group (a lake or not) is at ``lake``, local path or object-store URL."""
    if not storage.is_url(lake):
        return (Path(lake) / "zarr.json").exists()
    try:
        _open_group(lake, mode="r", storage_options=storage_options)
        return True
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        err = explain_store_error(lake, exc)
        if err is not None:
            raise err from None
        return False


def sweep_leftovers(lake: str) -> int:
    """Delete the side files of writes killed before their rename (``*.partial``, from zarr's local store and the
    direct shard writer) in a local lake; return how many. Only a holder of the writer lock calls it: no write
    of another flair-lake writer can be in flight then. Object stores write whole objects and leave none."""
    if storage.is_url(lake) or not Path(lake).is_dir():
        return 0
    gone = 0
    for folder, _dirs, files in os.walk(lake):
        for name in files:
            if name.endswith(".partial"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))
                    gone += 1
    return gone


def check_writable(lake: str) -> None:
    """Raise :class:`TargetNotWritableError` when a local lake path cannot be created or written."""
    if storage.is_url(lake):
        return
    p = Path(lake)
    if p.exists() and not p.is_dir():
        raise TargetNotWritableError(f"{lake} exists and is not a folder; give a new path such as lake.zarr")
    why = unwritable(p)
    if why:
        raise TargetNotWritableError(f"cannot write {lake}: {why}; choose a writable folder")
    if p.exists() and any(p.iterdir()) and not (p / "zarr.json").exists():
        raise TargetNotWritableError(f"{lake} is a non-empty folder that is not a lake; give a new path")


@dataclass(frozen=True)
class Layout:
    """Chunking and codec choices fixed when a lake is created."""

    patch_size: int
    patches_per_shard: int = schema.PATCHES_PER_SHARD
    codec: str = IngestConfig.codec
    level: int = IngestConfig.zstd_level


def create_lake(lake: str, layout: Layout, *, storage_options: dict | None = None) -> zarr.Group:
    """Create an empty lake (zero patches) with every per-patch array and the root attrs, all or nothing.

    The root metadata, attributes included, is written first in one write, marked ``creating``; then the arrays
    and groups; then the mark is removed (one write). A creation killed in between is finished by the next
    writer (:func:`finish_creation`); readers are told the lake is being created.
    """
    p, s = layout.patch_size, layout.patches_per_shard
    attrs = {
        "format": FORMAT_NAME, "schema_version": schema.SCHEMA_VERSION, "patch_size": p,
        "patches_per_shard": s, "codec": layout.codec, "crs": f"EPSG:{schema.CRS_EPSG}",
        "footprint_m": schema.PATCH_FOOTPRINT_M, "domains": [], "areas": [], "cameras": [],
        "split_names": list(schema.SPLIT_NAMES), "classes": {str(k): v[0] for k, v in schema.RAW_CLASSES.items()},
        "class_colors": {str(k): v[1] for k, v in schema.RAW_CLASSES.items()}, "runs": [],
        "band_stats": {}, "quarantine": {}, "lake_id": uuid.uuid4().hex, CREATING: {"level": layout.level},
    }
    root = _open_group(lake, mode="w-", storage_options=storage_options, zarr_format=3, attributes=attrs)
    return finish_creation(root)


def finish_creation(root: zarr.Group) -> zarr.Group:
    """Create what a lake marked ``creating`` lacks (its arrays and groups, from its root attrs), then unmark it.

    Idempotent: a creation killed at any point is finished by calling this again.
    """
    attrs = root.attrs.asdict()
    if CREATING not in attrs:
        return root
    p, s, codec = int(attrs["patch_size"]), int(attrs["patches_per_shard"]), attrs["codec"]
    level = int(attrs[CREATING].get("level", IngestConfig.zstd_level))
    present = {name for name, _ in root.arrays()}
    specs = {name: storage.create_kwargs(a, 0, storage.role_compressors(a, codec, level))
             for name, a in schema.lake_arrays(p, s).items() if name not in present}
    zc.create_arrays(root, specs)  # in one event-loop round
    for group in (schema.DONE_GROUP, schema.SENTINEL_GROUP, schema.VIEWS_GROUP):
        root.require_group(group)
    del root.attrs[CREATING]
    return root


def n_rows(root: zarr.Group) -> int:
    """Return the number of patch rows (including empty padding rows before shard-aligned appends)."""
    return int(root["patch_id"].shape[0])


def next_run_start(root: zarr.Group) -> int:
    """Return the first row a new run may use: the shard boundary after every recorded run."""
    s = int(root.attrs["patches_per_shard"])
    stop = max((int(r["rows"][1]) for r in root.attrs.get("runs", []) if "rows" in r), default=0)
    return math.ceil(stop / s) * s


def grow(root: zarr.Group, total_rows: int) -> None:
    """Resize every per-patch array to ``total_rows`` rows (in one event-loop round)."""
    names = schema.lake_arrays(int(root.attrs["patch_size"]), int(root.attrs["patches_per_shard"]))
    zc.grow_arrays(root, tuple(names), total_rows)


def intern(root: zarr.Group, key: str, values: list[str]) -> dict[str, int]:
    """Add new strings to the attrs table ``key`` (domains, areas, cameras) and return value -> code."""
    table = list(root.attrs.get(key, []))
    known = set(table)
    table.extend(v for v in dict.fromkeys(values) if v not in known)
    root.attrs[key] = table
    return {v: i for i, v in enumerate(table)}


def now_iso() -> str:
    """Return the current UTC time as ISO 8601 (seconds)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def update_run(root: zarr.Group, run_id: str, **fields: Any) -> None:
    """Update (or append) the run record ``run_id`` in the root attrs."""
    runs = list(root.attrs.get("runs", []))
    for r in runs:
        if r["id"] == run_id:
            r.update(fields)
            break
    else:
        runs.append({"id": run_id, **fields})
    root.attrs["runs"] = runs


def valid_rows(root: zarr.Group) -> np.ndarray:
    """Return the indices of ingested (status 1) rows."""
    return np.flatnonzero(root[schema.STATUS_ARRAY][:] == schema.STATUS_OK)


def marker_name(shard: int) -> str:
    """Return the name of shard ``shard``'s completion marker inside its ``done`` group."""
    return f"s{shard:07d}"


def shard_marker(shard: int, prefix: str = schema.DONE_GROUP) -> str:
    """Return the path of the completion marker of shard ``shard`` (patch arrays, or a view's ``prefix``)."""
    return f"{prefix}/{marker_name(shard)}"


def read_markers(root: zarr.Group, prefix: str = schema.DONE_GROUP) -> dict[int, dict]:
    """Return ``{shard: report}`` of every complete shard, from one listing of the markers (a look-up per shard
    is ~1,200 store reads at full FLAIR scale, and as many requests on an object store)."""
    done = root.get(prefix)
    if done is None:
        return {}
    return {int(name[1:]): marker.attrs.asdict() for name, marker in done.groups()
            if name.startswith("s") and name[1:].isdigit()}


def current_views(vg: zarr.Group | None) -> dict[str, str]:
    """Return view name -> group of its current generation, for every view of the views group ``vg``."""
    if vg is None:
        return {}
    mapping = dict(vg.attrs.get("current", {}))
    out: dict[str, str] = {}
    for group, _ in vg.groups():
        name, _k = schema.view_name_of(group)
        out.setdefault(name, mapping.get(name, name))
    return {name: group for name, group in out.items() if group in vg}


def provenance(root: zarr.Group, view: str | None) -> dict:
    """Return what a training run read: the lake's id, its ingest runs and the view generation (group)."""
    runs = [r["id"] for r in root.attrs.get("runs", []) if r.get("command") == "ingest"]
    return {"lake_id": root.attrs.get("lake_id"), "ingest_runs": runs,
            "view": schema.view_generation_id(view) if view else None}


def provenance_changes(trained: dict | None, now: dict) -> list[str]:
    """Return how the lake and view ``now`` differ from those a run was ``trained`` on, one phrase each."""
    if not trained:
        return []
    out = []
    if trained.get("lake_id") != now.get("lake_id"):
        out.append(f"another lake (id {now.get('lake_id')}, trained on {trained.get('lake_id')})")
    else:
        added = [r for r in now.get("ingest_runs", []) if r not in trained.get("ingest_runs", [])]
        if added:
            out.append(f"{len(added)} ingest run(s) added since training ({', '.join(added)})")
    if trained.get("view") != now.get("view"):
        out.append(f"view {now.get('view')} (trained on {trained.get('view')})")
    return out


def replaced_generations(vg: zarr.Group | None) -> set[str]:
    """Return the view groups an ``--overwrite`` replaced (kept for their readers until collected)."""
    current = current_views(vg)
    out = set()
    for group, _ in (vg.groups() if vg is not None else ()):
        name, k = schema.view_name_of(group)
        if name in current and k < schema.view_name_of(current[name])[1]:
            out.add(group)
    return out


def resolve_view(root: zarr.Group, lake: str, view: str | None, *, complete: bool = False,
                 monthly: bool = False) -> str | None:
    """Return the group of the view to read: the current generation of ``view`` when given (checked), else of the
    latest view (None when there is none). A generation's own group name (``clear~2``, as a checkpoint records
    it) is taken as it is, while it exists.

    With ``monthly``, the default is the latest view that has a monthly cube (the most recently updated one
    when the latest view has none).

    Raises:
        LakeStateError: ``view`` does not exist (the message lists the views), or ``complete`` is asked and the
            view was left unfinished, or the view was built before patches were appended.
    """
    vg = root.get(schema.VIEWS_GROUP)
    current = current_views(vg)
    groups = {n for n, _ in vg.groups()} if vg is not None else set()

    def updated(group: str) -> str:
        return vg[group].attrs.get("updated") or vg[group].attrs.get("created") or ""

    if view is None:
        latest = vg.attrs.get("latest") if vg is not None else None
        view = current.get(latest)
        if view is None:  # none yet, or its latest view was removed: the most recently completed one
            view = max((g for g in current.values() if vg[g].attrs.get("complete")), key=updated, default=None)
        if monthly and view is not None and not vg[view].attrs.get("params", {}).get("monthly"):
            cubes = [g for g in current.values() if vg[g].attrs.get("params", {}).get("monthly")]
            view = max(cubes, key=updated, default=view)
    elif schema.GENERATION_SEP in view and schema.view_generation(*schema.view_name_of(view)) in groups:
        view = schema.view_generation(*schema.view_name_of(view))  # an exact generation, as checkpoints record it
    elif view in current:
        view = current[view]
    elif view not in groups:
        raise LakeStateError(f"view {view!r} is not in {lake}; views: {', '.join(sorted(current)) or 'none'} "
                             "(build one with `flair-lake filter --monthly`)")
    if view is not None and complete and not vg[view].attrs.get("complete"):
        raise LakeStateError(f"view {view!r} of {lake} is incomplete; run `flair-lake filter` again to finish it")
    if view is not None and complete:
        _check_covers(root, lake, view, vg[view])
    return view


def _check_covers(root: zarr.Group, lake: str, view: str, group: zarr.Group) -> None:
    """Raise when the view was built before patches were appended to the lake (its rows end before the lake's).

    Raises:
        LakeStateError: the view is stale, with the filter command that extends it.
    """
    # the rows its last complete run covered (an extension resizes the arrays first, fills them, then records it)
    covered, rows = int(group.attrs.get("rows", group["keep"].shape[0])), n_rows(root)
    if covered >= rows:
        return
    from flair_lake.validate.report import filter_command

    raise LakeStateError(f"view {view!r} covers the first {covered} of the {rows} patch rows of {lake} (patches "
                         f"were ingested after it was built); extend it with "
                         f"`{filter_command(lake, view, group.attrs.get('params', {}))}`")
