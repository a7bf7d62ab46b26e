"""Schedules against an independent float64 computation of the formulas, written with math."""

import math

import numpy as np
import pytest

from difflab.schedules import (
    cosine_betas,
    linear_betas,
    make_schedule,
    scaled_timesteps,
    schedule_from_betas,
)


def reference_linear(T):
    scale = 1000 / T
    lo, hi = 1e-4 * scale, 0.02 * scale
    return [lo + (hi - lo) * i / (T - 1) for i in range(T)]


def reference_cosine(T, s=0.008):
    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    return [min(1 - f(i + 1) / f(i), 0.999) for i in range(T)]


def reference_constants(betas):
    """alpha_bar, posterior variance and mean coefficients by plain loops (Ho et al. Eqs. 4, 7)."""
    out = {"alpha_bar": [], "beta_tilde": [], "coef_x0": [], "coef_xt": []}
    prod = 1.0
    for beta in betas:
        prev = prod
        prod *= 1 - beta
        out["alpha_bar"].append(prod)
        out["beta_tilde"].append((1 - prev) / (1 - prod) * beta)
        out["coef_x0"].append(math.sqrt(prev) * beta / (1 - prod))
        out["coef_xt"].append(math.sqrt(1 - beta) * (1 - prev) / (1 - prod))
    return out


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("T", [1000, 200, 50])
def test_schedule_matches_independent_formulas(name, T):
    sched = make_schedule(name, T)
    betas = reference_linear(T) if name == "linear" else reference_cosine(T)
    ref = reference_constants(betas)
    assert sched.betas.dtype == np.float64 and sched.num_timesteps == T
    np.testing.assert_allclose(sched.betas, betas, rtol=1e-10, atol=0)
    np.testing.assert_allclose(sched.alpha_bar, ref["alpha_bar"], rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(sched.sqrt_alpha_bar, np.sqrt(ref["alpha_bar"]), rtol=1e-10)
    np.testing.assert_allclose(
        sched.sqrt_one_minus_alpha_bar, np.sqrt(1 - np.array(ref["alpha_bar"])), rtol=1e-10
    )
    np.testing.assert_allclose(sched.posterior_variance, ref["beta_tilde"], rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(sched.posterior_mean_coef_x0, ref["coef_x0"], rtol=1e-10)
    np.testing.assert_allclose(
        sched.posterior_mean_coef_xt, ref["coef_xt"], rtol=1e-10, atol=1e-300
    )


def test_published_linear_values():
    """Ho et al.'s linear schedule at T = 1000: the values every DDPM implementation shares."""
    sched = make_schedule("linear", 1000)
    assert sched.betas[0] == pytest.approx(1e-4) and sched.betas[-1] == pytest.approx(0.02)
    # alpha_bar at the last step, as in the DDPM / diffusers linear schedule: 4.0358e-05.
    assert sched.alpha_bar[-1] == pytest.approx(4.0358e-05, rel=1e-3)
    # The first step's posterior variance is 0: x_0 is determined by x_1 and x_0.
    assert sched.posterior_variance[0] == 0.0
    assert sched.alpha_bar_prev[0] == 1.0


def test_cosine_properties():
    """Nichol & Dhariwal: alpha_bar(0) close to 1, betas clipped at 0.999 at the end."""
    sched = make_schedule("cosine", 1000)
    assert sched.betas.max() == pytest.approx(0.999)
    assert 0.9999 < sched.alpha_bar[0] < 1
    assert sched.alpha_bar[-1] < 1e-6
    assert np.all(np.diff(sched.alpha_bar) < 0)


@pytest.mark.parametrize("T", [1000, 200])
def test_schedules_end_in_noise_for_any_T(T):
    for name in ["linear", "cosine"]:
        sched = make_schedule(name, T)
        assert sched.alpha_bar[-1] < 1e-3, (name, T)
        assert np.all((sched.betas > 0) & (sched.betas < 1))


def test_scaled_linear_keeps_total_noise():
    """Scaling the endpoints by 1000 / T keeps sum(beta) (so alpha_bar_T) roughly the same."""
    assert linear_betas(200).sum() == pytest.approx(linear_betas(1000).sum(), rel=1e-2)
    assert cosine_betas(200)[0] > cosine_betas(1000)[0]


def test_bad_input():
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'"):
        make_schedule("quadratic", 100)
    with pytest.raises(ValueError, match="timesteps"):
        make_schedule("linear", 1)
    with pytest.raises(ValueError, match="at least 21"):
        make_schedule("linear", 10)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        schedule_from_betas("bad", np.array([0.1, 1.0]))


def test_scaled_timesteps():
    ts = [0, 50, 100, 200, 400, 600, 800, 999]
    assert scaled_timesteps(ts, 1000) == ts
    assert scaled_timesteps(ts, 200) == [0, 10, 20, 40, 80, 120, 160, 199]
