"""``flair-lake synth | info | validate | preview | stats``: make a raw tree, look at and check a lake."""

from __future__ import annotations

import json
import sys

import click

from flair_lake import config
from flair_lake.cli.options import (
    OUTPUT_FILE,
    OUTPUT_FOLDER,
    command,
    lake_argument,
    storage_option,
    wait_option,
)


@command()
@click.argument("out", type=OUTPUT_FOLDER)
@click.option("--preset", type=click.Choice(sorted(config.SYNTH_PRESETS)), default=config.SYNTH_PRESET,
              show_default=True, help="Sizes to start from; the options below override them.")
@click.option("--domains", help="Comma-separated domains such as D006_2020,D004_2021 (official names give "
              "train/val/test splits).")
@click.option("--zones-per-domain", type=int, help="Zones (Sentinel super-areas) per domain.")
@click.option("--patches-per-zone", type=int, help="Aerial patches per zone.")
@click.option("--patch-size", type=int, help="Aerial patch side in pixels (real data: 512); the 102.4 m "
              "footprint is kept.")
@click.option("--seed", type=int, default=config.SynthConfig.seed, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace the content of a non-empty OUT.")
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


@command()
@lake_argument
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@storage_option
def info(lake, as_json, storage_options):
    """Describe LAKE: patches per split and domain, arrays, sizes, runs, quarantine, views."""
    from flair_lake.info import describe, format_report

    report = describe(lake, storage_options=storage_options)
    click.echo(json.dumps(report, indent=1) if as_json else format_report(report))


@command()
@lake_argument
@click.option("--deep", is_flag=True, help="Also decode every shard of aerial, label and the views' monthly "
              "cubes, naming the patches of missing, truncated or corrupt shards.")
@click.option("--repair", is_flag=True, help="Repair what the check finds: delete each missing, truncated or "
              "corrupt shard (in every array its ingest task writes) and its marker and reopen the run that wrote "
              "it; the same for a view's monthly shard; strip NUL padding from metadata. Then print the ingest "
              "and filter commands that rewrite exactly those shards. With --deep it repairs what --deep finds.")
@storage_option
@wait_option
def validate(lake, deep, repair, storage_options, wait):
    """Check LAKE against the lake contract; list each problem with the command that repairs it.

    \b
    Exit codes: 0 sound, or (--repair) everything found was repaired: run the printed
    `next:` commands; 4 problems found (one per line), or some need a manual repair;
    1 no lake or not a flair-lake.
    """
    from flair_lake.validate import validate as run_validate

    report = run_validate(lake, deep=deep, repair=repair, storage_options=storage_options, wait=wait)
    for line in report.lines():
        click.echo(line)
    sys.exit(report.exit_code)


@command()
@lake_argument
@click.option("--patch", "patch_ids", multiple=True, help="Patch id (IMG_040001 or 40001); repeatable.")
@click.option("--random", "random_n", type=int, help="Show N random ingested patches instead.")
@click.option("--seed", type=int, default=config.PREVIEW_SEED, show_default=True, help="Seed of --random.")
@click.option("--view", help="View whose monthly cube is shown [default: the latest with one].")
@click.option("-o", "--out", required=True, type=OUTPUT_FILE, help="PNG to write.")
@storage_option
def preview(lake, patch_ids, random_n, seed, view, out, storage_options):
    """Quick-look PNG of patches of LAKE: colour, NIR, elevation, label, monthly Sentinel-2 strip, NDVI."""
    from flair_lake.preview import render_preview
    from flair_lake.raw.names import patch_name

    res = render_preview(lake, out, patch_ids=patch_ids, random_n=random_n, view=view, seed=seed,
                         storage_options=storage_options)
    click.echo(f"wrote {res['path']} ({res['size'][0]}x{res['size'][1]} px): "
               + ", ".join(patch_name(i) for i in res["patch_ids"]) + f"; view {res['view']}")


@command()
@lake_argument
@click.option("--view", help="View for the NDVI and cloud statistics [default: the latest with a monthly cube].")
@click.option("-o", "--out", required=True, type=OUTPUT_FOLDER, help="Folder for CSVs and PNGs.")
@storage_option
def stats(lake, view, out, storage_options):
    """Class distribution per split, mean NDVI per class through the year, dates dropped per month and domain."""
    from flair_lake.stats import write_stats

    res = write_stats(lake, out, view=view, storage_options=storage_options)
    for line in res["lines"]:
        click.echo(line)


COMMANDS = (synth, info, validate, preview, stats)
