"""Learned variances (Nichol & Dhariwal 2021): the formulas against independent oracles, the
stop-gradient of L_hybrid, the DDPM step with a learned v, and a tiny run through the CLI
(train, sample with DDPM respaced and DDIM, resume), with the one-line refusals."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from difflab.cli import main
from difflab.config import ModelConfig
from difflab.diffusion import (
    diffusion_loss,
    discretized_gaussian_log_likelihood,
    hybrid_loss,
    learned_log_variance,
    normal_kl,
    q_posterior,
    q_sample,
    split_variance,
    training_target,
    vlb_terms,
)
from difflab.kinds import load_model, plan_sampling
from difflab.models.unet import UNet
from difflab.nn_numpy import NumpyUNet
from difflab.samplers import ddpm_step, make_denoiser, sample_ddpm, timestep_sequence
from difflab.sampling import SamplingRequest, execute
from difflab.sampling.draw import guided_model_fn
from difflab.schedules import make_schedule

BINS = torch.linspace(-1.0, 1.0, 256, dtype=torch.float64)  # the 256 values of 8-bit data


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    yield


# The formulas --------------------------------------------------------------------------------


def test_normal_kl_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    m1, m2 = (torch.randn(1000, generator=gen, dtype=torch.float64) for _ in range(2))
    lv1, lv2 = (3 * torch.randn(1000, generator=gen, dtype=torch.float64) for _ in range(2))
    oracle = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, torch.exp(0.5 * lv1)),
        torch.distributions.Normal(m2, torch.exp(0.5 * lv2)),
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), oracle, rtol=1e-10, atol=1e-12)
    assert normal_kl(m1, lv1, m1, lv1).abs().max() < 1e-12  # KL(p || p) = 0


@pytest.mark.parametrize(
    ("mean", "scale"),
    [(0.3, 0.2), (0.0, 1.0), (-0.7, 0.01), (0.5, 1e-4), (1.4, 0.05), (-3.0, 0.5), (0.2, 30.0)],
)
def test_the_discretised_decoder_sums_to_one_over_the_256_bins(mean, scale):
    log_scale = torch.full_like(BINS, math.log(scale))
    log_p = discretized_gaussian_log_likelihood(BINS, torch.full_like(BINS, mean), log_scale)
    assert torch.isfinite(log_p).all()
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    # an inner bin is Phi(upper) - Phi(lower), the end bins reach to -inf and +inf
    normal = torch.distributions.Normal(torch.tensor(mean, dtype=torch.float64), scale)
    k = 100
    inner = normal.cdf(BINS[k] + 1 / 255) - normal.cdf(BINS[k] - 1 / 255)
    if inner > 1e-12:
        assert log_p[k].exp().item() == pytest.approx(inner.item(), rel=1e-6)
    assert log_p[0].exp().item() == pytest.approx(normal.cdf(BINS[0] + 1 / 255).item(), rel=1e-6)
    last = 1 - normal.cdf(BINS[-1] - 1 / 255)
    assert log_p[-1].exp().item() == pytest.approx(last.item(), rel=1e-6, abs=1e-15)


def test_far_bins_keep_their_probability_and_gradients_stay_finite():
    mean = torch.zeros(256, dtype=torch.float64, requires_grad=True)
    log_scale = torch.full((256,), math.log(0.05), dtype=torch.float64, requires_grad=True)
    log_p = discretized_gaussian_log_likelihood(BINS, mean, log_scale)
    # 0.6 is 12 standard deviations out: Phi differences round to 0 there, the tails do not
    k = int(torch.argmin((BINS - 0.6).abs()))
    assert -120 < log_p[k].item() < -60
    log_p.sum().backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(log_scale.grad).all()


def test_learned_log_variance_interpolates_between_beta_tilde_and_beta():
    schedule = make_schedule("cosine", 1000)
    log_beta = math.log(schedule.betas[500])
    log_beta_tilde = math.log(schedule.posterior_variance[500])
    v = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    out = learned_log_variance(v, log_beta, log_beta_tilde)
    torch.testing.assert_close(
        out, torch.tensor([log_beta_tilde, (log_beta + log_beta_tilde) / 2, log_beta],
                          dtype=torch.float64),
    )  # fmt: skip
    # t = 0 has beta_tilde = 0: its range starts at t = 1's beta_tilde (the paper's clipping)
    clipped = schedule.posterior_log_variance_clipped
    assert schedule.posterior_variance[0] == 0 and clipped[0] == clipped[1]
    np.testing.assert_allclose(clipped[1:], np.log(schedule.posterior_variance[1:]))


def _exact_output(eps, v_value):
    """A model output (B, 2C, H, W) that predicts eps exactly, with the variance output v."""
    return torch.cat([eps, torch.full_like(eps, v_value)], dim=1)


def test_vlb_terms_vanish_for_the_true_posterior_and_match_the_closed_form():
    schedule = make_schedule("linear", 100)
    gen = torch.Generator().manual_seed(1)
    x0 = BINS[torch.randint(0, 256, (6, 1, 4, 4), generator=gen)].float()
    eps = torch.randn(6, 1, 4, 4, generator=gen)
    t = torch.tensor([1, 2, 10, 50, 98, 99])
    x_t = q_sample(x0, t, eps, schedule)
    # exact eps and v = -1: p(x_{t-1} | x_t) is q(x_{t-1} | x_t, x_0), so every KL is 0
    out, v = split_variance(_exact_output(eps, -1.0))
    assert vlb_terms(out, v, x0, x_t, t, schedule, "eps").abs().max() < 1e-4
    # exact mean, v = 1 (variance beta): KL = (log(beta / beta_tilde) + beta_tilde / beta - 1) / 2
    out, v = split_variance(_exact_output(eps, 1.0))
    ratio = schedule.posterior_variance[t.numpy()] / schedule.betas[t.numpy()]
    expected = 0.5 * (-np.log(ratio) + ratio - 1) / math.log(2)  # bits per dimension
    np.testing.assert_allclose(
        vlb_terms(out, v, x0, x_t, t, schedule, "eps"), expected, rtol=1e-4, atol=1e-6
    )  # float32: the small KLs of the last steps are within 1e-6 of 0


def test_the_t0_term_is_the_decoder_nll_in_bits():
    schedule = make_schedule("cosine", 50)
    gen = torch.Generator().manual_seed(2)
    x0 = BINS[torch.randint(0, 256, (3, 1, 4, 4), generator=gen)].float()
    eps = torch.randn(3, 1, 4, 4, generator=gen)
    t = torch.zeros(3, dtype=torch.long)
    x_t = q_sample(x0, t, eps, schedule)
    v = torch.full_like(x0, 0.3)
    terms = vlb_terms(eps, v, x0, x_t, t, schedule, "eps")
    mean, _ = q_posterior(x0, x_t, t, schedule)  # exact eps: the mean the decoder is centred on
    log_var = learned_log_variance(
        v, math.log(schedule.betas[0]), float(schedule.posterior_log_variance_clipped[0])
    )
    normal = torch.distributions.Normal(mean.double(), torch.exp(0.5 * log_var).double())
    p = normal.cdf(x0.double() + 1 / 255) - normal.cdf(x0.double() - 1 / 255)
    p = torch.where(x0 < -0.999, normal.cdf(x0.double() + 1 / 255), p)
    p = torch.where(x0 > 0.999, 1 - normal.cdf(x0.double() - 1 / 255), p)
    expected = -(p.clamp_min(1e-12).log()).flatten(1).mean(1) / math.log(2)
    torch.testing.assert_close(terms.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_the_vlb_gradient_reaches_the_variance_and_not_the_mean(prediction):
    """Sec. 3.1: L_vlb trains v alone (stop-gradient on the mean), L_simple the mean alone."""
    schedule = make_schedule("cosine", 100)
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(4, 1, 4, 4, generator=gen) * 2 - 1
    eps = torch.randn(4, 1, 4, 4, generator=gen)
    t = torch.tensor([0, 3, 40, 99])
    mean_out = torch.randn(4, 1, 4, 4, generator=gen, requires_grad=True)
    var_out = torch.rand(4, 1, 4, 4, generator=gen).mul(2).sub(1).requires_grad_(True)

    def both(x_t, t):
        return torch.cat([mean_out, var_out], dim=1)

    hybrid = hybrid_loss(both, x0, t, eps, schedule, prediction).sum()
    g_mean, g_var = torch.autograd.grad(hybrid, [mean_out, var_out])
    simple = diffusion_loss(lambda x_t, t: mean_out, x0, t, eps, schedule, prediction).sum()
    (g_simple,) = torch.autograd.grad(simple, [mean_out])
    torch.testing.assert_close(g_mean, g_simple, rtol=0, atol=0)  # nothing from L_vlb
    assert g_var.abs().min() > 0  # every pixel's v learns from L_vlb
    # and L_hybrid is L_simple + T lambda L_vlb, lambda = 0.001
    x_t = q_sample(x0, t, eps, schedule)
    vlb = vlb_terms(mean_out.detach(), var_out, x0, x_t, t, schedule, prediction)
    torch.testing.assert_close(hybrid, simple + 0.001 * 100 * vlb.sum())


def test_in_a_unet_only_the_variance_rows_of_conv_out_learn_from_the_vlb():
    torch.manual_seed(0)
    net = UNet(_tiny_config())
    schedule = make_schedule("cosine", 100)
    gen = torch.Generator().manual_seed(4)
    x0, eps = torch.rand(3, 1, 8, 8, generator=gen) * 2 - 1, torch.randn(3, 1, 8, 8, generator=gen)
    t = torch.tensor([0, 20, 90])

    def model_fn(x_t, t):
        return net(x_t, t, None, with_variance=True)

    def conv_out_grad(loss_fn):
        net.zero_grad()
        loss_fn(model_fn, x0, t, eps, schedule, "v").sum().backward()
        return net.conv_out.weight.grad.clone()  # (2C, ch, 3, 3)

    hybrid = conv_out_grad(hybrid_loss)
    simple = conv_out_grad(lambda fn, *a: diffusion_loss(lambda x, s: fn(x, s)[:, :1], *a))
    torch.testing.assert_close(hybrid[:1], simple[:1])  # the prediction's row: L_simple's
    assert simple[1:].abs().max() == 0 and hybrid[1:].abs().max() > 0  # v's row: L_vlb's
    assert net(x0, t).shape == (3, 1, 8, 8)  # forward alone: the prediction
    assert model_fn(x0, t).shape == (3, 2, 8, 8)


# Sampling ------------------------------------------------------------------------------------


def _gaussian_model(schedule, v_value):
    """The exact eps predictor of N(0.3, 0.5^2) data, with a constant variance output."""

    def model_fn(x_t, t):
        ab = torch.from_numpy(schedule.alpha_bar[t.numpy()]).float().reshape(-1, 1, 1, 1)
        eps = torch.sqrt(1 - ab) * (x_t - torch.sqrt(ab) * 0.3) / (ab * 0.25 + 1 - ab)
        return torch.cat([eps, torch.full_like(x_t, v_value)], dim=1)

    return model_fn


@pytest.mark.parametrize("steps", [100, 50, 20])
def test_v_minus_one_is_the_beta_tilde_sampler_exactly(steps):
    schedule = make_schedule("cosine", 100)
    learned = make_denoiser(_gaussian_model(schedule, -1.0), schedule, "eps", True, True)
    fixed = make_denoiser(
        lambda x, t: _gaussian_model(schedule, -1.0)(x, t)[:, :1], schedule, "eps", True
    )
    x_T = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a = sample_ddpm(learned, x_T, schedule, steps=steps, variance="learned",
                    generator=torch.Generator().manual_seed(7))  # fmt: skip
    b = sample_ddpm(fixed, x_T, schedule, steps=steps, variance="beta_tilde",
                    generator=torch.Generator().manual_seed(7))  # fmt: skip
    assert torch.equal(a, b)
    # and v = 1 is the beta sampler, up to the rounding of exp(log)
    learned = make_denoiser(_gaussian_model(schedule, 1.0), schedule, "eps", True, True)
    c = sample_ddpm(learned, x_T, schedule, steps=steps, variance="learned",
                    generator=torch.Generator().manual_seed(7))  # fmt: skip
    d = sample_ddpm(fixed, x_T, schedule, steps=steps, variance="beta",
                    generator=torch.Generator().manual_seed(7))  # fmt: skip
    torch.testing.assert_close(c, d, rtol=1e-5, atol=1e-5)
    assert not torch.equal(c, a)


def test_a_respaced_step_interpolates_the_subsequences_beta_per_pixel():
    """Sec. 4: with steps < T, beta_t = 1 - alpha_bar_t / alpha_bar_t' between visited steps,
    beta_tilde from it, and v interpolates between those two, pixel by pixel (Eq. 15)."""
    schedule = make_schedule("linear", 1000)
    seq = timestep_sequence(1000, 50)
    t, s = seq[10], seq[11]
    ab_t, ab_s = schedule.alpha_bar[t], schedule.alpha_bar[s]
    beta = 1 - ab_t / ab_s
    beta_tilde = beta * (1 - ab_s) / (1 - ab_t)
    assert beta > 10 * schedule.betas[t]  # the sub-sequence's beta, not the T = 1000 one
    x, x0 = (
        torch.zeros(1, 1, 1, 5, dtype=torch.float64),
        torch.zeros(1, 1, 1, 5, dtype=torch.float64),
    )
    v = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=torch.float64).reshape(1, 1, 1, 5)
    noise = torch.ones_like(x)
    sigma = ddpm_step(x, x0, ab_t, ab_s, "learned", noise, v).flatten()  # mean 0: sigma * 1
    f = (v.flatten() + 1) / 2
    expected = torch.exp(0.5 * (f * math.log(beta) + (1 - f) * math.log(beta_tilde)))
    torch.testing.assert_close(sigma, expected, rtol=1e-12, atol=0)


def test_guidance_mixes_the_predictions_and_keeps_the_conditional_variance():
    def model(x, t, y, with_variance=False):
        assert with_variance
        mean = x + y.reshape(-1, 1, 1, 1).float()  # a label-dependent prediction
        return torch.cat([mean, 10 * y.reshape(-1, 1, 1, 1).float().expand_as(x) - 5], dim=1)

    x = torch.zeros(2, 1, 2, 2)
    y = torch.tensor([1, 2])
    out = guided_model_fn(model, y, 3.0, null_label=7, with_variance=True)(x, torch.zeros(2))
    mean, v = split_variance(out)
    torch.testing.assert_close(mean, (7 + 3.0 * (y - 7)).float().reshape(-1, 1, 1, 1).expand_as(x))
    torch.testing.assert_close(v, (10 * y - 5).float().reshape(-1, 1, 1, 1).expand_as(x))


def test_ddpm_learned_needs_a_variance_output():
    schedule = make_schedule("cosine", 20)
    plain = make_denoiser(lambda x, t: torch.zeros_like(x), schedule, "eps")
    with pytest.raises(ValueError, match="--learn-variance"):
        sample_ddpm(plain, torch.zeros(1, 1, 2, 2), schedule, variance="learned",
                    generator=torch.Generator())  # fmt: skip
    with pytest.raises(ValueError, match="no variance output"):
        UNet(ModelConfig(image_size=8, base_channels=8, channel_mults=(1, 2)))(
            torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long), with_variance=True
        )
    with pytest.raises(ValueError, match="NumPy backend has no learned variances"):
        NumpyUNet(_tiny_config())


def _tiny_config() -> ModelConfig:
    return ModelConfig(
        image_size=8, in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
        learn_variance=True,
    )  # fmt: skip


# Through the CLI -----------------------------------------------------------------------------

TINY = ["--data", "emoji", "--num-images", "32", "--batch-size", "16", "--timesteps", "100",
        "--base-channels", "8", "--channel-mults", "1,2", "--no-progress", "--seed", "1",
        "--device", "cpu", "--sample-every", "0", "--preview-steps", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    """A class-conditional emoji model with learned variances, 2 steps of `difflab train`."""
    run = tmp_path_factory.mktemp("learned") / "run"
    argv = ["train", *TINY, "--learn-variance", "--conditional", "--prediction", "eps",
            "--max-steps", "2", "--out", str(run)]  # fmt: skip
    assert main(argv) == 0
    return run


def test_the_checkpoint_holds_the_doubled_head_and_the_option(learned_run):
    config = json.loads((learned_run / "config.json").read_text())
    assert config["model"]["learn_variance"] is True
    weights = load_file(str(learned_run / "model_final.safetensors"))
    for net in ("model", "ema"):  # RGB emoji: 3 prediction + 3 variance channels
        assert weights[f"{net}.conv_out.weight"].shape[0] == 2 * 3
    records = [json.loads(line) for line in (learned_run / "metrics.jsonl").read_text().split("\n")
               if line]  # fmt: skip
    assert [r["step"] for r in records if "loss" in r][-1] == 2
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)
    assert "learned" in (learned_run / "report.html").read_text()


def test_sample_with_ddpm_at_50_steps_and_with_ddim(learned_run, tmp_path, capsys):
    ckpt = str(learned_run / "model_final.safetensors")
    base = ["sample", "--checkpoint", ckpt, "--num-images", "4", "--seed", "3", "--class-label",
            "1", "--guidance", "2"]  # fmt: skip
    for name, flags in {
        "ddpm": ["--sampler", "ddpm", "--steps", "50"],
        "ddpm_again": ["--sampler", "ddpm", "--steps", "50"],
        "ddpm_beta": ["--sampler", "ddpm", "--steps", "50", "--variance", "beta"],
        "ddim": ["--sampler", "ddim", "--steps", "10"],
    }.items():
        assert main([*base, *flags, "--out", str(tmp_path / f"{name}.png")]) == 0, name
    png = {p.stem: p.read_bytes() for p in tmp_path.glob("*.png")}
    assert png["ddpm"] == png["ddpm_again"]  # the same seed, the same images
    assert png["ddpm"] != png["ddpm_beta"]  # the learned variance is used by default
    # the plan: learned by default for DDPM, asked-for fixed variances allowed, DDIM ignores it
    loaded = load_model(ckpt, "cpu")
    plan = plan_sampling(loaded, SamplingRequest(num_images=2, sampler="ddpm", steps=50))
    assert plan.variance == "learned" and plan.generate_kwargs()["variance"] == "learned"
    assert len(plan.timesteps) == 50
    assert execute(loaded, plan).shape == (2, 3, 8, 8)
    beta_tilde = SamplingRequest(num_images=2, sampler="ddpm", variance="beta_tilde")
    assert plan_sampling(loaded, beta_tilde).variance == "beta_tilde"
    ddim = plan_sampling(loaded, SamplingRequest(num_images=2, sampler="ddim"))
    assert "variance" not in ddim.generate_kwargs()
    with pytest.raises(ValueError, match="NumPy backend has no learned variances"):
        load_model(ckpt, "cpu", backend="numpy")


def test_resume_ends_where_an_uninterrupted_run_ends(learned_run, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(learned_run, run)
    assert main(["train", "--resume", str(run), "--max-steps", "4", "--no-progress"]) == 0
    straight = tmp_path / "straight"
    argv = ["train", *TINY, "--learn-variance", "--conditional", "--prediction", "eps",
            "--max-steps", "4", "--out", str(straight)]  # fmt: skip
    assert main(argv) == 0
    a = load_file(str(run / "model_final.safetensors"))
    b = load_file(str(straight / "model_final.safetensors"))
    assert sorted(a) == sorted(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_fixed_variance_model_refuses_variance_learned(tmp_path):
    run = tmp_path / "fixed"
    assert main(["train", *TINY, "--max-steps", "1", "--out", str(run)]) == 0
    loaded = load_model(run / "model_final.safetensors", "cpu")
    assert plan_sampling(loaded, SamplingRequest(sampler="ddpm")).variance == "beta"
    with pytest.raises(ValueError, match="--variance learned needs a model trained with"):
        plan_sampling(loaded, SamplingRequest(sampler="ddpm", variance="learned"))


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--objective", "flow"], "a flow matching model has none"),
        (["--backend", "numpy"], "torch backend only"),
        (["--latent", "ae.safetensors"], "not --latent"),
    ],
)
def test_learn_variance_where_it_has_no_meaning_is_one_clear_line(flags, match, tmp_path, capsys):
    code = main(["train", *TINY, "--learn-variance", *flags, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and match in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_learn_variance_cannot_be_switched_on_by_resume(learned_run, capsys):
    code = main(["train", "--resume", str(learned_run), "--learn-variance", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--learn-variance" in err, err


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_the_vlb_reads_each_prediction_type_through_its_x0(prediction):
    """A network that predicts its target exactly, with v = -1, has p = q: every KL is 0."""
    schedule = make_schedule("cosine", 100)
    gen = torch.Generator().manual_seed(5)
    x0 = torch.rand(3, 1, 4, 4, generator=gen) * 2 - 1
    eps = torch.randn(3, 1, 4, 4, generator=gen)
    t = torch.tensor([5, 50, 95])
    x_t = q_sample(x0, t, eps, schedule)
    output = training_target(x0, t, eps, schedule, prediction)
    terms = vlb_terms(output, torch.full_like(x0, -1.0), x0, x_t, t, schedule, prediction)
    assert terms.abs().max() < 1e-3
