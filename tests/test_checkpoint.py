"""Checkpoints round-trip exactly, refuse anything that is not ours, and are written atomically."""

import json

import pytest
import torch

from difflab.checkpoint import load_checkpoint, load_weights_into, save_checkpoint
from difflab.config import DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from difflab.generate import load_model
from difflab.models.unet import UNet

CFG = RunConfig(
    model=ModelConfig(image_size=8, in_channels=3, base_channels=16, channel_mults=(1, 2),
                      num_res_blocks=1, num_classes=4),
    diffusion=DiffusionConfig(timesteps=50, schedule="cosine", prediction="v"),
    train=TrainConfig(data="emoji", epochs=3),
    class_names=("a", "b", "c", "d"),
)  # fmt: skip


def make_checkpoint(path):
    torch.manual_seed(0)
    model = UNet(CFG.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 8, 8), torch.tensor([1, 2])).pow(2).mean().backward()
    opt.step()
    ema = {k: v + 1 for k, v in model.state_dict().items()}
    rng = {"noise": torch.Generator().manual_seed(3).get_state()}
    save_checkpoint(path, CFG, model.state_dict(), ema=ema, optimizer=opt.state_dict(), rng=rng,
                    state={"step": 7, "epoch": 1})  # fmt: skip
    return model, ema, opt


def test_round_trip(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    model, ema, opt = make_checkpoint(path)
    ckpt = load_checkpoint(path)
    assert ckpt.config == CFG
    assert ckpt.state == {"step": 7, "epoch": 1}
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt.model[k], v)
        assert torch.equal(ckpt.ema[k], ema[k])
    assert ckpt.sampling_weights is ckpt.ema
    # The optimiser state loads into a fresh optimiser and matches the original.
    fresh = torch.optim.AdamW(UNet(CFG.model).parameters(), lr=1e-3)
    fresh.load_state_dict(ckpt.optimizer)
    orig = opt.state_dict()
    for i, state in orig["state"].items():
        for key, value in state.items():
            assert torch.equal(fresh.state_dict()["state"][i][key], value)
    assert torch.equal(ckpt.rng["noise"], torch.Generator().manual_seed(3).get_state())
    # load_model rebuilds the network from the checkpoint alone, with the EMA weights.
    loaded = load_model(path, "cpu")
    assert loaded.schedule.name == "cosine" and loaded.schedule.num_timesteps == 50
    assert torch.equal(loaded.model.state_dict()["conv_in.weight"], ema["conv_in.weight"])


def test_truncated_and_foreign_files_are_one_line_errors(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    make_checkpoint(path)
    data = path.read_bytes()
    cases = {
        "truncated.safetensors": data[: len(data) // 2],
        "header_only.safetensors": data[:4],
        "random.safetensors": bytes(range(256)) * 10,
        "empty.safetensors": b"",
    }
    for name, content in cases.items():
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(ValueError, match=str(bad)) as info:
            load_checkpoint(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_foreign_safetensors_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not written by difflab"):
        load_checkpoint(path)


def test_wrong_architecture_is_a_clear_error(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    make_checkpoint(path)
    ckpt = load_checkpoint(path)
    other = UNet(ModelConfig(image_size=8, in_channels=3, base_channels=32, channel_mults=(1, 2),
                             num_res_blocks=1, num_classes=4))  # fmt: skip
    with pytest.raises(ValueError, match="has shape"):
        load_weights_into(other, ckpt.model, path)
    smaller = UNet(ModelConfig(image_size=8, in_channels=3, base_channels=16, channel_mults=(1,)))
    with pytest.raises(ValueError, match="does not match the model"):
        load_weights_into(smaller, ckpt.model, path)


def test_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    make_checkpoint(path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        with open(args[1], "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("difflab.checkpoint.save_file", crash)
    with pytest.raises(OSError):
        make_checkpoint(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]


def test_config_is_readable_json_in_the_header(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    make_checkpoint(path)
    size = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + size])
    config = json.loads(header["__metadata__"]["config"])
    assert config["diffusion"]["prediction"] == "v"
    assert config["model"]["channel_mults"] == [1, 2]
