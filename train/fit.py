"""Train U-T&T on a flair-lake lake: ``python train/fit.py --lake lake.zarr``.

Defaults follow the paper (SGD, lr 0.001, batch 10, up to 100 epochs, early stopping with patience 30 on the
validation loss, best checkpoint by validation loss). CUDA with bf16 autocast and channels_last when present,
CPU otherwise; DDP with ``torchrun --nproc_per_node N train/fit.py ...``. At the end the best checkpoint is
evaluated with the official metric on the validation split and, when it has labels, the test split.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flair_lake import config  # noqa: E402
from flair_lake.cli import _handle_errors  # noqa: E402

D = config.TrainConfig


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--lake", default=config.default_lake, show_default="$FLAIR_LAKE or lake.zarr")
@click.option("--view", default=None, help="Filter view (default: the lake's latest).")
@click.option("--model", default=D.model, show_default=True, help="utt, unet, utae, utt-fpn, utt-deeplabv3.")
@click.option("--epochs", type=int, default=D.epochs, show_default=True)
@click.option("--patience", type=int, default=D.patience, show_default=True)
@click.option("--batch-size", type=int, default=D.batch_size, show_default=True)
@click.option("--lr", type=float, default=D.lr, show_default=True)
@click.option("--optimizer", type=click.Choice(config.OPTIMIZERS), default=D.optimizer, show_default=True)
@click.option("--amp", type=click.Choice(config.AMP_MODES), default=D.amp, show_default=True,
              help="bf16 autocast on CUDA (CPU runs fp32).")
@click.option("--workers", type=int, default=None, help="DataLoader workers (default: cores - 1).")
@click.option("--out", default=D.out, show_default=True, help="Run folder: checkpoints, log.csv, metrics.")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt exactly where it stopped.")
@click.option("--seed", type=int, default=D.seed, show_default=True)
@click.option("--no-augment", is_flag=True, help="No flips or rotations.")
@click.option("--metadata", is_flag=True, help="Feed the encoded aerial metadata (the paper's +MTD).")
@click.option("--encoder-weights", type=click.Path(dir_okay=False, exists=True),
              help="Local ResNet34 state dict (ImageNet weights cannot be downloaded here); default random init.")
@click.option("--baseline-quirks", is_flag=True, help="Collapsed fusion from batch element 0, as the released code.")
@click.option("--train-split", default=D.train_split, show_default=True)
@click.option("--val-split", default=D.val_split, show_default=True)
@click.option("--max-batches", type=int, default=None, help="Cap batches per epoch (quick runs).")
@click.option("--device", default=None, help="cuda or cpu (default: cuda when available).")
@click.option("--no-eval", is_flag=True, help="Skip the final evaluation of the best checkpoint.")
@_handle_errors
def main(lake, view, model, epochs, patience, batch_size, lr, optimizer, amp, workers, out, resume, seed,
         no_augment, metadata, encoder_weights, baseline_quirks, train_split, val_split, max_batches, device,
         no_eval):
    """Train a model on LAKE and evaluate its best checkpoint with the official mIoU."""
    import logging

    from flair_lake.training.evaluate import evaluate
    from flair_lake.training.loop import fit

    logging.basicConfig(level=logging.WARNING)
    cfg = config.TrainConfig(lake=lake, view=view, model=model, epochs=epochs, patience=patience,
                             batch_size=batch_size, lr=lr, optimizer=optimizer, amp=amp, workers=workers, out=out,
                             resume=resume, seed=seed, augment=not no_augment, metadata=metadata,
                             encoder_weights=encoder_weights, baseline_quirks=baseline_quirks,
                             train_split=train_split, val_split=val_split, max_batches=max_batches, device=device)
    summary = fit(cfg)
    import os

    if no_eval or int(os.environ.get("RANK", "0")) != 0:
        return
    best = Path(out) / "best.pt"
    for split in (val_split, "test"):
        try:
            res = evaluate(best, lake, split=split, out_dir=out, workers=workers, device=device)
        except Exception as exc:  # noqa: BLE001 - a lake without that split is not an error here
            click.echo(f"{split}: not evaluated ({exc})")
            continue
        if res["labelled"]:
            click.echo(f"{split}: official mIoU {res['miou']:.4f} on {res['patches']} patches "
                       f"(best epoch {summary['best_epoch']}); reports in {out}")


if __name__ == "__main__":
    main()
