"""``difflab sample``: a grid of images from a trained checkpoint, its denoising steps and GIF,
or a guidance sweep.

Commands that start from input images (inpaint, img2img, interpolate) are in ``edit``; a new
way of generating from a checkpoint is a module beside this one, listed in
``difflab/cli/__init__.py``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from difflab import viz
from difflab.cli.flags import (
    add_command,
    add_model_flags,
    add_sampler_flags,
    check_png,
    check_suffix,
    float_tuple,
    positive_int,
    sampling_request,
)
from difflab.kinds import load_model, plan_sampling
from difflab.samplers import DEFAULT_SAMPLER
from difflab.sampling import SamplingPlan, TrajectoryRecorder, execute
from difflab.sampling.plan import GENERATOR, TEXT_GUIDANCE, TEXT_GUIDANCE_EVIDENCE


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "sample",
        "Generate images from a trained checkpoint. A class-conditional model gives a grid with "
        "one row per class, or the class chosen by --class-label; a text model a row per "
        "--prompt.",
    )
    add_model_flags(p)
    p.add_argument(
        "--prompt", action="append", metavar="TEXT",
        help="a text model (train --text): draw a row for this prompt, e.g. \"a red 3 left of "
        "a blue 7\"; give it once per row (--num-images in all, split between the rows); "
        f"--guidance W guides each row against the empty prompt (default {TEXT_GUIDANCE:g}: "
        f"{TEXT_GUIDANCE_EVIDENCE})",
    )  # fmt: skip
    p.add_argument("--num-images", type=positive_int, default=64)
    # 20 SDE steps: FID within 3% of 1000-step DDPM at 1/60 of its time (docs/samplers.md)
    add_sampler_flags(p, default=DEFAULT_SAMPLER)
    p.add_argument("--show-intermediate", action="store_true", help="also a grid of x_t per step")
    p.add_argument(
        "--gif",
        metavar="PATH",
        help="also an animated GIF of the denoising: x_t beside the predicted x0",
    )
    p.add_argument(
        "--guidance-sweep", type=float_tuple, metavar="W,W,...",
        help="instead of samples, a grid with one row per guidance scale (same noise per column)",
    )  # fmt: skip
    p.add_argument(
        "--backend", default="torch", choices=("torch", "numpy"),
        help="run the network in PyTorch or in the from-scratch NumPy U-Net",
    )  # fmt: skip
    p.add_argument("--out", default="samples.png", help="output PNG")


def cmd_sample(args: argparse.Namespace) -> None:
    loaded = load_model(
        args.checkpoint, args.device, ema=not args.raw_weights, backend=args.backend
    )
    out = check_png(args.out)
    request = sampling_request(args, num_images=args.num_images, seed=args.seed, class_rows=True)
    plan = plan_sampling(loaded, request)
    check_suffix(args.gif, ".gif", "--gif")
    if plan.guidance_sweep:
        return _guidance_sweep(loaded, plan, args, out)

    names = list(plan.prompts) or loaded.config.label_names  # the rows' headers
    seq = plan.timesteps
    shown = set(seq[:: max(1, len(seq) // 10)]) | set(seq[-1:])
    recorder = TrajectoryRecorder(lambda i, t: t in shown, num_images=min(8, plan.num_images))
    gif_every = max(1, len(seq) // 40)
    gif = TrajectoryRecorder(lambda i, t: i % gif_every == 0, num_images=min(16, plan.num_images))

    def callback(info: dict[str, Any]) -> None:
        if args.show_intermediate:
            recorder(info)
        if args.gif:
            gif(info)

    start = time.perf_counter()
    images = execute(loaded, plan, callback=callback)
    seconds = time.perf_counter() - start
    if plan.sampler == GENERATOR:
        what = f"{plan.num_images} images, GAN generator, 1 evaluation, {seconds:.1f} s"
    else:
        what = f"{plan.num_images} images, {plan.sampler}, {plan.steps} steps"
        if plan.labels is not None:
            what += f", guidance {plan.shown_guidance:g}"
        what += f", {seconds:.1f} s"
    if plan.rows:
        cells = images.view(len(names), plan.rows, *images.shape[1:])
        viz.save_labelled_grid(cells, out, [""] * plan.rows, row_headers=names)
    else:
        viz.save_grid(images, out)
    print(f"wrote {out} ({what})")
    if args.show_intermediate:
        frames = [*recorder.frames, (-1, images[: recorder.num_images])]
        path = viz.save_trajectory_grid(frames, out.with_name(out.stem + "_intermediate.png"))
        print(f"wrote {path}")
    if args.gif:
        print(f"wrote {viz.save_denoising_gif(gif.with_x0(images), args.gif)}")


def _guidance_sweep(loaded: Any, plan: SamplingPlan, args: argparse.Namespace, out: Path) -> None:
    """One row per guidance scale; columns are classes (or samples of the chosen class), and
    each column keeps its noise across rows, so only the guidance changes down a column."""
    config = loaded.config
    names = config.label_names
    assert plan.labels is not None  # the plan refuses a sweep without classes
    if args.class_label is not None:
        cols = plan.labels[: min(args.num_images, 10)]
    else:
        cols = torch.arange(config.model.num_classes)
    mc = config.model
    gen = torch.Generator().manual_seed(args.seed)
    x_T = torch.randn(len(cols), mc.in_channels, mc.image_size, mc.image_size, generator=gen)
    column = replace(plan, labels=cols, num_images=len(cols), rows=0)
    rows = []
    start = time.perf_counter()
    for w in plan.guidance_sweep:
        rows.append(execute(loaded, column.with_guidance(w), x_T=x_T))
    headers = [names[int(c)] for c in cols]
    viz.save_labelled_grid(
        torch.stack(rows), out, headers, row_headers=[f"w={w:g}" for w in plan.guidance_sweep]
    )
    seconds = time.perf_counter() - start
    print(f"wrote {out} (guidance sweep {args.guidance_sweep}, {seconds:.1f} s)")
