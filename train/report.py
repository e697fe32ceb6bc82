"""Charts of a training run: ``python train/report.py RUN [-o DIR]`` (loss/mIoU curves, per-class IoU bars).

The confusion matrix and the grid of worst patches are drawn by evaluation (``fit`` and ``train/evaluate.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flair_lake.cli import _handle_errors  # noqa: E402


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run", type=click.Path())
@click.option("-o", "--out", default=None, help="Folder for the PNGs [default: RUN].")
@_handle_errors
def main(run, out):
    """Render log.csv and iou_<split>.csv of the run folder RUN as PNGs."""
    from flair_lake.report import render_run

    for path in render_run(run, out):
        click.echo(f"wrote {path}")
    for path in sorted(Path(run).glob("confusion_*.png")) + sorted(Path(run).glob("examples_*.png")):
        click.echo(f"drawn by evaluation: {path}")


if __name__ == "__main__":
    main()
