"""The sampling plan: what a face asks for (``SamplingRequest``), checked and completed once for
the loaded model (``SamplingPlan``), so that the sampler executes it without changing anything.

Every face builds a request from its inputs and asks ``difflab.kinds.plan_sampling``, which hands
it to the planner of the model's kind below: ``plan_diffusion`` (pixel or latent: any sampler,
guidance, a class), ``plan_flow`` (its own euler/heun, or any DDPM sampler), ``plan_consistency`` (1, 2 or 4 consistency steps), ``plan_progressive`` (DDIM
in the student's steps, unclipped), ``plan_gan`` (one generator evaluation); and ``plan_edit``
for the editing commands on any model with a denoiser. A bad value is a
``ValueError`` with one line naming it; a plan holds its timestep grid as data (k-diffusion's
``sigmas``), which the solver takes as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from difflab.config import ConsistencyConfig, FlowConfig, ProgressiveConfig, RunConfig
from difflab.consistency import consistency_timesteps
from difflab.flow import FLOW_DEFAULT_STEPS, FLOW_SOLVERS, MEANFLOW_DEFAULT_STEPS, flow_timesteps
from difflab.models.text import tokenize
from difflab.samplers import (
    DEFAULT_SAMPLER,
    SAMPLERS,
    VARIANCES,
    default_steps,
    timestep_sequence,
)

if TYPE_CHECKING:
    from difflab.sampling.load import LoadedModel

CONSISTENCY = "consistency"  # the sampler of a consistency student (difflab.consistency)
GENERATOR = "gan generator"  # a GAN's: one generator evaluation per image
MEANFLOW = "meanflow"  # a MeanFlow student's jumps z_r = z_t - (t - r) u (flow.meanflow_sample)
# A flow model's sampler when none is asked for: UniPC on the DDPM grid (10 steps) beat the flow
# ODE's own Euler and Heun at 4, 8 and 20 evaluations on MNIST (FID 1.83 at 8 against Heun's 2.09
# and Euler's 4.17 after 10 CPU-minutes; docs/flow.md, benchmarks/flow_vs_ddpm.py).
DEFAULT_FLOW_SAMPLER = "unipc"
# A text model's guidance against the empty prompt when a prompt is given and --guidance is not
# (docs/text.md, benchmarks/text_prompts.py: TEXT_GUIDANCE_EVIDENCE).
TEXT_GUIDANCE = 3.0
TEXT_GUIDANCE_EVIDENCE = (
    "the 60-minute mnist-compose model drew 36.6%% of 1,000 prompts correctly at 3, 25.0%% "
    "unguided, 38.4%% at 5, within the noise of 3"
)


@dataclass(frozen=True)
class SamplingRequest:
    """What a face asks of a model. None means not given: the model's own default."""

    num_images: int = 64
    seed: int = 0
    sampler: str | None = None  # one of SAMPLERS
    steps: int | None = None  # network evaluations
    spacing: str | None = None  # which timesteps a respaced sampler visits (default trailing)
    eta: float | None = None  # DDIM noise
    variance: str | None = None  # DDPM's sigma^2: beta, beta_tilde or learned (VARIANCES)
    guidance: float | None = None  # classifier-free guidance scale
    guidance_sweep: tuple[float, ...] | None = None  # several scales, one row each
    class_label: int | str | None = None  # an index or a class name; None: every class
    class_rows: bool = False  # no class chosen: every class in blocks of a row each (a grid with
    # one row per class, rounded up to whole rows) instead of the classes in turn; a text
    # model's prompts likewise, a row each
    prompts: tuple[str, ...] | None = None  # a text model's prompts (words of its vocabulary)
    clip: bool | None = None  # False: do not clip the predicted x0 to [-1, 1]
    trajectory: str | None = None  # the flag that asks for the intermediate steps, if any


@dataclass(frozen=True)
class SamplingPlan:
    """A request checked and completed for one model: everything the sampler needs, nothing left
    to resolve."""

    sampler: str  # one of SAMPLERS, CONSISTENCY or GENERATOR
    steps: int  # network evaluations per image
    timesteps: tuple[float, ...]  # the grid, noisiest first: the code timesteps visited (ints),
    # or for euler/heun the flow times from 1 to 0; empty for a GAN
    num_images: int
    seed: int
    labels: torch.Tensor | None = None  # one per image: a class (N,), or a text model's prompt
    # tokens (N, L); None: unconditional (the null label, the empty prompt)
    guidance: float = 1.0  # the scale applied while sampling (1: one conditional pass)
    shown_guidance: float = 1.0  # the scale to report: baked in for a distilled model
    eta: float = 0.0  # DDIM's noise
    variance: str = "beta"  # DDPM's sigma^2: beta, beta_tilde, or learned (the network's own)
    clip_x0: bool = True  # clip the predicted x0 to [-1, 1]
    guidance_sweep: tuple[float, ...] = ()  # scales of a sweep, checked
    rows: int = 0  # >0: the labels are classes (or prompts) in blocks of this many (a grid row
    # each)
    prompts: tuple[str, ...] = ()  # a text model's prompts, in the order of their rows

    def generate_kwargs(self) -> dict[str, Any]:
        """The keywords of ``sampling.draw.generate`` that carry this plan out."""
        kwargs: dict[str, Any] = {
            "num_images": self.num_images, "seed": self.seed, "sampler": self.sampler,
            "steps": self.steps, "timesteps": list(self.timesteps), "labels": self.labels,
            "guidance": self.guidance, "clip_x0": self.clip_x0, "eta": self.eta,
        }  # fmt: skip
        if self.sampler == "ddpm":
            kwargs["variance"] = self.variance
        return kwargs

    def with_guidance(self, guidance: float) -> SamplingPlan:
        """The same plan at another guidance scale (one of its checked ``guidance_sweep``)."""
        assert guidance in self.guidance_sweep
        return replace(self, guidance=guidance, shown_guidance=guidance)


def class_labels(
    config: RunConfig, class_label: int | str | None, num_images: int
) -> torch.Tensor | None:
    """The label of each image to draw: ``class_label`` for all, or classes in turn (0, 1, 2, ...).

    ``class_label`` may be an index or one of the checkpoint's class names. Unconditional models
    get None; asking them for a class is an error.
    """
    k = config.model.num_classes
    if k == 0:
        if class_label is not None:
            raise ValueError(
                f"class label {class_label!r} given, but this model is unconditional "
                "(train with --conditional to generate chosen classes)"
            )
        return None
    if class_label is None:
        return torch.arange(num_images) % k
    names = list(config.class_names)
    if isinstance(class_label, str) and not class_label.lstrip("-").isdigit():
        if class_label not in names:
            raise ValueError(f"unknown class {class_label!r}; expected one of {', '.join(names)}")
        index = names.index(class_label)
    else:
        index = int(class_label)
    if not 0 <= index < k:
        shown = f" ({', '.join(f'{i}={n}' for i, n in enumerate(names))})" if names else ""
        raise ValueError(f"class label {index} out of range; expected 0..{k - 1}{shown}")
    return torch.full((num_images,), index, dtype=torch.long)


def prompt_tokens(config: RunConfig, prompts: tuple[str, ...] | None) -> torch.Tensor | None:
    """A text model's prompts as token ids of its vocabulary, (P, L); None for no prompts. A
    prompt for a model without text, or with a word it does not know, is a one-line error."""
    if prompts is None:
        return None
    if not config.takes_prompts:
        raise ValueError(
            "a prompt was given, but this model has no text conditioning (train one with "
            "difflab train --data mnist-compose --text, or --data emoji-datasource --text)"
        )
    if not prompts:
        raise ValueError("no prompt given; give --prompt TEXT once per row")
    return tokenize(prompts, config.vocabulary, config.model.text_length)


def check_guidance(config: RunConfig, guidance: float | None) -> float:
    """The guidance scale to use: 1 (plain conditional) by default; an error without labels."""
    if guidance is None:
        return 1.0
    if config.model.num_classes == 0 and not config.takes_prompts:  # text: see _conditioning
        raise ValueError(
            f"guidance {guidance:g} needs a class-conditional model; this checkpoint is "
            "unconditional (train with --conditional)"
        )
    if not (math.isfinite(guidance) and guidance >= 0):
        raise ValueError(f"guidance must be a finite number >= 0, got {guidance}")
    return guidance


def _labels(config: RunConfig, request: SamplingRequest) -> tuple[torch.Tensor | None, int, int]:
    """The labels, the number of images and the rows of a request: every class in blocks of a
    row each when ``class_rows`` and no class was chosen, else ``class_labels``; a text
    model's prompt tokens likewise, a row per prompt or the prompts in turn."""
    if request.prompts is not None and request.class_label is not None:
        raise ValueError(
            "--prompt and --class-label exclude each other: a text model takes prompts, a "
            "class-conditional model a class"
        )
    tokens = prompt_tokens(config, request.prompts)  # (P, L) or None
    if tokens is not None:
        if request.class_rows:
            per_prompt = -(-request.num_images // len(tokens))
            return tokens.repeat_interleave(per_prompt, 0), len(tokens) * per_prompt, per_prompt
        return tokens[torch.arange(request.num_images) % len(tokens)], request.num_images, 0
    k = config.model.num_classes
    if request.class_rows and k and request.class_label is None:
        per_class = -(-request.num_images // k)
        labels = torch.arange(k).repeat_interleave(per_class)
        return labels, len(labels), per_class
    labels = class_labels(config, request.class_label, request.num_images)
    return labels, request.num_images, 0


def ddpm_variance(config: RunConfig, variance: str | None) -> str:
    """DDPM's sigma^2 for this model: the one asked for, else ``learned`` for a network trained
    with --learn-variance (Nichol & Dhariwal 2021) and ``beta`` for others; ``learned`` for a
    network without a variance output is an error."""
    if variance is None:
        return "learned" if config.model.learn_variance else "beta"
    if variance not in VARIANCES:
        raise ValueError(
            f"unknown DDPM variance {variance!r}; expected one of {', '.join(VARIANCES)}"
        )
    if variance == "learned" and not config.model.learn_variance:
        raise ValueError(
            "--variance learned needs a model trained with --learn-variance; this one has a fixed "
            "variance: use beta or beta_tilde"
        )
    return variance


def _check_count(request: SamplingRequest) -> None:
    if request.num_images < 1:
        raise ValueError(f"number of images must be >= 1, got {request.num_images}")


def _conditioning(
    config: RunConfig, request: SamplingRequest
) -> tuple[float, torch.Tensor | None, int, int, tuple[float, ...]]:
    """A request's guidance, labels, image count, class rows and checked guidance sweep."""
    guidance = check_guidance(config, request.guidance)
    labels, n, rows = _labels(config, request)
    sweep = tuple(check_guidance(config, w) for w in request.guidance_sweep or ())
    if config.takes_prompts:
        if sweep:
            raise ValueError(
                "--guidance-sweep draws a column per class; a text model takes --guidance W "
                "with its --prompt rows"
            )
        if request.guidance is not None and labels is None:
            raise ValueError(
                f"guidance {request.guidance:g} needs a prompt: give --prompt (without one a "
                "text model draws from the empty prompt, unguided)"
            )
        if request.guidance is None and labels is not None:
            guidance = TEXT_GUIDANCE
    if sweep and labels is None:
        raise ValueError("--guidance-sweep needs a class-conditional model")
    return guidance, labels, n, rows, sweep


def plan_diffusion(loaded: LoadedModel, request: SamplingRequest) -> SamplingPlan:
    """A diffusion model's plan (pixel or latent): any sampler in any valid steps, guidance and a
    class for a conditional model; x0 clipped unless asked not to or the samples are latents."""
    _check_count(request)
    config, schedule = loaded.config, loaded.schedule
    assert schedule is not None
    sampler = request.sampler or DEFAULT_SAMPLER
    if sampler in FLOW_SOLVERS:  # plan_flow takes them; here the model is no flow model
        raise ValueError(
            f"sampler {sampler} walks a flow matching model's ODE; this {config.kind} model takes "
            f"one of {', '.join(SAMPLERS)}"
        )
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    steps = request.steps or default_steps(sampler, schedule.num_timesteps)
    spacing = request.spacing or "trailing"
    grid = timestep_sequence(schedule.num_timesteps, steps, spacing)  # a bad --steps fails here
    guidance, labels, n, rows, sweep = _conditioning(config, request)
    return SamplingPlan(
        sampler=sampler, steps=steps, timesteps=tuple(grid), num_images=n, seed=request.seed,
        labels=labels, guidance=guidance, shown_guidance=guidance,
        eta=(request.eta or 0.0) if sampler == "ddim" else 0.0,
        variance=ddpm_variance(config, request.variance), clip_x0=request.clip is not False and
        loaded.space.clip_x0, guidance_sweep=sweep, rows=rows, prompts=request.prompts or (),
    )  # fmt: skip


def plan_flow(loaded: LoadedModel, request: SamplingRequest) -> SamplingPlan:
    """A flow matching model's plan: its own ODE with ``euler`` or ``heun`` on the flow grid
    (``flow.flow_timesteps``, shifted once by the model's ``shift``), or any DDPM sampler, which
    reads the model through the flow point with the same SNR (``plan_diffusion``)."""
    sampler = request.sampler or DEFAULT_FLOW_SAMPLER
    if sampler not in FLOW_SOLVERS:
        return plan_diffusion(loaded, replace(request, sampler=sampler))
    _check_count(request)
    steps = request.steps or FLOW_DEFAULT_STEPS[sampler]
    grid = flow_timesteps(steps, loaded.config.section(FlowConfig).shift)  # steps + 1 times, 1 -> 0
    guidance, labels, n, rows, sweep = _conditioning(loaded.config, request)
    return SamplingPlan(
        sampler=sampler, steps=steps, timesteps=tuple(float(t) for t in grid), num_images=n,
        seed=request.seed, labels=labels, guidance=guidance, shown_guidance=guidance,
        clip_x0=False, guidance_sweep=sweep, rows=rows, prompts=request.prompts or (),
    )  # fmt: skip


def plan_reflow(loaded: LoadedModel, request: SamplingRequest) -> SamplingPlan:
    """A reflow student's plan: ``plan_flow``, but one Euler step unless asked otherwise (its
    straightened ODE is what it was trained for)."""
    if request.sampler is None:
        request = replace(request, sampler="euler", steps=request.steps or 1)
    return plan_flow(loaded, request)


def plan_meanflow(loaded: LoadedModel, request: SamplingRequest) -> SamplingPlan:
    """A MeanFlow student's plan: its own jumps (``meanflow``, 1 by default, any number on the
    uniform flow grid), or any flow sampler reading its network at r = t (a velocity model)."""
    sampler = request.sampler or MEANFLOW
    if sampler != MEANFLOW:
        return plan_flow(loaded, request)
    _check_count(request)
    steps = request.steps or MEANFLOW_DEFAULT_STEPS
    grid = flow_timesteps(steps)  # a bad --steps fails here
    guidance, labels, n, rows, sweep = _conditioning(loaded.config, request)
    if guidance != 1.0 or sweep:
        raise ValueError(
            "a MeanFlow model's one-step jumps take no classifier-free guidance (its average "
            "velocity was learned without it); sample with --sampler heun or unipc to guide"
        )
    return SamplingPlan(
        sampler=MEANFLOW, steps=steps, timesteps=tuple(float(t) for t in grid), num_images=n,
        seed=request.seed, labels=labels, clip_x0=False, rows=rows,
    )  # fmt: skip


def plan_edit(loaded: LoadedModel, request: SamplingRequest) -> SamplingPlan:
    """An editing command's plan (inpaint, img2img, interpolate) on a model with a denoiser: the
    command names the sampler its edit runs (``request.sampler``); the steps default to that
    sampler's; without a class a conditional model edits unconditionally (its null label), so
    the labels are the one class asked for, or None."""
    _check_count(request)
    config, schedule, sampler = loaded.config, loaded.schedule, request.sampler
    assert schedule is not None and sampler is not None
    steps = request.steps or default_steps(sampler, schedule.num_timesteps)
    grid = timestep_sequence(schedule.num_timesteps, steps, request.spacing or "trailing")
    guidance = check_guidance(config, request.guidance)
    if config.takes_prompts and request.guidance is not None:
        raise ValueError(
            "the editing commands take no prompt yet: a text model edits from the empty prompt, "
            "unguided (leave out --guidance)"
        )
    labels = None
    if request.class_label is not None:
        labels = class_labels(config, request.class_label, 1)  # (1,): one class for every edit
    return SamplingPlan(
        sampler=sampler, steps=steps, timesteps=tuple(grid), num_images=request.num_images,
        seed=request.seed, labels=labels, guidance=guidance, shown_guidance=guidance,
        eta=(request.eta or 0.0) if sampler == "ddim" else 0.0,
        variance=request.variance or "beta",  # the edits' DDPM steps take a fixed variance
        clip_x0=request.clip is not False and loaded.space.clip_x0,
    )  # fmt: skip


def _refuse_sweep(request: SamplingRequest) -> None:
    if request.guidance_sweep:
        raise ValueError("--guidance-sweep: a distilled model has its guidance baked in")


def _baked_guidance(baked: float, request: SamplingRequest) -> None:
    """A distilled model's guidance was baked in: asking for another is an error."""
    if request.guidance is not None and request.guidance != baked:
        raise ValueError(
            f"--guidance {request.guidance:g}: this model was distilled at guidance {baked:g}, "
            "which is baked in (distil again with --guidance W for another)"
        )


def plan_consistency(loaded: LoadedModel, request: SamplingRequest) -> SamplingPlan:
    """A consistency student's plan: consistency sampling in 1, 2 or 4 steps (1 by default), its
    guidance the one it was distilled at."""
    _check_count(request)
    config, schedule = loaded.config, loaded.schedule
    assert schedule is not None
    baked = config.section(ConsistencyConfig).guidance
    _refuse_sweep(request)
    steps = request.steps or 1
    grid = consistency_timesteps(schedule.num_timesteps, steps)  # an unsupported --steps fails
    _baked_guidance(baked, request)
    labels, n, rows = _labels(config, request)
    return SamplingPlan(
        sampler=CONSISTENCY, steps=steps, timesteps=tuple(grid), num_images=n,
        seed=request.seed, labels=labels, shown_guidance=baked, rows=rows,
    )  # fmt: skip


def plan_progressive(loaded: LoadedModel, request: SamplingRequest) -> SamplingPlan:
    """A progressive student's plan: deterministic DDIM in its own steps (or others asked for),
    unclipped as it was trained, its guidance the one it was distilled at."""
    _check_count(request)
    config, schedule = loaded.config, loaded.schedule
    assert schedule is not None
    pc = config.section(ProgressiveConfig)
    _refuse_sweep(request)
    steps = request.steps or pc.steps
    grid = timestep_sequence(schedule.num_timesteps, steps)  # an unsupported --steps fails here
    _baked_guidance(pc.guidance, request)
    labels, n, rows = _labels(config, request)
    return SamplingPlan(
        sampler="ddim", steps=steps, timesteps=tuple(grid), num_images=n, seed=request.seed,
        labels=labels, shown_guidance=pc.guidance, clip_x0=False, rows=rows,
    )  # fmt: skip


# What a GAN takes of a request: the number of images and the seed. Everything else is a
# diffusion model's, in the order the error names the first one given.
DIFFUSION_ONLY = {
    "sampler": "--sampler", "steps": "--steps", "spacing": "--spacing", "eta": "--eta",
    "variance": "--variance", "trajectory": None, "guidance_sweep": "--guidance-sweep",
    "guidance": "--guidance", "class_label": "--class-label", "clip": "--no-clip",
    "prompts": "--prompt",
}  # fmt: skip


def plan_gan(loaded: LoadedModel, request: SamplingRequest) -> SamplingPlan:
    """A GAN's plan: G(z) for ``num_images`` latents z from ``seed``; a diffusion-only value is a
    one-line error naming it."""
    for name, flag in DIFFUSION_ONLY.items():
        value = getattr(request, name)
        if value is not None and value is not False:
            raise ValueError(
                f"{flag or value} applies to diffusion checkpoints; {loaded.config.train.data} "
                f"GAN {loaded.path} draws each image in one generator evaluation, from a seed"
            )
    _check_count(request)
    return SamplingPlan(
        sampler=GENERATOR, steps=1, timesteps=(), num_images=request.num_images, seed=request.seed
    )
