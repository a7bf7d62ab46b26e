"""Where a model's samples live, and the way between them and images: the two ends of sampling.

A pixel model's samples are the images (``PixelSpace``); a latent diffusion model's are the scaled
latents of an autoencoder (``LatentSpace``), decoded after the sampler and encoded for img2img,
as DiT does at its two ends. The solvers in between never ask which. A latent checkpoint carries
its autoencoder's weights (``latent_space``), so it samples wherever it is moved; one written
before it did finds the autoencoder by its recorded path and sha256 (``load_autoencoder``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from difflab.checkpoint import Checkpoint, load_checkpoint, load_weights_into
from difflab.config import AutoencoderConfig, LatentConfig, RunConfig
from difflab.io import file_sha256
from difflab.models.autoencoder import Autoencoder

# The autoencoder network's name in a checkpoint: an autoencoder run's, and the copy that a latent
# diffusion model carries.
AUTOENCODER = "autoencoder"


class PixelSpace:
    """Where a pixel model's samples live: they are the images (clamped to [-1, 1])."""

    pixels = True  # the samples are the images themselves
    clip_x0 = True  # the sampler may clip the predicted x0 to the images' range

    def to_images(self, x: Any) -> torch.Tensor:
        return torch.as_tensor(x).float().clamp(-1, 1).cpu()

    def from_images(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def wrap_callback(self, callback: Any) -> Any:
        return callback


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
    if ckpt.config.kind != "autoencoder" or AUTOENCODER not in ckpt.networks:
        raise ValueError(
            f"{path} is not an autoencoder (made by difflab train-autoencoder); --latent takes "
            "an autoencoder's model_final.safetensors"
        )
    ac = ckpt.config.section(AutoencoderConfig)
    if ac.latent_scale is None:
        raise ValueError(
            f"autoencoder {path} has no latent scale (a checkpoint of an unfinished run); use "
            "its run's model_final.safetensors"
        )
    ae = Autoencoder(ac)
    load_weights_into(ae, ckpt.networks[AUTOENCODER], path)
    ae.to(device).eval().requires_grad_(False)
    _LOADED[key] = (ae, ckpt.config)
    return ae, ckpt.config, sha


class LatentSpace:
    """Where a latent model's samples live: z_scaled = scale * z, decoded by D(z_scaled / scale)."""

    pixels = False  # the samples are latents: a cell covers several pixels
    clip_x0 = False  # latents are not bounded like pixels: the sampler must not clip x0 to [-1, 1]

    def __init__(self, ae: Autoencoder, scale: float) -> None:
        self.ae, self.scale = ae, scale
        self.device = next(ae.parameters()).device

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


def latent_space(ckpt: Checkpoint, device: Any = "cpu") -> LatentSpace:
    """The latent space of a latent diffusion checkpoint: the autoencoder it carries, or for a
    checkpoint written before it carried one, the file at its recorded path (checked by sha256)."""
    lc = ckpt.config.section(LatentConfig)
    if AUTOENCODER in ckpt.networks and lc.architecture is not None:
        ae = Autoencoder(lc.architecture)
        load_weights_into(ae, ckpt.networks[AUTOENCODER], ckpt.path or "<memory>")
        ae.to(device).eval().requires_grad_(False)
    else:
        ae, _, _ = load_autoencoder(lc.autoencoder, lc.autoencoder_sha256, device)
    return LatentSpace(ae, lc.latent_scale)
