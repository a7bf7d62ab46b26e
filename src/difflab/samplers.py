"""Samplers: one small function per algorithm (STYLE 1).

Every sampler has the signature ``sample_X(denoiser, x, schedule, *, steps, ..., generator,
callback)``: it starts from pure noise ``x`` (the paper's x_T), walks down a sequence of code
timesteps (``difflab.schedules``: code t = paper t + 1) and returns the final sample. After
evaluating the network at each step it calls ``callback({"x": x_t, "i": i, "t": t, "x0_pred": x0})``;
trajectories, previews and GIFs are built from that callback, never inside a solver.

``denoiser(x_t, t) -> (eps, x0_pred)`` wraps the network; ``make_denoiser`` builds one from any
model function and its prediction target, so samplers never care whether the network predicts
eps, x0 or v. A network that learned its variances (Nichol & Dhariwal 2021) gives DDPM a third
value, its raw variance output v (``make_denoiser(..., learned_variance=True)``); every other
sampler reads only its prediction. Samplers work with PyTorch tensors and with NumPy arrays (the
NumPy backend): randomness comes from the ``generator`` passed in (``torch.Generator`` or
``np.random.Generator``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from difflab.diffusion import eps_from_x0, predict, predict_learned
from difflab.schedules import Schedule

SAMPLERS = ("ddpm", "ddim", "ipndm", "dpmpp-2m", "dpmpp-2m-sde", "dpmpp-3m", "unipc")
SPACINGS = ("trailing", "leading", "linspace")
# DDPM's sigma^2: beta, beta_tilde (Ho et al. 2020), or the network's own (Nichol & Dhariwal 2021)
VARIANCES = ("beta", "beta_tilde", "learned")
# What difflab sample, difflab evaluate and the training previews use unless told: on MNIST 20
# steps of it score as well as 1000 of DDPM (docs/samplers.md). One default, in one place.
DEFAULT_SAMPLER = "dpmpp-2m-sde"

Denoiser = Callable[[Any, Any], tuple[Any, ...]]  # (eps, x0_pred), or (eps, x0_pred, v)
Callback = Callable[[dict[str, Any]], None]


def make_denoiser(
    model_fn: Callable[[Any, Any], Any],
    schedule: Schedule,
    prediction: str = "eps",
    clip_x0: bool = True,
    learned_variance: bool = False,
) -> Denoiser:
    """Turn ``model_fn(x_t, t) -> output`` into ``denoiser(x_t, t) -> (eps, x0_pred)``.

    With ``clip_x0`` the predicted x0 is clipped to the data range [-1, 1] (Ho et al. 2020's
    sampling code does this) and eps is recomputed from the clipped x0, so both stay consistent.
    With ``learned_variance`` the output has the variance channels too
    (``diffusion.split_variance``) and the denoiser returns (eps, x0_pred, v), for
    ``sample_ddpm(variance="learned")``.
    """

    def denoiser(x_t: Any, t: Any) -> tuple[Any, ...]:
        if learned_variance:
            eps, x0, v = predict_learned(model_fn, x_t, t, schedule, prediction)
        else:
            eps, x0 = predict(model_fn, x_t, t, schedule, prediction)
        if clip_x0:
            x0 = x0.clip(-1.0, 1.0)
            eps = eps_from_x0(x_t, t, x0, schedule)
        return (eps, x0, v) if learned_variance else (eps, x0)

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


def ddpm_step(
    x: Any, x0: Any, ab_t: float, ab_prev: float, variance: str, noise: Any, v: Any = None
) -> Any:
    """One ancestral step t -> s (Ho et al. 2020, Eq. 7 with beta = 1 - alpha_bar_t / alpha_bar_s).

    Returns the posterior mean plus sigma * noise; ``noise=None`` returns the mean (the last step).
    sigma^2 is beta, beta_tilde = beta (1 - alpha_bar_s) / (1 - alpha_bar_t), or (``"learned"``)
    Nichol & Dhariwal's Eq. 15 between the two for the network's variance output ``v``, per
    pixel: sigma = sqrt(beta_tilde) exp(f log(beta / beta_tilde) / 2), f = (v + 1) / 2, the
    same exp(f log beta + (1 - f) log beta_tilde) written so that v = -1 gives sqrt(beta_tilde)
    to the last bit.
    """
    beta = 1.0 - ab_t / ab_prev
    mean = (math.sqrt(ab_prev) * beta / (1.0 - ab_t)) * x0 + (
        math.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab_t)
    ) * x
    if noise is None:
        return mean
    beta_tilde = beta * (1.0 - ab_prev) / (1.0 - ab_t)
    if variance == "learned":
        f = (v + 1.0) / 2.0
        log_ratio = math.log(beta / beta_tilde)  # log beta - log beta_tilde, >= 0
        exp = torch.exp if isinstance(f, torch.Tensor) else np.exp
        return mean + (math.sqrt(beta_tilde) * exp(0.5 * log_ratio * f)) * noise
    var = beta if variance == "beta" else beta_tilde
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
    and sigma^2 = beta_t (``variance="beta"``, the paper's choice for data with no fixed point),
    beta_tilde_t (``"beta_tilde"``, the exact posterior variance) or, for a network that learned
    its variances, its per-pixel interpolation between the two (``"learned"``, Nichol & Dhariwal
    2021, Eq. 15; the denoiser returns (eps, x0_pred, v): ``make_denoiser(...,
    learned_variance=True)``). With ``steps < T`` the chain skips timesteps and beta is
    recomputed between visited steps, 1 - alpha_bar_t / alpha_bar_s, with beta_tilde from it
    (Nichol & Dhariwal 2021, Sec. 4): a learned v interpolates between those two. The last step
    returns the posterior mean (no noise). ``timesteps`` replaces ``steps``/``spacing`` with an
    explicit decreasing list (SDEdit).
    """
    if variance not in VARIANCES:
        raise ValueError(
            f"unknown DDPM variance {variance!r}; expected one of {', '.join(VARIANCES)}"
        )
    seq = _resolve(schedule, steps or schedule.num_timesteps, spacing, timesteps)
    for i, (t, ab_t, ab_prev) in enumerate(alpha_bar_pairs(schedule, seq)):
        out = denoiser(x, timesteps_like(x, t))
        if variance == "learned" and len(out) != 3:
            raise ValueError(
                "DDPM with variance 'learned' needs a network trained with --learn-variance "
                "(a denoiser that returns eps, x0 and v: make_denoiser(..., learned_variance=True))"
            )
        x0, v = out[1], (out[2] if variance == "learned" else None)
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "x0_pred": x0})
        noise = None if i == len(seq) - 1 else noise_like(x, generator)
        x = ddpm_step(x, x0, ab_t, ab_prev, variance, noise, v)
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
        h = half_log_snr(ab_next) - half_log_snr(ab_t)
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


def half_log_snr(alpha_bar: float) -> float:
    """DPM-Solver's time: lambda = log(alpha / sigma) = log(alpha_bar / (1 - alpha_bar)) / 2."""
    return 0.5 * math.log(alpha_bar / (1.0 - alpha_bar))


# Adams-Bashforth weights of the last k eps, newest first (Zhang & Chen 2023, App. "iPNDM")
IPNDM_COEFFICIENTS = (
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)


def sample_ipndm(
    denoiser: Denoiser,
    x: Any,
    schedule: Schedule,
    *,
    steps: int = 10,
    spacing: str = "trailing",
    timesteps: list[int] | None = None,
    max_order: int = 4,
    generator: Any = None,
    callback: Callback | None = None,
) -> Any:
    """Zhang & Chen 2023 (DEIS), Sec. 4 and App.: iPNDM, Adams-Bashforth on eps in DDIM's variable.

    In x~ = x / alpha, s~ = sigma / alpha the probability-flow ODE is dx~/ds~ = eps (Song et al.
    2021, Eq. 14) and DDIM is its Euler step. iPNDM takes that step with the Adams-Bashforth
    combination of the last k network outputs, newest first, k = min(i + 1, max_order):
    x~_s = x~_t + (s~_s - s~_t) eps', eps' = sum_j c_kj eps_{i-j}, c = (1), (3/2, -1/2),
    (23/12, -16/12, 5/12), (55/24, -59/24, 37/24, -9/24). The lower orders warm the method up
    with no extra evaluations (PNDM spent Runge-Kutta steps there), and the equal-step weights
    are kept on the uneven grid, as in the paper and k-diffusion. One network evaluation per
    step; ``max_order=1`` is DDIM. The last step, to the data (s~ = 0), uses eps' too, so it
    returns x~_t - s~_t eps' rather than x0_pred. ``generator`` is unused.
    """
    if max_order not in (1, 2, 3, 4):
        raise ValueError(f"max_order must be 1, 2, 3 or 4, got {max_order!r}")
    seq = _resolve(schedule, steps, spacing, timesteps)
    eps_history: list[Any] = []  # the last max_order eps, newest first
    for i, (t, ab_t, ab_next) in enumerate(alpha_bar_pairs(schedule, seq)):
        eps, x0 = denoiser(x, timesteps_like(x, t))
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "x0_pred": x0})
        eps_history = [eps, *eps_history[: max_order - 1]]
        weights = IPNDM_COEFFICIENTS[len(eps_history) - 1]
        eps_ab = sum(c * e for c, e in zip(weights, eps_history, strict=True))
        x0_ab = (x - math.sqrt(1.0 - ab_t) * eps_ab) / math.sqrt(ab_t)  # x~_t - s~_t eps'
        # the DDIM step with eps': x_s = alpha_s (x~_t + (s~_s - s~_t) eps')
        x = ddim_step(x0_ab, eps_ab, ab_t, ab_next, 0.0, None)
    return x


def sample_dpmpp_3m(
    denoiser: Denoiser,
    x: Any,
    schedule: Schedule,
    *,
    steps: int = 10,
    spacing: str = "trailing",
    timesteps: list[int] | None = None,
    generator: Any = None,
    callback: Callback | None = None,
) -> Any:
    """Lu et al. 2022 (DPM-Solver++), the third-order multistep data-prediction solver (the
    authors' ``multistep_dpm_solver_third_order_update``, which diffusers copies).

    With alpha, sigma, lambda and h = lambda_s - lambda_t as in ``sample_dpmpp_2m``, the last
    three x0 predictions m0, m1, m2, and r0 = h0 / h, r1 = h1 / h (h0, h1: the two previous h):
    D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1, D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1) and
    D2 = (D1_0 - D1_1) / (r0 + r1), divided differences of x0_pred in lambda. A step is
    x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) m0 + alpha_s ((e^{-h} - 1) / h + 1) D1
    - alpha_s ((e^{-h} - 1 + h) / h^2 - 1/2) D2, the exponential integrator with x0_pred
    expanded in lambda. D1 is h x0' to second order, but D2 is h^2 x0'' / 2 where its
    coefficient is the weight of h^2 x0'': the update is exact for x0_pred linear in lambda, not
    quadratic, so the method is second order (docs/samplers.md measures it). This is the
    reference's formula (the authors' code, diffusers, k-diffusion's dpmpp_3m_sde), kept so that
    ``dpmpp-3m`` matches them step for step. The first step is first order and the second 2M
    (no extra evaluations); the last, to the data (sigma = 0), is first order: it returns
    x0_pred. ``generator`` is unused (the solver is deterministic).
    """
    seq = _resolve(schedule, steps, spacing, timesteps)
    m: list[Any] = []  # x0_pred of the last three steps, newest first
    hs: list[float] = []  # h of the last two steps taken, newest first
    for i, (t, ab_t, ab_next) in enumerate(alpha_bar_pairs(schedule, seq)):
        _, x0 = denoiser(x, timesteps_like(x, t))
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "x0_pred": x0})
        if ab_next >= 1.0:  # the final step to the data
            x = x0
            break
        m = [x0, *m[:2]]
        h = half_log_snr(ab_next) - half_log_snr(ab_t)
        alpha_s, em1 = math.sqrt(ab_next), math.expm1(-h)  # em1 = e^{-h} - 1
        x = math.sqrt((1.0 - ab_next) / (1.0 - ab_t)) * x - alpha_s * em1 * m[0]  # first order
        if len(m) == 2:  # 2M, midpoint form (sample_dpmpp_2m)
            x = x - (0.5 * alpha_s * em1 * h / hs[0]) * (m[0] - m[1])
        elif len(m) == 3:
            r0, r1 = hs[0] / h, hs[1] / h
            d1_0, d1_1 = (m[0] - m[1]) / r0, (m[1] - m[2]) / r1
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x = x + alpha_s * (em1 / h + 1.0) * d1 - alpha_s * ((em1 + h) / h**2 - 0.5) * d2
        hs = [h, *hs[:1]]
    return x


def sample_unipc(
    denoiser: Denoiser,
    x: Any,
    schedule: Schedule,
    *,
    steps: int = 10,
    order: int = 2,
    spacing: str = "trailing",
    timesteps: list[int] | None = None,
    generator: Any = None,
    callback: Callback | None = None,
) -> Any:
    """Zhao et al. 2023 (UniPC), Alg. 1-3 with B(h) = e^{-h} - 1 (their B2) and data prediction.

    Each step, the network's x0_pred at x_t first corrects x_t (UniC: the update that produced
    x_t is redone with the new evaluation as one more point, raising its order by one), then the
    predictor UniP-p steps from the corrected x_t to the next timestep; the evaluation is reused,
    so a step costs one network call. Both updates are (``unipc_update``)
    x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) m0 - alpha_s B(h) sum_k rho_k D_k,
    D_k = (m_k - m0) / r_k over earlier (predictor) or earlier and new (corrector, r = 1) x0
    predictions m_k, with rho from ``unipc_weights``. The predictor's order p is
    min(``order``, i + 1, steps left), as the authors' code and diffusers (``lower_order_final``)
    do; the last step, to the data (sigma = 0), returns x0_pred. ``order=2`` (UniPC-2, third
    order with the corrector) is diffusers' default and the paper's choice for guided sampling;
    the paper prefers 3 for unconditional models. ``generator`` is unused.
    """
    if not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be a positive integer, got {order!r}")
    seq = _resolve(schedule, steps, spacing, timesteps)
    pairs = alpha_bar_pairs(schedule, seq)
    m: list[Any] = []  # x0_pred at the visited steps, newest first
    lams: list[float] = []  # lambda at the visited steps, newest first
    x_prev, p_prev = None, 0  # the corrected x of the previous step and its predictor's order
    for i, (t, ab_t, ab_next) in enumerate(pairs):
        _, x0 = denoiser(x, timesteps_like(x, t))
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "x0_pred": x0})
        if ab_next >= 1.0:  # the final step to the data
            x = x0
            break
        lam_t = half_log_snr(ab_t)
        if x_prev is not None:  # UniC: redo the last update with x0 as one more point
            ab_prev = pairs[i - 1][1]
            x = unipc_update(x_prev, ab_prev, ab_t, m[:p_prev], lams[:p_prev], x0_new=x0)
        m, lams = [x0, *m[: order - 1]], [lam_t, *lams[: order - 1]]
        p = min(order, i + 1, len(seq) - i)
        x_prev, p_prev = x, p
        x = unipc_update(x, ab_t, ab_next, m[:p], lams[:p])  # UniP-p
    return x


def unipc_update(
    x: Any, ab_t: float, ab_s: float, m: list[Any], lams: list[float], x0_new: Any = None
) -> Any:
    """UniPC's update t -> s from x0 predictions ``m`` at ``lams`` (newest first, m[0] at t).

    x_s = (sigma_s / sigma_t) x - alpha_s (e^{-h} - 1) m0 - alpha_s B(h) sum_k rho_k D_k with
    D_k = (m_k - m0) / r_k, r_k = (lambda_k - lambda_t) / h: the predictor UniP with len(m)
    points, or, given ``x0_new`` (the evaluation at s), the corrector UniC, which adds
    D = x0_new - m0 with r = 1.
    """
    h = half_log_snr(ab_s) - lams[0]
    rks = [(lam - lams[0]) / h for lam in lams[1:]]
    ds = [(mk - m[0]) / r for mk, r in zip(m[1:], rks, strict=True)]
    if x0_new is not None:
        rks, ds = [*rks, 1.0], [*ds, x0_new - m[0]]
    b_h = math.expm1(-h)  # B2(h) = e^{-h} - 1, which is also h phi_1 for the data term
    x = math.sqrt((1.0 - ab_s) / (1.0 - ab_t)) * x - math.sqrt(ab_s) * b_h * m[0]
    if ds:
        weighted = sum(rho * d for rho, d in zip(unipc_weights(h, rks), ds, strict=True))
        x = x - math.sqrt(ab_s) * b_h * weighted
    return x


def unipc_weights(h: float, rks: list[float]) -> list[float]:
    """rho of UniPC's update (Zhao et al. 2023, Alg. 1-2): R rho = b, R_kj = r_j^(k-1) and
    b_k = k! (-h) phi_{k+1}(-h) / B(h) for k = 1 .. K = len(rks), where phi_1(z) = (e^z - 1) / z,
    phi_{k+1}(z) = (phi_k(z) - 1/k!) / z and B(h) = e^{-h} - 1. For K = 1 rho is 1/2, the
    h -> 0 limit, as in the authors' code and diffusers (UniP-2 and UniC-1).
    """
    if len(rks) == 1:
        return [0.5]
    z, b_h = -h, math.expm1(-h)
    z_phi = b_h / z - 1.0  # z phi_2(z)
    b, factorial = [], 1.0
    for k in range(1, len(rks) + 1):
        b.append(z_phi * factorial / b_h)  # k! z phi_{k+1}(z) / B(h)
        factorial *= k + 1
        z_phi = z_phi / z - 1.0 / factorial  # z phi_{k+2}(z)
    vander = np.array([[r ** (k - 1) for r in rks] for k in range(1, len(rks) + 1)])
    return [float(rho) for rho in np.linalg.solve(vander, np.array(b))]


def default_steps(sampler: str, num_timesteps: int) -> int:
    """Steps a sampler takes when none are asked for: all T for DDPM, 50 for DDIM, 20 for the
    second-order DPM++ solvers, 10 for the higher-order ones (iPNDM, DPM++(3M), UniPC)."""
    if sampler not in _SAMPLER_FUNCTIONS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    return num_timesteps if sampler == "ddpm" else _DEFAULT_STEPS[sampler]


_SAMPLER_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "ipndm": sample_ipndm,
    "dpmpp-2m": sample_dpmpp_2m,
    "dpmpp-2m-sde": sample_dpmpp_2m_sde,
    "dpmpp-3m": sample_dpmpp_3m,
    "unipc": sample_unipc,
}
_DEFAULT_STEPS = {
    "ddim": 50, "ipndm": 10, "dpmpp-2m": 20, "dpmpp-2m-sde": 20, "dpmpp-3m": 10, "unipc": 10,
}  # fmt: skip
assert set(_SAMPLER_FUNCTIONS) == set(SAMPLERS) == {"ddpm", *_DEFAULT_STEPS}


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
    """Dispatch to ``sample_<sampler>`` by name (one of ``SAMPLERS``) with ``default_steps`` when
    ``steps`` is None. ``eta`` goes to DDIM and is ignored by the others; ``options`` (spacing,
    timesteps, variance, ...) go to the sampler as they are."""
    if sampler not in _SAMPLER_FUNCTIONS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if sampler == "ddim":
        options = {"eta": eta, **options}
    return _SAMPLER_FUNCTIONS[sampler](
        denoiser, x, schedule, steps=steps or default_steps(sampler, schedule.num_timesteps),
        generator=generator, callback=callback, **options,
    )  # fmt: skip
