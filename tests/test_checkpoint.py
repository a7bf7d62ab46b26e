"""Checkpoints round-trip exactly, refuse anything that is not ours, and are written atomically."""

import json
import pickle

import pytest
import torch

from difflab.checkpoint import load_checkpoint, load_weights_into, save_checkpoint
from difflab.config import DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from difflab.kinds import load_model
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


class _Payload:
    """Unpickling this would create ``marker``: the attack a pickled checkpoint can carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_is_refused_without_being_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    for name, write in {
        "pickled.safetensors": lambda p: p.write_bytes(pickle.dumps(_Payload(marker))),
        "torch_save.safetensors": lambda p: torch.save({"x": _Payload(marker)}, p),
    }.items():
        path = tmp_path / name
        write(path)
        with pytest.raises(ValueError, match=str(path)) as info:
            load_checkpoint(path)
        assert "\n" not in str(info.value)
        assert not marker.exists()  # nothing was unpickled


def header_metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()


def rewrite_metadata(path, **changes):
    """The same tensors under a modified safetensors header."""
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(path)), str(path), metadata={**header_metadata(path), **changes})


def test_bad_configuration_or_tensor_names_are_one_line_errors(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    make_checkpoint(path)
    config = json.loads(header_metadata(path)["config"])
    config["model"]["channel_mults"] = [1, 2, 2, 2, 2]  # 8 px cannot be halved four times
    rewrite_metadata(path, config=json.dumps(config))
    with pytest.raises(ValueError, match=r"has an invalid configuration .*cannot be halved"):
        load_checkpoint(path)

    make_checkpoint(path)
    rewrite_metadata(path, config="{not json")
    with pytest.raises(ValueError, match="has an invalid configuration"):
        load_checkpoint(path)

    from safetensors.torch import load_file, save_file

    make_checkpoint(path)
    extra = tmp_path / "extra.safetensors"
    tensors = {**load_file(str(path)), "weights.surprise": torch.zeros(1)}
    save_file(tensors, str(extra), metadata=header_metadata(path))
    with pytest.raises(ValueError, match=r"unexpected tensor 'weights\.surprise'"):
        load_checkpoint(extra)


def test_weights_that_do_not_fit_their_own_configuration(tmp_path):
    """A checkpoint whose header promises one U-Net and whose tensors hold another."""
    path = tmp_path / "ckpt.safetensors"
    make_checkpoint(path)
    config = json.loads(header_metadata(path)["config"])
    config["model"]["base_channels"] = 32
    rewrite_metadata(path, config=json.dumps(config))
    with pytest.raises(ValueError, match=rf"checkpoint {path}: tensor .* has shape"):
        load_model(path, "cpu")


def test_a_config_without_new_diffusion_fields_keeps_what_it_was_trained_with():
    """Checkpoints from before the recipe search lack min_snr_gamma; a missing field must mean the
    old default (linear, eps, no weighting), not today's (cosine, v, min-SNR-5)."""
    from difflab.config import DiffusionConfig, RunConfig, run_config_from_dict, to_dict

    data = to_dict(RunConfig())
    assert data["diffusion"]["schedule"] == "cosine" and data["diffusion"]["prediction"] == "v"
    assert run_config_from_dict(data).diffusion == DiffusionConfig()  # a full config round-trips
    data["diffusion"] = {"timesteps": 1000}
    old = run_config_from_dict(data).diffusion
    assert (old.schedule, old.prediction, old.min_snr_gamma) == ("linear", "eps", None)
