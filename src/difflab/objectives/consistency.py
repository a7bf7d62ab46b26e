"""Consistency distillation (Song et al. 2023, Algorithm 2): an objective on the shared harness.

A trained diffusion model (the teacher) defines an ODE from noise to data. Its code time
0 .. T-1 is cut into N intervals, t_0 = 0 < t_1 < ... < t_N = T - 1. One training example:

    x0 from the data, n ~ U{0 .. N-1}, x_{t_{n+1}} = q_sample(x0, z)
    x_{t_n}  = one deterministic second-order (Heun) step of the teacher's ODE, t_{n+1} -> t_n
    loss     = d( f_theta(x_{t_{n+1}}, t_{n+1}),  stopgrad f_theta(x_{t_n}, t_n) )

with f the consistency function of ``difflab.consistency`` (its boundary condition exact), the
target network the student itself under no_grad (iCT, Song & Dhariwal 2023: no target EMA), a
separate EMA of the student for sampling, and d the pseudo-Huber distance of iCT,
sqrt(||a - b||^2 + c^2) - c with c = 0.00054 sqrt(dim). The student starts as a copy of the
teacher's EMA weights. A class-conditional teacher is distilled at one guidance scale W (the
teacher's step uses u + W (c - u)), so the student draws a chosen class in 1-4 steps.

The harness gives ``difflab distill`` its run directory, --max-minutes, --resume, Ctrl-C, the
non-finite guard, previews, the report and torchrun; this file holds only what one step computes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difflab import viz
from difflab.checkpoint import Checkpoint, load_checkpoint, load_weights_into
from difflab.config import ConsistencyConfig, RunConfig, TrainConfig
from difflab.consistency import boundary_scalings, check_prediction, consistency_output
from difflab.data import ImageDataset
from difflab.diffusion import coef, q_sample
from difflab.io import file_sha256
from difflab.models.unet import UNet
from difflab.sampling.draw import generate, model_denoiser
from difflab.sampling.plan import CONSISTENCY
from difflab.schedules import Schedule, make_schedule
from difflab.training.objective import Batch, Context, Objective, Phase, Report


def load_teacher(path: str | Path, expected_sha256: str | None = None) -> Checkpoint:
    """The teacher checkpoint, checked: a difflab diffusion model that distillation can take."""
    teacher = load_checkpoint(path)
    kind = teacher.config.kind
    if kind == "gan":
        raise ValueError(
            f"checkpoint {teacher.path} is a GAN generator (made by difflab train-gan), not a "
            "diffusion model: this command needs a diffusion checkpoint (a GAN draws with "
            "difflab sample, evaluate and interpolate --seeds)"
        )
    if kind == "consistency":
        raise ValueError(
            f"{path} is already a consistency model (distilled from "
            f"{teacher.config.section(ConsistencyConfig).teacher}); distil a diffusion checkpoint"
        )
    if kind == "latent-diffusion":
        raise ValueError(
            f"{path} is a latent diffusion model; difflab distill takes a pixel diffusion model"
        )
    if kind == "flow":
        raise ValueError(
            f"{path} is a flow matching model; difflab distill takes a pixel diffusion model "
            "(difflab train without --objective flow)"
        )
    check_prediction(teacher.config.diffusion.prediction)
    check_text_teacher(path, teacher)
    teacher.model  # noqa: B018 (a one-line error for a checkpoint without a diffusion network)
    check_teacher_file(path, expected_sha256)
    return teacher


def check_text_teacher(path: str | Path, teacher: Checkpoint) -> None:
    """Refuse, in one line, a text-conditioned teacher: no distillation carries prompts yet."""
    if teacher.config.takes_prompts:
        raise ValueError(
            f"{path} is a text-conditioned model (train --text); difflab distill "
            "does not distil text models yet"
        )


def check_teacher_file(path: str | Path, expected_sha256: str | None) -> None:
    """Refuse, in one line, a teacher file that is not the one a run was distilled from."""
    if expected_sha256 is not None and file_sha256(path) != expected_sha256:
        raise ValueError(
            f"teacher {path} is not the file this run was distilled from (expected sha256 "
            f"{expected_sha256[:16]}...); put the original back or start a new run"
        )


def student_config(
    teacher: Checkpoint, train: TrainConfig, consistency: ConsistencyConfig
) -> RunConfig:
    """The student's configuration: the teacher's network, schedule and classes, a new training."""
    consistency.validate()
    if consistency.guidance != 1.0 and teacher.config.model.num_classes == 0:
        raise ValueError(
            f"--guidance {consistency.guidance:g} needs a class-conditional teacher; "
            f"{teacher.path} is unconditional"
        )
    interval_grid(teacher.config.diffusion.timesteps, consistency.intervals)  # fails here
    return replace(teacher.config, train=train, consistency=consistency, backend="torch")


def interval_grid(num_timesteps: int, intervals: int) -> np.ndarray:
    """t_0 = 0 < ... < t_N = T - 1: N intervals of (nearly) equal code time."""
    if intervals > num_timesteps - 1:
        raise ValueError(
            f"--intervals {intervals} is more than the teacher's {num_timesteps - 1} steps"
        )
    return np.round(np.linspace(0, num_timesteps - 1, intervals + 1)).astype(np.int64)


@torch.no_grad()
def heun_step(denoiser: Any, x: torch.Tensor, t_from: torch.Tensor, t_to: torch.Tensor,
              schedule: Schedule) -> torch.Tensor:  # fmt: skip
    """One step of the probability-flow ODE from ``t_from`` down to ``t_to`` (per sample):
    Heun's second-order method (Karras et al. 2022, Alg. 1) in DDIM's variables x / alpha and
    sigma / alpha, where dx/dsigma = eps and an Euler step is exactly DDIM."""
    a_from, a_to = coef(schedule.sqrt_alpha_bar, t_from, x), coef(schedule.sqrt_alpha_bar, t_to, x)
    s_from = coef(schedule.sqrt_one_minus_alpha_bar, t_from, x) / a_from
    s_to = coef(schedule.sqrt_one_minus_alpha_bar, t_to, x) / a_to
    eps_1, _ = denoiser(x, t_from)
    y = x / a_from
    x_euler = (y + (s_to - s_from) * eps_1) * a_to  # DDIM
    eps_2, _ = denoiser(x_euler, t_to)
    return (y + (s_to - s_from) * 0.5 * (eps_1 + eps_2)) * a_to


def pseudo_huber(diff: torch.Tensor) -> torch.Tensor:
    """iCT's distance per sample: sqrt(||diff||^2 + c^2) - c, c = 0.00054 sqrt(dim)."""
    c = 0.00054 * math.sqrt(diff[0].numel())
    return torch.sqrt(diff.flatten(1).pow(2).sum(dim=1) + c * c) - c


class ConsistencyDistillation(Objective):
    """Networks ``model`` (the student) and ``ema`` (for sampling); the teacher is frozen and
    not checkpointed (the run refers to its file by path and hash); generator ``noise``."""

    def __init__(
        self, config: RunConfig, teacher: Checkpoint, dataset: ImageDataset, ctx: Context
    ) -> None:
        cfg, cc = config.train, config.section(ConsistencyConfig)
        self.config, self.dataset, self.memory_format = config, dataset, ctx.memory_format
        self.teacher, self.teacher_config = UNet(teacher.config.model), teacher.config
        load_weights_into(self.teacher, teacher.sampling_weights, teacher.path or "")
        self.teacher.to(ctx.device, memory_format=ctx.memory_format).eval().requires_grad_(False)
        student = copy.deepcopy(self.teacher).train().requires_grad_(True)
        ema = copy.deepcopy(self.teacher)
        self.networks = {"model": student, "ema": ema}
        self.ema = {"ema": "model"}
        adamw = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.optimizers = {"optim": adamw}
        self.noise_gen = torch.Generator(device=ctx.device).manual_seed(cfg.seed + 1)
        self.generators = {"noise": self.noise_gen}
        self.phases = (Phase("distill", network="model", optimizer="optim", lr=cfg.lr),)
        self.schedule = make_schedule(config.diffusion.schedule, config.diffusion.timesteps)
        grid = interval_grid(self.schedule.num_timesteps, cc.intervals)  # (N + 1,) code times
        self.grid = torch.from_numpy(grid).to(ctx.device)
        self.scalings = boundary_scalings(self.schedule, config.diffusion.prediction)
        self.images = torch.from_numpy(dataset.images).to(ctx.device)  # (N, C, H, W) in [-1, 1]
        self.labels = torch.from_numpy(dataset.labels).to(ctx.device)  # (N,)
        self.num_items = len(self.images)

    def loss(self, phase: str, batch: Batch, nets: dict[str, Any]) -> torch.Tensor:
        config, gen, device = self.config, self.noise_gen, self.images.device
        cc, mc = config.section(ConsistencyConfig), config.model
        b = len(batch.idx)  # draws for the global batch, then this process's share (ddp)
        n = torch.randint(0, cc.intervals, (b,), generator=gen, device=device)
        z = torch.randn((b, *self.images.shape[1:]), generator=gen, device=device)
        mine = batch.mine
        x0 = self.images[batch.idx[mine]].contiguous(memory_format=self.memory_format)
        z, n = z[mine].contiguous(memory_format=self.memory_format), n[mine]
        y = self.labels[batch.idx[mine]] if mc.num_classes > 0 else None
        t_hi, t_lo = self.grid[n + 1], self.grid[n]  # (b / world,)
        x_hi = q_sample(x0, t_hi, z, self.schedule)
        teacher = model_denoiser(self.teacher, self.teacher_config, self.schedule, y, cc.guidance)
        x_lo = heun_step(teacher, x_hi, t_hi, t_lo, self.schedule)
        with torch.no_grad():  # the target: the student itself, without gradient (iCT)
            out_lo = self.networks["model"](x_lo, t_lo, y)
            target = consistency_output(x_lo, t_lo, out_lo, self.scalings)
        pred = consistency_output(x_hi, t_hi, nets["model"](x_hi, t_hi, y), self.scalings)
        return pseudo_huber(pred - target)  # (b / world,)

    def describe(self) -> str:
        d, cc = self.dataset, self.config.section(ConsistencyConfig)
        return (
            f"consistency distillation of {cc.teacher} (a U-Net with {sum(p.numel() for p in self.teacher.parameters()):,} "
            f"parameters) on {d.name} ({self.num_items} images), {cc.intervals} intervals"
            + (f", guidance {cc.guidance:g}" if self.config.model.num_classes else "")
        )

    def preview(self, path: Path) -> Path:
        cfg, k = self.config.train, self.config.model.num_classes
        labels = torch.arange(cfg.num_preview) % k if k else None
        x = generate(
            self.networks["ema"], self.config, self.schedule, num_images=cfg.num_preview,
            seed=cfg.seed, sampler=CONSISTENCY, steps=cfg.preview_steps, labels=labels,
        )  # fmt: skip
        return viz.save_grid(x, path)

    def report(self) -> Report:
        cc = self.config.section(ConsistencyConfig)
        return Report(
            facts={
                "teacher": cc.teacher,
                "intervals": cc.intervals,
                "guidance": cc.guidance,
                "preview steps": self.config.train.preview_steps,
            },
            final_caption="Samples from the distilled model (EMA weights)",
        )
