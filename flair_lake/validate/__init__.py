"""``flair-lake validate``: check a lake against its contract (``docs/lake-format.md``), say how to repair it, and
with ``repair`` do the repair.

Every metadata document (``zarr.json``) is read and parsed first, from one listing of the store: a corrupt one is
one problem naming the file. Plain checks then read only metadata and the small per-patch table: schema version,
the shape, dtype and chunking of every per-patch array, of each referenced super-area's and each view's arrays
(against :mod:`flair_lake.schema`), cross-array consistency (ids, splits, string-table codes, super-areas, Sentinel
windows), views (row counts, keep flags), shard completion markers, and that the shard object
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

The package: :mod:`~flair_lake.validate.scan` reads the metadata, :mod:`~flair_lake.validate.checks` and
:mod:`~flair_lake.validate.shards` run the checks, :mod:`~flair_lake.validate.repair` repairs, and
:mod:`~flair_lake.validate.report` holds the report and the rebuild commands.
"""

from __future__ import annotations

from flair_lake import lake as lk
from flair_lake.errors import CorruptMetadataError, FlairLakeError
from flair_lake.lock import writer
from flair_lake.validate.checks import Checker, check_arrays, check_markers, check_root, check_table, check_views
from flair_lake.validate.repair import repair_lake, strip_padding
from flair_lake.validate.report import EXIT_INVALID, ValidationReport
from flair_lake.validate.scan import marker_of, metadata_problem, open_store, scan_store
from flair_lake.validate.shards import check_deep, check_leftovers, check_shards_exist

__all__ = ["EXIT_INVALID", "ValidationReport", "validate"]


def validate(lake: str, *, deep: bool = False, repair: bool = False,
             storage_options: dict | None = None, wait: bool = False) -> ValidationReport:
    """Check ``lake`` against the lake contract; with ``deep``, decode every image and monthly shard.

    Args:
        lake: path or object-store URL of the lake.
        deep: also decode every written shard of ``aerial``, ``label`` and the views' ``monthly`` cubes.
        repair: repair what the checks found (see the module docstring) and list the commands to run next.
        storage_options: fsspec options of an object store.
        wait: with ``repair``, wait for another writer of the lake to finish instead of refusing.

    Returns:
        The report: ``ok``, ``exit_code`` and one line per problem with its repair.

    Raises:
        LakeNotFoundError: nothing at ``lake``.
        LakeStateError: not a flair-lake, or a schema newer than this code.
    """
    if repair:  # repairs write: one writer at a time
        with writer(lake, "validate --repair", storage_options=storage_options, wait=wait):
            return _validate(lake, deep=deep, repair=True, storage_options=storage_options)
    return _validate(lake, deep=deep, repair=False, storage_options=storage_options)


def _validate(lake: str, *, deep: bool, repair: bool, storage_options: dict | None) -> ValidationReport:
    """Run the checks (and the repairs) of :func:`validate`."""
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
    store = root.store if root is not None else open_store(lake, storage_options, writable=repair)
    meta = scan_store(store)
    if repair and meta.fixed:
        strip_padding(lake, store, meta, report)
        meta = scan_store(store)
        if root is None or "" in meta.fixed:
            root, err = open_root()
    if root is None and "" not in meta.bad:
        raise err
    unreadable = {p: why for p, why in meta.bad.items() if marker_of(p) is None}
    if unreadable:
        for path, why in sorted(unreadable.items()):
            report.check(False, *metadata_problem(lake, path, why, meta))
        report.stopped = "other checks skipped until the metadata is readable"
        return report
    c = Checker(lake, root, report, meta)
    before = len(report.problems)
    if not check_root(c) or not check_arrays(c):
        return report
    c.layout_ok = len(report.problems) == before
    check_table(c)
    check_markers(c)
    check_views(c)
    check_shards_exist(c)
    check_leftovers(c)
    if deep:
        check_deep(c)
    if repair and report.problems:
        repair_lake(c, storage_options)
    return report
