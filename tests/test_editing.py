"""Editing on analytic cases: Gaussian data, whose exact denoiser is known in closed form.

For x_0 ~ N(mu, Sigma), x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps is Gaussian too and
E[x_0 | x_t] = mu + sqrt(ab) Sigma (ab Sigma + (1 - ab) I)^{-1} (x_t - sqrt(ab) mu), so each editing
algorithm's output distribution can be compared with the exact one.
"""

import numpy as np
import pytest
import torch

from difflab.editing import ddim_invert, inpaint, interpolate, sdedit, slerp
from difflab.samplers import make_denoiser, sample_ddim, strength_sequence
from difflab.schedules import make_schedule

MU = np.array([0.2, -0.1])
S = np.array([0.5, 0.4])
RHO = 0.8
SIGMA = np.array([[S[0] ** 2, RHO * S[0] * S[1]], [RHO * S[0] * S[1], S[1] ** 2]])


def exact_denoiser(schedule, mu=MU, sigma=SIGMA):
    """Images of two pixels, (N, 1, 1, 2), from N(mu, sigma): the exact eps predictor."""

    def model_fn(x, t):
        ab = schedule.alpha_bar[np.asarray(t)]
        flat = x.reshape(len(x), -1)
        out = np.empty_like(flat)
        for a in np.unique(ab):
            rows = ab == a
            cov = a * sigma + (1 - a) * np.eye(len(mu))
            x0 = mu + np.sqrt(a) * np.linalg.solve(cov, (flat[rows] - np.sqrt(a) * mu).T).T @ sigma
            out[rows] = (flat[rows] - np.sqrt(a) * x0) / np.sqrt(1 - a)
        return out.reshape(x.shape)

    return make_denoiser(model_fn, schedule, "eps", clip_x0=False)


def test_inpainting_keeps_the_known_region_and_repaint_approaches_the_exact_conditional():
    """Pixel 1 is known (= a); pixel 2 must follow N(mu2 + rho s2/s1 (a - mu1), s2^2 (1 - rho^2)).

    Plain replacement is known to be biased (it never lets the generated pixel see the known one
    early enough); RePaint's resampling removes most of the bias (Lugmayr et al. 2022, Fig. 3).
    """
    schedule = make_schedule("linear", 1000)
    denoiser = exact_denoiser(schedule)
    a, n = 0.6, 5000
    image = np.zeros((n, 1, 1, 2))
    image[..., 0] = a
    mask = np.array([0.0, 1.0]).reshape(1, 1, 1, 2)
    mean = MU[1] + RHO * S[1] / S[0] * (a - MU[0])
    var = S[1] ** 2 * (1 - RHO**2)

    errors = {}
    for resample in (1, 5):
        x = inpaint(
            denoiser, image, mask, schedule, steps=100, resample=resample,
            generator=np.random.default_rng(0),
        )  # fmt: skip
        np.testing.assert_array_equal(x[..., 0], a)  # the known pixel comes back exactly
        errors[resample] = abs(x[..., 1].mean() - mean)
        if resample == 5:
            assert x[..., 1].mean() == pytest.approx(mean, abs=0.03)
            assert x[..., 1].var() == pytest.approx(var, rel=0.15)
    assert errors[1] > 3 * errors[5], errors  # resampling is what fixes the bias


def test_sdedit_keeps_the_data_distribution_and_the_exact_input_correlation():
    """With inputs from the data and an exact sampler, the outputs follow the data distribution,
    and corr(input, output) = ab s^2 / (ab s^2 + 1 - ab) at the start timestep: the output is a
    draw from p(x_0 | x_t0), so Cov(in, out) = Var(E[x_0 | x_t0])."""
    schedule = make_schedule("linear", 1000)
    mu, s = np.array([0.3]), 0.5
    denoiser = exact_denoiser(schedule, mu, np.array([[s**2]]))
    rng = np.random.default_rng(1)
    n = 20_000
    inputs = mu + s * rng.standard_normal((n, 1, 1, 1))
    for strength in (0.3, 0.6):
        out = sdedit(
            denoiser, inputs, schedule, strength=strength, sampler="ddpm", steps=1000,
            generator=rng,
        )  # fmt: skip
        ab = schedule.alpha_bar[strength_sequence(1000, 1000, strength)[0]]
        expected = ab * s**2 / (ab * s**2 + 1 - ab)
        assert out.mean() == pytest.approx(mu[0], abs=5 * s / np.sqrt(n))
        assert out.var() == pytest.approx(s**2, rel=0.05)
        corr = np.corrcoef(inputs.ravel(), out.ravel())[0, 1]
        assert corr == pytest.approx(expected, abs=0.02), (strength, corr, expected)


def test_strength_sequence():
    assert strength_sequence(1000, 10, 0.5) == [499, 449, 399, 349, 299, 249, 199, 149, 99, 49]
    assert strength_sequence(1000, 50, 1.0)[0] == 999
    assert strength_sequence(1000, 50, 0.01) == list(range(9, -1, -1))  # only 10 steps exist
    with pytest.raises(ValueError, match="strength"):
        strength_sequence(1000, 10, 0.0)


def test_ddim_inversion_round_trips_with_first_order_error():
    """Inversion then sampling returns the image, and sampling then inversion the noise, up to
    the discretisation error of a first-order method: it shrinks in proportion to 1 / steps."""
    schedule = make_schedule("cosine", 1000)
    denoiser = exact_denoiser(schedule)
    rng = np.random.default_rng(2)
    image = (MU + rng.standard_normal((64, 2)) @ np.linalg.cholesky(SIGMA).T).reshape(64, 1, 1, 2)
    z_T = rng.standard_normal((64, 1, 1, 2))
    image_err, noise_err = {}, {}
    for steps in (50, 200, 1000):
        z = ddim_invert(denoiser, image, schedule, steps=steps)
        image_err[steps] = np.abs(sample_ddim(denoiser, z, schedule, steps=steps) - image).max()
        x = sample_ddim(denoiser, z_T, schedule, steps=steps)
        noise_err[steps] = np.abs(ddim_invert(denoiser, x, schedule, steps=steps) - z_T).max()
    assert image_err[1000] < 0.01 and noise_err[1000] < 0.03, (image_err, noise_err)
    for err in (image_err, noise_err):
        assert 2.5 < err[50] / err[200] < 6 and 3 < err[200] / err[1000] < 7, err  # ~ 1 / steps
    assert np.abs(z - image).mean() > 0.3  # it really went to noise


def test_slerp_stays_on_the_sphere_and_hits_the_ends():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 1, 8, 8, generator=g), torch.randn(3, 1, 8, 8, generator=g)
    b = b / b.flatten(1).norm(dim=1).view(3, 1, 1, 1) * a.flatten(1).norm(dim=1).view(3, 1, 1, 1)
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    mid = slerp(a, b, 0.5)
    torch.testing.assert_close(mid.flatten(1).norm(dim=1), a.flatten(1).norm(dim=1))
    cos = torch.nn.functional.cosine_similarity
    torch.testing.assert_close(cos(mid.flatten(1), a.flatten(1)), cos(mid.flatten(1), b.flatten(1)))
    np.testing.assert_allclose(
        slerp(a.numpy(), b.numpy(), 0.3), slerp(a, b, 0.3).numpy(), rtol=1e-5
    )


def test_interpolation_decodes_both_ends():
    schedule = make_schedule("linear", 1000)
    denoiser = exact_denoiser(schedule)
    rng = np.random.default_rng(3)
    z_a, z_b = rng.standard_normal((1, 1, 1, 2)), rng.standard_normal((1, 1, 1, 2))
    path = interpolate(denoiser, z_a, z_b, schedule, frames=5, steps=20)
    assert path.shape == (5, 1, 1, 2)
    np.testing.assert_allclose(path[0], sample_ddim(denoiser, z_a, schedule, steps=20)[0])
    np.testing.assert_allclose(path[-1], sample_ddim(denoiser, z_b, schedule, steps=20)[0])
    assert np.all(np.abs(np.diff(path[:, 0, 0, 0])) < np.abs(path[-1, 0, 0, 0] - path[0, 0, 0, 0]))
