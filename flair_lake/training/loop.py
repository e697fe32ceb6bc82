"""Fit U-T&T (or any registered model) on a lake view: epochs, validation, checkpoints, early stopping, resume.

CUDA when present (bf16 autocast, channels_last), CPU otherwise; DDP when launched with ``torchrun`` (each rank
reads a disjoint part of every epoch; rank 0 alone writes logs and checkpoints). ``--resume`` restores model,
optimizer, epoch, early-stopping state and random generators from ``last.pt``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from flair_lake import lake as lk
from flair_lake import schema
from flair_lake.config import TrainConfig
from flair_lake.errors import Interrupted, LakeStateError
from flair_lake.loader import BatchTransform, make_loader
from flair_lake.training.checkpoint import CheckpointError, load_weights, read_checkpoint
from flair_lake.training.losses import UTTLoss
from flair_lake.training.metrics import ConfusionMatrix, iou_per_class, miou

log = logging.getLogger(__name__)

LOG_FIELDS = ("epoch", "train_loss", "val_loss", "val_miou", "lr", "seconds", "train_samples_per_s")


@dataclasses.dataclass
class Dist:
    """The process's place in a (possibly single-process) run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(),
                int(os.environ.get("LOCAL_RANK", "0")))


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def forward(model, batch: dict) -> dict:
    """Run a model on a transformed batch (keyword contract of :mod:`flair_lake.models`)."""
    return model(aerial=batch["aerial"], sentinel=batch["sentinel"], dates=batch["dates"],
                 pad_mask=batch["pad_mask"], mtd=batch["mtd"])


def _autocast(device: torch.device, amp: str):
    """Return the autocast context: bf16 on CUDA when asked, else a no-op."""
    enabled = device.type == "cuda" and amp == "bf16"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def build_model(cfg: TrainConfig):
    """Create the configured model; report its size and initialisation."""
    from flair_lake.models import count_parameters, create_model

    model = create_model(cfg.model, use_metadata=cfg.metadata, encoder_weights=cfg.encoder_weights,
                         baseline_quirks=cfg.baseline_quirks)
    return model, count_parameters(model)


def run_epoch(model, loader, transform: BatchTransform, loss_fn, device, cfg: TrainConfig, *,
              optimizer=None, max_batches: int | None = None, progress: bool = False, desc: str = ""):
    """Train (with ``optimizer``) or evaluate one pass; return (mean loss, samples, confusion matrix)."""
    from tqdm import tqdm

    training = optimizer is not None
    model.train(training)
    total, n_batches, samples = 0.0, 0, 0
    cm = ConfusionMatrix(device=device)
    n = len(loader) if max_batches is None else min(len(loader), max_batches)
    bar = tqdm(total=n, desc=desc, unit="batch", disable=not progress, leave=False)
    with torch.set_grad_enabled(training):
        for i, raw in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            batch = transform(raw, device)
            with _autocast(device, cfg.amp):
                out = forward(model, batch)
                loss = loss_fn(out, batch["label"])
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            else:
                cm.update(out["aerial"].argmax(1), batch["label"])
            total += float(loss.detach())
            n_batches += 1
            samples += batch["label"].shape[0]
            bar.update()
    bar.close()
    return total / max(n_batches, 1), samples, cm


def _all_reduce(values: list[float], cm: ConfusionMatrix, dist: Dist) -> tuple[list[float], ConfusionMatrix]:
    """Average scalars and sum confusion matrices over ranks."""
    if dist.world == 1:
        return values, cm
    t = torch.tensor(values, dtype=torch.float64, device=cm.matrix.device)
    torch.distributed.all_reduce(t)
    torch.distributed.all_reduce(cm.matrix)
    return (t / dist.world).tolist(), cm


def fit(cfg: TrainConfig, *, progress: bool | None = None) -> dict:
    """Train ``cfg.model`` on ``cfg.lake`` and return a summary (best epoch, val loss, val mIoU, paths).

    Raises:
        LakeNotFoundError, LakeStateError: missing lake, view or empty split.
        CheckpointError: ``--resume`` with a checkpoint of another model.
    """
    dist, device = _setup_device(cfg)
    seed_everything(cfg.seed)
    progress = dist.main and (progress if progress is not None else os.isatty(2))

    root = lk.open_lake(cfg.lake)
    train_loader, val_loader = _make_loaders(cfg, dist)
    ds = train_loader.dataset
    band_stats = root.attrs.get("band_stats", {})
    channels_last = device.type == "cuda"
    train_tf = BatchTransform(band_stats, augment=cfg.augment, channels_last=channels_last)
    val_tf = BatchTransform(band_stats, augment=False, channels_last=channels_last)

    model, core, n_params = _place_model(cfg, device, dist)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay) if cfg.optimizer == "sgd" \
        else torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay or 0.01)
    loss_fn = UTTLoss().to(device)

    out = Path(cfg.out)
    state = _start_state(cfg, out, core, opt, dist, ds.provenance)
    if dist.main:
        _announce(cfg, out, device, n_params, ds.view, len(ds), len(val_loader.dataset), dist, ds.provenance)

    try:
        _train(cfg, out, model, core, opt, loss_fn, train_loader, val_loader, train_tf, val_tf, state, band_stats,
               device, dist, progress)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM between or inside epochs: last.pt is whole
        if not (out / "last.pt").exists():
            raise Interrupted.of(exc, landed="no epoch had been saved", resume="run the same command again") from None
        raise Interrupted.of(exc, landed=f"the last finished epoch is saved in {out / 'last.pt'}",
                             resume="add --resume to the same command to continue from there") from None
    summary = {"out": str(out), "best_epoch": state["best_epoch"], "best_val_loss": state["best_val_loss"],
               "best_val_miou": state["best_val_miou"], "epochs_run": state["epoch"], "parameters": n_params}
    if dist.world > 1:
        torch.distributed.barrier()
    return summary


def _train(cfg: TrainConfig, out: Path, model, core, opt, loss_fn, train_loader, val_loader, train_tf, val_tf,
           state: dict, band_stats: dict, device: torch.device, dist: Dist, progress: bool) -> None:
    """Run the epochs from ``state['epoch']``: train, validate, log, checkpoint, stop early."""
    ds = train_loader.dataset
    for epoch in range(state["epoch"], cfg.epochs):
        train_loader.batch_sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        tr_loss, tr_n, _ = run_epoch(model, train_loader, train_tf, loss_fn, device, cfg, optimizer=opt,
                                     max_batches=cfg.max_batches, progress=progress, desc=f"epoch {epoch} train")
        va_loss, _, cm = run_epoch(model, val_loader, val_tf, loss_fn, device, cfg, max_batches=cfg.max_batches,
                                   progress=progress, desc=f"epoch {epoch} val")
        (tr_loss, va_loss), cm = _all_reduce([tr_loss, va_loss], cm, dist)
        seconds = time.perf_counter() - t0
        va_miou = miou(cm.numpy())
        improved = _advance(state, epoch, va_loss, va_miou)
        if dist.main:
            row = {"epoch": epoch, "train_loss": round(tr_loss, 5), "val_loss": round(va_loss, 5),
                   "val_miou": round(va_miou, 5), "lr": opt.param_groups[0]["lr"], "seconds": round(seconds, 2),
                   "train_samples_per_s": round(tr_n * dist.world / seconds, 2)}
            _append_csv(out / "log.csv", row)
            _say(f"epoch {epoch}: train loss {tr_loss:.4f}, val loss {va_loss:.4f}, val mIoU {va_miou:.4f}"
                 f"{' (best)' if improved else ''}, {seconds:.1f} s")
            _save_checkpoints(cfg, out, core, opt, state, ds, band_stats, improved)
        if state["bad_epochs"] >= cfg.patience:
            if dist.main:
                _say(f"early stop: no val-loss improvement for {cfg.patience} epochs")
            break


def _setup_device(cfg: TrainConfig) -> tuple[Dist, torch.device]:
    """Return the process's place in the run and its device (CUDA: this rank's GPU, cuDNN autotuning, TF32)."""
    device_name = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dist = setup_distributed(device_name)
    device = torch.device(f"cuda:{dist.local_rank}" if device_name == "cuda" else device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dist, device


def _make_loaders(cfg: TrainConfig, dist: Dist):
    """Return the train and validation loaders of the view (the lake's latest when ``cfg.view`` is None).

    Raises:
        LakeStateError: a split without patches.
    """
    train_loader = make_loader(cfg.lake, view=cfg.view, split=cfg.train_split, batch_size=cfg.batch_size,
                               num_workers=cfg.workers, shuffle=True, distributed=dist.world > 1, seed=cfg.seed,
                               drop_last=False)
    ds = train_loader.dataset
    if len(ds) == 0:
        raise LakeStateError(f"split {cfg.train_split!r} has no patches in {cfg.lake}; ingest its domains "
                             "or choose --train-split")
    val_loader = make_loader(cfg.lake, view=ds.view, split=cfg.val_split, batch_size=cfg.batch_size,
                             num_workers=cfg.workers, shuffle=False, distributed=dist.world > 1, seed=cfg.seed)
    if len(val_loader.dataset) == 0:
        raise LakeStateError(f"split {cfg.val_split!r} has no patches in {cfg.lake}; ingest its domains "
                             "or choose --val-split")
    return train_loader, val_loader


def _place_model(cfg: TrainConfig, device: torch.device, dist: Dist):
    """Return (the model on its device, DDP-wrapped when distributed; the bare model; its parameter count)."""
    model, n_params = build_model(cfg)
    model.to(device)
    if device.type == "cuda":  # channels_last on CUDA, as the batch transform
        model = model.to(memory_format=torch.channels_last)
    if dist.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    core = model.module if dist.world > 1 else model
    return model, core, n_params


def _start_state(cfg: TrainConfig, out: Path, core, opt, dist: Dist, train_provenance: dict) -> dict:
    """Return the training state to start from: fresh, or restored from ``last.pt`` with ``--resume`` (model,
    optimizer, state and random generators). A fresh run drops an earlier run's log.

    Raises:
        CheckpointError: ``last.pt`` holds another model.
    """
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
    state = {"epoch": 0, "best_val_loss": math.inf, "best_epoch": -1, "bad_epochs": 0, "best_val_miou": None}
    if cfg.resume and (out / "last.pt").exists():
        ck = read_checkpoint(out / "last.pt")
        if ck["model_name"] != cfg.model:
            raise CheckpointError(f"{out / 'last.pt'} is a {ck['model_name']!r} checkpoint, not {cfg.model!r}; "
                                  "use the same --model or another --out")
        load_weights(core, ck, out / "last.pt")
        opt.load_state_dict(ck["optimizer"])
        state.update(ck["state"])
        torch.set_rng_state(ck["torch_rng"])
        np.random.set_state(ck["numpy_rng"])
        random.setstate(ck["python_rng"])
        log.info("resumed %s at epoch %d", out / "last.pt", state["epoch"])
        changes = lk.provenance_changes(ck.get("trained_on"), train_provenance)
        if changes and dist.main:
            log.warning("resuming %s on other data than it started on: %s", out / "last.pt", "; ".join(changes))
        if dist.main:
            _truncate_log(out / "log.csv", state["epoch"])
    elif dist.main and (out / "log.csv").exists():  # a fresh start (also --resume before any last.pt)
        (out / "log.csv").unlink()
    return state


def _announce(cfg: TrainConfig, out: Path, device: torch.device, n_params: int, view: str, n_train: int,
              n_val: int, dist: Dist, provenance: dict) -> None:
    """Say what is trained, on what, where (the run's first line), and write its config.json with what it reads
    (``provenance``: the lake's id, its ingest runs, the view generation)."""
    where = "random initialisation (ImageNet weights cannot be downloaded)" if not cfg.encoder_weights \
        else f"weights from {cfg.encoder_weights}"
    _say(f"model {cfg.model}: {n_params / 1e6:.2f} M parameters; encoder {where}; device {device}"
         f"{' bf16 autocast, channels_last' if device.type == 'cuda' and cfg.amp == 'bf16' else ' fp32'}; "
         f"view {view}; train {n_train} / val {n_val} patches; {dist.world} process(es)")
    (out / "config.json").write_text(json.dumps({**dataclasses.asdict(cfg), "trained_on": provenance}, indent=1))


def _advance(state: dict, epoch: int, va_loss: float, va_miou: float) -> bool:
    """Count an epoch into the early-stopping state; return True when its validation loss is the best yet."""
    state["epoch"] = epoch + 1
    improved = va_loss < state["best_val_loss"]
    if improved:
        state.update(best_val_loss=va_loss, best_epoch=epoch, bad_epochs=0, best_val_miou=va_miou)
    else:
        state["bad_epochs"] += 1
    return improved


def _save_checkpoints(cfg: TrainConfig, out: Path, core, opt, state: dict, ds, band_stats: dict,
                      improved: bool) -> None:
    """Write ``last.pt`` (everything ``--resume`` restores), and ``best.pt`` when the epoch improved."""
    ck = {"model_name": cfg.model, "model_kwargs": {"use_metadata": cfg.metadata,
                                                    "baseline_quirks": cfg.baseline_quirks},
          "state_dict": core.state_dict(), "optimizer": opt.state_dict(), "state": dict(state),
          "config": dataclasses.asdict(cfg), "view": ds.provenance["view"], "view_params": ds.view_params,
          "band_stats": band_stats,
          "patch_size": ds.patch_size, "trained_on": ds.provenance, "torch_rng": torch.get_rng_state(),
          "numpy_rng": np.random.get_state(), "python_rng": random.getstate()}
    if improved:  # best.pt first: a kill before last.pt is written redoes the epoch, and writes best.pt again
        _atomic_save(ck, out / "best.pt")
    _atomic_save(ck, out / "last.pt")


def _say(msg: str) -> None:
    """Print a progress line (the trainer's console output) and log it."""
    print(msg, flush=True)
    log.info(msg)


def _append_csv(path: Path, row: dict) -> None:
    """Append one row to the training log, writing the header first."""
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)


def _truncate_log(path: Path, epochs: int) -> None:
    """Keep the log rows of the first ``epochs`` epochs: those a kill after the log, before last.pt, left twice."""
    if not path.exists():
        return
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) < epochs]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        w.writeheader()
        w.writerows(rows)


def _atomic_save(obj, path: Path) -> None:
    """Write a checkpoint through a temporary file, so a kill or a full disk never leaves half a checkpoint.

    Serialised in memory first and written with Python's own I/O: a full disk is then an ``OSError`` (ENOSPC)
    naming the file, where torch's writer only says "unexpected pos".
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(buf.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:
            exc.filename = str(path)
        raise


def iou_table(matrix: np.ndarray) -> list[dict]:
    """Return per-class IoU rows for reports."""
    ious = iou_per_class(matrix)
    return [{"class": i, "name": schema.CLASS_NAMES[i], "iou": None if np.isnan(v) else round(float(v), 5)}
            for i, v in enumerate(ious)]
