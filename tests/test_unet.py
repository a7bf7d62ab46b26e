"""U-Net shapes, parameter counts (against an independent count), conditioning, and learning."""

import pytest
import torch

from difflab.config import ModelConfig, default_model_config
from difflab.diffusion import diffusion_loss
from difflab.models.unet import UNet, count_parameters, timestep_embedding
from difflab.schedules import make_schedule


def expected_parameters(cfg: ModelConfig) -> int:
    """Count the parameters from the architecture's description, layer by layer."""

    def conv(i, o, k):
        return o * i * k * k + o

    def linear(i, o):
        return o * i + o

    def norm(c):
        return 2 * c

    emb = 4 * cfg.base_channels

    def res(i, o):
        return (
            norm(i)
            + conv(i, o, 3)
            + linear(emb, o)
            + norm(o)
            + conv(o, o, 3)
            + (conv(i, o, 1) if i != o else 0)
        )

    def attn(c):
        return norm(c) + conv(c, 3 * c, 1) + conv(c, c, 1)

    total = linear(cfg.base_channels, emb) + linear(emb, emb)
    if cfg.num_classes:
        total += (cfg.num_classes + 1) * emb
    total += conv(cfg.in_channels, cfg.base_channels, 3)
    chans = [cfg.base_channels * m for m in cfg.channel_mults]
    skips, ch = [cfg.base_channels], cfg.base_channels
    for level, c in enumerate(chans):
        for _ in range(cfg.num_res_blocks):
            total += res(ch, c) + (attn(c) if level in cfg.attention_levels else 0)
            ch = c
            skips.append(ch)
        if level < len(chans) - 1:
            total += conv(ch, ch, 3)
            skips.append(ch)
    total += 2 * res(ch, ch) + (attn(ch) if cfg.mid_attention else 0)
    for level in reversed(range(len(chans))):
        for _ in range(cfg.num_res_blocks + 1):
            total += res(ch + skips.pop(), chans[level])
            total += attn(chans[level]) if level in cfg.attention_levels else 0
            ch = chans[level]
        if level > 0:
            total += conv(ch, ch, 3)
    return total + norm(ch) + conv(ch, cfg.in_channels, 3)


SIZES = [("emoji", 8, 3), ("shapes", 16, 3), ("mnist", 28, 1), ("cifar10", 32, 3)]


@pytest.mark.parametrize(("data", "size", "channels"), SIZES)
def test_default_configs_shapes_and_parameter_counts(data, size, channels):
    cfg = default_model_config(data, size, channels)
    model = UNet(cfg)
    x = torch.randn(2, channels, size, size)
    out = model(x, torch.tensor([0, 999]))
    assert out.shape == x.shape
    assert count_parameters(model) == expected_parameters(cfg)


def test_mnist_default_is_the_recipe_network():
    """16/32/64 channels at 28/14/7 px (docs/recipe.md), a quarter of the 32-channel one's size."""
    cfg = default_model_config("mnist", 28, 1)
    assert (cfg.base_channels, cfg.channel_mults, cfg.num_res_blocks) == (16, (1, 2, 4), 1)
    n = count_parameters(UNet(cfg))
    assert 0.5e6 < n < 0.8e6, n


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(image_size=8, in_channels=3, base_channels=16, channel_mults=(1, 2),
                    num_res_blocks=2, attention_levels=(1,), num_classes=5),
        ModelConfig(image_size=28, in_channels=1, base_channels=16, channel_mults=(1, 2, 2),
                    num_res_blocks=1, attention_levels=(0, 2), mid_attention=False),
        ModelConfig(image_size=32, in_channels=3, base_channels=8, channel_mults=(1, 1, 2, 2),
                    num_res_blocks=1, norm_groups=4),
    ],
)  # fmt: skip
def test_configurable_unets(cfg):
    model = UNet(cfg)
    x = torch.randn(3, cfg.in_channels, cfg.image_size, cfg.image_size)
    y = torch.tensor([0, 1, 2]) if cfg.num_classes else None
    assert model(x, torch.tensor([1, 2, 3]), y).shape == x.shape
    assert count_parameters(model) == expected_parameters(cfg)


def test_labels_change_the_output_and_none_means_the_null_label():
    cfg = ModelConfig(image_size=8, in_channels=1, base_channels=16, channel_mults=(1, 2),
                      num_res_blocks=1, num_classes=3)  # fmt: skip
    torch.manual_seed(0)
    model = UNet(cfg)
    torch.nn.init.normal_(model.label_emb.weight)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 10])
    a = model(x, t, torch.tensor([0, 0]))
    b = model(x, t, torch.tensor([1, 1]))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(model(x, t), model(x, t, torch.tensor([3, 3])))


def test_time_embedding_is_sinusoidal():
    emb = timestep_embedding(torch.tensor([0, 7]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    freqs = torch.tensor([10000 ** (-i / 4) for i in range(4)])
    torch.testing.assert_close(emb[1, :4], torch.sin(7 * freqs))
    torch.testing.assert_close(emb[1, 4:], torch.cos(7 * freqs))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": 30, "channel_mults": (1, 2, 2)}, "cannot be halved"),
        ({"in_channels": 0}, "in_channels"),  # any positive count: latents have 4
        ({"base_channels": 12, "norm_groups": 8}, "GroupNorm"),
        ({"attention_levels": (5,)}, "attention_levels"),
    ],
)
def test_bad_configs_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(ModelConfig(**kwargs))


def test_training_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=8, in_channels=1, base_channels=16, channel_mults=(1, 2),
                      num_res_blocks=1)  # fmt: skip
    model = UNet(cfg)
    sched = make_schedule("linear", 100)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(16, 1, 8, 8, generator=g) * 2 - 1
    t = torch.randint(0, 100, (16,), generator=g)
    eps = torch.randn(16, 1, 8, 8, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss():
        return diffusion_loss(model, x0, t, eps, sched).mean()

    before = loss().item()
    for _ in range(20):
        opt.zero_grad()
        loss().backward()
        opt.step()
    after = loss().item()
    assert after < 0.7 * before, (before, after)
