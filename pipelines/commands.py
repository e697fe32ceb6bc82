"""``flair-lake ingest``, ``filter`` and ``map``: the Dask pipelines' commands.

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
    parse_split,
    scheduler_option,
    storage_option,
    wait_option,
    workers_option,
)
from flair_lake.cli.options import OUTPUT_FOLDER


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


def _corner(_ctx, _param, value):
    """Parse ``--sentinel-grid WEST,NORTH`` into two floats."""
    if value is None:
        return None
    try:
        west, north = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected WEST,NORTH in metres of the raster's CRS, e.g. 951200,6212400; got "
                                 f"{value!r}") from None
    return west, north


M = config.MapConfig


@command("map")
@click.option("--ckpt", required=True, type=click.Path(dir_okay=False, exists=True), help="A checkpoint of train.")
@click.option("--lake", default=None, help="The lake whose zones are mapped [default: $FLAIR_LAKE or lake.zarr; "
              "with --image, only read for the view's filter parameters].")
@click.option("--split", default=config.MAP_SPLIT, show_default=True, callback=lambda _c, _p, v: parse_split(v),
              help="Map the zones with patches of this split: train, val, test, all, or domains.")
@click.option("--zones", default=None, help="Map these zones instead (comma-separated, e.g. D004_2021-Z1_FF).")
@click.option("--view", default=None, help="View whose filter builds the Sentinel-2 inputs [default: the "
              "checkpoint's].")
@click.option("--image", type=click.Path(dir_okay=False, exists=True),
              help="Map this georeferenced 5-band raster (R, G, B, NIR, elevation) instead of zones.")
@click.option("--sentinel", "sentinel_folder", type=click.Path(file_okay=False, exists=True),
              help="With --image and a U-T&T model: folder of a super-area triple (*_data.npy, *_masks.npy, "
              "*_products.txt).")
@click.option("--sentinel-grid", callback=_corner, metavar="WEST,NORTH",
              help="Top-left corner of the --sentinel super-area's 10 m grid, in the raster's CRS.")
@click.option("--out", type=OUTPUT_FOLDER, required=True, help="Folder of the maps.")
@click.option("--tile", type=click.IntRange(min=32), default=None,
              help="Window side, px [default: the checkpoint's patch size].")
@click.option("--overlap", type=click.IntRange(min=0), default=None,
              help="Pixels neighbouring windows share [default: a quarter of the tile].")
@click.option("--blend", type=click.Choice(config.BLENDS), default=M.blend, show_default=True,
              help="Weights over the overlaps: cosine or linear ramps; none crops (each pixel from the nearest "
              "window centre).")
@click.option("--block", type=click.IntRange(min=32), default=M.block, show_default=True,
              help="Job grid cell, px: the unit of resumption and of Dask tasks.")
@click.option("--batch-size", type=click.IntRange(min=1), default=M.batch_size, show_default=True)
@click.option("--probabilities", is_flag=True, help="Also write <map>_prob.tif: 13 class probabilities and the "
              "confidence, 0..255.")
@click.option("--device", default=None, help="cuda or cpu (default: cuda when available).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Blocks on a local Dask cluster of N workers [default: in this process].")
@scheduler_option
@storage_option
def map_cmd(ckpt, lake, split, zones, view, image, sentinel_folder, sentinel_grid, out, tile, overlap, blend,
            block, batch_size, probabilities, device, workers, scheduler, storage_options):
    """Map whole zones of a lake (or a raster) with a trained model into Cloud-Optimized GeoTIFFs.

    Each zone becomes one class map over its whole extent on the exact pixel grid of its patches (no data
    between patches), from overlapping windows blended without seams; COGs with the colour table and class
    names, a QGIS style, optional probabilities, and OUT/index.vrt over all maps. A killed run resumes with the
    same command.
    """
    from pipelines.maps import SentinelSpec, run_map

    ctx = click.get_current_context()
    split_given = ctx.get_parameter_source("split") is not click.core.ParameterSource.DEFAULT
    if zones and split_given:
        raise click.UsageError("--zones and --split choose the zones to map: give one of them")
    if image is not None and (zones or split_given):
        raise click.UsageError("--image maps one raster: --zones and --split are for the zones of a lake")
    if (sentinel_folder is None) != (sentinel_grid is None):
        raise click.UsageError("--sentinel and --sentinel-grid go together")
    if image is None and (sentinel_folder or sentinel_grid):
        raise click.UsageError("--sentinel and --sentinel-grid are for --image; zones read their super-area "
                               "from the lake")
    if image is None:
        lake = lake or config.default_lake()
    cfg = config.MapConfig(tile=tile, overlap=overlap, blend=blend, block=block, batch_size=batch_size,
                           probabilities=probabilities, device=device, workers=workers, scheduler=scheduler)
    spec = SentinelSpec(sentinel_folder, *sentinel_grid) if sentinel_folder else None
    summary = run_map(ckpt, out, cfg, lake=lake, split=split, zones=zones.split(",") if zones else None,
                      view=view, image=image, sentinel=spec, storage_options=storage_options)
    for line in summary.lines():
        click.echo(line)
    click.echo(f"maps in {out}: " + ", ".join(p.name for p in summary.maps) + "; index.vrt mosaics them")


@command("experiment")
@click.argument("plan")
@click.option("--lake", default=config.default_lake, show_default="$FLAIR_LAKE or lake.zarr")
@click.option("--out", type=OUTPUT_FOLDER, required=True, help="Folder of the runs and the tables.")
@click.option("--seeds", type=click.IntRange(min=1), default=config.EXPERIMENT_SEEDS, show_default=True,
              help="Runs per variant (seeds 0 .. N-1), each trained from scratch.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epochs of every run [default: the trainer's, or the plan's].")
@click.option("--device", default=None, help="cuda or cpu (default: cuda when available).")
@click.option("--scheduler", help="Address of a Dask scheduler (tcp://host:port): runs go to its workers, one per "
              "GPU on workers started with --resources GPU=1 [default: one after another in this process].")
def experiment_cmd(plan, lake, out, seeds, epochs, device, scheduler):
    """Train every variant of PLAN with several seeds and report the tables, mean ± std over seeds.

    PLAN is a built-in plan, table3 (the datapaper's Table 3) or table5 (its Table 5), or a YAML file of
    variants. Missing views are built first; finished runs are skipped when run again; a failed run is reported
    and the others go on (exit 3). With --scheduler, runs go to the cluster's workers: one run per GPU on
    workers started with --resources GPU=1.
    """
    from flair_lake.experiments.plan import load_plan
    from pipelines.experiment import run_experiment

    summary = run_experiment(load_plan(plan), lake, out, seeds=seeds, epochs=epochs, scheduler=scheduler,
                             device=device)
    for line in summary.lines():
        click.echo(line)
    sys.exit(summary.exit_code)
