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


def _storage_options(pairs: tuple[str, ...]) -> dict | None:
    """Parse repeated ``--storage-option key=value`` into a dict (None when empty)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"expected key=value, got {pair!r}", param_hint="--storage-option")
        out[key] = value
    return out or None


@main.command()
@click.argument("raw", type=click.Path(file_okay=False))
@click.argument("lake", default=config.default_lake)
@click.option("--scheduler", help="Address of an existing Dask scheduler (tcp://host:port); default: a "
              "LocalCluster sized to this machine.")
@click.option("--workers", type=int, help="Worker processes of the LocalCluster (default: one per core).")
@click.option("--codec", type=click.Choice(config.CODECS), default=config.IngestConfig.codec, show_default=True,
              help="Compression of the image arrays (lz4 or none decode faster on a 2-core trainer).")
@click.option("--patches-per-shard", type=int, default=config.IngestConfig.patches_per_shard, show_default=True,
              help="Patches per shard of a new lake (256 suits object stores); one Dask task per shard.")
@click.option("--sat-window", type=int, default=config.IngestConfig.sat_window, show_default=True,
              help="Sentinel window (px) each centroid must fit in.")
@click.option("--metadata", "metadata_path", type=click.Path(dir_okay=False),
              help="flair_aerial_metadata.json when it is not next to the tree.")
@click.option("--centroids", "centroids_path", type=click.Path(dir_okay=False),
              help="flair-2_centroids_sp_to_patch.json when it is not next to the tree.")
@click.option("--storage-option", "storage_option", multiple=True, help="key=value for the object store.")
@_handle_errors
def ingest(raw, lake, scheduler, workers, codec, patches_per_shard, sat_window, metadata_path, centroids_path, storage_option):
    """Ingest the raw FLAIR tree(s) under RAW into the Zarr lake LAKE (default ./lake.zarr).

    \b
    Exit codes: 0 everything landed; 3 partial (some patches quarantined, the rest landed);
    1 error (nothing written); 2 usage error.
    Re-running resumes an interrupted ingest; a tree already ingested adds nothing.
    """
    from pipelines.ingest import ingest as run_ingest

    cfg = config.IngestConfig(codec=codec, sat_window=sat_window, workers=workers, scheduler=scheduler,
                              patches_per_shard=patches_per_shard)
    summary = run_ingest(raw, lake, cfg, metadata_path=metadata_path, centroids_path=centroids_path,
                         storage_options=_storage_options(storage_option))
    for line in summary.lines():
        click.echo(line)
    sys.exit(summary.exit_code)


@main.command()
@click.argument("lake", default=config.default_lake)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--storage-option", "storage_option", multiple=True, help="key=value for the object store.")
@_handle_errors
def info(lake, as_json, storage_option):
    """Describe LAKE: patches per split and domain, arrays, sizes, runs, quarantine, views."""
    from flair_lake.info import describe, format_report

    report = describe(lake, storage_options=_storage_options(storage_option))
    click.echo(json.dumps(report, indent=1) if as_json else format_report(report))


if __name__ == "__main__":
    main()
