"""``difflab train-gan``: train the GAN baseline (``objectives.gan``: DCGAN, or the hinge loss with
a spectrally normalised discriminator) into a run directory, or resume one (``--resume``); and
what ``interpolate`` does with a GAN checkpoint (``sample`` draws it by its plan, like any model).

A command of its own beside ``train`` rather than ``train --model gan``: half of train's flags
(schedule, prediction, U-Net shape, preview sampler, min-SNR) mean nothing to a GAN, and its own
(--loss, --z-dim, the widths, Adam's betas) nothing to diffusion; ``train-gan --loss hinge`` reads
like its siblings ``train-evaluator`` and ``train-autoencoder``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from difflab import distributed, viz
from difflab.cli.flags import (
    add_command,
    add_data_flags,
    add_run_flags,
    config_from_flags,
    non_negative_int,
    positive_float,
    positive_int,
    resume_from_flags,
    sampling_request,
)
from difflab.config import GAN_LOSSES, GANConfig, TrainConfig
from difflab.data import load_dataset
from difflab.sampling import LoadedGAN, gan_latents, generate_gan

# What --resume may change: how long to go on, and where.
RESUME_FLAGS = ("epochs", "max_steps", "max_minutes", "device")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "train-gan",
        "Train a GAN baseline on the same data and harness as diffusion: DCGAN (Radford et al. "
        "2016) or the hinge loss with a spectrally normalised discriminator (Miyato et al. "
        "2018). Sample it with difflab sample, score it with difflab evaluate.",
    )
    add_data_flags(p)
    g = GANConfig()
    p.add_argument(
        "--loss", choices=GAN_LOSSES, default=g.loss,
        help="dcgan: non-saturating BCE, BatchNorm discriminator; hinge: hinge loss, spectral "
        "norm in the discriminator",
    )  # fmt: skip
    p.add_argument("--z-dim", type=positive_int, default=g.z_dim, help="length of z")
    p.add_argument(
        "--width", type=positive_int,
        help="channels of both networks at half the image size, doubled at each further halving "
        "(default: by data, so that G + D has about the default U-Net's parameters)",
    )  # fmt: skip
    p.add_argument("--epochs", type=positive_int, help="passes over the data (default: 20)")
    p.add_argument("--max-minutes", type=positive_float, help="stop after this much training time")
    p.add_argument("--max-steps", type=positive_int, help="stop after N steps in all")
    p.add_argument("--batch-size", type=positive_int, default=64, help="real images per step")
    p.add_argument("--lr", type=positive_float, default=2e-4, help="Adam learning rate, G and D")
    p.add_argument("--beta1", type=float, default=g.beta1, help="Adam beta1 (Radford et al.)")
    p.add_argument(
        "--ema-decay", type=float, default=0.999,
        help="EMA of the generator's weights, which sample draws from; 0 = the raw weights",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="initial weights, data order and z")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--sample-every", type=non_negative_int, default=1, help="epochs; 0 = the end")
    p.add_argument("--checkpoint-every", type=non_negative_int, default=1, help="epochs")
    p.add_argument("--keep-checkpoints", type=positive_int, default=3)
    p.add_argument("--num-preview", type=positive_int, default=64, help="images per preview")
    p.add_argument("--num-images", type=positive_int, help="train on the first N images only")
    add_run_flags(p, default_out="runs/gan-<data>", resume_help="continue the GAN run in RUN_DIR")


def cmd_train_gan(args: argparse.Namespace) -> None:
    from difflab.kinds import train
    from difflab.objectives.gan import GAN_TRAIN_DEFAULTS, default_gan_config, gan_run_config

    if args.resume:
        config, dataset, _ = resume_from_flags(args, "train-gan", RESUME_FLAGS)
        out = Path(args.resume)
    else:
        if not 0.0 <= args.ema_decay < 1.0:
            raise ValueError(f"--ema-decay must lie in [0, 1), got {args.ema_decay}")
        if not 0.0 <= args.beta1 < 1.0:
            raise ValueError(f"--beta1 must lie in [0, 1), got {args.beta1}")
        train_cfg = config_from_flags(TrainConfig, args, **{**GAN_TRAIN_DEFAULTS, "lr": args.lr})
        train_cfg.validate()
        dataset = load_dataset(args.data, data_dir=args.data_dir, image_size=args.image_size,
                               seed=args.seed, num_images=args.num_images,
                               vendors=args.vendors)  # fmt: skip
        gan = default_gan_config(args.data, dataset.image_size, dataset.channels, args.loss,
                                 args.z_dim)  # fmt: skip
        if args.width is not None:
            gan = GANConfig(loss=gan.loss, z_dim=gan.z_dim, g_width=args.width, d_width=args.width)
        gan = GANConfig(**{**gan.__dict__, "beta1": args.beta1})
        config = gan_run_config(train_cfg, gan, dataset)
        out = Path(args.out or f"runs/gan-{args.data}")
    # A TrainingInterrupted (Ctrl-C) goes to main(), which prints it and exits with 130.
    result = train(config, dataset, out, resume=bool(args.resume), overwrite=args.overwrite,
                   progress=not args.no_progress)  # fmt: skip
    if distributed.env_rank() == 0:
        print(
            f"trained {result.steps} steps ({result.minutes:.1f} min); loss (D + G) "
            f"{result.first_loss:.4f} -> {result.last_loss:.4f}; run directory {result.run_dir} "
            f"(open report.html); sample with: difflab sample --checkpoint "
            f"{out / 'model_final.safetensors'}"
        )


# What interpolate does with a GAN checkpoint -----------------------------------------------------


def interpolate_gan(args: argparse.Namespace, loaded: LoadedGAN, out: Path) -> None:
    """``difflab interpolate --seeds A,B`` of a GAN: G along the great circle from z_A to z_B
    (slerp, as for diffusion's noises: z ~ N(0, I) lies near a sphere), z_A being the first z
    that ``sample --seed A`` draws."""
    from difflab.editing import slerp
    from difflab.kinds import plan_sampling

    # its plan refuses the flags only diffusion takes (--gif is the walk's, not a trajectory)
    plan_sampling(loaded, sampling_request(args, num_images=args.frames, trajectory=None))
    if not args.seeds or len(args.seeds) != 2 or args.image or args.from_data:
        raise ValueError(
            "a GAN interpolates between the z of two seeds: give --seeds A,B and no input "
            "images (it has no encoder to invert an image)"
        )
    z_dim = loaded.model.z_dim
    z_a, z_b = (gan_latents(1, z_dim, seed) for seed in args.seeds)
    z = torch.cat([slerp(z_a, z_b, k / (args.frames - 1)) for k in range(args.frames)])
    start = time.perf_counter()
    path = generate_gan(loaded.model, num_images=len(z), z=z)  # (frames, C, H, W)
    headers = [f"{k / (args.frames - 1):.2f}" for k in range(args.frames)]
    viz.save_labelled_grid(path[None], out, headers)
    seconds = time.perf_counter() - start
    print(f"wrote {out} ({args.frames} frames, GAN generator, {seconds:.1f} s)")
    if args.gif:
        frames = [path[k : k + 1] for k in [*range(args.frames), *range(args.frames - 2, 0, -1)]]
        print(f"wrote {viz.save_gif(frames, args.gif, duration=0.15, final_hold=1)}")
