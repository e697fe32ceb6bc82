"""Read every metadata document (``zarr.json``) of a lake once, from one listing of its store.

A document that does not parse is recorded with why, in a few words; one that parses once its NUL or blank
padding is stripped (a write cut short by a crash) is kept stripped for ``--repair``. The listing also answers
which shard objects exist, so the checks make no request per shard.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

from flair_lake import schema, storage
from flair_lake import zarr_compat as zc
from flair_lake.validate.report import filter_command

METADATA = "zarr.json"
_PADDING = b"\0 \t\r\n"
_MARKER = re.compile(rf"^({schema.DONE_GROUP}|{schema.VIEWS_GROUP}/[^/]+/done)/s(\d{{7}})$")
_FETCH_CONCURRENCY = 64  # metadata documents read at once (object stores)


@dataclass
class StoreMetadata:
    """Every key of the store, and its metadata documents parsed (or why they cannot be)."""

    keys: set[str]
    docs: dict[str, dict]  # node path ("" for the root) -> parsed zarr.json
    bad: dict[str, str]  # node path -> why its zarr.json cannot be read
    fixed: dict[str, bytes]  # node path -> its zarr.json without the NUL/blank padding, when that parses


def node_key(path: str) -> str:
    """Return the key of a node's metadata document."""
    return f"{path}/{METADATA}" if path else METADATA


def _parse(raw: bytes) -> dict:
    """Return a parsed zarr v3 metadata document; raise when zarr could not open the node."""
    text = raw.decode("utf-8")
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise TypeError("not a JSON object")
    if doc.get("zarr_format") != 3:
        raise ValueError(f"zarr_format is {doc.get('zarr_format')!r}, expected 3")
    zc.check_metadata(text)  # the parse zarr does when it opens the node
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
    proto, gate = zc.buffer_prototype(), asyncio.Semaphore(_FETCH_CONCURRENCY)

    async def one(key: str) -> tuple[str, bytes | None]:
        async with gate:
            buf = await store.get(key, prototype=proto)
        return key, None if buf is None else buf.to_bytes()

    return list(await asyncio.gather(*(one(k) for k in keys)))


def scan_store(store) -> StoreMetadata:
    """List the store once and parse every metadata document (concurrently: one GET each on object stores)."""
    keys = set(zc.sync(_list_keys(store)))
    meta = StoreMetadata(keys, {}, {}, {})
    wanted = sorted(k for k in keys if k == METADATA or k.endswith("/" + METADATA))
    for key, raw in zc.sync(_fetch(store, wanted)):
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
    except Exception:  # noqa: BLE001 - see scan_store
        return False
    return True


def open_store(lake: str, storage_options: dict | None, writable: bool):
    """Return the zarr store of ``lake`` without opening its root group (whose metadata may be unreadable)."""
    import zarr

    if storage.is_url(lake):
        return zarr.storage.FsspecStore.from_url(lake, storage_options=storage_options, read_only=not writable)
    return zarr.storage.LocalStore(lake, read_only=not writable)


def marker_of(path: str) -> tuple[str, int] | None:
    """Return (marker prefix, shard) when ``path`` is a shard completion marker, else None."""
    m = _MARKER.match(path)
    return (m.group(1), int(m.group(2))) if m else None


def _runs_raw(docs: dict) -> str:
    """Return the raw trees recorded by the ingest runs of the root document (for messages)."""
    runs = docs.get("", {}).get("attributes", {}).get("runs", [])
    raws = list(dict.fromkeys(r.get("raw") for r in runs if r.get("command") == "ingest" and r.get("raw")))
    return " and ".join(raws) or "the raw tree"


def metadata_problem(lake: str, path: str, why: str, meta: StoreMetadata) -> tuple[str, tuple | None]:
    """Return the problem line of an unreadable metadata document that is not a shard marker, and its action."""
    key = f"{lake}/{node_key(path)}"
    if path in meta.fixed:
        text = (f"{key} is corrupt ({why}); the metadata before the padding is intact; fix: "
                f"`flair-lake validate {lake} --repair` strips the padding")
        return text, ("meta", path)
    node = "the lake's root group" if not path else path
    if path.startswith(f"{schema.VIEWS_GROUP}/") and path.count("/") >= 1:
        view = path.split("/")[1]
        params = meta.docs.get(f"{schema.VIEWS_GROUP}/{view}", {}).get("attributes", {}).get("params")
        cmd = (f"`{filter_command(lake, view, params)}`" if params is not None
               else f"`flair-lake filter {lake}` with the view's parameters")
        text = (f"{key} is corrupt ({why}); {node} cannot be opened; fix: delete the view {lake}/"
                f"{schema.VIEWS_GROUP}/{view} (derived data) and re-run {cmd}")
        return text, None
    text = (f"{key} is corrupt ({why}); {node} cannot be opened; fix: restore this file from a backup or a copy "
            f"of the lake, or re-ingest {_runs_raw(meta.docs)} into a new lake (`flair-lake ingest RAW NEWLAKE`)")
    return text, None
