"""Evaluate a checkpoint with the official FLAIR #2 metric:
``python train/evaluate.py --ckpt runs/utt/best.pt --lake lake.zarr --split test [--predict DIR]``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flair_lake.cli import _handle_errors, checkpoint_options  # noqa: E402


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@checkpoint_options
@click.option("--out", default=None, help="Folder for metrics JSON/CSV and the confusion matrix plot.")
@click.option("--predict", "predict_dir", default=None, help="Also write georeferenced PRED_<id>.tif here.")
@click.option("--probabilities", is_flag=True, help="With --predict, also PROB_<id>.tif (13 bands, 0..255).")
@click.option("--examples", default=4, show_default=True,
              help="Draw the N patches of lowest pixel accuracy in OUT/examples_<split>.png (0: none).")
@_handle_errors
def main(ckpt, lake, split, view, batch_size, workers, device, out, predict_dir, probabilities, examples):
    """Evaluate CKPT on a split of LAKE."""
    from flair_lake.training.evaluate import evaluate

    res = evaluate(ckpt, lake, split=split, view=view, out_dir=out or Path(ckpt).parent,
                   predict_dir=predict_dir, probabilities=probabilities, batch_size=batch_size, workers=workers,
                   device=device, examples=examples)
    if res["labelled"]:
        click.echo(f"{split}: official mIoU {res['miou']:.4f} over {res['patches']} patches")
        for row in res["per_class_iou"]:
            iou = "  n/a " if row["iou"] is None else f"{row['iou']:.4f}"
            click.echo(f"  {row['class']:2d} {row['name']:<24} {iou}")
    if predict_dir:
        click.echo(f"predictions written to {predict_dir}")


if __name__ == "__main__":
    main()
