"""Forward process, posterior and conversions against independent Gaussian algebra."""

import math

import numpy as np
import pytest
import torch

from difflab.diffusion import (
    diffusion_loss,
    eps_and_x0,
    min_snr_weight,
    q_posterior,
    q_sample,
    q_step,
    training_target,
)
from difflab.schedules import make_schedule


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_closed_form_and_chain_give_the_same_distribution(name):
    """q(x_t | x_0) in closed form (Eq. 4) and by t chained steps (Eq. 2) agree in distribution."""
    sched = make_schedule(name, 200)
    rng = np.random.default_rng(0)
    n = 40_000
    x0 = np.linspace(-1, 1, n)[:, None, None, None]  # a spread of data values, (N, 1, 1, 1)
    for t_stop in [0, 20, 100, 199]:
        x = x0.copy()
        for t in range(t_stop + 1):
            x = q_step(x, np.full(n, t), rng.standard_normal(x.shape), sched)
        closed = q_sample(x0, np.full(n, t_stop), rng.standard_normal(x0.shape), sched)
        ab = sched.alpha_bar[t_stop]
        # Residual after removing the mean is N(0, 1 - alpha_bar) for both.
        for sample in (x, closed):
            resid = (sample - math.sqrt(ab) * x0).ravel()
            assert abs(resid.mean()) < 4 * math.sqrt((1 - ab) / n)
            assert resid.std() == pytest.approx(math.sqrt(1 - ab), rel=0.02)
        # Regression of x_t on x_0 recovers sqrt(alpha_bar_t) for both.
        slope_chain = np.polyfit(x0.ravel(), x.ravel(), 1)[0]
        slope_closed = np.polyfit(x0.ravel(), closed.ravel(), 1)[0]
        assert slope_chain == pytest.approx(math.sqrt(ab), abs=0.02)
        assert slope_closed == pytest.approx(math.sqrt(ab), abs=0.02)


def test_posterior_matches_gaussian_conditioning():
    """q(x_{t-1} | x_t, x_0) from Eq. 7 equals conditioning the joint Gaussian of (x_{t-1}, x_t)."""
    sched = make_schedule("cosine", 100)
    rng = np.random.default_rng(1)
    for t in [1, 10, 50, 99]:
        x0, xt = rng.standard_normal((2, 3, 1, 2, 2))
        ab_prev, ab, a = sched.alpha_bar[t - 1], sched.alpha_bar[t], sched.alphas[t]
        # Given x_0: x_{t-1} ~ N(sqrt(ab_prev) x0, 1 - ab_prev); x_t = sqrt(a) x_{t-1} + sqrt(1-a) e.
        var_prev, var_t, cov = 1 - ab_prev, 1 - ab, math.sqrt(a) * (1 - ab_prev)
        mean_ref = math.sqrt(ab_prev) * x0 + cov / var_t * (xt - math.sqrt(ab) * x0)
        var_ref = var_prev - cov**2 / var_t
        mean, var = q_posterior(x0, xt, np.full(3, t), sched)
        np.testing.assert_allclose(mean, mean_ref, rtol=1e-10)
        np.testing.assert_allclose(var.ravel(), var_ref, rtol=1e-10)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_conversions_recover_eps_and_x0(prediction):
    sched = make_schedule("linear", 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 5, 5, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(4, 1, 5, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    x_t = q_sample(x0, t, eps, sched)
    target = training_target(x0, t, eps, sched, prediction)
    eps_hat, x0_hat = eps_and_x0(target, x_t, t, sched, prediction)
    torch.testing.assert_close(eps_hat[1:], eps[1:])  # t=0 eps is ill-conditioned for x0 targets
    torch.testing.assert_close(x0_hat[:3], x0[:3], rtol=1e-6, atol=1e-6)
    assert x_t.dtype == torch.float64


def test_v_definition():
    """v = sqrt(ab) eps - sqrt(1 - ab) x0, and |v|^2 + ... : x0 = sqrt(ab) x_t - sqrt(1-ab) v."""
    sched = make_schedule("cosine", 1000)
    x0, eps = np.ones((1, 1, 1, 1)), np.full((1, 1, 1, 1), 2.0)
    t = np.array([300])
    ab = sched.alpha_bar[300]
    v = training_target(x0, t, eps, sched, "v")
    assert v.item() == pytest.approx(math.sqrt(ab) * 2 - math.sqrt(1 - ab))


def test_loss_is_per_sample_mse_and_uses_the_noise_given():
    sched = make_schedule("linear", 100)
    x0 = torch.zeros(3, 1, 4, 4)
    eps = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([5, 50, 99])
    zero_model = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731
    loss = diffusion_loss(zero_model, x0, t, eps, sched, "eps")
    assert loss.shape == (3,)
    torch.testing.assert_close(loss, eps.pow(2).flatten(1).mean(1))
    perfect = lambda x_t, t: eps  # noqa: E731
    assert diffusion_loss(perfect, x0, t, eps, sched, "eps").abs().max() == 0


def test_min_snr_weights():
    sched = make_schedule("linear", 1000)
    t = torch.tensor([0, 500, 999])
    snr = torch.tensor(sched.snr[[0, 500, 999]], dtype=torch.float32)
    w = min_snr_weight(t, sched, "eps", 5.0)
    torch.testing.assert_close(w, torch.clamp(snr, max=5.0) / snr)
    assert torch.all(min_snr_weight(t, sched, "eps", None) == 1)
    wv = min_snr_weight(t, sched, "v", 5.0)
    torch.testing.assert_close(wv, torch.clamp(snr, max=5.0) / (snr + 1))


def test_unknown_prediction():
    sched = make_schedule("linear", 50)
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        eps_and_x0(np.zeros((1, 1, 1, 1)), np.zeros((1, 1, 1, 1)), np.array([1]), sched, "score")
