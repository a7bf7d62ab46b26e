"""Flow matching on an analytic case: Gaussian data, whose exact velocity field is known in closed form.

With x0 ~ N(mu, s^2 I), eps ~ N(0, I) and x_t = (1 - t) x0 + t eps, x_t is Gaussian with mean
m_t = (1 - t) mu and variance var_t = (1 - t)^2 s^2 + t^2, and its covariances with x0 and eps are
(1 - t) s^2 and t. Gaussian conditioning gives
    E[x0 | x_t] = mu + (1 - t) s^2 (x_t - m_t) / var_t,   E[eps | x_t] = t (x_t - m_t) / var_t,
so the flow-matching optimum, the velocity E[eps - x0 | x_t], is their difference. Along its ODE
d(x - m_t)/dt = (x - m_t) (t - (1 - t) s^2) / var_t = (x - m_t) d log sqrt(var_t) / dt, so
(x - m_t) / sqrt(var_t) is constant: the flow is the affine map
    x_t -> m_t' + sqrt(var_t' / var_t) (x_t - m_t),
which sends N(0, 1) at t = 1 onto N(mu, s^2) at t = 0. A solver's error is measured against it.
"""

import itertools
import math

import numpy as np
import pytest
import torch

from difflab.diffusion import q_sample
from difflab.flow import (
    alpha_bar_from_flow_t,
    as_eps_model,
    eps_from_velocity,
    euler,
    flow_t_from_alpha_bar,
    flow_timesteps,
    guided_velocity,
    heun,
    interpolate,
    network_evaluations,
    sample_t,
    shift_time,
    velocity_from_eps,
    velocity_from_x0,
    velocity_target,
    vp_to_flow_scale,
    x0_from_velocity,
)
from difflab.samplers import make_denoiser, sample_ddim, sample_dpmpp_2m
from difflab.schedules import make_schedule

MU, S = 0.3, 0.5
N = 20_000


def gaussian_velocity(mu=MU, s=S):
    """The exact velocity field E[eps - x0 | x_t] of x0 ~ N(mu, s^2) (module docstring); NumPy."""

    def velocity_fn(x, t):
        t = np.asarray(t, dtype=np.float64).reshape((-1,) + (1,) * (x.ndim - 1))
        m, var = (1 - t) * mu, (1 - t) ** 2 * s**2 + t**2
        x0 = mu + (1 - t) * s**2 * (x - m) / var
        eps = t * (x - m) / var
        return eps - x0

    return velocity_fn


def torch_velocity(velocity_fn):
    """A NumPy velocity model behind PyTorch tensors."""

    def fn(x, t):
        assert isinstance(t, torch.Tensor) and t.shape == (x.shape[0],)
        return torch.from_numpy(velocity_fn(x.numpy(), t.numpy()))

    return fn


def exact_flow_map(x, t_from, t_to, mu=MU, s=S):
    """The Gaussian flow ODE's exact solution from t_from to t_to (module docstring)."""
    m_from, var_from = (1 - t_from) * mu, (1 - t_from) ** 2 * s**2 + t_from**2
    m_to, var_to = (1 - t_to) * mu, (1 - t_to) ** 2 * s**2 + t_to**2
    return m_to + np.sqrt(var_to / var_from) * (x - m_from)


def check_gaussian(x, tol_var=0.03):
    se = S / np.sqrt(x.size)
    assert abs(x.mean() - MU) < 5 * se, x.mean()
    assert x.var() == pytest.approx(S**2, rel=tol_var), x.var()


def _rms(a):
    return float(np.sqrt(np.mean(np.asarray(a) ** 2)))


def _backend(kind, a):
    return torch.from_numpy(a) if kind == "torch" else a


def _numpy(a):
    return a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


# The path, the velocity and the conversions ----------------------------------------------------


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_interpolation_endpoints_and_velocity_is_the_time_derivative(kind):
    rng = np.random.default_rng(0)
    x0, eps = (_backend(kind, a) for a in rng.standard_normal((2, 6, 3, 4, 4)))
    np.testing.assert_array_equal(_numpy(interpolate(x0, eps, 0.0)), _numpy(x0))
    np.testing.assert_array_equal(_numpy(interpolate(x0, eps, 1.0)), _numpy(eps))
    t, h = rng.uniform(0.1, 0.9, 6), 1e-6  # one time per sample
    slope = (
        interpolate(x0, eps, _backend(kind, t + h)) - interpolate(x0, eps, _backend(kind, t - h))
    ) / (2 * h)
    np.testing.assert_allclose(_numpy(slope), _numpy(velocity_target(x0, eps)), atol=1e-8)
    # per-sample times: sample k sits at its own t_k
    x_t = _numpy(interpolate(x0, eps, _backend(kind, t)))
    for k in range(6):
        expected = (1 - t[k]) * _numpy(x0)[k] + t[k] * _numpy(eps)[k]
        np.testing.assert_allclose(x_t[k], expected, rtol=1e-12)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_conversions_round_trip(kind):
    """v -> x0 = x_t - t v and eps = x_t + (1 - t) v give back the x0 and eps the point was made
    of, and eps -> v, x0 -> v give back v = eps - x0: NumPy and PyTorch alike."""
    rng = np.random.default_rng(1)
    x0, eps = (_backend(kind, a) for a in rng.standard_normal((2, 8, 2, 3, 3)))
    t = _backend(kind, rng.uniform(0.02, 0.98, 8))
    x_t, v = interpolate(x0, eps, t), velocity_target(x0, eps)
    for got, want in [
        (x0_from_velocity(x_t, t, v), x0),
        (eps_from_velocity(x_t, t, v), eps),
        (velocity_from_eps(x_t, t, eps), v),
        (velocity_from_x0(x_t, t, x0), v),
        (velocity_from_eps(x_t, t, eps_from_velocity(x_t, t, v)), v),
        (velocity_from_x0(x_t, t, x0_from_velocity(x_t, t, v)), v),
    ]:
        assert type(got) is type(x0)
        np.testing.assert_allclose(_numpy(got), _numpy(want), rtol=1e-9, atol=1e-9)
    # a float32 batch stays float32 with float64 times
    x32 = _backend(kind, rng.standard_normal((4, 1, 2, 2)).astype(np.float32))
    assert x0_from_velocity(x32, _backend(kind, np.full(4, 0.5)), x32).dtype == x32.dtype


# The Gaussian oracle ----------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_gaussian_velocity_is_the_conditional_expectation(t):
    """Monte Carlo: regress the training target eps - x0 on x_t. The conditional expectation of
    jointly Gaussian variables is affine, so least squares must find the oracle's slope and
    intercept, within 5 standard errors of the fit (about 0.004 at these 400,000 draws)."""
    rng = np.random.default_rng(2)
    n = 400_000
    x0 = MU + S * rng.standard_normal(n)
    eps = rng.standard_normal(n)
    x_t, target = interpolate(x0, eps, t), velocity_target(x0, eps)
    slope, intercept = np.polyfit(x_t, target, 1)
    oracle = gaussian_velocity()
    oracle_intercept = oracle(np.zeros(1), np.full(1, t))[0]
    oracle_slope = oracle(np.ones(1), np.full(1, t))[0] - oracle_intercept
    resid_std = np.std(target - oracle(x_t, np.full(n, t)))
    se_slope = resid_std / (np.std(x_t) * math.sqrt(n))
    se_intercept = resid_std / math.sqrt(n) * math.sqrt(1 + x_t.mean() ** 2 / x_t.var())
    assert abs(slope - oracle_slope) < 5 * se_slope, (slope, oracle_slope, se_slope)
    assert abs(intercept - oracle_intercept) < 5 * se_intercept, (intercept, oracle_intercept)
    # and the oracle's residual is the irreducible one: its mean square equals the fit's
    fit_mse = np.mean((target - slope * x_t - intercept) ** 2)
    assert resid_std**2 == pytest.approx(fit_mse, rel=1e-3)


def test_the_exact_flow_map_is_where_a_fine_solver_ends_and_carries_noise_to_data():
    """The closed-form solution against independent checks: a 500-step Heun integration of the
    oracle lands on it to 1e-5 (3e-6 measured), and it maps N(0, 1) at t = 1 onto N(mu, s^2) at t = 0."""
    x_T = np.random.default_rng(3).standard_normal((N, 1, 1, 1))
    fine = heun(gaussian_velocity(), x_T, flow_timesteps(500))
    exact = exact_flow_map(x_T, 1.0, 0.0)
    assert _rms(fine - exact) < 1e-5, _rms(fine - exact)
    np.testing.assert_allclose(exact, MU + S * x_T, rtol=1e-12)
    check_gaussian(exact)


# The solvers ----------------------------------------------------------------------------------


def test_euler_is_first_order_and_heun_second_order():
    """RMS error at t = 0 against the exact flow map, from the same x_T, at 4, 8, 16 and 32
    uniform steps: the fitted log-log slope is the order (measured: Euler 0.94, Heun 2.13;
    Heun's last step, to t = 0, is Euler's, which keeps it second order)."""
    steps = np.array([4, 8, 16, 32])
    x_T = np.random.default_rng(1).standard_normal((1000, 1, 1, 1))
    exact = exact_flow_map(x_T, 1.0, 0.0)
    velocity_fn = gaussian_velocity()
    slopes, errors = {}, {}
    for solver in (euler, heun):
        errors[solver.__name__] = [
            _rms(solver(velocity_fn, x_T, flow_timesteps(n)) - exact) for n in steps
        ]
        slopes[solver.__name__] = -np.polyfit(np.log(steps), np.log(errors[solver.__name__]), 1)[0]
    assert 0.8 < slopes["euler"] < 1.2, (slopes, errors)
    assert 1.7 < slopes["heun"] < 2.3, (slopes, errors)
    assert errors["heun"][-1] < 1e-3 < errors["euler"][-1], errors


@pytest.mark.parametrize(("solver", "steps"), [(euler, 200), (heun, 16)])
def test_solvers_recover_gaussian_data(solver, steps):
    x_T = np.random.default_rng(0).standard_normal((N, 1, 1, 1))
    check_gaussian(solver(gaussian_velocity(), x_T, flow_timesteps(steps)))


def test_heuns_last_step_to_the_data_is_an_euler_step():
    """EDM Alg. 1's choice: with one step from 1 to 0 Heun is Euler (and returns x0_pred); a
    grid that stops above 0 gets the corrector on its last step too."""
    x_T = np.random.default_rng(4).standard_normal((16, 1, 2, 2))
    velocity_fn = gaussian_velocity()
    one_step = heun(velocity_fn, x_T, [1.0, 0.0])
    np.testing.assert_array_equal(one_step, euler(velocity_fn, x_T, [1.0, 0.0]))
    np.testing.assert_allclose(one_step, x_T - velocity_fn(x_T, np.ones(16)), rtol=1e-14)
    v0 = velocity_fn(x_T, np.ones(16))
    x1 = x_T + (0.4 - 1.0) * v0
    corrected = x_T + (0.4 - 1.0) * 0.5 * (v0 + velocity_fn(x1, np.full(16, 0.4)))
    np.testing.assert_allclose(heun(velocity_fn, x_T, [1.0, 0.4]), corrected, rtol=1e-14)


@pytest.mark.parametrize("solver", [euler, heun])
def test_callback_reports_each_step_and_the_network_evaluations(solver):
    grid = flow_timesteps(5, shift=3.0)
    calls, seen = [], []
    velocity_fn = gaussian_velocity()

    def counted(x, t):
        calls.append(float(t[0]))
        return velocity_fn(x, t)

    x_T = np.random.default_rng(0).standard_normal((3, 1, 2, 2))
    solver(counted, x_T, grid, callback=seen.append)
    assert [info["i"] for info in seen] == list(range(5))
    assert [info["t"] for info in seen] == list(grid[:-1])
    for info in seen:
        np.testing.assert_allclose(info["x0_pred"], info["x"] - info["t"] * info["v"], rtol=1e-14)
        np.testing.assert_allclose(info["v"], velocity_fn(info["x"], np.full(3, info["t"])))
    assert len(calls) == network_evaluations(solver.__name__, grid) == seen[-1]["nfe"]
    assert len(calls) == (5 if solver is euler else 9)  # Heun: 2 per step, 1 on the last
    assert network_evaluations("heun", grid[:-1]) == 8  # a grid stopping above 0: 2 per step
    # the times the model saw, in order
    expected = list(grid[:-1]) if solver is euler else [
        t for a, b in itertools.pairwise(grid) for t in ([a, b] if b > 0 else [a])
    ]  # fmt: skip
    np.testing.assert_allclose(calls, expected, rtol=1e-15)


@pytest.mark.parametrize("solver", [euler, heun])
def test_solvers_agree_on_numpy_and_torch(solver):
    x_T = np.random.default_rng(5).standard_normal((8, 1, 2, 2))
    grid = flow_timesteps(6, shift=2.0)
    a = solver(gaussian_velocity(), x_T, grid)
    b = solver(torch_velocity(gaussian_velocity()), torch.from_numpy(x_T), torch.from_numpy(grid))
    assert isinstance(a, np.ndarray) and isinstance(b, torch.Tensor)
    np.testing.assert_allclose(a, b.numpy(), rtol=1e-12, atol=1e-14)


def test_a_flipped_sign_or_a_flipped_time_fails_to_recover_the_data():
    """The pitfalls, shown to be caught: negating the velocity (mean -0.44, variance 4.0) or
    calling the model at 1 - t (mean 0.23, 20 standard errors off; 0.08 RMS from the exact
    endpoint, against 0.0008 when right) fails the checks a correct model passes. A model
    trained with the data at t = 1 (Lipman et al., Liu et al., torchcfm: u(x, s) = -v(x, 1 - s))
    is right only with both flips, and then exactly."""
    x_T = np.random.default_rng(0).standard_normal((N, 1, 1, 1))
    v = gaussian_velocity()
    grid = flow_timesteps(32)
    exact = exact_flow_map(x_T, 1.0, 0.0)

    def far(x):
        mean_ok = abs(x.mean() - MU) < 5 * S / math.sqrt(x.size)
        return not (mean_ok and abs(x.var() / S**2 - 1) < 0.03 and _rms(x - exact) < 0.01)

    assert not far(heun(v, x_T, grid))
    assert far(heun(lambda x, t: -v(x, t), x_T, grid))
    assert far(heun(lambda x, t: v(x, 1 - t), x_T, grid))

    def data_at_one(x, s):  # the other convention's velocity, pointing from noise to data
        return -v(x, 1 - s)

    only_time = heun(lambda x, t: data_at_one(x, 1 - t), x_T, grid)
    only_sign = heun(lambda x, t: -data_at_one(x, t), x_T, grid)
    both = heun(lambda x, t: -data_at_one(x, 1 - t), x_T, grid)
    assert far(only_time) and far(only_sign)
    np.testing.assert_allclose(both, heun(v, x_T, grid), rtol=1e-14)


# Guidance --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_guidance_is_combined_on_velocities(kind):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 1, 2, 2))
    t = rng.uniform(0.1, 0.9, 5)
    v_c = gaussian_velocity(mu=0.8)(x, t)  # a "class" whose data sit at 0.8
    v_u = gaussian_velocity(mu=0.3)(x, t)
    x_, t_, v_c_, v_u_ = (_backend(kind, a) for a in (x, t, v_c, v_u))
    np.testing.assert_allclose(_numpy(guided_velocity(v_c_, v_u_, 1.0)), v_c, rtol=1e-14)
    np.testing.assert_array_equal(_numpy(guided_velocity(v_c_, v_u_, 0.0)), v_u)
    np.testing.assert_allclose(_numpy(guided_velocity(v_c_, v_u_, 3.0)), 3 * v_c - 2 * v_u)
    # eps and x0 are affine in v at fixed (x_t, t): guiding v guides them with the same scale
    guided = guided_velocity(v_c_, v_u_, 4.0)
    for convert in (eps_from_velocity, x0_from_velocity):
        c, u = convert(x_, t_, v_c_), convert(x_, t_, v_u_)
        np.testing.assert_allclose(_numpy(convert(x_, t_, guided)), _numpy(u + 4.0 * (c - u)))


# Training times -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize(("loc", "scale"), [(0.0, 1.0), (0.5, 0.8)])
def test_logit_normal_times_have_the_asked_mean_and_spread_of_logit_t(backend, loc, scale):
    n = 100_000
    gen = np.random.default_rng(7) if backend == "numpy" else torch.Generator().manual_seed(7)
    t = _numpy(sample_t(n, gen, "logit-normal", loc=loc, scale=scale))
    assert t.shape == (n,) and t.dtype == np.float64
    assert np.all((t > 0) & (t < 1))
    logit = np.log(t / (1 - t))
    assert abs(logit.mean() - loc) < 5 * scale / math.sqrt(n), logit.mean()
    assert logit.std() == pytest.approx(scale, rel=0.02)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_uniform_times_fill_the_unit_interval(backend):
    n = 100_000
    gen = np.random.default_rng(8) if backend == "numpy" else torch.Generator().manual_seed(8)
    t = _numpy(sample_t(n, gen, "uniform"))
    assert t.shape == (n,) and np.all((t >= 0) & (t <= 1))
    assert abs(t.mean() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert t.var() == pytest.approx(1 / 12, rel=0.02)
    assert np.histogram(t, bins=10, range=(0, 1))[0].min() > 0.09 * n


def test_time_sampling_is_reproducible_and_the_shift_is_a_logit_translation():
    """The same seed gives the same times; and shifting logit-normal times by ``shift`` is
    drawing them with loc + log(shift): the shift is a translation in logit space."""
    a = sample_t(1000, np.random.default_rng(9))
    np.testing.assert_array_equal(a, sample_t(1000, np.random.default_rng(9)))
    shifted = sample_t(1000, np.random.default_rng(9), loc=math.log(3.0))
    np.testing.assert_allclose(shift_time(a, 3.0), shifted, rtol=1e-12)


# The grid -------------------------------------------------------------------------------------


def test_flow_timesteps_apply_the_shift_exactly_once():
    grid = flow_timesteps(4)
    np.testing.assert_array_equal(grid, [1.0, 0.75, 0.5, 0.25, 0.0])
    assert grid.dtype == np.float64 and len(flow_timesteps(10)) == 11
    u = np.linspace(1, 0, 11)
    shifted = flow_timesteps(10, shift=3.0)
    np.testing.assert_allclose(shifted, 3 * u / (1 + 2 * u), rtol=1e-15)  # the closed form
    assert shifted[0] == 1.0 and shifted[-1] == 0.0
    np.testing.assert_allclose(shift_time(u, 1.0), u, rtol=0, atol=0)  # shift 1: the identity
    # what sampling does NOT do: shifting the already-shifted grid again (a shift of 3^2 = 9)
    twice = shift_time(shifted, 3.0)
    assert np.max(np.abs(twice - shifted)) > 0.1
    np.testing.assert_allclose(twice, flow_timesteps(10, shift=9.0), rtol=1e-14)
    # SD3's shift 3 at 4 steps, by hand: 3u / (1 + 2u) at u = 1, 3/4, 1/2, 1/4, 0
    np.testing.assert_allclose(flow_timesteps(4, shift=3.0), [1.0, 0.9, 0.75, 0.5, 0.0])


# The relation to DDPM's variance-preserving path ----------------------------------------------


def test_flow_time_and_alpha_bar_match_the_signal_to_noise_ratio():
    ab = np.concatenate([[0.0, 1.0], make_schedule("cosine", 1000).alpha_bar])
    t = flow_t_from_alpha_bar(ab)
    assert t[0] == 1.0 and t[1] == 0.0
    inner = slice(2, None)
    np.testing.assert_allclose(
        (1 - t[inner]) ** 2 / t[inner] ** 2, ab[inner] / (1 - ab[inner]), rtol=1e-9
    )
    np.testing.assert_allclose(alpha_bar_from_flow_t(t), ab, rtol=1e-12, atol=1e-15)
    tt = np.linspace(0, 1, 101)
    np.testing.assert_allclose(flow_t_from_alpha_bar(alpha_bar_from_flow_t(tt)), tt, atol=1e-14)
    assert np.all(np.diff(t[inner]) > 0)  # later DDPM steps are noisier: larger flow times


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_a_rescaled_vp_sample_is_the_flow_sample_at_the_matching_time(name):
    schedule = make_schedule(name, 200)
    rng = np.random.default_rng(10)
    x0, eps = rng.standard_normal((2, 200, 1, 2, 2))
    idx = np.arange(200)
    ab = schedule.alpha_bar[idx]
    x_vp = q_sample(x0, idx, eps, schedule)
    scale = vp_to_flow_scale(ab).reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(
        scale * x_vp, interpolate(x0, eps, flow_t_from_alpha_bar(ab)), rtol=1e-12, atol=1e-14
    )
    assert np.all((vp_to_flow_scale(ab) >= 1 / math.sqrt(2) - 1e-15) & (vp_to_flow_scale(ab) <= 1))


def vp_gaussian_eps(schedule):
    """E[eps | x_t^VP] for x0 ~ N(mu, s^2), written in the VP variables (as test_samplers does)."""

    def model_fn(x_t, t):
        ab = schedule.alpha_bar[np.asarray(t)].reshape(-1, 1, 1, 1)
        return np.sqrt(1 - ab) * (x_t - np.sqrt(ab) * MU) / (ab * S**2 + 1 - ab)

    return model_fn


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_the_wrapped_velocity_model_is_the_exact_eps_model(name):
    schedule = make_schedule(name, 1000)
    idx = np.array([0, 1, 10, 250, 500, 900, 999])
    x = np.random.default_rng(11).standard_normal((7, 1, 2, 2))
    got = as_eps_model(gaussian_velocity(), schedule)(x, idx)
    np.testing.assert_allclose(got, vp_gaussian_eps(schedule)(x, idx), rtol=1e-9, atol=1e-12)
    # and on PyTorch tensors, the times handed to the model are (N,) tensors
    got_t = as_eps_model(torch_velocity(gaussian_velocity()), schedule)(
        torch.from_numpy(x), torch.from_numpy(idx)
    )
    np.testing.assert_allclose(got_t.numpy(), got, rtol=1e-12)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize(
    ("sampler", "steps", "tol_var"), [(sample_ddim, 1000, 0.03), (sample_dpmpp_2m, 50, 0.02)]
)
def test_a_flow_model_drives_difflabs_ddpm_samplers(name, sampler, steps, tol_var):
    """The exact Gaussian velocity, wrapped by ``as_eps_model``, through the existing DDIM and
    DPM-Solver++(2M): the Gaussian data come back, and the samples are those of the exact eps
    model to rounding."""
    schedule = make_schedule(name, 1000)
    x_T = np.random.default_rng(0).standard_normal((N, 1, 1, 1))
    den_flow = make_denoiser(as_eps_model(gaussian_velocity(), schedule), schedule, "eps", False)
    den_eps = make_denoiser(vp_gaussian_eps(schedule), schedule, "eps", False)
    x = sampler(den_flow, x_T, schedule, steps=steps)
    check_gaussian(x, tol_var=tol_var)
    np.testing.assert_allclose(
        x, sampler(den_eps, x_T, schedule, steps=steps), rtol=1e-8, atol=1e-10
    )


# Bad inputs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: sample_t(10, np.random.default_rng(0), "cosine"),
            "unknown time sampling 'cosine'; expected one of logit-normal, uniform",
        ),
        (lambda: sample_t(0, np.random.default_rng(0)), "n must be a positive integer, got 0"),
        (lambda: sample_t(2.5, np.random.default_rng(0)), "n must be a positive integer, got 2.5"),
        (
            lambda: sample_t(10, np.random.default_rng(0), scale=0.0),
            r"scale must be a finite number > 0, got 0.0",
        ),
        (
            lambda: sample_t(10, np.random.default_rng(0), loc=math.nan),
            "loc must be a finite number, got nan",
        ),
        (
            lambda: sample_t(10, 42),
            "generator must be a torch.Generator or numpy.random.Generator, got int",
        ),
        (lambda: flow_timesteps(0), "steps must be a positive integer, got 0"),
        (lambda: flow_timesteps(10, shift=-1.0), r"shift must be a finite number > 0, got -1.0"),
        (lambda: shift_time(0.5, 0.0), r"shift must be a finite number > 0, got 0.0"),
        (lambda: flow_t_from_alpha_bar(1.5), r"alpha_bar must lie in \[0, 1\], got 1.5"),
        (
            lambda: vp_to_flow_scale(np.array([0.5, -0.1])),
            r"alpha_bar must lie in \[0, 1\], got -0.1",
        ),
        (lambda: alpha_bar_from_flow_t(math.nan), r"flow time t must lie in \[0, 1\], got nan"),
        (
            lambda: guided_velocity(np.ones(2), np.zeros(2), math.inf),
            "guidance scale must be a finite number, got inf",
        ),
        (
            lambda: euler(gaussian_velocity(), np.zeros((1, 1)), [0.0, 1.0]),
            r"timesteps must be a decreasing grid .* got \[0, 1\]",
        ),
        (lambda: heun(gaussian_velocity(), np.zeros((1, 1)), [1.0]), "at least 2 times"),
        (lambda: euler(gaussian_velocity(), np.zeros((1, 1)), [1.5, 0.0]), r"in \[0, 1\]"),
        (
            lambda: heun(gaussian_velocity(), np.zeros((1, 1)), np.linspace(0, 1, 50)),
            r"got \[0, 0.0204082, 0.0408163, ..., 0.959184, 0.979592, 1\]",
        ),
        (
            lambda: network_evaluations("rk4", [1.0, 0.0]),
            "unknown flow solver 'rk4'; expected one of euler, heun",
        ),
    ],
)
def test_bad_inputs_are_one_line_value_errors(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
