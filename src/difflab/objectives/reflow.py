"""Few-step routes for a flow matching teacher, on the harness: reflow and MeanFlow.

Reflow (Liu et al. 2022, "Flow Straight and Fast", Alg. 1 with k = 1): the teacher's ODE carries
noise draws eps_i to images x_i (Heun on the flow grid, from t = 1 exactly); the student, starting
from the teacher, learns flow matching on those *pairs* instead of independent (image, noise)
draws. The teacher's trajectories cross each other (its coupling of noise and data is the
independent one); the pairs' straight lines x_t = (1 - t) x_i + t eps_i cross less, so the
student's ODE is straighter and one Euler step x0 = eps - v(eps, 1) lands near x_i.

MeanFlow (Geng et al. 2025): the network, also given the interval t - r, learns the average
velocity u(z_t, r, t) over [r, t] from the identity u = v - (t - r) du/dt
(``flow.average_velocity_target``, one forward-mode JVP), so one jump z_0 = eps - u(eps, 0, 1)
is a whole ODE solve. Here it is fine-tuned from a flow matching model, whose network is u at
r = t (the interval's embedding starts at zero). One process only: ``torch.func.jvp`` through a
DistributedDataParallel module does not run (DDP's reducer hooks are autograd-only; the field's
MeanFlow ports compute the JVP on the unwrapped module and all-reduce by hand), so a torchrun
launch is refused in one line rather than silently averaging nothing.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from difflab import distributed, viz
from difflab.checkpoint import Checkpoint, load_checkpoint, load_weights_into
from difflab.config import FlowConfig, MeanFlowConfig, ReflowConfig, RunConfig, TrainConfig
from difflab.data import ImageDataset
from difflab.flow import (
    FLOW_TIME_SCALE,
    MEANFLOW_DEFAULT_STEPS,
    adaptive_loss,
    average_velocity_target,
    flow_timesteps,
    heun,
    interpolate,
    sample_t_r,
)
from difflab.io import atomic_path
from difflab.models.unet import UNet, count_parameters
from difflab.objectives.consistency import check_teacher_file, check_text_teacher
from difflab.objectives.flow import FlowObjective
from difflab.sampling.draw import flow_velocity, generate
from difflab.training.objective import Batch, Context, Report

FLOW_TEACHER_KINDS = ("flow", "reflow")  # a reflow student can be reflowed again (2-rectified)
PAIRS_FILE = "reflow_pairs.safetensors"


def load_flow_teacher(path: str | Path, expected_sha256: str | None = None) -> Checkpoint:
    """The teacher of reflow or MeanFlow, checked: a flow matching checkpoint (or a reflow
    student), with the file it was when the run started."""
    teacher = load_checkpoint(path)
    if teacher.config.kind not in FLOW_TEACHER_KINDS:
        raise ValueError(
            f"{path} is a {teacher.config.kind} model; reflow and meanflow distil a flow matching "
            "model (difflab train --objective flow)"
        )
    check_text_teacher(path, teacher)
    teacher.model  # noqa: B018 (a one-line error for a checkpoint without its network)
    check_teacher_file(path, expected_sha256)
    return teacher


def student_config(
    teacher: Checkpoint, train: TrainConfig, section: ReflowConfig | MeanFlowConfig
) -> RunConfig:
    """The student's configuration: the teacher's network (a MeanFlow student's with the interval
    input), schedule, flow settings and classes; a new training."""
    section.validate()
    tc = teacher.config
    if isinstance(section, ReflowConfig):
        if section.guidance != 1.0 and tc.model.num_classes == 0:
            raise ValueError(
                f"--guidance {section.guidance:g} needs a class-conditional teacher; "
                f"{teacher.path} is unconditional"
            )
        # Liu et al. train reflow at uniform times: the straight pairs matter at every t,
        # and one-step sampling reads the network at t = 1, where logit-normal rarely trains.
        flow = replace(tc.section(FlowConfig), time_sampling="uniform")
        return replace(tc, train=train, flow=flow, reflow=section, meanflow=None, backend="torch")
    if distributed.launched_by_torchrun():
        raise ValueError(
            "--method meanflow runs in one process: its forward-mode JVP cannot pass through "
            "DistributedDataParallel; run difflab distill without torchrun"
        )
    if train.compile:
        raise ValueError("--compile is not available for --method meanflow (torch.func.jvp)")
    if train.channels_last:
        raise ValueError(
            "--channels-last is not available for --method meanflow: GroupNorm's forward-mode "
            "derivative fails on channels-last tensors (torch 2.13)"
        )
    if train.precision not in ("auto", "fp32"):
        raise ValueError(
            f"--precision {train.precision} is not available for --method meanflow: "
            "torch.func.jvp fails under autocast (torch 2.13); use fp32"
        )
    # Not the CPU's channels-last default either, nor auto's bf16 where that picks it.
    train = replace(train, channels_last=False, precision="fp32",
                    precision_reason="meanflow: torch.func.jvp runs in fp32")  # fmt: skip
    model = replace(tc.model, interval_input=True)
    return replace(tc, model=model, train=train, reflow=None, meanflow=section, backend="torch")


def _start_from_teacher(networks: dict[str, torch.nn.Module], teacher: Checkpoint) -> None:
    """The student and its EMA start as the teacher's sampled (EMA) weights; a MeanFlow
    student's interval MLP keeps its zero-initialised output (so u = v at the start)."""
    for net in networks.values():
        weights = dict(teacher.sampling_weights)
        for name, value in net.state_dict().items():
            if name.startswith("interval_"):
                weights[name] = value
        load_weights_into(net, weights, teacher.path or "")


class Reflow(FlowObjective):
    """Flow matching on the teacher's (noise, image) pairs (Liu et al. 2022, Alg. 1)."""

    def __init__(
        self,
        config: RunConfig,
        teacher: Checkpoint,
        dataset: ImageDataset,
        ctx: Context,
        out: Path,
    ) -> None:
        super().__init__(config, dataset, ctx)
        self.reflow = config.section(ReflowConfig)
        _start_from_teacher(self.networks, teacher)
        noise, images, labels, seconds = make_pairs(
            teacher, self.reflow, config.train.seed, ctx.device, out / PAIRS_FILE
        )
        self.pair_seconds = seconds
        self.noise, self.images, self.labels = noise, images, labels  # x0 and labels: the pairs'
        self.num_items = len(images)

    def describe(self) -> str:
        d = self.dataset
        return (
            f"reflow on {self.num_items} (noise, image) pairs from the teacher's ODE "
            f"({d.channels}x{d.image_size}x{d.image_size}), U-Net with "
            f"{count_parameters(self.networks['model']):,} parameters"
        )

    def draw_noise(self, batch: Batch) -> torch.Tensor:
        """The pairs' noise: each image's own eps, the start of its teacher trajectory."""
        return self.noise[batch.idx]

    def preview(self, path: Path) -> Path:
        """One Euler step from noise: what reflow is for."""
        cfg = self.config.train
        x = generate(
            self.networks["ema"], self.config, self.schedule, num_images=cfg.num_preview,
            seed=cfg.seed, sampler="euler", steps=1, timesteps=list(flow_timesteps(1)),
            clip_x0=False,
        )  # fmt: skip
        return viz.save_grid(x, path)

    def report(self) -> Report:
        r = self.reflow
        return Report(
            facts={
                "objective": "reflow: flow matching on the teacher's (noise, image) pairs",
                "teacher": r.teacher,
                "pairs": f"{r.pairs:,}, Heun {r.pair_steps} steps each ({self.pair_seconds:.0f} s)",
                "training t": "uniform",
            },
            final_caption="One Euler step from noise (EMA weights)",
        )


@torch.no_grad()
def make_pairs(
    teacher: Checkpoint,
    reflow: ReflowConfig,
    seed: int,
    device: torch.device,
    path: Path,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """``reflow.pairs`` (noise, image, label) triples of the teacher's ODE, and the seconds they
    took: read back from ``path`` when a run resumes, else drawn (noise from ``seed``, labels
    uniform over a conditional teacher's classes, Heun in ``pair_steps`` on the flow grid of the
    teacher's shift) and written there atomically, so a resumed run trains on the same pairs."""
    tc = teacher.config
    key = f"{reflow.teacher_sha256}:{reflow.pairs}:{reflow.pair_steps}:{seed}"
    if path.exists():
        stored = load_file(path)
        if bytes(stored["key"].tolist()).decode() == key:
            return (
                stored["noise"].to(device), stored["images"].to(device),
                stored["labels"].to(device), float(stored["seconds"]),
            )  # fmt: skip
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed + 2)
    shape = (reflow.pairs, tc.model.in_channels, tc.model.image_size, tc.model.image_size)
    noise = torch.randn(shape, generator=gen)
    classes = tc.model.num_classes
    labels = (
        torch.randint(0, classes, (reflow.pairs,), generator=gen)
        if classes
        else torch.zeros(reflow.pairs, dtype=torch.long)
    )
    net = UNet(tc.model).to(device).eval()
    load_weights_into(net, teacher.sampling_weights, teacher.path or "")
    grid = flow_timesteps(reflow.pair_steps, tc.section(FlowConfig).shift)
    images = torch.empty_like(noise)
    bar = tqdm(total=reflow.pairs, desc="reflow pairs", unit="pair", leave=False, disable=None)
    for i in range(0, reflow.pairs, batch_size):
        x = noise[i : i + batch_size].to(device)
        y = labels[i : i + batch_size].to(device) if classes else None
        velocity = flow_velocity(net, y, reflow.guidance, classes)
        images[i : i + batch_size] = heun(velocity, x, grid).cpu()
        bar.update(len(x))
    bar.close()
    seconds = time.perf_counter() - start
    if distributed.env_rank() == 0:
        with atomic_path(path) as tmp:
            save_file(
                {"noise": noise, "images": images, "labels": labels,
                 "seconds": torch.tensor(seconds, dtype=torch.float64),
                 "key": torch.tensor(list(key.encode()), dtype=torch.uint8)},
                str(tmp),
            )  # fmt: skip
    return noise.to(device), images.to(device), labels.to(device), seconds


class MeanFlow(FlowObjective):
    """MeanFlow fine-tuning (Geng et al. 2025, Alg. 1): regress u(z_t, r, t) onto
    sg(v - (t - r) du/dt) with the adaptive weight, r and t logit-normal, 25% of them r != t."""

    def __init__(
        self, config: RunConfig, teacher: Checkpoint, dataset: ImageDataset, ctx: Context
    ) -> None:
        super().__init__(config, dataset, ctx)
        self.meanflow = config.section(MeanFlowConfig)
        _start_from_teacher(self.networks, teacher)

    def loss(self, phase: str, batch: Batch, nets: dict[str, Any]) -> torch.Tensor:
        config, gen, device, mf = self.config, self.noise_gen, self.images.device, self.meanflow
        b = len(batch.idx)  # the global batch's draws, as every objective makes them
        r, t = (s.to(torch.float32) for s in sample_t_r(b, gen, mf.ratio, mf.loc, mf.scale))
        eps = self.draw_noise(batch)
        y = None
        if config.model.num_classes > 0:
            drop = torch.rand(b, generator=gen, device=device) < config.train.label_dropout
            y = torch.where(drop, config.model.num_classes, self.labels[batch.idx])[batch.mine]
        mine = batch.mine
        x0 = self.x0_batch(batch).contiguous(memory_format=self.memory_format)
        eps = eps[mine].contiguous(memory_format=self.memory_format)
        r, t = r[mine], t[mine]
        net = nets["model"]

        def u_fn(z: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return net(z, FLOW_TIME_SCALE * t, y, interval=FLOW_TIME_SCALE * (t - r))

        z_t = interpolate(x0, eps, t)
        u, target = average_velocity_target(u_fn, z_t, r, t, eps - x0)
        return adaptive_loss(u.float(), target.float(), mf.power)  # (b,)

    def preview(self, path: Path) -> Path:
        """One MeanFlow jump from noise."""
        from difflab.sampling.plan import MEANFLOW

        cfg = self.config.train
        x = generate(
            self.networks["ema"], self.config, self.schedule, num_images=cfg.num_preview,
            seed=cfg.seed, sampler=MEANFLOW, steps=MEANFLOW_DEFAULT_STEPS,
            timesteps=list(flow_timesteps(MEANFLOW_DEFAULT_STEPS)), clip_x0=False,
        )  # fmt: skip
        return viz.save_grid(x, path)

    def report(self) -> Report:
        m = self.meanflow
        return Report(
            facts={
                "objective": "MeanFlow: the average velocity u(z_t, r, t) from "
                "u = v - (t - r) du/dt (one JVP)",
                "teacher": m.teacher,
                "r != t": f"{m.ratio:.0%} of the pairs; r, t logit-normal ({m.loc:g}, {m.scale:g})",
                "adaptive weight power": f"{m.power:g}",
            },
            final_caption="One MeanFlow step from noise (EMA weights)",
        )
