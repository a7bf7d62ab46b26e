"""Our samplers against diffusers' schedulers, step by step, on the same model output.

diffusers is an independent implementation (test-only dependency, in the ``dev`` extra). Each
test drives both with one deterministic fake network and the same noise generator, with
diffusers' options set to what ours do, and compares every intermediate x_t.
"""

import inspect

import numpy as np
import pytest
import torch

from difflab.samplers import (
    make_denoiser,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_3m,
    sample_ipndm,
    sample_unipc,
    timestep_sequence,
)
from difflab.schedules import make_schedule

diffusers = pytest.importorskip("diffusers")

T = 1000
BETAS = {  # our schedule name -> diffusers' beta_schedule
    "linear": {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
    "cosine": {"beta_schedule": "squaredcos_cap_v2"},
}


def fake_eps(x, t):
    """Any smooth function of (x_t, t) will do: both sides see exactly the same outputs."""
    t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1, 1, 1)
    return 0.6 * torch.tanh(x) + 0.2 * torch.cos(t / 150.0) * torch.sin(3.0 * x)


def x_T(seed=0, dtype=torch.float64):
    return torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def ours(sampler, schedule_name, steps, clip, dtype=torch.float64, **options):
    """Our sampler's x_t before each step, and its output."""
    schedule = make_schedule(schedule_name, T)
    denoiser = make_denoiser(fake_eps, schedule, "eps", clip_x0=clip)
    states = []
    out = sampler(
        denoiser, x_T(dtype=dtype), schedule, steps=steps, generator=torch.Generator().manual_seed(7),
        callback=lambda info: states.append((info["t"], info["x"].clone())), **options,
    )  # fmt: skip
    return states, out


def theirs(scheduler, steps, dtype=torch.float64, float64_sigmas=False, **step_options):
    """diffusers' loop: x_t before each step, and its output.

    diffusers keeps alpha_bar in float32; over 1000 steps that alone moves x_t by ~3e-4. To
    compare the algorithms, their scheduler gets our float64 alpha_bar (the schedules themselves
    are compared in ``test_schedules_agree_to_float32_precision``). The multistep schedulers also
    cast their per-step sigmas to float32; ``float64_sigmas`` replaces them by the same values in
    float64 (sqrt((1 - ab) / ab) at its timesteps, then 0 for the data).
    """
    name = "cosine" if scheduler.config.beta_schedule == "squaredcos_cap_v2" else "linear"
    alpha_bar = make_schedule(name, T).alpha_bar
    scheduler.alphas_cumprod = torch.from_numpy(alpha_bar)
    scheduler.set_timesteps(steps)
    if float64_sigmas:
        ab = alpha_bar[scheduler.timesteps.numpy()]
        scheduler.sigmas = torch.from_numpy(np.concatenate([np.sqrt((1 - ab) / ab), [0.0]]))
    if "generator" in inspect.signature(scheduler.step).parameters:  # not UniPC's
        step_options["generator"] = torch.Generator().manual_seed(7)
    x, states = x_T(dtype=dtype), []
    for t in scheduler.timesteps:
        states.append((int(t), x.clone()))
        x = scheduler.step(fake_eps(x, t), t, x, **step_options).prev_sample
    return states, x


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_schedules_agree_to_float32_precision(schedule_name):
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=T, **BETAS[schedule_name])
    np.testing.assert_allclose(
        scheduler.alphas_cumprod.double().numpy(), make_schedule(schedule_name, T).alpha_bar,
        rtol=2e-5,
    )  # fmt: skip


def assert_same_trajectory(a, b, rtol=1e-7, atol=1e-9):
    assert [t for t, _ in a] == [t for t, _ in b]
    for (t, xa), (_, xb) in zip(a, b, strict=True):
        torch.testing.assert_close(xa, xb.to(xa.dtype), rtol=rtol, atol=atol, msg=f"at t={t}")


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
@pytest.mark.parametrize(
    ("variance", "variance_type"), [("beta", "fixed_large"), ("beta_tilde", "fixed_small")]
)
def test_ddpm_matches_ddpm_scheduler(schedule_name, variance, variance_type):
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=T, variance_type=variance_type, clip_sample=True,
        prediction_type="epsilon", timestep_spacing="trailing", **BETAS[schedule_name],
    )  # fmt: skip
    a, out_a = ours(sample_ddpm, schedule_name, T, clip=True, variance=variance)
    b, out_b = theirs(scheduler, T)
    assert_same_trajectory(a, b)
    torch.testing.assert_close(out_a, out_b.double(), rtol=1e-7, atol=1e-9)


def test_respaced_ddpm_matches_ddpm_scheduler_with_fewer_steps():
    """Respaced (Nichol & Dhariwal 2021): beta between visited steps is 1 - ab_t / ab_s in both.
    diffusers adds noise on its last step whenever that t > 0; we return the posterior mean
    there, so the final outputs differ by design and only the trajectories are compared."""
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=T, variance_type="fixed_large", clip_sample=True,
        timestep_spacing="trailing", **BETAS["linear"],
    )  # fmt: skip
    a, _ = ours(sample_ddpm, "linear", 50, clip=True)
    b, _ = theirs(scheduler, 50)
    assert len(a) == 50
    assert_same_trajectory(a, b)


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
@pytest.mark.parametrize(("steps", "eta"), [(10, 0.0), (50, 0.0), (20, 0.5), (20, 1.0)])
def test_ddim_matches_ddim_scheduler(schedule_name, steps, eta):
    """We clip x0 and recompute eps from it: diffusers' ``use_clipped_model_output=True``."""
    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=T, clip_sample=True, set_alpha_to_one=True,
        timestep_spacing="trailing", prediction_type="epsilon", **BETAS[schedule_name],
    )  # fmt: skip
    a, out_a = ours(sample_ddim, schedule_name, steps, clip=True, eta=eta)
    b, out_b = theirs(scheduler, steps, eta=eta, use_clipped_model_output=True)
    assert_same_trajectory(a, b)
    torch.testing.assert_close(out_a, out_b.double(), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [5, 10, 20, 50])
def test_dpmpp_2m_matches_dpm_solver_multistep_scheduler(schedule_name, steps):
    """DPM-Solver++(2M), midpoint form, ending with a first-order step to sigma = 0. diffusers'
    ``lower_order_final`` would also make the second-to-last step first order below 15 steps;
    we do not, so it is off here. Unclipped x0 of the fake network makes |x_t| grow to ~300."""
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, algorithm_type="dpmsolver++", solver_order=2,
        solver_type="midpoint", lower_order_final=False, final_sigmas_type="zero",
        timestep_spacing="trailing", prediction_type="epsilon", thresholding=False,
        **BETAS[schedule_name],
    )  # fmt: skip
    a, out_a = ours(sample_dpmpp_2m, schedule_name, steps, clip=False)
    b, out_b = theirs(scheduler, steps)
    # diffusers casts its sigmas to float32: agreement to float32 precision of the largest value
    scale = max(x.abs().max().item() for _, x in a)
    assert_same_trajectory(a, b, rtol=1e-6, atol=1e-6 * scale)
    torch.testing.assert_close(out_a, out_b.double(), rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [5, 20, 50])
def test_dpmpp_2m_sde_matches_sde_dpm_solver_multistep_scheduler(schedule_name, steps):
    """The SDE variant (``algorithm_type="sde-dpmsolver++"``), same options as above. diffusers
    draws its noise in ``step`` from the generator passed in, as ours does, but always in float32:
    with float32 images on both sides the same seed injects the same z at every step."""
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, algorithm_type="sde-dpmsolver++", solver_order=2,
        solver_type="midpoint", lower_order_final=False, final_sigmas_type="zero",
        timestep_spacing="trailing", prediction_type="epsilon", thresholding=False,
        **BETAS[schedule_name],
    )  # fmt: skip
    a, out_a = ours(sample_dpmpp_2m_sde, schedule_name, steps, clip=False, dtype=torch.float32)
    b, out_b = theirs(scheduler, steps, dtype=torch.float32)
    scale = max(x.abs().max().item() for _, x in a)
    assert_same_trajectory(a, b, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-5 * scale)
    ode, _ = ours(sample_dpmpp_2m, schedule_name, steps, clip=False, dtype=torch.float32)
    assert not torch.allclose(ode[-1][1], a[-1][1], atol=1e-3)  # the noise does act


def test_the_fake_network_is_not_trivial():
    """Guard: the comparison means something only if the trajectories actually move."""
    states, out = ours(sample_ddim, "linear", 10, clip=True)
    assert (states[0][1] - out).abs().mean() > 0.3
    assert not np.allclose(states[3][1].numpy(), states[4][1].numpy())


def float32_scale(states):
    """Agreement to float32 precision of the largest |x_t| (unclipped x0 lets it grow to ~300)."""
    return max(x.abs().max().item() for _, x in states)


def clipping(clip):
    """Our clip_x0 in diffusers' multistep schedulers: dynamic thresholding whose threshold is
    clamped to [1, sample_max_value] = [1, 1] clips x0 to [-1, 1]. Clipped, the fake network's
    x_t stay O(1); unclipped they grow to ~3e4 on the cosine schedule, where float32 rounding
    then hides the difference between the 2M and 3M updates."""
    return {"thresholding": clip, "sample_max_value": 1.0}


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [4, 6, 10, 20, 50])
@pytest.mark.parametrize("clip", [True, False])
def test_dpmpp_3m_matches_dpm_solver_multistep_scheduler_of_order_3(schedule_name, steps, clip):
    """DPM-Solver++(3M): ``solver_order=3``, otherwise the 2M test's options (first-order last
    step to sigma = 0, no lower-order second-to-last step). diffusers casts x_t to float32 in
    every step, so agreement is to float32 precision whatever its sigmas."""
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, algorithm_type="dpmsolver++", solver_order=3,
        solver_type="midpoint", lower_order_final=False, final_sigmas_type="zero",
        timestep_spacing="trailing", prediction_type="epsilon", **clipping(clip),
        **BETAS[schedule_name],
    )  # fmt: skip
    a, out_a = ours(sample_dpmpp_3m, schedule_name, steps, clip=clip)
    b, out_b = theirs(scheduler, steps)
    scale = float32_scale(a)
    assert_same_trajectory(a, b, rtol=1e-6, atol=1e-6 * scale)
    torch.testing.assert_close(out_a, out_b.double(), rtol=1e-6, atol=1e-6 * scale)
    if clip:  # the third-order update acts: from the fourth visited step on, 3M leaves 2M
        second, _ = ours(sample_dpmpp_2m, schedule_name, steps, clip=clip)
        torch.testing.assert_close(second[2][1], a[2][1], rtol=1e-12, atol=1e-12)  # 2M so far
        assert max((x2 - x3).abs().max() for (_, x2), (_, x3) in zip(second, a, strict=True)) > 2e-3


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [4, 6, 10, 50])
@pytest.mark.parametrize("clip", [True, False])
def test_unipc_matches_unipc_multistep_scheduler(schedule_name, order, steps, clip):
    """UniPC with B(h) = e^{-h} - 1 (``solver_type="bh2"``), data prediction, the corrector on
    every step, the predictor's order lowered as the steps run out (``lower_order_final``, on in
    both), sigma = 0 at the end. Given float64 sigmas, diffusers' float64 arithmetic and ours agree
    to rounding; the x_t compared are the points the network is evaluated at (before UniC)."""
    scheduler = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=T, solver_order=order, predict_x0=True, solver_type="bh2",
        lower_order_final=True, disable_corrector=[], final_sigmas_type="zero",
        timestep_spacing="trailing", prediction_type="epsilon", **clipping(clip),
        **BETAS[schedule_name],
    )  # fmt: skip
    a, out_a = ours(sample_unipc, schedule_name, steps, clip=clip, order=order)
    b, out_b = theirs(scheduler, steps, float64_sigmas=True)
    scale = float32_scale(a)
    assert_same_trajectory(a, b, rtol=1e-10, atol=1e-12 * scale)
    torch.testing.assert_close(out_a, out_b, rtol=1e-10, atol=1e-12 * scale)
    if clip and order > 1 and steps > 4:  # the higher orders act: they leave UniPC-1's path
        first, _ = ours(sample_unipc, schedule_name, steps, clip=clip, order=1)
        assert max((x1 - x2).abs().max() for (_, x1), (_, x2) in zip(first, a, strict=True)) > 1e-3


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [4, 10, 50])
@pytest.mark.parametrize("clip", [False, True])
def test_ipndm_matches_ipndm_scheduler_given_our_alphas_and_sigmas(schedule_name, steps, clip):
    """diffusers' ``IPNDMScheduler`` is the same method, but not on our schedule by configuration:
    it builds its own continuous one (sigma = sin^2(pi s / 2), alpha = sqrt(1 - sigma^2), s from 1
    to 0) and expects v-prediction, turning it into eps as ets = sigma x + alpha v; then eps' is
    the Adams-Bashforth combination of the last four ets and x_s = alpha_s x0' + sigma_s eps' with
    x0' = (x - sigma eps') / alpha, the DDIM step (our last step, to the data, included). Here its
    per-step alpha and sigma are replaced by ours at the visited timesteps (then 1 and 0 for the
    data) and it is fed v = (eps - sigma x) / alpha for our network's eps, so the comparison is of
    the algorithm alone. ``test_samplers.py`` also checks iPNDM against a float64 re-derivation
    from the paper's formula (``test_ipndm_is_adams_bashforth_in_sigma_space``)."""
    schedule = make_schedule(schedule_name, T)
    seq = timestep_sequence(T, steps)
    ab = np.concatenate([schedule.alpha_bar[seq], [1.0]])
    scheduler = diffusers.IPNDMScheduler(num_train_timesteps=T)
    scheduler.set_timesteps(steps)
    scheduler.alphas = torch.from_numpy(np.sqrt(ab))  # alpha
    scheduler.betas = torch.from_numpy(np.sqrt(1.0 - ab))  # sigma: IPNDMScheduler's name for it
    denoiser = make_denoiser(fake_eps, schedule, "eps", clip_x0=clip)
    x, b = x_T(), []
    for i, s in enumerate(scheduler.timesteps):
        b.append((seq[i], x.clone()))
        eps, _ = denoiser(x, torch.full((x.shape[0],), seq[i]))
        v = (eps - scheduler.betas[i] * x) / scheduler.alphas[i]
        x = scheduler.step(v, s, x).prev_sample

    a, out_a = ours(sample_ipndm, schedule_name, steps, clip=clip)
    scale = float32_scale(a)
    assert_same_trajectory(a, b, rtol=1e-10, atol=1e-12 * scale)
    torch.testing.assert_close(out_a, x, rtol=1e-10, atol=1e-12 * scale)
