"""Seconds per training step of the NumPy U-Net against the PyTorch U-Net on CPU, same process.

Both backends train the same configuration on the same batch (same weights, timesteps and
noise): forward, MSE on eps, backward, Adam step; after a warm-up their steps alternate. Prints
JSON with the median seconds per step of each, their ratio, and whether the NumPy step is within
the target factor (3x) of PyTorch's.

    python benchmarks/bench_numpy_vs_torch.py [--steps 10] [--batch-8 32] [--batch-28 16]
                                              [--threads 1]

Both libraries use every core by default. On a machine shared with other jobs, multi-threaded
BLAS (OpenBLAS for NumPy, oneDNN / OpenMP for PyTorch) can slow down many times over, because
threads spin while waiting for each other; ``--threads 1`` gives steadier numbers there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

from difflab.config import ModelConfig, default_model_config
from difflab.diffusion import diffusion_loss
from difflab.models.unet import UNet
from difflab.nn_numpy import Adam, NumpyUNet, train_step
from difflab.schedules import make_schedule


def median_seconds(steps_by_name: dict, warmup: int, steps: int) -> dict[str, float]:
    """Median seconds per call of each step function, timed in alternation so that a load change
    on a shared machine hits every backend alike."""
    for step in steps_by_name.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for _ in range(steps):
        for name, step in steps_by_name.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_config(name: str, config: ModelConfig, batch: int, warmup: int, steps: int) -> dict:
    rng = np.random.default_rng(0)
    schedule = make_schedule("linear", 1000)
    shape = (batch, config.in_channels, config.image_size, config.image_size)
    x0 = rng.uniform(-1, 1, shape).astype(np.float32)
    eps = rng.standard_normal(shape).astype(np.float32)
    t = rng.integers(0, 1000, batch)

    torch.manual_seed(0)
    torch_model = UNet(config)
    torch_opt = torch.optim.Adam(torch_model.parameters(), lr=1e-4)
    x0_t, eps_t, t_t = torch.from_numpy(x0), torch.from_numpy(eps), torch.from_numpy(t)

    def torch_step() -> None:
        torch_opt.zero_grad(set_to_none=True)
        loss = diffusion_loss(torch_model, x0_t, t_t, eps_t, schedule).mean()
        loss.backward()
        torch_opt.step()

    numpy_model = NumpyUNet(config)
    numpy_model.load_state_dict({k: v.numpy() for k, v in torch_model.state_dict().items()})
    numpy_opt = Adam(numpy_model.named_parameters(), lr=1e-4)

    def numpy_step() -> None:
        train_step(numpy_model, numpy_opt, x0, t, eps, schedule)

    medians = median_seconds({"torch": torch_step, "numpy": numpy_step}, warmup, steps)
    torch_s, numpy_s = medians["torch"], medians["numpy"]
    return {
        "config": name,
        "batch": batch,
        "parameters": numpy_model.num_parameters(),
        "numpy_s_per_step": round(numpy_s, 4),
        "torch_s_per_step": round(torch_s, 4),
        "ratio": round(numpy_s / torch_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per backend")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch-8", type=int, default=32, help="batch for the 8x8 RGB config")
    parser.add_argument("--batch-28", type=int, default=16, help="batch for the 28x28 MNIST config")
    parser.add_argument("--target", type=float, default=3.0, help="allowed numpy / torch ratio")
    parser.add_argument("--threads", type=int, default=None, help="BLAS / torch threads")
    args = parser.parse_args()
    if args.threads is not None:
        wanted = str(args.threads)
        if os.environ.get("OPENBLAS_NUM_THREADS") != wanted:
            # BLAS reads its thread count when NumPy is imported: start again with it set
            for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[var] = wanted
            os.execv(sys.executable, [sys.executable, *sys.argv])
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    results = [
        bench_config(
            "emoji-8x8", default_model_config("emoji", 8, 3), args.batch_8, args.warmup, args.steps
        ),
        bench_config(
            "mnist-28x28",
            default_model_config("mnist", 28, 1),
            args.batch_28,
            args.warmup,
            args.steps,
        ),
    ]
    for r in results:
        r["target_met"] = r["ratio"] <= args.target
    print(
        json.dumps(
            {
                "results": results,
                "target_ratio": args.target,
                "all_targets_met": all(r["target_met"] for r in results),
                "torch_threads": torch.get_num_threads(),
                "blas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
                "cpu_count": os.cpu_count(),
                "load_average_before": load_before,
                "load_average_after": os.getloadavg(),
                "numpy": np.__version__,
                "torch": torch.__version__,
                "machine": platform.machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
