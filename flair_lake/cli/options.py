"""What every ``flair-lake`` command shares: the error handler and the options declared once.

Plugin commands (``pipelines.commands``) import these through :mod:`flair_lake.cli`.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import sys

import click

from flair_lake import config
from flair_lake.errors import CorruptMetadataError, FlairLakeError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}  # also for commands run alone (the train/ scripts)


def _quiet_at_exit() -> None:
    """Silence the interpreter's reports of exceptions it cannot raise, for the rest of the exit.

    The reads a failed store left pending (an unreachable object store: dozens of them) are closed when the
    interpreter exits, each printing "Exception ignored in: <coroutine ...>"; the one error line already said
    what went wrong. Registered with atexit, so an in-process caller (tests, notebooks) keeps its own hook.
    """
    sys.unraisablehook = lambda _unraisable: None


def handle_errors(fn):
    """Turn :class:`FlairLakeError` into one clean line on stderr and its exit code (traceback with -v).

    Every ``flair-lake`` command wraps its callback with this, plugins included.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (FlairLakeError, json.JSONDecodeError) as exc:
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                raise
            if isinstance(exc, json.JSONDecodeError):  # a damaged zarr.json below the root (the root's: on open)
                lake = kwargs.get("lake") or "the lake"
                exc = CorruptMetadataError(f"a metadata file (zarr.json) of {lake} is damaged ({exc}); "
                                           f"`flair-lake validate {lake}` names it and `--repair` fixes what it can")
            click.echo(f"error: {exc}", err=True)
            atexit.register(_quiet_at_exit)
            sys.exit(exc.exit_code)

    return wrapper


def parse_storage_options(pairs: tuple[str, ...]) -> dict | None:
    """Parse repeated ``--storage-option key=value`` into a dict (None when empty).

    Raises:
        click.BadParameter: a value without ``=``.
    """
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"expected key=value, got {pair!r}", param_hint="--storage-option")
        out[key] = value
    return out or None


def parse_split(split: str):
    """Return a split name, or a list of domains for ``D006_2020,D004_2021``."""
    return split.split(",") if "," in split else split


# The LAKE argument of the lake commands: $FLAIR_LAKE or ./lake.zarr, read when the command runs.
lake_argument = click.argument("lake", default=config.default_lake)
# Reaches the command as ``storage_options``: a dict, or None when not given.
storage_option = click.option("--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
                              callback=lambda _ctx, _param, pairs: parse_storage_options(pairs),
                              help="key=value for the object store; repeatable.")
scheduler_option = click.option("--scheduler", help="Address of an existing Dask scheduler (tcp://host:port); "
                                "default: a LocalCluster sized to this machine.")
workers_option = click.option("--workers", type=click.IntRange(min=1),
                              help="Worker processes of the LocalCluster (default: one per core).")
