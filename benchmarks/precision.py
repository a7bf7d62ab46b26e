"""Is bf16 faster than fp32 here? The measurements behind ``--precision auto`` (device.py's rule).

In one run, every measurement in turn (round-robin), so that a load change on a shared machine
hits each alike:

- a 2048x2048 matrix product in fp32 and in bf16, as GFLOP/s;
- the training step (autocast forward, loss, backward, gradient clipping, AdamW, EMA) of the
  default MNIST U-Net (``default_model_config("mnist", 28, 1, 0)``, base 16 channels) and of the
  same network at base 32 and 64 channels, in fp32 and under bf16 autocast, on synthetic 28x28
  grey batches, in the memory layout of the default rule (``default_channels_last``), as images/s.

Prints JSON: the machine (CPU model; the flags the rule reads: amx_bf16, amx_tile, avx512_bf16),
what ``auto_precision`` picks there and why, each rate and each bf16 / fp32 ratio. A ratio above
1 on a CPU without AMX, or below 1 on one with it, says that the rule is wrong for that CPU.

    python benchmarks/precision.py [--device cpu] [--batch 64] [--steps 20] [--warmup 2]
                                   [--bases 16,32,64] [--matmul-n 2048] [--threads N] [--quick]

``--quick`` (batch 4, 1 timed step, 1 warm-up, 256x256 products) only checks that it runs: its
numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from bench_train_flags import make_step
from difflab.config import default_model_config
from difflab.device import AMP_DTYPES, auto_precision, cpu_flags, default_channels_last, pick_device
from difflab.models.unet import UNet, count_parameters
from machine import cpu_name, device_name

PRECISIONS = ("fp32", "bf16")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_step(precision: str, n: int, device: torch.device) -> Callable[[], None]:
    """One (n, n) @ (n, n) product in fp32 or bf16, into a preallocated output."""
    dtype = AMP_DTYPES[precision] or torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen, device=device).to(dtype) for _ in range(2))
    out = torch.empty(n, n, dtype=dtype, device=device)

    def step() -> None:
        torch.mm(a, b, out=out)
        synchronize(device)

    return step


def train_step(
    precision: str, base_channels: int, channels_last: bool, device: torch.device, batch: int
) -> Callable[[], None]:
    """One training step of the diffusion objective on a fixed synthetic MNIST-shaped batch
    (bench_train_flags.make_step, uncompiled)."""
    return make_step(precision, channels_last, False, device, batch, base_channels)


def round_robin(steps: dict[str, Callable[[], None]], warmup: int, rounds: int) -> dict:
    """Median seconds of each step: ``warmup`` untimed calls each, then ``rounds`` rounds in which
    every step runs once, in turn."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--batch", type=int, default=64, help="images per training step")
    parser.add_argument("--steps", type=int, default=20, help="timed rounds (each: every row once)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each row first")
    parser.add_argument("--bases", default="16,32,64", help="U-Net base channels to time")
    parser.add_argument("--matmul-n", type=int, default=2048, help="size of the matrix product")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.warmup, args.matmul_n = 4, 1, 1, 256
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    bases = [int(b) for b in args.bases.split(",")]
    channels_last = default_channels_last(device)

    steps: dict[str, Callable[[], None]] = {}
    for precision in PRECISIONS:
        steps[f"matmul_{precision}"] = matmul_step(precision, args.matmul_n, device)
    for base in bases:
        for precision in PRECISIONS:
            steps[f"train_{base}_{precision}"] = train_step(
                precision, base, channels_last, device, args.batch
            )
    seconds = round_robin(steps, args.warmup, args.steps)

    flops = 2 * args.matmul_n**3
    matmul = {f"{p}_gflops": round(flops / seconds[f"matmul_{p}"] / 1e9, 1) for p in PRECISIONS}
    matmul["bf16_vs_fp32"] = round(matmul["bf16_gflops"] / matmul["fp32_gflops"], 3)
    train = {}
    for base in bases:
        config = replace(default_model_config("mnist", 28, 1, 0), base_channels=base)
        row: dict = {"parameters": count_parameters(UNet(config))}
        for p in PRECISIONS:
            row[f"{p}_images_per_s"] = round(args.batch / seconds[f"train_{base}_{p}"], 1)
            row[f"{p}_median_step_s"] = round(seconds[f"train_{base}_{p}"], 5)
        row["bf16_vs_fp32"] = round(row["bf16_images_per_s"] / row["fp32_images_per_s"], 3)
        train[str(base)] = row
    precision, reason = auto_precision(device)
    report = {
        "benchmark": "precision",
        "device": device_name(device),
        "cpu": cpu_name(),
        "cpu_flags": sorted(cpu_flags()),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "auto_precision": {"precision": precision, "reason": reason},
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "matmul": {"n": args.matmul_n, **matmul},
        "train_step": {
            "model": "default_model_config('mnist', 28, 1, 0) at each base_channels",
            "batch": args.batch,
            "channels_last": channels_last,
            "by_base_channels": train,
        },
        "rounds": args.steps,
        "warmup": args.warmup,
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
