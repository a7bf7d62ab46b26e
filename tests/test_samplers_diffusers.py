"""Our samplers against diffusers' schedulers, step by step, on the same model output.

diffusers is an independent implementation (test-only dependency, in the ``dev`` extra). Each
test drives both with one deterministic fake network and the same noise generator, with
diffusers' options set to what ours do, and compares every intermediate x_t.
"""

import numpy as np
import pytest
import torch

from difflab.samplers import (
    make_denoiser,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
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


def theirs(scheduler, steps, dtype=torch.float64, **step_options):
    """diffusers' loop: x_t before each step, and its output.

    diffusers keeps alpha_bar in float32; over 1000 steps that alone moves x_t by ~3e-4. To
    compare the algorithms, their scheduler gets our float64 alpha_bar (the schedules themselves
    are compared in ``test_schedules_agree_to_float32_precision``).
    """
    name = "cosine" if scheduler.config.beta_schedule == "squaredcos_cap_v2" else "linear"
    scheduler.alphas_cumprod = torch.from_numpy(make_schedule(name, T).alpha_bar)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(7)
    x, states = x_T(dtype=dtype), []
    for t in scheduler.timesteps:
        states.append((int(t), x.clone()))
        x = scheduler.step(fake_eps(x, t), t, x, generator=generator, **step_options).prev_sample
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
