"""Consistency models in difflab's parameterisation (Song et al. 2023), on any VP schedule.

With alpha_t = sqrt(alpha_bar_t) and sigma_t = sqrt(1 - alpha_bar_t) (alpha^2 + sigma^2 = 1), the
angle phi_t = atan2(sigma_t, alpha_t) puts every noise level on a quarter circle:

    x_t = cos(phi) x0 + sin(phi) eps,        v = cos(phi) eps - sin(phi) x0   (Salimans & Ho 2022)

and a DDIM step from phi to phi' is a rotation, x_{phi'} = cos(phi - phi') x - sin(phi - phi') v.
The consistency function is that rotation down to the least noisy level phi_min (code t = 0), with
the network's v (Song et al. 2023, Eq. 3; openai/consistency_models'
``get_scalings_for_boundary_condition``)::

    f(x, phi) = c_skip(phi) x + c_out(phi) F(x, phi),  c_skip = cos(phi - phi_min),
                                                        c_out = -sin(phi - phi_min)

so f(x, phi_min) = x exactly (cos 0 = 1, sin 0 = 0): the boundary condition holds by
construction, with sigma_min (phi_min > 0) in both scalings. An x0-predicting network gives the
same DDIM jump written with x0: c_skip = sigma_min / sigma_t, c_out = alpha_min - alpha_t c_skip.
An eps-predicting one would need c_skip = alpha_min / alpha_t, which grows without bound near pure
noise (alpha_{T-1} ~ 0): it is refused. Linear and cosine schedules are both VP: both work.

A student initialised from its v- (or x0-) teacher starts as "one DDIM step to the data", and
distillation (``difflab.objectives.consistency``) teaches it to land where the teacher's ODE lands.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from difflab.diffusion import coef
from difflab.samplers import Callback, noise_like, timesteps_like
from difflab.schedules import Schedule

# The code timesteps of multistep consistency sampling (Song et al. 2023, Alg. 1), as fractions
# of T - 1, from pure noise down. One evaluation per entry. Chosen by measurement: the best of
# three candidates each by FID (N = 1000) of a 10-minute MNIST student (benchmarks/few_step.py
# --tune-times; docs/few_step.md): 2 steps 33.9 against 41.1 (0.5) and 44.3 (0.3); 4 steps 34.1
# against 38.2 (0.7, 0.45, 0.2) and 43.6 (0.6, 0.35, 0.15).
STEP_TIMES: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (1.0, 0.7),
    4: (1.0, 0.75, 0.5, 0.25),
}


def check_prediction(prediction: str) -> None:
    """Refuse a prediction target whose consistency scalings are unbounded."""
    if prediction not in ("v", "x0"):
        raise ValueError(
            f"a consistency model needs a v- or x0-prediction teacher, not {prediction!r}: with "
            "eps the boundary scaling c_skip = alpha_min / alpha_t grows without bound near pure "
            "noise; train the teacher with --prediction v (the default)"
        )


def boundary_scalings(schedule: Schedule, prediction: str) -> tuple[np.ndarray, np.ndarray]:
    """c_skip and c_out for every code t (float64, length T), with c_skip = 1, c_out = 0 at t = 0."""
    check_prediction(prediction)
    alpha, sigma = schedule.sqrt_alpha_bar, schedule.sqrt_one_minus_alpha_bar
    if prediction == "v":
        delta = np.arctan2(sigma, alpha) - np.arctan2(sigma[0], alpha[0])  # phi - phi_min
        return np.cos(delta), -np.sin(delta)
    c_skip = sigma[0] / sigma  # exactly 1 at t = 0
    return c_skip, alpha[0] - alpha * c_skip  # exactly 0 at t = 0


def consistency_output(
    x_t: Any, t: Any, output: Any, scalings: tuple[np.ndarray, np.ndarray]
) -> Any:
    """c_skip(t) x_t + c_out(t) output, with ``scalings`` = ``boundary_scalings(...)``."""
    c_skip, c_out = scalings
    return coef(c_skip, t, x_t) * x_t + coef(c_out, t, x_t) * output


def consistency_function(
    model_fn: Callable[[Any, Any], Any], schedule: Schedule, prediction: str
) -> Callable[[Any, Any], Any]:
    """``f(x_t, t) = c_skip(t) x_t + c_out(t) model_fn(x_t, t)``: the sample at t = 0 the
    trajectory through (x_t, t) leads to."""
    scalings = boundary_scalings(schedule, prediction)

    def f(x_t: Any, t: Any) -> Any:
        return consistency_output(x_t, t, model_fn(x_t, t), scalings)

    return f


def renoise(x_min: Any, t: int, schedule: Schedule, noise: Any) -> Any:
    """A sample of q(x_t | x_{t_min}) for the VP process: sqrt(ab_t / ab_0) x + sqrt(1 - ab_t / ab_0) z."""
    ratio = float(schedule.alpha_bar[t] / schedule.alpha_bar[0])
    return math.sqrt(ratio) * x_min + math.sqrt(1.0 - ratio) * noise


def consistency_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """The code timesteps ``steps``-step consistency sampling visits (``STEP_TIMES``)."""
    if steps not in STEP_TIMES:
        raise ValueError(
            f"--steps {steps}: a consistency model samples in "
            f"{', '.join(map(str, STEP_TIMES))} steps"
        )
    return [round(frac * (num_timesteps - 1)) for frac in STEP_TIMES[steps]]


def sample_consistency(
    f: Callable[[Any, Any], Any],
    x: Any,
    schedule: Schedule,
    *,
    timesteps: list[int],
    generator: Any,
    callback: Callback | None = None,
) -> Any:
    """Song et al. 2023, Algorithm 1 (multistep consistency sampling): x <- f(x_T, T), then for
    each later time tau: x_tau = renoise(x, tau) with FRESH noise, x <- f(x_tau, tau)."""
    for i, t in enumerate(timesteps):
        if i > 0:
            x = renoise(x, t, schedule, noise_like(x, generator))  # new noise at every step
        x0 = f(x, timesteps_like(x, t))
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "x0_pred": x0})
        x = x0
    return x
