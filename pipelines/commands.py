"""``flair-lake ingest`` and ``flair-lake filter``: the Dask pipelines' commands.

They are plugins of the ``flair-lake`` group, named by the ``flair_lake.commands`` entry points of
pyproject.toml, so that the library never imports the pipelines. The pipelines themselves are imported when a
command runs: ``flair-lake --help`` only reads this module.
"""

from __future__ import annotations

import sys

import click

from flair_lake import config, schema
from flair_lake.cli import (
    command,
    lake_argument,
    scheduler_option,
    storage_option,
    wait_option,
    workers_option,
)


@command()
@click.argument("raw", type=click.Path(file_okay=False))
@lake_argument
@scheduler_option
@workers_option
@click.option("--codec", type=click.Choice(config.CODECS), default=config.IngestConfig.codec, show_default=True,
              help="Compression of the image arrays (lz4 or none decode faster on a 2-core trainer).")
@click.option("--sentinel-codec", type=click.Choice(config.CODECS), default=config.IngestConfig.sentinel_codec,
              show_default=True, help="Compression of the Sentinel-2 time series (read whole by filter).")
@click.option("--patches-per-shard", type=int, default=config.IngestConfig.patches_per_shard, show_default=True,
              help="Patches per shard of a new lake (256 suits object stores); one Dask task per shard.")
@click.option("--sat-window", type=int, default=config.IngestConfig.sat_window, show_default=True,
              help="Sentinel window (px) each centroid must fit in.")
@click.option("--metadata", "metadata_path", type=click.Path(dir_okay=False),
              help="flair_aerial_metadata.json when it is not next to the tree.")
@click.option("--centroids", "centroids_path", type=click.Path(dir_okay=False),
              help="flair-2_centroids_sp_to_patch.json when it is not next to the tree.")
@storage_option
@wait_option
def ingest(raw, lake, scheduler, workers, codec, sentinel_codec, patches_per_shard, sat_window, metadata_path,
           centroids_path, storage_options, wait):
    """Ingest the raw FLAIR tree(s) under RAW into the Zarr lake LAKE (default $FLAIR_LAKE or ./lake.zarr).

    \b
    Exit codes: 0 everything landed; 3 partial (some patches quarantined, the rest landed);
    1 error (nothing written); 2 usage error.
    Re-running resumes an interrupted ingest; a tree already ingested adds nothing.
    """
    from pipelines.ingest import ingest as run_ingest

    cfg = config.IngestConfig(codec=codec, sentinel_codec=sentinel_codec, sat_window=sat_window, workers=workers,
                              scheduler=scheduler, patches_per_shard=patches_per_shard, wait=wait)
    summary = run_ingest(raw, lake, cfg, metadata_path=metadata_path, centroids_path=centroids_path,
                         storage_options=storage_options)
    for line in summary.lines():
        click.echo(line)
    sys.exit(summary.exit_code)


@command("filter")
@lake_argument
@click.option("--cloud", "max_cover", type=click.FloatRange(0, 1),
              help=f"Drop a date when this FRACTION (0..1) of the patch's {schema.S2_WINDOW}x"
              f"{schema.S2_WINDOW} window is covered [default: {config.FilterConfig.max_cover}; "
              "the released baseline used 0.5].")
@click.option("--prob", "min_prob", type=click.FloatRange(0, 100),
              help="A pixel is covered when its snow or cloud PROBABILITY in PERCENT (0..100) is >= this "
              f"[default: {config.FilterConfig.min_prob:g}].")
@click.option("--combine", type=click.Choice(config.COMBINE_RULES),
              help="union: a pixel flagged snow and cloud counts once; sum: twice, as the baseline does "
              f"[default: {config.FilterConfig.combine}].")
@click.option("--monthly", is_flag=True, default=None, help="Also build dense monthly composites "
              "(patch, 12, 10, 40, 40) with clear-date counts and day offsets.")
@click.option("--reducer", type=click.Choice(config.REDUCERS),
              help=f"Monthly reducer [default: {config.FilterConfig.reducer}].")
@click.option("--mask-pixels", is_flag=True, default=None,
              help="Average only the clear pixels of each kept date.")
@click.option("--preset", type=click.Choice(config.FILTER_PRESETS), help="baseline: the released FLAIR #2 code "
              "exactly (prob >= 60, summed snow + cloud counts, cover >= 0.5 dropped, unmasked monthly mean, empty "
              "months skipped, day offsets to 15 May 2021); options that agree with it may be given too.")
@click.option("--codec", type=click.Choice(config.CODECS), default=config.FilterConfig.codec, show_default=True,
              help="Compression of the monthly cube: lz4 decodes fastest for the loader, zstd is ~3 % smaller.")
@click.option("--name", callback=lambda _ctx, _param, v: v and schema.check_view_name(v),
              help="View name: letters, digits, '.', '_', '-' (default: derived from the parameters).")
@click.option("--overwrite", is_flag=True, help="Replace a view of the same name built with other parameters: the "
              "new one is built aside and becomes current when complete; readers of the old one keep it.")
@scheduler_option
@workers_option
@storage_option
@wait_option
def filter_cmd(lake, max_cover, min_prob, combine, monthly, reducer, mask_pixels, preset, codec, name, overwrite,
               scheduler, workers, storage_options, wait):
    """Drop cloudy and snowy dates and build monthly composites, once, as a named view in LAKE.

    LAKE defaults to $FLAIR_LAKE or ./lake.zarr. Re-running with the same parameters does nothing; other
    parameters make another view.
    """
    from pipelines.filter import run_filter

    cfg = config.FilterConfig.from_flags(preset=preset, codec=codec, max_cover=max_cover, min_prob=min_prob,
                                         combine=combine, monthly=monthly, reducer=reducer, mask_pixels=mask_pixels)
    summary = run_filter(lake, cfg, name=name, overwrite=overwrite, scheduler=scheduler, workers=workers,
                         storage_options=storage_options, wait=wait)
    for line in summary.lines():
        click.echo(line)
