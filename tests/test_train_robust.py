"""Training that survives and scales: exact resume, Ctrl-C and SIGKILL, NaN handling, precision,
two processes against one, and bad input to `difflab train`.

The runs are tiny (8x8 emoji, a U-Net of 8 and 16 channels) so that each takes about a second.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

import difflab.distributed
import difflab.kinds
import difflab.objectives.diffusion
import difflab.training
import difflab.training.harness
from difflab.checkpoint import load_checkpoint
from difflab.cli import main
from difflab.config import DiffusionConfig, TrainConfig
from difflab.models.unet import UNet

TINY = [
    "--data", "emoji", "--num-images", "40", "--batch-size", "16", "--epochs", "2",
    "--timesteps", "50", "--base-channels", "8", "--channel-mults", "1,2", "--no-progress",
    "--preview-steps", "2", "--seed", "1", "--device", "cpu",
]  # fmt: skip
# Everything that draws random numbers or depends on the step: dropout (the global RNG), label
# dropout (the noise generator), a cosine LR schedule with warm-up, and an uneven last batch.
EXACT = [*TINY, "--dropout", "0.1", "--conditional", "--lr-decay", "cosine", "--warmup-steps", "2"]


def tensors(path):
    return load_file(str(path))


def assert_bitwise_equal(a, b):
    assert sorted(a) == sorted(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("exact") / "uninterrupted"
    assert main(["train", *EXACT, "--out", str(out)]) == 0
    return out


# -------------------------------------------------------------------------------------------------
# Exact resume


def test_stop_and_resume_gives_bitwise_the_same_weights(uninterrupted, tmp_path, capsys):
    run = tmp_path / "stopped"
    # 3 steps per epoch: stop inside the first epoch, then inside the second, then run to the end.
    assert main(["train", *EXACT, "--max-steps", "2", "--out", str(run)]) == 0
    assert (run / "checkpoints/epoch_000_step_000002.safetensors").is_file()
    assert main(["train", "--resume", str(run), "--max-steps", "4", "--no-progress"]) == 0
    assert (run / "checkpoints/epoch_001_step_000004.safetensors").is_file()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # the reached limit lifts
    assert "trained 6 steps" in capsys.readouterr().out

    # Raw and EMA weights, optimiser moments and every random state, bit for bit.
    assert_bitwise_equal(
        tensors(uninterrupted / "model_final.safetensors"), tensors(run / "model_final.safetensors")
    )
    final = "checkpoints/epoch_002.safetensors"
    expected, got = tensors(uninterrupted / final), tensors(run / final)
    assert any(k.startswith("optim.") for k in got) and "rng.torch_cpu" in got
    assert_bitwise_equal(expected, got)
    # The log has each step once: lines written after a checkpoint are dropped on resume.
    steps = [r["step"] for r in records(run) if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 6


def test_checkpoint_from_before_the_new_state_keys_still_resumes(tmp_path, capsys):
    """Checkpoints written before rng.torch_cpu, skipped_steps and the new TrainConfig fields."""
    run = tmp_path / "old"
    assert main(["train", *TINY, "--max-steps", "2", "--out", str(run)]) == 0
    path = run / "checkpoints/epoch_000_step_000002.safetensors"
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    metadata = header["__metadata__"]
    config = json.loads(metadata["config"])
    new_fields = ["num_images", "max_steps", "precision", "channels_last", "compile",
                  "skip_nonfinite"]  # fmt: skip
    for name in new_fields:
        del config["train"][name]
    state = json.loads(metadata["state"])
    del state["skipped_steps"]
    old = {k: v for k, v in tensors(path).items() if k != "rng.torch_cpu"}
    save_file(old, str(path), metadata={**metadata, "config": json.dumps(config),
                                        "state": json.dumps(state)})  # fmt: skip

    # Without num_images the run goes on over the whole built-in set, as it did then.
    assert main(["train", "--resume", str(run), "--max-steps", "3", "--no-progress"]) == 0
    ckpt = load_checkpoint(run / "checkpoints/epoch_000_step_000003.safetensors")
    assert ckpt.state["step"] == 3 and ckpt.config.train.num_images is None
    assert all(torch.isfinite(v).all() for v in ckpt.model.values())


def test_keep_checkpoints_bounds_the_files(tmp_path, capsys):
    run = tmp_path / "keep"
    argv = ["train", *TINY, "--num-images", "16", "--epochs", "4", "--keep-checkpoints", "2",
            "--sample-every", "0", "--out", str(run)]  # fmt: skip
    assert main(argv) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch_003.safetensors",
        "epoch_004.safetensors",
    ]


# -------------------------------------------------------------------------------------------------
# Signals: Ctrl-C saves and exits 130; SIGKILL leaves the last checkpoint whole


def start_long_run(run):
    """A real `difflab train` process that would run for a long time, and its stderr file."""
    argv = [sys.executable, "-m", "difflab", "train", *TINY, "--num-images", "32",
            "--epochs", "1000", "--sample-every", "0", "--out", str(run)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    stderr = open(run.parent / "stderr.txt", "w+")  # noqa: SIM115 (closed by the caller)
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, env=env), stderr


def wait_for(path, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, "training exited early"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path, capsys):
    run = tmp_path / "run"
    proc, stderr = start_long_run(run)
    with stderr:
        wait_for(run / "checkpoints/epoch_002.safetensors", proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        stderr.seek(0)
        err = stderr.read()
    assert "Traceback" not in err
    line = next(line for line in err.splitlines() if "saved" in line)
    assert line.startswith("difflab train: stopped by SIGINT after step ")
    assert f"continue with: difflab train --resume {run}" in line
    saved = Path(line.split("saved ")[1].split(";")[0])
    step = int(line.split("after step ")[1].split(";")[0])
    ckpt = load_checkpoint(saved)  # whole, and at the step the message names
    assert saved.parent == run / "checkpoints" and ckpt.state["step"] == step

    assert main(["train", "--resume", str(run), "--max-steps", str(step + 2), "--no-progress"]) == 0
    assert f"trained {step + 2} steps" in capsys.readouterr().out


def deliver(signum):
    """Send ``signum`` to this process and let Python run its handler."""
    os.kill(os.getpid(), signum)
    time.sleep(0.01)  # handlers run between bytecodes of the main thread


@pytest.mark.parametrize("under_torchrun", [False, True])
def test_a_second_ctrl_c_stops_at_once_except_under_torchrun(under_torchrun, capsys):
    # Under torchrun one Ctrl-C arrives twice (the terminal's, and torchrun's copy of it).
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with difflab.training.harness.StopOnSignal(under_torchrun=under_torchrun) as stop:
        deliver(signal.SIGINT)
        assert stop.received == "SIGINT"
        if under_torchrun:
            deliver(signal.SIGINT)
            deliver(signal.SIGTERM)
        else:
            with pytest.raises(KeyboardInterrupt):
                deliver(signal.SIGINT)
        assert stop.received == "SIGINT"  # the first signal is the one reported
    assert capsys.readouterr().err.count("stopping after this step") == 1
    try:
        if under_torchrun:  # torchrun's copy may come after the loop stopped: the worker exits
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            deliver(signal.SIGINT)
        else:
            assert signal.getsignal(signal.SIGINT) is before[signal.SIGINT]  # put back
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@pytest.mark.slow
def test_sigkill_leaves_the_previous_checkpoint_intact_and_resume_works(tmp_path, capsys):
    run = tmp_path / "run"
    proc, stderr = start_long_run(run)
    with stderr:
        wait_for(run / "checkpoints/epoch_003.safetensors", proc)
        time.sleep(0.3)  # somewhere in the middle of later steps and checkpoint writes
        proc.kill()
        assert proc.wait(timeout=60) == -signal.SIGKILL
    # What a write killed half-way leaves behind: a temporary file, which resume must ignore.
    (run / "checkpoints/.epoch_999.x1y2.tmp.safetensors").write_bytes(b"partial")
    ckpts = difflab.training.run_checkpoints(run)
    assert 3 <= len(ckpts) <= 4  # --keep-checkpoints 3 (4 if killed between a save and a prune)
    steps = [load_checkpoint(p).state["step"] for p in ckpts]  # every one loads
    assert steps == sorted(steps)
    argv = ["train", "--resume", str(run), "--max-steps", str(steps[-1] + 2), "--no-progress"]
    assert main(argv) == 0
    assert f"trained {steps[-1] + 2} steps" in capsys.readouterr().out


# -------------------------------------------------------------------------------------------------
# Non-finite losses and gradients


class NanGradient(torch.autograd.Function):
    """Identity forward, NaN gradient backward: a finite loss whose gradient is poison."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def poison_step(monkeypatch, bad_step, kind):
    """Make the loss (or its gradient) of the 1-based step ``bad_step`` non-finite."""
    real_loss = difflab.objectives.diffusion.diffusion_loss
    calls = []

    def loss(*args, **kwargs):
        calls.append(1)
        per_sample = real_loss(*args, **kwargs)
        if len(calls) != bad_step:
            return per_sample
        return per_sample * float("nan") if kind == "loss" else NanGradient.apply(per_sample)

    monkeypatch.setattr(difflab.objectives.diffusion, "diffusion_loss", loss)


@pytest.mark.parametrize("kind", ["loss", "gradient norm"])
def test_nonfinite_step_stops_the_run_naming_the_step_and_checkpoint(
    kind, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    poison_step(monkeypatch, 5, kind)  # 3 steps per epoch: step 5 is after epoch_001
    assert main(["train", *TINY, "--sample-every", "0", "--out", str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    expected = f"{kind} became nan at step 5; the last good checkpoint is {run / 'checkpoints'}"
    assert expected in err and "epoch_001.safetensors" in err
    assert load_checkpoint(run / "checkpoints/epoch_001.safetensors").state["step"] == 3


@pytest.mark.parametrize("kind", ["loss", "gradient norm"])
def test_skip_nonfinite_skips_the_step_and_warns(kind, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    poison_step(monkeypatch, 2, kind)
    argv = ["train", *TINY, "--sample-every", "0", "--skip-nonfinite", "--out", str(run)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"warning: {kind} became nan at step 2; skipped the step (--skip-nonfinite)" in err
    ckpt = load_checkpoint(run / "checkpoints/epoch_002.safetensors")
    assert ckpt.state["step"] == 6 and ckpt.state["skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in [*ckpt.model.values(), *ckpt.ema.values()])
    assert records(run)[0]["skipped_steps"] == 1


def test_skipping_gives_up_when_every_step_is_nonfinite(tmp_path, monkeypatch, capsys):
    real_loss = difflab.objectives.diffusion.diffusion_loss
    monkeypatch.setattr(
        difflab.objectives.diffusion,
        "diffusion_loss",
        lambda *a, **k: real_loss(*a, **k) * float("inf"),
    )
    argv = ["train", *TINY, "--epochs", "10", "--skip-nonfinite", "--out", str(tmp_path / "r")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "loss became inf at step 11, 11 steps in a row" in err and "diverged" in err


# -------------------------------------------------------------------------------------------------
# Numerics and speed flags


def test_bf16_autocast_and_min_snr_gamma_train_on_cpu(tmp_path, capsys):
    runs = {}
    for name, flags in {
        "fp32": [],
        "bf16": ["--precision", "bf16", "--no-channels-last"],
        "plain": ["--min-snr-gamma", "0", "--prediction", "eps"],  # 0 = no weighting
    }.items():
        runs[name] = tmp_path / name
        argv = ["train", *TINY, "--max-steps", "1", *flags, "--out", str(runs[name])]
        assert main(argv) == 0, name
    first_loss = {name: records(run)[0]["loss"] for name, run in runs.items()}
    config = json.loads((runs["bf16"] / "config.json").read_text())
    assert config["train"]["precision"] == "bf16" and config["train"]["channels_last"] is False
    assert abs(first_loss["bf16"] - first_loss["fp32"]) < 0.05  # bf16 rounding, same batch
    assert first_loss["bf16"] != first_loss["fp32"]
    final = tensors(runs["bf16"] / "model_final.safetensors")
    assert all(v.dtype == torch.float32 for v in final.values())  # fp32 master weights
    default = json.loads((runs["fp32"] / "config.json").read_text())["diffusion"]
    assert default["min_snr_gamma"] == 5.0 and default["prediction"] == "v"  # the recipe
    plain = json.loads((runs["plain"] / "config.json").read_text())["diffusion"]
    assert plain["min_snr_gamma"] is None and plain["prediction"] == "eps"
    assert first_loss["plain"] != first_loss["fp32"]


@pytest.mark.slow
def test_compile_trains_like_eager(tmp_path, capsys):
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert main(["train", *TINY, "--max-steps", "2", "--out", str(eager)]) == 0
    assert main(["train", *TINY, "--max-steps", "2", "--compile", "--out", str(compiled)]) == 0
    final = "checkpoints/epoch_000_step_000002.safetensors"
    a, b = tensors(eager / final), tensors(compiled / final)
    assert sorted(a) == sorted(b)  # no "_orig_mod." prefixes from the compiled wrapper
    config = load_checkpoint(eager / final).config
    names = [name for name, _ in UNet(config.model).named_parameters()]
    assert_matches_one_process(b, a, names)  # fused kernels sum in another order


# -------------------------------------------------------------------------------------------------
# Two processes (gloo on CPU) against one


@contextlib.contextmanager
def rendezvous(world_size):
    """torchrun's meeting point without torchrun: this process hosts the store where the ranks
    meet (as torchrun's agent does), on a port the OS chose while binding it. Yields the
    environment that makes a process one rank (add RANK and LOCAL_RANK).

    A port found free and handed to rank 0 to bind later can be taken in between; rank 0 then
    fails and the other ranks wait for it for half an hour (one CI run in many).
    """
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    yield {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port),
           "WORLD_SIZE": str(world_size), "TORCHELASTIC_USE_AGENT_STORE": "True"}  # fmt: skip
    del store


def wait_all(procs, timeout=300):
    """The exit codes of ``procs``, the ranks of one run; when one fails or time runs out, the
    rest are killed (a rank whose partner died waits for it for half an hour)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        codes = [p.poll() for p in procs]
        if None not in codes or any(codes):  # all ended, or one failed
            break
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.kill()
    return [p.wait() for p in procs]


def run_forked(fn, args, nprocs=2, timeout=300):
    """``fn(rank, *args)`` in ``nprocs`` child processes; fails the test instead of hanging it.

    Spawned instead where this process has used CUDA (on a GPU machine an earlier test may
    have run backward there, with ``--device auto``): autograd's CUDA threads do not survive a
    fork, and the child's first backward fails (seen on an H200). Spawned too where this process
    runs another thread (an earlier test's progress bar leaves tqdm's monitor thread): a fork
    copies any lock such a thread holds at that moment, and nothing in the child releases it.
    That is the likely cause of a hang seen once in the full slow run, where the resumed
    two-process run below finished training and then never exited."""
    threads = threading.active_count() > 1
    method = "spawn" if torch.cuda.is_initialized() or threads else "fork"
    ctx = torch.multiprocessing.start_processes(
        fn, args=args, nprocs=nprocs, start_method=method, join=False
    )
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=max(0.0, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail(f"{nprocs} {method}ed processes still ran after {timeout} s")


# 21 images in batches of 8: the last batch of 5 splits 3 + 2 between the two processes.
DDP_TRAIN = TrainConfig(
    data="emoji", num_images=21, batch_size=8, epochs=2, seed=2, device="cpu", sample_every=0,
    preview_steps=2, num_preview=4, warmup_steps=2, lr_decay="cosine",
)  # fmt: skip
DDP_DIFFUSION = DiffusionConfig(timesteps=50)
DDP_MODEL = {"base_channels": 8, "channel_mults": (1, 2)}


def join_as_rank(rank, env):
    """Make this (forked) process one of a torchrun-style run: torchrun's environment."""
    os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def train_as_rank(rank, env, out, weights_dir):
    """One process of a torchrun-style run; writes its final weights for the test to compare."""
    join_as_rank(rank, env)
    config, dataset = difflab.objectives.diffusion.prepare_run(
        DDP_TRAIN, DDP_DIFFUSION, DDP_MODEL, conditional=True
    )
    result = difflab.kinds.train(config, dataset, out, progress=False)
    weights = {f"model.{k}": v for k, v in result.model.state_dict().items()}
    weights.update({f"ema.{k}": v for k, v in result.ema.state_dict().items()})
    save_file({k: v.contiguous() for k, v in weights.items()}, f"{weights_dir}/rank{rank}.st")


def assert_matches_one_process(multi, single, names):
    """Two processes against one (or compiled against eager), from checkpoints, to float
    tolerance: runs that differ only in the order of floating-point sums.

    The gradient moments of AdamW, sums of gradients, must agree closely. So must the weights,
    except where a gradient is zero in exact arithmetic (a per-channel shift that GroupNorm
    removes): there the computed gradient is rounding noise, its RMS below 1e-8 (the next
    smallest are ~1e-7), and Adam, dividing by that RMS, turns the noise into steps of +-lr
    whose sign depends on the order of the sums.
    """
    for i, name in enumerate(names):
        for moment in ("exp_avg", "exp_avg_sq"):
            key = f"optim.{i}.{moment}"
            torch.testing.assert_close(multi[key], single[key], rtol=1e-4, atol=1e-7, msg=key)
        signal = single[f"optim.{i}.exp_avg_sq"].sqrt() > 1e-8
        for key in (f"model.{name}", f"ema.{name}"):
            torch.testing.assert_close(
                multi[key][signal], single[key][signal], rtol=1e-5, atol=1e-5, msg=key
            )


def test_two_processes_stay_identical_and_match_one_process(tmp_path, capsys):
    # Forked, the processes start at once with difflab already imported (as DataLoader workers).
    with rendezvous(2) as env:
        run_forked(train_as_rank, (env, str(tmp_path / "ddp"), str(tmp_path)))
    rank0, rank1 = tensors(tmp_path / "rank0.st"), tensors(tmp_path / "rank1.st")
    assert_bitwise_equal(rank0, rank1)  # the same update on every process
    # Rank 0 wrote the files, with the weights every process holds.
    assert_bitwise_equal(tensors(tmp_path / "ddp/model_final.safetensors"), rank0)

    config, dataset = difflab.objectives.diffusion.prepare_run(
        DDP_TRAIN, DDP_DIFFUSION, DDP_MODEL, conditional=True
    )
    single = difflab.kinds.train(config, dataset, tmp_path / "single", progress=False)
    final = "checkpoints/epoch_002.safetensors"
    names = [name for name, _ in single.model.named_parameters()]  # the optimiser's order
    assert_matches_one_process(
        tensors(tmp_path / "ddp" / final), tensors(tmp_path / "single" / final), names
    )
    # One line per logged step (rank 0 alone logs), and the same losses as one process.
    multi_log, single_log = records(tmp_path / "ddp"), records(tmp_path / "single")
    assert [r["step"] for r in multi_log] == [r["step"] for r in single_log]
    for a, b in zip(multi_log, single_log, strict=True):
        if "loss" in a:
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def cli_as_rank(rank, env, argv):
    """``difflab ARGV`` as one process of a torchrun-style run."""
    join_as_rank(rank, env)
    assert main(argv) == 0


def on_two_processes(argv):
    with rendezvous(2) as env:
        run_forked(cli_as_rank, (env, argv))


@pytest.mark.slow
def test_two_processes_with_dropout_resume_bitwise(tmp_path):
    # 37 images in batches of 16: each epoch ends with 5 = 3 + 2, so the processes draw dropout
    # masks for different numbers of images and their random states part.
    argv = ["train", *EXACT, "--num-images", "37", "--epochs", "3"]
    on_two_processes([*argv, "--out", str(tmp_path / "whole")])
    run = tmp_path / "stopped"
    on_two_processes([*argv, "--max-steps", "5", "--out", str(run)])  # in the middle of epoch 2
    on_two_processes(["train", "--resume", str(run), "--no-progress"])
    final = "checkpoints/epoch_003.safetensors"
    assert_bitwise_equal(tensors(tmp_path / "whole" / final), tensors(run / final))


@pytest.mark.slow
def test_torchrun_command_line(tmp_path):
    """The README's command: `torchrun --standalone --nproc_per_node 2 -m difflab train ...`."""
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [str(torchrun), "--nproc_per_node", "2", "--standalone",
            "-m", "difflab", "train", *TINY, "--out", str(tmp_path / "ddp")]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("trained 6 steps") == 1  # rank 0 alone prints
    assert "x 2 processes" in result.stdout
    assert main(["train", *TINY, "--out", str(tmp_path / "single")]) == 0
    final = "checkpoints/epoch_002.safetensors"
    config = load_checkpoint(tmp_path / "single" / final).config
    names = [name for name, _ in UNet(config.model).named_parameters()]
    multi, single = tensors(tmp_path / "ddp" / final), tensors(tmp_path / "single" / final)
    assert_matches_one_process(multi, single, names)
    # Every process draws its own dropout masks (with the same draws, the states would be equal).
    rng = load_checkpoint(tmp_path / "ddp" / final).rng
    assert not torch.equal(rng["torch_cpu"], rng["torch_cpu_rank1"])


def test_an_error_of_every_process_is_reported_by_rank_0_alone(monkeypatch):
    error = difflab.training.TrainingError("loss became nan at step 2")
    with pytest.raises(difflab.training.TrainingError):
        difflab.distributed.raise_on_every_process(error)  # one process: no barrier to pass
    own = RuntimeError("CUDA out of memory")  # one rank's own trouble
    assert difflab.distributed.reported_here(error) and difflab.distributed.reported_here(own)
    monkeypatch.setenv("RANK", "1")
    assert not difflab.distributed.reported_here(error)
    assert difflab.distributed.reported_here(own)


@pytest.mark.slow
def test_an_error_under_torchrun_is_one_line(tmp_path):
    """A loss that turns NaN stops every process at the same step: one message, a clean exit."""
    argv = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2",
            "--standalone", "-m", "difflab", "train", *TINY, "--lr", "1e6",
            "--out", str(tmp_path / "ddp")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("difflab train: error: ")  # rank 0's
    assert " became " in errors[0]  # the loss (or the gradient norm) became nan or inf
    assert "exitcode  : 1 " in result.stderr  # what torchrun names as the cause: not a SIGABRT


@pytest.mark.slow
def test_ctrl_c_under_torchrun_saves_once_and_resumes(tmp_path, capsys):
    """A terminal's Ctrl-C reaches torchrun and its workers, and torchrun forwards it again."""
    run = tmp_path / "ddp"
    argv = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2",
            "--standalone", "-m", "difflab", "train", *TINY,
            "--num-images", "32", "--epochs", "1000", "--sample-every", "0", "--out", str(run)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "stderr.txt", "w+") as stderr:
        proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=stderr, env=env, start_new_session=True
        )
        try:
            wait_for(run / "checkpoints/epoch_002.safetensors", proc)
            os.killpg(proc.pid, signal.SIGINT)  # what the terminal does: the whole group
            proc.wait(timeout=60)  # torchrun's own exit status (1, after its SignalException)
        finally:
            if proc.poll() is None:  # the test failed: leave no training processes behind
                os.killpg(proc.pid, signal.SIGKILL)
        stderr.seek(0)
        err = stderr.read()
    assert "[rank" not in err, err[-2000:]  # no worker printed a traceback
    stops = [line for line in err.splitlines() if "saved" in line]
    assert len(stops) == 1, err[-2000:]  # rank 0 alone, once
    resume = (
        f"continue with: torchrun --standalone --nproc_per_node 2 -m difflab train --resume {run}"
    )
    assert resume in stops[0]
    step = int(stops[0].split("after step ")[1].split(";")[0])
    saved = Path(stops[0].split("saved ")[1].split(";")[0])
    assert load_checkpoint(saved).state["step"] == step
    assert main(["train", "--resume", str(run), "--max-steps", str(step + 2), "--no-progress"]) == 0
    assert f"trained {step + 2} steps" in capsys.readouterr().out


# -------------------------------------------------------------------------------------------------
# Bad input: one clear line, exit code 2, nothing half-written


def write_png(path, size, mode="RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), color=0).save(path)


def test_bad_input_to_train_is_one_clear_line(uninterrupted, tmp_path, capsys):
    unreadable = tmp_path / "unreadable"
    write_png(unreadable / "a.png", 8)
    (unreadable / "b.png").write_bytes(b"not a png at all")
    mixed = tmp_path / "mixed"
    write_png(mixed / "a.png", 8)
    write_png(mixed / "b.png", 16)
    empty = tmp_path / "empty"
    empty.mkdir()
    no_checkpoints = tmp_path / "no_checkpoints"
    (no_checkpoints / "checkpoints").mkdir(parents=True)
    # What a write killed half-way leaves behind is not a checkpoint.
    (no_checkpoints / "checkpoints/.epoch_001.k3j2.tmp.safetensors").write_bytes(b"partial")
    corrupt = tmp_path / "corrupt"
    (corrupt / "checkpoints").mkdir(parents=True)
    latest = uninterrupted / "checkpoints/epoch_002.safetensors"
    (corrupt / "checkpoints/epoch_002.safetensors").write_bytes(latest.read_bytes()[:5000])
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    finished = str(uninterrupted)
    out = str(tmp_path / "out")

    cases = [
        (["--max-steps", "0"], "argument --max-steps: expected a positive integer, got 0"),
        (["--epochs", "-1"], "argument --epochs: expected a positive integer, got -1"),
        (["--batch-size", "0"], "argument --batch-size: expected a positive integer, got 0"),
        (["--num-images", "-5"], "argument --num-images: expected a positive integer, got -5"),
        (["--lr", "0"], "argument --lr: expected a positive number, got 0"),
        (["--min-snr-gamma", "-1"], "argument --min-snr-gamma: expected a number >= 0"),
        (["--schedule", "quadratic"], "argument --schedule: invalid choice: 'quadratic'"),
        (["--precision", "fp64"], "argument --precision: invalid choice: 'fp64'"),
        (["--data", "shapes", "--image-size", "30", "--channel-mults", "1,2,2"],
         "image size 30 cannot be halved 2 times"),
        (["--data", "folder", "--data-dir", str(unreadable)], f"cannot read image {unreadable}"),
        (["--data", "folder", "--data-dir", str(mixed)], "is 16x16 but"),
        (["--data", "folder", "--data-dir", str(empty)], f"in --data-dir {empty} or its subfolders"),
        (["--out", str(a_file / "run")], f"cannot write to output directory {a_file / 'run'}"),
        (["--resume", str(no_checkpoints)], f"no checkpoints in {no_checkpoints / 'checkpoints'}"),
        (["--resume", str(tmp_path / "nowhere")], "is not a difflab run directory"),
        (["--resume", str(corrupt)], "epoch_002.safetensors is corrupt or truncated"),
        (["--resume", finished], "already finished its 2 epochs (step 6); pass --epochs N"),
        (["--resume", finished, "--max-steps", "3", "--epochs", "3"],
         "--max-steps 3 is already reached (the run is at step 6)"),
        (["--resume", finished, "--batch-size", "8"], "--batch-size cannot change when a run"),
    ]  # fmt: skip
    if not torch.cuda.is_available():
        cases.append((["--precision", "fp16"], "--precision fp16 needs a CUDA GPU"))
    if os.geteuid() != 0:  # root writes through any permission bits
        read_only = tmp_path / "read_only"
        read_only.mkdir(mode=0o500)
        cases.append((["--out", str(read_only)], f"cannot write to output directory {read_only}"))

    before = {p: p.stat().st_mtime_ns for p in Path(finished).rglob("*")}
    for flags, match in cases:
        argv = ["train", *flags] if "--resume" in flags else ["train", *TINY, "--out", out, *flags]
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse exits by itself
            code = exit_.code
        err = capsys.readouterr().err.strip()
        assert code == 2, (flags, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (flags, err)
        assert match in err, (flags, err)
        assert not Path(out).exists(), flags  # no half-made run directory
    assert not (a_file.parent / "a_file" / "run").exists()
    assert {p: p.stat().st_mtime_ns for p in Path(finished).rglob("*")} == before
