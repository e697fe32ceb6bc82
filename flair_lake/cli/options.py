"""What every ``flair-lake`` command shares: its class (:mod:`flair_lake.cli.failures`) and the options declared once.

Plugin commands (``pipelines.commands``) import these through :mod:`flair_lake.cli`.
"""

from __future__ import annotations

import click

from flair_lake import config
from flair_lake.cli.failures import Command


def command(name: str | None = None, **kwargs):
    """``click.command`` making a :class:`~flair_lake.cli.failures.Command`: one-line failures, ``-v``, ``-h``."""
    return click.command(name, cls=Command, **kwargs)


class OutputPath(click.ParamType):
    """A local folder (or file) the command will write: checked while parsing, before any work."""

    name = "path"

    def __init__(self, *, folder: bool = True) -> None:
        self.folder = folder

    def convert(self, value, param, ctx):
        """Return ``value`` when it can be created and written; fail with why otherwise (exit 2)."""
        from flair_lake.locations import unwritable

        if value is None or "://" in str(value):
            return value
        why = unwritable(value, folder=self.folder)
        if why:
            self.fail(f"{why}; choose a writable {'folder' if self.folder else 'file path'}", param, ctx)
        return value


OUTPUT_FOLDER = OutputPath()
OUTPUT_FILE = OutputPath(folder=False)


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
wait_option = click.option("--wait", is_flag=True, help="Wait for another writer of the lake to finish instead "
                           "of refusing (one writer at a time per lake).")
