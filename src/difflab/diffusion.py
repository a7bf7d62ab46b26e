"""The forward process, the posterior, the eps / x0 / v conversions and the training loss.

Every formula in difflab that mixes x_t, x_0, eps or v lives here, next to its paper equation.
Timesteps follow the convention in ``difflab.schedules`` (code t = paper t + 1). The functions
work on PyTorch tensors and on NumPy arrays alike: schedule constants are gathered for the
batch's timesteps and cast to the batch's dtype in one place, ``coef``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from difflab import flow
from difflab.schedules import Schedule

Array = TypeVar("Array", torch.Tensor, np.ndarray)

PREDICTIONS = ("eps", "x0", "v", "flow")  # flow: the straight path's velocity (difflab.flow)


def coef(values: np.ndarray, t: torch.Tensor | np.ndarray, like: Array) -> Array:
    """``values[t]`` as a (B, 1, 1, 1) array of ``like``'s backend, dtype and device."""
    if isinstance(like, torch.Tensor):
        idx = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        out = torch.from_numpy(values[idx]).to(device=like.device, dtype=like.dtype)
    else:
        out = values[np.asarray(t)].astype(like.dtype)
    return out.reshape((-1,) + (1,) * (like.ndim - 1))


# ---------------------------------------------------------------------------------------------
# Forward process
# ---------------------------------------------------------------------------------------------


def q_sample(x0: Array, t: torch.Tensor | np.ndarray, eps: Array, schedule: Schedule) -> Array:
    """Ho et al. 2020, Eq. 4: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps."""
    return (
        coef(schedule.sqrt_alpha_bar, t, x0) * x0
        + coef(schedule.sqrt_one_minus_alpha_bar, t, x0) * eps
    )


def q_step(x_prev: Array, t: torch.Tensor | np.ndarray, eps: Array, schedule: Schedule) -> Array:
    """Ho et al. 2020, Eq. 2: one step of the chain, x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps.

    ``x_prev`` is the data for t = 0 and the sample at t - 1 otherwise.
    """
    return (
        coef(np.sqrt(schedule.alphas), t, x_prev) * x_prev
        + coef(np.sqrt(schedule.betas), t, x_prev) * eps
    )


def q_posterior(
    x0: Array, x_t: Array, t: torch.Tensor | np.ndarray, schedule: Schedule
) -> tuple[Array, Array]:
    """Ho et al. 2020, Eqs. 6-7: mean and variance of q(x_{t-1} | x_t, x_0)."""
    mean = (
        coef(schedule.posterior_mean_coef_x0, t, x_t) * x0
        + coef(schedule.posterior_mean_coef_xt, t, x_t) * x_t
    )
    return mean, coef(schedule.posterior_variance, t, x_t)


# ---------------------------------------------------------------------------------------------
# eps / x0 / v: what the network predicts and how to get the others from it
# ---------------------------------------------------------------------------------------------


def x0_from_eps(x_t: Array, t: torch.Tensor | np.ndarray, eps: Array, schedule: Schedule) -> Array:
    """Invert Eq. 4: x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
    return (x_t - coef(schedule.sqrt_one_minus_alpha_bar, t, x_t) * eps) / coef(
        schedule.sqrt_alpha_bar, t, x_t
    )


def eps_from_x0(x_t: Array, t: torch.Tensor | np.ndarray, x0: Array, schedule: Schedule) -> Array:
    """Invert Eq. 4 for the noise: eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t)."""
    return (x_t - coef(schedule.sqrt_alpha_bar, t, x_t) * x0) / coef(
        schedule.sqrt_one_minus_alpha_bar, t, x_t
    )


def v_from_x0_eps(x0: Array, t: torch.Tensor | np.ndarray, eps: Array, schedule: Schedule) -> Array:
    """Salimans & Ho 2022, Sec. 4: v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0."""
    return (
        coef(schedule.sqrt_alpha_bar, t, x0) * eps
        - coef(schedule.sqrt_one_minus_alpha_bar, t, x0) * x0
    )


def x0_from_v(x_t: Array, t: torch.Tensor | np.ndarray, v: Array, schedule: Schedule) -> Array:
    """Salimans & Ho 2022: x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v."""
    return (
        coef(schedule.sqrt_alpha_bar, t, x_t) * x_t
        - coef(schedule.sqrt_one_minus_alpha_bar, t, x_t) * v
    )


def eps_from_v(x_t: Array, t: torch.Tensor | np.ndarray, v: Array, schedule: Schedule) -> Array:
    """Salimans & Ho 2022: eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v."""
    return (
        coef(schedule.sqrt_one_minus_alpha_bar, t, x_t) * x_t
        + coef(schedule.sqrt_alpha_bar, t, x_t) * v
    )


def network_inputs(
    x_t: Array, t: torch.Tensor | np.ndarray, schedule: Schedule, prediction: str
) -> tuple[Array, Any]:
    """What the network is called with for the sample x_t at code timestep t: (x_t, t) itself,
    or for a flow network (``prediction == "flow"``) the same point on its straight path and
    ``FLOW_TIME_SCALE`` times its time there (``flow.from_vp``: the time with the same SNR)."""
    if prediction != "flow":
        return x_t, t
    x, t_flow = flow.from_vp(x_t, t, schedule)
    return x, t_flow * flow.FLOW_TIME_SCALE


def predict(
    model_fn: Callable[[Any, Any], Any],
    x_t: Array,
    t: torch.Tensor | np.ndarray,
    schedule: Schedule,
    prediction: str,
) -> tuple[Array, Array]:
    """The (eps, x0) a network ``model_fn(x, t)`` predicts for x_t at code timestep t, whatever
    it was trained to predict: every sampler and trainer reads a network through here."""
    if prediction != "flow":
        return eps_and_x0(model_fn(x_t, t), x_t, t, schedule, prediction)
    x, t_flow = flow.from_vp(x_t, t, schedule)  # once: the network's input and the reading's
    v = model_fn(x, t_flow * flow.FLOW_TIME_SCALE)
    return flow.eps_from_velocity(x, t_flow, v), flow.x0_from_velocity(x, t_flow, v)


def eps_and_x0(
    output: Array,
    x_t: Array,
    t: torch.Tensor | np.ndarray,
    schedule: Schedule,
    prediction: str,
) -> tuple[Array, Array]:
    """Read a network output as the (eps, x0) pair, whatever the network was trained to predict."""
    if prediction == "eps":
        return output, x0_from_eps(x_t, t, output, schedule)
    if prediction == "x0":
        return eps_from_x0(x_t, t, output, schedule), output
    if prediction == "v":
        return eps_from_v(x_t, t, output, schedule), x0_from_v(x_t, t, output, schedule)
    if prediction == "flow":  # a velocity at the flow point of x_t (network_inputs)
        x, t_flow = flow.from_vp(x_t, t, schedule)
        return flow.eps_from_velocity(x, t_flow, output), flow.x0_from_velocity(x, t_flow, output)
    raise ValueError(f"unknown prediction {prediction!r}; expected one of {', '.join(PREDICTIONS)}")


def training_target(
    x0: Array, t: torch.Tensor | np.ndarray, eps: Array, schedule: Schedule, prediction: str
) -> Array:
    """The regression target for a network that predicts ``prediction``."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return v_from_x0_eps(x0, t, eps, schedule)
    raise ValueError(f"unknown prediction {prediction!r}; expected one of {', '.join(PREDICTIONS)}")


# ---------------------------------------------------------------------------------------------
# Training loss
# ---------------------------------------------------------------------------------------------


def min_snr_weight(
    t: torch.Tensor, schedule: Schedule, prediction: str, gamma: float | None
) -> torch.Tensor:
    """Hang et al. 2023 (min-SNR-gamma): per-sample weight making the loss an x0-MSE times min(SNR, gamma).

    For eps prediction the weight is min(SNR, gamma) / SNR, for v it is min(SNR, gamma) / (SNR + 1),
    for x0 it is min(SNR, gamma). ``gamma=None`` gives weight 1 (the plain "simple" loss).
    """
    snr = schedule.snr[t.detach().cpu().numpy()]
    if gamma is None:
        weight = np.ones_like(snr)
    else:
        clipped = np.minimum(snr, gamma)
        weight = {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1.0)}[prediction]
    return torch.from_numpy(weight).to(device=t.device, dtype=torch.float32)


def diffusion_loss(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    schedule: Schedule,
    prediction: str = "eps",
    min_snr_gamma: float | None = None,
) -> torch.Tensor:
    """Ho et al. 2020, Eq. 14 (L_simple), generalised to x0 / v targets: per-sample MSE, shape (B,).

    ``model_fn(x_t, t)`` is the network (with any class label already bound); ``t`` and ``eps``
    are drawn by the caller, so the same randomness gives the same loss.
    """
    x_t = q_sample(x0, t, eps, schedule)
    target = training_target(x0, t, eps, schedule, prediction)
    output = model_fn(x_t, t)
    per_sample = (output.float() - target.float()).pow(2).flatten(1).mean(dim=1)  # (B,)
    return per_sample * min_snr_weight(t, schedule, prediction, min_snr_gamma)
