"""``difflab visualize | train | sample | demo``: the command line.

Flags map onto the fields of the config dataclasses (``difflab.config``). Errors a user can cause
are one line on stderr (``difflab: error: ...``) and exit code 2; nothing half-written is left.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from difflab import __version__, viz
from difflab.config import DiffusionConfig, TrainConfig
from difflab.data import DATASETS, load_dataset
from difflab.diffusion import PREDICTIONS
from difflab.generate import TrajectoryRecorder, generate, load_model
from difflab.samplers import SAMPLERS, timestep_sequence
from difflab.schedules import SCHEDULES, make_schedule

EPILOG = """examples:
  difflab demo                                      # train on built-in faces, write every picture
  difflab visualize --data mnist --data-dir DIR     # watch MNIST digits dissolve into noise
  difflab train --data mnist --data-dir DIR --max-minutes 10 --out runs/mnist
  difflab sample --checkpoint runs/mnist/model_final.safetensors --show-intermediate
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
    p.add_argument("--timesteps", type=positive_int, default=1000, help="T (default: %(default)s)")
    p.add_argument("--schedule", default="linear", choices=SCHEDULES, help="beta schedule")


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
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
    p = command("train", "Train a noise-prediction U-Net and write a run directory.")
    add_data_flags(p)
    add_diffusion_flags(p)
    d = TrainConfig()
    p.add_argument("--prediction", default="eps", choices=PREDICTIONS, help="network target")
    p.add_argument(
        "--epochs", type=positive_int, help=f"passes over the data (default: {d.epochs})"
    )
    p.add_argument("--max-minutes", type=positive_float, help="stop after this much training time")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    p.add_argument("--lr", type=positive_float, default=d.lr, help="peak learning rate (AdamW)")
    p.add_argument("--warmup-steps", type=non_negative_int, default=d.warmup_steps)
    p.add_argument("--lr-decay", default=d.lr_decay, choices=("constant", "cosine"))
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="0 = off")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--sample-every", type=non_negative_int, default=d.sample_every, help="epochs")
    p.add_argument(
        "--checkpoint-every", type=non_negative_int, default=d.checkpoint_every, help="epochs"
    )
    p.add_argument("--keep-checkpoints", type=positive_int, default=d.keep_checkpoints)
    p.add_argument("--preview-sampler", default=d.preview_sampler, choices=SAMPLERS)
    p.add_argument("--preview-steps", type=positive_int, default=d.preview_steps)
    p.add_argument("--num-images", type=positive_int, help="train on the first N images only")
    p.add_argument("--base-channels", type=positive_int, help="U-Net width (default: by data)")
    p.add_argument("--channel-mults", type=int_tuple, help="e.g. 1,2,4 (default: by data)")
    p.add_argument(
        "--num-res-blocks", type=positive_int, help="blocks per level (default: by data)"
    )
    p.add_argument("--attention-levels", type=int_tuple, help="e.g. 2 (default: none)")
    p.add_argument("--dropout", type=float, help="dropout in residual blocks (default 0)")
    p.add_argument("--conditional", action="store_true", help="learn a label embedding (classes)")
    p.add_argument(
        "--backend", default="torch", choices=("torch", "numpy"),
        help="torch, or the from-scratch NumPy U-Net (CPU, no autograd)",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="run directory (default: runs/<data>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    # sample ---------------------------------------------------------------------------------
    p = command("sample", "Generate images from a trained checkpoint.")
    p.add_argument("--checkpoint", required=True, help="a .safetensors file written by difflab")
    p.add_argument("--num-images", type=positive_int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default="ddpm", choices=SAMPLERS)
    p.add_argument("--steps", type=positive_int, help="sampling steps (default: T for ddpm)")
    p.add_argument(
        "--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic, 1 DDPM-like"
    )
    p.add_argument(
        "--variance", default="beta", choices=("beta", "beta_tilde"), help="DDPM sigma^2"
    )
    p.add_argument("--no-clip", action="store_true", help="do not clip the predicted x0 to [-1, 1]")
    p.add_argument("--show-intermediate", action="store_true", help="also a grid of x_t per step")
    p.add_argument("--raw-weights", action="store_true", help="use raw instead of EMA weights")
    p.add_argument(
        "--backend", default="torch", choices=("torch", "numpy"),
        help="run the network in PyTorch or in the from-scratch NumPy U-Net",
    )  # fmt: skip
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="samples.png", help="output PNG")

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


def _train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=args.data, data_dir=args.data_dir, epochs=args.epochs or TrainConfig.epochs, max_minutes=args.max_minutes,
        batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
        lr_decay=args.lr_decay, grad_clip=args.grad_clip, ema_decay=args.ema_decay, seed=args.seed,
        device=args.device, sample_every=args.sample_every, checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints, preview_sampler=args.preview_sampler,
        preview_steps=args.preview_steps,
    )  # fmt: skip


def cmd_train(args: argparse.Namespace) -> None:
    from difflab.train import latest_checkpoint, model_config_overrides, prepare_run, train

    if args.resume:
        run_dir = Path(args.resume)
        from difflab.checkpoint import load_checkpoint

        config = load_checkpoint(latest_checkpoint(run_dir)).config
        if args.epochs is not None:
            config = replace(config, train=replace(config.train, epochs=args.epochs))
        tc = config.train
        dataset = load_dataset(
            tc.data, data_dir=tc.data_dir, image_size=config.model.image_size, seed=tc.seed
        )
        result = train(config, dataset, run_dir, resume=True, progress=not args.no_progress)
    else:
        if not 0.0 <= args.ema_decay < 1.0:
            raise ValueError(f"--ema-decay must lie in [0, 1), got {args.ema_decay}")
        diffusion = DiffusionConfig(
            timesteps=args.timesteps, schedule=args.schedule, prediction=args.prediction
        )
        overrides = model_config_overrides(
            base_channels=args.base_channels, channel_mults=args.channel_mults,
            num_res_blocks=args.num_res_blocks, attention_levels=args.attention_levels,
            dropout=args.dropout,
        )  # fmt: skip
        config, dataset = prepare_run(
            _train_config(args), diffusion, overrides, image_size=args.image_size,
            conditional=args.conditional, num_images=args.num_images, backend=args.backend,
        )  # fmt: skip
        out = Path(args.out or f"runs/{args.data}")
        result = train(
            config, dataset, out, overwrite=args.overwrite, progress=not args.no_progress
        )
    print(
        f"trained {result.steps} steps ({result.minutes:.1f} min); loss {result.first_loss:.4f} -> "
        f"{result.last_loss:.4f}; run directory {result.run_dir} (open report.html)"
    )


def cmd_sample(args: argparse.Namespace) -> None:
    loaded = load_model(
        args.checkpoint, args.device, ema=not args.raw_weights, backend=args.backend
    )
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {out} must end in .png")
    sampler_steps = args.steps or (
        loaded.schedule.num_timesteps if args.sampler == "ddpm" else None
    )
    steps = sampler_steps or {"ddim": 50, "dpmpp-2m": 20}[args.sampler]
    # Validates the step count before any work, with the same message the sampler would give.
    seq = timestep_sequence(loaded.schedule.num_timesteps, steps)
    options: dict[str, Any] = {"variance": args.variance} if args.sampler == "ddpm" else {}
    recorder = None
    if args.show_intermediate:
        shown = set(seq[:: max(1, len(seq) // 10)]) | {seq[-1]}
        recorder = TrajectoryRecorder(lambda i, t: t in shown, num_images=min(8, args.num_images))
    start = time.perf_counter()
    images = generate(
        loaded.model, loaded.config, loaded.schedule, num_images=args.num_images, seed=args.seed,
        sampler=args.sampler, steps=steps, eta=args.eta, clip_x0=not args.no_clip,
        callback=recorder, **options,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    viz.save_grid(images, out)
    print(f"wrote {out} ({args.num_images} images, {args.sampler}, {steps} steps, {seconds:.1f} s)")
    if recorder is not None:
        frames = [*recorder.frames, (-1, images[: recorder.num_images])]
        path = viz.save_trajectory_grid(frames, out.with_name(out.stem + "_intermediate.png"))
        print(f"wrote {path}")


def cmd_demo(args: argparse.Namespace) -> None:
    from difflab.train import prepare_run, train

    out = Path(args.out)
    train_cfg = TrainConfig(
        data=args.data, epochs=1000, max_minutes=args.minutes, batch_size=64, lr=1e-3,
        warmup_steps=100, lr_decay="constant", ema_decay=0.995, seed=args.seed, sample_every=0,
        checkpoint_every=0, num_preview=64, preview_sampler="ddpm", preview_steps=1000,
    )  # fmt: skip
    diffusion = DiffusionConfig(timesteps=1000, schedule="linear", prediction="eps")
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
    gif_frames: list[torch.Tensor] = []

    def record(info: dict[str, Any]) -> None:
        recorder(info)
        if info["t"] % 20 == 0 or info["t"] == schedule.num_timesteps - 1:
            gif_frames.append(info["x"][:16].clamp(-1, 1).cpu())

    images = generate(
        loaded.model, loaded.config, schedule, num_images=16, seed=args.seed + 1,
        sampler="ddpm", callback=record,
    )  # fmt: skip
    viz.save_trajectory_grid([*recorder.frames, (-1, images[:8])], out / "trajectory.png")
    viz.save_gif([*gif_frames, images], out / "denoising.gif", nrow=4)
    from difflab.train import write_run_report

    final = sorted((out / "samples").glob("*.png"))[-1]
    report = write_run_report(out, config, result, final)
    print(f"demo finished: open {report}")


COMMANDS = {"visualize": cmd_visualize, "train": cmd_train, "sample": cmd_sample, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``difflab`` console script."""
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (ValueError, OSError) as err:
        print(f"difflab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"difflab {args.command}: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as err:  # TrainingError and friends: the message says what to do
        print(f"difflab {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
