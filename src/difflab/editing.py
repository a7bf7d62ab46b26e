"""Editing with a trained denoiser: inpainting, image-to-image (SDEdit), inversion, interpolation.

Like the samplers (``difflab.samplers``), each algorithm is one small function on a
``denoiser(x_t, t) -> (eps, x0_pred)``; they work on PyTorch tensors and NumPy arrays alike, take
their randomness from the generator passed in, and report each step to an optional callback.
Images are NCHW in [-1, 1]; masks are 1 where new content is generated and 0 where the image is
kept.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from difflab.samplers import (
    Callback,
    Denoiser,
    alpha_bar_pairs,
    ddim_step,
    ddpm_step,
    noise_like,
    sample,
    sample_ddim,
    strength_sequence,
    timestep_sequence,
    timesteps_like,
)
from difflab.schedules import Schedule

MASK_REGIONS = {  # name -> (top, bottom, left, right) as fractions of the image side
    "center": (0.25, 0.75, 0.25, 0.75),
    "left": (0.0, 1.0, 0.0, 0.5),
    "right": (0.0, 1.0, 0.5, 1.0),
    "top": (0.0, 0.5, 0.0, 1.0),
    "bottom": (0.5, 1.0, 0.0, 1.0),
}


def region_mask(region: str, image_size: int) -> torch.Tensor:
    """A (1, 1, H, W) mask that is 1 on the named part of the image (``MASK_REGIONS``)."""
    if region not in MASK_REGIONS:
        raise ValueError(
            f"unknown mask region {region!r}; expected one of {', '.join(MASK_REGIONS)}"
        )
    top, bottom, left, right = (round(f * image_size) for f in MASK_REGIONS[region])
    mask = torch.zeros(1, 1, image_size, image_size)
    mask[..., top:bottom, left:right] = 1.0
    return mask


def inpaint(
    denoiser: Denoiser,
    image: Any,
    mask: Any,
    schedule: Schedule,
    *,
    steps: int | None = None,
    resample: int = 1,
    variance: str = "beta",
    generator: Any,
    callback: Callback | None = None,
) -> Any:
    """Fill the masked region of ``image`` so that it fits the rest (Lugmayr et al. 2022, Alg. 1).

    Ancestral (DDPM) sampling from pure noise where, after each step t -> s, the known region is
    replaced by the image noised to level s, q(x_s | x_0), so the generated part keeps seeing
    the real surroundings. With ``resample = U > 1`` (RePaint) each step is repeated U times,
    going back up with the forward step x_t ~ N(sqrt(ab_t / ab_s) x_s, (1 - ab_t / ab_s) I) in
    between, which lets the generated region harmonise with the known one. ``steps`` respaces
    the chain as in ``sample_ddpm``. Returns the image with only the masked region changed.
    """
    if resample < 1:
        raise ValueError(f"resample must be >= 1, got {resample}")
    keep = 1.0 - mask  # 1 on the known pixels
    seq = timestep_sequence(schedule.num_timesteps, steps or schedule.num_timesteps)
    x = noise_like(image, generator)
    for i, (t, ab_t, ab_s) in enumerate(alpha_bar_pairs(schedule, seq)):
        last = i == len(seq) - 1
        for u in range(resample):
            _, x0 = denoiser(x, timesteps_like(x, t))
            if callback is not None and u == 0:
                callback({"x": x, "i": i, "t": t, "x0_pred": x0})
            noise = None if last else noise_like(x, generator)
            unknown = ddpm_step(x, x0, ab_t, ab_s, variance, noise)
            known = (
                image
                if last
                else math.sqrt(ab_s) * image + math.sqrt(1.0 - ab_s) * (noise_like(x, generator))
            )
            x_s = keep * known + mask * unknown
            if u < resample - 1 and not last:  # back up to t and try this step again
                x = math.sqrt(ab_t / ab_s) * x_s + math.sqrt(1.0 - ab_t / ab_s) * (
                    noise_like(x, generator)
                )
        x = x_s
    return x


def sdedit(
    denoiser: Denoiser,
    image: Any,
    schedule: Schedule,
    *,
    strength: float = 0.5,
    sampler: str = "ddpm",
    steps: int = 50,
    eta: float = 0.0,
    generator: Any,
    callback: Callback | None = None,
) -> Any:
    """Image-to-image (Meng et al. 2022, SDEdit): noise the input to level ``strength``, denoise.

    The input is taken to code timestep t0 = round(strength * T) - 1 with the closed form
    q(x_t0 | x_0) and the sampler runs from there down over at most ``steps`` timesteps. Low
    strength keeps the layout and changes details; strength 1 ignores the input.
    """
    seq = strength_sequence(schedule.num_timesteps, steps, strength)
    ab = float(schedule.alpha_bar[seq[0]])
    x = math.sqrt(ab) * image + math.sqrt(1.0 - ab) * noise_like(image, generator)
    return sample(
        sampler, denoiser, x, schedule, eta=eta, timesteps=seq, generator=generator,
        callback=callback,
    )  # fmt: skip


def ddim_invert(
    denoiser: Denoiser,
    image: Any,
    schedule: Schedule,
    *,
    steps: int = 50,
    callback: Callback | None = None,
) -> Any:
    """Run deterministic DDIM backwards, from an image to the noise x_T that DDIM maps onto it.

    The same update as sampling (``ddim_step`` with eta = 0) visits the sampler's timesteps in
    increasing order: from level a to the next level b, x_b = sqrt(ab_b) x0 + sqrt(1 - ab_b) eps
    with eps predicted at (x_a, t_a) and x0 consistent with it. The first move, out of the data,
    uses eps at the lowest visited timestep. Sampling ``sample_ddim(steps=steps)`` from the result
    gives the image back up to the discretisation error (Song et al. 2021, Sec. 5.4).
    """
    ascending = timestep_sequence(schedule.num_timesteps, steps)[::-1]
    x, ab_from, t_eval = image, 1.0, ascending[0]
    for i, t in enumerate(ascending):
        eps, _ = denoiser(x, timesteps_like(x, t_eval))
        x0 = (x - math.sqrt(1.0 - ab_from) * eps) / math.sqrt(ab_from)
        if callback is not None:
            callback({"x": x, "i": i, "t": t_eval, "x0_pred": x0})
        ab_to = float(schedule.alpha_bar[t])
        x = ddim_step(x0, eps, ab_from, ab_to, 0.0, None)
        ab_from, t_eval = ab_to, t
    return x


def slerp(a: Any, b: Any, alpha: float) -> Any:
    """Spherical interpolation between two batches of noises, per image (Shoemake 1985).

    Gaussian noise in many dimensions lies near a sphere; a straight line between two noises cuts
    inside it (its midpoint has norm about 0.71 of theirs), where the network never saw inputs.
    Nearly parallel pairs fall back to a straight line.
    """
    flat_a, flat_b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    norms = (flat_a**2).sum(1) ** 0.5 * (flat_b**2).sum(1) ** 0.5
    cos = ((flat_a * flat_b).sum(1) / norms).clip(-1.0, 1.0)
    theta = torch.arccos(cos) if isinstance(cos, torch.Tensor) else np.arccos(cos)
    out = []
    for k in range(a.shape[0]):
        th = float(theta[k])
        if th < 1e-4:
            wa, wb = 1.0 - alpha, alpha
        else:
            wa, wb = math.sin((1 - alpha) * th) / math.sin(th), math.sin(alpha * th) / math.sin(th)
        out.append(wa * a[k] + wb * b[k])
    return torch.stack(out) if isinstance(a, torch.Tensor) else np.stack(out)


def interpolate(
    denoiser: Denoiser,
    z_a: Any,
    z_b: Any,
    schedule: Schedule,
    *,
    frames: int = 8,
    steps: int = 50,
    callback: Callback | None = None,
) -> Any:
    """Decode ``frames`` points on the great circle from noise ``z_a`` to noise ``z_b``, both (1, C, H, W).

    Deterministic DDIM maps each noise to one image, so a path between noises is a path between
    images. To interpolate two images, invert them first (``ddim_invert`` with the same steps).
    Returns (frames, C, H, W), the first and last decoding z_a and z_b.
    """
    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames}")
    latents = [slerp(z_a, z_b, k / (frames - 1)) for k in range(frames)]
    cat = torch.cat if isinstance(z_a, torch.Tensor) else np.concatenate
    return sample_ddim(denoiser, cat(latents), schedule, steps=steps, callback=callback)
