"""difflab against diffusers on one machine, in one process: training, FLOP rate, sampling, memory.

Networks: difflab's default MNIST U-Net (``default_model_config("mnist", 28, 1, 0)``) and a
diffusers ``UNet2DModel`` set up with the same shape: block_out_channels (16, 32, 64), one
ResBlock per level (two on the way up), plain Down/UpBlock2D, a bottleneck with single-head
attention, GroupNorm(8). The two have the same parameter count, so the comparison is between
implementations of one architecture; both counts are printed.

1. Training: images/s of a step (eps-MSE loss at random timesteps, backward, AdamW) on a fixed
   synthetic batch. difflab runs channels_last, as ``difflab train`` does on a CPU; diffusers
   runs both in its default layout (NCHW) and channels_last. After a warm-up the models take
   their steps in turn, together with a 2048x2048 fp32 matmul, so a load change on a shared
   machine hits them all alike.
2. FLOP rate: FLOPs of one real forward+backward counted with
   ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add; convolutions, matmuls and
   attention; no element-wise ops, no optimiser), divided by the median step time, and as a
   share of the matmul's FLOP rate (2 n^3 / median seconds) measured in the same loop.
3. Sampling: wall time and network evaluations per second (images x steps / s) of difflab's
   samplers (``generate``) and diffusers' schedulers driving their own untrained U-Nets (speed
   does not depend on the weights), timed in alternation, median of ``--sample-repeats``.
4. Peak memory: each measurement in a fresh child process of this script (``--child MODE``),
   which resets the kernel's resident-set high-water mark (VmHWM, via /proc/self/clear_refs)
   after imports and set-up, runs the work, and reports the peak RSS and its rise over the RSS
   just before the work. Both libraries share one process for the timings, where the RSS of one
   would hide the other's.

Prints JSON; ``--markdown PATH`` also writes the tables as Markdown.

    python benchmarks/bench_vs_diffusers.py [--batch 64] [--steps 20] [--warmup 3] [--threads N]
        [--num-images 64] [--sample-repeats 3] [--ddpm] [--skip-sampling] [--skip-memory]
        [--markdown PATH] [--quick]

``--quick`` (batch 8, 2 steps, 8 images, one repeat) only checks that everything runs; its
numbers mean nothing. Real numbers need an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from difflab.config import RunConfig, default_model_config
from difflab.diffusion import diffusion_loss
from difflab.models.unet import UNet, count_parameters
from difflab.sampling import generate
from difflab.schedules import make_schedule
from machine import cpu_name

T = 1000  # training timesteps, linear betas 1e-4 .. 0.02 (difflab's default)
IMAGE_SHAPE = (1, 28, 28)  # (C, H, W) of MNIST
MATMUL_N = 2048  # the reference rate: an (n, n) @ (n, n) fp32 matmul
MEMORY_TRAIN_STEPS = 3  # the first step allocates gradients and AdamW state; later ones reuse them
MEMORY_SAMPLE_STEPS = 5  # a sampler holds at most one earlier x0: the peak is reached by step 2

# diffusers' options set to what difflab's samplers do (as in tests/test_samplers_diffusers.py)
SCHEDULERS: dict[str, tuple[type, dict[str, Any]]] = {
    "DDPMScheduler": (DDPMScheduler, dict(clip_sample=True)),
    "DDIMScheduler": (
        DDIMScheduler,
        dict(clip_sample=True, set_alpha_to_one=True, timestep_spacing="trailing"),
    ),
    "DPMSolverMultistepScheduler": (
        DPMSolverMultistepScheduler,
        dict(
            algorithm_type="dpmsolver++",
            solver_order=2,
            solver_type="midpoint",
            lower_order_final=False,
            final_sigmas_type="zero",
            timestep_spacing="trailing",
            thresholding=False,
        ),
    ),
}


def make_scheduler(name: str) -> Any:
    """A fresh diffusers scheduler on difflab's default schedule: linear betas, T = 1000, eps."""
    cls, options = SCHEDULERS[name]
    return cls(
        num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
        prediction_type="epsilon", **options,
    )  # fmt: skip


# DDIM with difflab's clipped x0 recomputes eps from it: diffusers' use_clipped_model_output
STEP_OPTIONS = {"DDIMScheduler": {"eta": 0.0, "use_clipped_model_output": True}}

# (difflab sampler, diffusers scheduler, steps): the pairs timed against each other
SAMPLING = [
    ("ddim", "DDIMScheduler", 50),
    ("dpmpp-2m", "DPMSolverMultistepScheduler", 20),
    ("dpmpp-2m", "DPMSolverMultistepScheduler", 10),
]
DDPM_SAMPLING = ("ddpm", "DDPMScheduler", 1000)  # minutes at 64 images: only with --ddpm


# ---------------------------------------------------------------------------------------------
# The two networks
# ---------------------------------------------------------------------------------------------


def difflab_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(default_model_config("mnist", 28, 1, 0))


_DEFAULT = default_model_config("mnist", 28, 1, 0)
_CHANNELS = tuple(_DEFAULT.base_channels * m for m in _DEFAULT.channel_mults)
DIFFUSERS_CONFIG = dict(
    sample_size=28,  # 28 -> 14 -> 7: two halvings, like difflab's three levels
    in_channels=1,
    out_channels=1,
    block_out_channels=_CHANNELS,  # difflab: base_channels * channel_mults, (16, 32, 64)
    layers_per_block=_DEFAULT.num_res_blocks,  # both add one more ResBlock on the way up
    down_block_types=("DownBlock2D",) * len(_CHANNELS),  # no attention in levels
    up_block_types=("UpBlock2D",) * len(_CHANNELS),
    attention_head_dim=_CHANNELS[-1],  # one head over the bottleneck's channels, like difflab's
    norm_num_groups=_DEFAULT.norm_groups,
)


def diffusers_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(**DIFFUSERS_CONFIG)


def model_fn(name: str, model: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor], Any]:
    """``model_fn(x_t, t) -> eps`` for difflab's loss and FLOP counting."""
    if name == "difflab":
        return model
    return lambda x, t: model(x, t, return_dict=False)[0]


# ---------------------------------------------------------------------------------------------
# FLOP counting and the matmul reference
# ---------------------------------------------------------------------------------------------


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# FlopCounterMode knows the CUDA attention kernels but not the CPU flash kernel that SDPA picks
# for diffusers' attention; without these its attention matmuls would count as zero. (Older
# torch versions lack the kernel, and then have nothing to add.)
CPU_SDPA_FLOPS = {
    getattr(torch.ops.aten, op): formula
    for op, formula in [
        ("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa_flops),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_sdpa_backward_flops),
    ]
    if hasattr(torch.ops.aten, op)
}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (2 per multiply-add) of the convolutions, matmuls and attention that ``fn`` runs."""
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
        fn()
    return counter.get_total_flops()


def make_matmul() -> tuple[Callable[[], None], int]:
    """One fp32 (n, n) @ (n, n) product and its FLOPs, 2 n^3."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(MATMUL_N, MATMUL_N, generator=gen)
    b = torch.randn(MATMUL_N, MATMUL_N, generator=gen)
    out = torch.empty(MATMUL_N, MATMUL_N)
    return lambda: torch.mm(a, b, out=out), 2 * MATMUL_N**3


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


class Trainer:
    """A training step on a fixed synthetic batch: fresh t and eps, eps-MSE, backward, AdamW."""

    def __init__(self, name: str, model: torch.nn.Module, channels_last: bool, batch: int) -> None:
        self.channels_last = channels_last
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(memory_format=self.format).train()
        self.fn = model_fn(name, self.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.schedule = make_schedule("linear", T)
        self.gen = torch.Generator().manual_seed(1)
        self.shape = (batch, *IMAGE_SHAPE)
        x0 = torch.rand(self.shape, generator=self.gen) * 2 - 1  # (B, 1, 28, 28) in [-1, 1]
        self.x0 = x0.contiguous(memory_format=self.format)

    def forward_backward(self) -> None:
        t = torch.randint(0, T, (self.shape[0],), generator=self.gen)  # (B,)
        eps = torch.randn(self.shape, generator=self.gen).contiguous(memory_format=self.format)
        loss = diffusion_loss(self.fn, self.x0, t, eps, self.schedule).mean()
        loss.backward()

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.forward_backward()
        self.optimizer.step()

    def forward(self) -> None:
        t = torch.randint(0, T, (self.shape[0],), generator=self.gen)
        with torch.no_grad():
            self.fn(self.x0, t)


def alternate(steps: dict[str, Callable[[], Any]], warmup: int, repeats: int) -> dict:
    """Seconds per call of each function, called in turn so a load change hits all alike."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def bench_training(batch: int, warmup: int, steps: int) -> dict:
    trainers = {
        "difflab": Trainer("difflab", difflab_unet(), channels_last=True, batch=batch),
        "diffusers": Trainer("diffusers", diffusers_unet(), channels_last=False, batch=batch),
        "diffusers_channels_last": Trainer(
            "diffusers", diffusers_unet(), channels_last=True, batch=batch
        ),
    }
    matmul, matmul_flops = make_matmul()
    # Counted before timing (the counter slows the step it watches); gradients are reset by the
    # next step's zero_grad.
    flops = {name: count_flops(tr.forward_backward) for name, tr in trainers.items()}
    forward_flops = {name: count_flops(tr.forward) for name, tr in trainers.items()}

    timed = {name: tr.step for name, tr in trainers.items()}
    times = alternate({**timed, "matmul": matmul}, warmup, steps)
    matmul_s = statistics.median(times.pop("matmul"))
    matmul_rate = matmul_flops / matmul_s
    results = {}
    for name, ts in times.items():
        median = statistics.median(ts)
        rate = flops[name] / median
        results[name] = {
            "library": name.split("_")[0],
            "layout": "channels_last" if trainers[name].channels_last else "NCHW",
            "images_per_s": round(batch / median, 1),
            "median_step_s": round(median, 4),
            "forward_gflop": round(forward_flops[name] / 1e9, 2),
            "forward_backward_gflop": round(flops[name] / 1e9, 2),
            "gflop_per_s": round(rate / 1e9, 1),
            "share_of_matmul": round(rate / matmul_rate, 3),
        }
    return {
        "batch": batch,
        "steps": steps,
        "warmup": warmup,
        "matmul": {
            "n": MATMUL_N,
            "median_s": round(matmul_s, 4),
            "gflop_per_s": round(matmul_rate / 1e9, 1),
        },
        "results": results,
    }


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def difflab_sampling(model: UNet, sampler: str, steps: int, n: int) -> Callable[[], Any]:
    """``difflab sample``'s path: generate() with an eval-mode network in the default layout."""
    config = RunConfig(model=model.config)  # default diffusion: linear, T = 1000, eps
    schedule = make_schedule("linear", T)
    return lambda: generate(
        model, config, schedule, num_images=n, seed=0, sampler=sampler, steps=steps, batch_size=n
    )


def diffusers_sampling(model: UNet2DModel, scheduler: str, steps: int, n: int) -> Callable:
    """diffusers' pipeline loop: set_timesteps, then (UNet, scheduler.step) per timestep."""
    options = STEP_OPTIONS.get(scheduler, {})

    @torch.no_grad()
    def run() -> torch.Tensor:
        sched = make_scheduler(scheduler)
        sched.set_timesteps(steps)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((n, *IMAGE_SHAPE), generator=gen) * sched.init_noise_sigma
        for t in sched.timesteps:
            eps = model(sched.scale_model_input(x, t), t, return_dict=False)[0]
            x = sched.step(eps, t, x, generator=gen, return_dict=False, **options)[0]
        return x.clamp(-1, 1)

    return run


def bench_sampling(n: int, repeats: int, ddpm: bool, matmul_gflop_per_s: float) -> dict:
    ours, theirs = difflab_unet().eval(), diffusers_unet().eval()
    x = torch.zeros((1, *IMAGE_SHAPE))
    t = torch.tensor([T - 1])
    with torch.no_grad():
        per_image_flops = {
            "difflab": count_flops(lambda: ours(x, t)),
            "diffusers": count_flops(lambda: theirs(x, t, return_dict=False)[0]),
        }
    runs: dict[tuple[str, str, int], Callable[[], Any]] = {}
    for sampler, scheduler, steps in [*SAMPLING, *([DDPM_SAMPLING] if ddpm else [])]:
        runs["difflab", sampler, steps] = difflab_sampling(ours, sampler, steps, n)
        runs["diffusers", scheduler, steps] = diffusers_sampling(theirs, scheduler, steps, n)
    # Warm-up: a 2-step run of each library (first calls allocate and pick kernels).
    difflab_sampling(ours, "dpmpp-2m", 2, n)()
    diffusers_sampling(theirs, "DPMSolverMultistepScheduler", 2, n)()
    times = alternate(runs, warmup=0, repeats=repeats)

    results = []
    for (library, sampler, steps), ts in times.items():
        seconds = statistics.median(ts)
        rate = per_image_flops[library] * n * steps / seconds
        results.append(
            {
                "library": library,
                "sampler": sampler,
                "steps": steps,
                "num_images": n,
                "seconds": round(seconds, 3),
                "network_evals_per_s": round(n * steps / seconds, 1),
                "gflop_per_s": round(rate / 1e9, 1),
                "share_of_matmul": round(rate / 1e9 / matmul_gflop_per_s, 3),
            }
        )
    return {
        "num_images": n,
        "repeats": repeats,
        "forward_gflop_per_image": {k: round(v / 1e9, 4) for k, v in per_image_flops.items()},
        "results": results,
    }


# ---------------------------------------------------------------------------------------------
# Peak memory, one fresh child process per measurement
# ---------------------------------------------------------------------------------------------

CHILD_MODES = ("train-difflab", "train-diffusers", "sample-difflab", "sample-diffusers")


def _status_mb(field: str) -> float | None:
    """A ``Vm*`` line of /proc/self/status in MB (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS; Linux only."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def run_child(mode: str, batch: int, num_images: int) -> dict:
    """Set up, reset the peak, do the work, report the peak: runs inside the child process."""
    action, library = mode.split("-")
    if action == "train":
        model = difflab_unet() if library == "difflab" else diffusers_unet()
        # each library's usual CPU layout: difflab trains channels_last, diffusers NCHW
        trainer = Trainer(library, model, channels_last=library == "difflab", batch=batch)
        work: Callable[[], Any] = trainer.step
        repeats = MEMORY_TRAIN_STEPS
    elif library == "difflab":
        model = difflab_unet().eval()
        work = difflab_sampling(model, "dpmpp-2m", MEMORY_SAMPLE_STEPS, num_images)
        repeats = 1
    else:
        model = diffusers_unet().eval()
        scheduler = "DPMSolverMultistepScheduler"
        work = diffusers_sampling(model, scheduler, MEMORY_SAMPLE_STEPS, num_images)
        repeats = 1
    gc.collect()
    reset = reset_peak_rss()
    before = _status_mb("VmRSS")
    for _ in range(repeats):
        work()
    peak = peak_rss_mb()
    return {
        "mode": mode,
        "peak_rss_mb": round(peak, 1),
        "rss_before_mb": None if before is None else round(before, 1),
        "increase_mb": None if before is None or not reset else round(peak - before, 1),
        "peak_reset_after_setup": reset,
    }


def bench_memory(batch: int, num_images: int, threads: int | None) -> dict:
    results = {}
    for mode in CHILD_MODES:
        cmd = [sys.executable, __file__, "--child", mode, "--batch", str(batch),
               "--num-images", str(num_images)]  # fmt: skip
        if threads:
            cmd += ["--threads", str(threads)]
        print(f"memory: {mode}", file=sys.stderr, flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"child {mode} failed:\n{done.stderr}")
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "method": "fresh child process per row; peak = VmHWM after resetting it post-setup",
        "train_steps": MEMORY_TRAIN_STEPS,
        "sample_steps": MEMORY_SAMPLE_STEPS,
        "batch": batch,
        "num_images": num_images,
        "results": results,
    }


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def targets(report: dict) -> dict:
    """The issue's targets, checked against this run (meaningless with --quick)."""
    share = report["training"]["results"]["difflab"]["share_of_matmul"]
    out: dict[str, Any] = {"training_share_of_matmul_min": 0.75, "training_met": share >= 0.75}
    sampling = report.get("sampling")
    if sampling and sampling["num_images"] == 64:
        fast = [r for r in sampling["results"] if r["library"] == "difflab" and r["steps"] <= 20]
        best = min(fast, key=lambda r: r["seconds"])
        out.update(
            sampling_64_images_max_s=2.0, sampling_best=best, sampling_met=best["seconds"] < 2
        )
    return out


def markdown(report: dict) -> str:
    lines = [
        f"Machine: {report['cpu']}, {report['cpu_count']} cores, torch threads "
        f"{report['threads']}; torch {report['torch']}, diffusers {report['diffusers']}; "
        f"load average {report['load_average_before'][0]:.2f} before, "
        f"{report['load_average_after'][0]:.2f} after."
        + (" **--quick run: not a valid timing.**" if report["quick"] else ""),
        "",
        f"Parameters: difflab {report['parameters']['difflab']:,}, diffusers "
        f"{report['parameters']['diffusers']:,}.",
        "",
    ]
    tr = report["training"]
    mm = tr["matmul"]
    lines += [
        f"Training, batch {tr['batch']}, median of {tr['steps']} steps; "
        f"{mm['n']}x{mm['n']} fp32 matmul: {mm['gflop_per_s']} GFLOP/s.",
        "",
        "| model | layout | images/s | s/step | GFLOP/step (fwd+bwd) | GFLOP/s | share of matmul |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in tr["results"].values():
        lines.append(
            f"| {r['library']} | {r['layout']} | {r['images_per_s']} | "
            f"{r['median_step_s']} | {r['forward_backward_gflop']} | {r['gflop_per_s']} | "
            f"{r['share_of_matmul']:.0%} |"
        )
    if report.get("sampling"):
        sa = report["sampling"]
        lines += [
            "",
            f"Sampling {sa['num_images']} images, median of {sa['repeats']}.",
            "",
            "| library | sampler | steps | seconds | network evals/s | GFLOP/s | share of matmul |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in sa["results"]:
            lines.append(
                f"| {r['library']} | {r['sampler']} | {r['steps']} | {r['seconds']} | "
                f"{r['network_evals_per_s']} | {r['gflop_per_s']} | {r['share_of_matmul']:.0%} |"
            )
    if report.get("memory"):
        me = report["memory"]
        lines += [
            "",
            f"Peak memory (fresh process each; training {me['train_steps']} steps at batch "
            f"{me['batch']}, sampling {me['sample_steps']} DPM-Solver++(2M) steps of "
            f"{me['num_images']} images).",
            "",
            "| measurement | peak RSS (MB) | RSS before the work (MB) | increase (MB) |",
            "|---|---|---|---|",
        ]
        for mode, r in me["results"].items():
            lines.append(
                f"| {mode} | {r['peak_rss_mb']} | {r['rss_before_mb']} | {r['increase_mb']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="training images per step")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--num-images", type=int, default=64, help="images per sampling run")
    parser.add_argument("--sample-repeats", type=int, default=3, help="timed runs per sampler")
    parser.add_argument("--ddpm", action="store_true", help="also time 1000-step DDPM (minutes)")
    parser.add_argument("--skip-sampling", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test only")
    parser.add_argument("--child", choices=CHILD_MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.steps, args.warmup = 8, 2, 1
        args.num_images, args.sample_repeats = 8, 1
    for name in ("batch", "steps", "num_images", "sample_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(run_child(args.child, args.batch, args.num_images)))
        return

    load_before = os.getloadavg()
    print("training", file=sys.stderr, flush=True)
    report: dict[str, Any] = {
        "benchmark": "bench_vs_diffusers",
        "quick": args.quick,
        "valid_timing": not args.quick,
        "parameters": {
            "difflab": count_parameters(difflab_unet()),
            "diffusers": count_parameters(diffusers_unet()),
        },
        "diffusers_config": DIFFUSERS_CONFIG,
        "flop_count": "FlopCounterMode on one real forward+backward (conv, matmul, attention; "
        "2 FLOPs per multiply-add; element-wise ops and AdamW not counted)",
        "training": bench_training(args.batch, args.warmup, args.steps),
    }
    if not args.skip_sampling:
        print("sampling", file=sys.stderr, flush=True)
        matmul_rate = report["training"]["matmul"]["gflop_per_s"]
        report["sampling"] = bench_sampling(
            args.num_images, args.sample_repeats, args.ddpm, matmul_rate
        )
    if not args.skip_memory:
        report["memory"] = bench_memory(args.batch, args.num_images, args.threads)
    report.update(
        targets=targets(report),
        threads=torch.get_num_threads(),
        cpu=cpu_name(),
        cpu_count=os.cpu_count(),
        load_average_before=load_before,
        load_average_after=os.getloadavg(),
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        python=platform.python_version(),
    )
    print(json.dumps(report, indent=2))
    if args.markdown:
        args.markdown.write_text(markdown(report))


if __name__ == "__main__":
    main()
