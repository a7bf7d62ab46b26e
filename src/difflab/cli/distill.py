"""``difflab distill``: distil a trained diffusion checkpoint into a student that draws in
``--steps`` N evaluations, by the route the kind table names for the teacher and N
(``kinds.distill_route``: DDIM students of halving step counts, ``objectives.progressive``, with
its distribution-matching stage), or by ``--method``; or resume such a run (``--resume``).

The data, network, schedule and classes are the teacher's; the flags here set the distillation
(intervals or rounds, guidance) and the run (time, batch, learning rate, previews), onto
``TrainConfig``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from difflab import distributed
from difflab.cli.flags import (
    add_command,
    add_run_flags,
    config_from_flags,
    flags_given,
    positive_float,
    positive_int,
    resume_from_flags,
)
from difflab.config import (
    TEACHER_SOLVERS,
    ConsistencyConfig,
    MeanFlowConfig,
    ProgressiveConfig,
    ReflowConfig,
    RunConfig,
    TrainConfig,
)
from difflab.consistency import STEP_TIMES
from difflab.data import ImageDataset, load_dataset

if TYPE_CHECKING:
    from difflab.checkpoint import Checkpoint
    from difflab.kinds import DistillRoute

# The default peak learning rate of each method, measured on MNIST (docs/few_step.md):
# consistency distillation's 1e-3 beat 2e-4; progressive distillation's 3e-4 beat 1e-3 and 1e-4.
# Reflow and MeanFlow fine-tune a flow model: 2e-4, a fifth of its training rate (not searched).
LR = {"consistency": 1e-3, "progressive": 3e-4, "reflow": 2e-4, "meanflow": 2e-4}
FLOW_METHODS = ("reflow", "meanflow")  # the methods that take a flow matching teacher

# What --resume may change: how long to go on, and where (difflab.training.RESUME_FLAGS' subset).
RESUME_FLAGS = ("epochs", "max_steps", "max_minutes", "device")

# The flags (dests) that only one method reads: given with the other method, they are an error,
# not silently ignored.
METHOD_FLAGS = {
    "consistency": ("intervals", "preview_steps"),
    "progressive": (
        "steps",
        "start_steps",
        "round_steps",
        "teacher_solver",
        "lr_decay",
        "dmd_steps",
        "dmd_warmup",
        "dmd_weight",
        "dmd_average",
    ),
    "reflow": ("pairs", "pair_steps"),
    "meanflow": ("mean_ratio",),
}


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "distill",
        "Distil a trained diffusion checkpoint into a model that draws images in --steps N "
        "network evaluations, by the route measured best for the teacher and N: progressive "
        "distillation (Salimans & Ho 2022) with a distribution-matching stage (Yin et al. 2024); "
        "--method consistency makes a consistency model (Song et al. 2023) instead.",
    )
    p.add_argument("--teacher", help="the diffusion checkpoint to distil (model_final.safetensors)")
    p.add_argument(
        "--method", choices=("consistency", "progressive", *FLOW_METHODS),
        help="default: the best route measured for the teacher's kind and --steps; for a "
        "diffusion teacher progressive distillation from a 16-step dpmpp-2s teacher with a "
        "distribution-matching stage at 2 and 4 steps (MNIST, 20 CPU-minutes: FID 3.67 at 4 "
        "steps, 4.59 at 2, against DDPM-1000's 3.47; four rounds alone 9.60 at 1 step); "
        "consistency distillation scored 23.6 at 4 steps where progressive scored 2.87 "
        "(docs/few_step.md); for a flow matching teacher reflow (Liu et al. 2022: FID 8.24 in "
        "one Euler step on MNIST, the teacher's own 154); meanflow (Geng et al. 2025) is the "
        "other route for one (it diverged in that run, docs/flow.md)",
    )  # fmt: skip
    p.add_argument("--data-dir", help="where the teacher's data lies, if not where it was trained")
    p.add_argument("--epochs", type=positive_int, help="passes over the data (default: 20)")
    p.add_argument("--max-minutes", type=positive_float, help="stop after this much time")
    p.add_argument("--max-steps", type=positive_int, help="stop after N steps in all")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per step")
    p.add_argument(
        "--lr", type=positive_float,
        help="peak AdamW learning rate (default: 1e-3 for consistency, 3e-4 for progressive; "
        "each beat the others tried on MNIST, docs/few_step.md)",
    )  # fmt: skip
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA of the student, sampled")
    p.add_argument(
        "--intervals", type=positive_int, default=ConsistencyConfig.intervals,
        help="consistency: the teacher's ODE is cut into N intervals; each step learns one "
        "(CM Alg. 2)",
    )  # fmt: skip
    p.add_argument(
        "--steps", type=positive_int,
        help="progressive: the student's DDIM steps (default 4; stop at the steps you will "
        "sample with: fewer rounds, so longer ones in the same time)",
    )  # fmt: skip
    p.add_argument(
        "--start-steps", type=positive_int,
        help="progressive: the first teacher's steps (--steps times a power of 2; default 16: "
        "with dpmpp-2s it beat the paper's DDIM from 64 at 1, 2 and 4 steps, docs/few_step.md)",
    )  # fmt: skip
    p.add_argument(
        "--round-steps", type=positive_int, default=ProgressiveConfig.round_steps,
        help="progressive: training steps per round (the run's length is rounds x this)",
    )  # fmt: skip
    p.add_argument(
        "--teacher-solver", choices=TEACHER_SOLVERS,
        help="progressive: the first teacher's ODE step, ddim (the paper) or dpmpp-2s (second "
        "order, the default: twice the teacher evaluations in the first round, a closer target)",
    )  # fmt: skip
    p.add_argument(
        "--lr-decay", choices=("constant", "cosine"), default="constant",
        help="progressive: constant learning rate after one warm-up, or each round its own "
        "warm-up and cosine decay to 10%% of --lr",
    )  # fmt: skip
    p.add_argument(
        "--dmd-steps", type=int,
        help="progressive: after the last round, steps of distribution matching (Yin et al. "
        "2024: the student's images pushed towards the teacher's distribution, beside the last "
        "round's loss); writes model_steps_N_dmd.safetensors. In 20-minute MNIST runs 300 took "
        "the 4-step student from FID 5.09 to 3.74 and from 5.07 to 4.48; five seeds from 5.07 "
        "gave 3.66-4.49, and 3.90-4.25 with --dmd-average 200; with it, the few-step table's "
        "run went from 5.02 to 3.67, docs/few_step.md (default 300 at 2 steps and more, "
        "0 at 1 step, where it is not measured)",
    )  # fmt: skip
    p.add_argument(
        "--dmd-warmup", type=int,
        help="progressive: steps before those in which only DMD's fake score learns",
    )  # fmt: skip
    p.add_argument(
        "--dmd-weight", type=float,
        help="progressive: the DMD loss's weight beside the last round's loss (default 0.2 at 4 "
        "steps, 0.3 at 2: each the best measured for its step count)",
    )  # fmt: skip
    p.add_argument(
        "--dmd-average", type=int,
        help="progressive: sample the DMD student as the plain mean of its weights over its last "
        "N DMD steps, not their EMA: over five seeds, 200 of 300 halved the spread of its FID "
        "(docs/few_step.md; default 200, or two thirds of a shorter --dmd-steps; 0: the EMA)",
    )  # fmt: skip
    p.add_argument(
        "--pairs", type=positive_int,
        help=f"reflow: (noise, image) pairs the teacher's ODE draws before training (default "
        f"{ReflowConfig.pairs:,}; they are written into the run directory, so --resume reuses "
        "them)",
    )  # fmt: skip
    p.add_argument(
        "--pair-steps", type=positive_int,
        help=f"reflow: Heun steps of the teacher per pair (default {ReflowConfig.pair_steps}: "
        f"{2 * ReflowConfig.pair_steps - 1} network evaluations)",
    )  # fmt: skip
    p.add_argument(
        "--mean-ratio", type=float,
        help=f"meanflow: the share of training points with r != t (default {MeanFlowConfig.ratio}, "
        "the paper's best; the rest train plain flow matching)",
    )  # fmt: skip
    p.add_argument(
        "--guidance", type=float,
        help="classifier-free guidance scale baked into the student (class-conditional "
        "teachers; default 1: plain conditional)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seeds data order and noise")
    p.add_argument("--device", help="auto, cpu, cuda or mps (default: auto)")
    p.add_argument(
        "--preview-steps", type=int, default=2, choices=sorted(STEP_TIMES),
        help="consistency steps of the previews",
    )  # fmt: skip
    p.add_argument("--sample-every", type=int, default=1, help="preview every N epochs; 0: end")
    p.add_argument("--num-preview", type=positive_int, default=64, help="images per preview")
    add_run_flags(p, default_out="runs/distill", resume_help="continue a distillation run")


def cmd_distill(args: argparse.Namespace) -> None:
    from difflab.io import file_sha256
    from difflab.kinds import train
    from difflab.objectives.consistency import student_config
    from difflab.objectives.progressive import student_config as progressive_config
    from difflab.objectives.reflow import student_config as flow_student_config

    if args.resume:
        config, dataset, resources = resume_from_flags(args, "distill", RESUME_FLAGS)
        out = Path(args.resume)
    else:
        if args.teacher is None:
            raise ValueError("--teacher is required: the diffusion checkpoint to distil")
        if not 0.0 <= args.ema_decay < 1.0:
            raise ValueError(f"--ema-decay must lie in [0, 1), got {args.ema_decay}")
        teacher, route = _teacher_and_route(args)
        if route is not None and route.method == args.method and "method" not in args.given:
            print(f"difflab distill: {_describe(route)}")
        tc = teacher.config.train
        train_cfg = config_from_flags(
            TrainConfig, args, data=tc.data, data_dir=args.data_dir or tc.data_dir,
            vendors=tc.vendors, num_images=tc.num_images, lr=args.lr or LR[args.method],
        )  # fmt: skip
        train_cfg.validate()
        dataset = _dataset(train_cfg, teacher.config.model.image_size)
        guidance, sha = 1.0 if args.guidance is None else args.guidance, file_sha256(args.teacher)
        if args.method == "progressive":
            plan = ProgressiveConfig(
                teacher=str(args.teacher), teacher_sha256=sha, round_steps=args.round_steps,
                guidance=guidance, **_progressive_settings(args, route),
            )  # fmt: skip
            if args.lr_decay == "cosine":  # each round warms up for a tenth of it
                warmup = min(train_cfg.warmup_steps, max(1, args.round_steps // 10))
                train_cfg = replace(train_cfg, warmup_steps=warmup)
            train_cfg = replace(train_cfg, lr_decay=args.lr_decay)
            config = progressive_config(teacher, train_cfg, plan, dataset.num_images)
        elif args.method == "consistency":
            consistency = ConsistencyConfig(
                teacher=str(args.teacher), teacher_sha256=sha, intervals=args.intervals,
                guidance=guidance,
            )  # fmt: skip
            config = student_config(teacher, train_cfg, consistency)
        else:  # reflow or meanflow, from a flow matching teacher
            section = (
                ReflowConfig(
                    teacher=str(args.teacher), teacher_sha256=sha, guidance=guidance,
                    pairs=args.pairs or ReflowConfig.pairs,
                    pair_steps=args.pair_steps or ReflowConfig.pair_steps,
                )
                if args.method == "reflow"
                else MeanFlowConfig(
                    teacher=str(args.teacher), teacher_sha256=sha,
                    ratio=MeanFlowConfig.ratio if args.mean_ratio is None else args.mean_ratio,
                )
            )  # fmt: skip
            if args.method == "meanflow" and args.guidance is not None:
                raise ValueError("--guidance is a flag of --method reflow and the DDPM methods")
            config = flow_student_config(teacher, train_cfg, section)
        resources = {"teacher": teacher}
        out = Path(args.out or "runs/distill")
    # A TrainingInterrupted (Ctrl-C) goes to main(), which prints it and exits with 130.
    result = train(
        config, dataset, out, resume=bool(args.resume), overwrite=args.overwrite,
        progress=not args.no_progress, **resources,
    )  # fmt: skip
    if distributed.env_rank() == 0:
        ckpt, how, unfinished = out / "model_final.safetensors", " --steps 2", ""
        if config.kind == "progressive":  # its students sample in their own steps
            (ckpt, unfinished), how = _progressive_student(config, result.steps, out), ""
        elif config.kind in FLOW_METHODS:  # one step by default (its kind's plan)
            how = ""
        print(
            f"distilled {result.steps} steps ({result.minutes:.1f} min); loss "
            f"{result.first_loss:.4f} -> {result.last_loss:.4f}; run directory {result.run_dir}; "
            f"sample with: difflab sample --checkpoint {ckpt}{how}{unfinished}"
        )


def _teacher_and_route(args: argparse.Namespace) -> tuple[Checkpoint, DistillRoute | None]:
    """The teacher, checked for ``args.method`` (set here to the route's when not given), and
    the kind table's route for it at ``--steps`` (None: its kind has none; the method's loader
    then says in one line what the teacher is); a flag of another method is refused."""
    from difflab.checkpoint import load_checkpoint
    from difflab.kinds import distill_route, kind_of
    from difflab.objectives.consistency import load_teacher
    from difflab.objectives.reflow import load_flow_teacher

    config = load_checkpoint(args.teacher).config
    steps = args.steps or ProgressiveConfig.steps
    route = distill_route(config, steps) if kind_of(config).distill else None
    args.method = args.method or (route.method if route else "progressive")
    flow_method = args.method in FLOW_METHODS
    for other, names in METHOD_FLAGS.items():
        names = tuple(n for n in names if not (flow_method and n == "steps"))  # picks the route
        misplaced = flags_given(args, names) if other != args.method else []
        if misplaced:
            raise ValueError(
                f"{misplaced[0]} is a flag of --method {other}; this run is --method {args.method}"
            )
    teacher = (load_flow_teacher if flow_method else load_teacher)(args.teacher)
    return teacher, route


def _progressive_settings(args: argparse.Namespace, route: DistillRoute | None) -> dict[str, Any]:
    """ProgressiveConfig's fields that the route sets: each flag given wins, the route's value
    (for a progressive route) fills the rest, then ProgressiveConfig's own default."""
    defaults = route.settings if route is not None and route.method == "progressive" else {}
    names = ("steps", "start_steps", "teacher_solver", "dmd_steps", "dmd_warmup", "dmd_weight")
    settings = {
        n: getattr(args, n) if getattr(args, n) is not None
        else defaults.get(n, getattr(ProgressiveConfig, n))
        for n in names
    }  # fmt: skip
    if args.dmd_average is not None:
        settings["dmd_average"] = args.dmd_average
    elif args.dmd_steps is not None:  # a stage of its own length: its last two thirds, as the
        settings["dmd_average"] = 2 * args.dmd_steps // 3  # measured 200 of 300
    else:
        settings["dmd_average"] = defaults.get("dmd_average", ProgressiveConfig.dmd_average)
    return settings


def _describe(route: DistillRoute) -> str:
    s = route.settings
    if route.method != "progressive":
        return (
            f"{route.method}, the default for this teacher (--method chooses another): "
            f"{route.evidence}"
        )
    stage = (
        f" and a distribution-matching stage of {s['dmd_steps']} steps (weight {s['dmd_weight']:g})"
        if s.get("dmd_steps") else ""
    )  # fmt: skip
    return (
        f"{route.method} distillation {s['start_steps']} -> {s['steps']} steps{stage}, the "
        f"measured default for this teacher (--method chooses another): {route.evidence}"
    )


def _progressive_student(config: RunConfig, steps: int, out: Path) -> tuple[Path, str]:
    """The student to sample after ``steps`` training steps, and, when a limit stopped the run
    before its last round, what that student is and how to go on."""
    from difflab.objectives.progressive import round_plan

    pc = config.section(ProgressiveConfig)
    plan = round_plan(pc.start_steps, pc.steps, config.diffusion.timesteps)
    rounds, total = len(plan) * pc.round_steps, len(plan) * pc.round_steps + pc.stage_steps()
    go_on = f"; continue with: difflab distill --resume {out}"
    if steps >= total:
        return out / f"model_steps_{plan[-1]}{'_dmd' if pc.dmd_steps else ''}.safetensors", ""
    if steps >= rounds:  # in the distribution-matching stage
        part = "" if steps == rounds else "_dmd"
        return (
            out / f"model_steps_{plan[-1]}{part}.safetensors",
            f"\nstopped in the distribution-matching stage: after {steps} of {total} steps" + go_on,
        )
    current = plan[steps // pc.round_steps]  # a round before the last
    return (
        out / f"model_steps_{current}.safetensors",
        f"\nstopped before the last round: after {steps} of {total} steps, "
        f"in the round of the {current}-step student (the {plan[-1]}-step student is not made "
        f"yet)" + go_on,
    )


def _dataset(train: TrainConfig, image_size: int) -> ImageDataset:
    return load_dataset(
        train.data, data_dir=train.data_dir, image_size=image_size, seed=train.seed,
        num_images=train.num_images, vendors=train.vendors,
    )  # fmt: skip
