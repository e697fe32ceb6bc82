"""The ``flair-lake`` command line: a thin click group; each command parses, calls one function, reports.

Heavy imports live inside the commands so that ``flair-lake --help`` stays instant.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import sys

import click

from flair_lake import config, schema
from flair_lake.errors import CorruptMetadataError, FlairLakeError


def _quiet_at_exit() -> None:
    """Silence the interpreter's reports of exceptions it cannot raise, for the rest of the exit.

    The reads a failed store left pending (an unreachable object store: dozens of them) are closed when the
    interpreter exits, each printing "Exception ignored in: <coroutine ...>"; the one error line already said
    what went wrong. Registered with atexit, so an in-process caller (tests, notebooks) keeps its own hook.
    """
    sys.unraisablehook = lambda _unraisable: None


def _handle_errors(fn):
    """Turn :class:`FlairLakeError` into one clean line on stderr and its exit code (traceback with -v)."""

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


def parse_split(split: str):
    """Return a split name, or a list of domains for ``D006_2020,D004_2021``."""
    return split.split(",") if "," in split else split


def checkpoint_options(fn):
    """The options shared by the scripts that run a checkpoint on a split of a lake (evaluate, predict)."""
    options = [
        click.option("--ckpt", required=True, type=click.Path(dir_okay=False)),
        click.option("--lake", default=config.default_lake, show_default="$FLAIR_LAKE or lake.zarr"),
        click.option("--split", default="test", show_default=True, callback=lambda _c, _p, v: parse_split(v),
                     help="train, val, test, all, or domains (D006_2020,D004_2021)."),
        click.option("--view", default=None, help="Filter view (default: the checkpoint's)."),
        click.option("--batch-size", type=int, default=10, show_default=True),
        click.option("--workers", type=int, default=None),
        click.option("--device", default=None),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


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
@click.option("--workers", type=click.IntRange(min=1),
              help="Worker processes of the LocalCluster (default: one per core).")
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
@click.option("--storage-option", "storage_option", multiple=True, help="key=value for the object store.")
@_handle_errors
def ingest(raw, lake, scheduler, workers, codec, sentinel_codec, patches_per_shard, sat_window, metadata_path,
           centroids_path, storage_option):
    """Ingest the raw FLAIR tree(s) under RAW into the Zarr lake LAKE (default ./lake.zarr).

    \b
    Exit codes: 0 everything landed; 3 partial (some patches quarantined, the rest landed);
    1 error (nothing written); 2 usage error.
    Re-running resumes an interrupted ingest; a tree already ingested adds nothing.
    """
    from pipelines.ingest import ingest as run_ingest

    cfg = config.IngestConfig(codec=codec, sentinel_codec=sentinel_codec, sat_window=sat_window, workers=workers,
                              scheduler=scheduler,
                              patches_per_shard=patches_per_shard)
    summary = run_ingest(raw, lake, cfg, metadata_path=metadata_path, centroids_path=centroids_path,
                         storage_options=_storage_options(storage_option))
    for line in summary.lines():
        click.echo(line)
    sys.exit(summary.exit_code)


@main.command("filter")
@click.argument("lake", default=config.default_lake)
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
@click.option("--reducer", type=click.Choice(config.REDUCERS), help="Monthly reducer [default: mean].")
@click.option("--mask-pixels", is_flag=True, default=None,
              help="Average only the clear pixels of each kept date.")
@click.option("--preset", type=click.Choice(["baseline"]), help="baseline: the released FLAIR #2 code exactly "
              "(prob >= 60, summed snow + cloud counts, cover >= 0.5 dropped, unmasked monthly mean, empty "
              "months skipped, day offsets to 15 May 2021).")
@click.option("--codec", type=click.Choice(config.CODECS), default=config.FilterConfig.codec, show_default=True,
              help="Compression of the monthly cube: lz4 decodes fastest for the loader, zstd is ~3 % smaller.")
@click.option("--name", help="View name (default: derived from the parameters).")
@click.option("--overwrite", is_flag=True, help="Replace a view of the same name built with other parameters.")
@click.option("--scheduler", help="Address of an existing Dask scheduler (tcp://host:port).")
@click.option("--workers", type=click.IntRange(min=1),
              help="Worker processes of the LocalCluster (default: one per core).")
@click.option("--storage-option", "storage_option", multiple=True, help="key=value for the object store.")
@_handle_errors
def filter_cmd(lake, max_cover, min_prob, combine, monthly, reducer, mask_pixels, preset, codec, name, overwrite,
               scheduler, workers, storage_option):
    """Drop cloudy and snowy dates and build monthly composites, once, as a named view in LAKE.

    LAKE defaults to $FLAIR_LAKE or ./lake.zarr. Re-running with the same parameters does nothing; other
    parameters make another view.
    """
    from pipelines.filter import run_filter

    cfg = config.FilterConfig.from_flags(preset=preset, codec=codec, max_cover=max_cover, min_prob=min_prob,
                                         combine=combine, monthly=monthly, reducer=reducer, mask_pixels=mask_pixels)
    summary = run_filter(lake, cfg, name=name, overwrite=overwrite, scheduler=scheduler, workers=workers,
                         storage_options=_storage_options(storage_option))
    for line in summary.lines():
        click.echo(line)


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


@main.command()
@click.argument("lake", default=config.default_lake)
@click.option("--deep", is_flag=True, help="Also decode every shard of aerial, label and the views' monthly "
              "cubes, naming the patches of missing, truncated or corrupt shards.")
@click.option("--repair", is_flag=True, help="Repair what the check finds: delete each missing, truncated or "
              "corrupt shard (in every array its ingest task writes) and its marker and reopen the run that wrote "
              "it; the same for a view's monthly shard; strip NUL padding from metadata. Then print the ingest "
              "and filter commands that rewrite exactly those shards. With --deep it repairs what --deep finds.")
@click.option("--storage-option", "storage_option", multiple=True, help="key=value for the object store.")
@_handle_errors
def validate(lake, deep, repair, storage_option):
    """Check LAKE against the lake contract; list each problem with the command that repairs it.

    \b
    Exit codes: 0 sound, or (--repair) everything found was repaired: run the printed
    `next:` commands; 4 problems found (one per line), or some need a manual repair;
    1 no lake or not a flair-lake.
    """
    from flair_lake.validate import validate as run_validate

    report = run_validate(lake, deep=deep, repair=repair, storage_options=_storage_options(storage_option))
    for line in report.lines():
        click.echo(line)
    sys.exit(report.exit_code)


@main.command()
@click.argument("lake", default=config.default_lake)
@click.option("--patch", "patch_ids", multiple=True, help="Patch id (IMG_040001 or 40001); repeatable.")
@click.option("--random", "random_n", type=int, help="Show N random ingested patches instead.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --random.")
@click.option("--view", help="View whose monthly cube is shown [default: the latest with one].")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--storage-option", "storage_option", multiple=True, help="key=value for the object store.")
@_handle_errors
def preview(lake, patch_ids, random_n, seed, view, out, storage_option):
    """Quick-look PNG of patches of LAKE: colour, NIR, elevation, label, monthly Sentinel-2 strip, NDVI."""
    from flair_lake.preview import render_preview

    res = render_preview(lake, out, patch_ids=patch_ids, random_n=random_n, view=view, seed=seed,
                         storage_options=_storage_options(storage_option))
    click.echo(f"wrote {res['path']} ({res['size'][0]}x{res['size'][1]} px): "
               + ", ".join(f"IMG_{i:06d}" for i in res["patch_ids"]) + f"; view {res['view']}")


@main.command()
@click.argument("lake", default=config.default_lake)
@click.option("--view", help="View for the NDVI and cloud statistics [default: the latest with a monthly cube].")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Folder for CSVs and PNGs.")
@click.option("--storage-option", "storage_option", multiple=True, help="key=value for the object store.")
@_handle_errors
def stats(lake, view, out, storage_option):
    """Class distribution per split, mean NDVI per class through the year, dates dropped per month and domain."""
    from flair_lake.stats import write_stats

    res = write_stats(lake, out, view=view, storage_options=_storage_options(storage_option))
    for line in res["lines"]:
        click.echo(line)


if __name__ == "__main__":
    main()
