"""benchmarks/few_step_ideas.py (the measured attempts of docs/few_step.md that did not help):
its refusal of bad input, and that the feature discriminator reads the diffusion model's own
encoder features. Its runs themselves are minutes of training on MNIST (docs/few_step.md
has them); the distillation target they share with progressive distillation is tested in
test_progressive.py."""

from __future__ import annotations

import pytest
import torch

from conftest import load_benchmark_script
from difflab.config import ModelConfig
from difflab.models.unet import Downsample, UNet
from difflab.schedules import make_schedule


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


def test_the_dmd_direction_vanishes_when_the_two_scores_agree(ideas):
    sched = make_schedule("cosine", 100)
    x = torch.randn(8, 1, 4, 4, dtype=torch.float64)
    t, noise = torch.randint(1, 100, (8,)), torch.randn(8, 1, 4, 4, dtype=torch.float64)
    same = gaussian_v_model(0.7, sched)
    assert torch.equal(
        ideas.dmd_direction(x, t, noise, same, same, sched, "v"), torch.zeros_like(x)
    )


@pytest.mark.parametrize("start", [1.6, 0.5])
def test_dmd_steps_move_a_gaussian_generator_onto_the_real_distribution(ideas, start):
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
        direction = ideas.dmd_direction(x, t, noise, real, fake, sched, "v")
        loss = 0.5 * (x - (x - direction).detach()).pow(2).mean()
        (grad,) = torch.autograd.grad(loss, a)
        with torch.no_grad():
            a -= 0.5 * grad
        history.append(a.item())
    assert abs(history[-1] - 1.0) < 0.02
    steps = torch.tensor(history).diff()
    assert ((steps < 0) if start > 1 else (steps > 0))[:20].all()
