"""Write georeferenced predictions: ``python train/predict.py --ckpt runs/utt/best.pt --lake lake.zarr
--split test --out preds/``.

One ``PRED_<id>.tif`` per patch (uint8 classes 0..12, LZW) with the patch's CRS and transform from the lake;
``--probabilities`` adds ``PROB_<id>.tif`` (13 bands, softmax x 255); ``--tta`` averages 4 flips. The metric is
reported too when the split has labels.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flair_lake.cli import _handle_errors, checkpoint_options  # noqa: E402


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@checkpoint_options
@click.option("--out", required=True, help="Folder for the GeoTIFFs.")
@click.option("--probabilities", is_flag=True, help="Also write PROB_<id>.tif.")
@click.option("--tta", is_flag=True, help="Test-time augmentation: mean of 4 flips.")
@_handle_errors
def main(ckpt, lake, split, view, batch_size, workers, device, out, probabilities, tta):
    """Predict every patch of a split of LAKE with CKPT into OUT."""
    from flair_lake.training.evaluate import evaluate

    res = evaluate(ckpt, lake, split=split, view=view, predict_dir=out,
                   probabilities=probabilities, batch_size=batch_size, workers=workers, device=device, tta=tta)
    msg = f"wrote {res['patches']} predictions to {out}"
    if res["labelled"]:
        msg += f"; official mIoU {res['miou']:.4f}"
    click.echo(msg)


if __name__ == "__main__":
    main()
