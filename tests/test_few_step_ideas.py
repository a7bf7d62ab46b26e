"""benchmarks/few_step_ideas.py (the measured attempts of docs/lab/few_step.md that did not help):
its refusal of bad input, and that the feature discriminator reads the diffusion model's own
encoder features. Its runs themselves are minutes of training on MNIST (docs/lab/few_step.md
has them); the distillation target they share with progressive distillation is tested in
test_progressive.py."""

from __future__ import annotations

import pytest
import torch

from conftest import load_benchmark_script
from difflab.config import ModelConfig
from difflab.models.unet import Downsample, UNet
from difflab.schedules import make_schedule
from difflab.training import blend_into


@pytest.fixture(scope="module")
def ideas():
    return load_benchmark_script("few_step_ideas")


@pytest.mark.parametrize("mode", ["etax", "eta2", "ancestral"])
def test_a_bad_sampler_mode_is_one_line_and_writes_nothing(ideas, mode, tmp_path, capsys):
    out = tmp_path / "images.npz"
    with pytest.raises(SystemExit) as stop:
        ideas.main(
            ["stochastic", "--checkpoint", "x.safetensors", "--mode", mode, "--out", str(out)]
        )
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--mode {mode}: expected ddim, meng or eta<X> with X in [0, 1]" in err
    assert not out.exists()


def test_a_noise_level_beyond_the_schedule_is_one_line_and_writes_nothing(ideas, tmp_path, capsys):
    out = tmp_path / "ladd.safetensors"
    with pytest.raises(SystemExit) as stop:
        ideas.main(["adversarial", "--student", "s.safetensors", "--teacher", "t.safetensors",
                    "--data-dir", str(tmp_path), "--d-t-max", "1.5", "--out", str(out)])  # fmt: skip
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--d-t-max 1.5: expected a fraction of T - 1 in [0, 1]" in err
    assert not out.exists()


def test_the_feature_discriminator_reads_the_unets_own_encoder(ideas):
    """Its features are the tensors the U-Net's forward pass computes (caught by hooks): the input
    of each downsampling, then the middle blocks' output; with t_max 0 the images are not
    noised, and the trunk stays frozen while the heads learn."""
    torch.manual_seed(0)
    config = ModelConfig(image_size=16, in_channels=1, base_channels=8, channel_mults=(1, 2, 4),
                         num_res_blocks=1, norm_groups=4)  # fmt: skip
    net = UNet(config).eval()
    disc = ideas.FeatureDiscriminator(net, t_max=0)
    x, t = torch.randn(3, 1, 16, 16), torch.zeros(3, dtype=torch.long)
    caught = []
    hooks = [m.register_forward_hook(lambda m, i, o: caught.append(i[0])) for m in net.down
             if isinstance(m, Downsample)]  # fmt: skip
    hooks.append(net.mid2.register_forward_hook(lambda m, i, o: caught.append(o)))
    with torch.no_grad():
        net(x, t)
        for hook in hooks:
            hook.remove()
        feats = disc.features(x, t)
    assert [f.shape[1:] for f in feats] == [(8, 16, 16), (16, 8, 8), (32, 4, 4)]
    for mine, its in zip(feats, caught, strict=True):
        torch.testing.assert_close(mine, its, rtol=0, atol=0)
    logits = disc(x, make_schedule("cosine", 100), torch.Generator().manual_seed(0))
    assert logits.shape == (3, 16 * 16 + 8 * 8 + 4 * 4)
    logits.mean().backward()
    assert all(p.grad is None for p in net.parameters())
    assert all(p.grad is not None for p in disc.heads.parameters())


def test_bad_dmd_noise_levels_are_one_line_and_write_nothing(ideas, tmp_path, capsys):
    out = tmp_path / "dmd.safetensors"
    with pytest.raises(SystemExit) as stop:
        ideas.main(["dmd", "--student", "s.safetensors", "--teacher", "t.safetensors",
                    "--real", "r.safetensors", "--data-dir", str(tmp_path), "--t-min", "0.9",
                    "--t-max", "0.5", "--out", str(out)])  # fmt: skip
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--t-min 0.9 --t-max 0.5: expected 0 <= t-min <= t-max <= 1" in err
    assert not out.exists()


def test_the_running_mean_of_a_students_weights_is_their_mean():
    # --averages (and --dmd-average): blended in with d = (n - 1) / n at the n-th of three sets
    # of weights, the mean of the three; the first blend copies, whatever the average held.
    config = ModelConfig(image_size=16, in_channels=1, base_channels=8, channel_mults=(1, 2),
                         num_res_blocks=1, norm_groups=4)  # fmt: skip
    nets = [UNet(config) for _ in range(4)]
    mean, seen = nets[0], nets[1:]
    for count, net in enumerate(seen, start=1):
        blend_into(mean, net, (count - 1) / count)
    for name, p in mean.named_parameters():
        expected = torch.stack([dict(n.named_parameters())[name] for n in seen]).mean(dim=0)
        torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("averages", ["0", "100,400", "ten"])
def test_bad_averages_are_one_line_and_write_nothing(ideas, averages, tmp_path, capsys):
    out = tmp_path / "dmd.safetensors"
    with pytest.raises(SystemExit) as stop:
        ideas.main(["dmd", "--student", "s.safetensors", "--teacher", "t.safetensors",
                    "--real", "r.safetensors", "--data-dir", str(tmp_path), "--steps", "300",
                    "--averages", averages, "--out", str(out)])  # fmt: skip
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--averages" in err and ("1..300" in err or "whole numbers" in err), err
    assert not out.exists()
