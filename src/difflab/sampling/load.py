"""A checkpoint's network, ready to draw: the U-Net (either backend) with its schedule and sample
space, or a GAN's generator. Which loader a checkpoint takes is the kind table's decision
(``difflab.kinds``); these functions build what they are told to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from difflab.checkpoint import Checkpoint, load_weights_into, numpy_weights
from difflab.config import GANConfig, RunConfig
from difflab.device import pick_device
from difflab.models.gan import Generator, build_networks
from difflab.models.unet import UNet
from difflab.nn_numpy import NumpyUNet
from difflab.sampling.spaces import LatentSpace, PixelSpace, latent_space
from difflab.schedules import Schedule, make_schedule


@dataclass
class LoadedModel:
    """A network ready to draw images, with the kind, configuration and schedule it was trained
    with and the space its samples live in (``sampling.spaces``)."""

    model: UNet | NumpyUNet | Generator
    config: RunConfig
    schedule: Schedule | None  # None for a GAN: it has no diffusion
    device: torch.device
    space: PixelSpace | LatentSpace = PixelSpace()  # noqa: RUF009 (stateless)
    path: Path | None = None  # the checkpoint it came from

    @property
    def kind(self) -> str:
        return self.config.kind


@dataclass
class LoadedGAN(LoadedModel):
    """A GAN's generator (``difflab train-gan``): one evaluation per image, no schedule."""


def load_unet(
    ckpt: Checkpoint, device: str = "auto", *, ema: bool = True, backend: str = "torch"
) -> LoadedModel:
    """Build the U-Net stored in a checkpoint, in either backend, and load its (EMA) weights.

    A checkpoint written by one backend loads into the other: both use the same names and shapes.
    """
    weights = ckpt.sampling_weights if ema else ckpt.model
    source = ckpt.path or "<memory>"
    model: UNet | NumpyUNet
    if backend == "numpy":
        if ckpt.config.takes_prompts:
            raise ValueError(
                f"checkpoint {source} is a text-conditioned model: it runs in torch only (the "
                "NumPy U-Net has no text encoder)"
            )
        dev = torch.device("cpu")
        model = NumpyUNet(ckpt.config.model)
        try:
            model.load_state_dict(numpy_weights(weights))
        except ValueError as err:
            raise ValueError(f"checkpoint {source}: {err}") from err
    elif backend == "torch":
        dev = pick_device(device)
        model = UNet(ckpt.config.model)
        load_weights_into(model, weights, source)
        model.to(dev).eval()
    else:
        raise ValueError(f"unknown backend {backend!r}; expected torch or numpy")
    schedule = make_schedule(ckpt.config.diffusion.schedule, ckpt.config.diffusion.timesteps)
    return LoadedModel(model, ckpt.config, schedule, dev, PixelSpace(), ckpt.path)


def load_latent_unet(
    ckpt: Checkpoint, device: str = "auto", *, ema: bool = True, backend: str = "torch"
) -> LoadedModel:
    """``load_unet``, with the latent space of the autoencoder the checkpoint carries (or, for
    an older one, finds by path and sha256: missing or different fails here)."""
    loaded = load_unet(ckpt, device, ema=ema, backend=backend)
    loaded.space = latent_space(ckpt, loaded.device)
    return loaded


def load_generator(
    ckpt: Checkpoint, device: str = "auto", *, ema: bool = True, backend: str = "torch"
) -> LoadedGAN:
    """A GAN checkpoint's generator (its EMA copy when kept and ``ema``), in eval mode."""
    if backend != "torch":
        raise ValueError(
            f"checkpoint {ckpt.path} is a GAN generator: it runs in torch, not the {backend} "
            "backend (the NumPy backend has the diffusion U-Net only)"
        )
    dev = pick_device(device)
    gan, mc = ckpt.config.section(GANConfig), ckpt.config.model
    generator, _ = build_networks(mc.image_size, mc.in_channels, gan)
    name = "generator_ema" if ema and "generator_ema" in ckpt.networks else "generator"
    if name not in ckpt.networks:
        raise ValueError(f"checkpoint {ckpt.path} holds no generator weights")
    load_weights_into(generator, ckpt.networks[name], ckpt.path or "<memory>")
    return LoadedGAN(generator.to(dev).eval(), ckpt.config, None, dev, PixelSpace(), ckpt.path)
