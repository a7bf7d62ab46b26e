"""Latent diffusion (Rombach et al. 2022): the diffusion objective (``objectives.diffusion``) on
the scaled latents of a trained autoencoder (``objectives.autoencoder``).

Training (``difflab train --latent AE.safetensors``): the training set is encoded once, keeping
each image's posterior mean and sigma; every time an image comes up in a batch (once an epoch) its
latent is drawn afresh, z = mean + sigma eps, from the objective's own generator ``latent`` (so
that --resume stays bit for bit), and multiplied by the autoencoder's latent scale (LDM App. G),
so the U-Net sees data of unit variance like images. The U-Net is sized for the latent grid
(channels = latent channels, size = latent size). The checkpoint carries the autoencoder's
weights and shape beside the U-Net (network ``autoencoder``, ``LatentConfig.architecture``), so it
samples wherever it is moved, and records the file it came from by path and sha256; --resume
reads that file again (a missing or different one is a one-line error naming the expected hash).

Sampling: latent space is a transform at the two ends (``sampling.spaces.LatentSpace``): the
sampler works on latents, which are decoded after it (and encoded for img2img).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from difflab import viz
from difflab.config import (
    AutoencoderConfig,
    DiffusionConfig,
    LatentConfig,
    RunConfig,
    TrainConfig,
    default_model_config,
)
from difflab.data import ImageDataset
from difflab.models.unet import count_parameters
from difflab.objectives.diffusion import DiffusionObjective, prepare_run
from difflab.sampling.draw import TrajectoryRecorder, generate
from difflab.sampling.spaces import AUTOENCODER, LatentSpace, load_autoencoder
from difflab.training.objective import Batch, Context, TrainResult


class LatentDiffusion(DiffusionObjective):
    """``DiffusionObjective`` whose x0 are the scaled latents z = scale (mean + sigma eps) of the
    training images, drawn afresh from generator ``latent`` each time an image is in a batch."""

    def __init__(self, config: RunConfig, dataset: ImageDataset, ctx: Context) -> None:
        super().__init__(config, dataset, ctx)
        lc = config.section(LatentConfig)
        ae, _, _ = load_autoencoder(lc.autoencoder, lc.autoencoder_sha256, ctx.device)
        from difflab.objectives.autoencoder import encode_images

        self.space = LatentSpace(ae, lc.latent_scale)
        # Carried in every checkpoint, not trained (in no phase): the model samples anywhere.
        self.networks = {**self.networks, AUTOENCODER: ae}
        self.carried = (AUTOENCODER,)

        mean, logvar = encode_images(ae, self.images)  # (N, c, l, l) each, once
        self.pixels = self.images
        self.images = mean * lc.latent_scale  # the diffusion objective's data: scaled means
        self.sigmas = torch.exp(0.5 * logvar) * lc.latent_scale  # (N, c, l, l)
        self.latent_gen = torch.Generator(device=ctx.device).manual_seed(config.train.seed + 3)
        self.generators = {**self.generators, "latent": self.latent_gen}

    def x0_batch(self, batch: Batch) -> torch.Tensor:
        b = len(batch.idx)  # drawn for the global batch, then my share (ddp)
        eps = torch.randn((b, *self.images.shape[1:]), generator=self.latent_gen,
                          device=self.images.device)[batch.mine]  # fmt: skip
        idx = batch.idx[batch.mine]
        return self.images[idx] + self.sigmas[idx] * eps  # (b / world, c, l, l)

    def describe(self) -> str:
        lc, mc = self.config.section(LatentConfig), self.config.model
        return (
            f"latent diffusion on {lc.autoencoder}'s {mc.in_channels}x{mc.image_size}x"
            f"{mc.image_size} latents of {self.dataset.name} ({self.num_items} images), "
            f"U-Net with {count_parameters(self.networks['model']):,} parameters"
        )

    def finish(self, result: TrainResult, final_preview: Path | None) -> None:
        """The denoising trajectory decoded at each step, and the latent channels of samples."""
        from difflab.objectives.autoencoder import channel_maps

        cfg, out = self.config.train, result.run_dir
        recorder = TrajectoryRecorder(lambda i, t: True, num_images=6)
        images = generate(
            self.networks["ema"], self.config, self.schedule, num_images=6, seed=cfg.seed,
            sampler=cfg.preview_sampler, steps=cfg.preview_steps, callback=recorder,
            space=self.space,
        )  # fmt: skip
        viz.save_trajectory_grid([*recorder.frames, (-1, images)], out / "latent_trajectory.png")
        viz.save_trajectory_grid(
            [*recorder.x0_frames, (-1, images)], out / "latent_trajectory_x0.png"
        )
        with torch.no_grad():
            z = self.space.from_images(self.pixels[:6])
        cells = channel_maps(self.pixels[:6], z)
        headers = ["image", *[f"z{k}" for k in range(z.shape[1])]]
        viz.save_labelled_grid(cells, out / "latent_channels.png", headers)

    def report(self) -> Any:
        base = super().report()
        lc = self.config.section(LatentConfig)
        return replace(
            base,
            facts={**base.facts, "autoencoder": f"{lc.autoencoder} (sha256 {lc.autoencoder_sha256[:16]}...)",
                   "latent scale": f"{lc.latent_scale:.4f}"},
            pictures=(
                ("Denoising trajectory, each step's x_t decoded", "latent_trajectory.png"),
                ("Each step's predicted x0, decoded", "latent_trajectory_x0.png"),
                ("Training images and their (scaled) latent channels", "latent_channels.png"),
            ),
        )  # fmt: skip


def latent_run_config(
    autoencoder: str | os.PathLike[str],
    train_cfg: TrainConfig,
    diffusion_cfg: DiffusionConfig,
    model_overrides: dict[str, Any] | None = None,
    *,
    conditional: bool = False,
) -> tuple[RunConfig, ImageDataset]:
    """The configuration and data of ``difflab train --latent``: the autoencoder's data at its
    size, and the default U-Net for a dataset shaped like its latent grid (8 x 8 x 4 for MNIST:
    32/64 channels at 8/4 px, one block per level, attention at 4 px; ``default_model_config``)."""
    _, ae_config, sha = load_autoencoder(autoencoder)
    ac = ae_config.section(AutoencoderConfig)
    assert ac.latent_scale is not None
    if train_cfg.data != ae_config.train.data:
        raise ValueError(
            f"--data {train_cfg.data}: autoencoder {autoencoder} was trained on "
            f"{ae_config.train.data}; latent diffusion trains on the same data"
        )
    config, dataset = prepare_run(
        train_cfg, diffusion_cfg, None, image_size=ac.image_size, conditional=conditional
    )
    model = default_model_config(
        train_cfg.data, ac.latent_size, ac.latent_channels, config.model.num_classes
    )
    model = replace(model, **(model_overrides or {}))
    model.validate()
    latent = LatentConfig(
        autoencoder=str(autoencoder), autoencoder_sha256=sha, latent_scale=ac.latent_scale,
        image_size=ac.image_size, image_channels=ac.image_channels, architecture=ac,
    )  # fmt: skip
    return replace(config, model=model, latent=latent), dataset
