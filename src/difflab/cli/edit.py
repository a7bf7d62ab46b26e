"""``difflab inpaint | img2img | interpolate``: the commands that edit input images with a trained
checkpoint, and the set-up they share (model, inputs, label, one grid row per input).

The editing algorithms are ``difflab.editing``'s. A new editing command goes here, as
``_add_<name>(subparsers)`` called from ``add_commands`` and ``cmd_<name>(args)`` listed in
``difflab/cli/__init__.py``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from tqdm import tqdm

from difflab import viz
from difflab.cli.flags import (
    add_command,
    add_input_flags,
    add_model_flags,
    add_sampler_flags,
    check_png,
    check_suffix,
    float_tuple,
    int_tuple,
    positive_int,
    sampler_options,
)
from difflab.editing import MASK_REGIONS
from difflab.kinds import check_denoiser, load_denoiser, load_model
from difflab.samplers import timestep_sequence
from difflab.sampling import (
    LoadedGAN,
    check_guidance,
    class_labels,
    load_input_images,
    load_mask,
    model_denoiser,
)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    _add_inpaint(subparsers)
    _add_img2img(subparsers)
    _add_interpolate(subparsers)


def _add_inpaint(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "inpaint",
        "Regenerate the masked part of images so that it fits the rest (RePaint-style).",
    )
    add_model_flags(p)
    add_input_flags(p)
    p.add_argument("--mask", metavar="PATH", help="mask image: white = regenerate, black = keep")
    p.add_argument(
        "--mask-region", default="center", choices=tuple(MASK_REGIONS),
        help="without --mask: which part to regenerate",
    )  # fmt: skip
    p.add_argument("--num-images", type=positive_int, default=8, help="results per input")
    p.add_argument("--steps", type=positive_int, help="DDPM steps (default: all T)")
    p.add_argument(
        "--resample", type=positive_int, default=1,
        help="RePaint: repeat each step this many times (5-10 blends better, costs as much more)",
    )  # fmt: skip
    p.add_argument(
        "--variance", default="beta", choices=("beta", "beta_tilde"), help="DDPM sigma^2"
    )
    p.add_argument("--out", default="inpaint.png", help="output PNG")


def _add_img2img(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "img2img",
        "Image-to-image (SDEdit): noise the input part of the way, then denoise it.",
    )
    add_model_flags(p)
    add_input_flags(p)
    add_sampler_flags(p, default="ddpm")
    p.add_argument(
        "--strength", type=float_tuple, default=(0.5,), metavar="S[,S...]",
        help="how far to noise the input, in (0, 1]: low keeps the layout, 1 ignores the input",
    )  # fmt: skip
    p.add_argument("--num-images", type=positive_int, default=4, help="results per strength")
    p.add_argument("--out", default="img2img.png", help="output PNG")


def _add_interpolate(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "interpolate",
        "Walk between two images (DDIM-inverted) or two noises along a great circle, decoded "
        "with deterministic DDIM.",
    )
    add_model_flags(p)
    add_input_flags(p)
    p.add_argument(
        "--seeds", type=int_tuple, metavar="A,B", help="interpolate the noises of two seeds instead"
    )
    p.add_argument("--frames", type=positive_int, default=8, help="images along the path")
    p.add_argument("--steps", type=positive_int, default=50, help="DDIM steps (and inversion)")
    p.add_argument("--gif", metavar="PATH", help="also an animated GIF going there and back")
    p.add_argument("--out", default="interpolate.png", help="output PNG")


# Shared set-up ----------------------------------------------------------------------------------


def _edit_setup(args: argparse.Namespace) -> tuple[Any, torch.Tensor, Any]:
    """Model, input images and labels for the editing commands (all checked before any work)."""
    loaded = load_denoiser(args.checkpoint, args.device, ema=not args.raw_weights)
    images = load_input_images(loaded.config, args.image, args.from_data)
    return loaded, images, _edit_label(loaded, args)


def _edit_label(loaded: Any, args: argparse.Namespace) -> tuple[torch.Tensor | None, float]:
    """The (1,) label and guidance scale of an editing command; without --class-label a
    conditional model edits unconditionally (its null label)."""
    guidance = check_guidance(loaded.config, args.guidance)
    if args.class_label is None:
        return None, guidance
    return class_labels(loaded.config, args.class_label, 1).to(loaded.device), guidance


def _edit_each(
    args: argparse.Namespace,
    loaded: Any,
    images: torch.Tensor,
    label: torch.Tensor | None,
    guidance: float,
    edit: Any,
    desc: str,
) -> torch.Tensor:
    """One grid row per input image: the input, then the columns ``edit`` makes from
    ``--num-images`` copies of it. One generator for all, so ``--seed`` fixes every result."""
    n, config = args.num_images, loaded.config
    space = loaded.space  # a latent model edits its images' latents
    gen = torch.Generator(device=loaded.device).manual_seed(args.seed)
    rows = []
    for image in tqdm(images, desc=desc, disable=None, leave=False):
        with torch.no_grad():
            x = space.from_images(image[None].to(loaded.device))[0]  # (C, H, W)
        batch = x.expand(n, *x.shape).to(loaded.device)  # (n, C, H, W)
        y = None if label is None else label.expand(n)
        denoiser = model_denoiser(
            loaded.model, config, loaded.schedule, y, guidance, not args.no_clip and space.clip_x0
        )
        with torch.no_grad():
            columns = edit(image, denoiser, batch, gen)
        rows.append(torch.cat([image[None], *[space.to_images(c) for c in columns]]))
    return torch.stack(rows)  # (inputs, 1 + columns, C, H, W)


# The commands -----------------------------------------------------------------------------------


def cmd_inpaint(args: argparse.Namespace) -> None:
    from difflab.editing import inpaint, region_mask

    out = check_png(args.out)
    loaded, images, (label, guidance) = _edit_setup(args)
    config, schedule, n = loaded.config, loaded.schedule, args.num_images
    if not loaded.space.clip_x0:  # a latent space: its cells are not pixels
        raise ValueError(
            f"{args.checkpoint} is a latent diffusion model, which cannot keep the pixels outside "
            "a mask (a latent cell covers several pixels, and decoding mixes them): use img2img, "
            "or inpaint with a pixel model"
        )
    steps = args.steps or schedule.num_timesteps
    timestep_sequence(schedule.num_timesteps, steps)  # a bad --steps fails before any work
    if args.mask:
        mask = load_mask(args.mask, config)
    else:
        mask = region_mask(args.mask_region, config.model.image_size)
    start = time.perf_counter()

    def edit(image: torch.Tensor, denoiser: Any, batch: torch.Tensor, gen: Any) -> list[Any]:
        result = inpaint(
            denoiser, batch, mask.to(loaded.device), schedule, steps=steps,
            resample=args.resample, variance=args.variance, generator=gen,
        )  # fmt: skip
        return [(image * (1 - mask[0]))[None], result]  # the masked region shown mid-grey

    rows = _edit_each(args, loaded, images, label, guidance, edit, "inpaint")
    headers = ["input", "masked", *[str(k + 1) for k in range(n)]]
    viz.save_labelled_grid(rows, out, headers)
    seconds = time.perf_counter() - start
    print(f"wrote {out} ({len(images)} input(s) x {n} results, {steps} steps x {args.resample}, "
          f"{seconds:.1f} s)")  # fmt: skip


def cmd_img2img(args: argparse.Namespace) -> None:
    from difflab.editing import sdedit

    out = check_png(args.out)
    loaded, images, (label, guidance) = _edit_setup(args)
    schedule, n = loaded.schedule, args.num_images
    options = sampler_options(args, schedule.num_timesteps)
    for s in args.strength:
        if not 0 < s <= 1:
            raise ValueError(f"--strength {s:g} out of range; expected a number in (0, 1]")
    start = time.perf_counter()

    def edit(image: torch.Tensor, denoiser: Any, batch: torch.Tensor, gen: Any) -> list[Any]:
        columns = []
        for s in args.strength:
            result = sdedit(
                denoiser, batch, schedule, strength=s, sampler=options["sampler"],
                steps=options["steps"], eta=options.get("eta", 0.0), generator=gen,
            )  # fmt: skip
            columns.append(result)
        return columns

    rows = _edit_each(args, loaded, images, label, guidance, edit, "img2img")
    headers = ["input", *[f"s={s:g}" for s in args.strength for _ in range(n)]]
    viz.save_labelled_grid(rows, out, headers)
    seconds = time.perf_counter() - start
    print(f"wrote {out} ({len(images)} input(s), strengths {', '.join(f'{s:g}' for s in args.strength)}, "
          f"{n} results each, {args.sampler}, {seconds:.1f} s)")  # fmt: skip


def cmd_interpolate(args: argparse.Namespace) -> None:
    from difflab.editing import ddim_invert, interpolate

    out = check_png(args.out)
    check_suffix(args.gif, ".gif", "--gif")
    if args.frames < 2:
        raise ValueError(f"--frames {args.frames} too few; expected at least 2")
    loaded = load_model(args.checkpoint, args.device, ema=not args.raw_weights)
    if isinstance(loaded, LoadedGAN):  # slerp in z, one generator evaluation per frame
        from difflab.cli.gan import interpolate_gan

        return interpolate_gan(args, loaded, out)
    check_denoiser(loaded)
    config, schedule = loaded.config, loaded.schedule
    timestep_sequence(schedule.num_timesteps, args.steps)  # a bad --steps fails before any work
    y, guidance = _edit_label(loaded, args)
    space = loaded.space  # a latent model walks between latents
    clip = not args.no_clip and space.clip_x0
    denoiser = model_denoiser(loaded.model, config, schedule, y, guidance, clip)
    mc = config.model
    if args.seeds:
        if len(args.seeds) != 2 or args.image or args.from_data:
            raise ValueError("--seeds takes exactly two seeds A,B, and no input images")
        z = [
            torch.randn(1, mc.in_channels, mc.image_size, mc.image_size,
                        generator=torch.Generator().manual_seed(seed))
            for seed in args.seeds
        ]  # fmt: skip
        ends = None
    else:
        ends = load_input_images(config, args.image, args.from_data)
        if len(ends) != 2:
            raise ValueError(f"interpolate needs exactly two input images, got {len(ends)}")
        with torch.no_grad():
            x = space.from_images(ends.to(loaded.device))
            inverted = ddim_invert(denoiser, x, schedule, steps=args.steps)
        z = [inverted[:1], inverted[1:]]
    start = time.perf_counter()
    with torch.no_grad():
        path = interpolate(
            denoiser, z[0].to(loaded.device), z[1].to(loaded.device), schedule,
            frames=args.frames, steps=args.steps,
        )  # fmt: skip
        path = space.to_images(path)
    headers = [f"{k / (args.frames - 1):.2f}" for k in range(args.frames)]
    cells, rows = path[None], None
    if ends is not None:  # the inputs above their reconstructions at both ends
        blank = torch.zeros_like(path[0])
        inputs = torch.stack([ends[0].cpu(), *[blank] * (args.frames - 2), ends[1].cpu()])
        cells, rows = torch.stack([inputs, path]), ["input", "DDIM"]
    viz.save_labelled_grid(cells, out, headers, row_headers=rows)
    seconds = time.perf_counter() - start
    print(f"wrote {out} ({args.frames} frames, {args.steps} DDIM steps, {seconds:.1f} s)")
    if args.gif:
        frames = [path[k : k + 1] for k in [*range(args.frames), *range(args.frames - 2, 0, -1)]]
        print(f"wrote {viz.save_gif(frames, args.gif, duration=0.15, final_hold=1)}")
