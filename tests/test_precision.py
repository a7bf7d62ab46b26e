"""--precision auto: the rule (device.auto_precision), what a run records of it, what resume does
with it, fp32 master state under bf16, bf16 exact resume, and benchmarks/precision.py.

The CPU is made to look like another one by replacing the probe the rule reads
(``difflab.device.cpu_flags``), and a GPU by replacing torch.cuda's answers: the rule is tested
on every branch on a machine that has none of them. Runs are test_train_robust's tiny ones.
"""

import json
import types
from pathlib import Path

import pytest
import torch

import difflab.device
import difflab.models.unet
from difflab.checkpoint import load_checkpoint
from difflab.cli import build_parser, main
from difflab.config import FlowConfig, MeanFlowConfig, RunConfig, TrainConfig
from difflab.device import CPU_FLAGS, auto_precision, check_precision, cpu_flags
from difflab.objectives.reflow import student_config
from difflab.training import settle_precision
from test_train_robust import EXACT, TINY, assert_bitwise_equal, tensors

SAPPHIRE_RAPIDS = {"amx_bf16", "amx_tile", "avx512_bf16"}  # Intel Xeon with AMX
ZEN4 = {"avx512_bf16"}  # AMD EPYC: AVX512-BF16, no AMX (this machine)
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    yield


def pretend_cpu(monkeypatch, flags):
    monkeypatch.setattr(difflab.device, "cpu_flags", lambda: frozenset(flags))


def first_line(capsys) -> str:
    return capsys.readouterr().out.splitlines()[0]


def train_config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())["train"]


# -------------------------------------------------------------------------------------------------
# The rule


@pytest.mark.parametrize(
    ("flags", "precision", "says"),
    [
        (SAPPHIRE_RAPIDS, "bf16", "has AMX bf16 matrix units"),
        ({"amx_bf16", "amx_tile"}, "bf16", "has AMX bf16 matrix units"),
        (ZEN4, "fp32", "has AVX512-BF16 but no AMX"),
        ({"amx_tile"}, "fp32", "has no AMX bf16"),  # tiles without their bf16 instructions
        (set(), "fp32", "has no AMX bf16"),
    ],
)
def test_on_a_cpu_auto_is_bf16_with_amx_and_fp32_without(monkeypatch, flags, precision, says):
    pretend_cpu(monkeypatch, flags)
    got, reason = auto_precision(CPU)
    assert got == precision
    assert reason.startswith("auto: this CPU ") and says in reason


def test_on_a_gpu_auto_is_fp32_as_measured(monkeypatch):
    # Whatever its tensor cores: the default network's bf16 step was slower on an H200
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    got, reason = auto_precision(torch.device("cuda"))
    assert got == "fp32" and "0.81x on an H200" in reason


def test_elsewhere_auto_is_fp32_which_the_device_can_do():
    mps = torch.device("mps")
    assert auto_precision(mps) == ("fp32", "auto: fp32 on mps")
    check_precision("auto", mps)
    check_precision("fp32", mps)
    with pytest.raises(ValueError, match="--precision bf16 runs on cpu or cuda, not mps"):
        check_precision("bf16", mps)


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads Linux's /proc/cpuinfo")
def test_the_cpu_probe_reads_what_proc_cpuinfo_says(monkeypatch):
    flags_line = next(
        line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
    )
    expected = set(flags_line.split(":", 1)[1].split()) & set(CPU_FLAGS)
    assert cpu_flags() == expected  # torch's probe
    monkeypatch.delattr(torch.cpu, "get_capabilities")  # an older torch: /proc/cpuinfo itself
    assert cpu_flags() == expected


def test_settling_records_what_auto_chose_or_given_and_is_idempotent(monkeypatch):
    pretend_cpu(monkeypatch, SAPPHIRE_RAPIDS)
    auto = settle_precision(TrainConfig(precision="auto"), CPU)
    assert (auto.precision, auto.precision_reason) == (
        "bf16",
        "auto: this CPU has AMX bf16 matrix units",
    )
    pretend_cpu(monkeypatch, ZEN4)
    assert settle_precision(auto, CPU) == auto  # settled once: another CPU changes nothing
    given = settle_precision(TrainConfig(precision="bf16"), CPU)
    assert (given.precision, given.precision_reason) == ("bf16", "given, not auto")


# -------------------------------------------------------------------------------------------------
# The commands


@pytest.mark.parametrize("command", ["train", "train-gan", "train-autoencoder", "distill"])
def test_every_trainer_defaults_to_auto_and_its_help_says_the_rule(command, capsys):
    assert build_parser().parse_args([command]).precision == "auto"
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    assert "--precision {auto,fp32,bf16,fp16}" in text
    assert "auto (default): bf16 autocast on a CPU with Intel AMX bf16 matrix units" in text
    assert "GPUs (0.81x on an H200" in text
    assert "AVX512-BF16 without AMX included" in text and "--resume keeps it" in text


def test_a_run_records_what_auto_chose_and_resume_keeps_it_on_another_cpu(
    tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    pretend_cpu(monkeypatch, SAPPHIRE_RAPIDS)
    assert main(["train", *TINY, "--max-steps", "1", "--out", str(run)]) == 0  # no --precision
    line = first_line(capsys)
    amx = "auto: this CPU has AMX bf16 matrix units"
    assert f"device cpu, bf16 ({amx})," in line
    assert (train_config(run)["precision"], train_config(run)["precision_reason"]) == ("bf16", amx)
    ckpt = load_checkpoint(run / "checkpoints/epoch_000_step_000001.safetensors")
    assert (ckpt.config.train.precision, ckpt.config.train.precision_reason) == ("bf16", amx)
    assert amx in (run / "report.html").read_text()  # the report shows the run's configuration

    # On a CPU whose rule says fp32, --resume goes on in the precision the run recorded...
    pretend_cpu(monkeypatch, ZEN4)
    assert main(["train", "--resume", str(run), "--max-steps", "2", "--no-progress"]) == 0
    assert f"bf16 ({amx})" in first_line(capsys)
    assert (train_config(run)["precision"], train_config(run)["precision_reason"]) == ("bf16", amx)
    # ... unless told: --precision fp32 by name, or --precision auto to choose here again.
    assert main(["train", "--resume", str(run), "--max-steps", "3", "--precision", "fp32",
                 "--no-progress"]) == 0  # fmt: skip
    assert "fp32 (given, not auto)" in first_line(capsys)
    assert train_config(run)["precision_reason"] == "given, not auto"
    assert main(["train", "--resume", str(run), "--max-steps", "4", "--precision", "auto",
                 "--no-progress"]) == 0  # fmt: skip
    assert "fp32 (auto: this CPU has AVX512-BF16 but no AMX)" in first_line(capsys)
    assert train_config(run)["precision"] == "fp32"


def test_the_numpy_backend_resolves_auto_to_its_float32(tmp_path, capsys):
    run = tmp_path / "numpy"
    argv = ["train", *TINY, "--backend", "numpy", "--max-steps", "1", "--out", str(run)]
    assert main(argv) == 0
    assert train_config(run)["precision"] == "fp32"
    assert train_config(run)["precision_reason"] == "auto: the NumPy backend is float32"


def test_meanflow_trains_in_fp32_whatever_auto_picks(monkeypatch):
    pretend_cpu(monkeypatch, SAPPHIRE_RAPIDS)  # where auto would pick bf16
    teacher = types.SimpleNamespace(config=RunConfig(flow=FlowConfig()), path="teacher")
    section = MeanFlowConfig(teacher="teacher", teacher_sha256="0" * 64)
    config = student_config(teacher, TrainConfig(precision="auto"), section)
    assert (config.train.precision, config.train.precision_reason) == (
        "fp32", "meanflow: torch.func.jvp runs in fp32",
    )  # fmt: skip
    assert settle_precision(config.train, CPU) == config.train
    with pytest.raises(ValueError, match="--precision bf16 is not available for --method meanflow"):
        student_config(teacher, TrainConfig(precision="bf16"), section)


def test_a_precision_the_device_cannot_do_is_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("fp16 needs CUDA, which this machine has")
    gan = ["--data", "emoji", "--num-images", "16", "--width", "8", "--device", "cpu"]
    for argv in (["train", *TINY], ["train-gan", *gan]):
        assert main([*argv, "--precision", "fp16", "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith("--precision fp16 needs a CUDA GPU (it scales the loss with a CUDA "
                            "GradScaler), not device cpu; use --precision bf16 or fp32")  # fmt: skip
        assert len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()  # refused before anything is written


# -------------------------------------------------------------------------------------------------
# bf16 training: fp32 master state, exact resume


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    """An uninterrupted bf16 run of test_train_robust's EXACT (6 steps), and the autocast state
    each U-Net forward of its training steps saw."""
    out = tmp_path_factory.mktemp("bf16") / "uninterrupted"
    seen = []
    forward = difflab.models.unet.UNet.forward

    def recording_forward(self, *args, **kwargs):
        if self.training:  # the training steps' forwards (previews sample in eval mode)
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return forward(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(difflab.models.unet.UNet, "forward", recording_forward)
        assert main(["train", *EXACT, "--precision", "bf16", "--out", str(out)]) == 0
    return out, seen


def test_bf16_keeps_weights_ema_and_adamw_moments_in_fp32(bf16_run):
    run, seen = bf16_run
    assert len(seen) == 6 and set(seen) == {(True, torch.bfloat16)}  # bf16 autocast, each step
    ckpt = load_checkpoint(run / "checkpoints/epoch_002.safetensors")
    assert ckpt.state["step"] == 6
    for name in ("model", "ema"):
        assert all(v.dtype == torch.float32 for v in ckpt.networks[name].values()), name
    moments = [s for opt in ckpt.optimizers.values() for s in opt["state"].values()]
    assert moments and all(
        s["exp_avg"].dtype == s["exp_avg_sq"].dtype == torch.float32 for s in moments
    )
    model, ema = ckpt.networks["model"], ckpt.networks["ema"]
    assert any(not torch.equal(model[k], ema[k]) for k in model)  # the EMA is its own average
    final = tensors(run / "model_final.safetensors")
    assert all(v.dtype == torch.float32 for v in final.values())


def test_bf16_stop_and_resume_gives_bitwise_the_same_weights(bf16_run, tmp_path, monkeypatch):
    uninterrupted, _ = bf16_run
    run = tmp_path / "stopped"
    # Started by auto on an AMX CPU, resumed twice where auto would pick fp32: bf16 throughout.
    pretend_cpu(monkeypatch, SAPPHIRE_RAPIDS)
    assert main(["train", *EXACT, "--max-steps", "2", "--out", str(run)]) == 0
    pretend_cpu(monkeypatch, ZEN4)
    assert main(["train", "--resume", str(run), "--max-steps", "4", "--no-progress"]) == 0
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert train_config(run)["precision"] == "bf16"
    assert_bitwise_equal(
        tensors(uninterrupted / "model_final.safetensors"), tensors(run / "model_final.safetensors")
    )
    final = "checkpoints/epoch_002.safetensors"
    got = tensors(run / final)
    assert any(k.startswith("optim.") for k in got) and any(k.startswith("ema.") for k in got)
    assert_bitwise_equal(tensors(uninterrupted / final), got)


# -------------------------------------------------------------------------------------------------
# The benchmark


def test_the_precision_benchmark_runs_and_reports_every_row(capsys):
    from conftest import load_benchmark_script

    bench = load_benchmark_script("precision")
    report = bench.main(["--quick", "--bases", "8,16"])
    assert json.loads(capsys.readouterr().out) == report
    assert report["auto_precision"]["precision"] == auto_precision(CPU)[0]
    assert report["cpu_flags"] == sorted(cpu_flags()) and report["cpu"]
    assert report["matmul"]["fp32_gflops"] > 0 and report["matmul"]["bf16_gflops"] > 0
    rows = report["train_step"]["by_base_channels"]
    assert list(rows) == ["8", "16"] and rows["8"]["parameters"] < rows["16"]["parameters"]
    for row in rows.values():
        assert row["bf16_vs_fp32"] == pytest.approx(
            row["bf16_images_per_s"] / row["fp32_images_per_s"], rel=0.01
        )
