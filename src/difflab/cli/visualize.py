"""``difflab visualize``: pictures of the forward process and of the noise schedules.

One command per module (or a family of close commands, as in ``edit``); a new command is a new
module like this one, listed in ``difflab/cli/__init__.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from difflab import viz
from difflab.cli.flags import add_command, add_data_flags, add_diffusion_flags, positive_int
from difflab.data import load_dataset
from difflab.schedules import SCHEDULES, make_schedule


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "visualize",
        "Pictures of the forward process: images dissolving into noise, and the schedules.",
    )
    add_data_flags(p)
    add_diffusion_flags(p)
    p.add_argument("--num-images", type=positive_int, default=6, help="rows of the grid")
    p.add_argument("--seed", type=int, default=0, help="which images and which noise")
    p.add_argument("--out", default="runs/visualize", help="output folder")


def cmd_visualize(args: argparse.Namespace) -> None:
    dataset = load_dataset(
        args.data, data_dir=args.data_dir, image_size=args.image_size, seed=args.seed,
        num_images=max(args.num_images, 64), vendors=args.vendors,
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
