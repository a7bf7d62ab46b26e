"""Every kind in the table round-trips: trained for a few steps by its command, saved, loaded,
planned and sampled through ``difflab.kinds`` (or refused in one line by a command that does not
apply to it), on tiny runs of the built-in 8 px emoji."""

import pytest
import torch

from difflab.checkpoint import load_checkpoint
from difflab.cli import main
from difflab.config import KINDS as KIND_NAMES
from difflab.kinds import KINDS, draw, kind_of, load_denoiser, load_model, plan_sampling
from difflab.sampling import SamplingRequest, execute

TINY = ["--data", "emoji", "--num-images", "32", "--batch-size", "16", "--max-steps", "2",
        "--no-progress", "--seed", "1", "--device", "cpu", "--sample-every", "0"]  # fmt: skip
DISTILL = ["--batch-size", "16", "--max-steps", "2", "--no-progress", "--seed", "1", "--device",
           "cpu", "--sample-every", "0"]  # fmt: skip
UNET = [
    "--timesteps",
    "40",
    "--base-channels",
    "8",
    "--channel-mults",
    "1,2",
    "--preview-steps",
    "2",
]


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One checkpoint of each kind, each made by its own command (two steps each)."""
    root = tmp_path_factory.mktemp("kinds")
    runs = {
        "diffusion": ["train", *TINY, *UNET, "--conditional"],
        "flow": ["train", *TINY, *UNET, "--objective", "flow", "--conditional"],
        "autoencoder": ["train-autoencoder", *TINY, "--base-channels", "8", "--channel-mults", "1,2"],
        "gan": ["train-gan", *TINY, "--width", "8"],
    }  # fmt: skip
    for kind, argv in runs.items():
        assert main([*argv, "--out", str(root / kind)]) == 0, kind
    teacher = str(root / "diffusion" / "model_final.safetensors")
    flow = str(root / "flow" / "model_final.safetensors")
    more = {
        "latent-diffusion": ["train", *TINY, *UNET, "--latent",
                             str(root / "autoencoder" / "model_final.safetensors")],
        "consistency": ["distill", "--teacher", teacher, "--method", "consistency", *DISTILL,
                        "--intervals", "4"],
        "progressive": ["distill", "--teacher", teacher, "--method", "progressive", *DISTILL,
                        "--start-steps", "4", "--steps", "2", "--round-steps", "1"],
        "reflow": ["distill", "--teacher", flow, "--method", "reflow", *DISTILL, "--pairs", "16",
                   "--pair-steps", "2"],
        "meanflow": ["distill", "--teacher", flow, "--method", "meanflow", *DISTILL],
    }  # fmt: skip
    for kind, argv in more.items():
        assert main([*argv, "--out", str(root / kind)]) == 0, kind
    final = {kind: root / kind / "model_final.safetensors" for kind in KIND_NAMES}
    final["progressive"] = root / "progressive" / "model_steps_2.safetensors"
    return final


def test_the_table_has_a_row_for_every_kind_and_nothing_else():
    assert tuple(KINDS) == KIND_NAMES
    assert all(kind.name == name for name, kind in KINDS.items())
    commands = {kind.command for kind in KINDS.values()}
    assert commands == {"train", "train-gan", "train-autoencoder", "distill"}


@pytest.mark.parametrize("name", KIND_NAMES)
def test_every_kind_round_trips(checkpoints, name):
    ckpt = load_checkpoint(checkpoints[name])
    assert ckpt.config.kind == name and kind_of(ckpt.config) is KINDS[name]
    if KINDS[name].load is None:  # an autoencoder draws no images: refused in one line
        with pytest.raises(ValueError, match="it is not a diffusion model") as err:
            load_model(ckpt, "cpu")
        assert "\n" not in str(err.value)
        return
    loaded = load_model(checkpoints[name], "cpu")
    plan = plan_sampling(loaded, SamplingRequest(num_images=5, seed=3))
    images = execute(loaded, plan)
    channels, size = ckpt.config.image_shape
    assert images.shape == (5, channels, size, size) and images.dtype == torch.float32
    assert images.abs().max() <= 1 and images.std() > 0
    # A flow grid (euler, heun, meanflow) holds its end point t = 0 too; a DDPM grid does not
    flow_grid = plan.sampler in ("euler", "heun", "meanflow")
    assert len(plan.timesteps) == (0 if name == "gan" else plan.steps + flow_grid)
    # The same seed and plan give the same images; draw() is plan + execute.
    assert torch.equal(draw(loaded, num_images=5, seed=3), images)


@pytest.mark.parametrize(
    ("name", "plan"),
    [
        ("diffusion", ("dpmpp-2m-sde", 20, True)),
        ("latent-diffusion", ("dpmpp-2m-sde", 20, False)),  # latents are not clipped
        ("flow", ("unipc", 10, True)),  # the measured winner on a flow model (docs/flow.md)
        ("consistency", ("consistency", 1, True)),
        ("progressive", ("ddim", 2, False)),  # its own steps, unclipped as it was trained
        ("reflow", ("euler", 1, False)),  # one step of its straightened ODE
        ("meanflow", ("meanflow", 1, False)),  # one jump with its average velocity
        ("gan", ("gan generator", 1, True)),
    ],
)
def test_each_kind_plans_its_own_defaults(checkpoints, name, plan):
    made = plan_sampling(load_model(checkpoints[name], "cpu"), SamplingRequest(num_images=2))
    assert (made.sampler, made.steps, made.clip_x0) == plan


@pytest.mark.parametrize(
    ("name", "request_", "message"),
    [
        ("gan", {"steps": 4}, "--steps applies to diffusion checkpoints"),
        ("gan", {"guidance": 2.0}, "--guidance applies to diffusion checkpoints"),
        ("consistency", {"steps": 3}, "a consistency model samples in 1, 2, 4 steps"),
        ("consistency", {"guidance": 3.0}, "distilled at guidance 1, which is baked in"),
        ("progressive", {"guidance_sweep": (1.0, 2.0)}, "has its guidance baked in"),
        ("diffusion", {"sampler": "euler"}, "sampler euler walks a flow matching model's ODE"),
        ("diffusion", {"sampler": "euler-a"}, "unknown sampler 'euler-a'"),
        ("flow", {"sampler": "euler-a"}, "unknown sampler 'euler-a'"),
        ("flow", {"steps": 41, "sampler": "ddim"}, "exceeds the model's 40 timesteps"),
        ("diffusion", {"steps": 41}, "exceeds the model's 40 timesteps"),
        ("diffusion", {"class_label": "nope"}, "unknown class 'nope'"),
        ("latent-diffusion", {"guidance": 2.0}, "needs a class-conditional model"),
        ("meanflow", {"guidance": 2.0}, "jumps take no classifier-free guidance"),
        ("reflow", {"sampler": "consistency"}, "unknown sampler 'consistency'"),
    ],
)
def test_a_request_a_kind_cannot_take_is_one_line(checkpoints, name, request_, message):
    loaded = load_model(checkpoints[name], "cpu")
    with pytest.raises(ValueError, match=message) as err:
        plan_sampling(loaded, SamplingRequest(num_images=2, **request_))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", KIND_NAMES)
def test_the_editing_commands_take_the_kinds_with_a_denoiser(checkpoints, name, capsys):
    if KINDS[name].denoiser:
        assert load_denoiser(checkpoints[name], "cpu").schedule is not None
    else:
        with pytest.raises(ValueError):
            load_denoiser(checkpoints[name], "cpu")
    argv = ["img2img", "--checkpoint", str(checkpoints[name]), "--from-data", "0", "--steps", "2",
            "--num-images", "1", "--out", str(checkpoints[name].parent / "edit.png")]  # fmt: skip
    assert main(argv) == (0 if KINDS[name].denoiser else 2)
    err = capsys.readouterr().err.strip()
    assert (err == "") == KINDS[name].denoiser and len(err.splitlines()) <= 1


@pytest.mark.parametrize("name", KIND_NAMES)
def test_a_run_resumes_only_with_the_command_that_made_it(checkpoints, name, capsys):
    run = checkpoints[name].parent
    others = {"train", "train-gan", "train-autoencoder", "distill"} - {KINDS[name].command}
    for command in sorted(others):
        assert main([command, "--resume", str(run)]) == 2
        err = capsys.readouterr().err.strip()
        assert f"continue it with difflab {KINDS[name].command} --resume {run}" in err, err
        assert len(err.splitlines()) == 1
