"""Flow matching / rectified flow: the path, the velocity, time sampling, the grid and the solvers.

The one flow convention
-----------------------
Time is continuous, ``t`` in [0, 1]; ``t = 0`` is data and ``t = 1`` is pure noise. The path is
the straight line between a data point x0 and a noise draw eps ~ N(0, I),

    x_t = (1 - t) x0 + t eps                        (Esser et al. 2024 (SD3), Sec. 3, "RF")

and the network predicts the velocity along it, the time derivative of the path,

    v = dx_t / dt = eps - x0                         (Liu et al. 2023, Eq. 1, time reversed)

trained by regressing v_theta(x_t, t) onto eps - x0 (conditional flow matching, Lipman et al.
2023, Eq. 23 with sigma_min = 0). Sampling integrates the ODE dx/dt = v_theta(x, t) from
``t = 1`` (x = eps) down to ``t = 0`` (the data), so every step has dt < 0. This is the
convention of SD3, diffusers' ``FlowMatchEulerDiscreteScheduler`` (its ``sigma`` is our t) and
minRF; the network receives ``t`` itself, in [0, 1] (scaling it for a time embedding is the
network's business).

Pitfalls this module is written to avoid
----------------------------------------
- **Flipped time.** Lipman et al. 2023, Liu et al. 2023 and torchcfm put *data* at ``t = 1``
  (x_t = t x1 + (1 - t) x0 with x0 the noise). A model trained that way, called with our t,
  sees the wrong noise level; it must be called at ``1 - t`` *and* its output negated
  (its velocity points from noise to data). Both flips, or neither.
- **The sign of the velocity.** v = eps - x0 points towards the noise; the sampler moves by
  (t_next - t) v with t_next < t. Writing ``x + dt * v`` with dt = 1 / steps > 0 walks the
  wrong way.
- **Applying the timestep shift twice.** SD3's shift (``shift_time``) is applied exactly once,
  by ``flow_timesteps``, to the uniform grid; solvers take the grid as data and never shift.
  Shifting an already-shifted grid shifts it by shift^2 (diffusers issue #13243 is this bug).
- **Guidance on the conditions.** Classifier-free guidance extrapolates the two *velocities*
  (``guided_velocity``), never the labels or embeddings fed to the network.

Everything here works on NumPy arrays and PyTorch tensors alike; ``t`` is a float or one time
per sample, shape (N,), broadcast over the other axes. Constants and grids are float64 NumPy.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from difflab.schedules import Schedule

Array = TypeVar("Array", torch.Tensor, np.ndarray)
Times = float | np.ndarray | torch.Tensor  # one time for the batch, or one per sample (N,)
VelocityFn = Callable[[Any, Any], Any]  # velocity_fn(x_t, t) -> v, t of shape (N,) in [0, 1]
Callback = Callable[[dict[str, Any]], None]

TIME_SAMPLINGS = ("logit-normal", "uniform")
# A flow network is called with 1000 t (as SD3's is): its sinusoidal time embedding
# (``models.unet.timestep_embedding``) then spans the range of DDPM's integer code timesteps.
FLOW_TIME_SCALE = 1000.0
FLOW_SOLVERS = ("euler", "heun")
FLOW_DEFAULT_STEPS = {"euler": 20, "heun": 10}  # solver steps when none are asked for (Heun: 19
# network evaluations, Euler's 20)


def _per_sample(t: Times, like: Array) -> Array:
    """``t`` as a (N, 1, ..., 1) array (or a broadcastable scalar) of ``like``'s backend and dtype."""
    if isinstance(like, torch.Tensor):
        if not isinstance(t, torch.Tensor):
            t = torch.from_numpy(np.asarray(t, dtype=np.float64))
        out = t.to(device=like.device, dtype=like.dtype)
    else:
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().numpy()
        out = np.asarray(t).astype(like.dtype)
    return out.reshape((-1,) + (1,) * (like.ndim - 1))


def _times_like(x: Any, t: Times) -> Any:
    """The flow time(s) ``t`` for every sample of the batch ``x``: shape (N,), x's backend and dtype."""
    if isinstance(x, torch.Tensor):
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().numpy()
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), (x.shape[0],)).copy()
        return torch.from_numpy(t).to(device=x.device, dtype=x.dtype)
    return np.broadcast_to(np.asarray(t, dtype=x.dtype), (x.shape[0],)).copy()


# ---------------------------------------------------------------------------------------------
# The path and the velocity
# ---------------------------------------------------------------------------------------------


def interpolate(x0: Array, eps: Array, t: Times) -> Array:
    """SD3 Sec. 3 (rectified flow): x_t = (1 - t) x0 + t eps; x0 at t = 0, eps at t = 1."""
    t = _per_sample(t, x0)
    return (1 - t) * x0 + t * eps


def velocity_target(x0: Array, eps: Array) -> Array:
    """The regression target v = dx_t/dt = eps - x0 (Liu et al. 2023, Eq. 1; Lipman et al. 2023,
    Eq. 23 with sigma_min = 0; both with time reversed to put the data at t = 0)."""
    return eps - x0


# Read a velocity at (x_t, t) as the other predictions. Substituting eps = x0 + v into
# x_t = (1 - t) x0 + t eps gives x_t = x0 + t v, hence
#     x0 = x_t - t v,    eps = x0 + v = x_t + (1 - t) v.
# Backwards, from x_t = (1 - t) x0 + t eps with one of x0, eps known:
#     from eps: x0 = (x_t - t eps) / (1 - t),  v = eps - x0 = (eps - x_t) / (1 - t)   (t < 1)
#     from x0:  eps = (x_t - (1 - t) x0) / t,  v = eps - x0 = (x_t - x0) / t          (t > 0)
# At t = 1 an eps prediction says nothing about the data, and at t = 0 an x0 prediction says
# nothing about the noise: those two conversions are singular there, the first two never are.


def x0_from_velocity(x_t: Array, t: Times, v: Array) -> Array:
    """x0 = x_t - t v: the data the velocity points away from (the denoised estimate)."""
    return x_t - _per_sample(t, x_t) * v


def eps_from_velocity(x_t: Array, t: Times, v: Array) -> Array:
    """eps = x_t + (1 - t) v: the noise the velocity points towards."""
    return x_t + (1 - _per_sample(t, x_t)) * v


def velocity_from_eps(x_t: Array, t: Times, eps: Array) -> Array:
    """v = (eps - x_t) / (1 - t), for t < 1: the velocity of an eps prediction."""
    return (eps - x_t) / (1 - _per_sample(t, x_t))


def velocity_from_x0(x_t: Array, t: Times, x0: Array) -> Array:
    """v = (x_t - x0) / t, for t > 0: the velocity of an x0 prediction."""
    return (x_t - x0) / _per_sample(t, x_t)


# ---------------------------------------------------------------------------------------------
# The exact relation to DDPM's variance-preserving path
# ---------------------------------------------------------------------------------------------
# The VP path x^VP = sqrt(ab) x0 + sqrt(1 - ab) eps (Ho et al. 2020, Eq. 4; ab = alpha_bar) and
# the flow path carry the same x0 and eps; divided by sqrt(ab) + sqrt(1 - ab) the VP point is
#     x^VP / (sqrt(ab) + sqrt(1 - ab)) = (1 - t) x0 + t eps,   t = sqrt(1 - ab) / (sqrt(ab) + sqrt(1 - ab)),
# the flow point at the time whose signal-to-noise ratio is DDPM's (Kingma et al. 2021):
#     SNR = (1 - t)^2 / t^2 = ab / (1 - ab),   and back   ab = (1 - t)^2 / ((1 - t)^2 + t^2).
# So a velocity model is an eps model of any DDPM schedule: rescale x^VP, call it at that t, and
# read eps off the velocity (eps is the same draw on both paths).


def flow_t_from_alpha_bar(alpha_bar: float | np.ndarray) -> np.ndarray:
    """The flow time with DDPM's SNR: t = sqrt(1 - ab) / (sqrt(ab) + sqrt(1 - ab)), float64."""
    ab = _checked_unit_interval(alpha_bar, "alpha_bar")
    return np.sqrt(1 - ab) / (np.sqrt(ab) + np.sqrt(1 - ab))


def alpha_bar_from_flow_t(t: float | np.ndarray) -> np.ndarray:
    """DDPM's alpha_bar with the flow time's SNR: ab = (1 - t)^2 / ((1 - t)^2 + t^2), float64."""
    t = _checked_unit_interval(t, "flow time t")
    return (1 - t) ** 2 / ((1 - t) ** 2 + t**2)


def vp_to_flow_scale(alpha_bar: float | np.ndarray) -> np.ndarray:
    """x_t^flow = scale x_t^VP at the same SNR: scale = 1 / (sqrt(ab) + sqrt(1 - ab)), in [1/sqrt 2, 1]."""
    ab = _checked_unit_interval(alpha_bar, "alpha_bar")
    return 1 / (np.sqrt(ab) + np.sqrt(1 - ab))


def _checked_unit_interval(values: float | np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if not np.all((values >= 0) & (values <= 1)):  # NaN fails too
        bad = values[~((values >= 0) & (values <= 1))].ravel()[0]
        raise ValueError(f"{name} must lie in [0, 1], got {bad}")
    return values


def from_vp(x_vp: Array, t_index: Any, schedule: Schedule) -> tuple[Array, Array]:
    """The point of the flow path that a DDPM sample ``x_vp`` at code timesteps ``t_index`` is:
    (x_flow, t_flow), x_flow = x_vp / (sqrt(ab) + sqrt(1 - ab)) and t_flow (N,) with the same SNR,
    both in x_vp's backend and dtype (``difflab.diffusion`` calls a flow network there)."""
    if isinstance(t_index, torch.Tensor):
        t_index = t_index.detach().cpu().numpy()
    alpha_bar = schedule.alpha_bar[np.asarray(t_index)]  # (N,) float64
    x = _per_sample(vp_to_flow_scale(alpha_bar), x_vp) * x_vp
    return x, _times_like(x, flow_t_from_alpha_bar(alpha_bar))


def flow_loss(
    velocity_fn: VelocityFn, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """Conditional flow matching (Lipman et al. 2023, Eq. 23; SD3 Eq. 2's rectified flow): the
    per-sample MSE between v_theta(x_t, t) and eps - x0 at x_t = (1 - t) x0 + t eps, shape (B,).
    ``t`` (B,) is drawn by the caller (``sample_t``); the network sees ``FLOW_TIME_SCALE * t``."""
    x_t = interpolate(x0, eps, t)
    output = velocity_fn(x_t, t.to(x_t.dtype) * FLOW_TIME_SCALE)
    target = velocity_target(x0, eps)
    return (output.float() - target.float()).pow(2).flatten(1).mean(dim=1)  # (B,)


def as_eps_model(velocity_fn: VelocityFn, schedule: Schedule) -> Callable[[Any, Any], Any]:
    """A velocity model as an eps model ``model_fn(x_t_VP, t_index) -> eps`` of ``schedule``.

    ``t_index`` are DDPM code timesteps (``difflab.schedules``: code t = paper t + 1, so the
    noise level is ``schedule.alpha_bar[t_index]``), as difflab's samplers call a model. The VP
    input is rescaled onto the flow path at the time with the same SNR, the velocity model is
    called there (with times of shape (N,) in x's backend and dtype), and eps = x + (1 - t) v is
    returned; ``difflab.samplers.make_denoiser(model_fn, schedule, "eps")`` then drives any of
    difflab's DDPM samplers with it.
    """

    def model_fn(x_vp: Any, t_index: Any) -> Any:
        x, t = from_vp(x_vp, t_index, schedule)  # the same point on the flow path
        return eps_from_velocity(x, t, velocity_fn(x, t))

    return model_fn


# ---------------------------------------------------------------------------------------------
# Training times
# ---------------------------------------------------------------------------------------------


def sample_t(
    n: int,
    generator: torch.Generator | np.random.Generator,
    method: str = "logit-normal",
    loc: float = 0.0,
    scale: float = 1.0,
) -> Any:
    """``n`` training times in [0, 1], float64, on the generator's backend (and device).

    - ``logit-normal`` (Esser et al. 2024 (SD3), Sec. 3.1): t = sigmoid(u), u ~ N(loc, scale^2),
      which puts more training at the intermediate noise levels (SD3 found loc = 0, scale = 1
      best). A location of log(shift) is the training-time version of ``shift_time``:
      shift_time(sigmoid(u), shift) = sigmoid(u + log(shift)).
    - ``uniform`` (Lipman et al. 2023; Liu et al. 2023): t ~ U[0, 1]; ``loc``, ``scale`` unused.
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if method not in TIME_SAMPLINGS:
        raise ValueError(
            f"unknown time sampling {method!r}; expected one of {', '.join(TIME_SAMPLINGS)}"
        )
    if not math.isfinite(loc):
        raise ValueError(f"loc must be a finite number, got {loc!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    n = int(n)
    if isinstance(generator, torch.Generator):
        kwargs = {"generator": generator, "device": generator.device, "dtype": torch.float64}
        if method == "uniform":
            return torch.rand(n, **kwargs)
        return torch.sigmoid(loc + scale * torch.randn(n, **kwargs))
    if isinstance(generator, np.random.Generator):
        if method == "uniform":
            return generator.random(n)
        u = loc + scale * generator.standard_normal(n)
        return 1 / (1 + np.exp(-u))
    raise ValueError(
        f"generator must be a torch.Generator or numpy.random.Generator, got {type(generator).__name__}"
    )


# ---------------------------------------------------------------------------------------------
# The sampling grid
# ---------------------------------------------------------------------------------------------


def shift_time(t: float | np.ndarray, shift: float) -> np.ndarray:
    """Esser et al. 2024 (SD3), Sec. 5.3.2 (resolution-dependent shift): t' = shift t / (1 + (shift - 1) t).

    In logit space it is a translation, logit(t') = logit(t) + log(shift), so it keeps 0 and 1,
    ``shift = 1`` is the identity, shift > 1 spends more of the grid at high noise, and shifting
    twice shifts by shift^2: apply it once (``flow_timesteps`` does).
    """
    _check_shift(shift)
    t = np.asarray(t, dtype=np.float64)
    return shift * t / (1 + (shift - 1) * t)


def flow_timesteps(steps: int, shift: float = 1.0) -> np.ndarray:
    """The sampling grid: ``steps + 1`` float64 times from 1 (noise) to 0 (data), uniform in t
    and then shifted once by ``shift_time`` (SD3 samples with shift 3; diffusers'
    FlowMatchEulerDiscreteScheduler applies the same shift to its own uniform grid)."""
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    _check_shift(shift)
    return shift_time(np.linspace(1.0, 0.0, int(steps) + 1), shift)


def _check_shift(shift: float) -> None:
    if not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a finite number > 0, got {shift!r}")


def _checked_grid(timesteps: Any) -> list[float]:
    """The grid as floats: decreasing, at least two times, all in [0, 1]."""
    if isinstance(timesteps, torch.Tensor):
        timesteps = timesteps.detach().cpu().numpy()
    grid = np.asarray(timesteps, dtype=np.float64)
    ok = grid.ndim == 1 and grid.size >= 2
    ok = ok and bool(np.all(np.diff(grid) < 0) and grid[0] <= 1 and grid[-1] >= 0)
    if not ok:
        values = [f"{t:g}" for t in grid.ravel()]
        shown = ", ".join(values if len(values) <= 8 else [*values[:3], "...", *values[-3:]])
        raise ValueError(
            f"timesteps must be a decreasing grid of at least 2 times in [0, 1] "
            f"(flow_timesteps makes one), got [{shown}]"
        )
    return [float(t) for t in grid]


# ---------------------------------------------------------------------------------------------
# Guidance and the solvers
# ---------------------------------------------------------------------------------------------


def guided_velocity(v_cond: Array, v_uncond: Array, scale: float) -> Array:
    """Classifier-free guidance (Ho & Salimans 2022) on velocities: v_u + scale (v_c - v_u).

    ``scale = 1`` is the conditional model, 0 the unconditional one; Ho & Salimans' w is
    scale - 1. Because x0 and eps are affine in v at fixed (x_t, t), this equals guiding the x0
    or eps predictions with the same scale. Guidance combines the two network *outputs*; the
    labels or embeddings fed to the network are never mixed.
    """
    if not math.isfinite(scale):
        raise ValueError(f"guidance scale must be a finite number, got {scale!r}")
    return v_uncond + scale * (v_cond - v_uncond)


def euler(
    velocity_fn: VelocityFn, x: Any, timesteps: Any, *, callback: Callback | None = None
) -> Any:
    """Euler's method on dx/dt = v(x, t) over the grid (how Liu et al. 2023 and SD3 sample).

    x_{i+1} = x_i + (t_{i+1} - t_i) v(x_i, t_i), t_{i+1} < t_i: one network evaluation per step.
    ``x`` is the sample at ``timesteps[0]`` (pure noise when that is 1). On the last step to
    t = 0 the update is x_t - t v = x0_pred. After each evaluation
    ``callback({"x": x_i, "i": i, "t": t_i, "x0_pred": x_i - t_i v, "v": v, "nfe": evaluations
    so far})`` is called; ``t`` is the float flow time, not a DDPM index.
    """
    grid = _checked_grid(timesteps)
    for i, (t, t_next) in enumerate(itertools.pairwise(grid)):
        v = velocity_fn(x, _times_like(x, t))
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "x0_pred": x - t * v, "v": v, "nfe": i + 1})
        x = x + (t_next - t) * v
    return x


def heun(
    velocity_fn: VelocityFn, x: Any, timesteps: Any, *, callback: Callback | None = None
) -> Any:
    """Heun's second-order method (Karras et al. 2022 (EDM), Algorithm 1, with dx/dt = v).

    Predictor: the Euler step x' = x_i + h v_i, h = t_{i+1} - t_i; corrector: the average of
    the two slopes, x_{i+1} = x_i + h (v_i + v(x', t_{i+1})) / 2. As in EDM's Algorithm 1, the
    step to t = 0 stays an Euler step (it returns x0_pred = x - t v): it saves an evaluation
    at t = 0, where logit-normal training puts almost no weight, and one step of local error
    O(h^2) keeps the method second order overall. So a grid of ``steps`` steps ending at 0
    costs 2 steps - 1 evaluations (``network_evaluations``). The callback sees each step's first
    evaluation, as in ``euler``; its ``nfe`` counts the corrector evaluations before it too.
    """
    grid = _checked_grid(timesteps)
    nfe = 0
    for i, (t, t_next) in enumerate(itertools.pairwise(grid)):
        v = velocity_fn(x, _times_like(x, t))
        nfe += 1
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "x0_pred": x - t * v, "v": v, "nfe": nfe})
        x_euler = x + (t_next - t) * v
        if t_next == 0:  # the step to the data: Euler (EDM Alg. 1 corrects only if t_next != 0)
            x = x_euler
            break
        v_next = velocity_fn(x_euler, _times_like(x, t_next))
        nfe += 1
        x = x + (t_next - t) * (0.5 * v + 0.5 * v_next)
    return x


def network_evaluations(solver: str, timesteps: Any) -> int:
    """How many times ``solver`` (``euler`` or ``heun``) calls the velocity model on this grid
    (with classifier-free guidance each call runs the network twice)."""
    grid = _checked_grid(timesteps)
    steps = len(grid) - 1
    if solver == "euler":
        return steps
    if solver == "heun":
        return 2 * steps - (1 if grid[-1] == 0 else 0)
    raise ValueError(f"unknown flow solver {solver!r}; expected one of {', '.join(FLOW_SOLVERS)}")


# ---------------------------------------------------------------------------------------------
# MeanFlow: the average velocity over an interval (Geng et al. 2025)
#
# u(z_t, r, t) = 1 / (t - r) * integral_r^t v(z_s, s) ds, r <= t: the velocity that carries z_t
# to z_r in one straight step, z_r = z_t - (t - r) u (Eq. 3 and 9 of the paper, whose path and
# time convention are this module's: data at 0, noise at 1, v = eps - x0). At r = t it is the
# instantaneous velocity v, so a flow matching network is a MeanFlow network that ignores r.

AverageVelocityFn = Callable[[Any, Any, Any], Any]  # u_fn(z_t, r, t) -> u; r, t of shape (N,)
MEANFLOW_DEFAULT_STEPS = 1


def average_velocity_target(
    u_fn: AverageVelocityFn, z_t: torch.Tensor, r: torch.Tensor, t: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's u(z_t, r, t) (with its graph) and MeanFlow's regression target (without).

    Differentiating (t - r) u = integral_r^t v ds in t gives the MeanFlow identity (Eq. 6)

        u(z_t, r, t) = v(z_t, t) - (t - r) d/dt u(z_t, r, t),

    whose total derivative follows the path: dz/dt = v, dr/dt = 0, dt/dt = 1 (Eq. 8), so it is
    one Jacobian-vector product of u_fn with tangents (v, 0, 1) (``torch.func.jvp``, forward
    mode: the same cost as a forward pass, no second backward). In training ``v`` is the
    conditional velocity eps - x0 (Eq. 10), whose expectation is the marginal v. The target is
    detached (the stop-gradient of Eq. 9): the loss regresses u onto it like a fixed label.
    """
    tangents = (v, torch.zeros_like(r), torch.ones_like(t))
    u, du_dt = torch.func.jvp(u_fn, (z_t, r, t), tangents)
    target = v - _per_sample(t - r, z_t) * du_dt
    return u, target.detach()


def adaptive_loss(
    u: torch.Tensor, target: torch.Tensor, power: float = 1.0, c: float = 1e-3
) -> torch.Tensor:
    """MeanFlow's adaptively weighted squared error, per sample (B,): its gradient is that of
    w ||u - target||^2 with w = sg(1 / (||u - target||^2 + c)^power) (Sec. 4.3; power 1 was the
    paper's best, 0 the plain squared error; the norm sums over the pixels, as the paper's).
    Its *value* is the plain mean squared error per pixel: with power 1 the weighted loss is
    ||.||^2 / (||.||^2 + c), close to 1 whatever the error, and a log of it would show nothing."""
    squared = (u - target).pow(2).flatten(1).sum(dim=1)  # (B,)
    weighted = (squared.detach() + c).pow(-power) * squared
    return weighted - weighted.detach() + squared.detach() / u[0].numel()


def sample_t_r(
    n: int,
    generator: torch.Generator,
    ratio: float = 0.25,
    loc: float = -0.4,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(r, t), each (n,) float64 with r <= t: two logit-normal draws sorted (the paper's best:
    loc -0.4, scale 1), of which a fraction ``1 - ratio`` get r = t (there u is v, and the loss
    is plain flow matching; the paper's best share of r != t was 25%)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"the share of r != t must lie in [0, 1], got {ratio}")
    a = sample_t(n, generator, "logit-normal", loc, scale)
    b = sample_t(n, generator, "logit-normal", loc, scale)
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    equal = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)
    r = torch.where(equal >= ratio, t, r)
    return r, t


def meanflow_sample(
    u_fn: AverageVelocityFn, x: Any, timesteps: Any, *, callback: Callback | None = None
) -> Any:
    """MeanFlow sampling (Alg. 2): z_r = z_t - (t - r) u(z_t, r, t) along the grid, one network
    evaluation a jump; one jump from t = 1 to r = 0 is one-step generation, x0 = eps - u(eps, 0, 1).
    The callback sees each jump as the flow solvers' does, with x0_pred the jump to t = 0 that
    the instantaneous reading of u would give (x - t u)."""
    grid = _checked_grid(timesteps)
    for i, (t, r) in enumerate(itertools.pairwise(grid)):
        u = u_fn(x, _times_like(x, r), _times_like(x, t))
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "x0_pred": x - t * u, "v": u, "nfe": i + 1})
        x = x - (t - r) * u
    return x


def straightness(velocity_fn: VelocityFn, x: Any, timesteps: Any) -> Any:
    """How far an ODE's paths are from straight lines (Liu et al. 2022, Eq. 3, "straightness"):
    the mean over the grid's steps of ||v(x_t, t) - (x_1 - x_0)||^2 per pixel, per sample (N,),
    along the Euler solve from ``x`` (at t = 1) over ``timesteps``. 0 means every path is a
    straight line walked at constant speed, which one Euler step follows exactly."""
    grid = _checked_grid(timesteps)
    start, velocities = x, []
    for t, t_next in itertools.pairwise(grid):
        v = velocity_fn(x, _times_like(x, t))
        velocities.append(v)
        x = x + (t_next - t) * v
    chord = (start - x) / (grid[0] - grid[-1])  # the straight line's velocity, end to end
    weights = -np.diff(grid) / (grid[0] - grid[-1])  # each step's share of the time
    total = sum(
        w * ((v - chord) ** 2).reshape(len(v), -1).mean(1)
        for w, v in zip(weights, velocities, strict=True)
    )
    return total
