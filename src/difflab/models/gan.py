"""The GAN baseline's two networks: a DCGAN generator and discriminator (Radford et al. 2016), and
the spectrally normalised discriminator of Miyato et al. 2018.

DCGAN's rules (Radford et al. 2016, Sec. 3): no pooling, strided convolutions in the
discriminator and fractionally-strided (transposed) ones in the generator; BatchNorm in both,
except at the generator's output and the discriminator's input; ReLU in the generator with tanh
at its output; LeakyReLU(0.2) in the discriminator; weights drawn from N(0, 0.02).

The spectral-norm variant (Miyato et al. 2018, Eq. 8) divides each discriminator weight W,
reshaped to (out, in * kh * kw), by its largest singular value sigma(W), estimated by one power
iteration per forward pass in training mode (``torch.nn.utils.parametrizations.spectral_norm``):
each layer is then 1-Lipschitz, and BatchNorm is left out (Miyato et al.'s SN-DCGAN has none).
The power iteration's vectors u and v are buffers of the layer, so the state dict, the
checkpoint and ``--resume`` carry them.

Shapes, for an image of S x S pixels: the generator projects z (z_dim,) to s0 x s0 and doubles
the size k times (S = s0 * 2^k, s0 >= 4; 28 -> 7 x 4, 32 -> 4 x 8, 8 -> 4 x 2); at s0 * 2^i the
networks have ``width * 2^(k - i)`` channels (most channels at the lowest resolution, as in
DCGAN). The discriminator mirrors it and ends in one logit per image.

Sizes: ``default_gan_config`` picks the width whose G + D parameter count is nearest the default
U-Net's for the data (counted with ``difflab.config.default_model_config``):

    data (size, channels)       U-Net      width   G          D (SN)     G + D
    mnist / fashion (28, 1)     636,465    24      545,185    79,345     624,530
    emoji (8, 3)                652,195    128     422,403    16,641     439,044
    shapes (16, 1)              1,062,497  48      604,225    299,809    904,034
    cifar10 (32, 3)             8,620,547  64      3,448,579  2,636,673  6,085,252

(z_dim 100. The BatchNorm discriminator has no convolution biases but BatchNorm's scales and
shifts: 79,392 at 28 px.) The generator holds most of them in its first
layer, the projection of z.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from difflab.config import GANConfig

INIT_STD = 0.02  # DCGAN: every weight from N(0, 0.02); BatchNorm scales from N(1, 0.02)


def levels_of(image_size: int) -> tuple[int, int]:
    """(s0, k): the generator's first resolution and how many times it doubles, S = s0 * 2^k."""
    if image_size < 8 or image_size % 2:
        raise ValueError(f"a DCGAN needs an even image size of at least 8 pixels, got {image_size}")
    s0, k = image_size, 0
    while s0 % 2 == 0 and s0 // 2 >= 4:
        s0, k = s0 // 2, k + 1
    return s0, k


def init_dcgan(module: nn.Module) -> None:
    """Radford et al. 2016, Sec. 4: weights ~ N(0, 0.02), BatchNorm gamma ~ N(1, 0.02), biases 0.

    Takes torch's global generator (the harness seeds it with --seed before building networks).
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, INIT_STD)
            nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """z (B, z_dim) -> images (B, C, S, S) in [-1, 1] (tanh): DCGAN's generator."""

    def __init__(self, image_size: int, channels: int, z_dim: int, width: int) -> None:
        super().__init__()
        s0, k = levels_of(image_size)
        self.z_dim, self.image_size, self.channels = z_dim, image_size, channels
        widths = [width * 2 ** (k - i) for i in range(k)]  # at s0, 2 s0, ..., S / 2
        layers: list[nn.Module] = [
            # the projection: a (z_dim, 1, 1) input convolved to (widths[0], s0, s0)
            nn.ConvTranspose2d(z_dim, widths[0], s0, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        for c_in, c_out in itertools.pairwise(widths):  # doubles the size
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]  # fmt: skip
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1), nn.Tanh()]  # no BatchNorm
        self.net = nn.Sequential(*layers)
        init_dcgan(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])  # (B, z_dim, 1, 1) -> (B, C, S, S)


class Discriminator(nn.Module):
    """images (B, C, S, S) -> logits (B,): DCGAN's discriminator (``spectral=False``: BatchNorm
    after every convolution but the first) or Miyato et al.'s (``spectral=True``: every weight
    spectrally normalised, no BatchNorm)."""

    def __init__(self, image_size: int, channels: int, width: int, spectral: bool) -> None:
        super().__init__()
        s0, k = levels_of(image_size)
        self.spectral = spectral
        widths = [width * 2 ** (k - i) for i in range(k)][::-1]  # at S / 2, ..., s0

        def conv(c_in: int, c_out: int, kernel: int, stride: int, pad: int) -> nn.Module:
            return nn.Conv2d(c_in, c_out, kernel, stride, pad, bias=spectral)  # BatchNorm: no bias

        layers: list[nn.Module] = [conv(channels, widths[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for c_in, c_out in itertools.pairwise(widths):  # halves the size
            layers.append(conv(c_in, c_out, 4, 2, 1))
            if not spectral:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, True))
        layers.append(conv(widths[-1], 1, s0, 1, 0))  # (B, 1, 1, 1): one logit
        self.net = nn.Sequential(*layers)
        init_dcgan(self)
        if spectral:  # after the init: the parametrization wraps the initialised weights
            for i, layer in enumerate(self.net):
                if isinstance(layer, nn.Conv2d):
                    self.net[i] = spectral_norm(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()  # (B,)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def gan_parameters(image_size: int, channels: int, z_dim: int, width: int, spectral: bool) -> int:
    """G + D parameters for these settings (built on the meta device: no memory, no RNG)."""
    with torch.device("meta"):
        g = Generator(image_size, channels, z_dim, width)
        d = Discriminator(image_size, channels, width, spectral=False)
    if spectral:  # the same weights, plus a bias per convolution, minus BatchNorm's
        d_count = sum(m.weight.numel() + m.out_channels for m in d.modules()
                      if isinstance(m, nn.Conv2d))  # fmt: skip
    else:
        d_count = count_parameters(d)
    return count_parameters(g) + d_count


WIDTHS = (8, 12, 16, 24, 32, 48, 64, 96, 128)


def width_like(target: int, image_size: int, channels: int, z_dim: int) -> int:
    """The width in ``WIDTHS`` whose G + D parameter count is nearest ``target`` (in ratio)."""
    return min(
        WIDTHS,
        key=lambda w: abs(math.log(gan_parameters(image_size, channels, z_dim, w, True) / target)),
    )


def build_networks(
    image_size: int, channels: int, gan: GANConfig
) -> tuple[Generator, Discriminator]:
    """The generator and discriminator a GAN configuration describes (initial weights drawn from
    torch's global generator)."""
    gan.validate()
    g = Generator(image_size, channels, gan.z_dim, gan.g_width)
    d = Discriminator(image_size, channels, gan.d_width, spectral=gan.loss == "hinge")
    return g, d
