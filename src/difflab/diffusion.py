"""The forward process, the posterior, the eps / x0 / v conversions and the training loss.

Every formula in difflab that mixes x_t, x_0, eps or v lives here, next to its paper equation.
Timesteps follow the convention in ``difflab.schedules`` (code t = paper t + 1). The functions
work on PyTorch tensors and on NumPy arrays alike: schedule constants are gathered for the
batch's timesteps and cast to the batch's dtype in one place, ``coef``.
"""

from __future__ import annotations

import math
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


def split_variance(output: Array) -> tuple[Array, Array]:
    """A learned-variance network's output, (B, 2C, H, W), as its prediction (eps, x0 or v: the
    first C channels) and its raw variance output (the last C), in [-1, 1] where it interpolates
    (``learned_log_variance``)."""
    c = output.shape[1] // 2
    assert output.shape[1] == 2 * c, "a learned-variance output has twice the image's channels"
    return output[:, :c], output[:, c:]


def predict_learned(
    model_fn: Callable[[Any, Any], Any],
    x_t: Array,
    t: torch.Tensor | np.ndarray,
    schedule: Schedule,
    prediction: str,
) -> tuple[Array, Array, Array]:
    """``predict`` for a learned-variance network: (eps, x0, v), v its raw variance output."""
    if prediction not in ("eps", "x0", "v"):
        raise ValueError(
            f"a learned variance goes with prediction eps, x0 or v, not {prediction!r}"
        )
    output, v = split_variance(model_fn(x_t, t))
    eps, x0 = eps_and_x0(output, x_t, t, schedule, prediction)
    return eps, x0, v


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
    return simple_loss(model_fn(x_t, t), target, t, schedule, prediction, min_snr_gamma)


def simple_loss(
    output: torch.Tensor,
    target: torch.Tensor,
    t: torch.Tensor,
    schedule: Schedule,
    prediction: str,
    min_snr_gamma: float | None,
) -> torch.Tensor:
    """The per-sample mean squared error of a prediction, min-SNR weighted: shape (B,)."""
    per_sample = (output.float() - target.float()).pow(2).flatten(1).mean(dim=1)  # (B,)
    return per_sample * min_snr_weight(t, schedule, prediction, min_snr_gamma)


# ---------------------------------------------------------------------------------------------
# Learned variances (Nichol & Dhariwal 2021, Sec. 3.1): L_hybrid = L_simple + lambda L_vlb
# ---------------------------------------------------------------------------------------------

VLB_WEIGHT = 0.001  # lambda of L_hybrid (Eq. 16)


def learned_log_variance(
    v: torch.Tensor, log_beta: torch.Tensor | float, log_beta_tilde: torch.Tensor | float
) -> torch.Tensor:
    """Eq. 15: log Sigma = f log beta_t + (1 - f) log beta_tilde_t, per pixel, f = (v + 1) / 2.

    ``v`` is the network's raw variance output: -1 gives beta_tilde (the exact posterior's
    variance), 1 gives beta. It is not clipped (the paper leaves it free and saw it stay in the
    range). ``log_beta`` and ``log_beta_tilde`` are the step's (a respaced sampler's own, for the
    sub-sequence it walks)."""
    f = (v + 1.0) / 2.0
    return f * log_beta + (1.0 - f) * log_beta_tilde


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats:
    (logvar2 - logvar1 + (e^logvar1 + (mean1 - mean2)^2) / e^logvar2 - 1) / 2."""
    return 0.5 * (
        logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2).pow(2) * torch.exp(-logvar2) - 1.0
    )  # fmt: skip


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """Ho et al. 2020, Eq. 13: log p(x) of 8-bit data under N(mean, e^(2 log_scale)), per pixel.

    The data lie on the 256 values -1 + 2k/255; each owns the bin x +- 1/255, and the two end
    bins reach to -inf and +inf, so the 256 probabilities sum to 1. A bin's probability
    Phi(b) - Phi(a) is taken on the side of the mean where the two CDFs are small (log Phi by
    ``log_ndtr``), so far-out bins keep their value instead of rounding to 0; it is floored at
    1e-12, as Nichol & Dhariwal's code does, which keeps gradients finite.
    """
    inv_scale = torch.exp(-log_scale)
    upper = (x - mean + 1.0 / 255.0) * inv_scale  # the bin's edges, standardised
    lower = (x - mean - 1.0 / 255.0) * inv_scale
    flip = upper + lower > 0  # the bin lies right of the mean: use the upper tail
    a = torch.where(flip, -upper, lower)  # Phi(b) - Phi(a) with a < b, where Phi is small
    b = torch.where(flip, -lower, upper)
    log_cdf_b = torch.special.log_ndtr(b)
    gap = -torch.expm1(torch.special.log_ndtr(a) - log_cdf_b)  # 1 - Phi(a) / Phi(b)
    log_bin = log_cdf_b + torch.log(gap.clamp_min(1e-12))
    log_first = torch.special.log_ndtr(upper)  # x = -1: P(X < -1 + 1/255)
    log_last = torch.special.log_ndtr(-lower)  # x = 1: P(X > 1 - 1/255)
    return torch.where(x < -0.999, log_first, torch.where(x > 0.999, log_last, log_bin))


def vlb_terms(
    output: torch.Tensor,
    v: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: Schedule,
    prediction: str,
) -> torch.Tensor:
    """The term of L_vlb (Ho et al. 2020, Eq. 5) at each sample's t, in bits per dimension, (B,).

    p(x_{t-1} | x_t) = N(mu_tilde(x_t, x0_pred), Sigma) with x0_pred read from ``output`` and
    Sigma from ``v`` (``learned_log_variance``). For t >= 1 (paper t >= 2) the term is
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)); at t = 0 (paper t = 1) it is
    L_0 = -log p(x_0 | x_1), the discretised decoder (``discretized_gaussian_log_likelihood``).
    Both are averaged over dimensions and divided by log 2, as Nichol & Dhariwal report them.
    """
    output, v, x0, x_t = output.float(), v.float(), x0.float(), x_t.float()
    _, x0_pred = eps_and_x0(output, x_t, t, schedule, prediction)
    model_mean, _ = q_posterior(x0_pred, x_t, t, schedule)
    model_log_var = learned_log_variance(
        v, coef(np.log(schedule.betas), t, v), coef(schedule.posterior_log_variance_clipped, t, v)
    )
    true_mean, _ = q_posterior(x0, x_t, t, schedule)
    true_log_var = coef(schedule.posterior_log_variance_clipped, t, x_t)
    kl = normal_kl(true_mean, true_log_var, model_mean, model_log_var).flatten(1).mean(dim=1)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)
    return torch.where(t == 0, nll.flatten(1).mean(dim=1), kl) / math.log(2.0)  # (B,)


def hybrid_loss(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    schedule: Schedule,
    prediction: str = "eps",
    min_snr_gamma: float | None = None,
    vlb_weight: float = VLB_WEIGHT,
) -> torch.Tensor:
    """Nichol & Dhariwal 2021, Eq. 16: L_hybrid = L_simple + lambda L_vlb, per sample, (B,).

    ``model_fn(x_t, t)`` returns the prediction and the variance output, (B, 2C, H, W)
    (``split_variance``). L_simple is ``diffusion_loss``'s on the prediction. L_vlb = sum_t L_t
    is estimated at the sample's uniform t by T L_t (``vlb_terms``), computed from the
    prediction with its gradient stopped, so L_vlb trains the variance alone and L_simple the
    mean alone (the paper's Sec. 3.1). With lambda = 0.001 the weight T lambda is 1 at T = 1000.
    """
    x_t = q_sample(x0, t, eps, schedule)
    output, v = split_variance(model_fn(x_t, t))
    target = training_target(x0, t, eps, schedule, prediction)
    simple = simple_loss(output, target, t, schedule, prediction, min_snr_gamma)  # (B,)
    vlb = vlb_terms(output.detach(), v, x0, x_t, t, schedule, prediction)  # (B,)
    return simple + vlb_weight * schedule.num_timesteps * vlb
