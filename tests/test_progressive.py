"""Progressive distillation: the round plan, nested step grids, the target that makes one student
step land where two teacher steps do, and `difflab distill --method progressive` -> its students
-> `sample` / `evaluate`, with bitwise resume across a round's change of teacher."""

import itertools
import json
import math
from dataclasses import replace

import pytest
import torch

from difflab.checkpoint import load_checkpoint
from difflab.cli import main
from difflab.config import ProgressiveConfig, run_config_from_dict, to_dict
from difflab.kinds import distill_route, load_model
from difflab.models.unet import UNet
from difflab.objectives.progressive import (
    alpha_sigma,
    dmd_direction,
    ode_step,
    round_plan,
    step_grid,
    x0_target,
)
from difflab.samplers import ddim_step
from difflab.schedules import make_schedule
from difflab.training import latest_checkpoint
from test_distill import exact_ode, gaussian_denoiser
from test_train_robust import assert_bitwise_equal, tensors


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    yield


def test_rounds_halve_the_steps():
    assert round_plan(64, 4, 1000) == [32, 16, 8, 4]
    assert round_plan(8, 1, 50) == [4, 2, 1]
    for start, steps, match in [(48, 4, "times a power of 2"), (12, 8, "times a power of 2"),
                                (4, 4, "must lie above"), (2048, 1, "within the teacher's")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            round_plan(start, steps, 1000)


@pytest.mark.parametrize("num_timesteps", [50, 1000, 1024])
def test_two_teacher_steps_span_one_student_step(num_timesteps):
    schedule = make_schedule("cosine", num_timesteps)
    for n in (1, 2, 4, 8, 16):
        student, teacher = step_grid(schedule, n, "cpu"), step_grid(schedule, 2 * n, "cpu")
        assert torch.equal(teacher[::2], student)
        assert student[0] == num_timesteps - 1 and student[-1] == num_timesteps  # T: the data


def test_the_target_makes_one_ddim_step_land_on_the_teachers_two():
    """x_tilde is the x0 whose DDIM step from z_t reaches z'' exactly (Salimans & Ho, Alg. 2):
    a'' x~ + s'' (z_t - a_t x~) / s_t = z''; at the last step (the data) x~ = z''."""
    schedule = make_schedule("cosine", 1000)
    gen = torch.Generator().manual_seed(0)
    z_t = torch.randn(5, 1, 4, 4, generator=gen, dtype=torch.float64)
    z_end = torch.randn(5, 1, 4, 4, generator=gen, dtype=torch.float64)
    for t, t_end in [(999, 749), (500, 250), (124, None)]:
        ab_t = schedule.alpha_bar[t]
        ab_end = 1.0 if t_end is None else schedule.alpha_bar[t_end]
        a_t, s_t = math.sqrt(ab_t), math.sqrt(1 - ab_t)
        a_e, s_e = math.sqrt(ab_end), math.sqrt(1 - ab_end)
        x_tilde = (z_end - (s_e / s_t) * z_t) / (a_e - (s_e / s_t) * a_t)
        eps = (z_t - a_t * x_tilde) / s_t
        torch.testing.assert_close(ddim_step(x_tilde, eps, ab_t, ab_end, 0.0, None), z_end)
        if t_end is None:
            torch.testing.assert_close(x_tilde, z_end)


def test_the_first_teachers_second_order_step_and_ddim_into_the_data():
    """--teacher-solver dpmpp-2s: into the data it is DDIM (x0); on the Gaussian oracle, two
    steps over a student interval land closer to the exact ODE than two DDIM steps, and
    halving the interval divides the error by ~8 (third-order local error: second order)."""
    schedule = make_schedule("cosine", 1000)
    denoiser = gaussian_denoiser(schedule)
    alpha = torch.tensor([*schedule.sqrt_alpha_bar, 1.0], dtype=torch.float64)
    sigma = torch.tensor([*schedule.sqrt_one_minus_alpha_bar, 0.0], dtype=torch.float64)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    into_data = ode_step("dpmpp-2s", denoiser, x, torch.tensor([124, 3]),
                         torch.tensor([1000, 1000]), alpha, sigma)  # fmt: skip
    torch.testing.assert_close(into_data, denoiser(x, torch.tensor([124, 3]))[1])

    def error(solver, t_from, t_to):
        t_mid = (t_from + t_to) // 2
        mid = ode_step(solver, denoiser, x, torch.tensor([t_from] * 2), torch.tensor([t_mid] * 2),
                       alpha, sigma)  # fmt: skip
        end = ode_step(solver, denoiser, mid, torch.tensor([t_mid] * 2), torch.tensor([t_to] * 2),
                       alpha, sigma)  # fmt: skip
        return (end - exact_ode(x, t_from, t_to, schedule)).abs().max().item()

    # A 4-step student's intervals; from pure noise (t = 999, log-SNR/2 -9.9 -> -0.9) both are
    # close, as x0 there is about the data's mean.
    assert error("dpmpp-2s", 999, 749) < error("ddim", 999, 749) / 1.5
    for t_from, t_to in [(749, 499), (499, 249)]:
        assert error("dpmpp-2s", t_from, t_to) < error("ddim", t_from, t_to) / 8
    assert error("dpmpp-2s", 600, 400) / error("dpmpp-2s", 600, 500) > 6


# --- difflab distill --method progressive --------------------------------------------------------

PD = ["--method", "progressive", "--start-steps", "8", "--steps", "1", "--round-steps", "4",
      "--batch-size", "16", "--no-progress", "--device", "cpu", "--num-preview", "8", "--seed", "2",
      "--sample-every", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def student(teacher, tmp_path_factory):
    run = tmp_path_factory.mktemp("student") / "run"
    argv = ["distill", "--teacher", str(teacher), *PD, "--guidance", "2", "--out", str(run)]
    assert main(argv) == 0
    return run


def test_each_round_writes_a_student_that_knows_its_steps(student, teacher):
    for n in (4, 2, 1):
        pc = load_checkpoint(student / f"model_steps_{n}.safetensors").config.progressive
        assert (
            pc is not None and pc.steps == n and pc.guidance == 2.0 and pc.teacher == str(teacher)
        )
    final = load_checkpoint(latest_checkpoint(student))
    assert final.config.progressive.steps == 1 and final.state["step"] == 12  # 3 rounds of 4
    assert final.config.progressive.teacher_solver == "dpmpp-2s"  # distill's default
    assert final.config.train.lr == 3e-4  # progressive's default (consistency's is 1e-3)
    # A run from before the field was distilled with the paper's DDIM, and resumes so.
    old = to_dict(final.config)
    del old["progressive"]["teacher_solver"]
    assert run_config_from_dict(old).progressive.teacher_solver == "ddim"
    # Round 3's teacher is round 2's student: the EMA weights written at the round's start.
    round2 = load_checkpoint(student / "model_steps_2.safetensors").networks["ema"]
    assert_bitwise_equal(final.networks["teacher"], round2)
    # ... and the students moved away from the first teacher.
    first = load_checkpoint(teacher).sampling_weights
    assert not all(torch.equal(first[k], round2[k]) for k in first)


def test_a_student_samples_with_ddim_in_its_steps(student, tmp_path, capsys):
    for n in (4, 1):
        out = tmp_path / f"s{n}.png"
        ckpt = str(student / f"model_steps_{n}.safetensors")
        assert main(["sample", "--checkpoint", ckpt, "--num-images", "8", "--out", str(out)]) == 0
        assert f"ddim, {n} steps, guidance 2" in capsys.readouterr().out
        assert out.is_file()
    # Its one evaluation per step, unclipped: what its plan does for it, by hand.
    loaded = load_model(student / "model_steps_1.safetensors", "cpu")
    from difflab.kinds import plan_sampling
    from difflab.sampling import SamplingRequest, execute

    calls = []
    plan = plan_sampling(loaded, SamplingRequest(num_images=4, seed=0))
    assert (plan.sampler, plan.clip_x0, plan.labels.tolist()) == ("ddim", False, [0, 1, 2, 3])
    x = execute(loaded, plan, callback=calls.append)
    assert [c["t"] for c in calls] == [49] and x.shape == (4, 3, 8, 8)


def test_a_student_is_scored_by_evaluate(student, cache, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFLAB_CACHE", str(cache))
    out = tmp_path / "m.json"
    argv = ["evaluate", "--checkpoint", str(student / "model_steps_2.safetensors"),
            "--num-samples", "40", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["setup"]["sampler"] == "ddim" and report["setup"]["steps"] == 2
    assert math.isfinite(report["metrics"]["fid"])


def test_progressive_distillation_resumes_bitwise_across_a_change_of_teacher(
    teacher, student, tmp_path, capsys
):
    # Stopped at step 6, inside round 2 (steps 5-8); the resume must swap the teacher at step 9
    # and write each round's student exactly as the uninterrupted run did.
    run = tmp_path / "stopped"
    argv = ["distill", "--teacher", str(teacher), *PD, "--guidance", "2", "--out", str(run)]
    capsys.readouterr()
    assert main([*argv, "--max-steps", "6"]) == 0
    assert load_checkpoint(latest_checkpoint(run)).state["step"] == 6
    said = capsys.readouterr().out  # the round it stopped in, its student, and how to go on
    assert f"difflab sample --checkpoint {run / 'model_steps_2.safetensors'}" in said
    assert "stopped before the last round: after 6 of 12 steps, in the round of the 2-step" in said
    assert f"continue with: difflab distill --resume {run}" in said
    assert main(["distill", "--resume", str(run), "--no-progress", "--max-steps", "12"]) == 0
    said = capsys.readouterr().out
    assert f"--checkpoint {run / 'model_steps_1.safetensors'}" in said
    assert "before the last round" not in said
    for name in ["model_final.safetensors", "model_steps_1.safetensors",
                 "model_steps_2.safetensors", "model_steps_4.safetensors"]:  # fmt: skip
        assert_bitwise_equal(tensors(student / name), tensors(run / name))


def test_bad_progressive_input_is_one_line(teacher, student, tmp_path, capsys):
    final = str(student / "model_final.safetensors")
    out = tmp_path / "out"
    capsys.readouterr()
    cases = [
        (["distill", "--teacher", str(teacher), *PD, "--start-steps", "6"], "times a power of 2"),
        (["distill", "--teacher", str(teacher), *PD, "--start-steps", "64"], "within the teacher's 50"),
        (["distill", "--teacher", str(teacher), *PD, "--intervals", "8"],
         "--intervals is a flag of --method consistency; this run is --method progressive"),
        (["sample", "--checkpoint", final, "--guidance", "5"], "distilled at guidance 2"),
        (["sample", "--checkpoint", final, "--steps", "51"], "exceeds the model's 50 timesteps"),
    ]  # fmt: skip
    for argv, match in cases:
        full = [*argv, "--out", str(out if argv[0] == "distill" else out / "a.png")]
        assert main(full) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert match in err, (argv, err)
        assert not out.exists(), argv


def test_the_students_ema_warms_up_anew_each_round(student):
    """Each round trains a new student from new weights: its EMA's warm-up counts from the
    round's start, not from the run's, or the average would hold the previous round's weights."""
    from difflab.objectives.progressive import ProgressiveDistillation

    obj = ProgressiveDistillation.__new__(ProgressiveDistillation)
    obj.config = load_checkpoint(student / "model_steps_1.safetensors").config
    rounds = obj.config.progressive.round_steps
    for round_index, step in [(0, 0), (0, 3), (1, 4), (1, 7), (2, 9)]:
        obj.round = round_index
        assert obj.ema_step(step) == step - round_index * rounds


def test_cosine_decay_restarts_the_learning_rate_each_round(student):
    """--lr-decay cosine: each round warms up and decays to 10% of the peak on its own clock,
    because each round trains a new student towards a new teacher; constant keeps the run's."""
    from difflab.objectives.progressive import ProgressiveDistillation
    from difflab.training import lr_at

    obj = ProgressiveDistillation.__new__(ProgressiveDistillation)
    config = load_checkpoint(student / "model_steps_1.safetensors").config
    pc = replace(config.progressive, round_steps=100)
    cosine = replace(config.train, lr=1e-3, lr_decay="cosine", warmup_steps=10)
    obj.config = replace(config, progressive=pc, train=cosine)
    obj.plan = round_plan(pc.start_steps, pc.steps, config.diffusion.timesteps)
    total = len(obj.plan) * pc.round_steps
    lr = []
    for step in range(total):
        clock, length = obj.lr_clock(step, total)
        lr.append(lr_at(clock, cosine, length))
    for start in (0, 100, 200):  # warm-up from lr / 10, the peak, then 10% at the round's end
        assert lr[start] == pytest.approx(1e-4)
        assert lr[start + 10] == pytest.approx(1e-3)
        end = 1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 89 / 90))
        assert lr[start + 99] == pytest.approx(end)
        decay = lr[start + 10 : start + 100]
        assert all(a > b for a, b in itertools.pairwise(decay))
    constant = replace(config.train, lr=1e-3, lr_decay="constant", warmup_steps=10)
    obj.config = replace(config, progressive=pc, train=constant)
    for step in (0, 5, 50, 150, 299):
        assert obj.lr_clock(step, total) == (step, total)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_x_tilde_makes_one_ddim_step_land_where_the_teacher_did(schedule):
    sched = make_schedule(schedule, 1000)
    (alpha, sigma), grid = alpha_sigma(sched, "cpu"), step_grid(sched, 4, "cpu")
    assert grid.tolist()[-1] == 1000 and len(grid) == 5  # four code times, then the data
    gen = torch.Generator().manual_seed(0)
    k = torch.tensor([0, 1, 2, 3])
    t, t_end = grid[k], grid[k + 1]
    z_t, z_end = torch.randn((4, 1, 3, 3), generator=gen), torch.randn((4, 1, 3, 3), generator=gen)
    x0 = x0_target(z_t, z_end, t, t_end, alpha, sigma).double()
    a_t, s_t = alpha[t].view(-1, 1, 1, 1), sigma[t].view(-1, 1, 1, 1)
    a_e, s_e = alpha[t_end].view(-1, 1, 1, 1), sigma[t_end].view(-1, 1, 1, 1)
    eps = (z_t.double() - a_t.double() * x0) / s_t.double()  # DDIM's eps for that x0
    landed = a_e.double() * x0 + s_e.double() * eps  # Song et al. 2021, Eq. 12, eta = 0
    torch.testing.assert_close(landed, z_end.double(), rtol=0, atol=1e-4)
    torch.testing.assert_close(x0[3], z_end[3].double())  # the last step's target is its end


def gaussian_v_model(std: float, sched):
    """The exact v-predicting denoiser of data N(0, std^2 I): E[x0 | x_t] is a scaling of x_t."""
    alpha_bar = torch.as_tensor(sched.alpha_bar, dtype=torch.float64)

    def model(x_t: torch.Tensor, t: torch.Tensor, y: None) -> torch.Tensor:
        a = alpha_bar[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - alpha_bar[t]).sqrt().view(-1, 1, 1, 1)
        x0 = a * std**2 / (a**2 * std**2 + s**2) * x_t
        eps = (x_t - a * x0) / s
        return a * eps - s * x0

    return model


def test_the_dmd_direction_vanishes_when_the_two_scores_agree():
    sched = make_schedule("cosine", 100)
    x = torch.randn(8, 1, 4, 4, dtype=torch.float64)
    t, noise = torch.randint(1, 100, (8,)), torch.randn(8, 1, 4, 4, dtype=torch.float64)
    same = gaussian_v_model(0.7, sched)
    assert torch.equal(dmd_direction(x, t, noise, same, same, sched, "v"), torch.zeros_like(x))


@pytest.mark.parametrize("start", [1.6, 0.5])
def test_dmd_steps_move_a_gaussian_generator_onto_the_real_distribution(start):
    """Yin et al. 2024's gradient with exact scores: a generator x = a z, z ~ N(0, I), against
    real data N(0, 1), with the fake score that of N(0, a^2) (the one a fake model trained to
    convergence on the generator's images would give). Descent on the DMD loss drives a to 1,
    from either side, and every step moves it the right way."""
    sched = make_schedule("cosine", 100)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(512, 1, 4, 4, generator=gen, dtype=torch.float64)
    a = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    real, history = gaussian_v_model(1.0, sched), [start]
    for _ in range(60):
        x = a * z
        t = torch.randint(2, 98, (512,), generator=gen)
        noise = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        fake = gaussian_v_model(a.item(), sched)
        direction = dmd_direction(x, t, noise, real, fake, sched, "v")
        loss = 0.5 * (x - (x - direction).detach()).pow(2).mean()
        (grad,) = torch.autograd.grad(loss, a)
        with torch.no_grad():
            a -= 0.5 * grad
        history.append(a.item())
    assert abs(history[-1] - 1.0) < 0.02
    steps = torch.tensor(history).diff()
    assert ((steps < 0) if start > 1 else (steps > 0))[:20].all()


# --- the distribution-matching stage (--dmd-steps) -------------------------------------------------

DMD = [*PD, "--dmd-steps", "3", "--dmd-warmup", "2", "--dmd-average", "0"]  # the EMA


@pytest.fixture(scope="module")
def plain_teacher(tmp_path_factory):
    """A tiny unconditional emoji model: the stage refuses class-conditional teachers."""
    from test_train_robust import TINY

    run = tmp_path_factory.mktemp("plain") / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    return run / "model_final.safetensors"


@pytest.fixture(scope="module")
def dmd_run(plain_teacher, tmp_path_factory):
    run = tmp_path_factory.mktemp("dmd") / "run"
    assert main(["distill", "--teacher", str(plain_teacher), *DMD, "--out", str(run)]) == 0
    return run


def test_the_dmd_stage_follows_the_rounds_and_writes_a_student_of_its_own(
    plain_teacher, dmd_run, tmp_path
):
    # The rounds are those of a run without the stage, bit for bit: the stage draws nothing
    # before it starts, and its fake score does not move.
    plain = tmp_path / "plain"
    assert main(["distill", "--teacher", str(plain_teacher), *PD, "--out", str(plain)]) == 0
    for n in (4, 2, 1):
        name = f"model_steps_{n}.safetensors"
        assert_bitwise_equal(tensors(plain / name), tensors(dmd_run / name))
    final = load_checkpoint(latest_checkpoint(dmd_run))
    assert final.state["step"] == 12 + 2 + 3  # three rounds of 4, the warm-up, the DMD steps
    first = load_checkpoint(plain_teacher).sampling_weights
    assert_bitwise_equal(final.networks["real"], first)  # the real score: the first teacher
    assert not all(torch.equal(first[k], final.networks["fake"][k]) for k in first)
    # The stage goes on with the last round's loss: its teacher stays the 2-step student.
    last_teacher = load_checkpoint(dmd_run / "model_steps_2.safetensors").networks["ema"]
    assert_bitwise_equal(final.networks["teacher"], last_teacher)
    # Its student started from the 1-step student's EMA, moved, and knows what it is.
    dmd = load_checkpoint(dmd_run / "model_steps_1_dmd.safetensors")
    pc = dmd.config.progressive
    assert pc.steps == 1 and (pc.dmd_steps, pc.dmd_warmup, pc.dmd_weight) == (3, 2, 0.2)
    start = load_checkpoint(dmd_run / "model_steps_1.safetensors").networks["ema"]
    assert not all(torch.equal(start[k], dmd.networks["ema"][k]) for k in start)
    # The student did not move in the warm-up, and its Adam moments started afresh at DMD's
    # first step: three steps since (the fake score's optimiser took all five of the stage).
    steps_taken = {name: {int(v["step"]) for v in opt["state"].values()}
                   for name, opt in final.optimizers.items()}  # fmt: skip
    assert steps_taken == {"optim": {3}, "fake_optim": {5}}
    log = [json.loads(x) for x in (dmd_run / "metrics.jsonl").read_text().splitlines()]
    # The fake score's phase runs, and is logged, in the stage only.
    steps = [r for r in log if r.get("loss") is not None]
    assert [r["step"] for r in steps if "loss_fake" in r] == [
        r["step"] for r in steps if r["step"] > 12
    ]
    assert all(r["loss_fake"] > 0 for r in steps if "loss_fake" in r)


def test_the_dmd_student_can_be_sampled_as_the_mean_of_its_last_steps(
    plain_teacher, dmd_run, tmp_path
):
    # --dmd-average 2: the weights sampled ("ema") are the plain mean of the student's weights
    # after its 16th and 17th steps (the stage's last two); the student itself trains as in the
    # run without it. The run stops after step 16 and resumes: the mean is in the checkpoint.
    run = tmp_path / "mean"
    argv = ["distill", "--teacher", str(plain_teacher), *DMD, "--dmd-average", "2"]
    assert main([*argv, "--max-steps", "16", "--out", str(run)]) == 0
    after_16 = load_checkpoint(latest_checkpoint(run)).networks["model"]
    assert main(["distill", "--resume", str(run), "--no-progress", "--max-steps", "17"]) == 0
    final = load_checkpoint(latest_checkpoint(run))
    assert final.config.progressive.dmd_average == 2
    plain = load_checkpoint(latest_checkpoint(dmd_run))
    assert_bitwise_equal(final.networks["model"], plain.networks["model"])
    after_17 = final.networks["model"]
    for name, mean in final.networks["ema"].items():
        torch.testing.assert_close(mean, (after_16[name] + after_17[name]) / 2, rtol=1e-6,
                                   atol=1e-7, msg=name)  # fmt: skip
    assert not all(
        torch.equal(plain.networks["ema"][k], final.networks["ema"][k]) for k in after_17
    )
    written = load_checkpoint(run / "model_steps_1_dmd.safetensors")
    assert_bitwise_equal(written.sampling_weights, final.networks["ema"])


@pytest.mark.slow
def test_two_processes_run_the_dmd_stage_as_one_does(plain_teacher, dmd_run, tmp_path):
    # Every process draws the global batch's noise and takes its share; the student's chain, the
    # DMD loss and the fake score's phase (skipped in the rounds) are averaged over the two.
    from test_train_robust import assert_matches_one_process, on_two_processes

    run = tmp_path / "ddp"
    on_two_processes(["distill", "--teacher", str(plain_teacher), *DMD, "--out", str(run)])
    multi, single = tensors(latest_checkpoint(run)), tensors(latest_checkpoint(dmd_run))
    config = load_checkpoint(plain_teacher).config
    names = [name for name, _ in UNet(config.model).named_parameters()]  # the optimiser's order
    assert_matches_one_process(multi, single, names)
    for name in names:  # the fake score (no EMA), the last round's teacher, the first teacher
        for net in ("fake", "teacher"):
            torch.testing.assert_close(multi[f"{net}.{name}"], single[f"{net}.{name}"], rtol=1e-4,
                                       atol=1e-5, msg=f"{net}.{name}")  # fmt: skip
        assert torch.equal(multi[f"real.{name}"], single[f"real.{name}"])


def test_the_dmd_student_samples_in_its_steps(dmd_run, tmp_path, capsys):
    out = tmp_path / "s.png"
    ckpt = str(dmd_run / "model_steps_1_dmd.safetensors")
    assert main(["sample", "--checkpoint", ckpt, "--num-images", "4", "--out", str(out)]) == 0
    assert "ddim, 1 steps" in capsys.readouterr().out and out.is_file()


def test_the_dmd_stage_resumes_bitwise(plain_teacher, dmd_run, tmp_path, capsys):
    run = tmp_path / "stopped"
    argv = ["distill", "--teacher", str(plain_teacher), *DMD, "--out", str(run)]
    capsys.readouterr()
    assert main([*argv, "--max-steps", "15"]) == 0  # in the DMD steps, after the warm-up
    said = capsys.readouterr().out
    assert "stopped in the distribution-matching stage: after 15 of 17 steps" in said
    assert f"--checkpoint {run / 'model_steps_1_dmd.safetensors'}" in said
    assert main(["distill", "--resume", str(run), "--no-progress", "--max-steps", "17"]) == 0
    said = capsys.readouterr().out
    assert f"--checkpoint {run / 'model_steps_1_dmd.safetensors'}" in said
    assert "stopped in the" not in said
    for name in ["model_final.safetensors", "model_steps_1_dmd.safetensors",
                 "model_steps_1.safetensors"]:  # fmt: skip
        assert_bitwise_equal(tensors(dmd_run / name), tensors(run / name))


def test_bad_dmd_input_is_one_line(teacher, plain_teacher, tmp_path, capsys):
    out = tmp_path / "out"
    capsys.readouterr()
    cases = [
        ([str(teacher), *DMD], "--dmd-steps needs an unconditional teacher"),
        ([str(plain_teacher), *DMD, "--dmd-weight", "0"], "--dmd-weight must be a finite number > 0"),
        ([str(plain_teacher), *PD, "--dmd-steps", "-1"], "--dmd-steps and --dmd-warmup must be >= 0"),
        ([str(plain_teacher), *DMD, "--dmd-average", "4"],
         "--dmd-average must lie in 0..3 (--dmd-steps), got 4"),
        ([str(plain_teacher), "--method", "consistency", "--dmd-steps", "3"],
         "--dmd-steps is a flag of --method progressive; this run is --method consistency"),
    ]  # fmt: skip
    for argv, match in cases:
        assert main(["distill", "--teacher", *argv, "--out", str(out)]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert match in err, (argv, err)
        assert not out.exists(), argv


# --- difflab distill with no --method: the kind table's measured route -----------------------------


def test_the_distill_route_is_the_one_docs_few_step_measured(plain_teacher, teacher):
    plain, cond = load_checkpoint(plain_teacher).config, load_checkpoint(teacher).config
    four, two, one = (distill_route(plain, n) for n in (4, 2, 1))
    assert four.method == two.method == one.method == "progressive"
    stage = {"dmd_steps": 300, "dmd_warmup": 100, "dmd_average": 200}
    first = {"start_steps": 16, "teacher_solver": "dpmpp-2s"}
    assert four.settings == {"steps": 4, **first, **stage, "dmd_weight": 0.2}
    assert two.settings == {"steps": 2, **first, **stage, "dmd_weight": 0.3}
    assert one.settings == {"steps": 1, **first}  # the stage is not measured at 1 step
    assert "3.67" in four.evidence and "4.59" in two.evidence and "9.60" in one.evidence
    # The stage's fake score has no classes: a conditional teacher gets the rounds alone
    assert distill_route(cond, 4).settings == {"steps": 4, **first}
    assert distill_route(plain, 8).settings["start_steps"] == 16  # one round
    assert distill_route(plain, 3).settings["start_steps"] == 24  # 3 times a power of 2


@pytest.mark.parametrize("steps", [2, 1])
def test_distill_with_no_method_runs_the_route_the_table_names(
    plain_teacher, steps, tmp_path, capsys
):
    run = tmp_path / "run"
    argv = ["distill", "--teacher", str(plain_teacher), "--steps", str(steps), "--max-steps", "1",
            "--batch-size", "16", "--no-progress", "--device", "cpu", "--sample-every", "0",
            "--num-preview", "8", "--out", str(run)]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    route = distill_route(load_checkpoint(plain_teacher).config, steps)
    config = load_checkpoint(latest_checkpoint(run)).config
    assert config.kind == route.method
    progressive = config.section(ProgressiveConfig)
    assert {name: getattr(progressive, name) for name in route.settings} == route.settings
    said = capsys.readouterr().out
    assert route.evidence in said and "--method chooses another" in said
    # A flag given wins over the route, and the stage's average follows a shorter stage
    argv[argv.index(str(run))] = str(tmp_path / "short")
    assert main([*argv, "--dmd-steps", "30", "--dmd-weight", "0.5"]) == 0
    short = load_checkpoint(latest_checkpoint(tmp_path / "short")).config
    progressive = short.section(ProgressiveConfig)
    assert (progressive.dmd_steps, progressive.dmd_weight, progressive.dmd_average) == (30, 0.5, 20)
    assert progressive.teacher_solver == "dpmpp-2s" and progressive.start_steps == 16
