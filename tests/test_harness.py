"""The harness is generic: a toy objective (tests/toy_objective.py: two networks, two phases, two
kinds of optimiser, an EMA copy, a generator and a counter of its own, dropout) gets bitwise-exact
resume, Ctrl-C, SIGKILL safety and the non-finite guard with no code of its own for them."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from difflab import viz
from difflab.checkpoint import load_checkpoint
from difflab.device import default_channels_last
from difflab.training import Context, TrainingError, fit, latest_checkpoint, lr_at, run_checkpoints
from test_train_robust import assert_bitwise_equal, records, tensors
from toy_objective import NUM_POINTS, ToyObjective, toy_config, train_toy

TOY = Path(__file__).with_name("toy_objective.py")


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "whole"
    result = train_toy(out, toy_config())
    assert result.steps == 9  # 3 epochs of 40 points in batches of 16: 3 steps each
    return out


def test_the_checkpoint_holds_everything_the_objective_declares(uninterrupted):
    ckpt = load_checkpoint(uninterrupted / "checkpoints/epoch_003.safetensors")
    assert sorted(ckpt.networks) == ["critic", "mlp", "mlp_ema"]
    assert sorted(ckpt.optimizers) == ["adam", "sgd"]
    assert "momentum_buffer" in ckpt.optimizers["sgd"]["state"][0]  # SGD's own state
    assert {"data_epoch_start", "jitter", "torch_cpu"} <= set(ckpt.rng)
    assert ckpt.state["objective"] == {"points_seen": 3 * NUM_POINTS}
    assert ckpt.state["step"] == 9 and ckpt.state["epoch"] == 3
    # The EMA copy moved away from the weights it averages, and both are finite.
    mlp, ema = ckpt.networks["mlp"], ckpt.networks["mlp_ema"]
    assert all(torch.isfinite(v).all() for v in [*mlp.values(), *ema.values()])
    assert not torch.equal(mlp["0.weight"], ema["0.weight"])


def test_two_phases_are_logged_each_and_as_a_total(uninterrupted):
    lines = [r for r in records(uninterrupted) if "loss" in r]
    assert [r["step"] for r in lines][-1] == 9
    for r in lines:
        assert r["loss"] == pytest.approx(r["loss_regress"] + r["loss_critic"])
        cfg = toy_config().train
        assert r["lr_regress"] == pytest.approx(lr_at(r["step"] - 1, cfg, 9))
        assert r["lr_critic"] == pytest.approx(lr_at(r["step"] - 1, cfg, 9, cfg.lr / 2))
    assert (uninterrupted / "training_loss.png").stat().st_size > 0
    # The harness's report: its summary and the loss curve, nothing of diffusion's.
    report = (uninterrupted / "report.html").read_text()
    assert "training_loss.png" in report and "epochs completed" in report
    assert "<th>prediction</th>" not in report and "forward_process.png" not in report


def test_a_phase_whose_loss_is_none_takes_no_update_and_logs_nothing(tmp_path):
    run = tmp_path / "late_critic"
    train_toy(run, toy_config(), critic_from=4)  # the critic learns from the 5th step on
    early = load_checkpoint(run / "checkpoints/epoch_001.safetensors")  # after step 3
    assert early.optimizers["sgd"]["state"] == {}  # no SGD step yet: no momentum buffer
    torch.manual_seed(toy_config().train.seed)  # the harness's seed before the objective
    initial = ToyObjective(toy_config(), Context(torch.device("cpu"), torch.contiguous_format))
    assert_bitwise_equal(early.networks["critic"], initial.networks["critic"].state_dict())
    lines = [r for r in records(run) if "loss" in r]
    assert [("loss_critic" in r, "lr_critic" in r) for r in lines] == [(False, False)] * 4 + [
        (True, True)
    ] * 5  # fmt: skip
    for r in lines:  # the total counts the phases that ran
        assert r["loss"] == pytest.approx(r["loss_regress"] + r.get("loss_critic", 0.0))
    late = load_checkpoint(latest_checkpoint(run))  # from step 5 on, the critic learns
    assert late.optimizers["sgd"]["state"] != {}
    assert not torch.equal(late.networks["critic"]["weight"], early.networks["critic"]["weight"])


def test_stop_and_resume_the_toy_gives_bitwise_the_same_run(uninterrupted, tmp_path):
    run = tmp_path / "stopped"
    train_toy(run, toy_config(max_steps=2))  # inside epoch 1
    assert (run / "checkpoints/epoch_000_step_000002.safetensors").is_file()
    train_toy(run, toy_config(max_steps=7), resume=True)  # inside epoch 3
    result = train_toy(run, toy_config(), resume=True)
    assert result.steps == 9
    for name in ["model_final.safetensors", "checkpoints/epoch_003.safetensors"]:
        assert_bitwise_equal(tensors(uninterrupted / name), tensors(run / name))
    whole = load_checkpoint(uninterrupted / "checkpoints/epoch_003.safetensors").state
    resumed = load_checkpoint(run / "checkpoints/epoch_003.safetensors").state
    assert resumed["objective"] == whole["objective"]  # the objective's own counter too

    def losses(r):
        return [(x["step"], x["loss_regress"], x["loss_critic"]) for x in records(r) if "loss" in x]

    # Every step logged (log_every 1): the same losses at the same steps, each once.
    assert losses(run) == losses(uninterrupted)


def test_a_nonfinite_phase_stops_the_toy_naming_it(tmp_path):
    run = tmp_path / "nan"
    with pytest.raises(TrainingError) as error:
        train_toy(run, toy_config(), nan_at_step=5)
    message = str(error.value)
    assert message.startswith("critic loss became nan at step 5; the last good checkpoint is ")
    assert message.endswith("Lower --lr or check the data (--skip-nonfinite skips such steps)")
    assert "epoch_001.safetensors" in message
    assert load_checkpoint(run / "checkpoints/epoch_001.safetensors").state["step"] == 3


def test_skip_nonfinite_skips_the_toy_step(tmp_path):
    run = tmp_path / "skip"
    train_toy(run, toy_config(skip_nonfinite=True), nan_at_step=5)
    ckpt = load_checkpoint(run / "checkpoints/epoch_003.safetensors")
    assert ckpt.state["skipped_steps"] == 1 and ckpt.state["step"] == 9
    assert all(torch.isfinite(v).all() for v in ckpt.networks["critic"].values())


def start_toy(run, *flags):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    stderr = open(run.parent / "stderr.txt", "w+")  # noqa: SIM115 (closed by the caller)
    argv = [sys.executable, str(TOY), str(run), "--epochs", "100000", *flags]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, env=env), stderr


def wait_for_epoch(run, epoch, proc, timeout=120.0):
    """Wait until the run has checkpointed ``epoch`` (toy epochs are fast: an older checkpoint
    may already be pruned when we look, so any later one will do)."""
    deadline = time.monotonic() + timeout
    while True:
        names = [p.name for p in run_checkpoints(run)] if (run / "checkpoints").is_dir() else []
        if any(int(name[6:9]) >= epoch for name in names):
            return
        assert proc.poll() is None, "training exited early"
        assert time.monotonic() < deadline, f"no checkpoint of epoch {epoch} appeared"
        time.sleep(0.02)


def test_ctrl_c_stops_the_toy_after_a_step_with_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc, stderr = start_toy(run)
    with stderr:
        wait_for_epoch(run, 5, proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        stderr.seek(0)
        err = stderr.read()
    assert "Traceback" not in err
    line = next(line for line in err.splitlines() if "saved" in line)
    assert line.startswith("toy train: stopped by SIGINT after step ")
    assert f"continue with: toy train --resume {run}" in line
    step = int(line.split("after step ")[1].split(";")[0])
    saved = Path(line.split("saved ")[1].split(";")[0])
    assert load_checkpoint(saved).state["step"] == step
    result = train_toy(run, toy_config(epochs=100000, max_steps=step + 2), resume=True)
    assert result.steps == step + 2


@pytest.mark.slow
def test_sigkill_leaves_the_toy_resumable(tmp_path):
    run = tmp_path / "run"
    proc, stderr = start_toy(run)
    with stderr:
        wait_for_epoch(run, 10, proc)
        time.sleep(0.3)  # in the middle of later steps and checkpoint writes
        proc.kill()
        assert proc.wait(timeout=60) == -signal.SIGKILL
    (run / "checkpoints/.epoch_999.x1y2.tmp.safetensors").write_bytes(b"partial")
    ckpts = run_checkpoints(run)
    steps = [load_checkpoint(p).state["step"] for p in ckpts]  # every one loads
    assert steps == sorted(steps) and 3 <= len(ckpts) <= 4
    points = load_checkpoint(ckpts[-1]).state["objective"]["points_seen"]
    assert points == steps[-1] // 3 * NUM_POINTS + steps[-1] % 3 * 16
    result = train_toy(run, toy_config(epochs=100000, max_steps=steps[-1] + 2), resume=True)
    assert result.steps == steps[-1] + 2


def test_the_default_memory_layout_follows_the_cpu_rule():
    capability = torch.backends.cpu.get_cpu_capability()
    assert default_channels_last(torch.device("cpu")) == capability.startswith("AVX512")
    assert default_channels_last(torch.device("cuda")) is False
    assert default_channels_last(torch.device("mps")) is False


def test_overwrite_replaces_every_output_of_the_earlier_run(tmp_path):
    run = tmp_path / "run"
    train_toy(run, toy_config(epochs=4, keep_checkpoints=10))
    assert (run / "checkpoints/epoch_004.safetensors").is_file()
    with pytest.raises(ValueError, match="already holds a run; pass --resume"):
        train_toy(run, toy_config(epochs=2))

    train_toy(run, toy_config(epochs=2), overwrite=True)
    # The old run's later checkpoint is gone: --resume continues the new run, not the old one.
    assert [p.name for p in run_checkpoints(run)] == [
        "epoch_001.safetensors",
        "epoch_002.safetensors",
    ]
    assert max(r["step"] for r in records(run)) == 6


class ToyWithPreviews(ToyObjective):
    """The toy objective with a preview grid: blank (one grey) or drawn (many greys)."""

    blank = True

    def preview(self, path: Path) -> Path:
        images = torch.full((4, 1, 8, 8), 0.2)
        if not self.blank:
            images = torch.linspace(-0.9, 1.0, 4 * 64).reshape(4, 1, 8, 8)
        return viz.save_grid(images, path)


@pytest.mark.parametrize("blank", [True, False])
def test_a_blank_preview_is_warned_about(tmp_path, capsys, blank):
    config = toy_config(sample_every=1)

    def make(ctx):
        objective = ToyWithPreviews(config, ctx)
        objective.blank = blank
        return objective

    fit(make, config, tmp_path / "run", progress=False, prog="toy train")
    warnings = [line for line in capsys.readouterr().err.splitlines() if "is blank" in line]
    if not blank:
        assert warnings == []
        return
    # Previews after epochs 1 and 2, and the final one: each is named, with its spread.
    assert len(warnings) == 3
    assert warnings[0].startswith("toy train: warning: the preview samples/epoch_001.png is blank")
    assert "its pixels span 0 of 255 grey levels" in warnings[0]


class RunsOutOfMemory(ToyObjective):
    """The toy objective whose second step fails the way an allocator does."""

    error: type = torch.OutOfMemoryError

    def loss(self, phase, batch, nets):
        if batch.step == 1:
            raise self.error(
                "DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"
            )
        return super().loss(phase, batch, nets)


@pytest.mark.parametrize("error", [torch.OutOfMemoryError, RuntimeError])
def test_out_of_memory_is_one_line_that_says_what_to_change(tmp_path, error):
    config = toy_config()

    def make(ctx):
        objective = RunsOutOfMemory(config, ctx)
        objective.error = error
        return objective

    with pytest.raises(TrainingError) as stop:
        fit(make, config, tmp_path / "run", progress=False, prog="toy train")
    message = str(stop.value)
    assert message.startswith("out of memory at step 2 on cpu with --batch-size 16: lower")
    assert "\n" not in message


def test_other_runtime_errors_pass_through(tmp_path):
    config = toy_config()

    class Broken(ToyObjective):
        def loss(self, phase, batch, nets):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as err:
        fit(lambda ctx: Broken(config, ctx), config, tmp_path / "run", progress=False)
    assert not isinstance(err.value, TrainingError)


def test_the_ema_warm_up_counts_the_objectives_step(tmp_path):
    """The harness asks the objective where its EMA's warm-up stands (``Objective.ema_step``):
    at step -1 the decay min(d, (1 + s) / (10 + s)) is 0, so the EMA is the raw network."""

    class FreshEveryStep(ToyObjective):
        def ema_step(self, step):
            return -1

    config = toy_config(max_steps=3)
    fit(lambda ctx: FreshEveryStep(config, ctx), config, tmp_path / "run", progress=False)
    nets = load_checkpoint(tmp_path / "run/model_final.safetensors").networks
    for name, weight in nets["mlp"].items():
        torch.testing.assert_close(nets["mlp_ema"][name], weight, rtol=0, atol=1e-7)
