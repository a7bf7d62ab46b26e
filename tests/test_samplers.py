"""Samplers on an analytic case: Gaussian data, whose exact noise predictor is known in closed form.

If x_0 ~ N(mu, s^2) then x_t ~ N(sqrt(ab) mu, ab s^2 + 1 - ab) and the optimal eps prediction is
E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) mu) / (ab s^2 + 1 - ab). A correct sampler driven by it
must return samples with mean mu and variance s^2.
"""

import numpy as np
import pytest
import torch

from difflab.samplers import (
    make_denoiser,
    sample,
    sample_ddim,
    sample_ddpm,
    timestep_sequence,
)
from difflab.schedules import make_schedule

MU, S = 0.3, 0.5
N = 20_000


def exact_eps_model(schedule):
    def model_fn(x_t, t):
        ab = schedule.alpha_bar[np.asarray(t)].reshape(-1, 1, 1, 1)
        return np.sqrt(1 - ab) * (x_t - np.sqrt(ab) * MU) / (ab * S**2 + 1 - ab)

    return model_fn


def check_gaussian(x, tol_var=0.05):
    se = S / np.sqrt(x.size)
    assert abs(x.mean() - MU) < 5 * se, x.mean()
    assert x.var() == pytest.approx(S**2, rel=tol_var), x.var()


@pytest.mark.parametrize(
    ("sampler", "steps", "options"),
    [
        ("ddpm", 1000, {"variance": "beta_tilde"}),
        ("ddpm", 1000, {"variance": "beta"}),
        ("ddim", 1000, {"eta": 0.0}),
        ("ddim", 1000, {"eta": 1.0}),
        ("dpmpp-2m", 50, {}),
    ],
)
@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_sampler_recovers_gaussian_data(sampler, steps, options, schedule_name):
    schedule = make_schedule(schedule_name, 1000)
    rng = np.random.default_rng(0)
    x_T = rng.standard_normal((N, 1, 1, 1))
    denoiser = make_denoiser(exact_eps_model(schedule), schedule, "eps", clip_x0=False)
    x = sample(sampler, denoiser, x_T, schedule, steps=steps, generator=rng, **options)
    check_gaussian(x)


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
def test_ddim_is_euler_in_sigma_space(spacing):
    """DDIM (eta = 0) is Euler's method on the probability-flow ODE in x~ = x / alpha, s~ = sigma / alpha
    (Song et al. 2021, Eq. 14). For Gaussian data the exact eps is linear in x~, so each step is an
    affine map we can write down independently; the sampler must follow it to rounding error."""
    schedule = make_schedule("linear", 1000)
    denoiser = make_denoiser(exact_eps_model(schedule), schedule, "eps", clip_x0=False)
    x_T = np.random.default_rng(3).standard_normal((32, 1, 1, 1))
    got = sample_ddim(denoiser, x_T, schedule, steps=10, spacing=spacing)

    seq = timestep_sequence(1000, 10, spacing)
    ab = [schedule.alpha_bar[t] for t in seq] + [1.0]
    sig = [np.sqrt((1 - a) / a) for a in ab]  # sigma~ at each visited step, 0 for the data
    xt = x_T / np.sqrt(ab[0])  # x~ at the first step
    for k in range(len(seq)):
        eps = sig[k] * (xt - MU) / (S**2 + sig[k] ** 2)  # exact eps in sigma-space
        xt = xt + (sig[k + 1] - sig[k]) * eps  # Euler step of dx~/ds~ = eps
    np.testing.assert_allclose(got, xt, rtol=1e-9, atol=1e-12)


def test_ddim_eta0_is_deterministic_given_x_T():
    schedule = make_schedule("linear", 1000)
    denoiser = make_denoiser(exact_eps_model(schedule), schedule, "eps", clip_x0=False)
    x_T = np.random.default_rng(0).standard_normal((64, 1, 2, 2))
    a = sample_ddim(denoiser, x_T, schedule, steps=20, generator=np.random.default_rng(1))
    b = sample_ddim(denoiser, x_T, schedule, steps=20, generator=np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)


def test_ddim_eta1_over_all_steps_is_ddpm_with_posterior_variance():
    """Song et al. 2021, Sec. 4.1: eta = 1 makes the DDIM step the DDPM posterior step."""
    schedule = make_schedule("cosine", 200)
    denoiser = make_denoiser(exact_eps_model(schedule), schedule, "eps", clip_x0=False)
    x_T = np.random.default_rng(0).standard_normal((16, 1, 2, 2))
    a = sample_ddim(denoiser, x_T, schedule, steps=200, eta=1.0, generator=np.random.default_rng(5))
    b = sample_ddpm(
        denoiser, x_T, schedule, variance="beta_tilde", generator=np.random.default_rng(5)
    )
    np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def test_samplers_accept_torch_and_numpy_alike():
    schedule = make_schedule("linear", 100)

    def torch_model(x_t, t):
        return torch.from_numpy(exact_eps_model(schedule)(x_t.numpy(), t.numpy()))

    x_T = np.random.default_rng(0).standard_normal((8, 1, 2, 2))
    den_np = make_denoiser(exact_eps_model(schedule), schedule, clip_x0=True)
    den_t = make_denoiser(torch_model, schedule, clip_x0=True)
    a = sample_ddim(den_np, x_T, schedule, steps=10)
    b = sample_ddim(den_t, torch.from_numpy(x_T), schedule, steps=10)
    np.testing.assert_allclose(a, b.numpy(), rtol=1e-10)


def test_callback_sees_every_step_in_order():
    schedule = make_schedule("linear", 100)
    denoiser = make_denoiser(exact_eps_model(schedule), schedule)
    seen = []
    sample_ddpm(
        denoiser, np.zeros((2, 1, 1, 1)), schedule, generator=np.random.default_rng(0),
        callback=lambda info: seen.append((info["i"], info["t"], info["x0_pred"].shape)),
    )  # fmt: skip
    assert [t for _, t, _ in seen] == list(range(99, -1, -1))
    assert [i for i, _, _ in seen] == list(range(100))


def test_timestep_sequences():
    assert timestep_sequence(1000, 10) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert timestep_sequence(1000, 10, "leading") == list(range(900, -1, -100))
    assert timestep_sequence(1000, 4, "linspace") == [999, 666, 333, 0]
    for spacing in ["trailing", "leading", "linspace"]:
        assert timestep_sequence(50, 50, spacing) == list(range(49, -1, -1))
    with pytest.raises(ValueError, match="exceeds"):
        timestep_sequence(100, 101)
    with pytest.raises(ValueError, match="positive"):
        timestep_sequence(100, 0)
    with pytest.raises(ValueError, match="unknown spacing"):
        timestep_sequence(100, 10, "random")


@pytest.mark.parametrize(
    ("schedule_name", "steps"), [("cosine", 20), ("cosine", 50), ("linear", 50)]
)
def test_dpmpp_2m_recovers_gaussian_data_in_few_steps(schedule_name, steps):
    """Second order: 20-50 trailing steps land within 2% of the data variance. (Linear at 20
    steps ends 8% low: its last visited step, t = 49, is still noisy, and the final jump to the
    data returns E[x0 | x_t], whose variance lacks the posterior's; see docs/samplers.md.)"""
    schedule = make_schedule(schedule_name, 1000)
    x_T = np.random.default_rng(0).standard_normal((N, 1, 1, 1))
    denoiser = make_denoiser(exact_eps_model(schedule), schedule, "eps", clip_x0=False)
    check_gaussian(sample("dpmpp-2m", denoiser, x_T, schedule, steps=steps), tol_var=0.02)


@pytest.mark.parametrize(
    ("schedule_name", "steps", "tol_var"),
    [("linear", 1000, 0.03), ("cosine", 1000, 0.03), ("linear", 200, 0.03), ("cosine", 200, 0.03),
     ("linear", 50, 0.1), ("cosine", 20, 0.1)],
)  # fmt: skip
def test_dpmpp_2m_sde_recovers_gaussian_data(schedule_name, steps, tol_var):
    """The SDE solver converges to the data distribution (within sampling error at 200 and 1000
    steps). Its injected noise is integrated to first order only, so at 20-50 steps the variance
    overshoots by 6-8% on this Gaussian; diffusers' sde-dpmsolver++, which it matches step for
    step (test_samplers_diffusers.py), does the same."""
    schedule = make_schedule(schedule_name, 1000)
    rng = np.random.default_rng(0)
    x_T = rng.standard_normal((N, 1, 1, 1))
    denoiser = make_denoiser(exact_eps_model(schedule), schedule, "eps", clip_x0=False)
    x = sample("dpmpp-2m-sde", denoiser, x_T, schedule, steps=steps, generator=rng)
    check_gaussian(x, tol_var=tol_var)


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_ddim_in_few_steps_has_the_right_mean_and_a_first_order_variance_error(schedule_name):
    """DDIM is Euler's method (first order): at 10-50 steps the mean is right, and the variance
    falls short by an error that shrinks about in proportion to 1 / steps."""
    schedule = make_schedule(schedule_name, 1000)
    x_T = np.random.default_rng(0).standard_normal((N, 1, 1, 1))
    denoiser = make_denoiser(exact_eps_model(schedule), schedule, "eps", clip_x0=False)
    errors = {}
    for steps in (10, 20, 50, 200):
        x = sample_ddim(denoiser, x_T, schedule, steps=steps)
        assert abs(x.mean() - MU) < 5 * S / np.sqrt(N)
        errors[steps] = S**2 - x.var()
    assert all(e > 0 for e in errors.values()), errors
    assert errors[10] > errors[20] > errors[50] > errors[200], errors
    assert 1.5 < errors[50] / errors[200] < 4.5, errors
    assert errors[200] < 0.05 * S**2, errors  # and within 5% at 200 steps


def test_explicit_timesteps_replace_the_spacing():
    schedule = make_schedule("linear", 100)
    denoiser = make_denoiser(exact_eps_model(schedule), schedule)
    seen = []
    x_T = np.random.default_rng(0).standard_normal((2, 1, 1, 1))
    sample_ddim(
        denoiser, x_T, schedule, timesteps=[49, 30, 7], callback=lambda i: seen.append(i["t"])
    )
    assert seen == [49, 30, 7]
    for bad, match in [([30, 49], "decreasing"), ([], "non-empty"), ([100, 5], "exceeds")]:
        with pytest.raises(ValueError, match=match):
            sample_ddim(denoiser, x_T, schedule, timesteps=bad)
