"""``difflab demo``: train briefly on built-in data, sample, and write every picture and
report.html.

One command per module; a new command is a new module like this one, listed in
``difflab/cli/__init__.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from difflab import viz
from difflab.cli.flags import add_command, positive_float
from difflab.config import DiffusionConfig, TrainConfig
from difflab.kinds import load_model
from difflab.sampling import TrajectoryRecorder, generate
from difflab.schedules import SCHEDULES, make_schedule


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "demo",
        "Train on built-in data, sample, and write every picture and report.html.",
    )
    p.add_argument("--data", default="emoji", choices=("emoji", "shapes"))
    p.add_argument("--minutes", type=positive_float, default=2.5, help="training time budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/demo", help="run directory (replaced if it exists)")
    p.add_argument("--no-progress", action="store_true")


def cmd_demo(args: argparse.Namespace) -> None:
    from difflab.kinds import train
    from difflab.objectives.diffusion import prepare_run

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
    from difflab.objectives.diffusion import write_run_report

    final = sorted((out / "samples").glob("*.png"))[-1]
    report = write_run_report(out, config, result, final)
    print(f"demo finished: open {report}")
    # the web demo on this fresh model (difflab serve, which needs the demo extra)
    print(f"watch it draw live: difflab serve --checkpoint {out / 'model_final.safetensors'}")
