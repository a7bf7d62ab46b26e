"""Reflow and MeanFlow: the few-step routes for a flow matching teacher (``objectives.reflow``).

The MeanFlow target is checked on the Gaussian oracle, where the average velocity has a closed
form: u(z, r, t) = (z - Phi_{t->r}(z)) / (t - r) with Phi the exact flow map of N(mu, s^2) data
(tests/test_flow.py). The identity u = v - (t - r) du/dt must then hand back u itself, and one
MeanFlow jump must land where the exact ODE does. The commands are checked on tiny runs: pairs
drawn by the teacher's own ODE, one-step plans, exact resume, and one-line refusals.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from difflab.checkpoint import load_checkpoint
from difflab.cli import main
from difflab.config import MeanFlowConfig, ModelConfig, TrainConfig
from difflab.flow import (
    adaptive_loss,
    average_velocity_target,
    flow_timesteps,
    heun,
    meanflow_sample,
    sample_t_r,
    straightness,
)
from difflab.kinds import distill_route, load_model, plan_sampling
from difflab.models.unet import UNet
from difflab.objectives.reflow import PAIRS_FILE, student_config
from difflab.sampling.draw import flow_velocity
from difflab.sampling.plan import SamplingRequest
from difflab.training import latest_checkpoint
from test_flow import MU, S, exact_flow_map, gaussian_velocity
from test_train_robust import TINY, assert_bitwise_equal


def _moments(t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t = t.reshape((-1,) + (1,) * (like.ndim - 1))
    return (1 - t) * MU, torch.sqrt((1 - t) ** 2 * S**2 + t**2)


def exact_average_velocity(z: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """u(z_t, r, t) of Gaussian data, differentiable in z, r and t (r < t)."""
    m_t, sd_t = _moments(t, z)
    m_r, sd_r = _moments(r, z)
    z_r = m_r + sd_r / sd_t * (z - m_t)  # the exact flow map from t to r
    return (z - z_r) / (t - r).reshape(m_t.shape)


def exact_velocity(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(gaussian_velocity()(z.numpy(), t.numpy()))


def test_the_exact_average_velocity_is_its_own_meanflow_target():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(64, 1, 3, 3, generator=gen, dtype=torch.float64)
    t = 0.2 + 0.8 * torch.rand(64, generator=gen, dtype=torch.float64)
    r = t * torch.rand(64, generator=gen, dtype=torch.float64)  # r < t
    v = exact_velocity(z, t)  # the marginal velocity: the identity holds exactly
    u, target = average_velocity_target(exact_average_velocity, z, r, t, v)
    assert torch.allclose(u, exact_average_velocity(z, r, t))
    assert (target - u).abs().max() < 1e-10
    assert not target.requires_grad
    # The identity is not empty: the derivative term is large, and the wrong tangent (a velocity
    # of the other sign, as with data at t = 1) or the wrong factor (t + r) misses the target.
    assert (v - u).abs().max() > 0.1
    _, flipped = average_velocity_target(exact_average_velocity, z, r, t, -v)
    assert (flipped - u).abs().max() > 0.1
    du_dt = (v - target) / (t - r).reshape(-1, 1, 1, 1)
    assert (v - (t + r).reshape(-1, 1, 1, 1) * du_dt - u).abs().max() > 0.1


def test_one_meanflow_jump_with_the_exact_average_velocity_is_the_exact_ode():
    x = np.random.default_rng(1).standard_normal((20_000, 1))
    z = torch.from_numpy(x)
    one = meanflow_sample(exact_average_velocity, z, flow_timesteps(1)).numpy()
    assert np.allclose(one, exact_flow_map(x, 1.0, 0.0), atol=1e-12)
    assert abs(one.mean() - MU) < 0.02 and abs(one.std() - S) < 0.02
    # Two jumps land in the same place (the average velocity is exact over any interval), where
    # one Euler step of the instantaneous velocity does not.
    two = meanflow_sample(exact_average_velocity, z, flow_timesteps(2)).numpy()
    assert np.allclose(two, one, atol=1e-12)
    euler = x - gaussian_velocity()(x, np.ones(len(x)))
    assert np.abs(euler - one).max() > 0.1


def test_the_adaptive_loss_shows_the_squared_error_and_steps_by_the_weighted_one():
    u = torch.randn(5, 2, 3, 3, requires_grad=True)
    target = torch.randn(5, 2, 3, 3)
    loss = adaptive_loss(u, target, power=1.0, c=1e-3)
    squared = (u - target).detach().pow(2).flatten(1).sum(1)
    assert torch.allclose(loss, squared / 18)  # the value: the mean squared error per pixel
    loss.sum().backward()
    expected = 2 * (u - target).detach() / (squared + 1e-3).reshape(-1, 1, 1, 1)
    assert torch.allclose(u.grad, expected, rtol=1e-5)
    u.grad = None
    adaptive_loss(u, target, power=0.0).sum().backward()  # power 0: the plain squared error
    assert torch.allclose(u.grad, 2 * (u - target).detach())


def test_r_and_t_are_ordered_and_a_quarter_of_them_differ():
    r, t = sample_t_r(20_000, torch.Generator().manual_seed(2), ratio=0.25)
    assert r.dtype == torch.float64 and bool((r <= t).all()) and bool(((r >= 0) & (t <= 1)).all())
    share = (r != t).double().mean().item()
    assert abs(share - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 20_000)
    again = sample_t_r(20_000, torch.Generator().manual_seed(2), ratio=0.25)
    assert torch.equal(again[0], r) and torch.equal(again[1], t)
    with pytest.raises(ValueError, match="must lie in"):
        sample_t_r(4, torch.Generator(), ratio=1.5)


def test_the_interval_input_starts_at_zero_and_then_matters():
    config = ModelConfig(image_size=8, in_channels=1, base_channels=8, channel_mults=(1, 2))
    torch.manual_seed(0)
    plain = UNet(config)
    student = UNet(ModelConfig(**{**config.__dict__, "interval_input": True}))
    student.load_state_dict({**student.state_dict(), **plain.state_dict()})
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([900.0, 500.0, 100.0])
    for h in (None, torch.zeros(3), torch.tensor([900.0, 10.0, 50.0])):
        assert torch.equal(student(x, t, interval=h), plain(x, t))  # u = v at the start
    torch.nn.init.normal_(student.interval_out.weight)
    assert not torch.allclose(student(x, t, interval=torch.full((3,), 500.0)), plain(x, t))


# --- the commands ---------------------------------------------------------------------------------

RUN = ["--batch-size", "16", "--no-progress", "--device", "cpu", "--sample-every", "0",
       "--num-preview", "4", "--seed", "3"]  # fmt: skip
REFLOW = ["--method", "reflow", "--pairs", "32", "--pair-steps", "3", *RUN]
MEANFLOW = ["--method", "meanflow", *RUN]


@pytest.fixture(scope="module")
def flow_teacher(tmp_path_factory):
    run = tmp_path_factory.mktemp("flow") / "run"
    assert main(["train", *TINY, "--objective", "flow", "--out", str(run)]) == 0
    return run / "model_final.safetensors"


@pytest.fixture(scope="module")
def diffusion_teacher(tmp_path_factory):
    run = tmp_path_factory.mktemp("ddpm") / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    return run / "model_final.safetensors"


def test_reflow_trains_on_the_teachers_own_ode_pairs_and_draws_in_one_step(
    flow_teacher, tmp_path, capsys
):
    run = tmp_path / "rf"
    capsys.readouterr()
    assert main(["distill", "--teacher", str(flow_teacher), *REFLOW, "--max-steps", "4",
                 "--out", str(run)]) == 0  # fmt: skip
    pairs = load_file(str(run / PAIRS_FILE))
    assert pairs["noise"].shape == pairs["images"].shape == (32, 3, 8, 8)
    # Each image is the teacher's ODE (Heun, 3 steps on the flow grid) from its own noise
    teacher = load_model(flow_teacher, "cpu")
    expected = heun(flow_velocity(teacher.model, None, 1.0, 0), pairs["noise"], flow_timesteps(3))
    assert torch.allclose(pairs["images"], expected, atol=1e-5)
    ckpt = load_checkpoint(run / "model_final.safetensors")
    assert ckpt.config.kind == "reflow" and ckpt.config.flow.time_sampling == "uniform"
    plan = plan_sampling(load_model(ckpt, "cpu"), SamplingRequest(num_images=4))
    assert (plan.sampler, plan.steps, plan.timesteps) == ("euler", 1, (1.0, 0.0))
    printed = capsys.readouterr().out
    assert "sample with: difflab sample --checkpoint" in printed
    assert "reflow on 32 (noise, image) pairs from the teacher's ODE (3x8x8)" in printed
    out = tmp_path / "one.png"
    assert main(["sample", "--checkpoint", str(run / "model_final.safetensors"), "--num-images",
                 "4", "--out", str(out)]) == 0  # fmt: skip
    assert out.stat().st_size > 0


def test_a_flow_teacher_gets_reflow_by_default(flow_teacher, diffusion_teacher, capsys):
    flow, ddpm = (load_checkpoint(p).config for p in (flow_teacher, diffusion_teacher))
    assert distill_route(flow, 1).method == "reflow" and "8.24" in distill_route(flow, 1).evidence
    assert distill_route(ddpm, 1).method == "progressive"


@pytest.mark.parametrize("method", [REFLOW, MEANFLOW], ids=["reflow", "meanflow"])
def test_the_flow_routes_resume_bitwise(flow_teacher, method, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    argv = ["distill", "--teacher", str(flow_teacher), *method]
    assert main([*argv, "--max-steps", "4", "--out", str(whole)]) == 0
    assert main([*argv, "--max-steps", "2", "--out", str(parts)]) == 0
    if "reflow" in method:  # the pairs are drawn once; the resumed run reads them back
        stamp = (parts / PAIRS_FILE).stat().st_mtime_ns
    assert main(["distill", "--resume", str(parts), "--no-progress", "--max-steps", "4"]) == 0
    if "reflow" in method:
        assert (parts / PAIRS_FILE).stat().st_mtime_ns == stamp
    a, b = (load_checkpoint(latest_checkpoint(run)) for run in (whole, parts))
    assert_bitwise_equal(a.networks["model"], b.networks["model"])
    assert_bitwise_equal(a.networks["ema"], b.networks["ema"])


def test_meanflow_starts_as_its_teacher_and_draws_in_one_jump(flow_teacher, tmp_path):
    run = tmp_path / "mf"
    assert main(["distill", "--teacher", str(flow_teacher), *MEANFLOW, "--max-steps", "2",
                 "--out", str(run)]) == 0  # fmt: skip
    ckpt = load_checkpoint(run / "model_final.safetensors")
    assert ckpt.config.kind == "meanflow" and ckpt.config.model.interval_input
    assert ckpt.config.train.channels_last is False  # GroupNorm's JVP needs the plain layout
    loaded = load_model(ckpt, "cpu")
    plan = plan_sampling(loaded, SamplingRequest(num_images=4))
    assert (plan.sampler, plan.steps, plan.timesteps) == ("meanflow", 1, (1.0, 0.0))
    # Any flow sampler reads it at r = t, as the velocity model it was fine-tuned from
    assert plan_sampling(loaded, SamplingRequest(num_images=4, sampler="heun")).sampler == "heun"
    out = tmp_path / "one.png"
    assert main(["sample", "--checkpoint", str(run / "model_final.safetensors"), "--num-images",
                 "4", "--out", str(out)]) == 0  # fmt: skip


def test_bad_input_to_the_flow_routes_is_one_line(
    flow_teacher, diffusion_teacher, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "out"
    flow, ddpm = str(flow_teacher), str(diffusion_teacher)
    cases = [
        (["--teacher", ddpm, *REFLOW], "reflow and meanflow distil a flow matching model"),
        (["--teacher", flow, "--method", "progressive", *RUN], "is a flow matching model"),
        (["--teacher", flow, *MEANFLOW, "--pairs", "8"],
         "--pairs is a flag of --method reflow; this run is --method meanflow"),
        (["--teacher", flow, *REFLOW, "--mean-ratio", "0.5"],
         "--mean-ratio is a flag of --method meanflow; this run is --method reflow"),
        (["--teacher", flow, *MEANFLOW, "--mean-ratio", "0"], "--mean-ratio must lie in (0, 1]"),
        (["--teacher", flow, *REFLOW, "--guidance", "2"], "needs a class-conditional teacher"),
        (["--teacher", flow, *REFLOW, "--intervals", "4"],
         "--intervals is a flag of --method consistency"),
    ]  # fmt: skip
    capsys.readouterr()
    for argv, match in cases:
        assert main(["distill", *argv, "--out", str(out)]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert match in err, (argv, err)
        assert not out.exists(), argv
    # What distill's flags cannot ask for, a library caller can: refused in one line too
    teacher, section = (
        load_checkpoint(flow_teacher),
        MeanFlowConfig(teacher=flow, teacher_sha256=""),
    )
    for train, match in [(TrainConfig(channels_last=True), "GroupNorm's forward-mode"),
                         (TrainConfig(compile=True), "--compile is not available")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            student_config(teacher, train, section)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it
    assert main(["distill", "--teacher", flow, *MEANFLOW, "--out", str(out)]) == 2
    assert "runs in one process" in capsys.readouterr().err
    assert not out.exists()


def test_straightness_is_zero_for_straight_paths_and_the_exact_bend_for_the_gaussian_flow():
    x = np.random.default_rng(3).standard_normal((4000, 1))
    grid = flow_timesteps(400)
    # Straight paths walked at constant speed: x_t = x_1 (1 + t) / 2, so v(x_t, t) = x_t / (1 + t)
    assert np.abs(straightness(lambda z, t: z / (1 + t[:, None]), x, grid)).max() < 1e-12
    # The Gaussian flow's paths change speed: its straightness is the time average of
    # (v - (x_1 - x_0))^2 along the exact solution (test_flow.exact_flow_map), here by quadrature
    measured = straightness(gaussian_velocity(), x, grid)
    ts = np.linspace(1.0, 0.0, 2001)
    path = np.stack([exact_flow_map(x, 1.0, t) for t in ts])  # (T, N, 1)
    v = np.stack(
        [gaussian_velocity()(p, np.full(len(x), t)) for p, t in zip(path, ts, strict=True)]
    )
    exact = np.trapezoid(((v - (path[0] - path[-1])) ** 2)[..., 0], -ts, axis=0)
    assert exact.mean() > 1e-3
    assert measured.mean() == pytest.approx(exact.mean(), rel=0.02)
