"""``flair-lake train | evaluate | predict | report``: train a model on a lake, score it, map it, chart it.

``train/fit.py``, ``train/evaluate.py``, ``train/predict.py`` and ``train/report.py`` run these same commands.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from flair_lake import config
from flair_lake.cli.options import OUTPUT_FOLDER, command, parse_split

D = config.TrainConfig
E = config.EvaluateConfig
# DataLoader workers: 0 reads in the training process
loader_workers = click.option("--workers", type=click.IntRange(min=0), default=None,
                              help="DataLoader workers (default: cores - 1).")


def checkpoint_options(fn):
    """Add the options shared by the commands that run a checkpoint on a split of a lake (evaluate, predict)."""
    options = [
        click.option("--ckpt", type=click.Path(dir_okay=False), help="A checkpoint written by train."),
        click.option("--lake", default=config.default_lake, show_default="$FLAIR_LAKE or lake.zarr"),
        click.option("--split", default=E.split, show_default=True, callback=lambda _c, _p, v: parse_split(v),
                     help="train, val, test, all, or domains (D006_2020,D004_2021)."),
        click.option("--view", default=None, help="Filter view (default: the checkpoint's)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=E.batch_size, show_default=True),
        loader_workers,
        click.option("--device", default=None),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@command()
@click.option("--lake", default=config.default_lake, show_default="$FLAIR_LAKE or lake.zarr")
@click.option("--view", default=None, help="Filter view (default: the lake's latest).")
@click.option("--model", type=click.Choice(config.MODEL_NAMES), default=D.model, show_default=True,
              help="utt: U-T&T (paper); utt-fpn, utt-deeplabv3: other aerial decoders; unet: aerial only; "
              "utae: Sentinel-2 only.")
@click.option("--epochs", type=click.IntRange(min=1), default=D.epochs, show_default=True)
@click.option("--patience", type=click.IntRange(min=1), default=D.patience, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=D.batch_size, show_default=True)
@click.option("--lr", type=float, default=D.lr, show_default=True)
@click.option("--optimizer", type=click.Choice(config.OPTIMIZERS), default=D.optimizer, show_default=True)
@click.option("--amp", type=click.Choice(config.AMP_MODES), default=D.amp, show_default=True,
              help="bf16 autocast on CUDA (CPU runs fp32).")
@loader_workers
@click.option("--out", type=OUTPUT_FOLDER, default=D.out, show_default=True,
              help="Run folder: checkpoints, log.csv, metrics.")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt exactly where it stopped.")
@click.option("--seed", type=int, default=D.seed, show_default=True)
@click.option("--augment", type=click.Choice(config.AUGMENTS), default=D.augment, show_default=True,
              help="dihedral: flips and 90-degree rotations; paper: the datapaper's AUG (flips, random resize, random "
              "affine); none.")
@click.option("--no-augment", is_flag=True, help="Same as --augment none.")
@click.option("--metadata", is_flag=True, help="Feed the encoded aerial metadata (the paper's +MTD).")
@click.option("--encoder-weights", type=click.Path(dir_okay=False, exists=True),
              help="Local ResNet34 state dict (ImageNet weights cannot be downloaded here); default random init.")
@click.option("--baseline-quirks", is_flag=True, help="Collapsed fusion from batch element 0, as the released code.")
@click.option("--train-split", default=D.train_split, show_default=True)
@click.option("--val-split", default=D.val_split, show_default=True)
@click.option("--max-batches", type=click.IntRange(min=1), default=None, help="Cap batches per epoch (quick runs).")
@click.option("--device", default=None, help="cuda or cpu (default: cuda when available).")
@click.option("--no-eval", is_flag=True, help="Skip the final evaluation of the best checkpoint.")
def train(lake, view, model, epochs, patience, batch_size, lr, optimizer, amp, workers, out, resume, seed,
          augment, no_augment, metadata, encoder_weights, baseline_quirks, train_split, val_split, max_batches, device,
          no_eval):
    """Train a model on LAKE and evaluate its best checkpoint with the official mIoU.

    Defaults follow the paper (SGD, lr 0.001, batch 10, up to 100 epochs, early stopping with patience 30 on
    the validation loss, best checkpoint by validation loss). CUDA with bf16 autocast and channels_last when
    present, CPU otherwise; DDP with ``torchrun --nproc_per_node N train/fit.py ...``. At the end the best
    checkpoint is evaluated with the official metric on the validation split and, when it has labels, the test
    split.
    """
    import logging

    from flair_lake.training.evaluate import evaluate
    from flair_lake.training.loop import fit

    logging.basicConfig(level=logging.WARNING)  # run alone (train/fit.py, torchrun): the group's setup is absent
    cfg = config.TrainConfig(lake=lake, view=view, model=model, epochs=epochs, patience=patience,
                             batch_size=batch_size, lr=lr, optimizer=optimizer, amp=amp, workers=workers, out=out,
                             resume=resume, seed=seed, augment="none" if no_augment else augment, metadata=metadata,
                             encoder_weights=encoder_weights, baseline_quirks=baseline_quirks,
                             train_split=train_split, val_split=val_split, max_batches=max_batches, device=device)
    summary = fit(cfg)
    if no_eval or int(os.environ.get("RANK", "0")) != 0:
        return
    best = Path(out) / "best.pt"
    for split in (val_split, "test"):
        try:
            res = evaluate(best, lake, split=split, out_dir=out, batch_size=batch_size, workers=workers,
                           device=device)
        except Exception as exc:  # noqa: BLE001 - a lake without that split is not an error here
            click.echo(f"{split}: not evaluated ({exc})")
            continue
        if res["labelled"]:
            click.echo(f"{split}: official mIoU {res['miou']:.4f} on {res['patches']} patches "
                       f"(best epoch {summary['best_epoch']}); reports in {out}")


@command()
@checkpoint_options
@click.option("--out", type=OUTPUT_FOLDER, default=None,
              help="Folder for metrics JSON/CSV and the confusion matrix plot [default: the checkpoint's folder].")
@click.option("--predict", "predict_dir", type=OUTPUT_FOLDER, default=None,
              help="Also write georeferenced PRED_<id>.tif here.")
@click.option("--probabilities", is_flag=True, help="With --predict, also PROB_<id>.tif (13 bands, 0..255).")
@click.option("--examples", type=click.IntRange(min=0), default=E.examples, show_default=True,
              help="Draw the N patches of lowest pixel accuracy in OUT/examples_<split>.png (0: none).")
@click.option("--map", "map_dir", type=click.Path(file_okay=False, exists=True),
              help="Score the zone maps of this folder (flair-lake map) instead of a checkpoint, on the same "
              "pixels: every labelled patch of the split, read from its zone's map.")
def evaluate(ckpt, lake, split, view, batch_size, workers, device, out, predict_dir, probabilities, examples,
             map_dir):
    """Evaluate CKPT (or the maps of --map) on a split of LAKE with the official FLAIR #2 metric."""
    from flair_lake.training.evaluate import evaluate as run_evaluate
    from flair_lake.training.evaluate import write_reports

    if (ckpt is None) == (map_dir is None):
        raise click.UsageError("give --ckpt (a checkpoint) or --map (a folder of maps), one of them")
    if map_dir:
        from flair_lake.maps.score import score_maps

        res = score_maps(map_dir, lake, split=split)
        for line in res.pop("warnings"):
            click.echo(f"warning: {line}")
        write_reports(res, Path(out or map_dir))
    else:
        res = run_evaluate(ckpt, lake, split=split, view=view, out_dir=out or Path(ckpt).parent,
                           predict_dir=predict_dir, probabilities=probabilities, batch_size=batch_size,
                           workers=workers, device=device, examples=examples)
    if res["labelled"]:
        click.echo(f"{split}: official mIoU {res['miou']:.4f} over {res['patches']} patches")
        for row in res["per_class_iou"]:
            iou = "  n/a " if row["iou"] is None else f"{row['iou']:.4f}"
            click.echo(f"  {row['class']:2d} {row['name']:<24} {iou}")
    if predict_dir:
        click.echo(f"predictions written to {predict_dir}")


@command()
@checkpoint_options
@click.option("--out", type=OUTPUT_FOLDER, required=True, help="Folder for the GeoTIFFs.")
@click.option("--probabilities", is_flag=True, help="Also write PROB_<id>.tif.")
@click.option("--tta", is_flag=True, help="Test-time augmentation: mean of 4 flips.")
def predict(ckpt, lake, split, view, batch_size, workers, device, out, probabilities, tta):
    """Predict every patch of a split of LAKE with CKPT into OUT.

    One ``PRED_<id>.tif`` per patch (uint8 classes 0..12, LZW) with the patch's CRS and transform from the lake;
    ``--probabilities`` adds ``PROB_<id>.tif`` (13 bands, softmax x 255); ``--tta`` averages 4 flips. The metric
    is reported too when the split has labels.
    """
    from flair_lake.training.evaluate import evaluate as run_evaluate

    if ckpt is None:
        raise click.UsageError("Missing option '--ckpt'.")
    res = run_evaluate(ckpt, lake, split=split, view=view, predict_dir=out, probabilities=probabilities,
                       batch_size=batch_size, workers=workers, device=device, tta=tta)
    msg = f"wrote {res['patches']} predictions to {out}"
    if res["labelled"]:
        msg += f"; official mIoU {res['miou']:.4f}"
    click.echo(msg)


@command()
@click.argument("run", type=click.Path())
@click.option("-o", "--out", type=OUTPUT_FOLDER, default=None, help="Folder for the PNGs [default: RUN].")
def report(run, out):
    """Render log.csv and iou_<split>.csv of the run folder RUN as PNGs (loss/mIoU curves, per-class IoU bars).

    The confusion matrix and the grid of worst patches are drawn by evaluation (``train`` and ``evaluate``).
    """
    from flair_lake.report import render_run

    for path in render_run(run, out):
        click.echo(f"wrote {path}")
    for path in sorted(Path(run).glob("confusion_*.png")) + sorted(Path(run).glob("examples_*.png")):
        click.echo(f"drawn by evaluation: {path}")


COMMANDS = (train, evaluate, predict, report)
