"""The command line end to end: a tiny train -> checkpoint -> sample round trip, and bad input."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from difflab.cli import build_parser, main
from difflab.cli.flags import given_on_command_line

TINY = [
    "--data", "emoji", "--num-images", "64", "--epochs", "2", "--batch-size", "32",
    "--timesteps", "50", "--base-channels", "8", "--channel-mults", "1,2", "--no-progress",
    "--preview-steps", "5", "--sample-every", "1", "--seed", "3",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def decode(path):
    with Image.open(path) as img:
        img.load()
        return img


def test_train_writes_the_run_directory(tiny_run, capsys):
    for name in ["config.json", "metrics.jsonl", "training_loss.png", "forward_process.png",
                 "model_final.safetensors", "report.html", "samples/epoch_001.png",
                 "samples/epoch_002.png", "checkpoints/epoch_001.safetensors",
                 "checkpoints/epoch_002.safetensors"]:  # fmt: skip
        assert (tiny_run / name).is_file(), name
    for png in ["training_loss.png", "forward_process.png", "samples/epoch_002.png"]:
        assert decode(tiny_run / png).size[0] > 100
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["diffusion"]["timesteps"] == 50 and config["model"]["base_channels"] == 8
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch_end"] for r in records if "epoch_end" in r] == [1, 2]
    assert all(r["loss"] > 0 for r in records if "loss" in r)
    html = (tiny_run / "report.html").read_text()
    assert "samples/epoch_002.png" in html and "training_loss.png" in html


def test_sample_round_trip_is_reproducible(tiny_run, tmp_path, capsys):
    ckpt = str(tiny_run / "model_final.safetensors")
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    args = ["sample", "--checkpoint", ckpt, "--num-images", "6", "--seed", "5", "--sampler"]
    assert main([*args, "ddpm", "--out", str(a), "--show-intermediate"]) == 0
    assert main([*args, "ddpm", "--out", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()  # same seed, same images
    assert decode(a).size == decode(b).size
    assert decode(tmp_path / "a_intermediate.png").size[0] > decode(a).size[0]
    c = tmp_path / "c.png"
    assert main([*args, "ddim", "--steps", "10", "--out", str(c)]) == 0
    assert c.read_bytes() != a.read_bytes()
    # the default: 20 steps of dpmpp-2m-sde (docs/samplers.md: DDPM-1000's FID at 1/60 the time)
    default, sde = tmp_path / "default.png", tmp_path / "sde.png"
    assert main([*args[:-1], "--out", str(default)]) == 0
    assert main([*args, "dpmpp-2m-sde", "--steps", "20", "--out", str(sde)]) == 0
    assert default.read_bytes() == sde.read_bytes() != a.read_bytes()


def test_visualize(tmp_path):
    assert (
        main(["visualize", "--data", "shapes", "--timesteps", "200", "--out", str(tmp_path)]) == 0
    )
    grid = decode(tmp_path / "forward_process.png")
    assert grid.size[0] > grid.size[1]  # 8 columns of t, 6 rows of images
    decode(tmp_path / "schedules.png")


def test_resume_continues_to_more_epochs(tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["train", "--resume", str(run), "--epochs", "3", "--no-progress"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch_end"] for r in records if "epoch_end" in r] == [1, 2, 3]
    assert (run / "checkpoints/epoch_003.safetensors").is_file()


def one_line_error(capsys, argv, match):
    code = main(argv) if argv[0] != "--" else None
    err = capsys.readouterr().err.strip()
    assert code == 2, (code, err)
    assert len(err.splitlines()) == 1, err
    assert match in err, err
    assert "Traceback" not in err


def test_bad_input_is_one_clear_line(tiny_run, tmp_path, capsys):
    ckpt = str(tiny_run / "model_final.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes((tiny_run / "model_final.safetensors").read_bytes()[:1000])
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["train", "--data", "mnist", "--data-dir", str(tmp_path / "nowhere")], "--data-dir"),
        (["train", "--data", "folder", "--data-dir", str(empty)], str(empty)),
        (["train", "--data", "mnst"], "invalid choice: 'mnst'"),
        (["train", "--epochs", "0"], "expected a positive integer, got 0"),
        (["train", "--lr", "fast"], "invalid positive number value: 'fast'"),
        (["train", "--schedule", "quadratic"], "invalid choice: 'quadratic'"),
        (["train", "--preset", "fancy"], "invalid choice: 'fancy'"),
        (["train", "--resume", str(tiny_run), "--preset", "classic"], "--preset cannot change"),
        (["train", "--resume", str(tiny_run), "--preset", "default"], "--preset cannot change"),
        (["train", "--resume", str(tiny_run), "--lr", "0.1"], "--lr cannot change"),
        (["train", "--data", "shapes", "--channel-mults", "1,2,2,2,2,2", "--out", str(tmp_path / "x")],
         "cannot be halved"),
        (["train", "--data", "emoji", "--schedule", "linear", "--timesteps", "10"],
         "at least 21 timesteps"),
        (["train", "--out", str(tiny_run), *TINY[:2]], "already holds a run"),
        (["sample", "--checkpoint", str(corrupt)], "corrupt or truncated"),
        (["sample", "--checkpoint", str(tmp_path / "missing.safetensors")], "does not exist"),
        (["sample", "--checkpoint", ckpt, "--steps", "51"], "exceeds the model's 50 timesteps"),
        (["sample", "--checkpoint", ckpt, "--steps", "0"], "expected a positive integer, got 0"),
        (["sample", "--checkpoint", ckpt, "--sampler", "euler-a"], "invalid choice: 'euler-a'"),
        (["sample", "--checkpoint", ckpt, "--sampler", "euler"], "sampler euler walks a flow matching"),
        (["sample", "--checkpoint", ckpt, "--out", str(tmp_path / "x.jpg")], "must end in .png"),
        (["sample", "--checkpoint", ckpt, "--eta", "2", "--sampler", "ddim"], "eta must lie"),
    ]  # fmt: skip
    for argv, match in cases:
        try:
            one_line_error(capsys, argv, match)
        except SystemExit as exit_:  # argparse exits by itself
            err = capsys.readouterr().err.strip()
            assert exit_.code == 2 and len(err.splitlines()) == 1 and match in err, (argv, err)
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
    assert not (tmp_path / "x.jpg").exists()


def test_the_flags_given_are_those_on_the_command_line_even_at_their_defaults():
    # --seed 0 and --sampler dpmpp-2m-sde are sample's defaults: given, they still count; the
    # flags left out (--num-images, --steps, ...) do not, nor do other commands' flags.
    argv = ["sample", "--checkpoint", "x.safetensors", "--seed", "0", "--sampler", "dpmpp-2m-sde"]
    given = given_on_command_line(build_parser(), argv)
    assert given == {"command", "checkpoint", "seed", "sampler"}
    argv = ["train", "--resume", "runs/x", "--no-progress"]
    given = given_on_command_line(build_parser(), argv)
    assert given == {"command", "resume", "no_progress"}


def test_real_process_exit_code_and_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "difflab", "train", "--data", "mnist", "--data-dir",
         str(tmp_path), "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--data-dir" in result.stderr
    assert not (tmp_path / "run").exists()


def test_numpy_backend_trains_and_its_checkpoint_runs_in_both_backends(tmp_path, capsys):
    import numpy as np
    import torch

    from difflab.kinds import load_model

    out = tmp_path / "np"
    argv = ["train", *TINY, "--epochs", "1", "--backend", "numpy", "--out", str(out)]
    assert main(argv) == 0
    assert "numpy backend" in capsys.readouterr().out
    ckpt = out / "model_final.safetensors"
    for name in ["samples/epoch_001.png", "training_loss.png", "report.html"]:
        assert (out / name).is_file(), name
    assert main(["sample", "--checkpoint", str(ckpt), "--backend", "numpy", "--sampler", "ddim",
                 "--steps", "5", "--num-images", "4", "--out", str(tmp_path / "s.png"),
                 "--show-intermediate"]) == 0  # fmt: skip
    decode(tmp_path / "s.png")
    decode(tmp_path / "s_intermediate.png")
    # The same checkpoint gives the same network output in either backend.
    torch_model = load_model(ckpt, "cpu").model
    numpy_model = load_model(ckpt, backend="numpy").model
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    t = np.array([3, 40])
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    np.testing.assert_allclose(numpy_model(x, t), expected, atol=1e-4)


def test_preset_sets_the_recipe_and_flags_given_win(tmp_path, capsys):
    from difflab.config import PRESETS, DiffusionConfig, TrainConfig

    quick = ["--data", "shapes", "--num-images", "16", "--max-steps", "1", "--sample-every", "0",
             "--checkpoint-every", "0", "--preview-steps", "2", "--no-progress"]  # fmt: skip
    configs = {}
    for name, extra in [("default", []), ("classic", ["--preset", "classic"]),
                        ("override", ["--preset", "classic", "--lr", "1e-3", "--base-channels",
                                      "16", "--timesteps", "50"])]:  # fmt: skip
        assert main(["train", *quick, *extra, "--out", str(tmp_path / name)]) == 0
        configs[name] = json.loads((tmp_path / name / "config.json").read_text())
    default, classic, override = configs["default"], configs["classic"], configs["override"]
    for field in ("batch_size", "lr", "warmup_steps", "grad_clip", "ema_decay", "lr_decay"):
        assert default["train"][field] == getattr(TrainConfig(), field), field
        assert classic["train"][field] == PRESETS["classic"][field], field
    assert default["diffusion"]["timesteps"] == DiffusionConfig().timesteps
    assert classic["model"]["base_channels"] == 64 and classic["model"]["channel_mults"] == [1, 2]
    assert default["model"] != classic["model"]
    # flags given on the command line win; the rest of the preset stays
    assert override["train"]["lr"] == 1e-3 and override["model"]["base_channels"] == 16
    assert override["diffusion"]["timesteps"] == 50
    assert override["train"]["batch_size"] == PRESETS["classic"]["batch_size"]
    assert override["model"]["channel_mults"] == [1, 2]

    # classic does not clip, so no gradient norm is measured: the log says null, not NaN
    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))

    records = [strict(line) for line in (tmp_path / "classic" / "metrics.jsonl").open()]
    assert [r["grad_norm"] for r in records if "grad_norm" in r] == [None]
