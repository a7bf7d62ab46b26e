"""`difflab export --diffusers`: diffusers' UNet2DModel, loaded from the folder, gives difflab's
U-Net output (max |diff| <= 1e-4) at several t for each mappable shape; DDPMPipeline loads the
folder unchanged and runs; diffusers' DDIMScheduler from the exported config draws difflab's DDIM
images from the same noise (1e-3); the schedules agree to float32; what does not map, and every
bad input, is refused in one line with no folder left behind.

The checkpoints are tiny 8 px U-Nets with every weight moved off its initial value."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from difflab.checkpoint import write_checkpoint
from difflab.cli import main
from difflab.config import DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from difflab.data import TWEMOJI_ATTRIBUTION
from difflab.export import export_diffusers
from difflab.kinds import load_model, plan_sampling
from difflab.models.unet import UNet
from difflab.sampling import SamplingRequest, execute
from difflab.schedules import make_schedule

diffusers = pytest.importorskip("diffusers")

TOL = 1e-4  # the network
IMAGE_TOL = 1e-3  # DDIM's images
DOCS = Path(__file__).resolve().parents[1] / "docs" / "export.md"
SMALL = {"image_size": 8, "base_channels": 8, "norm_groups": 4}
SHAPES = {  # each mappable feature at least once
    "attn-1": ModelConfig(in_channels=3, channel_mults=(1, 2), num_res_blocks=1,
                          attention_levels=(1,), **SMALL),
    "attn-0-3-levels": ModelConfig(in_channels=1, channel_mults=(1, 2, 3), num_res_blocks=2,
                                   attention_levels=(0, 2), **SMALL),
    "no-mid-attn": ModelConfig(in_channels=3, channel_mults=(1, 1), num_res_blocks=1,
                               mid_attention=False, **SMALL),
    "conditional": ModelConfig(in_channels=3, channel_mults=(1, 2), num_res_blocks=1,
                               attention_levels=(0,), num_classes=3, **SMALL),
}  # fmt: skip


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    yield


def perturbed(module, seed):
    gen = torch.Generator().manual_seed(seed)
    return {
        name: value + 0.1 * torch.randn(value.shape, generator=gen)
        for name, value in module.state_dict().items()
    }


def checkpoint(path, model, diffusion=None, train=None, **run):
    config = RunConfig(
        model=model, diffusion=diffusion or DiffusionConfig(timesteps=30),
        train=train or TrainConfig(data="mnist"), **run,
    )  # fmt: skip
    torch.manual_seed(0)
    return write_checkpoint(path, config, {"model": perturbed(UNet(model), 3)})


@pytest.fixture(scope="module")
def uncond(tmp_path_factory):
    """An unconditional v-prediction cosine model, exported: (checkpoint, folder)."""
    root = tmp_path_factory.mktemp("uncond")
    ckpt = checkpoint(root / "m.safetensors", SHAPES["attn-1"])
    export_diffusers(ckpt, root / "out")
    return ckpt, root / "out"


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_unet2dmodel_gives_difflabs_output(shape, tmp_path):
    mc = SHAPES[shape]
    ckpt = checkpoint(tmp_path / "m.safetensors", mc, class_names=("a", "b", "c")[: mc.num_classes])
    result = export_diffusers(ckpt, tmp_path / "out")
    ours = load_model(ckpt, "cpu").model
    theirs = diffusers.UNet2DModel.from_pretrained(tmp_path / "out" / "unet").eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, mc.in_channels, 8, 8, generator=gen)
    labels = torch.tensor([0, 1, 2, 3, 1]) if mc.num_classes else None  # 3: the null label
    with torch.no_grad():
        for t in ([29] * 5, [0, 1, 7, 15, 28]):
            t = torch.tensor(t)
            diff = (ours(x, t, labels) - theirs(x, t, class_labels=labels).sample).abs().max()
            assert diff <= TOL, (shape, t, float(diff))
    assert result.max_abs_diff <= TOL
    assert result.num_classes == mc.num_classes


def test_ddpm_pipeline_loads_the_folder_unchanged_and_runs(uncond):
    _, out = uncond
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "model_index.json", "scheduler", "unet",
    ]  # fmt: skip
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    images = pipe(
        batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images  # fmt: skip
    assert images.shape == (2, 8, 8, 3) and np.isfinite(images).all()
    assert images.min() >= 0.0 and images.max() <= 1.0


@pytest.mark.parametrize(
    ("schedule", "prediction"), [("cosine", "v"), ("linear", "eps"), ("cosine", "x0")]
)
def test_diffusers_ddim_draws_difflabs_ddim_images(schedule, prediction, tmp_path):
    dc = DiffusionConfig(timesteps=30, schedule=schedule, prediction=prediction)
    ckpt = checkpoint(tmp_path / "m.safetensors", SHAPES["attn-1"], diffusion=dc)
    export_diffusers(ckpt, tmp_path / "out")
    loaded = load_model(ckpt, "cpu")
    plan = plan_sampling(loaded, SamplingRequest(num_images=3, sampler="ddim", steps=5))
    assert plan.clip_x0 and plan.eta == 0.0
    x_T = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    ours = execute(loaded, plan, x_T=x_T)

    unet = diffusers.UNet2DModel.from_pretrained(tmp_path / "out" / "unet").eval()
    scheduler = diffusers.DDIMScheduler.from_pretrained(tmp_path / "out" / "scheduler")
    scheduler.set_timesteps(plan.steps)
    assert scheduler.timesteps.tolist() == list(plan.timesteps)  # trailing, as difflab's
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(x, t).sample
            x = scheduler.step(out, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
    assert float((ours - x).abs().max()) <= IMAGE_TOL


def test_docs_guided_loop_draws_difflabs_conditional_images(tmp_path):
    """docs/export.md's loop for a class-conditional model (class_labels, the null label K,
    u + w (c - u)) draws difflab's guided DDIM images from the same noise."""
    ckpt = checkpoint(
        tmp_path / "m.safetensors", SHAPES["conditional"], class_names=("a", "b", "c"),
        diffusion=DiffusionConfig(timesteps=1000),
    )  # fmt: skip
    export_diffusers(ckpt, tmp_path / "cond-diffusers")
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    loop = next(b for b in blocks if "class_labels=y" in b)
    ns = {}
    torch.manual_seed(3)
    exec(compile(loop.replace('"cond-diffusers', f'"{tmp_path}/cond-diffusers'), "doc", "exec"), ns)
    torch.manual_seed(3)
    x_T = torch.randn(8, 3, 8, 8)  # the loop's first draw
    loaded = load_model(ckpt, "cpu")
    request = SamplingRequest(num_images=8, sampler="ddim", steps=50, class_label=1, guidance=2.0)
    ours = execute(loaded, plan_sampling(loaded, request), x_T=x_T)
    diff = float((ours - ns["x"]).abs().max())
    print(f"guided DDIM, diffusers vs difflab: {diff:.2e}")
    assert ns["null"] == 3 and diff <= IMAGE_TOL


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("T", [1000, 200])
def test_the_scheduler_holds_difflabs_schedule(schedule, T, tmp_path):
    dc = DiffusionConfig(timesteps=T, schedule=schedule, prediction="eps")
    ckpt = checkpoint(tmp_path / "m.safetensors", SHAPES["no-mid-attn"], diffusion=dc)
    export_diffusers(ckpt, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "DDPMScheduler"
    assert config["prediction_type"] == "epsilon" and config["clip_sample"] is True
    assert config["timestep_spacing"] == "trailing" and config["num_train_timesteps"] == T
    scheduler = diffusers.DDPMScheduler.from_pretrained(tmp_path / "out" / "scheduler")
    ours = make_schedule(schedule, T)
    assert np.abs(scheduler.betas.double().numpy() - ours.betas).max() <= 1e-7
    assert np.abs(scheduler.alphas_cumprod.double().numpy() - ours.alpha_bar).max() <= 2e-6


def test_model_card(uncond, tmp_path):
    _, out = uncond
    card = (out / "README.md").read_text()
    front = card.split("---\n")[1]
    assert "library_name: diffusers" in front and "datasets: [mnist]" in front
    assert "tags: [difflab, diffusion, unconditional-image-generation]" in front
    assert "see the data set's terms" in card and "prediction v" in card
    ckpt = checkpoint(
        tmp_path / "e.safetensors", SHAPES["attn-1"],
        train=TrainConfig(data="emoji-datasource", vendors="twitter"),
    )  # fmt: skip
    export_diffusers(ckpt, tmp_path / "e")
    card = (tmp_path / "e" / "README.md").read_text()
    assert "license: cc-by-4.0" in card and TWEMOJI_ATTRIBUTION in card


def test_cli_writes_one_line_and_overwrites(uncond, tmp_path, capsys):
    ckpt, _ = uncond
    argv = ["export", "--diffusers", str(tmp_path / "out"), "--checkpoint", str(ckpt)]
    assert main(argv) == 0
    printed = capsys.readouterr().out.strip()
    assert len(printed.splitlines()) == 1 and printed.startswith(f"wrote {tmp_path / 'out'}")
    assert main(argv) == 2  # exists: refused
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--raw-weights"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left
    diffusers.DDPMPipeline.from_pretrained(tmp_path / "out")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("first-level-mult", "has no UNet2DModel equivalent"),
        ("learned-variance", "trained with --learn-variance is not exported"),
        ("latent", "pixel diffusion model (kind diffusion) only"),
        ("both-flags", "not allowed with argument"),
        ("not-an-export", "holds no model_index.json"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_folder(case, message, uncond, tmp_path, capsys):
    ckpt, _ = uncond
    if case == "first-level-mult":
        mc = ModelConfig(in_channels=3, channel_mults=(2, 2), num_res_blocks=1, **SMALL)
        ckpt = checkpoint(tmp_path / "m.safetensors", mc)
    elif case == "learned-variance":
        mc = ModelConfig(in_channels=3, learn_variance=True, num_res_blocks=1, **SMALL)
        ckpt = checkpoint(tmp_path / "m.safetensors", mc)
    elif case == "latent":
        onnx_tests = pytest.importorskip("test_export_onnx")
        config, networks = onnx_tests.configs()["latent-diffusion"]
        ckpt = write_checkpoint(tmp_path / "m.safetensors", config, networks)
    elif case == "not-an-export":
        (tmp_path / "out").mkdir()
    argv = ["export", "--diffusers", str(tmp_path / "out"), "--checkpoint", str(ckpt)]
    argv += ["--onnx", "x.onnx"] if case == "both-flags" else []
    argv += ["--overwrite"] if case == "not-an-export" else []
    before = sorted(tmp_path.rglob("*"))
    if case == "both-flags":  # argparse's own error exits
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
    else:
        assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("difflab export: error: "), err
    assert message in err, err
    assert sorted(tmp_path.rglob("*")) == before
