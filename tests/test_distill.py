"""Consistency distillation: the boundary condition, the teacher's ODE step on the Gaussian
oracle, multistep sampling with fresh noise, and `difflab distill` -> `sample` / `evaluate`."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.checkpoint import load_checkpoint
from difflab.cli import main
from difflab.consistency import (
    boundary_scalings,
    consistency_function,
    consistency_timesteps,
    renoise,
    sample_consistency,
)
from difflab.diffusion import eps_and_x0
from difflab.objectives.consistency import heun_step, pseudo_huber
from difflab.schedules import make_schedule
from test_train_robust import TINY, assert_bitwise_equal, tensors


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    yield


# --- the consistency function ---------------------------------------------------------------------


@pytest.mark.parametrize("schedule_name", ["cosine", "linear"])
@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_the_boundary_condition_holds_exactly(schedule_name, prediction):
    schedule = make_schedule(schedule_name, 1000)
    c_skip, c_out = boundary_scalings(schedule, prediction)
    assert c_skip[0] == 1.0 and c_out[0] == 0.0
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 4, 4, generator=gen)
    wild = torch.randn(3, 1, 4, 4, generator=gen) * 1e3  # whatever the network says

    def model_fn(x_t, t):
        return wild

    f = consistency_function(model_fn, schedule, prediction)
    assert torch.equal(f(x, torch.zeros(3, dtype=torch.long)), x)  # bit for bit
    assert not torch.allclose(f(x, torch.ones(3, dtype=torch.long)), x)


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_the_consistency_function_is_a_ddim_jump_to_t_0(prediction):
    """f(x_t, t) = alpha_0 x0_pred + sigma_0 eps_pred: the DDIM step from t down to t = 0."""
    schedule = make_schedule("cosine", 1000)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 4, 4, generator=gen, dtype=torch.float64)
    out = torch.randn(4, 1, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([1, 250, 600, 999])
    f = consistency_function(lambda x_t, t: out, schedule, prediction)(x, t)
    eps, x0 = eps_and_x0(out, x, t, schedule, prediction)
    ddim = schedule.sqrt_alpha_bar[0] * x0 + schedule.sqrt_one_minus_alpha_bar[0] * eps
    torch.testing.assert_close(f, ddim, rtol=1e-9, atol=1e-9)


def test_eps_prediction_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="v- or x0-prediction teacher, not 'eps'"):
        boundary_scalings(make_schedule("cosine", 100), "eps")


# --- the teacher's step and the sampler, on a Gaussian with a known answer ------------------------

MU, S = 0.3, 0.5  # data x0 ~ N(MU, S^2), each pixel


def gaussian_denoiser(schedule):
    """The exact denoiser of N(MU, S^2) data: eps = sigma (x - alpha MU) / (alpha^2 S^2 + sigma^2)."""

    def denoiser(x, t):
        a = torch.as_tensor(schedule.sqrt_alpha_bar[t.numpy()]).view(-1, 1, 1, 1)
        s = torch.as_tensor(schedule.sqrt_one_minus_alpha_bar[t.numpy()]).view(-1, 1, 1, 1)
        eps = s * (x - a * MU) / (a * a * S * S + s * s)
        return eps, (x - s * eps) / a

    return denoiser


def exact_ode(x, t_from, t_to, schedule):
    """The probability-flow ODE of Gaussian data keeps (x - alpha MU) / std_t fixed."""

    def mean_std(t):
        a, s = schedule.sqrt_alpha_bar[t], schedule.sqrt_one_minus_alpha_bar[t]
        return a * MU, math.sqrt(a * a * S * S + s * s)

    (m0, s0), (m1, s1) = mean_std(t_from), mean_std(t_to)
    return m1 + s1 * (x - m0) / s0


def test_the_teachers_heun_step_is_second_order_on_the_gaussian_oracle():
    schedule = make_schedule("cosine", 1000)
    denoiser = gaussian_denoiser(schedule)
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    errors = {}
    for width in (50, 25, 12):  # difflab distill's intervals: ~T / 32 = 31 code steps
        t_from, t_to = 600, 600 - width
        exact = exact_ode(x, t_from, t_to, schedule)
        heun = heun_step(denoiser, x, torch.tensor([t_from]), torch.tensor([t_to]), schedule)
        errors[width] = (heun - exact).abs().max().item()
        a0, a1 = schedule.sqrt_alpha_bar[t_from], schedule.sqrt_alpha_bar[t_to]
        s0, s1 = (schedule.sqrt_one_minus_alpha_bar[t] for t in (t_from, t_to))
        eps, _ = denoiser(x, torch.tensor([t_from]))
        ddim = (x / a0 + (s1 / a1 - s0 / a0) * eps) * a1
        assert errors[width] < 0.15 * (ddim - exact).abs().max().item()  # far better than DDIM
    # Halving the step divides the local error by ~8 (third-order local error: second order;
    # DDIM's, first order, by ~4).
    assert errors[50] / errors[25] > 6 and errors[25] / errors[12] > 6


def test_renoise_draws_from_the_forward_process_between_the_two_levels():
    schedule = make_schedule("cosine", 1000)
    gen = torch.Generator().manual_seed(3)
    x_min = torch.full((200_000,), 0.8, dtype=torch.float64)
    x = renoise(x_min, 500, schedule, torch.randn(200_000, generator=gen, dtype=torch.float64))
    ratio = schedule.alpha_bar[500] / schedule.alpha_bar[0]
    assert x.mean().item() == pytest.approx(math.sqrt(ratio) * 0.8, abs=0.01)
    assert x.var().item() == pytest.approx(1 - ratio, rel=0.01)


def test_multistep_sampling_draws_fresh_noise_at_every_step():
    schedule = make_schedule("cosine", 1000)
    seen = []
    gen = torch.Generator().manual_seed(4)
    x_T = torch.randn(1, 1, 32, 32, generator=gen)
    sample_consistency(
        lambda x, t: torch.zeros_like(x), x_T, schedule,
        timesteps=consistency_timesteps(1000, 4), generator=gen,
        callback=lambda info: seen.append(info["x"].flatten()),
    )  # fmt: skip
    assert len(seen) == 4
    # f returned 0, so each later x is pure renoising noise: independent draws, not one reused.
    for a in range(1, 4):
        for b in range(a + 1, 4):
            assert abs(np.corrcoef(seen[a].numpy(), seen[b].numpy())[0, 1]) < 0.15
    with pytest.raises(ValueError, match="samples in 1, 2, 4 steps"):
        consistency_timesteps(1000, 3)


def test_pseudo_huber_is_the_ict_distance():
    diff = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    c = 0.00054 * math.sqrt(2)
    expected = torch.tensor([math.sqrt(25 + c * c) - c, 0.0])
    torch.testing.assert_close(pseudo_huber(diff), expected)


# --- difflab distill ------------------------------------------------------------------------------

DISTILL = ["--method", "consistency", "--epochs", "2", "--intervals", "8", "--batch-size", "16", "--no-progress",
           "--device", "cpu", "--num-preview", "8", "--seed", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def student(teacher, tmp_path_factory):
    run = tmp_path_factory.mktemp("student") / "run"
    argv = ["distill", "--teacher", str(teacher), *DISTILL, "--guidance", "2", "--out", str(run)]
    assert main(argv) == 0
    return run


def test_distill_writes_a_consistency_checkpoint_that_samples_in_1_2_4_steps(
    student, teacher, tmp_path, capsys
):
    ckpt = load_checkpoint(student / "model_final.safetensors")
    cc = ckpt.config.consistency
    assert cc is not None and cc.guidance == 2.0 and cc.intervals == 8
    assert cc.teacher == str(teacher)
    assert (student / "report.html").is_file() and (student / "samples/epoch_001.png").is_file()
    capsys.readouterr()
    for steps in (1, 2, 4):
        out = tmp_path / f"s{steps}.png"
        argv = ["sample", "--checkpoint", str(student / "model_final.safetensors"),
                "--steps", str(steps), "--num-images", "10", "--out", str(out)]  # fmt: skip
        assert main(argv) == 0
        assert f"consistency, {steps} steps, guidance 2" in capsys.readouterr().out
        with Image.open(out) as image:
            assert image.size[0] > 8


def test_a_distilled_checkpoint_is_scored_by_evaluate(student, cache, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFLAB_CACHE", str(cache))
    out = tmp_path / "m.json"
    argv = ["evaluate", "--checkpoint", str(student / "model_final.safetensors"),
            "--num-samples", "40", "--steps", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["setup"]["sampler"] == "consistency" and report["setup"]["steps"] == 2
    assert math.isfinite(report["metrics"]["fid"])
    assert 0.0 <= report["metrics"]["class_accuracy"] <= 1.0


def test_distill_resumes_bitwise(teacher, student, tmp_path):
    run = tmp_path / "stopped"
    argv = ["distill", "--teacher", str(teacher), *DISTILL, "--guidance", "2", "--out", str(run)]
    assert main([*argv, "--max-steps", "4"]) == 0  # 3 steps per epoch: inside the second
    assert main(["distill", "--resume", str(run), "--no-progress"]) == 0
    for name in ["model_final.safetensors", "checkpoints/epoch_002.safetensors"]:
        assert_bitwise_equal(tensors(student / name), tensors(run / name))


def test_bad_input_to_distill_and_to_a_distilled_model_is_one_line(
    teacher, student, tmp_path, capsys
):
    eps_run = tmp_path / "eps"
    assert (
        main(["train", *TINY, "--prediction", "eps", "--epochs", "1", "--out", str(eps_run)]) == 0
    )
    uncond = tmp_path / "uncond"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(uncond)]) == 0
    not_a_checkpoint = tmp_path / "x.safetensors"
    not_a_checkpoint.write_bytes(b"\x00" * 16)
    final = str(student / "model_final.safetensors")
    out = tmp_path / "out"
    capsys.readouterr()
    cases = [
        (["distill", "--teacher", final], "is already a consistency model"),
        (["distill", "--teacher", str(eps_run / "model_final.safetensors")],
         "needs a v- or x0-prediction teacher, not 'eps'"),
        (["distill", "--teacher", str(uncond / "model_final.safetensors"), "--guidance", "3"],
         "--guidance 3 needs a class-conditional teacher"),
        (["distill", "--teacher", str(not_a_checkpoint)], "x.safetensors"),
        (["distill", "--teacher", str(teacher), "--method", "consistency", "--intervals", "1000"],
         "--intervals 1000"),
        (["distill"], "--teacher is required"),
        (["distill", "--teacher", str(teacher), "--method", "consistency", "--lr-decay", "cosine"],
         "--lr-decay is a flag of --method progressive; this run is --method consistency"),
        (["distill", "--teacher", str(teacher), "--method", "consistency", "--steps", "4"],
         "--steps is a flag of --method progressive; this run is --method consistency"),
        (["distill", "--resume", str(student), "--teacher", str(teacher)],
         "--teacher cannot change when a run is resumed"),
        (["distill", "--resume", str(student), "--intervals", "4"],
         "--intervals cannot change when a run is resumed"),
        (["distill", "--resume", str(student), "--lr", "0.1"], "--lr cannot change"),
        (["sample", "--checkpoint", final, "--steps", "8"], "samples in 1, 2, 4 steps"),
        (["sample", "--checkpoint", final, "--guidance", "5"], "distilled at guidance 2"),
        (["img2img", "--checkpoint", final, "--from-data", "0"], "is a consistency model"),
        (["inpaint", "--checkpoint", final, "--from-data", "0"], "is a consistency model"),
    ]  # fmt: skip
    for argv, match in cases:
        resumed = "--resume" in argv  # writes into its run, never to --out
        full = (
            argv
            if resumed
            else [*argv, "--out", str(out if argv[0] == "distill" else out / "a.png")]
        )
        assert main(full) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert match in err, (argv, err)
        assert not out.exists(), argv  # nothing written
