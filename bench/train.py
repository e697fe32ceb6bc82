"""Benchmark training steps/s of U-T&T (or any registered model) on random tensors, no I/O.

    python bench/train.py [--model utt] [--batch 10 32] [--size 512] [--steps 20] [--lake LAKE]

On CUDA it measures fp32 and bf16 autocast + channels_last and prints the ratio against the released
baseline's figures measured on an H100 (docs/benchmarks.md: batch 10 fp32 90.8 samples/s; batch 32 bf16+channels_last
235 samples/s; target >= 2x the fp32 figure at batch 10). With ``--lake`` it also feeds the same model from the
lake loader and prints loader-fed / in-memory throughput. On CPU it runs fp32 only (use a small --size).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine  # noqa: E402

ANCHORS = {(10, "fp32"): 90.8, (10, "bf16"): 147.0, (32, "bf16"): 235.0}  # released baseline, H100, samples/s


def batch_of(b: int, size: int, device, t: int = 12) -> dict:
    """Return a random batch with the loader's keys, already on ``device``."""
    from flair_lake import schema

    return {"aerial": torch.randn(b, 5, size, size, device=device),
            "sentinel": torch.randn(b, t, 10, 40, 40, device=device),
            "dates": torch.arange(t, device=device).repeat(b, 1) * 30,
            "pad_mask": torch.zeros(b, t, dtype=torch.bool, device=device),
            "mtd": torch.randn(b, schema.MTD_DIM, device=device),
            "label": torch.randint(0, 13, (b, size, size), device=device)}


def steps_per_s(model, opt, loss_fn, batches, device, amp: str, steps: int) -> float:
    """Return samples/s over ``steps`` optimizer steps after 3 warm-up steps."""
    from flair_lake.training.loop import forward

    def step(batch):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            loss = loss_fn(forward(model, batch), batch["label"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    it = iter(batches)
    for _ in range(3):
        step(next(it))
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, n = time.perf_counter(), 0
    for _ in range(steps):
        b = next(it)
        step(b)
        n += b["label"].shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="utt")
    ap.add_argument("--batch", type=int, nargs="+", default=[10, 32])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lake", default=None, help="also feed the model from this lake's loader")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    from flair_lake.loader import BatchTransform, make_loader
    from flair_lake.models import create_model
    from flair_lake.training.losses import UTTLoss

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"machine: {machine()}; device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
    modes = ("fp32", "bf16") if device.type == "cuda" else ("fp32",)
    torch.backends.cudnn.benchmark = True
    for b in args.batch:
        for amp in modes:
            model = create_model(args.model).to(device)
            if amp == "bf16":
                model = model.to(memory_format=torch.channels_last)
            opt = torch.optim.SGD(model.parameters(), lr=1e-3)
            loss_fn = UTTLoss().to(device)
            fixed = batch_of(b, args.size, device)
            if amp == "bf16":
                fixed["aerial"] = fixed["aerial"].contiguous(memory_format=torch.channels_last)
            mem = steps_per_s(model, opt, loss_fn, itertools.repeat(fixed), device, amp, args.steps)
            line = f"{args.model} batch {b} {amp}: {mem:.1f} samples/s (in-memory tensors)"
            anchor = ANCHORS.get((b, amp))
            if device.type == "cuda" and anchor and args.size == 512 and args.model == "utt":
                line += f"; released baseline {anchor} -> {mem / anchor:.2f}x"
            if args.lake:
                loader = make_loader(args.lake, split="all", batch_size=b, num_workers=args.workers, drop_last=True)
                tf = BatchTransform({}, channels_last=amp == "bf16")

                def fed(loader, tf):
                    while True:
                        for raw in loader:
                            yield tf(raw, device)

                lake_rate = steps_per_s(model, opt, loss_fn, fed(loader, tf), device, amp, args.steps)
                line += f"; lake-fed {lake_rate:.1f} samples/s = {lake_rate / mem:.2f} of in-memory"
            print(line, flush=True)


if __name__ == "__main__":
    main()
