"""The ``flair-lake`` command line: a thin click group; each command parses, calls one function, reports.

Commands of the library live in :mod:`flair_lake.cli.lake` and :mod:`flair_lake.cli.train`; the pipelines'
commands (``ingest``, ``filter``) are plugins named by the ``flair_lake.commands`` entry points (pyproject.toml)
and loaded when used. Heavy imports live inside the commands so that ``flair-lake --help`` stays instant.
"""

from __future__ import annotations

import logging
import sys
from importlib.metadata import EntryPoint, entry_points

import click

from flair_lake.cli import lake, train
from flair_lake.cli.failures import CONTEXT_SETTINGS, Command, OneLineFailures
from flair_lake.cli.options import (
    command,
    lake_argument,
    parse_split,
    parse_storage_options,
    scheduler_option,
    storage_option,
    wait_option,
    workers_option,
)

__all__ = ["CONTEXT_SETTINGS", "ENTRY_POINT_GROUP", "Command", "PluginGroup", "command", "lake_argument", "main",
           "parse_split", "parse_storage_options", "scheduler_option", "storage_option", "wait_option",
           "workers_option"]

ENTRY_POINT_GROUP = "flair_lake.commands"


def _unloadable(name: str, entry_point: EntryPoint, exc: Exception) -> click.Command:
    """Return a stand-in for a plugin command that failed to import: it says why and exits 1."""

    @click.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                   add_help_option=False, help=f"(cannot be loaded: {exc})")
    def broken() -> None:
        click.echo(f"error: the command {name} ({entry_point.value}) cannot be loaded ({type(exc).__name__}: {exc}); "
                   "reinstall flair-lake (`pip install -e .` in a checkout)", err=True)
        sys.exit(1)

    return broken


class PluginGroup(OneLineFailures, click.Group):
    """A click group with its own commands plus those an entry-point group names, imported on first use.

    Every failure of its commands, plugins included, ends as one line (:mod:`flair_lake.cli.failures`).
    """

    def __init__(self, *args, entry_point_group: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.entry_point_group = entry_point_group
        self._entry_points: dict[str, EntryPoint] | None = None

    def plugins(self) -> dict[str, EntryPoint]:
        """Return name -> entry point of the installed plugin commands (read once; nothing is imported)."""
        if self._entry_points is None:
            self._entry_points = {ep.name: ep for ep in entry_points(group=self.entry_point_group)}
        return self._entry_points

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Return the names of the group's own commands and of the plugins, sorted."""
        return sorted(set(super().list_commands(ctx)) | set(self.plugins()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Return a command, importing a plugin's module the first time it is asked for."""
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None or cmd_name not in self.plugins():
            return cmd
        entry_point = self.plugins()[cmd_name]
        try:
            cmd = entry_point.load()
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not take the whole command line down
            cmd = _unloadable(cmd_name, entry_point, exc)
        self.add_command(cmd, cmd_name)
        return cmd


@click.group(cls=PluginGroup, entry_point_group=ENTRY_POINT_GROUP, context_settings=CONTEXT_SETTINGS)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging and full tracebacks.")
@click.version_option(package_name="flair-lake")
def main(verbose: bool) -> None:
    """FLAIR #2 into a chunked Zarr lake, filtered once, streamed to the U-T&T trainer, mapped.

    \b
      flair-lake synth raw/                 # a synthetic FLAIR tree (no real data needed)
      flair-lake ingest raw/ lake.zarr      # raw tree -> Zarr lake (Dask)
      flair-lake filter --cloud 0.6 --monthly
      flair-lake train --lake lake.zarr     # U-T&T, then the official mIoU of its best checkpoint
      flair-lake map --ckpt runs/utt/best.pt --out maps/          # seamless COG maps of the test zones
      flair-lake experiment table3 --out exp/                     # the paper's Table 3, mean ± std over seeds
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


for _command in (*lake.COMMANDS, *train.COMMANDS):
    main.add_command(_command)
