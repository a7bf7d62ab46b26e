"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, Sec. 3.1 and App. G).

    x (C, S, S) --pad to P--> conv_in --> [ResBlock x n, Downsample] per level --> ResBlock
        --> GroupNorm, SiLU, conv --> (mean, log-variance) of q(z | x), each (c, P/f, P/f)
    z (c, P/f, P/f) --> conv_in --> ResBlock --> [ResBlock x n, Upsample] per level
        --> GroupNorm, SiLU, conv --> crop to S --> x_rec (C, S, S)

with f = 2^(levels - 1). The encoder's head gives the mean and the log-variance of a diagonal
Gaussian posterior, log-variance clamped to [-30, 20] as LDM's ``DiagonalGaussianDistribution``
does; z = mean + sigma eps draws from it. MNIST's 28 px images are padded with -1 (the black
background) to 32 px, so that two halvings give an 8 x 8 latent grid (docs/latent.md says why 8
and not 7). LDM's encoder has self-attention in its middle block; this one leaves it out to stay
CPU-cheap. The decoder's output is not squashed (no tanh, as in LDM): images are clamped when shown.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from difflab.config import AutoencoderConfig

LOGVAR_RANGE = (-30.0, 20.0)  # LDM's clamp of the posterior's log-variance


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, GroupNorm -> SiLU -> conv, plus a (1x1 when needed) skip."""

    def __init__(self, in_ch: int, out_ch: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    """Image -> (mean, logvar) of q(z | x), each (B, latent_channels, latent, latent)."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        chans = [cfg.base_channels * m for m in cfg.channel_mults]
        self.conv_in = nn.Conv2d(cfg.image_channels, chans[0], 3, padding=1)
        blocks: list[nn.Module] = []
        ch = chans[0]
        for level, out in enumerate(chans):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(ch, out, cfg.norm_groups))
                ch = out
            if level < len(chans) - 1:
                blocks.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))  # halve H and W
        self.down = nn.Sequential(*blocks)
        self.mid = ResBlock(ch, ch, cfg.norm_groups)
        self.norm_out = nn.GroupNorm(cfg.norm_groups, ch)
        self.conv_out = nn.Conv2d(ch, 2 * cfg.latent_channels, 3, padding=1)  # mean and logvar

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.mid(self.down(self.conv_in(x)))  # (B, ch, latent, latent)
        mean, logvar = self.conv_out(F.silu(self.norm_out(h))).chunk(2, dim=1)  # (B, c, l, l) x2
        return mean, logvar.clamp(*LOGVAR_RANGE)


class Decoder(nn.Module):
    """Latent (B, latent_channels, latent, latent) -> image (B, C, padded, padded)."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        chans = [cfg.base_channels * m for m in cfg.channel_mults][::-1]  # lowest resolution first
        self.conv_in = nn.Conv2d(cfg.latent_channels, chans[0], 3, padding=1)
        self.mid = ResBlock(chans[0], chans[0], cfg.norm_groups)
        blocks: list[nn.Module] = []
        ch = chans[0]
        for level, out in enumerate(chans):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(ch, out, cfg.norm_groups))
                ch = out
            if level < len(chans) - 1:
                blocks += [nn.Upsample(scale_factor=2, mode="nearest"),
                           nn.Conv2d(ch, ch, 3, padding=1)]  # fmt: skip
        self.up = nn.Sequential(*blocks)
        self.norm_out = nn.GroupNorm(cfg.norm_groups, ch)
        self.conv_out = nn.Conv2d(ch, cfg.image_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.mid(self.conv_in(z)))  # (B, base, padded, padded)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C, padded, padded)


class Autoencoder(nn.Module):
    """``encode`` (image -> posterior mean and log-variance), ``decode`` (latent -> image), both
    at the data's size: the padding to ``padded_size`` happens inside."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.pad = (cfg.padded_size - cfg.image_size) // 2
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, S, S) in [-1, 1] -> mean, logvar, each (B, c, l, l)."""
        p = self.pad
        x = F.pad(x, (p, p, p, p), value=-1.0) if p else x  # (B, C, P, P), background -1
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, c, l, l) -> (B, C, S, S), not clamped."""
        x = self.decoder(z)  # (B, C, P, P)
        p, s = self.pad, self.cfg.image_size
        return x[:, :, p : p + s, p : p + s]  # (B, C, S, S)

    def forward(
        self, x: torch.Tensor, eps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction from z = mean + sigma eps (the reparameterisation), mean, logvar."""
        mean, logvar = self.encode(x)
        z = mean + torch.exp(0.5 * logvar) * eps  # (B, c, l, l)
        return self.decode(z), mean, logvar


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, diag exp(logvar)) || N(0, I)) per element: 0.5 (mean^2 + var - 1 - logvar)
    (Kingma & Welling 2014, App. B); summed over a sample's elements it is LDM's KL term."""
    return 0.5 * (mean.pow(2) + torch.exp(logvar) - 1.0 - logvar)
