"""``difflab train``: train a U-Net and write a run directory, or resume one (``--resume``).

The recipe flags (network shape, optimiser, schedule) default to --preset's values; the rest map
onto ``TrainConfig`` by their names (``flags.config_from_flags``). The training itself is the kind
table's (``difflab.kinds.train``). A new training command (another objective) is a module of its
own beside this one, listed in ``difflab/cli/__init__.py``; flag groups it shares with this one
move to ``flags.py``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from difflab import distributed
from difflab.cli.flags import (
    add_command,
    add_data_flags,
    add_run_flags,
    config_from_flags,
    flags_given,
    int_tuple,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    resume_from_flags,
)
from difflab.config import (
    PRESETS,
    TEXT_ENCODERS,
    DiffusionConfig,
    FlowConfig,
    ModelConfig,
    TrainConfig,
)
from difflab.diffusion import PREDICTIONS
from difflab.flow import TIME_SAMPLINGS
from difflab.samplers import SAMPLERS
from difflab.schedules import SCHEDULES

OBJECTIVES = ("diffusion", "flow")  # what `difflab train` learns (the kinds diffusion and flow)
DDPM_PREDICTIONS = tuple(p for p in PREDICTIONS if p != "flow")  # flow: --objective flow
TEXT_FLAGS = ("text_encoder", "text_width", "text_layers", "cross_attention_levels",
              "cross_positions")  # with --text  # fmt: skip
FROM_PRESET = argparse.SUPPRESS  # the default of a recipe flag: unset, _resolve_recipe fills it

# The train flags a preset may set, with what they are when neither the flag nor the preset is:
# the dataclass defaults, or None for the U-Net's shape (default_model_config picks it by data).
RECIPE_DEFAULTS: dict[str, Any] = {
    **{name: getattr(TrainConfig(), name) for name in
       ("batch_size", "lr", "warmup_steps", "lr_decay", "grad_clip", "ema_decay")},
    **{name: getattr(DiffusionConfig(), name) for name in
       ("timesteps", "schedule", "prediction", "min_snr_gamma")},
    **dict.fromkeys(("base_channels", "channel_mults", "num_res_blocks", "attention_levels",
                     "dropout")),
}  # fmt: skip


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "train",
        "Train a noise-prediction U-Net and write a run directory. The recipe (network shape, "
        "optimiser, schedule) is --preset's; any flag given here overrides its value.",
    )
    # --help lists the flags in this order
    add_data_flags(p)
    _add_recipe_flags(p)
    _add_bookkeeping_flags(p)
    _add_network_flags(p)
    _add_run_flags(p)


def _add_recipe_flags(p: argparse.ArgumentParser) -> None:
    """--preset, the diffusion process, and the optimisation: how long, how fast."""
    d, dd = TrainConfig(), DiffusionConfig()
    p.add_argument(
        "--preset", default="default", choices=PRESETS,
        help="default: difflab's recipe (docs/recipe.md); classic: the tutorials' 64-channel "
        "U-Net with Adam 2e-4, batch 128 and no EMA",
    )  # fmt: skip
    p.add_argument(
        "--timesteps", type=positive_int, default=FROM_PRESET, help=f"T (default: {dd.timesteps})"
    )
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=FROM_PRESET,
        help=f"beta schedule (default: {dd.schedule})",
    )
    p.add_argument(
        "--objective", choices=OBJECTIVES, default="diffusion",
        help="diffusion: DDPM's noising with --prediction's target; flow: flow matching, the "
        "velocity eps - x0 of the straight path x_t = (1 - t) x0 + t eps; every sampler draws "
        "either, and a flow model also takes --sampler euler or heun. On MNIST after 10 "
        "CPU-minutes they tie at 20 evaluations (FID 1.57 flow, 1.59 diffusion) and 8 (1.83, "
        "1.87); diffusion wins at 4 (3.27 against 4.19): docs/flow.md",
    )  # fmt: skip
    p.add_argument(
        "--prediction", choices=DDPM_PREDICTIONS, default=FROM_PRESET,
        help=f"network target of --objective diffusion (default: {dd.prediction})",
    )  # fmt: skip
    p.add_argument(
        "--learn-variance", action="store_true",
        help="--objective diffusion: the U-Net also learns each pixel's reverse-step variance "
        "between beta and beta_tilde, trained with L_simple + 0.001 L_vlb (Nichol & Dhariwal "
        "2021); --sampler ddpm then draws with it unless --variance says otherwise, the other "
        "samplers ignore it (docs/learned_variance.md)",
    )  # fmt: skip
    f = FlowConfig()
    p.add_argument(
        "--time-sampling", choices=TIME_SAMPLINGS, default=f.time_sampling,
        help="--objective flow: how training draws t (SD3's logit-normal, or uniform)",
    )  # fmt: skip
    p.add_argument(
        "--flow-shift", type=positive_float, default=f.shift,
        help="--objective flow: SD3's timestep shift of the euler/heun grid (1 = none)",
    )  # fmt: skip
    p.add_argument(
        "--epochs", type=positive_int, help=f"passes over the data (default: {d.epochs})"
    )
    p.add_argument("--max-minutes", type=positive_float, help="stop after this much training time")
    p.add_argument(
        "--batch-size", type=positive_int, default=FROM_PRESET, help=f"(default: {d.batch_size})"
    )
    p.add_argument(
        "--lr",
        type=positive_float,
        default=FROM_PRESET,
        help=f"peak learning rate, AdamW (default: {d.lr:g})",
    )
    p.add_argument(
        "--warmup-steps", type=non_negative_int, default=FROM_PRESET,
        help=f"(default: {d.warmup_steps})",
    )  # fmt: skip
    p.add_argument(
        "--lr-decay",
        choices=("constant", "cosine"),
        default=FROM_PRESET,
        help=f"(default: {d.lr_decay})",
    )
    p.add_argument(
        "--grad-clip", type=float, default=FROM_PRESET, help=f"0 = off (default: {d.grad_clip:g})"
    )
    p.add_argument(
        "--ema-decay",
        type=float,
        default=FROM_PRESET,
        help=f"0 = no averaging (default: {d.ema_decay:g})",
    )


def _add_bookkeeping_flags(p: argparse.ArgumentParser) -> None:
    """Seed and device, previews and checkpoints, and a subset of the data."""
    d = TrainConfig()
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", help=f"auto, cpu, cuda, cuda:N or mps (default: {d.device})")
    p.add_argument("--sample-every", type=non_negative_int, default=d.sample_every, help="epochs")
    p.add_argument(
        "--checkpoint-every", type=non_negative_int, default=d.checkpoint_every, help="epochs"
    )
    p.add_argument("--keep-checkpoints", type=positive_int, default=d.keep_checkpoints)
    p.add_argument("--preview-sampler", default=d.preview_sampler, choices=SAMPLERS)
    p.add_argument("--preview-steps", type=positive_int, default=d.preview_steps)
    p.add_argument("--num-images", type=positive_int, help="train on the first N images only")


def _add_network_flags(p: argparse.ArgumentParser) -> None:
    """The U-Net's shape (recipe flags: by data unless the preset sets them) and backend."""
    p.add_argument(
        "--base-channels", type=positive_int, default=FROM_PRESET,
        help="U-Net width (default: by image size; 16 with --channel-mults 1,2,4 up to 32 px, "
        "which won the measured searches: FID 11.7 on 32 px colour emoji after 20 CPU-minutes, "
        "29.4 after 5 against 49.7 for the 64-channel network; docs/colour.md, docs/recipe.md)",
    )  # fmt: skip
    p.add_argument(
        "--channel-mults", type=int_tuple, default=FROM_PRESET, help="e.g. 1,2,4 (default: by data)"
    )
    p.add_argument(
        "--num-res-blocks",
        type=positive_int,
        default=FROM_PRESET,
        help="blocks per level (default: by data)",
    )
    p.add_argument(
        "--attention-levels", type=int_tuple, default=FROM_PRESET, help="e.g. 2 (default: by data)"
    )
    p.add_argument(
        "--dropout", type=float, default=FROM_PRESET, help="dropout in residual blocks (default: 0)"
    )
    p.add_argument("--conditional", action="store_true", help="learn a label embedding (classes)")
    p.add_argument(
        "--label-dropout", type=probability, default=TrainConfig().label_dropout,
        help="--conditional or --text: the share of training images whose class or caption is "
        "replaced by the null label or the empty prompt, which classifier-free guidance needs",
    )  # fmt: skip
    p.add_argument(
        "--text", action="store_true",
        help="condition on the data's captions (--data mnist-compose, or emoji-datasource: "
        "its names): a text encoder trained "
        "with the U-Net, and cross-attention to its tokens (docs/text.md); sample with --prompt",
    )  # fmt: skip
    m = ModelConfig()
    p.add_argument(
        "--text-encoder", choices=TEXT_ENCODERS, default=m.text_encoder,
        help="--text: a small transformer (word order matters) or a bag of words (the mean of "
        "the word embeddings: the ablation, blind to order)",
    )  # fmt: skip
    p.add_argument(
        "--text-width", type=positive_int, default=m.text_width, help="--text: encoder width"
    )
    p.add_argument(
        "--text-layers", type=non_negative_int, default=m.text_layers,
        help="--text: transformer layers",
    )  # fmt: skip
    p.add_argument(
        "--cross-attention-levels", type=int_tuple, metavar="LEVELS",
        help="--text: levels (0 = full resolution) with cross-attention after each residual "
        "block, e.g. 1,2 (default: the levels of 8 px or fewer, and the middle: a step half "
        "the cost of 16 and 8 px)",
    )  # fmt: skip
    p.add_argument(
        "--cross-positions", action="store_true",
        help="--text: add a fixed code of each cell's position to the cross-attention blocks' "
        "tokens (off by default: measured no better at 8,000 steps, relation right 48%% of the "
        "time where both digits were drawn, against 52%% without; docs/text.md)",
    )  # fmt: skip
    p.add_argument(
        "--latent", metavar="AUTOENCODER",
        help="latent diffusion: train on the latents of this autoencoder (the model_final."
        "safetensors of difflab train-autoencoder); the U-Net is sized for its latent grid",
    )  # fmt: skip
    p.add_argument(
        "--backend", default="torch", choices=("torch", "numpy"),
        help="torch, or the from-scratch NumPy U-Net (CPU, no autograd)",
    )  # fmt: skip


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """The run directory, resuming, and the stopping, numerics and speed flags."""
    dd = DiffusionConfig()
    add_run_flags(p, default_out="runs/<data>", resume_help="continue the run in RUN_DIR")
    # These flags may also be given with --resume (difflab.training.RESUME_FLAGS); --precision
    # (add_run_flags) too.
    p.add_argument(
        "--max-steps", type=positive_int,
        help="stop after this many steps in all; the LR schedule still spans --epochs, so a run "
        "stopped here and resumed ends with the same weights as one that never stopped",
    )  # fmt: skip
    p.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction,
        help="NHWC memory layout (default: on for a CPU with AVX-512, whose NHWC convolution "
        "kernels are faster, off for other CPUs and GPUs: a fixed rule rather than a start-up "
        "timing, so that the same seed always gives the same weights)",
    )  # fmt: skip
    p.add_argument(
        "--compile", action=argparse.BooleanOptionalAction,
        help="torch.compile the U-Net: a slow first step, faster steps after (default: off)",
    )  # fmt: skip
    p.add_argument(
        "--skip-nonfinite", action="store_true", default=None,
        help="skip a step whose loss or gradient is NaN/inf, with a warning (default: stop)",
    )  # fmt: skip
    p.add_argument(
        "--min-snr-gamma", type=non_negative_float, default=FROM_PRESET,
        help="min-SNR-gamma loss weighting, e.g. 5 (Hang et al. 2023); 0 = off (default: "
        f"{dd.min_snr_gamma or 'off'})",
    )  # fmt: skip


def _resolve_recipe(args: argparse.Namespace) -> None:
    """Fill each recipe flag not given on the command line from --preset, else its default."""
    preset = PRESETS[args.preset]
    for name, default in RECIPE_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, preset.get(name, default))
    if args.min_snr_gamma == 0:
        args.min_snr_gamma = None  # --min-snr-gamma 0: no weighting


def cmd_train(args: argparse.Namespace) -> None:
    from difflab.kinds import train
    from difflab.objectives.diffusion import (
        check_learned_variance,
        model_config_overrides,
        prepare_run,
    )
    from difflab.training import RESUME_FLAGS

    resources: dict[str, Any] = {}
    if args.resume:
        config, dataset, resources = resume_from_flags(args, "train", RESUME_FLAGS)
        out = Path(args.resume)
    else:
        _resolve_recipe(args)
        if not 0.0 <= args.ema_decay < 1.0:
            raise ValueError(f"--ema-decay must lie in [0, 1), got {args.ema_decay}")
        diffusion = DiffusionConfig(
            timesteps=args.timesteps, schedule=args.schedule, prediction=args.prediction,
            min_snr_gamma=args.min_snr_gamma,
        )  # fmt: skip
        overrides = model_config_overrides(
            base_channels=args.base_channels, channel_mults=args.channel_mults,
            num_res_blocks=args.num_res_blocks, attention_levels=args.attention_levels,
            dropout=args.dropout, learn_variance=args.learn_variance,
        )  # fmt: skip
        text_flags = flags_given(args, TEXT_FLAGS)
        if text_flags and not args.text:
            raise ValueError(f"{text_flags[0]} sets up text conditioning: give it with --text")
        if args.text:
            overrides |= model_config_overrides(
                text_encoder=args.text_encoder, text_width=args.text_width,
                text_layers=args.text_layers, cross_attention_levels=args.cross_attention_levels,
                cross_positions=args.cross_positions,
            )  # fmt: skip
        if args.backend == "numpy" and args.precision == "auto":  # NumPy computes in float32
            args.precision, args.precision_reason = "fp32", "auto: the NumPy backend is float32"
        check_learned_variance(
            args.learn_variance, backend=args.backend, latent=bool(args.latent),
            prediction="flow" if args.objective == "flow" else args.prediction,
        )  # fmt: skip
        if args.objective == "flow":
            if args.latent or args.backend != "torch":
                raise ValueError(
                    "--objective flow trains pixel-space models with the torch backend (not "
                    "--latent or --backend numpy yet)"
                )
            diffusion = replace(diffusion, prediction="flow", min_snr_gamma=None)
        if args.latent:  # diffusion on an autoencoder's latents (objectives.latent)
            from difflab.objectives.latent import latent_run_config

            if args.text:
                raise ValueError("--text trains pixel-space models (not --latent yet)")
            if args.backend != "torch":
                raise ValueError("--latent trains with the torch backend only, not --backend numpy")
            if args.image_size:
                raise ValueError("--image-size cannot go with --latent (the autoencoder's is used)")
            config, dataset = latent_run_config(
                args.latent, config_from_flags(TrainConfig, args), diffusion, overrides,
                conditional=args.conditional,
            )  # fmt: skip
        else:
            config, dataset = prepare_run(
                config_from_flags(TrainConfig, args), diffusion, overrides,
                image_size=args.image_size, conditional=args.conditional, backend=args.backend,
                text=args.text,
            )  # fmt: skip
        if args.objective == "flow":  # flow matching (objectives.flow)
            config = replace(
                config, flow=FlowConfig(time_sampling=args.time_sampling, shift=args.flow_shift)
            )
        out = Path(args.out or f"runs/{args.data}")
    # A TrainingInterrupted (Ctrl-C) goes to main(), which prints it and exits with 130.
    result = train(
        config, dataset, out, resume=bool(args.resume), overwrite=args.overwrite,
        progress=not args.no_progress, **resources,
    )  # fmt: skip
    if distributed.env_rank() == 0:  # under torchrun, rank 0 alone prints
        print(
            f"trained {result.steps} steps ({result.minutes:.1f} min); loss "
            f"{result.first_loss:.4f} -> {result.last_loss:.4f}; run directory {result.run_dir} "
            "(open report.html)"
        )
