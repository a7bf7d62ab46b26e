"""``difflab sample``: a grid of images from a trained checkpoint, its denoising steps and GIF,
or a guidance sweep.

Commands that start from input images (inpaint, img2img, interpolate) are in ``edit``; a new
way of generating from a checkpoint is a module beside this one, listed in
``difflab/cli/__init__.py``.
"""

from __future__ import annotations

import argparse
import time
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
    sampler_options,
)
from difflab.consistency import consistency_timesteps
from difflab.generate import (
    LoadedGAN,
    TrajectoryRecorder,
    check_distilled_sampling,
    check_guidance,
    class_labels,
    generate,
    load_any,
)
from difflab.samplers import DEFAULT_SAMPLER, timestep_sequence


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "sample",
        "Generate images from a trained checkpoint. A class-conditional model gives a grid with "
        "one row per class, or the class chosen by --class-label.",
    )
    add_model_flags(p)
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
    loaded = load_any(args.checkpoint, args.device, ema=not args.raw_weights, backend=args.backend)
    out = check_png(args.out)
    if isinstance(loaded, LoadedGAN):  # one generator evaluation per image
        from difflab.cli.gan import sample_gan

        return sample_gan(args, loaded, out)
    config, schedule = loaded.config, loaded.schedule
    check_suffix(args.gif, ".gif", "--gif")
    distilled = config.consistency or config.progressive
    if distilled is not None:  # a distilled model: its own sampler, a few steps
        if args.guidance_sweep:
            raise ValueError("--guidance-sweep: a distilled model has its guidance baked in")
        sampler, steps = check_distilled_sampling(config, args.steps, args.guidance)
        options: dict[str, Any] = {"steps": steps}
        seq = (
            consistency_timesteps(schedule.num_timesteps, steps)
            if config.consistency is not None
            else timestep_sequence(schedule.num_timesteps, steps)
        )
        guidance = distilled.guidance
    else:
        options = sampler_options(args, schedule.num_timesteps)
        seq = timestep_sequence(schedule.num_timesteps, options["steps"], args.spacing)
        sampler, guidance = args.sampler, check_guidance(config, args.guidance)
    labels = class_labels(config, args.class_label, args.num_images)
    names = list(config.class_names) or [str(k) for k in range(config.model.num_classes)]
    if args.guidance_sweep:
        for w in args.guidance_sweep:
            check_guidance(config, w)
        return _guidance_sweep(loaded, args, options, labels, names, out)

    per_class = 0
    if labels is not None and args.class_label is None:  # a row per class
        per_class = -(-args.num_images // config.model.num_classes)
        labels = torch.arange(config.model.num_classes).repeat_interleave(per_class)
    num_images = len(labels) if labels is not None else args.num_images
    shown = set(seq[:: max(1, len(seq) // 10)]) | {seq[-1]}
    recorder = TrajectoryRecorder(lambda i, t: t in shown, num_images=min(8, num_images))
    gif_every = max(1, len(seq) // 40)
    gif = TrajectoryRecorder(lambda i, t: i % gif_every == 0, num_images=min(16, num_images))

    def callback(info: dict[str, Any]) -> None:
        if args.show_intermediate:
            recorder(info)
        if args.gif:
            gif(info)

    start = time.perf_counter()
    images = generate(
        loaded.model, config, schedule, num_images=num_images, seed=args.seed, labels=labels,
        guidance=guidance, clip_x0=not args.no_clip, callback=callback, **options,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    what = f"{num_images} images, {sampler}, {options['steps']} steps"
    if labels is not None:
        what += f", guidance {guidance:g}"
    if per_class:
        cells = images.view(config.model.num_classes, per_class, *images.shape[1:])
        viz.save_labelled_grid(cells, out, [""] * per_class, row_headers=names)
    else:
        viz.save_grid(images, out)
    print(f"wrote {out} ({what}, {seconds:.1f} s)")
    if args.show_intermediate:
        frames = [*recorder.frames, (-1, images[: recorder.num_images])]
        path = viz.save_trajectory_grid(frames, out.with_name(out.stem + "_intermediate.png"))
        print(f"wrote {path}")
    if args.gif:
        print(f"wrote {viz.save_denoising_gif(gif.with_x0(images), args.gif)}")


def _guidance_sweep(
    loaded: Any,
    args: argparse.Namespace,
    options: dict[str, Any],
    labels: torch.Tensor | None,
    names: list[str],
    out: Path,
) -> None:
    """One row per guidance scale; columns are classes (or samples of the chosen class), and
    each column keeps its noise across rows, so only the guidance changes down a column."""
    config = loaded.config
    if labels is None:
        raise ValueError("--guidance-sweep needs a class-conditional model")
    cols = labels[: min(args.num_images, 10)] if args.class_label is not None else None
    if cols is None:
        cols = torch.arange(config.model.num_classes)
    mc = config.model
    gen = torch.Generator().manual_seed(args.seed)
    x_T = torch.randn(len(cols), mc.in_channels, mc.image_size, mc.image_size, generator=gen)
    rows = []
    start = time.perf_counter()
    for w in args.guidance_sweep:
        images = generate(
            loaded.model, config, loaded.schedule, num_images=len(cols), seed=args.seed,
            labels=cols, guidance=w, x_T=x_T, clip_x0=not args.no_clip, **options,
        )  # fmt: skip
        rows.append(images)
    headers = [names[int(c)] for c in cols]
    viz.save_labelled_grid(
        torch.stack(rows), out, headers, row_headers=[f"w={w:g}" for w in args.guidance_sweep]
    )
    seconds = time.perf_counter() - start
    print(f"wrote {out} (guidance sweep {args.guidance_sweep}, {seconds:.1f} s)")
