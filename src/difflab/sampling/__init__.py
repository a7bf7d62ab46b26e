"""Sampling: from a checkpoint to images. Knows no trainer (nothing here imports ``training`` or
``objectives``); which loader and planner a checkpoint takes is the kind table's (``difflab.kinds``).

  load.py    the network of a checkpoint, ready to draw: ``LoadedModel`` (U-Net, either backend,
             with its schedule and sample space) or ``LoadedGAN``
  plan.py    ``SamplingRequest`` -> ``SamplingPlan``: one planner per way of drawing (diffusion,
             consistency, progressive, GAN), each checking and completing the request
  draw.py    ``execute`` a plan; ``generate`` (a sampler on a bare network, also the training
             previews'), the guided denoiser, the GAN's draw, ``TrajectoryRecorder``
  spaces.py  pixel or latent: the transform at the two ends (decode after the sampler, encode
             before img2img), with the autoencoder a latent checkpoint carries
  inputs.py  the input images and masks of the editing commands

The solvers themselves are formulas beside ``diffusion.py``: ``difflab.samplers`` (DDPM, DDIM,
DPM-Solver++, iPNDM, UniPC), ``difflab.consistency`` and ``difflab.editing``.
"""

from difflab.sampling.draw import (
    TrajectoryRecorder,
    execute,
    gan_latents,
    generate,
    generate_gan,
    guided_model_fn,
    model_denoiser,
)
from difflab.sampling.inputs import load_input_images, load_mask
from difflab.sampling.load import LoadedGAN, LoadedModel
from difflab.sampling.plan import SamplingPlan, SamplingRequest, check_guidance, class_labels
from difflab.sampling.spaces import LatentSpace, PixelSpace, load_autoencoder

__all__ = [
    "LatentSpace",
    "LoadedGAN",
    "LoadedModel",
    "PixelSpace",
    "SamplingPlan",
    "SamplingRequest",
    "TrajectoryRecorder",
    "check_guidance",
    "class_labels",
    "execute",
    "gan_latents",
    "generate",
    "generate_gan",
    "guided_model_fn",
    "load_autoencoder",
    "load_input_images",
    "load_mask",
    "model_denoiser",
]
