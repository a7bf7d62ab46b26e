"""The GAN baseline: a generator and a discriminator trained against each other on the shared
harness (``difflab.training``), for measuring diffusion against the model family it displaced.

Each training step takes two phases on the same batch of real images x, in this order:

    discriminator:  z ~ N(0, I);  minimise  L_D(D(x), D(G(z)))      (G(z) held fixed)
    generator:      the same z;   minimise  L_G(D(G(z)))            (D's updated weights)

with, per image,

    dcgan (Goodfellow et al. 2014, Eq. 1, and its non-saturating generator loss, Sec. 3;
           Radford et al. 2016's networks):
        L_D = -log sigma(D(x)) - log(1 - sigma(D(G(z)))) = softplus(-D(x)) + softplus(D(G(z)))
        L_G = -log sigma(D(G(z)))                        = softplus(-D(G(z)))
    hinge (Lim & Ye 2017, as Miyato et al. 2018 train their spectrally normalised D with it):
        L_D = max(0, 1 - D(x)) + max(0, 1 + D(G(z)))
        L_G = -D(G(z))

where D returns a logit. Both networks use Adam(2e-4, betas (0.5, 0.999)) (Radford et al. 2016,
Sec. 4). G(z) is computed once per step, in the discriminator phase, and reused by the generator
phase (as in PyTorch's DCGAN example): one generator forward per step.

An EMA of the generator's weights (``generator_ema``, decay --ema-decay, 0.999 by default) is what
previews and ``difflab sample`` draw from: weight averaging improves GAN samples at the cost of
one lerp per step (Yazici et al. 2019, "The unusual effectiveness of averaging in GAN training").
The harness averages parameters only; BatchNorm's running statistics are buffers, so the objective
copies the generator's into the EMA copy at each step: the averaged weights sample with the raw
weights' activation statistics, not re-estimated for themselves (a small mismatch, for a copy
that costs nothing).

The harness gives ``difflab train-gan`` its run directory, --max-minutes, --resume (bit for bit:
both networks, both optimisers, the spectral norm's power-iteration vectors, which are buffers of
the discriminator, and the z generator), Ctrl-C, the non-finite guard, previews and the report.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from difflab import viz
from difflab.config import GANConfig, ModelConfig, RunConfig, TrainConfig, default_model_config
from difflab.data import ImageDataset
from difflab.models.gan import build_networks, count_parameters, levels_of, width_like
from difflab.models.unet import UNet
from difflab.models.unet import count_parameters as unet_parameters
from difflab.sampling.draw import gan_latents, generate_gan
from difflab.training.objective import Batch, Context, Objective, Phase, Report


def d_loss_bce(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """-log sigma(real) - log(1 - sigma(fake)) per image, from logits (Goodfellow et al. 2014)."""
    return F.softplus(-real) + F.softplus(fake)


def g_loss_bce(fake: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss -log sigma(fake) (Goodfellow et al. 2014, Sec. 3)."""
    return F.softplus(-fake)


def d_loss_hinge(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """max(0, 1 - real) + max(0, 1 + fake) per image (Lim & Ye 2017; Miyato et al. 2018)."""
    return F.relu(1.0 - real) + F.relu(1.0 + fake)


def g_loss_hinge(fake: torch.Tensor) -> torch.Tensor:
    """-fake per image (Lim & Ye 2017; Miyato et al. 2018)."""
    return -fake


LOSSES = {"dcgan": (d_loss_bce, g_loss_bce), "hinge": (d_loss_hinge, g_loss_hinge)}

# What train-gan changes in TrainConfig's defaults: Radford et al.'s Adam rate, no warm-up, no
# gradient clipping (neither paper clips).
GAN_TRAIN_DEFAULTS: dict[str, Any] = dict(lr=2e-4, warmup_steps=0, grad_clip=0.0,
                                          lr_decay="constant")  # fmt: skip


def default_gan_config(data: str, image_size: int, channels: int, loss: str = "dcgan",
                       z_dim: int = 100) -> GANConfig:  # fmt: skip
    """The GAN difflab trains for this data: both widths chosen so that G + D has about as many
    parameters as the default U-Net (``difflab.models.gan`` lists the counts)."""
    with torch.device("meta"):
        target = unet_parameters(UNet(default_model_config(data, image_size, channels)))
    width = width_like(target, image_size, channels, z_dim)
    return GANConfig(loss=loss, z_dim=z_dim, g_width=width, d_width=width)


def gan_run_config(train: TrainConfig, gan: GANConfig, dataset: ImageDataset) -> RunConfig:
    """A GAN run's configuration: the images' size and channels in ``model``, the GAN in ``gan``."""
    train.validate()
    gan.validate()
    levels_of(dataset.image_size)  # an image size a DCGAN cannot halve fails here
    model = ModelConfig(image_size=dataset.image_size, in_channels=dataset.channels,
                        channel_mults=(1,))  # fmt: skip
    return RunConfig(model=model, train=train, class_names=dataset.class_names, gan=gan)


class GANObjective(Objective):
    """Networks ``generator``, ``generator_ema`` (sampled) and ``discriminator``; optimisers
    ``g_optim`` and ``d_optim``; generator ``z`` (the latents of every step)."""

    def __init__(self, config: RunConfig, dataset: ImageDataset, ctx: Context) -> None:
        cfg, gan = config.train, config.section(GANConfig)
        self.config, self.gan, self.dataset = config, gan, dataset
        self.memory_format = ctx.memory_format
        g, d = build_networks(dataset.image_size, dataset.channels, gan)
        g = g.to(ctx.device, memory_format=ctx.memory_format)
        d = d.to(ctx.device, memory_format=ctx.memory_format)
        ema = copy.deepcopy(g).eval().requires_grad_(False)
        self.networks = {"generator": g, "generator_ema": ema, "discriminator": d}
        self.ema = {"generator_ema": "generator"}
        betas = (gan.beta1, gan.beta2)
        self.optimizers = {
            "g_optim": torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=betas),
            "d_optim": torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=betas),
        }
        self.z_gen = torch.Generator(device=ctx.device).manual_seed(cfg.seed + 1)
        self.generators = {"z": self.z_gen}
        self.phases = (
            Phase("discriminator", network="discriminator", optimizer="d_optim", lr=cfg.lr),
            Phase("generator", network="generator", optimizer="g_optim", lr=cfg.lr),
        )
        self.d_loss, self.g_loss = LOSSES[gan.loss]
        self.images = torch.from_numpy(dataset.images).to(ctx.device)  # (N, C, H, W) in [-1, 1]
        self.num_items = len(self.images)
        self.preview_z = gan_latents(cfg.num_preview, gan.z_dim, cfg.seed)  # fixed: one z per cell
        self.fake: torch.Tensor | None = None  # this step's G(z), from phase 1 to phase 2
        # What the discriminator says, as running means (decay 0.98) over the steps: D(x) and
        # D(G(z)), probabilities for dcgan, raw scores for hinge.
        self.d_real = self.d_fake = float("nan")

    def loss(self, phase: str, batch: Batch, nets: dict[str, Any]) -> torch.Tensor:
        d = nets["discriminator"]
        if phase == "discriminator":
            b, mine = len(batch.idx), batch.mine  # z for the global batch, then my share (ddp)
            z = torch.randn((b, self.gan.z_dim), generator=self.z_gen, device=self.images.device)
            x = self.images[batch.idx[mine]].contiguous(memory_format=self.memory_format)
            self.fake = nets["generator"](z[mine])  # (b / world, C, H, W), kept for phase 2
            if self.gan.loss == "hinge":  # no BatchNorm: one pass, one power iteration per layer
                logits = d(torch.cat([x, self.fake.detach()]))  # (2 b / world,)
                real, fake = logits[: len(x)], logits[len(x) :]
            else:  # BatchNorm: real and fake in batches of their own (Radford et al.'s practice)
                real, fake = d(x), d(self.fake.detach())
            self._track(real.detach(), fake.detach())
            return self.d_loss(real.float(), fake.float())  # (b / world,)
        assert self.fake is not None, "the generator phase follows the discriminator's"
        self._sync_ema_buffers()
        fake, self.fake = self.fake, None
        return self.g_loss(d(fake).float())  # (b / world,), through D's updated weights

    def _track(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        if self.gan.loss == "dcgan":
            real, fake = torch.sigmoid(real), torch.sigmoid(fake)
        r, f = real.float().mean().item(), fake.float().mean().item()
        first = self.d_real != self.d_real  # NaN: no step yet
        self.d_real = r if first else 0.98 * self.d_real + 0.02 * r
        self.d_fake = f if first else 0.98 * self.d_fake + 0.02 * f

    @torch.no_grad()
    def _sync_ema_buffers(self) -> None:
        """BatchNorm's running statistics of the generator into its EMA copy."""
        raw, ema = self.networks["generator"], self.networks["generator_ema"]
        for b_ema, b_raw in zip(ema.buffers(), raw.buffers(), strict=True):
            b_ema.copy_(b_raw)

    def describe(self) -> str:
        d, gan = self.dataset, self.gan
        g, disc = self.networks["generator"], self.networks["discriminator"]
        kind = "DCGAN (BCE, BatchNorm D)" if gan.loss == "dcgan" else "hinge GAN (spectral-norm D)"
        return (
            f"{d.name} ({self.num_items} images, {d.channels}x{d.image_size}x{d.image_size}), "
            f"{kind}: G {count_parameters(g):,} + D {count_parameters(disc):,} parameters"
        )

    def preview(self, path: Path) -> Path:
        x = generate_gan(self.networks["generator_ema"], num_images=len(self.preview_z),
                         z=self.preview_z)  # fmt: skip
        return viz.save_grid(x, path)

    def state_dict(self) -> dict[str, Any]:
        return {"d_real": self.d_real, "d_fake": self.d_fake}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.d_real, self.d_fake = (
            state.get("d_real", float("nan")),
            state.get("d_fake", float("nan")),
        )

    def report(self) -> Report:
        gan, what = self.gan, "probability" if self.gan.loss == "dcgan" else "score"
        return Report(
            facts={
                "loss": "dcgan: non-saturating BCE, BatchNorm discriminator (Radford et al. 2016)"
                if gan.loss == "dcgan"
                else "hinge, spectrally normalised discriminator (Miyato et al. 2018)",
                "z dimension": gan.z_dim,
                "widths (G, D)": f"{gan.g_width}, {gan.d_width}",
                "Adam betas": f"{gan.beta1:g}, {gan.beta2:g}",
                f"D(x), mean {what} (running, last steps)": f"{self.d_real:.3f}",
                f"D(G(z)), mean {what} (running, last steps)": f"{self.d_fake:.3f}",
            },
            final_caption="Samples from the generator (EMA weights) on the fixed preview z",
        )
