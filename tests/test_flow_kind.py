"""A flow matching model in the kind table: trained by `difflab train --objective flow`, drawn by
its own Euler and Heun and by every DDPM sampler (which read it through the flow point with the
same SNR, ``diffusion.predict``), edited, resumed exactly, served, and run by the NumPy twin."""

import json

import numpy as np
import pytest
import torch

from difflab.checkpoint import load_checkpoint
from difflab.cli import main
from difflab.diffusion import predict, q_sample
from difflab.flow import FLOW_TIME_SCALE, flow_loss, from_vp, interpolate
from difflab.kinds import load_model, plan_sampling
from difflab.samplers import make_denoiser
from difflab.sampling import SamplingRequest, execute
from difflab.schedules import make_schedule
from difflab.web.core import DemoModel

TINY = ["--data", "emoji", "--num-images", "64", "--batch-size", "16", "--no-progress",
        "--seed", "1", "--device", "cpu", "--sample-every", "0", "--base-channels", "8",
        "--channel-mults", "1,2", "--preview-steps", "2", "--objective", "flow"]  # fmt: skip


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("flow") / "run"
    assert main(["train", *TINY, "--max-steps", "30", "--out", str(run)]) == 0
    return run


def test_a_flow_run_records_its_objective(flow_run):
    config = json.loads((flow_run / "config.json").read_text())
    assert config["diffusion"]["prediction"] == "flow"
    assert config["diffusion"]["min_snr_gamma"] is None  # no DDPM weighting of a velocity loss
    assert config["flow"] == {"time_sampling": "logit-normal", "loc": 0.0, "scale": 1.0,
                              "shift": 1.0}  # fmt: skip
    assert load_checkpoint(flow_run / "model_final.safetensors").config.kind == "flow"
    assert "flow matching" in (flow_run / "report.html").read_text()


def gaussian_velocity(mu, s):
    """The exact velocity of x0 ~ N(mu, s^2) on the flow path, called as a network: (x, 1000 t)."""

    def net(x, t_net):
        t = (t_net / FLOW_TIME_SCALE).reshape(-1, *([1] * (x.ndim - 1)))
        var = (1 - t) ** 2 * s**2 + t**2
        resid = x - (1 - t) * mu
        x0 = mu + (1 - t) * s**2 * resid / var  # E[x0 | x_t]
        eps = t * resid / var  # E[eps | x_t]
        return eps - x0

    return net


def test_a_velocity_is_read_as_eps_and_x0_at_the_point_with_the_same_snr():
    schedule = make_schedule("cosine", 1000)
    rng = np.random.default_rng(0)
    x0, eps = rng.standard_normal((2, 6, 3, 4, 4))
    t = np.array([0, 1, 250, 500, 998, 999])
    x_vp = q_sample(x0, t, eps, schedule)
    seen = []

    def oracle(x, t_net):  # the exact velocity of this very (x0, eps): what a perfect net says
        seen.append(t_net)
        return eps - x0

    got_eps, got_x0 = predict(oracle, x_vp, t, schedule, "flow")
    np.testing.assert_allclose(got_eps, eps, atol=1e-9)
    np.testing.assert_allclose(got_x0, x0, atol=1e-9)
    x_flow, t_flow = from_vp(x_vp, t, schedule)
    np.testing.assert_allclose(seen[0], FLOW_TIME_SCALE * t_flow)  # the net sees 1000 t
    np.testing.assert_allclose(x_flow, interpolate(x0, eps, t_flow), atol=1e-9)


@pytest.mark.parametrize("sampler, steps", [("ddim", 200), ("dpmpp-2m", 30), ("unipc", 15)])
def test_the_ddpm_samplers_draw_gaussian_data_from_its_exact_velocity(sampler, steps):
    from difflab.samplers import sample

    schedule = make_schedule("cosine", 1000)
    mu, s = 0.3, 0.5
    denoiser = make_denoiser(gaussian_velocity(mu, s), schedule, "flow", clip_x0=False)
    x_T = np.random.default_rng(1).standard_normal((4000, 1, 1, 1))
    x = sample(sampler, denoiser, x_T, schedule, steps=steps)
    assert abs(x.mean() - mu) < 0.03 and abs(x.std() - s) < 0.03, (x.mean(), x.std())


def test_flow_loss_is_the_velocity_regression():
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn((2, 5, 3, 4, 4), generator=gen)
    t = torch.rand(5, generator=gen)
    seen = []

    def net(x, t_net):
        seen.append((x, t_net))
        return 0.5 * x

    loss = flow_loss(net, x0, t, eps)
    x_t = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * eps
    expected = ((0.5 * x_t - (eps - x0)) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(seen[0][1], 1000 * t)


def test_its_own_ode_and_the_ddpm_samplers_reach_the_same_images(flow_run):
    """Euler on the flow ODE and DDIM on the DDPM grid solve one ODE (DDIM is Euler in
    sigma = t / (1 - t)): with many steps, from the same noise, they end at the same images."""
    loaded = load_model(flow_run / "model_final.safetensors", "cpu")
    x_T = torch.randn((6, 3, 8, 8), generator=torch.Generator().manual_seed(2))
    ends = {}
    for sampler, steps in [("euler", 400), ("heun", 100), ("ddim", 400), ("dpmpp-2m", 100)]:
        plan = plan_sampling(loaded, SamplingRequest(num_images=6, sampler=sampler, steps=steps,
                                                     clip=False))  # fmt: skip
        ends[sampler] = execute(loaded, plan, x_T=x_T)
    for sampler in ("heun", "ddim", "dpmpp-2m"):
        gap = (ends[sampler] - ends["euler"]).abs().max().item()
        assert gap < 0.03, (sampler, gap)
    # and few Euler steps are a coarser solution of that ODE, not another one
    coarse = execute(
        loaded,
        plan_sampling(loaded, SamplingRequest(num_images=6, sampler="euler", steps=8)),
        x_T=x_T,
    )
    assert 0.003 < (coarse - ends["euler"]).abs().mean().item() < 0.2


def test_the_numpy_twin_draws_a_flow_model_as_torch_does(flow_run):
    path = flow_run / "model_final.safetensors"
    x_T = torch.randn((3, 3, 8, 8), generator=torch.Generator().manual_seed(4))
    for sampler in ("heun", "ddim"):
        images = []
        for backend in ("torch", "numpy"):
            loaded = load_model(path, "cpu", backend=backend)
            plan = plan_sampling(loaded, SamplingRequest(num_images=3, sampler=sampler, steps=6))
            images.append(execute(loaded, plan, x_T=x_T))
        assert (images[0] - images[1]).abs().max().item() < 1e-4, sampler


def test_a_flow_run_resumes_to_the_same_weights(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", *TINY, "--max-steps", "6", "--out", str(straight)]) == 0
    assert main(["train", *TINY, "--max-steps", "3", "--out", str(split)]) == 0
    assert main(["train", "--resume", str(split), "--max-steps", "6", "--no-progress"]) == 0
    a = load_checkpoint(straight / "model_final.safetensors").networks["model"]
    b = load_checkpoint(split / "model_final.safetensors").networks["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_web_page_offers_its_own_solvers_first(flow_run, tmp_path):
    demo = DemoModel(flow_run / "model_final.safetensors", "cpu")
    assert demo.samplers[:2] == ["euler", "heun"] and "dpmpp-2m-sde" in demo.samplers
    assert demo.default_sampler == "unipc" and demo.default_steps() == 10  # measured winner
    assert demo.default_steps("euler") == 20 and demo.default_steps("heun") == 10
    req = demo.parse_request(sampler="euler", num_images=2, steps=5, every=1)
    frames = [f for f in demo.stream(req, tmp_path) if hasattr(f, "status")]
    assert [f.t for f in frames] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])  # flow times
    assert frames[0].status == "step 1/5 (t = 1)"
    assert demo.parse_request(sampler="ddim", steps=5).plan.timesteps == (999, 799, 599, 399, 199)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--objective", "flow", "--latent", "x.safetensors"], "--objective flow trains"),
        (["train", "--objective", "flow", "--backend", "numpy"], "--objective flow trains"),
        (["train", "--prediction", "flow"], "invalid choice: 'flow'"),
        (["train", "--objective", "rectified"], "invalid choice: 'rectified'"),
        (["train", "--objective", "flow", "--flow-shift", "0"], "--flow-shift"),
    ],
)
def test_bad_flow_flags_are_one_line(argv, message, capsys, tmp_path):
    try:
        code = main([*argv, "--out", str(tmp_path / "x"), "--max-steps", "1"])
    except SystemExit as exit_:  # argparse's own refusal of a flag
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def test_a_diffusion_model_refuses_the_flow_solvers(tmp_path, capsys):
    run = tmp_path / "ddpm"
    argv = [a for a in TINY if a not in ("--objective", "flow")]
    assert main(["train", *argv, "--max-steps", "1", "--out", str(run)]) == 0
    assert main(["sample", "--checkpoint", str(run / "model_final.safetensors"), "--sampler",
                 "heun", "--out", str(tmp_path / "s.png")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert "sampler heun walks a flow matching model's ODE" in err and len(err.splitlines()) == 1


def test_inspect_reads_a_flow_network_at_its_own_inputs(flow_run, tmp_path):
    """The insides of a flow model are those of the network at the flow point with the same
    SNR (``diffusion.network_inputs``), as every sampler calls it, not at DDPM's inputs."""
    from difflab.insides import feature_maps

    loaded = load_model(flow_run / "model_final.safetensors", "cpu")
    seen = []
    hook = loaded.model.register_forward_pre_hook(lambda _m, args: seen.append(args[:2]))
    x_t = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(5))
    try:
        feature_maps(loaded.model, x_t, [10, 39], reading=(loaded.schedule, "flow"))
    finally:
        hook.remove()
    x_flow, t_flow = from_vp(x_t, np.array([10, 39]), loaded.schedule)
    torch.testing.assert_close(seen[0][0], x_flow)
    torch.testing.assert_close(seen[0][1], FLOW_TIME_SCALE * t_flow)
    out = tmp_path / "insides"
    assert main(["inspect", "--checkpoint", str(flow_run / "model_final.safetensors"),
                 "--out", str(out), "--device", "cpu"]) == 0  # fmt: skip
    assert (out / "feature_maps.png").stat().st_size > 0
