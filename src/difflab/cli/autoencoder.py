"""``difflab train-autoencoder``: train the KL-regularised autoencoder of latent diffusion
(``objectives.autoencoder``), or resume such a run (``--resume``); then ``difflab train --latent
RUN/model_final.safetensors`` trains diffusion on its latents.

The autoencoder's shape and loss weights map onto ``AutoencoderConfig``, the run onto
``TrainConfig``; the harness gives it the run directory, limits, Ctrl-C and exact resume.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from difflab import distributed
from difflab.cli.flags import (
    add_command,
    add_data_flags,
    add_run_flags,
    config_from_flags,
    int_tuple,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    resume_from_flags,
)
from difflab.config import AutoencoderConfig, TrainConfig

# What --resume may change: how long to go on, and where (difflab.training.RESUME_FLAGS' subset).
RESUME_FLAGS = ("epochs", "max_steps", "max_minutes", "device", "precision")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    a, d = AutoencoderConfig(), TrainConfig()
    p = add_command(
        subparsers,
        "train-autoencoder",
        "Train the autoencoder of latent diffusion (KL-regularised, Rombach et al. 2022): images "
        "to a small latent grid and back. Its report gives the reconstruction PSNR and FID (the "
        "ceiling of latent diffusion) and its checkpoint the latent scale; then train diffusion "
        "on its latents with difflab train --latent RUN/model_final.safetensors.",
    )
    add_data_flags(p, default="mnist")
    p.add_argument("--num-images", type=positive_int, help="train on the first N images only")
    p.add_argument(
        "--latent-channels", type=positive_int, default=a.latent_channels,
        help="channels of the latent grid",
    )  # fmt: skip
    p.add_argument(
        "--channel-mults", type=int_tuple, default=a.channel_mults,
        help="channels per level = base * mult; the latent grid is the padded size / 2^(levels-1)",
    )  # fmt: skip
    p.add_argument("--base-channels", type=positive_int, default=a.base_channels)
    p.add_argument("--num-res-blocks", type=positive_int, default=a.num_res_blocks)
    p.add_argument(
        "--padded-size", type=positive_int,
        help="pad images with -1 to this size before encoding (default: the next multiple of "
        "2^(levels-1), 28 -> 32)",
    )  # fmt: skip
    p.add_argument(
        "--kl-weight", type=non_negative_float, default=a.kl_weight,
        help="KL weight in LDM's units (KL summed over latents vs L1 summed over pixels)",
    )  # fmt: skip
    p.add_argument(
        "--l2-weight", type=non_negative_float, default=a.l2_weight,
        help="weight of the squared error beside the L1 error",
    )  # fmt: skip
    p.add_argument(
        "--epochs", type=positive_int, help=f"passes over the data (default: {d.epochs})"
    )
    p.add_argument("--max-minutes", type=positive_float, help="stop after this much time")
    p.add_argument("--max-steps", type=positive_int, help="stop after N steps in all")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="images per step")
    p.add_argument("--lr", type=positive_float, default=d.lr, help="peak AdamW learning rate")
    p.add_argument("--warmup-steps", type=non_negative_int, default=d.warmup_steps)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="0 = off")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds weights, data order and eps")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--sample-every", type=non_negative_int, default=d.sample_every,
                   help="write a reconstruction preview every N epochs; 0: at the end")  # fmt: skip
    p.add_argument("--checkpoint-every", type=non_negative_int, default=d.checkpoint_every)
    add_run_flags(
        p, default_out="runs/autoencoder-<data>", resume_help="continue an autoencoder run"
    )


def cmd_train_autoencoder(args: argparse.Namespace) -> None:
    from difflab.config import ModelConfig, RunConfig
    from difflab.data import load_dataset
    from difflab.kinds import train
    from difflab.objectives.autoencoder import autoencoder_config_for

    if args.resume:
        config, dataset, _ = resume_from_flags(args, "train-autoencoder", RESUME_FLAGS)
        out = Path(args.resume)
    else:
        train_cfg = config_from_flags(TrainConfig, args)
        train_cfg.validate()
        dataset = load_dataset(
            args.data, data_dir=args.data_dir, image_size=args.image_size, seed=args.seed,
            num_images=args.num_images, vendors=args.vendors,
        )  # fmt: skip
        ac = autoencoder_config_for(
            dataset, latent_channels=args.latent_channels, channel_mults=args.channel_mults,
            base_channels=args.base_channels, num_res_blocks=args.num_res_blocks,
            padded_size=args.padded_size, kl_weight=args.kl_weight, l2_weight=args.l2_weight,
        )  # fmt: skip
        # The U-Net fields describe the data only: an autoencoder run has no U-Net.
        model = ModelConfig(image_size=dataset.image_size, in_channels=dataset.channels)
        config = RunConfig(model=model, train=train_cfg, autoencoder=ac,
                           class_names=dataset.class_names)  # fmt: skip
        out = Path(args.out or f"runs/autoencoder-{args.data}")
    # A TrainingInterrupted (Ctrl-C) goes to main(), which prints it and exits with 130.
    result = train(
        config, dataset, out, resume=bool(args.resume), overwrite=args.overwrite,
        progress=not args.no_progress,
    )  # fmt: skip
    if distributed.env_rank() == 0:
        final = out / "model_final.safetensors"
        print(
            f"trained {result.steps} steps ({result.minutes:.1f} min); loss "
            f"{result.first_loss:.4f} -> {result.last_loss:.4f}; run directory {result.run_dir} "
            f"(open report.html); train latent diffusion with: difflab train --data "
            f"{config.train.data} --latent {final}"
        )
