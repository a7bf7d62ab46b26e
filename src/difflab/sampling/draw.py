"""From a loaded network to images: run a sampling plan, or a sampler on a bare network.

``execute`` draws what a ``SamplingPlan`` (``sampling.plan``) says, for any kind: a GAN's
generator, or ``generate`` with the plan's sampler, timestep grid, guidance and clipping, which it
never changes. ``generate`` is also what the training previews call on the network they train.
Used by ``difflab sample``, ``evaluate``, the previews, the web page and the notebook, so they all
sample the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from difflab.config import RunConfig
from difflab.consistency import consistency_function, consistency_timesteps, sample_consistency
from difflab.diffusion import split_variance
from difflab.flow import FLOW_SOLVERS, FLOW_TIME_SCALE, euler, heun, meanflow_sample
from difflab.models.gan import Generator
from difflab.models.unet import UNet
from difflab.nn_numpy import NumpyUNet
from difflab.samplers import SAMPLERS, Denoiser, make_denoiser, sample
from difflab.sampling.load import LoadedModel
from difflab.sampling.plan import CONSISTENCY, GENERATOR, MEANFLOW, SamplingPlan
from difflab.sampling.spaces import LatentSpace, PixelSpace
from difflab.schedules import Schedule

FLOW_SOLVER_FUNCTIONS = {"euler": euler, "heun": heun}


def execute(
    loaded: LoadedModel,
    plan: SamplingPlan,
    *,
    x_T: torch.Tensor | None = None,
    batch_size: int = 256,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """The images (float32 NCHW in [-1, 1], CPU) that ``plan`` asks of ``loaded``, exactly as
    planned: a GAN's generator on ``gan_latents(plan.seed)``, else ``generate``."""
    if plan.sampler == GENERATOR:
        assert isinstance(loaded.model, Generator)
        return generate_gan(
            loaded.model, num_images=plan.num_images, seed=plan.seed, batch_size=batch_size
        )
    assert loaded.schedule is not None and not isinstance(loaded.model, Generator)
    return generate(
        loaded.model, loaded.config, loaded.schedule, space=loaded.space, x_T=x_T,
        batch_size=batch_size, callback=callback, progress=progress, **plan.generate_kwargs(),
    )  # fmt: skip


def gan_latents(num_images: int, z_dim: int, seed: int) -> torch.Tensor:
    """z ~ N(0, I), (num_images, z_dim), from a CPU generator seeded with ``seed``: the same z on
    every device and for any batch size, so ``--seed`` alone fixes a GAN's images."""
    return torch.randn(num_images, z_dim, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def generate_gan(
    generator: Generator,
    *,
    num_images: int,
    seed: int = 0,
    batch_size: int = 256,
    z: torch.Tensor | None = None,
) -> torch.Tensor:
    """G(z) for ``num_images`` latents (``gan_latents(seed)`` unless ``z`` is given), in eval mode
    (BatchNorm's running statistics: an image does not depend on the others in its batch)."""
    if num_images < 1:
        raise ValueError(f"number of images must be >= 1, got {num_images}")
    z = gan_latents(num_images, generator.z_dim, seed) if z is None else z
    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    out = [generator(chunk.to(device)).float().clamp(-1, 1).cpu() for chunk in z.split(batch_size)]
    generator.train(was_training)
    return torch.cat(out)  # (N, C, H, W)


def guided_model_fn(
    model: Callable[..., Any],
    y: Any,
    guidance: float,
    null_label: int,
    with_variance: bool = False,
) -> Callable[[Any, Any], Any]:
    """Classifier-free guidance (Ho & Salimans 2022, Eq. 6): out = u + w (c - u).

    c is the network output for the labels ``y``, u for the null label the network learned under
    label dropout. w = 1 is plain conditional sampling (one pass), w = 0 unconditional, w > 1
    trades diversity for fidelity to the class. Mixing outputs is the same for every prediction
    target: eps, x0 and v are each affine in the output at fixed (x_t, t). Both halves run in one
    batch of 2B. ``with_variance`` asks a learned-variance U-Net for its variance output too
    (``diffusion.split_variance``); guidance mixes the predictions and keeps the conditional
    pass's variance, as GLIDE's sampler does.
    """
    if with_variance:
        model = partial(model, with_variance=True)
    if y is None or guidance == 1.0:
        return lambda x_t, t: model(x_t, t, y)
    null = y * 0 + null_label  # same type, dtype and device as y
    if guidance == 0.0:
        return lambda x_t, t: model(x_t, t, null)
    cat = torch.cat if isinstance(y, torch.Tensor) else np.concatenate
    y2 = cat([y, null])

    def model_fn(x_t: Any, t: Any) -> Any:
        out = model(cat([x_t, x_t]), cat([t, t]), y2)
        cond, uncond = out[: len(y)], out[len(y) :]
        if not with_variance:
            return uncond + guidance * (cond - uncond)
        (cond, v), (uncond, _) = split_variance(cond), split_variance(uncond)
        return cat([uncond + guidance * (cond - uncond), v], 1)  # (B, 2C, H, W)

    return model_fn


def conditioned(model: Callable[..., Any], config: RunConfig) -> tuple[Callable[..., Any], int]:
    """The network as guidance calls it, ``model(x_t, t, c, **options)``, and the null value of
    its conditioning c: a class-conditional model's labels and its null label, or a text model's
    prompt tokens (B, L) and the pad id 0 (a row of pads is the empty prompt, which label
    dropout trained as the unconditional model)."""
    if not config.takes_prompts:
        return model, config.model.num_classes

    def text_model(x_t: Any, t: Any, tokens: Any, **options: Any) -> Any:
        return model(x_t, t, None, tokens=tokens, **options)

    return text_model, 0


def flow_velocity(
    model: Callable[[Any, Any, Any], Any], y: Any, guidance: float, null_label: int
) -> Callable[[Any, Any], Any]:
    """A flow network as the solvers call it, ``v(x, t)`` at flow time t (it sees
    ``FLOW_TIME_SCALE t``), with classifier-free guidance combined on the velocities."""
    guided = guided_model_fn(model, y, guidance, null_label)
    return lambda x, t: guided(x, t * FLOW_TIME_SCALE)


def average_velocity(model: Any, y: Any) -> Callable[[Any, Any, Any], Any]:
    """A MeanFlow network as ``flow.meanflow_sample`` calls it, ``u(z, r, t)`` at flow times
    (it sees ``FLOW_TIME_SCALE t`` and the interval ``FLOW_TIME_SCALE (t - r)``)."""
    return lambda z, r, t: model(z, t * FLOW_TIME_SCALE, y, interval=(t - r) * FLOW_TIME_SCALE)


def model_denoiser(
    model: UNet | NumpyUNet,
    config: RunConfig,
    schedule: Schedule,
    y: Any = None,
    guidance: float = 1.0,
    clip_x0: bool = True,
    learned_variance: bool = False,
) -> Denoiser:
    """The sampler's ``denoiser(x_t, t) -> (eps, x0_pred)`` for a trained network, with guidance
    (a network that predicts eps, x0 or v: not a consistency student, whose output is a
    consistency function's; the kind table keeps those away from here). ``learned_variance``:
    (eps, x0_pred, v) of a network trained with it, for DDPM's ``variance="learned"``."""
    network, null = conditioned(model, config)
    model_fn = guided_model_fn(network, y, guidance, null, with_variance=learned_variance)
    return make_denoiser(model_fn, schedule, config.diffusion.prediction, clip_x0, learned_variance)


@torch.no_grad()
def generate(
    model: UNet | NumpyUNet,
    config: RunConfig,
    schedule: Schedule,
    *,
    num_images: int,
    seed: int = 0,
    sampler: str = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    clip_x0: bool = True,
    labels: torch.Tensor | None = None,
    guidance: float = 1.0,
    x_T: torch.Tensor | None = None,
    batch_size: int = 256,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    space: PixelSpace | LatentSpace | None = None,
    **options: Any,
) -> torch.Tensor:
    """Draw ``num_images`` samples (float32 NCHW in [-1, 1], on the CPU) from either backend.

    The initial noise and every sampler noise come from one generator seeded with ``seed``
    (``torch.Generator`` for the PyTorch U-Net, ``np.random.Generator`` for the NumPy one), so the
    same seed, model and flags give the same images. The callback is called for the first batch
    only (trajectory pictures need a few images, not thousands). ``labels`` (one per image) pick
    the classes of a conditional model and ``guidance`` the classifier-free guidance scale;
    ``x_T`` replaces the initial noise (to compare samplers or guidance scales on the same noise).
    ``progress`` shows a bar of the images drawn, a batch at a time (on stderr). ``space`` is where
    the samples live (``sampling.spaces``: pixels by default; a latent model's must be given).
    ``sampler`` is one of ``SAMPLERS``, or ``"consistency"`` for a consistency student; ``steps``,
    ``eta``, ``clip_x0``, ``guidance`` and ``options`` (spacing, timesteps, variance) go to it as
    they are: a sampling plan (``sampling.plan``) has already completed them for the model.
    """
    if sampler not in (*SAMPLERS, *FLOW_SOLVERS, CONSISTENCY, MEANFLOW):
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if space is None:
        if config.kind == "latent-diffusion":
            raise ValueError("a latent diffusion model samples in its latent space: pass space=")
        space = PixelSpace()
    if num_images < 1:
        raise ValueError(f"number of images must be >= 1, got {num_images}")
    mc = config.model
    if isinstance(model, NumpyUNet):
        rng = np.random.default_rng(seed)
        generator: Any = rng

        def noise(n: int) -> Any:
            return rng.standard_normal((n, mc.in_channels, mc.image_size, mc.image_size)).astype(
                model.dtype
            )
    else:
        device = next(model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
        was_training = model.training
        model.eval()

        def noise(n: int) -> Any:
            shape = (n, mc.in_channels, mc.image_size, mc.image_size)
            return torch.randn(shape, generator=generator, device=device)

    clip_x0 = clip_x0 and space.clip_x0  # latents are never clipped to the images' range
    callback = space.wrap_callback(callback)
    out = []
    bar = tqdm(total=num_images, desc="generating", unit="img", disable=not progress, leave=False)
    for start in range(0, num_images, batch_size):
        n = min(batch_size, num_images - start)
        y = None if labels is None else labels[start : start + n]
        if y is not None:
            y = y.numpy() if isinstance(model, NumpyUNet) else y.to(device)

        x_start = noise(n) if x_T is None else _like_model(x_T[start : start + n], model)
        if sampler == CONSISTENCY:  # a consistency student: its own 1-4 step sampler
            x = sample_consistency_model(
                model, config, schedule, x_start, y, steps=steps or 1, generator=generator,
                callback=callback if start == 0 else None, timesteps=options.get("timesteps"),
            )  # fmt: skip
        elif sampler == MEANFLOW:  # a MeanFlow student's jumps with its average velocity
            x = meanflow_sample(
                average_velocity(model, y), x_start, options["timesteps"],
                callback=callback if start == 0 else None,
            )  # fmt: skip
        elif sampler in FLOW_SOLVERS:  # a flow model's own ODE, on its grid of flow times
            network, null = conditioned(model, config)
            x = FLOW_SOLVER_FUNCTIONS[sampler](
                flow_velocity(network, y, guidance, null), x_start,
                options["timesteps"], callback=callback if start == 0 else None,
            )  # fmt: skip
        else:
            learned = sampler == "ddpm" and options.get("variance") == "learned"
            denoiser = model_denoiser(model, config, schedule, y, guidance, clip_x0, learned)
            x = sample(
                sampler, denoiser, x_start, schedule, steps=steps, eta=eta, generator=generator,
                callback=callback if start == 0 else None, **options,
            )  # fmt: skip
        out.append(space.to_images(x))  # (n, C, H, W) images in [-1, 1], on the CPU
        bar.update(n)
    bar.close()
    if not isinstance(model, NumpyUNet):
        model.train(was_training)
    return torch.cat(out)


def sample_consistency_model(
    model: UNet | NumpyUNet,
    config: RunConfig,
    schedule: Schedule,
    x_T: Any,
    y: Any,
    *,
    steps: int,
    generator: Any,
    callback: Callable[[dict[str, Any]], None] | None = None,
    timesteps: list[int] | None = None,
) -> Any:
    """``steps``-step consistency sampling (``difflab.consistency``) of a distilled model, at
    ``timesteps`` (default: ``consistency_timesteps``); its guidance scale was baked in by
    distillation."""
    f = consistency_function(lambda x, t: model(x, t, y), schedule, config.diffusion.prediction)
    if timesteps is None:
        timesteps = consistency_timesteps(schedule.num_timesteps, steps)
    return sample_consistency(
        f, x_T, schedule, timesteps=timesteps, generator=generator, callback=callback
    )


def _like_model(x: torch.Tensor, model: UNet | NumpyUNet) -> Any:
    """A batch as the model's backend wants it: a NumPy array or a tensor on the model's device."""
    if isinstance(model, NumpyUNet):
        return x.numpy().astype(model.dtype)
    return x.to(next(model.parameters()).device)


class TrajectoryRecorder:
    """A sampler callback that keeps x_t (and x0_pred) at chosen timesteps, for pictures and GIFs."""

    def __init__(self, keep: Callable[[int, int], bool], num_images: int = 8) -> None:
        self.keep = keep  # keep(i, t) -> whether to record this step
        self.num_images = num_images
        self.frames: list[tuple[int, torch.Tensor]] = []  # (t, x_t) in sampling order
        self.x0_frames: list[tuple[int, torch.Tensor]] = []  # (t, x0_pred)

    def __call__(self, info: dict[str, Any]) -> None:
        if self.keep(info["i"], info["t"]):
            self.frames.append((info["t"], _cpu_copy(info["x"][: self.num_images])))
            self.x0_frames.append((info["t"], _cpu_copy(info["x0_pred"][: self.num_images])))

    def with_x0(self, final: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """(t, x_t, x0_pred) per recorded step, then (-1, final, final): frames for
        ``viz.save_denoising_gif``."""
        frames = [(t, x, x0) for (t, x), (_, x0) in zip(self.frames, self.x0_frames, strict=True)]
        final = final[: self.num_images]
        return [*frames, (-1, final, final)]


def _cpu_copy(x: Any) -> torch.Tensor:
    """A float32 CPU tensor copy of a torch tensor or NumPy array (either backend's batch)."""
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().clone()
    return torch.tensor(np.asarray(x, dtype=np.float32))
