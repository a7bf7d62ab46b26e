"""Noise schedules as data: pure functions returning float64 NumPy arrays.

The one timestep convention
---------------------------
The papers number diffusion steps ``1 .. T`` (Ho et al. 2020): ``x_0`` is data and ``x_T`` is
(almost) pure noise. In difflab every array is indexed by the integer ``t = 0 .. T-1``, and

    code index t   <->   paper step t + 1

so ``betas[t]`` is the paper's ``beta_{t+1}``, ``alpha_bar[t]`` is the paper's ``alpha_bar_{t+1}``
and the noised sample "at t" is the paper's ``x_{t+1}``. Data itself (the paper's ``x_0``) has no
index here; ``alpha_bar_prev[0] = 1`` stands for it. The network receives this integer ``t``,
samplers loop ``t = T-1, ..., 0``, and plots label columns with it. The step out of ``t = 0`` is
the paper's last step (``x_1 -> x_0``), which adds no noise.

Schedules are computed in float64 and cast once to a backend's dtype where they are used
(``difflab.diffusion.coef``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SCHEDULES = ("linear", "cosine")


def linear_betas(
    num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """Ho et al. 2020, Sec. 4: betas rising linearly from 1e-4 to 0.02 over T = 1000 steps.

    For another T the endpoints are scaled by 1000 / T (as improved-diffusion does), so the
    total amount of noise stays the same: at T = 1000 the values are exactly the paper's, and at
    T = 200 the last alpha_bar is still close to 0 instead of 0.13.
    """
    _check_num_timesteps(num_timesteps)
    scale = 1000.0 / num_timesteps
    if scale * beta_end >= 1.0:
        smallest = math.floor(1000.0 * beta_end) + 1
        raise ValueError(
            f"the linear schedule needs at least {smallest} timesteps, got {num_timesteps}"
        )
    return np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal 2021, Eq. 17: alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2).

    betas are 1 - alpha_bar(t+1) / alpha_bar(t), clipped at ``max_beta`` (0.999) to avoid the
    singularity at the end of the schedule.
    """
    _check_num_timesteps(num_timesteps)
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    return np.clip(betas, 0.0, max_beta)


def _check_num_timesteps(num_timesteps: int) -> None:
    if int(num_timesteps) != num_timesteps or num_timesteps < 2:
        raise ValueError(f"timesteps must be an integer >= 2, got {num_timesteps!r}")


@dataclass(frozen=True, eq=False)
class Schedule:
    """All per-timestep constants of a DDPM, float64 arrays of length T indexed by code t."""

    name: str
    betas: np.ndarray  # beta_t
    alphas: np.ndarray  # alpha_t = 1 - beta_t
    alpha_bar: np.ndarray  # alpha_bar_t = prod_{s <= t} alpha_s
    alpha_bar_prev: np.ndarray  # alpha_bar_{t-1}, with 1 for the data (t = 0)
    sqrt_alpha_bar: np.ndarray  # mean scale of q(x_t | x_0)
    sqrt_one_minus_alpha_bar: np.ndarray  # std of q(x_t | x_0)
    posterior_variance: np.ndarray  # beta_tilde_t, Ho et al. Eq. 7
    posterior_mean_coef_x0: np.ndarray  # coefficient of x_0 in mu_tilde_t, Eq. 7
    posterior_mean_coef_xt: np.ndarray  # coefficient of x_t in mu_tilde_t, Eq. 7

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    @property
    def snr(self) -> np.ndarray:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) (Kingma et al. 2021)."""
        return self.alpha_bar / (1.0 - self.alpha_bar)

    @property
    def posterior_log_variance_clipped(self) -> np.ndarray:
        """log beta_tilde_t, with t = 0's (where beta_tilde is 0: the step to the data adds no
        noise) replaced by t = 1's, as Nichol & Dhariwal 2021 do: the lower end of a learned
        variance's range (Eq. 15) and the log-variance of q(x_{t-1} | x_t, x_0) in L_vlb."""
        pv = self.posterior_variance
        return np.log(np.concatenate([pv[1:2], pv[1:]]))


def schedule_from_betas(name: str, betas: np.ndarray) -> Schedule:
    """Precompute every constant the forward process, the losses and the samplers need."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or np.any(betas <= 0) or np.any(betas >= 1):
        raise ValueError("betas must be a 1-D array with every value in (0, 1)")
    alphas = 1.0 - betas
    alpha_bar = np.cumprod(alphas)
    alpha_bar_prev = np.concatenate([[1.0], alpha_bar[:-1]])
    one_minus = 1.0 - alpha_bar
    return Schedule(
        name=name,
        betas=betas,
        alphas=alphas,
        alpha_bar=alpha_bar,
        alpha_bar_prev=alpha_bar_prev,
        sqrt_alpha_bar=np.sqrt(alpha_bar),
        sqrt_one_minus_alpha_bar=np.sqrt(one_minus),
        posterior_variance=betas * (1.0 - alpha_bar_prev) / one_minus,
        posterior_mean_coef_x0=np.sqrt(alpha_bar_prev) * betas / one_minus,
        posterior_mean_coef_xt=np.sqrt(alphas) * (1.0 - alpha_bar_prev) / one_minus,
    )


def make_schedule(name: str = "linear", num_timesteps: int = 1000) -> Schedule:
    """The named schedule (``linear`` or ``cosine``) with ``num_timesteps`` steps."""
    if name == "linear":
        betas = linear_betas(num_timesteps)
    elif name == "cosine":
        betas = cosine_betas(num_timesteps)
    else:
        raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULES)}")
    return schedule_from_betas(name, betas)


def scaled_timesteps(
    reference: list[int], num_timesteps: int, reference_t: int = 1000
) -> list[int]:
    """Map timesteps given for a T = 1000 schedule onto ``num_timesteps`` (t T / 1000, 999 -> T - 1)."""
    return [min(num_timesteps - 1, t * num_timesteps // reference_t) for t in reference]
