"""``difflab visualize | train | sample | inpaint | img2img | interpolate | evaluate |
train-evaluator | demo``: the command line.

Flags map onto the fields of the config dataclasses (``difflab.config``). Errors a user can cause
are one line on stderr (``difflab: error: ...``) and exit code 2; nothing half-written is left.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
import torch
from tqdm import tqdm

from difflab import __version__, distributed, viz
from difflab.config import PRESETS, DiffusionConfig, TrainConfig
from difflab.data import DATASETS, load_dataset
from difflab.diffusion import PREDICTIONS
from difflab.editing import MASK_REGIONS
from difflab.generate import (
    TrajectoryRecorder,
    check_guidance,
    class_labels,
    generate,
    load_input_images,
    load_mask,
    load_model,
    model_denoiser,
)
from difflab.samplers import SAMPLERS, SPACINGS, default_steps, timestep_sequence
from difflab.schedules import SCHEDULES, make_schedule

if TYPE_CHECKING:
    from difflab.evaluate import Evaluator

INCEPTION_TRAIN_IMAGES = 10_000  # Inception runs ~18 images/s on 2 cores: 60k would take an hour

EPILOG = """examples:
  difflab demo                                      # train on built-in faces, write every picture
  difflab visualize --data mnist --data-dir DIR     # watch MNIST digits dissolve into noise
  difflab train --data mnist --data-dir DIR --max-minutes 10 --out runs/mnist
  difflab sample --checkpoint runs/mnist/model_final.safetensors --show-intermediate
  difflab train --data mnist --data-dir DIR --conditional --epochs 2 --out runs/mnist-cond
  difflab sample --checkpoint runs/mnist-cond/model_final.safetensors --class-label 7 --guidance 3
  difflab train-evaluator --data mnist --data-dir DIR     # once, then:
  difflab evaluate --checkpoint runs/mnist/model_final.safetensors --num-samples 5000
"""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (and a pointer to --help), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip() != "")
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from err


positive_int.__name__ = "positive integer"
non_negative_int.__name__ = "integer >= 0"
positive_float.__name__ = "positive number"
non_negative_float.__name__ = "number >= 0"
int_tuple.__name__ = "list of integers"


def add_data_flags(p: argparse.ArgumentParser, default: str = "emoji") -> None:
    p.add_argument(
        "--data", default=default, choices=DATASETS, help="dataset (default: %(default)s)"
    )
    p.add_argument(
        "--data-dir",
        help="folder with the dataset's files (mnist / fashion-mnist: IDX .gz files; cifar10: "
        "python batches; folder: images, one subfolder per class). Default: the user cache, "
        "downloading when online",
    )
    p.add_argument(
        "--image-size",
        type=positive_int,
        help="resize images to this size (folder, mnist, cifar10)",
    )


def add_diffusion_flags(p: argparse.ArgumentParser) -> None:
    d = DiffusionConfig()
    p.add_argument("--timesteps", type=positive_int, default=d.timesteps, help="T")
    p.add_argument("--schedule", default=d.schedule, choices=SCHEDULES, help="beta schedule")


def float_tuple(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0,1,3, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one number, got {text!r}")
    return values


def add_sampler_flags(p: argparse.ArgumentParser, default: str) -> None:
    """How to sample a trained model: shared by sample and the editing commands."""
    p.add_argument(
        "--sampler", default=default, choices=SAMPLERS, help="sampling algorithm (docs/samplers.md)"
    )
    p.add_argument(
        "--steps", type=positive_int,
        help="sampling steps (default: all T for ddpm, 50 for ddim, 20 for dpmpp-2m and dpmpp-2m-sde)",
    )  # fmt: skip
    p.add_argument(
        "--spacing", default="trailing", choices=SPACINGS,
        help="which timesteps a respaced sampler visits (docs/samplers.md)",
    )  # fmt: skip
    p.add_argument(
        "--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic, 1 DDPM-like"
    )
    p.add_argument(
        "--variance", default="beta", choices=("beta", "beta_tilde"), help="DDPM sigma^2"
    )


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """Which weights, which class, how much guidance: shared by sample and the editing commands."""
    p.add_argument("--checkpoint", required=True, help="a .safetensors file written by difflab")
    p.add_argument("--no-clip", action="store_true", help="do not clip the predicted x0 to [-1, 1]")
    p.add_argument(
        "--class-label", metavar="LABEL",
        help="class to generate (index or name) with a class-conditional model",
    )  # fmt: skip
    p.add_argument(
        "--guidance", type=float, metavar="W",
        help="classifier-free guidance scale: 0 unconditional, 1 conditional (default), >1 "
        "stronger; try 2-4",
    )  # fmt: skip
    p.add_argument("--raw-weights", action="store_true", help="use raw instead of EMA weights")
    p.add_argument("--seed", type=int, default=0, help="which noise")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")


def add_input_flags(p: argparse.ArgumentParser) -> None:
    """The images to edit: files, or test-set images of the data the model was trained on."""
    p.add_argument("--image", action="append", default=[], metavar="PATH", help="input image file")
    p.add_argument(
        "--from-data", action="append", default=[], type=non_negative_int, metavar="INDEX",
        help="input: image INDEX of the test split of the model's training data",
    )  # fmt: skip


def sampler_options(args: argparse.Namespace, num_timesteps: int) -> dict[str, Any]:
    """The generate()/sample() keywords the sampler flags ask for, checked before any work."""
    steps = args.steps or default_steps(args.sampler, num_timesteps)
    timestep_sequence(num_timesteps, steps, args.spacing)  # a bad --steps fails here
    options: dict[str, Any] = {"sampler": args.sampler, "steps": steps, "spacing": args.spacing}
    if args.sampler == "ddpm":
        options["variance"] = args.variance
    elif args.sampler == "ddim":
        options["eta"] = args.eta
    return options


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends a flag's default, unless it has none or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action) or text


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="difflab",
        description="Denoising diffusion models you can read end to end and train for real.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"difflab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help_text, description=help_text,
            formatter_class=HelpFormatter,
        )  # fmt: skip

    # visualize ------------------------------------------------------------------------------
    p = command(
        "visualize",
        "Pictures of the forward process: images dissolving into noise, and the schedules.",
    )
    add_data_flags(p)
    add_diffusion_flags(p)
    p.add_argument("--num-images", type=positive_int, default=6, help="rows of the grid")
    p.add_argument("--seed", type=int, default=0, help="which images and which noise")
    p.add_argument("--out", default="runs/visualize", help="output folder")

    # train ----------------------------------------------------------------------------------
    from difflab.config import PRECISIONS

    p = command(
        "train",
        "Train a noise-prediction U-Net and write a run directory. The recipe (network shape, "
        "optimiser, schedule) is --preset's; any flag given here overrides its value.",
    )
    add_data_flags(p)
    d, dd = TrainConfig(), DiffusionConfig()
    recipe = argparse.SUPPRESS  # unset recipe flags come from --preset (see _resolve_recipe)
    p.add_argument(
        "--preset", default="default", choices=PRESETS,
        help="default: difflab's recipe (docs/recipe.md); classic: the tutorials' 64-channel "
        "U-Net with Adam 2e-4, batch 128 and no EMA",
    )  # fmt: skip
    p.add_argument(
        "--timesteps", type=positive_int, default=recipe, help=f"T (default: {dd.timesteps})"
    )
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=recipe,
        help=f"beta schedule (default: {dd.schedule})",
    )
    p.add_argument(
        "--prediction", choices=PREDICTIONS, default=recipe,
        help=f"network target (default: {dd.prediction})",
    )  # fmt: skip
    p.add_argument(
        "--epochs", type=positive_int, help=f"passes over the data (default: {d.epochs})"
    )
    p.add_argument("--max-minutes", type=positive_float, help="stop after this much training time")
    p.add_argument(
        "--batch-size", type=positive_int, default=recipe, help=f"(default: {d.batch_size})"
    )
    p.add_argument(
        "--lr",
        type=positive_float,
        default=recipe,
        help=f"peak learning rate, AdamW (default: {d.lr:g})",
    )
    p.add_argument(
        "--warmup-steps", type=non_negative_int, default=recipe, help=f"(default: {d.warmup_steps})"
    )
    p.add_argument(
        "--lr-decay",
        choices=("constant", "cosine"),
        default=recipe,
        help=f"(default: {d.lr_decay})",
    )
    p.add_argument(
        "--grad-clip", type=float, default=recipe, help=f"0 = off (default: {d.grad_clip:g})"
    )
    p.add_argument(
        "--ema-decay",
        type=float,
        default=recipe,
        help=f"0 = no averaging (default: {d.ema_decay:g})",
    )
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
    p.add_argument(
        "--base-channels", type=positive_int, default=recipe, help="U-Net width (default: by data)"
    )
    p.add_argument(
        "--channel-mults", type=int_tuple, default=recipe, help="e.g. 1,2,4 (default: by data)"
    )
    p.add_argument(
        "--num-res-blocks",
        type=positive_int,
        default=recipe,
        help="blocks per level (default: by data)",
    )
    p.add_argument(
        "--attention-levels", type=int_tuple, default=recipe, help="e.g. 2 (default: by data)"
    )
    p.add_argument(
        "--dropout", type=float, default=recipe, help="dropout in residual blocks (default: 0)"
    )
    p.add_argument("--conditional", action="store_true", help="learn a label embedding (classes)")
    p.add_argument(
        "--backend", default="torch", choices=("torch", "numpy"),
        help="torch, or the from-scratch NumPy U-Net (CPU, no autograd)",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="run directory (default: runs/<data>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # Flags that default to None may also be given with --resume (difflab.train.RESUME_FLAGS).
    p.add_argument(
        "--max-steps", type=positive_int,
        help="stop after this many steps in all; the LR schedule still spans --epochs, so a run "
        "stopped here and resumed ends with the same weights as one that never stopped",
    )  # fmt: skip
    p.add_argument(
        "--precision", choices=PRECISIONS,
        help=f"fp32; bf16 autocast (CPU, recent GPUs); fp16 autocast with loss scaling (CUDA) "
        f"(default: {d.precision})",
    )  # fmt: skip
    p.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction,
        help="NHWC memory layout (default: on for CPU, off for GPU)",
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
        "--min-snr-gamma", type=non_negative_float, default=recipe,
        help="min-SNR-gamma loss weighting, e.g. 5 (Hang et al. 2023); 0 = off (default: "
        f"{dd.min_snr_gamma or 'off'})",
    )  # fmt: skip

    # sample ---------------------------------------------------------------------------------
    p = command(
        "sample",
        "Generate images from a trained checkpoint. A class-conditional model gives a grid with "
        "one row per class, or the class chosen by --class-label.",
    )
    add_model_flags(p)
    p.add_argument("--num-images", type=positive_int, default=64)
    # 20 SDE steps: FID within 3% of 1000-step DDPM at 1/60 of its time (docs/samplers.md)
    add_sampler_flags(p, default="dpmpp-2m-sde")
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

    # inpaint, img2img, interpolate ----------------------------------------------------------
    p = command(
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

    p = command(
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

    p = command(
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

    # evaluate -------------------------------------------------------------------------------
    p = command(
        "evaluate",
        "Score generated images against the test split: FID, KID, precision/recall, distance to "
        "the training set and, for class-conditional models, class accuracy (docs/metrics.md).",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="generate from this .safetensors checkpoint")
    source.add_argument(
        "--images", help="score these instead: a folder of images, or a .npz (uint8 or [-1, 1])"
    )
    p.add_argument("--data", choices=DATASETS, help="reference dataset (default: the checkpoint's)")
    p.add_argument("--data-dir", help="its files (default: as recorded by the evaluator)")
    p.add_argument("--num-samples", type=positive_int, default=5000, help="images to generate")
    p.add_argument("--seed", type=int, default=0, help="generation noise and metric subsets")
    p.add_argument(
        "--sampler", default="dpmpp-2m", choices=SAMPLERS, help="thousands of images: a fast one"
    )
    p.add_argument(
        "--steps",
        type=positive_int,
        help="sampling steps (default: ddpm T, ddim 50, dpmpp-2m(-sde) 20)",
    )
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    p.add_argument(
        "--evaluator",
        help="evaluator file (default: ~/.cache/difflab/evaluators/<data>-<size>px.safetensors, "
        "or under $DIFFLAB_CACHE)",
    )
    p.add_argument(
        "--inception-weights",
        metavar="PATH",
        help="score in Inception features instead: pytorch-fid's "
        "pt_inception-2015-12-05-6726825d.pth on disk (never downloaded; ~18 images/s on a "
        "2-core CPU; no class accuracy). See docs/metrics.md",
    )
    p.add_argument(
        "--reference-train-images",
        type=positive_int,
        metavar="N",
        help="training images for the distance-to-train check (default: all of them; "
        f"{INCEPTION_TRAIN_IMAGES} with --inception-weights)",
    )
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per batch")
    p.add_argument("--raw-weights", action="store_true", help="use raw instead of EMA weights")
    p.add_argument("--device", default="auto")
    p.add_argument("--save-images", help="also keep the generated images in this .npz")
    p.add_argument("--out", default="metrics.json", help="JSON report")

    # train-evaluator ------------------------------------------------------------------------
    p = command(
        "train-evaluator",
        "Train the small CNN classifier whose features `difflab evaluate` compares, and cache "
        "the test split's reference statistics beside it.",
    )
    add_data_flags(p, default="mnist")
    p.add_argument(
        "--epochs", type=positive_int, help="passes over the data (default: 3, or >= 1000 steps)"
    )
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=positive_float, default=2e-3, help="peak learning rate (AdamW)")
    p.add_argument("--seed", type=int, default=0, help="initial weights and batch order")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--out", help="evaluator file (default: the user cache, where evaluate looks for it)"
    )
    p.add_argument("--no-progress", action="store_true")

    # demo -----------------------------------------------------------------------------------
    p = command("demo", "Train on built-in data, sample, and write every picture and report.html.")
    p.add_argument("--data", default="emoji", choices=("emoji", "shapes"))
    p.add_argument("--minutes", type=positive_float, default=2.5, help="training time budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/demo", help="run directory (replaced if it exists)")
    p.add_argument("--no-progress", action="store_true")
    return parser


# -------------------------------------------------------------------------------------------------


def cmd_visualize(args: argparse.Namespace) -> None:
    dataset = load_dataset(
        args.data, data_dir=args.data_dir, image_size=args.image_size, seed=args.seed,
        num_images=max(args.num_images, 64),
    )  # fmt: skip
    schedule = make_schedule(args.schedule, args.timesteps)
    out = Path(args.out)
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(
        dataset.num_images, size=min(args.num_images, dataset.num_images), replace=False
    )
    paths = [
        viz.save_forward_process_grid(
            dataset.images[np.sort(pick)], schedule, out / "forward_process.png", generator=rng
        ),
        viz.plot_alpha_bar(
            [make_schedule(name, args.timesteps) for name in SCHEDULES], out / "schedules.png"
        ),
    ]
    for path in paths:
        print(f"wrote {path}")


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


def _resolve_recipe(args: argparse.Namespace) -> None:
    """Fill each recipe flag not given on the command line from --preset, else its default."""
    preset = PRESETS[args.preset]
    for name, default in RECIPE_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, preset.get(name, default))
    if args.min_snr_gamma == 0:
        args.min_snr_gamma = None  # --min-snr-gamma 0: no weighting


def _train_config(args: argparse.Namespace) -> TrainConfig:
    d = TrainConfig()
    return TrainConfig(
        data=args.data, data_dir=args.data_dir, epochs=args.epochs or d.epochs,
        max_minutes=args.max_minutes, max_steps=args.max_steps, batch_size=args.batch_size,
        lr=args.lr, warmup_steps=args.warmup_steps, lr_decay=args.lr_decay,
        grad_clip=args.grad_clip, ema_decay=args.ema_decay, seed=args.seed,
        device=args.device or d.device, sample_every=args.sample_every,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
        preview_sampler=args.preview_sampler, preview_steps=args.preview_steps,
        num_images=args.num_images, precision=args.precision or d.precision,
        channels_last=args.channels_last, compile=bool(args.compile),
        skip_nonfinite=bool(args.skip_nonfinite),
    )  # fmt: skip


def _flags_set(args: argparse.Namespace, ignore: Sequence[str]) -> list[str]:
    """The train flags given with values other than their defaults, as --flag-names."""
    defaults = vars(build_parser().parse_args(["train"]))
    return [
        "--" + name.replace("_", "-")
        for name, value in vars(args).items()
        if name not in ignore and value != defaults.get(name)
    ]


def cmd_train(args: argparse.Namespace) -> None:
    from difflab.checkpoint import load_checkpoint
    from difflab.train import (
        RESUME_FLAGS,
        latest_checkpoint,
        model_config_overrides,
        prepare_run,
        resume_config,
        train,
    )

    if args.resume:
        fixed = _flags_set(args, ignore=[*RESUME_FLAGS, "resume", "no_progress"])
        if fixed:
            allowed = ", ".join("--" + name.replace("_", "-") for name in RESUME_FLAGS)
            raise ValueError(
                f"{fixed[0]} cannot change when a run is resumed (--resume continues with the "
                f"run's own settings; flags it takes: {allowed})"
            )
        out = Path(args.resume)
        ckpt = load_checkpoint(latest_checkpoint(out))
        config = resume_config(ckpt, **{name: getattr(args, name) for name in RESUME_FLAGS})
        tc = config.train
        dataset = load_dataset(
            tc.data, data_dir=tc.data_dir, image_size=config.model.image_size, seed=tc.seed,
            num_images=tc.num_images,
        )  # fmt: skip
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
            dropout=args.dropout,
        )  # fmt: skip
        config, dataset = prepare_run(
            _train_config(args), diffusion, overrides, image_size=args.image_size,
            conditional=args.conditional, backend=args.backend,
        )  # fmt: skip
        out = Path(args.out or f"runs/{args.data}")
    # A TrainingInterrupted (Ctrl-C) goes to main(), which prints it and exits with 130.
    result = train(
        config, dataset, out, resume=bool(args.resume), overwrite=args.overwrite,
        progress=not args.no_progress,
    )  # fmt: skip
    if distributed.env_rank() == 0:  # under torchrun, rank 0 alone prints
        print(
            f"trained {result.steps} steps ({result.minutes:.1f} min); loss "
            f"{result.first_loss:.4f} -> {result.last_loss:.4f}; run directory {result.run_dir} "
            "(open report.html)"
        )


def cmd_sample(args: argparse.Namespace) -> None:
    loaded = load_model(
        args.checkpoint, args.device, ema=not args.raw_weights, backend=args.backend
    )
    config, schedule = loaded.config, loaded.schedule
    out = _check_png(args.out)
    _check_suffix(args.gif, ".gif", "--gif")
    options = sampler_options(args, schedule.num_timesteps)
    guidance = check_guidance(config, args.guidance)
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
    seq = timestep_sequence(schedule.num_timesteps, options["steps"], args.spacing)
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
    what = f"{num_images} images, {args.sampler}, {options['steps']} steps"
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


def _check_png(path: str) -> Path:
    _check_suffix(path, ".png", "--out")
    return Path(path)


def _edit_setup(args: argparse.Namespace) -> tuple[Any, torch.Tensor, Any]:
    """Model, input images and labels for the editing commands (all checked before any work)."""
    loaded = load_model(args.checkpoint, args.device, ema=not args.raw_weights)
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
    gen = torch.Generator(device=loaded.device).manual_seed(args.seed)
    rows = []
    for image in tqdm(images, desc=desc, disable=None, leave=False):
        batch = image.expand(n, *image.shape).to(loaded.device)  # (n, C, H, W)
        y = None if label is None else label.expand(n)
        denoiser = model_denoiser(
            loaded.model, config, loaded.schedule, y, guidance, not args.no_clip
        )
        with torch.no_grad():
            columns = edit(image, denoiser, batch, gen)
        rows.append(torch.cat([image[None], *[c.clamp(-1, 1).cpu() for c in columns]]))
    return torch.stack(rows)  # (inputs, 1 + columns, C, H, W)


def _check_suffix(path: str | None, suffix: str, flag: str) -> None:
    if path is not None and Path(path).suffix.lower() != suffix:
        raise ValueError(f"{flag} {path} must end in {suffix}")


def cmd_inpaint(args: argparse.Namespace) -> None:
    from difflab.editing import inpaint, region_mask

    out = _check_png(args.out)
    loaded, images, (label, guidance) = _edit_setup(args)
    config, schedule, n = loaded.config, loaded.schedule, args.num_images
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

    out = _check_png(args.out)
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

    out = _check_png(args.out)
    _check_suffix(args.gif, ".gif", "--gif")
    if args.frames < 2:
        raise ValueError(f"--frames {args.frames} too few; expected at least 2")
    loaded = load_model(args.checkpoint, args.device, ema=not args.raw_weights)
    config, schedule = loaded.config, loaded.schedule
    timestep_sequence(schedule.num_timesteps, args.steps)  # a bad --steps fails before any work
    y, guidance = _edit_label(loaded, args)
    denoiser = model_denoiser(loaded.model, config, schedule, y, guidance, not args.no_clip)
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
            inverted = ddim_invert(denoiser, ends.to(loaded.device), schedule, steps=args.steps)
        z = [inverted[:1], inverted[1:]]
    start = time.perf_counter()
    with torch.no_grad():
        path = interpolate(
            denoiser, z[0].to(loaded.device), z[1].to(loaded.device), schedule,
            frames=args.frames, steps=args.steps,
        ).clamp(-1, 1).cpu()  # fmt: skip
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


def cmd_demo(args: argparse.Namespace) -> None:
    from difflab.train import prepare_run, train

    out = Path(args.out)
    train_cfg = TrainConfig(
        data=args.data, epochs=1000, max_minutes=args.minutes, batch_size=64, lr=1e-3,
        warmup_steps=100, lr_decay="constant", ema_decay=0.995, seed=args.seed, sample_every=0,
        checkpoint_every=0, num_preview=64, preview_sampler="ddpm", preview_steps=1000,
    )  # fmt: skip
    diffusion = DiffusionConfig()  # the default recipe: cosine, v prediction, min-SNR-5
    config, dataset = prepare_run(train_cfg, diffusion)
    print(f"difflab demo: training on the built-in '{args.data}' set for {args.minutes:g} minutes")
    result = train(config, dataset, out, overwrite=True, progress=not args.no_progress)

    loaded = load_model(out / "model_final.safetensors", "cpu")
    schedule = loaded.schedule
    viz.plot_alpha_bar(
        [make_schedule(n, schedule.num_timesteps) for n in SCHEDULES], out / "schedules.png"
    )
    shown = set(range(schedule.num_timesteps - 1, -1, -100)) | {0}
    recorder = TrajectoryRecorder(lambda i, t: t in shown, num_images=8)
    gif = TrajectoryRecorder(lambda i, t: t % 20 == 0 or i == 0, num_images=16)

    def record(info: dict[str, Any]) -> None:
        recorder(info)
        gif(info)

    images = generate(
        loaded.model, loaded.config, schedule, num_images=16, seed=args.seed + 1,
        sampler="ddpm", callback=record,
    )  # fmt: skip
    viz.save_trajectory_grid([*recorder.frames, (-1, images[:8])], out / "trajectory.png")
    viz.save_denoising_gif(gif.with_x0(images), out / "denoising.gif", nrow=4)
    from difflab.train import write_run_report

    final = sorted((out / "samples").glob("*.png"))[-1]
    report = write_run_report(out, config, result, final)
    print(f"demo finished: open {report}")


def _feature_network(
    args: argparse.Namespace, data: str, size: int, recorded_dir: str | None, device: torch.device
) -> tuple[Evaluator, str | None, int]:
    """The feature network, the reference images' data directory, and the size they are read at.

    The network is difflab's evaluator for the dataset, or Inception with --inception-weights.
    """
    from difflab import evaluate as ev

    if args.inception_weights:  # any image size: Inception resizes to 299
        return (
            ev.load_inception(args.inception_weights, device),
            args.data_dir or recorded_dir,
            size,
        )
    path = args.evaluator or ev.default_evaluator_path(data, size, args.data_dir or recorded_dir)
    hint_dir = args.data_dir or recorded_dir
    hint = f"; train one with: {ev.train_evaluator_command(data, size, hint_dir)}"
    evaluator = ev.load_evaluator(path, device, hint=hint)
    if evaluator.info.get("data") != data:
        raise ValueError(
            f"evaluator {path} was trained on {evaluator.info.get('data')!r}, not on {data!r}"
        )
    data_dir = args.data_dir or evaluator.info.get("data_dir") or recorded_dir
    return evaluator, data_dir, evaluator.config.image_size


def _evaluator_labels(
    evaluator: Evaluator, labels: np.ndarray | None, class_names: Sequence[str], source: str
) -> np.ndarray | None:
    """Labels of scored images as the evaluator numbers its classes (None: no class accuracy)."""
    if evaluator.is_inception:
        return None  # Inception's classes are not the dataset's
    if class_names:  # class subfolders: labels, if they are the evaluator's classes
        names = list(evaluator.info.get("class_names") or ())
        missing = [c for c in class_names if c not in names]
        if missing:
            raise ValueError(
                f"--images {source}: class folders {missing[:5]} are not classes of the "
                f"evaluator ({names[:10]}); put the images in one folder or name the folders "
                "after the classes"
            )
        assert labels is not None  # load_images labels every image of class folders
        labels = np.array([names.index(class_names[i]) for i in labels])
    if labels is not None and labels.max(initial=0) >= evaluator.config.num_classes:
        raise ValueError(
            f"--images {source}: labels up to {labels.max()}, but the evaluator has "
            f"{evaluator.config.num_classes} classes"
        )
    return labels


def cmd_evaluate(args: argparse.Namespace) -> None:
    import json

    from difflab import evaluate as ev
    from difflab.generate import class_labels, pick_device
    from difflab.io import atomic_path, write_text_atomic

    if args.inception_weights and args.evaluator:
        raise ValueError("--evaluator and --inception-weights both given; choose one network")
    start = time.perf_counter()
    setup: dict[str, Any] = {"seed": args.seed}
    labels: np.ndarray | None = None
    if args.checkpoint:
        loaded = load_model(args.checkpoint, args.device, ema=not args.raw_weights)
        config = loaded.config
        data, size = args.data or config.train.data, config.model.image_size
        recorded_dir = config.train.data_dir
        data_seed = config.train.seed if data in ("emoji", "shapes") else 0  # the draw it saw
        if args.num_samples < 2:
            raise ValueError("--num-samples must be at least 2 for FID and KID, got 1")
        if args.guidance is not None:
            check_guidance(config, args.guidance)
        steps = args.steps or default_steps(args.sampler, loaded.schedule.num_timesteps)
        timestep_sequence(loaded.schedule.num_timesteps, steps)  # a bad --steps fails before work
        setup.update(source="checkpoint", checkpoint=str(args.checkpoint), sampler=args.sampler,
                     steps=steps, guidance=args.guidance, ema=not args.raw_weights)  # fmt: skip
    else:
        if args.data is None:
            raise ValueError(
                "--images needs --data, the dataset to compare against (e.g. --data mnist)"
            )
        for flag in ("steps", "guidance"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag} applies to --checkpoint, not to --images")
        images, labels, class_names = ev.load_images(args.images)
        data, size, recorded_dir, data_seed = args.data, images.shape[-1], None, 0
        setup.update(source="images", images=str(args.images))

    evaluator, data_dir, reference_size = _feature_network(
        args, data, size, recorded_dir, pick_device(args.device)
    )
    train_set, test_set = ev.reference_datasets(
        data, data_dir, image_size=reference_size, seed=data_seed
    )
    train_limit = args.reference_train_images
    if train_limit is None and evaluator.is_inception:
        train_limit = INCEPTION_TRAIN_IMAGES
    train_set = ev.subset(train_set, train_limit)

    def announce() -> None:  # Inception features take minutes on a CPU: say what is coming
        if evaluator.is_inception:
            print(
                f"Inception features of {test_set.num_images} test and {train_set.num_images} "
                f"training {data} images: once, cached for later runs ...",
                flush=True,
            )

    reference = ev.reference_statistics(evaluator, train_set, test_set, on_compute=announce)

    if args.checkpoint:
        n = args.num_samples
        label_tensor = class_labels(config, None, n)  # i % num_classes, or None
        if label_tensor is not None and not evaluator.is_inception:
            ev.check_classes(evaluator, config.class_names)
            labels = label_tensor.numpy()
        extra: dict[str, Any] = {} if args.guidance is None else {"guidance": args.guidance}
        print(f"generating {n} images ({args.sampler}, {steps} steps) ...", flush=True)
        gen_start = time.perf_counter()
        images = generate(
            loaded.model, config, loaded.schedule, num_images=n, seed=args.seed,
            sampler=args.sampler, steps=steps, labels=label_tensor, batch_size=args.batch_size,
            **extra,
        ).numpy()  # fmt: skip
        setup["generate_seconds"] = round(time.perf_counter() - gen_start, 2)
        source = str(args.checkpoint)
    else:
        source = str(args.images)
        labels = _evaluator_labels(evaluator, labels, class_names, source)
    images = ev.match_channels(images, evaluator, source)
    evaluator.check_images(images)
    if len(images) < 2:
        raise ValueError(f"{source}: need at least 2 images for FID and KID, got {len(images)}")
    if args.save_images:
        keep = Path(args.save_images)
        if keep.suffix != ".npz":
            raise ValueError(f"--save-images {keep} must end in .npz")
        pixels = np.round((images + 1) * 127.5).clip(0, 255).astype(np.uint8)
        with atomic_path(keep) as tmp, tmp.open("wb") as f:
            np.savez_compressed(f, images=pixels, **({} if labels is None else {"labels": labels}))

    metrics: dict[str, Any] = ev.score_features(
        evaluator.features(images), reference, seed=args.seed
    )
    metrics["class_accuracy"] = (
        None if labels is None else ev.class_accuracy(evaluator, images, labels)
    )
    setup.update(
        data=data, data_dir=None if data_dir is None else str(data_dir), num_images=len(images),
        evaluator=str(evaluator.path), evaluator_test_accuracy=evaluator.info.get("test_accuracy"),
        feature_network="inception" if evaluator.is_inception else "evaluator",
        feature_dim=evaluator.feature_dim, reference_test_images=test_set.num_images,
        reference_train_images=train_set.num_images, reference_cache=str(reference.path),
        k=3, kid_subsets=100, kid_subset_size=min(1000, len(images), test_set.num_images),
        seconds=round(time.perf_counter() - start, 2),
    )  # fmt: skip
    write_text_atomic(args.out, json.dumps({"metrics": metrics, "setup": setup}, indent=2) + "\n")
    print(
        f"{len(images)} images from {source} vs {test_set.num_images} {data} test images, in the "
        f"{evaluator.feature_dim}-d features of {evaluator.path}"
    )
    print(ev.format_table(metrics, data))
    print(f"wrote {args.out}")


def cmd_train_evaluator(args: argparse.Namespace) -> None:
    from difflab import evaluate as ev
    from difflab.generate import pick_device

    device = pick_device(args.device)
    train_set, test_set = ev.reference_datasets(
        args.data, args.data_dir, image_size=args.image_size
    )
    if train_set.num_classes < 2:
        raise ValueError(
            f"the evaluator is a classifier and needs at least 2 classes; {args.data} "
            f"{args.data_dir or ''} has one (a folder needs one subfolder per class)"
        )
    out = Path(
        args.out or ev.default_evaluator_path(args.data, train_set.image_size, args.data_dir)
    )
    epochs = args.epochs or ev.default_epochs(train_set.num_images, args.batch_size)
    print(
        f"training the {args.data} evaluator on {train_set.num_images} images for {epochs} "
        f"epochs ({device}) ...",
        flush=True,
    )
    model, info = ev.train_classifier(
        train_set, test_set, epochs=epochs, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, device=device, progress=not args.no_progress,
    )  # fmt: skip
    data_dir = str(Path(args.data_dir).expanduser().resolve()) if args.data_dir else None
    info.update(data_dir=data_dir, image_size=train_set.image_size)
    ev.save_evaluator(out, model, info)
    reference = ev.reference_statistics(ev.load_evaluator(out, device), train_set, test_set)
    for stale in out.parent.glob(f"{out.stem}.ref-*.safetensors"):
        if stale != reference.path:
            stale.unlink()  # statistics of an evaluator this file no longer holds
    print(
        f"test accuracy {info['test_accuracy']:.2%} on {test_set.num_images} images after "
        f"{info['steps']} steps ({info['train_seconds'] / 60:.1f} min); wrote {out}"
    )
    print(f"reference statistics of the test split: {reference.path}")


COMMANDS = {
    "visualize": cmd_visualize, "train": cmd_train, "sample": cmd_sample, "demo": cmd_demo,
    "evaluate": cmd_evaluate, "train-evaluator": cmd_train_evaluator,
    "inpaint": cmd_inpaint, "img2img": cmd_img2img, "interpolate": cmd_interpolate,
}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``difflab`` console script."""
    args = build_parser().parse_args(argv)
    # Under torchrun, an error that every process raised together is printed by rank 0 alone;
    # another rank's own error names the rank.
    rank = distributed.env_rank()
    who = f"difflab {args.command}" + (f" (rank {rank})" if rank else "")
    try:
        COMMANDS[args.command](args)
    except (ValueError, OSError) as err:
        if distributed.reported_here(err):
            print(f"{who}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C; training's says where it saved a checkpoint
        if rank == 0:  # one line, not one per torchrun process
            print(f"{who}: {stop or 'interrupted'}", file=sys.stderr)
        return 130
    except RuntimeError as err:  # TrainingError and friends: the message says what to do
        if distributed.reported_here(err):
            print(f"{who}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
