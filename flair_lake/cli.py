"""The ``flair-lake`` command line: a thin click group; each command parses, calls one function, reports.

Heavy imports live inside the commands so that ``flair-lake --help`` stays instant.
"""

from __future__ import annotations

import functools
import json
import logging
import sys

import click

from flair_lake import config
from flair_lake.errors import FlairLakeError


def _handle_errors(fn):
    """Turn :class:`FlairLakeError` into one clean line on stderr and its exit code (traceback with -v)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FlairLakeError as exc:
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging and full tracebacks.")
@click.version_option(package_name="flair-lake")
def main(verbose: bool) -> None:
    """FLAIR #2 into a chunked Zarr lake, filtered once, streamed to the U-T&T trainer.

    \b
      flair-lake synth raw/                 # a synthetic FLAIR tree (no real data needed)
      flair-lake ingest raw/ lake.zarr      # raw tree -> Zarr lake (Dask)
      flair-lake filter --cloud 0.6 --monthly
      python train/fit.py --lake lake.zarr
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--preset", type=click.Choice(sorted(config.SYNTH_PRESETS)), default="tiny", show_default=True,
              help="Sizes to start from; the options below override them.")
@click.option("--domains", help="Comma-separated domains such as D006_2020,D004_2021 (official names give "
              "train/val/test splits).")
@click.option("--zones-per-domain", type=int, help="Zones (Sentinel super-areas) per domain.")
@click.option("--patches-per-zone", type=int, help="Aerial patches per zone.")
@click.option("--patch-size", type=int, help="Aerial patch side in pixels (real data: 512); the 102.4 m "
              "footprint is kept.")
@click.option("--seed", type=int, default=config.SynthConfig.seed, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace the content of a non-empty OUT.")
@_handle_errors
def synth(out, preset, domains, zones_per_domain, patches_per_zone, patch_size, seed, overwrite):
    """Write a learnable synthetic FLAIR #2 tree in the exact raw layout to OUT."""
    from flair_lake.synth import synthesize

    cfg = config.SynthConfig.from_preset(
        preset, domains=tuple(d.strip() for d in domains.split(",") if d.strip()) if domains else None,
        zones_per_domain=zones_per_domain, patches_per_zone=patches_per_zone, patch_size=patch_size, seed=seed)
    summary = synthesize(out, cfg, overwrite=overwrite, progress=sys.stderr.isatty())
    click.echo(f"wrote {summary['patches']} patches in {summary['zones']} zones of {summary['domains']} domains "
               f"to {summary['root']} ({summary['bytes'] / 1e6:.1f} MB); patches per split: "
               + json.dumps(summary["patches_per_split"]))


if __name__ == "__main__":
    main()
