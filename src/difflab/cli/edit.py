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
    sampling_request,
)
from difflab.editing import MASK_REGIONS
from difflab.kinds import load_denoiser, load_model, plan_editing
from difflab.sampling import (
    LoadedGAN,
    SamplingPlan,
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


def _edit_setup(args: argparse.Namespace, sampler: str) -> tuple[Any, torch.Tensor, SamplingPlan]:
    """Model, input images and the edit's plan (``sampler``'s steps, the class and guidance), all
    checked before any work."""
    loaded = load_denoiser(args.checkpoint, args.device, ema=not args.raw_weights)
    images = load_input_images(loaded.config, args.image, args.from_data)
    return loaded, images, _edit_plan(loaded, args, sampler)


def _edit_plan(loaded: Any, args: argparse.Namespace, sampler: str) -> SamplingPlan:
    """The plan of an edit with ``sampler``: without --class-label a conditional model edits
    unconditionally (its null label)."""
    request = sampling_request(args, sampler=sampler, num_images=args.num_images, seed=args.seed)
    return plan_editing(loaded, request)


def _edit_each(
    args: argparse.Namespace,
    loaded: Any,
    images: torch.Tensor,
    plan: SamplingPlan,
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
        y = None if plan.labels is None else plan.labels.to(loaded.device).expand(n)
        denoiser = model_denoiser(
            loaded.model, config, loaded.schedule, y, plan.guidance, plan.clip_x0
        )
        with torch.no_grad():
            columns = edit(image, denoiser, batch, gen)
        rows.append(torch.cat([image[None], *[space.to_images(c) for c in columns]]))
    return torch.stack(rows)  # (inputs, 1 + columns, C, H, W)


# The commands -----------------------------------------------------------------------------------


def cmd_inpaint(args: argparse.Namespace) -> None:
    from difflab.editing import inpaint, region_mask

    out = check_png(args.out)
    loaded, images, plan = _edit_setup(args, "ddpm")  # RePaint's DDPM, all T steps by default
    if args.variance == "learned":
        raise ValueError("inpaint takes --variance beta or beta_tilde (its steps are RePaint's)")
    config, schedule, n, steps = loaded.config, loaded.schedule, args.num_images, plan.steps
    if not loaded.space.pixels:  # a latent model: its cells are not pixels
        raise ValueError(
            f"{args.checkpoint} is a latent diffusion model, which cannot keep the pixels outside "
            "a mask (a latent cell covers several pixels, and decoding mixes them): use img2img, "
            "or inpaint with a pixel model"
        )
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

    rows = _edit_each(args, loaded, images, plan, edit, "inpaint")
    headers = ["input", "masked", *[str(k + 1) for k in range(n)]]
    viz.save_labelled_grid(rows, out, headers)
    seconds = time.perf_counter() - start
    print(f"wrote {out} ({len(images)} input(s) x {n} results, {steps} steps x {args.resample}, "
          f"{seconds:.1f} s)")  # fmt: skip


def cmd_img2img(args: argparse.Namespace) -> None:
    from difflab.editing import sdedit

    out = check_png(args.out)
    loaded, images, plan = _edit_setup(args, args.sampler)
    schedule, n = loaded.schedule, args.num_images
    for s in args.strength:
        if not 0 < s <= 1:
            raise ValueError(f"--strength {s:g} out of range; expected a number in (0, 1]")
    start = time.perf_counter()

    def edit(image: torch.Tensor, denoiser: Any, batch: torch.Tensor, gen: Any) -> list[Any]:
        columns = []
        for s in args.strength:
            result = sdedit(
                denoiser, batch, schedule, strength=s, sampler=plan.sampler, steps=plan.steps,
                eta=plan.eta, generator=gen,
            )  # fmt: skip
            columns.append(result)
        return columns

    rows = _edit_each(args, loaded, images, plan, edit, "img2img")
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
    config, schedule = loaded.config, loaded.schedule
    plan = plan_editing(loaded, sampling_request(args, sampler="ddim", num_images=args.frames))
    y = None if plan.labels is None else plan.labels.to(loaded.device)
    space = loaded.space  # a latent model walks between latents
    denoiser = model_denoiser(loaded.model, config, schedule, y, plan.guidance, plan.clip_x0)
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
