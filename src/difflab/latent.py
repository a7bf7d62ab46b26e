"""Latent diffusion (Rombach et al. 2022): the diffusion objective of ``difflab.train`` on the
scaled latents of a trained autoencoder (``difflab.autoencoder``), and the way back to images.

Training (``difflab train --latent AE.safetensors``): the training set is encoded once, keeping
each image's posterior mean and sigma; every time an image comes up in a batch (once an epoch) its
latent is drawn afresh, z = mean + sigma eps, from the objective's own generator ``latent`` (so
that --resume stays bit for bit), and multiplied by the autoencoder's latent scale (LDM App. G),
so the U-Net sees data of unit variance like images. The U-Net is sized for the latent grid
(channels = latent channels, size = latent size). The checkpoint refers to its autoencoder by path
and sha256 content hash (``LatentConfig``); a missing or different file is a one-line error that
names the expected hash.

Sampling: ``generate.sample_space`` is the one dispatch point; for a latent model it is a
``LatentSpace``, which decodes samples (and, lazily, the x_t / x0_pred a callback sees) with the
autoencoder after dividing by the latent scale, and encodes input images for img2img.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from difflab import viz
from difflab.checkpoint import load_checkpoint, load_weights_into
from difflab.config import (
    DiffusionConfig,
    LatentConfig,
    RunConfig,
    TrainConfig,
    default_model_config,
)
from difflab.data import ImageDataset
from difflab.distill import file_sha256
from difflab.harness import Batch, Context, TrainResult, fit
from difflab.models.autoencoder import Autoencoder
from difflab.models.unet import count_parameters
from difflab.train import DiffusionObjective

# Loaded autoencoders by (resolved path, sha256, device): previews and the demo decode often.
_LOADED: dict[tuple[str, str, str], tuple[Autoencoder, RunConfig]] = {}


def load_autoencoder(
    path: str | os.PathLike[str], expected_sha256: str | None = None, device: Any = "cpu"
) -> tuple[Autoencoder, RunConfig, str]:
    """The autoencoder of a train-autoencoder run, checked; returns it (eval mode, on ``device``),
    its configuration and its file's sha256. With ``expected_sha256`` (a latent model's record),
    a missing or different file is a one-line ValueError naming the expected hash."""
    path = Path(path)
    if not path.is_file():
        if expected_sha256 is not None:
            raise ValueError(
                f"autoencoder {path} of this latent diffusion model does not exist (expected "
                f"the file with sha256 {expected_sha256}); put it back there"
            )
        raise ValueError(f"autoencoder {path} does not exist (expected a .safetensors file)")
    sha = file_sha256(path)
    if expected_sha256 is not None and sha != expected_sha256:
        raise ValueError(
            f"autoencoder {path} is not the one this latent diffusion model was trained with "
            f"(expected sha256 {expected_sha256}, found {sha}); put the original back"
        )
    key = (str(path.resolve()), sha, str(device))
    if key in _LOADED:
        return (*_LOADED[key], sha)
    ckpt = load_checkpoint(path)
    ac = ckpt.config.autoencoder
    if ac is None or "autoencoder" not in ckpt.networks:
        raise ValueError(
            f"{path} is not an autoencoder (made by difflab train-autoencoder); --latent takes "
            "an autoencoder's model_final.safetensors"
        )
    if ac.latent_scale is None:
        raise ValueError(
            f"autoencoder {path} has no latent scale (a checkpoint of an unfinished run); use "
            "its run's model_final.safetensors"
        )
    ae = Autoencoder(ac)
    load_weights_into(ae, ckpt.networks["autoencoder"], path)
    ae.to(device).eval().requires_grad_(False)
    _LOADED[key] = (ae, ckpt.config)
    return ae, ckpt.config, sha


class LatentSpace:
    """Where a latent model's samples live: z_scaled = scale * z, decoded by D(z_scaled / scale)."""

    clip_x0 = False  # latents are not bounded like pixels: the sampler must not clip x0 to [-1, 1]

    def __init__(self, config: RunConfig, device: Any = "cpu") -> None:
        lc = config.latent
        assert lc is not None
        self.ae, _, _ = load_autoencoder(lc.autoencoder, lc.autoencoder_sha256, device)
        self.scale = lc.latent_scale
        self.device = next(self.ae.parameters()).device

    @torch.no_grad()
    def to_images(self, z: Any) -> torch.Tensor:
        """Scaled latents (B, c, l, l) -> images (B, C, S, S) in [-1, 1], on the CPU."""
        z = torch.as_tensor(z).float().to(self.device)
        return self.ae.decode(z / self.scale).clamp(-1, 1).cpu()

    @torch.no_grad()
    def from_images(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, S, S) -> scaled posterior means (B, c, l, l) (img2img, interpolate)."""
        mean, _ = self.ae.encode(x.float().to(self.device))
        return mean * self.scale

    def wrap_callback(self, callback: Any) -> Any:
        """A sampler callback that sees decoded images in ``x`` and ``x0_pred`` (decoded only when
        read) and the latents in ``z`` and ``z0_pred``."""
        if callback is None:
            return None

        space = self

        class DecodedStep(dict):
            def __missing__(self, key: str) -> Any:
                source = {"x": "z", "x0_pred": "z0_pred"}.get(key)
                if source is None:
                    raise KeyError(key)
                self[key] = space.to_images(self[source])
                return self[key]

        def wrapped(info: dict[str, Any]) -> None:
            step = DecodedStep({k: v for k, v in info.items() if k not in ("x", "x0_pred")})
            step["z"], step["z0_pred"] = info["x"], info.get("x0_pred")
            callback(step)

        return wrapped


class LatentDiffusion(DiffusionObjective):
    """``DiffusionObjective`` whose x0 are the scaled latents z = scale (mean + sigma eps) of the
    training images, drawn afresh from generator ``latent`` each time an image is in a batch."""

    def __init__(self, config: RunConfig, dataset: ImageDataset, ctx: Context) -> None:
        super().__init__(config, dataset, ctx)
        lc = config.latent
        assert lc is not None
        ae, _, _ = load_autoencoder(lc.autoencoder, lc.autoencoder_sha256, ctx.device)
        from difflab.autoencoder import encode_images

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
        lc, mc = self.config.latent, self.config.model
        assert lc is not None
        return (
            f"latent diffusion on {lc.autoencoder}'s {mc.in_channels}x{mc.image_size}x"
            f"{mc.image_size} latents of {self.dataset.name} ({self.num_items} images), "
            f"U-Net with {count_parameters(self.networks['model']):,} parameters"
        )

    def finish(self, result: TrainResult, final_preview: Path | None) -> None:
        """The denoising trajectory decoded at each step, and the latent channels of samples."""
        from difflab.autoencoder import channel_maps
        from difflab.generate import TrajectoryRecorder, generate

        cfg, out = self.config.train, result.run_dir
        recorder = TrajectoryRecorder(lambda i, t: True, num_images=6)
        images = generate(
            self.networks["ema"], self.config, self.schedule, num_images=6, seed=cfg.seed,
            sampler=cfg.preview_sampler, steps=cfg.preview_steps, callback=recorder,
        )  # fmt: skip
        viz.save_trajectory_grid([*recorder.frames, (-1, images)], out / "latent_trajectory.png")
        viz.save_trajectory_grid(
            [*recorder.x0_frames, (-1, images)], out / "latent_trajectory_x0.png"
        )
        with torch.no_grad():
            space = LatentSpace(self.config, self.images.device)
            z = space.from_images(self.pixels[:6])
        cells = channel_maps(self.pixels[:6], z)
        headers = ["image", *[f"z{k}" for k in range(z.shape[1])]]
        viz.save_labelled_grid(cells, out / "latent_channels.png", headers)

    def report(self) -> Any:
        base = super().report()
        lc = self.config.latent
        assert lc is not None
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


def train_latent(
    config: RunConfig,
    dataset: ImageDataset,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train the latent U-Net ``config`` describes on ``dataset``'s latents, into ``out_dir``."""

    def make_objective(ctx: Context) -> LatentDiffusion:
        return LatentDiffusion(config, dataset, ctx)

    return fit(
        make_objective, config, out_dir, resume=resume, overwrite=overwrite, progress=progress
    )


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
    from difflab.train import prepare_run

    _, ae_config, sha = load_autoencoder(autoencoder)
    ac = ae_config.autoencoder
    assert ac is not None and ac.latent_scale is not None
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
        image_size=ac.image_size, image_channels=ac.image_channels,
    )  # fmt: skip
    return replace(config, model=model, latent=latent), dataset
