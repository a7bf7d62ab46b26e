"""The kind table: every kind of model difflab makes, how it is trained and how it is drawn.

``config.model_kind`` says what a checkpoint is (the one function that reads which optional
sections a configuration has); ``KINDS`` below maps each kind to the command that trains it, its
objective (``difflab.objectives``), what that objective needs loaded beforehand, the loader of its
network and its sampling planner (``difflab.sampling``). Every face asks this module:
``load_model`` and ``plan_sampling`` for drawing, ``load_denoiser`` and ``plan_editing`` for the
editing commands, ``train`` and ``resume_run`` for training. After it, the code is kind-agnostic
(nanoGPT's one ``init_from`` switch, DiT's ``create_diffusion`` factory).

Adding a kind: a name in ``config.KINDS`` and a branch in ``config.model_kind`` (with the config
section that marks it), an objective module in ``difflab/objectives/``, a planner in
``sampling/plan.py`` if it draws in a new way, and a row here (docs/contributing.md: "Adding a model kind").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from difflab.checkpoint import Checkpoint, load_checkpoint
from difflab.config import KINDS as KIND_NAMES
from difflab.config import (
    ConsistencyConfig,
    LatentConfig,
    MeanFlowConfig,
    ProgressiveConfig,
    ReflowConfig,
    RunConfig,
)
from difflab.consistency import STEP_TIMES
from difflab.data import ImageDataset, load_dataset
from difflab.device import pick_device
from difflab.flow import FLOW_SOLVERS
from difflab.objectives.autoencoder import AutoencoderObjective, load_test_split
from difflab.objectives.consistency import ConsistencyDistillation, load_teacher
from difflab.objectives.diffusion import DiffusionObjective, check_numpy_options
from difflab.objectives.flow import FlowObjective
from difflab.objectives.gan import GANObjective
from difflab.objectives.latent import LatentDiffusion
from difflab.objectives.numpy_diffusion import train_numpy
from difflab.objectives.progressive import ProgressiveDistillation
from difflab.objectives.reflow import MeanFlow, Reflow, load_flow_teacher
from difflab.samplers import SAMPLERS
from difflab.sampling import plan as planners
from difflab.sampling.draw import execute
from difflab.sampling.load import LoadedModel, load_generator, load_latent_unet, load_unet
from difflab.sampling.plan import SamplingPlan, SamplingRequest
from difflab.sampling.spaces import load_autoencoder
from difflab.training import (
    Context,
    Objective,
    TrainResult,
    fit,
    latest_checkpoint,
    resume_config,
    settle_precision,
)

# (config, dataset, context, run directory, resources) -> the objective the harness trains
ObjectiveFactory = Callable[..., Objective]
Loader = Callable[..., LoadedModel]  # (checkpoint, device, *, ema, backend) -> LoadedModel
Planner = Callable[[LoadedModel, SamplingRequest], SamplingPlan]

NOT_A_DIFFUSION_MODEL = (
    "checkpoint {path} holds no 'model' network (it has {networks}): it is not a diffusion model"
)


@dataclass(frozen=True)
class Kind:
    """One row of the table: a kind of model, how it is trained and how it is drawn."""

    name: str  # one of config.KINDS
    description: str  # what messages call it ("a GAN run", ...)
    command: str  # the difflab command that trains it and resumes its runs
    objective: ObjectiveFactory  # its trainer on the harness
    prepare: Callable[[RunConfig], dict[str, Any]]  # what the objective needs beyond the data,
    # loaded and checked before the run directory is touched (a teacher, a test split)
    load: Loader | None  # its network, ready to draw; None: it draws no images
    plan: Planner | None  # its sampling planner (sampling.plan)
    denoiser: bool  # a noise-predicting network the editing commands and inspect can use
    refusal: str  # why a command that needs what it lacks refuses it ({path}, {networks})
    title: Callable[[RunConfig], str]  # what the web page calls a model of this kind
    stepwise: bool  # draws in steps a page can show (x_t and x0_pred at each)
    step_choices: Callable[[RunConfig], list[int]] | None = None  # a distilled model's steps
    # (its sampler and guidance are fixed); None: any sampler, steps and guidance
    samplers: tuple[str, ...] = SAMPLERS  # the samplers a face may offer (its planner picks the
    # default when none is asked for)
    distill: Callable[[RunConfig, int], DistillRoute] | None = (
        None  # what ``difflab distill --teacher X
    )
    # --steps N`` runs for a teacher of this kind with no --method; None: not a teacher


@dataclass(frozen=True)
class DistillRoute:
    """The distillation a teacher of one kind gets at N steps when no ``--method`` is given: the
    best route measured (docs/few_step.md), its settings, and the measurement that chose it."""

    method: str  # "progressive" or "consistency" (difflab distill --method)
    settings: dict[str, Any]  # fields of the method's config (ProgressiveConfig, ...)
    evidence: str  # why, with the number


# The distribution-matching stage's measured settings per step count (docs/few_step.md, "Results on
# MNIST" and "Distribution matching after the rounds"): weight 0.2 at 4 steps and 0.3 at 2, 100
# warm-up + 300 steps, sampled as the mean of the last 200 steps' weights.
DMD_WEIGHT = {4: 0.2, 2: 0.3}
DMD_EVIDENCE = {
    4: "FID 3.67 at 4 steps on MNIST in 20 CPU-minutes against 5.02 without the stage (DDPM-1000 "
    "3.47; consistency distillation 23.6 at 10 minutes where progressive scored 2.87)",
    2: "FID 4.59 at 2 steps on MNIST in 20 CPU-minutes against 7.39 without the stage (DDPM-1000 "
    "3.47; consistency distillation 27.8 at 10 minutes where progressive scored 5.39)",
}


def _diffusion_distill_route(teacher: RunConfig, steps: int) -> DistillRoute:
    """Progressive distillation (it beat consistency distillation at 1, 2 and 4 steps) from a
    16-step dpmpp-2s first teacher; at 2 and 4 steps, for an unconditional teacher, with the
    distribution-matching stage (whose fake score has no classes)."""
    start = steps
    while start < 16:
        start *= 2
    settings: dict[str, Any] = {
        "steps": steps, "start_steps": start if start > steps else 2 * steps,
        "teacher_solver": "dpmpp-2s",
    }  # fmt: skip
    if steps == 1:  # the stage was never measured at 1 step: the four rounds alone
        evidence = (
            "FID 9.60 at 1 step on MNIST in 20 CPU-minutes, four rounds 16 -> 1 (consistency "
            "distillation 35.5 at 10 minutes where progressive scored 12.4); the DMD stage is "
            "not measured at 1 step"
        )
        return DistillRoute("progressive", settings, evidence)
    if teacher.model.num_classes:
        evidence = (
            "progressive beat consistency distillation at every step count on MNIST (4 steps: FID "
            "2.87 against 23.6); the distribution-matching stage takes unconditional teachers only"
        )
        return DistillRoute("progressive", settings, evidence)
    settings |= {
        "dmd_steps": 300, "dmd_warmup": 100, "dmd_weight": DMD_WEIGHT.get(steps, 0.2),
        "dmd_average": 200,
    }  # fmt: skip
    evidence = DMD_EVIDENCE.get(steps, f"not measured at {steps} steps; the 4-step settings")
    return DistillRoute("progressive", settings, evidence)


def distill_route(teacher: RunConfig, steps: int) -> DistillRoute:
    """The route ``difflab distill --teacher X --steps N`` takes with no ``--method``: the
    teacher's kind's measured best, or a one-line refusal for a kind that is no teacher."""
    kind = kind_of(teacher)
    if kind.distill is None:
        raise ValueError(
            f"difflab distill has no route for {_a(kind.description)} teacher; it distils a pixel "
            "diffusion model (difflab train)"
        )
    return kind.distill(teacher, steps)


def _consistency_steps(config: RunConfig) -> list[int]:
    return sorted(STEP_TIMES)


def _progressive_steps(config: RunConfig) -> list[int]:
    return [config.section(ProgressiveConfig).steps]


def _nothing(config: RunConfig) -> dict[str, Any]:
    return {}


def _consistency_teacher(config: RunConfig) -> dict[str, Any]:
    cc = config.section(ConsistencyConfig)
    return {"teacher": load_teacher(cc.teacher, cc.teacher_sha256)}


def _progressive_teacher(config: RunConfig) -> dict[str, Any]:
    pc = config.section(ProgressiveConfig)
    return {"teacher": load_teacher(pc.teacher, pc.teacher_sha256)}


def _flow_teacher(section: type[ReflowConfig | MeanFlowConfig]) -> Callable[..., dict[str, Any]]:
    """The prepare step of a student of a flow teacher: its section names the teacher."""

    def prepare(config: RunConfig) -> dict[str, Any]:
        s = config.section(section)
        return {"teacher": load_flow_teacher(s.teacher, s.teacher_sha256)}

    return prepare


def _flow_distill_route(teacher: RunConfig, steps: int) -> DistillRoute:
    """Reflow for a flow matching teacher: one rectification of its ODE (Liu et al. 2022)."""
    evidence = (
        "from a 10-minute MNIST flow teacher, FID 8.24 in one Euler step and 5.19 in two (the "
        "teacher's own one step: 154); MeanFlow diverged there (docs/flow.md)"
    )
    return DistillRoute("reflow", {}, evidence)


def _autoencoder_file(config: RunConfig) -> dict[str, Any]:
    lc = config.section(LatentConfig)
    load_autoencoder(lc.autoencoder, lc.autoencoder_sha256)
    return {}


def _test_split(config: RunConfig) -> dict[str, Any]:
    return {"test": load_test_split(config)}


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(
            name="diffusion", description="diffusion", command="train",
            objective=lambda config, data, ctx, out: DiffusionObjective(config, data, ctx),
            prepare=_nothing, load=load_unet, plan=planners.plan_diffusion, denoiser=True,
            refusal="", title=lambda config: "diffusion model", stepwise=True,
            distill=_diffusion_distill_route,
        ),
        Kind(
            name="latent-diffusion", description="latent diffusion", command="train",
            objective=lambda config, data, ctx, out: LatentDiffusion(config, data, ctx),
            prepare=_autoencoder_file, load=load_latent_unet, plan=planners.plan_diffusion,
            denoiser=True, refusal="", title=lambda config: "latent diffusion model", stepwise=True,
        ),
        Kind(
            name="flow", description="flow matching", command="train",
            objective=lambda config, data, ctx, out: FlowObjective(config, data, ctx),
            prepare=_nothing, load=load_unet, plan=planners.plan_flow, denoiser=True,
            refusal="", title=lambda config: "flow matching model", stepwise=True,
            samplers=(*FLOW_SOLVERS, *SAMPLERS), distill=_flow_distill_route,
        ),
        Kind(
            name="consistency", description="distillation", command="distill",
            objective=lambda config, data, ctx, out, teacher: ConsistencyDistillation(
                config, teacher, data, ctx
            ),
            prepare=_consistency_teacher, load=load_unet,
            plan=planners.plan_consistency, denoiser=False,
            refusal="this checkpoint is a consistency model (made by difflab distill): it samples "
            "with difflab sample / evaluate --steps 1, 2 or 4, not with a diffusion sampler or the "
            "editing commands",
            title=lambda config: "distilled consistency model (1, 2 or 4 steps)", stepwise=True,
            step_choices=_consistency_steps,
        ),
        Kind(
            name="progressive", description="distillation", command="distill",
            objective=lambda config, data, ctx, out, teacher: ProgressiveDistillation(
                config, teacher, data, ctx, out
            ),
            prepare=_progressive_teacher, load=load_unet,
            plan=planners.plan_progressive, denoiser=True,
            refusal="", step_choices=_progressive_steps,
            title=lambda config: "progressively distilled model (DDIM, "
            f"{_progressive_steps(config)[0]} steps)",
            stepwise=True,
        ),
        Kind(
            name="reflow", description="distillation", command="distill",
            objective=lambda config, data, ctx, out, teacher: Reflow(
                config, teacher, data, ctx, out
            ),
            prepare=_flow_teacher(ReflowConfig), load=load_unet, plan=planners.plan_reflow, denoiser=True,
            refusal="", title=lambda config: "rectified flow model (1 Euler step)",
            stepwise=True, samplers=(*FLOW_SOLVERS, *SAMPLERS), distill=_flow_distill_route,
        ),
        Kind(
            name="meanflow", description="distillation", command="distill",
            objective=lambda config, data, ctx, out, teacher: MeanFlow(config, teacher, data, ctx),
            prepare=_flow_teacher(MeanFlowConfig), load=load_unet, plan=planners.plan_meanflow, denoiser=True,
            refusal="", title=lambda config: "MeanFlow model (1 step)", stepwise=True,
            samplers=(planners.MEANFLOW, *FLOW_SOLVERS, *SAMPLERS),
        ),
        Kind(
            name="gan", description="GAN", command="train-gan",
            objective=lambda config, data, ctx, out: GANObjective(config, data, ctx),
            prepare=_nothing, load=load_generator, plan=planners.plan_gan, denoiser=False,
            refusal="checkpoint {path} is a GAN generator (made by difflab train-gan), not a "
            "diffusion model: this command needs a diffusion checkpoint (a GAN draws with difflab "
            "sample, evaluate and interpolate --seeds)",
            title=lambda config: "GAN generator", stepwise=False,
        ),
        Kind(
            name="autoencoder", description="autoencoder", command="train-autoencoder",
            objective=lambda config, data, ctx, out, test: AutoencoderObjective(
                config, data, test, ctx
            ),
            prepare=_test_split, load=None, plan=None, denoiser=False,
            refusal=NOT_A_DIFFUSION_MODEL, title=lambda config: "autoencoder", stepwise=False,
        ),
    )
}  # fmt: skip
assert tuple(KINDS) == KIND_NAMES, "config.KINDS and the table must list the same kinds"


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def kind_of(config: RunConfig) -> Kind:
    """The row of the table for a configuration (``config.model_kind`` decides)."""
    return KINDS[config.kind]


def _refuse(kind: Kind, ckpt: Checkpoint) -> ValueError:
    return ValueError(
        kind.refusal.format(path=ckpt.path, networks=", ".join(sorted(ckpt.networks)))
    )


# Drawing ----------------------------------------------------------------------------------------


def load_model(
    checkpoint: str | os.PathLike[str] | Checkpoint,
    device: str = "auto",
    *,
    ema: bool = True,
    backend: str = "torch",
    stepwise: bool = False,
) -> LoadedModel:
    """The network of any checkpoint that draws images (its EMA weights unless ``ema`` is
    False), ready for ``plan_sampling``; an autoencoder, and with ``stepwise`` a GAN (no steps
    to show), is refused in one line."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    kind = kind_of(ckpt.config)
    if kind.load is None or (stepwise and not kind.stepwise):
        raise _refuse(kind, ckpt)
    return kind.load(ckpt, device, ema=ema, backend=backend)


def load_denoiser(
    checkpoint: str | os.PathLike[str] | Checkpoint,
    device: str = "auto",
    *,
    ema: bool = True,
    backend: str = "torch",
) -> LoadedModel:
    """``load_model`` for the commands that need a denoiser (inpaint, img2img, interpolate from
    images, inspect): a diffusion model or a progressive student; others are refused in one line."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    kind = kind_of(ckpt.config)
    if not kind.denoiser:
        raise _refuse(kind, ckpt)
    return load_model(ckpt, device, ema=ema, backend=backend)


def check_denoiser(loaded: LoadedModel) -> None:
    """Refuse, in one line, a loaded model whose network is no denoiser (``load_denoiser``'s
    check, for a command that first looked at what it loaded)."""
    kind = kind_of(loaded.config)
    if not kind.denoiser:
        raise ValueError(kind.refusal.format(path=loaded.path, networks=""))


def plan_sampling(loaded: LoadedModel, request: SamplingRequest) -> SamplingPlan:
    """The request checked and completed for this model by its kind's planner: the one place
    every face (sample, evaluate, the web page, the notebook) gets its plan from."""
    planner = kind_of(loaded.config).plan
    assert planner is not None  # load_model loads only kinds that draw
    return planner(loaded, request)


def plan_editing(loaded: LoadedModel, request: SamplingRequest) -> SamplingPlan:
    """The plan of an editing command (``sampling.plan.plan_edit``) for a model whose kind has a
    denoiser; another kind is refused in one line."""
    check_denoiser(loaded)
    return planners.plan_edit(loaded, request)


def draw(
    loaded: LoadedModel,
    *,
    num_images: int,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = False,
    **request: Any,
) -> torch.Tensor:
    """``num_images`` images (float32 NCHW in [-1, 1], CPU) from any loaded checkpoint: its
    plan for ``request`` (fields of ``SamplingRequest``), executed."""
    plan = plan_sampling(loaded, SamplingRequest(num_images=num_images, seed=seed, **request))
    return execute(loaded, plan, batch_size=batch_size, progress=progress)


# Training ---------------------------------------------------------------------------------------


def train(
    config: RunConfig,
    dataset: ImageDataset,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    **resources: Any,
) -> TrainResult:
    """Train the model ``config`` describes on ``dataset`` into the run directory ``out_dir``:
    its kind's objective on the harness (``training.fit``), or the NumPy U-Net's own loop.

    ``resume`` continues from the newest checkpoint in ``out_dir`` exactly where it stopped.
    ``resources`` are what the objective needs beyond the data (``Kind.prepare``: a teacher
    checkpoint, a test split); those not given are loaded here, before anything is written.
    """
    if config.backend == "numpy":
        check_numpy_options(config.train)
        if resume:
            raise ValueError("--resume is available for the torch backend only")
        return train_numpy(config, dataset, out_dir, overwrite=overwrite, progress=progress)
    # The precision, resolved once (auto) and recorded, before the objective sees the config.
    config = replace(config, train=settle_precision(config.train, pick_device(config.train.device)))
    kind = kind_of(config)
    resources = resources or kind.prepare(config)
    out = Path(out_dir)

    def make_objective(ctx: Context) -> Objective:
        return kind.objective(config, dataset, ctx, out, **resources)

    return fit(
        make_objective, config, out, resume=resume, overwrite=overwrite, progress=progress,
        prog=f"difflab {kind.command}",
    )  # fmt: skip


def resume_run(
    run_dir: str | os.PathLike[str], command: str, **changes: Any
) -> tuple[RunConfig, ImageDataset, dict[str, Any]]:
    """What ``difflab COMMAND --resume RUN_DIR`` goes on with: the run's configuration with
    ``changes`` (``training.RESUME_FLAGS``), its data and its objective's resources. A run of
    another command's kind is refused in one line that names the command to use."""
    out = Path(run_dir)
    ckpt = load_checkpoint(latest_checkpoint(out))
    kind = kind_of(ckpt.config)
    if kind.command != command:
        go_on = f"continue it with difflab {kind.command} --resume {out}"
        if command == "train":  # the general command: say what the run is
            raise ValueError(f"{out} is {_a(kind.description)} run; {go_on}")
        expected = next(k.description for k in KINDS.values() if k.command == command)
        raise ValueError(
            f"{out} is not {_a(expected)} run (it is {_a(kind.description)} run); {go_on}"
        )
    config = resume_config(ckpt, **changes)
    resources = kind.prepare(config)
    tc = config.train
    dataset = load_dataset(
        tc.data, data_dir=tc.data_dir, image_size=config.image_shape[1], seed=tc.seed,
        num_images=tc.num_images, vendors=tc.vendors,
    )  # fmt: skip
    return config, dataset, resources
