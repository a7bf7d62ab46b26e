"""Training throughput (images/s) of the default MNIST U-Net under `difflab train`'s speed flags.

One process, synthetic 28x28 grey images, the default MNIST network
(``default_model_config("mnist", 28, 1, 0)``), and the training loop's step: autocast forward,
loss, backward, gradient clipping, AdamW, EMA. Variants, each with its own copy of the same
initial weights:

    fp32_nchw                  --precision fp32 --no-channels-last
    fp32_channels_last         --precision fp32 --channels-last
    bf16_channels_last         --precision bf16 --channels-last
    compile_channels_last      --precision fp32 --channels-last --compile
    (CUDA only) fp16_channels_last, bf16_compile_channels_last

After a warm-up (which holds torch.compile's compilation, reported as ``warmup_s``) the
variants take their steps in turn, so that a load change on a shared machine hits each alike.
Prints JSON: images/s and median seconds per step of each variant, and the fastest.

``--loop`` adds the row ``loop_default``: the whole training loop, ``difflab.kinds.train`` (the
harness and the diffusion objective: data order, noise draws, the non-finite checks, logging,
progress) with the default flags on synthetic data of the same shape, timed by difference: one
run of ``warmup`` steps and one of ``warmup + steps``, repeated ``--loop-repeats`` times in turn,
so that the fixed costs (set-up, the final preview and report) cancel. Its images/s against the
step alone (the ``fp32_*`` row of the default layout) is what the loop costs. It uses only
``train``'s public API, so the same script times an older checkout too:
``PYTHONPATH=OLD/src python benchmarks/bench_train_flags.py --loop``.

    python benchmarks/bench_train_flags.py [--device cpu] [--batch 64] [--steps 30] [--warmup 3]
                                           [--threads N] [--variants a,b,...] [--quick] [--loop]

``--quick`` (batch 8, 2 steps, 1 warm-up) only checks that every variant runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from difflab.config import DiffusionConfig, RunConfig, TrainConfig, default_model_config
from difflab.data import ImageDataset
from difflab.device import AMP_DTYPES, pick_device
from difflab.diffusion import diffusion_loss
from difflab.kinds import train
from difflab.models.unet import UNet, count_parameters
from difflab.schedules import make_schedule
from difflab.training import update_ema

# name -> (precision, channels_last, compile)
VARIANTS = {
    "fp32_nchw": ("fp32", False, False),
    "fp32_channels_last": ("fp32", True, False),
    "bf16_channels_last": ("bf16", True, False),
    "compile_channels_last": ("fp32", True, True),
}
CUDA_VARIANTS = {
    "fp16_channels_last": ("fp16", True, False),
    "bf16_compile_channels_last": ("bf16", True, True),
}


def make_step(
    precision: str,
    channels_last: bool,
    compile_: bool,
    device: torch.device,
    batch: int,
    base_channels: int | None = None,
) -> Callable[[], None]:
    """One training step of the diffusion objective for this variant, on a fixed synthetic batch
    (the default MNIST U-Net, or at ``base_channels``)."""
    config = default_model_config("mnist", 28, 1, 0)
    if base_channels is not None:
        config = replace(config, base_channels=base_channels)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = UNet(config).to(device, memory_format=memory_format).train()
    ema = UNet(config).to(device, memory_format=memory_format).eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    net = torch.compile(model) if compile_ else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    schedule = make_schedule("linear", 1000)
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (batch, 1, 28, 28)
    x0 = (torch.rand(shape, generator=gen, device=device) * 2 - 1).contiguous(
        memory_format=memory_format
    )
    eps = torch.randn(shape, generator=gen, device=device).contiguous(memory_format=memory_format)
    t = torch.randint(0, 1000, (batch,), generator=gen, device=device)
    amp_dtype = AMP_DTYPES[precision]
    count = [0]

    def step() -> None:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = diffusion_loss(net, x0, t, eps, schedule).mean()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        update_ema(ema, model, 0.999, count[0])
        count[0] += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def time_loop(device: torch.device, batch: int, steps: int, warmup: int, repeats: int) -> dict:
    """images/s of ``difflab.kinds.train`` with the default flags, by the difference of a
    ``warmup``-step run and a ``warmup + steps``-step run (fixed costs cancel)."""
    rng = np.random.default_rng(0)
    n = batch * (warmup + steps)  # one epoch: no epoch-end work inside the timed steps
    images = rng.uniform(-1, 1, (n, 1, 28, 28)).astype(np.float32)
    dataset = ImageDataset(
        name="synthetic", images=images, labels=np.zeros(n, dtype=np.int64), class_names=("all",)
    )
    train_cfg = TrainConfig(
        data="synthetic", epochs=1, batch_size=batch, device=str(device), sample_every=0,
        checkpoint_every=0, num_preview=1, preview_steps=1,
    )  # fmt: skip
    config = RunConfig(
        model=default_model_config("mnist", 28, 1, 0), diffusion=DiffusionConfig(), train=train_cfg
    )
    walls: dict[int, list[float]] = {warmup: [], warmup + steps: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for max_steps in walls:
                run = replace(config, train=replace(config.train, max_steps=max_steps))
                start = time.perf_counter()
                train(run, dataset, Path(tmp) / f"run{r}_{max_steps}", progress=False)
                walls[max_steps].append(time.perf_counter() - start)
    short, long = (statistics.median(w) for w in walls.values())
    return {
        "images_per_s": round(batch * steps / (long - short), 1),
        "median_step_s": round((long - short) / steps, 5),
        "run_s": {str(k): [round(x, 2) for x in v] for k, v in walls.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    parser.add_argument("--batch", type=int, default=64, help="images per step (train default)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--variants", help="comma-separated subset (default: all for the device)")
    parser.add_argument("--quick", action="store_true", help="batch 8, 2 steps: a smoke check")
    parser.add_argument("--loop", action="store_true", help="also time difflab.kinds.train")
    parser.add_argument("--loop-repeats", type=int, default=3, help="runs of each length")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.warmup = 8, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    available = {**VARIANTS, **(CUDA_VARIANTS if device.type == "cuda" else {})}
    names = args.variants.split(",") if args.variants else list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; expected one of {', '.join(available)}")

    steps = {name: make_step(*available[name], device, args.batch) for name in names}
    first_step_s = {}
    for name, step in steps.items():
        start = time.perf_counter()
        for _ in range(args.warmup):
            step()
        first_step_s[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)

    results = {}
    for name in names:
        median = statistics.median(times[name])
        results[name] = {
            "images_per_s": round(args.batch / median, 1),
            "median_step_s": round(median, 5),
            "warmup_s": round(first_step_s[name], 2),
        }
    fastest = max(results, key=lambda n: results[n]["images_per_s"])  # of the flag variants
    if args.loop:
        results["loop_default"] = time_loop(
            device, args.batch, args.steps, args.warmup, args.loop_repeats
        )
    base = results.get("fp32_nchw", {}).get("images_per_s")
    report = {
        "benchmark": "bench_train_flags",
        "model": "default_model_config('mnist', 28, 1, 0)",
        "parameters": count_parameters(UNet(default_model_config("mnist", 28, 1, 0))),
        "device": str(device),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "difflab": str(Path(sys.modules["difflab"].__file__).parent),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "quick": args.quick,
        "variants": results,
        "fastest": fastest,
        "speedup_vs_fp32_nchw": (
            {n: round(r["images_per_s"] / base, 2) for n, r in results.items()} if base else None
        ),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
