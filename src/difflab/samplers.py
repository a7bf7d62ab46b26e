"""Samplers: one small function per algorithm (STYLE 1).

Every sampler has the signature ``sample_X(denoiser, x, schedule, *, steps, ..., generator,
callback)``: it starts from pure noise ``x`` (the paper's x_T), walks down a sequence of code
timesteps (``difflab.schedules``: code t = paper t + 1) and returns the final sample. After
evaluating the network at each step it calls ``callback({"x": x_t, "i": i, "t": t, "x0_pred": x0})``;
trajectories, previews and GIFs are built from that callback, never inside a solver.

``denoiser(x_t, t) -> (eps, x0_pred)`` wraps the network; ``make_denoiser`` builds one from any
model function and its prediction target, so samplers never care whether the network predicts
eps, x0 or v. Samplers work with PyTorch tensors and with NumPy arrays (the NumPy backend):
randomness comes from the ``generator`` passed in (``torch.Generator`` or ``np.random.Generator``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from difflab.diffusion import eps_and_x0, eps_from_x0
from difflab.schedules import Schedule

SAMPLERS = ("ddpm", "ddim", "dpmpp-2m", "dpmpp-2m-sde")
SPACINGS = ("trailing", "leading", "linspace")

Denoiser = Callable[[Any, Any], tuple[Any, Any]]
Callback = Callable[[dict[str, Any]], None]


def make_denoiser(
    model_fn: Callable[[Any, Any], Any],
    schedule: Schedule,
    prediction: str = "eps",
    clip_x0: bool = True,
) -> Denoiser:
    """Turn ``model_fn(x_t, t) -> output`` into ``denoiser(x_t, t) -> (eps, x0_pred)``.

    With ``clip_x0`` the predicted x0 is clipped to the data range [-1, 1] (Ho et al. 2020's
    sampling code does this) and eps is recomputed from the clipped x0, so both stay consistent.
    """

    def denoiser(x_t: Any, t: Any) -> tuple[Any, Any]:
        eps, x0 = eps_and_x0(model_fn(x_t, t), x_t, t, schedule, prediction)
        if clip_x0:
            x0 = x0.clip(-1.0, 1.0)
            eps = eps_from_x0(x_t, t, x0, schedule)
        return eps, x0

    return denoiser


def timestep_sequence(num_timesteps: int, steps: int, spacing: str = "trailing") -> list[int]:
    """The decreasing code timesteps a sampler visits, from noisiest to cleanest.

    - ``trailing`` (default; Lin et al. 2024, Table 2): T-1, T-1-T/steps, ...: always starts at the
      last timestep, where the training noise level is highest, so few-step sampling begins from
      the noise it was trained on.
    - ``leading`` (DDIM's original): 0, T/steps, 2T/steps, ... reversed; its first step is below T-1.
    - ``linspace``: ``steps`` evenly spaced points from T-1 down to 0, rounded.

    With ``steps == T`` all three give T-1, ..., 0.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if steps > num_timesteps:
        raise ValueError(f"steps {steps} exceeds the model's {num_timesteps} timesteps")
    if spacing == "trailing":
        seq = np.round(np.arange(num_timesteps, 0, -num_timesteps / steps)).astype(np.int64) - 1
    elif spacing == "leading":
        seq = (np.arange(steps) * (num_timesteps // steps))[::-1]
    elif spacing == "linspace":
        seq = np.round(np.linspace(num_timesteps - 1, 0, steps)).astype(np.int64)
    else:
        raise ValueError(f"unknown spacing {spacing!r}; expected one of {', '.join(SPACINGS)}")
    return [int(t) for t in seq]


def strength_sequence(num_timesteps: int, steps: int, strength: float) -> list[int]:
    """The trailing sequence over the first ``strength`` of the chain (SDEdit, Meng et al. 2022).

    Starts at code timestep round(strength * T) - 1, where the input was noised to, and visits at
    most ``steps`` timesteps (fewer when the truncated chain is shorter) down towards 0.
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must lie in (0, 1], got {strength}")
    start = max(1, round(strength * num_timesteps))  # timesteps 0 .. start - 1 are used
    return timestep_sequence(start, min(steps, start), "trailing")


def _resolve(
    schedule: Schedule, steps: int, spacing: str, timesteps: list[int] | None
) -> list[int]:
    """The visited timesteps: an explicit decreasing list, else ``steps`` with ``spacing``."""
    if timesteps is None:
        return timestep_sequence(schedule.num_timesteps, steps, spacing)
    seq = [int(t) for t in timesteps]
    if not seq or any(a <= b for a, b in itertools.pairwise(seq)) or seq[-1] < 0:
        raise ValueError(f"timesteps must be a non-empty decreasing list of t >= 0, got {seq}")
    if seq[0] >= schedule.num_timesteps:
        raise ValueError(
            f"timestep {seq[0]} exceeds the model's {schedule.num_timesteps} timesteps"
        )
    return seq


def ddpm_step(x: Any, x0: Any, ab_t: float, ab_prev: float, variance: str, noise: Any) -> Any:
    """One ancestral step t -> s (Ho et al. 2020, Eq. 7 with beta = 1 - alpha_bar_t / alpha_bar_s).

    Returns the posterior mean plus sigma * noise; ``noise=None`` returns the mean (the last step).
    """
    beta = 1.0 - ab_t / ab_prev
    mean = (math.sqrt(ab_prev) * beta / (1.0 - ab_t)) * x0 + (
        math.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab_t)
    ) * x
    if noise is None:
        return mean
    var = beta if variance == "beta" else beta * (1.0 - ab_prev) / (1.0 - ab_t)
    return mean + math.sqrt(var) * noise


def ddim_step(x0: Any, eps: Any, ab_t: float, ab_next: float, eta: float, noise: Any) -> Any:
    """One DDIM step t -> s (Song et al. 2021, Eq. 12; sigma from Eq. 16).

    x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s - sigma^2) eps + sigma noise. With eta = 0 the same formula
    runs the chain backwards too (DDIM inversion, ab_s < ab_t).
    """
    sigma = 0.0
    if eta > 0:
        sigma = eta * math.sqrt((1.0 - ab_next) / (1.0 - ab_t) * (1.0 - ab_t / ab_next))
    x = math.sqrt(ab_next) * x0 + math.sqrt(max(1.0 - ab_next - sigma**2, 0.0)) * eps
    return x + sigma * noise if sigma > 0 else x


def noise_like(x: Any, generator: Any) -> Any:
    """Standard normal noise shaped like ``x``, drawn from the generator passed in."""
    if isinstance(x, torch.Tensor):
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return generator.standard_normal(x.shape).astype(x.dtype)


def timesteps_like(x: Any, t: int) -> Any:
    """The integer timestep ``t`` for every image of the batch ``x``, shape (B,)."""
    if isinstance(x, torch.Tensor):
        return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    return np.full((x.shape[0],), t, dtype=np.int64)


def alpha_bar_pairs(schedule: Schedule, seq: list[int]) -> list[tuple[int, float, float]]:
    """(t, alpha_bar_t, alpha_bar of the next visited step) with 1.0 for the data after the last."""
    ab = schedule.alpha_bar
    nexts = [float(ab[s]) for s in seq[1:]] + [1.0]
    return [(t, float(ab[t]), ab_next) for t, ab_next in zip(seq, nexts, strict=True)]


def sample_ddpm(
    denoiser: Denoiser,
    x: Any,
    schedule: Schedule,
    *,
    steps: int | None = None,
    spacing: str = "trailing",
    variance: str = "beta",
    timesteps: list[int] | None = None,
    generator: Any,
    callback: Callback | None = None,
) -> Any:
    """Ho et al. 2020, Algorithm 2 (ancestral sampling), optionally respaced to fewer steps.

    Each step draws x_{t-1} ~ N(mu_tilde(x_t, x0_pred), sigma^2) with the posterior mean of Eq. 7
    and sigma^2 = beta_t (``variance="beta"``, the paper's choice for data with no fixed point) or
    beta_tilde_t (``"beta_tilde"``, the exact posterior variance). With ``steps < T`` the chain
    skips timesteps and beta is recomputed between visited steps, 1 - alpha_bar_t / alpha_bar_s
    (Nichol & Dhariwal 2021, Sec. 4). The last step returns the posterior mean (no noise).
    ``timesteps`` replaces ``steps``/``spacing`` with an explicit decreasing list (SDEdit).
    """
    if variance not in ("beta", "beta_tilde"):
        raise ValueError(f"unknown DDPM variance {variance!r}; expected beta or beta_tilde")
    seq = _resolve(schedule, steps or schedule.num_timesteps, spacing, timesteps)
    for i, (t, ab_t, ab_prev) in enumerate(alpha_bar_pairs(schedule, seq)):
        _, x0 = denoiser(x, timesteps_like(x, t))
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "x0_pred": x0})
        noise = None if i == len(seq) - 1 else noise_like(x, generator)
        x = ddpm_step(x, x0, ab_t, ab_prev, variance, noise)
    return x


def sample_ddim(
    denoiser: Denoiser,
    x: Any,
    schedule: Schedule,
    *,
    steps: int = 50,
    eta: float = 0.0,
    spacing: str = "trailing",
    timesteps: list[int] | None = None,
    generator: Any = None,
    callback: Callback | None = None,
) -> Any:
    """Song et al. 2021 (DDIM), Eq. 12, with sigma from Eq. 16.

    x_s = sqrt(alpha_bar_s) x0_pred + sqrt(1 - alpha_bar_s - sigma^2) eps_pred + sigma z, where
    sigma = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_s).
    eta = 0 is deterministic given x_T; eta = 1 over all T steps is DDPM with beta_tilde.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    seq = _resolve(schedule, steps, spacing, timesteps)
    for i, (t, ab_t, ab_prev) in enumerate(alpha_bar_pairs(schedule, seq)):
        eps, x0 = denoiser(x, timesteps_like(x, t))
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "x0_pred": x0})
        last = i == len(seq) - 1
        noise = noise_like(x, generator) if eta > 0 and not last else None
        x = ddim_step(x0, eps, ab_t, ab_prev, eta, noise)
    return x


def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: Any,
    schedule: Schedule,
    *,
    steps: int = 20,
    spacing: str = "trailing",
    timesteps: list[int] | None = None,
    generator: Any = None,
    callback: Callback | None = None,
) -> Any:
    """Lu et al. 2022 (DPM-Solver++), Algorithm 2: the multistep second-order data-prediction solver.

    With alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar), lambda = log(alpha / sigma) and
    h = lambda_s - lambda_t, a step is x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D with
    D = x0_pred on the first step and D = (1 + 1/(2r)) x0_pred - 1/(2r) x0_prev after it
    (r = h_prev / h). The last step, to the data (sigma = 0), is first order: it returns x0_pred.
    ``generator`` is unused (the solver is deterministic) and kept for a uniform signature.
    """
    return _dpmpp_2m(denoiser, x, schedule, steps, spacing, timesteps, None, callback, sde=False)


def sample_dpmpp_2m_sde(
    denoiser: Denoiser,
    x: Any,
    schedule: Schedule,
    *,
    steps: int = 20,
    spacing: str = "trailing",
    timesteps: list[int] | None = None,
    generator: Any,
    callback: Callback | None = None,
) -> Any:
    """Lu et al. 2022 (DPM-Solver++), the second-order multistep solver of the reverse SDE.

    With the ODE solver's alpha, sigma, lambda, h and D (``sample_dpmpp_2m``), a step is
    x_s = (sigma_s / sigma_t) e^{-h} x_t + alpha_s (1 - e^{-2h}) D + sigma_s sqrt(1 - e^{-2h}) z:
    it forgets part of x_t and injects fresh noise z, like DDPM's ancestral steps, which lets it
    correct a young model's errors that the deterministic ODE carries to the end. The last step,
    to the data, returns x0_pred.
    """
    return _dpmpp_2m(
        denoiser, x, schedule, steps, spacing, timesteps, generator, callback, sde=True
    )


def _dpmpp_2m(
    denoiser: Denoiser,
    x: Any,
    schedule: Schedule,
    steps: int,
    spacing: str,
    timesteps: list[int] | None,
    generator: Any,
    callback: Callback | None,
    *,
    sde: bool,
) -> Any:
    """The DPM-Solver++(2M) loop of both samplers: the ODE step, or (``sde``) the SDE step."""
    seq = _resolve(schedule, steps, spacing, timesteps)
    x0_prev, h_prev = None, None
    for i, (t, ab_t, ab_next) in enumerate(alpha_bar_pairs(schedule, seq)):
        _, x0 = denoiser(x, timesteps_like(x, t))
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "x0_pred": x0})
        if ab_next >= 1.0:  # the final step to the data
            x = x0
            break
        h = 0.5 * math.log(ab_next / (1.0 - ab_next)) - 0.5 * math.log(ab_t / (1.0 - ab_t))
        if x0_prev is None:
            d = x0
        else:
            r = h_prev / h
            d = (1.0 + 1.0 / (2.0 * r)) * x0 - (1.0 / (2.0 * r)) * x0_prev
        sigma_ratio = math.sqrt((1.0 - ab_next) / (1.0 - ab_t))
        if not sde:  # ODE: x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D
            x = sigma_ratio * x - math.sqrt(ab_next) * math.expm1(-h) * d
        else:  # SDE: forget part of x_t, inject fresh noise
            x = (
                sigma_ratio * math.exp(-h) * x
                - math.sqrt(ab_next) * math.expm1(-2.0 * h) * d
                + math.sqrt((1.0 - ab_next) * -math.expm1(-2.0 * h)) * noise_like(x, generator)
            )
        x0_prev, h_prev = x0, h
    return x


def default_steps(sampler: str, num_timesteps: int) -> int:
    """Steps a sampler takes when none are asked for: all T for DDPM, 50 for DDIM, 20 for DPM++."""
    return {"ddpm": num_timesteps, "ddim": 50, "dpmpp-2m": 20, "dpmpp-2m-sde": 20}[sampler]


def sample(
    sampler: str,
    denoiser: Denoiser,
    x: Any,
    schedule: Schedule,
    *,
    steps: int | None = None,
    eta: float = 0.0,
    generator: Any = None,
    callback: Callback | None = None,
    **options: Any,
) -> Any:
    """Dispatch to ``sample_<sampler>`` by name (``ddpm``, ``ddim``, ``dpmpp-2m``, ``dpmpp-2m-sde``)."""
    if sampler == "ddpm":
        return sample_ddpm(
            denoiser, x, schedule, steps=steps, generator=generator, callback=callback, **options
        )
    if sampler == "ddim":
        return sample_ddim(
            denoiser, x, schedule, steps=steps or default_steps(sampler, schedule.num_timesteps), eta=eta,
            generator=generator,
            callback=callback, **options,
        )  # fmt: skip
    if sampler == "dpmpp-2m":
        return sample_dpmpp_2m(
            denoiser, x, schedule, steps=steps or default_steps(sampler, schedule.num_timesteps), generator=generator,
            callback=callback, **options,
        )  # fmt: skip
    if sampler == "dpmpp-2m-sde":
        return sample_dpmpp_2m_sde(
            denoiser, x, schedule, steps=steps or default_steps(sampler, schedule.num_timesteps),
            generator=generator, callback=callback, **options,
        )  # fmt: skip
    raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
