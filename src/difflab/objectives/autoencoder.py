"""The autoencoder of latent diffusion (Rombach et al. 2022, Sec. 3.1, App. G): an objective on the
shared harness (``difflab train-autoencoder``).

One training example: x from the data, eps ~ N(0, I) of the latent's shape, and

    mean, logvar = E(x);  z = mean + exp(logvar / 2) eps;  x_rec = D(z)
    loss = mean_pixels(|x_rec - x| + l2_weight (x_rec - x)^2)
           + kl_weight * (latent elements / pixels) * mean_latents(KL(q(z|x) || N(0, I)))

The reductions: LDM (``LPIPSWithDiscriminator``, with its learned log-variance at its initial 0)
*sums* the reconstruction error over a sample's pixels and the KL over its latent elements, and
weighs the KL by 1e-6. This objective takes means instead, so that the loss reads like the
diffusion loss; multiplying the KL mean by (latent elements / pixels) keeps the balance exactly:
the loss is LDM's summed loss divided by the number of pixels, and ``kl_weight`` keeps LDM's meaning
(1e-6 here is LDM's 1e-6). For MNIST at 8 x 8 x 4 latents the KL mean's factor is
1e-6 * 256 / 784 = 3.3e-7. LDM's perceptual (LPIPS) term and its patch discriminator are left out:
LPIPS needs ImageNet VGG weights, and on 28 px digits L1 + L2 suffice (docs/latent.md).

At the end (``finish``) the run measures the latent scale, 1 / std of z = mean + sigma eps over
the whole training set (App. G: LDM uses the first batch; the whole set is steadier), and stores
it in ``model_final.safetensors``'s configuration (``AutoencoderConfig.latent_scale``); its report
gives the reconstruction PSNR on held-out images, the FID of the reconstructions when an evaluator
for the data exists (the ceiling latent diffusion cannot beat), and pictures.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difflab import viz
from difflab.checkpoint import write_checkpoint
from difflab.config import AutoencoderConfig, RunConfig, to_dict
from difflab.data import ImageDataset, load_dataset
from difflab.io import write_text_atomic
from difflab.models.autoencoder import Autoencoder, gaussian_kl
from difflab.training.objective import Batch, Context, Objective, Phase, Report, TrainResult

ENCODE_BATCH = 500  # images per encoder call when a whole set is encoded


def autoencoder_loss(
    ae: Any, x: torch.Tensor, eps: torch.Tensor, cfg: AutoencoderConfig
) -> torch.Tensor:
    """The per-sample loss above (STYLE 5: outside the model), (B,)."""
    rec, mean, logvar = ae(x, eps)  # (B, C, S, S), (B, c, l, l) x2
    diff = rec - x
    recon = (diff.abs() + cfg.l2_weight * diff.pow(2)).flatten(1).mean(dim=1)  # (B,)
    kl = gaussian_kl(mean, logvar).flatten(1).mean(dim=1)  # (B,)
    balance = mean[0].numel() / x[0].numel()  # latent elements / pixels: LDM's summed balance
    return recon + cfg.kl_weight * balance * kl


@torch.no_grad()
def encode_images(ae: Autoencoder, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and log-variance of every image, (N, c, l, l) each, in batches."""
    was_training = ae.training
    ae.eval()
    means, logvars = [], []
    for chunk in images.split(ENCODE_BATCH):
        mean, logvar = ae.encode(chunk)
        means.append(mean)
        logvars.append(logvar)
    ae.train(was_training)
    return torch.cat(means), torch.cat(logvars)


@torch.no_grad()
def reconstruct(ae: Autoencoder, images: torch.Tensor) -> torch.Tensor:
    """D(mean of E(x)) for every image, clamped to [-1, 1], on the CPU."""
    mean, _ = encode_images(ae, images)
    was_training = ae.training
    ae.eval()
    out = torch.cat([ae.decode(z).clamp(-1, 1).cpu() for z in mean.split(ENCODE_BATCH)])
    ae.train(was_training)
    return out


def latent_scale(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator) -> float:
    """1 / std of z = mean + sigma eps over all its elements (LDM App. G's scale factor)."""
    eps = torch.randn(mean.shape, generator=generator, device=mean.device)
    z = mean + torch.exp(0.5 * logvar) * eps  # (N, c, l, l)
    return float(1.0 / z.double().std())


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2): 10 log10(4 / MSE)."""
    mse = (x - y).pow(2).flatten(1).mean(dim=1).clamp_min(1e-12)  # (N,)
    return 10.0 * torch.log10(4.0 / mse)


def channel_maps(images: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Cells (n, 1 + c, C, S, S) for a picture: each image, then each latent channel of its
    posterior mean, stretched to [-1, 1] per channel and upscaled (nearest) to the image's size."""
    n, c = mean.shape[:2]
    s, channels = images.shape[-1], images.shape[1]
    lo = mean.amin(dim=(0, 2, 3), keepdim=True)
    hi = mean.amax(dim=(0, 2, 3), keepdim=True)
    maps = (mean - lo) / (hi - lo).clamp_min(1e-8) * 2 - 1  # (n, c, l, l) in [-1, 1]
    maps = torch.nn.functional.interpolate(maps, size=(s, s), mode="nearest")  # (n, c, S, S)
    maps = maps[:, :, None].expand(n, c, channels, s, s)  # (n, c, C, S, S)
    return torch.cat([images[:, None].cpu(), maps.cpu()], dim=1)


@torch.no_grad()
def latent_walk(ae: Autoencoder, a: torch.Tensor, b: torch.Tensor, frames: int) -> torch.Tensor:
    """D((1 - u) mean(a) + u mean(b)) for u = 0 .. 1: a straight walk in latent space, (F, C, S, S)."""
    ma, _ = ae.encode(a[None])
    mb, _ = ae.encode(b[None])
    u = torch.linspace(0, 1, frames, device=ma.device)[:, None, None, None]  # (F, 1, 1, 1)
    return ae.decode((1 - u) * ma + u * mb).clamp(-1, 1).cpu()


class AutoencoderObjective(Objective):
    """Network ``autoencoder`` (no EMA: LDM trains its first stage without one), optimiser
    ``optim`` (AdamW), generator ``noise`` (the eps of the reparameterisation)."""

    def __init__(
        self, config: RunConfig, dataset: ImageDataset, test: ImageDataset, ctx: Context
    ) -> None:
        cfg, ac = config.train, config.section(AutoencoderConfig)
        self.config, self.dataset, self.test = config, dataset, test
        self.memory_format = ctx.memory_format
        ae = Autoencoder(ac).to(ctx.device, memory_format=ctx.memory_format)
        self.networks = {"autoencoder": ae}
        self.ema = {}
        adamw = torch.optim.AdamW(ae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.optimizers = {"optim": adamw}
        self.noise_gen = torch.Generator(device=ctx.device).manual_seed(cfg.seed + 1)
        self.generators = {"noise": self.noise_gen}
        self.phases = (Phase("reconstruct", network="autoencoder", optimizer="optim", lr=cfg.lr),)
        self.images = torch.from_numpy(dataset.images).to(ctx.device)  # (N, C, S, S) in [-1, 1]
        self.num_items = len(self.images)
        self.latent_shape = (ac.latent_channels, ac.latent_size, ac.latent_size)
        self.facts: dict[str, Any] = {}

    def loss(self, phase: str, batch: Batch, nets: dict[str, Any]) -> torch.Tensor:
        b, mine = len(batch.idx), batch.mine  # eps for the global batch, then my share (ddp)
        eps = torch.randn((b, *self.latent_shape), generator=self.noise_gen,
                          device=self.images.device)[mine]  # fmt: skip
        x = self.images[batch.idx[mine]].contiguous(memory_format=self.memory_format)
        ac = self.config.section(AutoencoderConfig)
        return autoencoder_loss(nets["autoencoder"], x, eps, ac)  # (b / world,)

    def describe(self) -> str:
        d, ac = self.dataset, self.config.section(AutoencoderConfig)
        n = sum(p.numel() for p in self.networks["autoencoder"].parameters())
        return (
            f"{d.name} ({self.num_items} images, {d.channels}x{d.image_size}x{d.image_size}), "
            f"autoencoder with {n:,} parameters to {ac.latent_channels}x{ac.latent_size}x"
            f"{ac.latent_size} latents"
        )

    def held_out(self, n: int | None = None) -> torch.Tensor:
        device = self.images.device
        return torch.from_numpy(self.test.images[:n]).to(device)

    def preview(self, path: Path) -> Path:
        x = self.held_out(8)
        rec = reconstruct(self.networks["autoencoder"], x)
        cells = torch.stack([x.cpu(), rec])  # (2, 8, C, S, S)
        return viz.save_labelled_grid(
            cells, path, [""] * len(x), row_headers=["original", "reconstruction"]
        )

    def finish(self, result: TrainResult, final_preview: Path | None) -> None:
        """The latent scale into model_final.safetensors; PSNR, FID and the pictures."""
        ae, out, ac = (
            self.networks["autoencoder"],
            result.run_dir,
            self.config.section(AutoencoderConfig),
        )
        mean, logvar = encode_images(ae, self.images)
        gen = torch.Generator(device=mean.device).manual_seed(self.config.train.seed + 2)
        scale = latent_scale(mean, logvar, gen)
        self.config = replace(self.config, autoencoder=replace(ac, latent_scale=scale))
        weights = {k: m.state_dict() for k, m in self.networks.items()}
        write_checkpoint(out / "model_final.safetensors", self.config, weights)
        write_text_atomic(out / "config.json", json.dumps(to_dict(self.config), indent=2) + "\n")

        test = self.held_out()
        rec = reconstruct(ae, test)
        self.facts = {
            "latent": f"{ac.latent_channels} x {ac.latent_size} x {ac.latent_size} "
            f"({ac.latent_channels * ac.latent_size**2} numbers for "
            f"{ac.image_channels * ac.image_size**2} pixels)",
            "latent scale (1 / std of mean + sigma eps, training set)": f"{scale:.4f}",
            "latent mean std / mean sigma": f"{float(mean.std()):.3f} / "
            f"{float(torch.exp(0.5 * logvar).mean()):.3f}",
            f"reconstruction PSNR ({len(test)} held-out images)": f"{float(psnr(rec, test.cpu()).mean()):.2f} dB",
            "reconstruction FID": reconstruction_fid(self.config, rec.numpy(), self.test),
            "loss": f"L1 + {ac.l2_weight:g} L2 (pixel mean) + {ac.kl_weight:g} KL (LDM's sum "
            "weight; see difflab.objectives.autoencoder)",
        }
        x = test[:6]
        with torch.no_grad():
            m, _ = ae.encode(x)
        cells = channel_maps(x, m)
        headers = ["image", *[f"z{k}" for k in range(ac.latent_channels)]]
        viz.save_labelled_grid(cells, out / "latent_channels.png", headers)
        cells = torch.stack([x.cpu(), rec[:6]])
        viz.save_labelled_grid(
            cells, out / "reconstructions.png", [""] * len(x),
            row_headers=["original", "reconstruction"],
        )  # fmt: skip
        if len(test) >= 2:
            walk = latent_walk(ae, test[0], test[1], 9)
            headers = [f"{k / 8:.2f}" for k in range(9)]
            viz.save_labelled_grid(walk[None], out / "latent_walk.png", headers)

    def report(self) -> Report:
        return Report(
            facts=self.facts,
            pictures=(
                ("Held-out originals and their reconstructions", "reconstructions.png"),
                ("The latent channels (posterior means) of held-out images", "latent_channels.png"),
                ("A straight walk between two images' latents, decoded", "latent_walk.png"),
            ),
            final_caption="Held-out originals and reconstructions (final weights)",
        )


def reconstruction_fid(config: RunConfig, reconstructions: np.ndarray, test: ImageDataset) -> str:
    """FID of the reconstructed test images against the test split, in the features of difflab's
    evaluator for the data (``difflab train-evaluator``), or why there is none."""
    from difflab import evaluation as ev

    tc, size = config.train, reconstructions.shape[-1]
    try:
        path = ev.default_evaluator_path(tc.data, size, tc.data_dir)
    except ValueError as err:
        return f"not measured ({err})"
    if not path.is_file():
        return (
            f"not measured (no evaluator; {ev.train_evaluator_command(tc.data, size, tc.data_dir)})"
        )
    evaluator = ev.load_evaluator(path, "cpu")
    data_dir = tc.data_dir or evaluator.info.get("data_dir")
    seed = tc.seed if tc.data in ("emoji", "shapes") else 0
    train_set, test_set = ev.reference_datasets(tc.data, data_dir, image_size=size, seed=seed)
    reference = ev.reference_statistics(evaluator, train_set, test_set)
    fid = ev.score_features(evaluator.features(reconstructions), reference)["fid"]
    return f"{fid:.2f} ({len(reconstructions)} test images, {path.name})"


def autoencoder_config_for(dataset: ImageDataset, **fields: Any) -> AutoencoderConfig:
    """The autoencoder for this data, with ``fields`` (None: the default) changed. Unless given,
    the padded size is the smallest multiple of 2^levels at or above the image size (28 -> 32):
    the latent grid (padded / 2^(levels - 1)) then has an even size, which the latent U-Net can
    halve once more (8 x 8 -> 4 x 4; a 7 x 7 grid would leave it a single level)."""
    cfg = AutoencoderConfig(image_size=dataset.image_size, image_channels=dataset.channels)
    cfg = replace(cfg, **{k: v for k, v in fields.items() if v is not None})
    if fields.get("padded_size") is None:
        step = 2 ** len(cfg.channel_mults)
        cfg = replace(cfg, padded_size=math.ceil(cfg.image_size / step) * step)
    cfg.validate()
    return cfg


def load_test_split(config: RunConfig) -> ImageDataset:
    """The held-out images of the autoencoder's data (the report's PSNR, FID and pictures)."""
    tc, ac = config.train, config.section(AutoencoderConfig)
    return load_dataset(
        tc.data, data_dir=tc.data_dir, split="test", image_size=ac.image_size, seed=tc.seed,
        download=False, vendors=tc.vendors,
    )  # fmt: skip
