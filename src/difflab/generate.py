"""From a trained network to images: load a checkpoint, build the denoiser, run a sampler.

Used by ``difflab sample``, the training previews and the demo, so they all sample the same way.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from difflab.checkpoint import Checkpoint, load_checkpoint, load_weights_into, numpy_weights
from difflab.config import RunConfig
from difflab.consistency import consistency_function, consistency_timesteps, sample_consistency
from difflab.data import load_dataset
from difflab.models.gan import Generator, build_networks
from difflab.models.unet import UNet
from difflab.nn_numpy import NumpyUNet
from difflab.samplers import SAMPLERS, Denoiser, make_denoiser, sample, timestep_sequence
from difflab.schedules import Schedule, make_schedule


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; anything else is passed to torch.device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(
            f"unknown device {name!r}; expected auto, cpu, cuda, cuda:N or mps"
        ) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here")
    return device


@dataclass
class LoadedModel:
    """A network ready to sample, with the configuration and schedule it was trained with."""

    model: UNet | NumpyUNet
    config: RunConfig
    schedule: Schedule
    device: torch.device


def load_model(
    checkpoint: str | os.PathLike[str] | Checkpoint,
    device: str = "auto",
    *,
    ema: bool = True,
    backend: str = "torch",
) -> LoadedModel:
    """Build the U-Net stored in a checkpoint, in either backend, and load its (EMA) weights.

    A checkpoint written by one backend loads into the other: both use the same names and shapes.
    """
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    if ckpt.config.gan is not None:
        raise ValueError(not_diffusion(ckpt))
    weights = ckpt.sampling_weights if ema else ckpt.model
    source = ckpt.path or "<memory>"
    model: UNet | NumpyUNet
    if backend == "numpy":
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
    sample_space(ckpt.config, dev)  # a latent model's autoencoder: missing or different fails here
    schedule = make_schedule(ckpt.config.diffusion.schedule, ckpt.config.diffusion.timesteps)
    return LoadedModel(model=model, config=ckpt.config, schedule=schedule, device=dev)


class PixelSpace:
    """Where a pixel model's samples live: they are the images (clamped to [-1, 1])."""

    clip_x0 = True  # the sampler may clip the predicted x0 to the images' range

    def to_images(self, x: Any) -> torch.Tensor:
        return torch.as_tensor(x).float().clamp(-1, 1).cpu()

    def from_images(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def wrap_callback(self, callback: Any) -> Any:
        return callback


def sample_space(config: RunConfig, device: Any = "cpu") -> Any:
    """The one dispatch point between what a model samples and the images it shows: a pixel
    model's samples are images; a latent diffusion model's (``config.latent``) are decoded by its
    autoencoder (``difflab.latent.LatentSpace``, checked against its recorded sha256)."""
    if config.latent is None:
        return PixelSpace()
    from difflab.latent import LatentSpace

    return LatentSpace(config, device)


def image_shape(config: RunConfig) -> tuple[int, int]:
    """(channels, size) of the images a checkpoint makes (a latent model's decoded images)."""
    if config.latent is not None:
        return config.latent.image_channels, config.latent.image_size
    return config.model.in_channels, config.model.image_size


# -------------------------------------------------------------------------------------------------
# Every kind of checkpoint: the one place that tells them apart (a diffusion U-Net, a distilled
# consistency model, which generate() samples, or a GAN's generator).


@dataclass
class LoadedGAN:
    """A GAN's generator (``difflab train-gan``) ready to draw: one evaluation per image."""

    model: Generator
    config: RunConfig
    device: torch.device


def checkpoint_kind(config: RunConfig) -> str:
    """What a checkpoint holds: ``gan``, ``consistency`` (difflab distill), ``progressive``
    (distill --method progressive: a diffusion U-Net sampled by DDIM in its steps) or
    ``diffusion``."""
    if config.gan is not None:
        return "gan"
    if config.consistency is not None:
        return "consistency"
    return "progressive" if config.progressive is not None else "diffusion"


def not_diffusion(ckpt: Checkpoint) -> str:
    """The one-line error for a GAN checkpoint given to a command that needs diffusion."""
    return (
        f"checkpoint {ckpt.path} is a GAN generator (made by difflab train-gan), not a diffusion "
        "model: this command needs a diffusion checkpoint (a GAN draws with difflab sample, "
        "evaluate and interpolate --seeds)"
    )


def load_any(
    checkpoint: str | os.PathLike[str] | Checkpoint,
    device: str = "auto",
    *,
    ema: bool = True,
    backend: str = "torch",
) -> LoadedModel | LoadedGAN:
    """The network of any difflab checkpoint, ready to draw images with ``draw``."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    if checkpoint_kind(ckpt.config) != "gan":
        return load_model(ckpt, device, ema=ema, backend=backend)
    if backend != "torch":
        raise ValueError(
            f"checkpoint {ckpt.path} is a GAN generator: it runs in torch, not the {backend} "
            "backend (the NumPy backend has the diffusion U-Net only)"
        )
    dev = pick_device(device)
    gan, mc = ckpt.config.gan, ckpt.config.model
    assert gan is not None
    generator, _ = build_networks(mc.image_size, mc.in_channels, gan)
    name = "generator_ema" if ema and "generator_ema" in ckpt.networks else "generator"
    if name not in ckpt.networks:
        raise ValueError(f"checkpoint {ckpt.path} holds no generator weights")
    load_weights_into(generator, ckpt.networks[name], ckpt.path or "<memory>")
    return LoadedGAN(model=generator.to(dev).eval(), config=ckpt.config, device=dev)


def draw(
    loaded: LoadedModel | LoadedGAN,
    *,
    num_images: int,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = False,
    **sampling: Any,
) -> torch.Tensor:
    """``num_images`` images (float32 NCHW in [-1, 1], CPU) from any loaded checkpoint: a GAN's
    generator on ``gan_latents(seed)`` (one quick pass: no progress bar), else ``generate`` with
    the ``sampling`` keywords."""
    if isinstance(loaded, LoadedGAN):
        if sampling:
            raise ValueError(
                f"a GAN draws an image in one generator evaluation; {', '.join(sampling)} "
                "apply to diffusion checkpoints only"
            )
        return generate_gan(loaded.model, num_images=num_images, seed=seed, batch_size=batch_size)
    return generate(
        loaded.model, loaded.config, loaded.schedule, num_images=num_images, seed=seed,
        batch_size=batch_size, progress=progress, **sampling,
    )  # fmt: skip


def gan_latents(num_images: int, z_dim: int, seed: int) -> torch.Tensor:
    """z ~ N(0, I), (num_images, z_dim), from a CPU generator seeded with ``seed``: the same z on
    every device and for any batch size, so ``--seed`` alone fixes a GAN's images."""
    return torch.randn(num_images, z_dim, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def generate_gan(
    generator: Generator,
    *,
    num_images: int,
    seed: int = 0,
    batch_size: int = 256,
    z: torch.Tensor | None = None,
) -> torch.Tensor:
    """G(z) for ``num_images`` latents (``gan_latents(seed)`` unless ``z`` is given), in eval mode
    (BatchNorm's running statistics: an image does not depend on the others in its batch)."""
    if num_images < 1:
        raise ValueError(f"number of images must be >= 1, got {num_images}")
    z = gan_latents(num_images, generator.z_dim, seed) if z is None else z
    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    out = [generator(chunk.to(device)).float().clamp(-1, 1).cpu() for chunk in z.split(batch_size)]
    generator.train(was_training)
    return torch.cat(out)  # (N, C, H, W)


def guided_model_fn(
    model: Callable[[Any, Any, Any], Any], y: Any, guidance: float, null_label: int
) -> Callable[[Any, Any], Any]:
    """Classifier-free guidance (Ho & Salimans 2022, Eq. 6): out = u + w (c - u).

    c is the network output for the labels ``y``, u for the null label the network learned under
    label dropout. w = 1 is plain conditional sampling (one pass), w = 0 unconditional, w > 1
    trades diversity for fidelity to the class. Mixing outputs is the same for every prediction
    target: eps, x0 and v are each affine in the output at fixed (x_t, t). Both halves run in one
    batch of 2B.
    """
    if y is None or guidance == 1.0:
        return lambda x_t, t: model(x_t, t, y)
    null = y * 0 + null_label  # same type, dtype and device as y
    if guidance == 0.0:
        return lambda x_t, t: model(x_t, t, null)
    cat = torch.cat if isinstance(y, torch.Tensor) else np.concatenate
    y2 = cat([y, null])

    def model_fn(x_t: Any, t: Any) -> Any:
        out = model(cat([x_t, x_t]), cat([t, t]), y2)
        cond, uncond = out[: len(y)], out[len(y) :]
        return uncond + guidance * (cond - uncond)

    return model_fn


def model_denoiser(
    model: UNet | NumpyUNet,
    config: RunConfig,
    schedule: Schedule,
    y: Any = None,
    guidance: float = 1.0,
    clip_x0: bool = True,
) -> Denoiser:
    """The sampler's ``denoiser(x_t, t) -> (eps, x0_pred)`` for a trained network, with guidance."""
    if config.consistency is not None:  # its output is a consistency function's, not eps/x0/v
        raise ValueError(
            "this checkpoint is a consistency model (made by difflab distill): it samples with "
            "difflab sample / evaluate --steps 1, 2 or 4, not with a diffusion sampler or the "
            "editing commands"
        )
    model_fn = guided_model_fn(model, y, guidance, config.model.num_classes)
    return make_denoiser(model_fn, schedule, config.diffusion.prediction, clip_x0)


def class_labels(
    config: RunConfig, class_label: int | str | None, num_images: int
) -> torch.Tensor | None:
    """The label of each image to draw: ``class_label`` for all, or classes in turn (0, 1, 2, ...).

    ``class_label`` may be an index or one of the checkpoint's class names. Unconditional models
    get None; asking them for a class is an error.
    """
    k = config.model.num_classes
    if k == 0:
        if class_label is not None:
            raise ValueError(
                f"class label {class_label!r} given, but this model is unconditional "
                "(train with --conditional to generate chosen classes)"
            )
        return None
    if class_label is None:
        return torch.arange(num_images) % k
    names = list(config.class_names)
    if isinstance(class_label, str) and not class_label.lstrip("-").isdigit():
        if class_label not in names:
            raise ValueError(f"unknown class {class_label!r}; expected one of {', '.join(names)}")
        index = names.index(class_label)
    else:
        index = int(class_label)
    if not 0 <= index < k:
        shown = f" ({', '.join(f'{i}={n}' for i, n in enumerate(names))})" if names else ""
        raise ValueError(f"class label {index} out of range; expected 0..{k - 1}{shown}")
    return torch.full((num_images,), index, dtype=torch.long)


def check_guidance(config: RunConfig, guidance: float | None) -> float:
    """The guidance scale to use: 1 (plain conditional) by default; an error without labels."""
    if guidance is None:
        return 1.0
    if config.model.num_classes == 0:
        raise ValueError(
            f"guidance {guidance:g} needs a class-conditional model; this checkpoint is "
            "unconditional (train with --conditional)"
        )
    if not (math.isfinite(guidance) and guidance >= 0):
        raise ValueError(f"guidance must be a finite number >= 0, got {guidance}")
    return guidance


def check_distilled_sampling(
    config: RunConfig, steps: int | None, guidance: float | None
) -> tuple[str, int]:
    """A distilled model's own sampler and steps: consistency sampling in 1, 2 or 4 steps (1 by
    default), or DDIM for a progressive student (its own steps by default). Its guidance is the
    one it was distilled at."""
    distilled = config.consistency or config.progressive
    assert distilled is not None
    if config.consistency is not None:
        sampler, steps = "consistency", steps or 1
        consistency_timesteps(config.diffusion.timesteps, steps)  # an unsupported --steps fails
    else:
        assert config.progressive is not None
        sampler, steps = "ddim", steps or config.progressive.steps
        timestep_sequence(config.diffusion.timesteps, steps)  # an unsupported --steps fails here
    if guidance is not None and guidance != distilled.guidance:
        raise ValueError(
            f"--guidance {guidance:g}: this model was distilled at guidance {distilled.guidance:g}, "
            "which is baked in (distil again with --guidance W for another)"
        )
    return sampler, steps


@torch.no_grad()
def generate(
    model: UNet | NumpyUNet,
    config: RunConfig,
    schedule: Schedule,
    *,
    num_images: int,
    seed: int = 0,
    sampler: str = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    clip_x0: bool = True,
    labels: torch.Tensor | None = None,
    guidance: float = 1.0,
    x_T: torch.Tensor | None = None,
    batch_size: int = 256,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    **options: Any,
) -> torch.Tensor:
    """Draw ``num_images`` samples (float32 NCHW in [-1, 1], on the CPU) from either backend.

    The initial noise and every sampler noise come from one generator seeded with ``seed``
    (``torch.Generator`` for the PyTorch U-Net, ``np.random.Generator`` for the NumPy one), so the
    same seed, model and flags give the same images. The callback is called for the first batch
    only (trajectory pictures need a few images, not thousands). ``labels`` (one per image) pick
    the classes of a conditional model and ``guidance`` the classifier-free guidance scale;
    ``x_T`` replaces the initial noise (to compare samplers or guidance scales on the same noise).
    ``progress`` shows a bar of the images drawn, a batch at a time (on stderr).
    """
    if sampler not in SAMPLERS and config.consistency is None:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if num_images < 1:
        raise ValueError(f"number of images must be >= 1, got {num_images}")
    mc = config.model
    if isinstance(model, NumpyUNet):
        rng = np.random.default_rng(seed)
        generator: Any = rng

        def noise(n: int) -> Any:
            return rng.standard_normal((n, mc.in_channels, mc.image_size, mc.image_size)).astype(
                model.dtype
            )
    else:
        device = next(model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
        was_training = model.training
        model.eval()

        def noise(n: int) -> Any:
            shape = (n, mc.in_channels, mc.image_size, mc.image_size)
            return torch.randn(shape, generator=generator, device=device)

    space = sample_space(config, "cpu" if isinstance(model, NumpyUNet) else device)
    clip_x0 = clip_x0 and space.clip_x0
    callback = space.wrap_callback(callback)
    out = []
    bar = tqdm(total=num_images, desc="generating", unit="img", disable=not progress, leave=False)
    for start in range(0, num_images, batch_size):
        n = min(batch_size, num_images - start)
        y = None if labels is None else labels[start : start + n]
        if y is not None:
            y = y.numpy() if isinstance(model, NumpyUNet) else y.to(device)

        x_start = noise(n) if x_T is None else _like_model(x_T[start : start + n], model)
        if config.consistency is not None:  # a distilled model: its own 1-4 step sampler
            x = sample_consistency_model(
                model, config, schedule, x_start, y, steps=steps or 1, generator=generator,
                callback=callback if start == 0 else None,
            )  # fmt: skip
        else:
            if config.progressive is not None:  # a distilled student: DDIM in its own steps,
                # unclipped as it was trained, its guidance baked in
                sampler, steps, eta, clip_x0 = "ddim", steps or config.progressive.steps, 0.0, False
                guidance = 1.0
            denoiser = model_denoiser(model, config, schedule, y, guidance, clip_x0)
            x = sample(
                sampler, denoiser, x_start, schedule, steps=steps, eta=eta, generator=generator,
                callback=callback if start == 0 else None, **options,
            )  # fmt: skip
        out.append(space.to_images(x))  # (n, C, H, W) images in [-1, 1], on the CPU
        bar.update(n)
    bar.close()
    if not isinstance(model, NumpyUNet):
        model.train(was_training)
    return torch.cat(out)


def sample_consistency_model(
    model: UNet | NumpyUNet,
    config: RunConfig,
    schedule: Schedule,
    x_T: Any,
    y: Any,
    *,
    steps: int,
    generator: Any,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> Any:
    """``steps``-step consistency sampling (``difflab.consistency``) of a distilled model; its
    guidance scale was baked in by distillation."""
    f = consistency_function(lambda x, t: model(x, t, y), schedule, config.diffusion.prediction)
    timesteps = consistency_timesteps(schedule.num_timesteps, steps)
    return sample_consistency(
        f, x_T, schedule, timesteps=timesteps, generator=generator, callback=callback
    )


def load_input_images(
    config: RunConfig,
    paths: Sequence[str | os.PathLike[str]] = (),
    data_indices: Sequence[int] = (),
) -> torch.Tensor:
    """Images to edit, as the model expects them: (N, C, H, W) in [-1, 1].

    From image files (any format Pillow reads; they must already have the model's size and
    channel count, so nothing is silently resized or recoloured), or by index from the test
    split of the dataset the model was trained on.
    """
    channels, image_size = image_shape(config)  # a latent model's: its decoded images'
    want = f"{image_size}x{image_size} with {channels} channel(s)"
    out = []
    for path in paths:
        try:
            with Image.open(path) as picture:
                picture.load()
                mode, size = picture.mode, picture.size
                pixels = np.asarray(picture)
        except (OSError, SyntaxError) as err:
            raise ValueError(f"cannot read image {path}: {err}") from err
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]  # (H, W, 1)
        if mode in ("RGBA", "LA") and channels != pixels.shape[2]:
            pixels = pixels[:, :, :-1]  # drop the alpha channel
        if size != (image_size, image_size) or pixels.shape[2] != channels:
            raise ValueError(
                f"image {path} is {size[0]}x{size[1]} with {pixels.shape[2]} channel(s) "
                f"(mode {mode}); this checkpoint expects {want}"
            )
        out.append(torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1))
    if data_indices:
        tc = config.train
        test = load_dataset(
            tc.data, data_dir=tc.data_dir, split="test", image_size=image_size, seed=tc.seed,
            download=False,
        )  # fmt: skip
        for index in data_indices:
            if not 0 <= index < test.num_images:
                raise ValueError(
                    f"--from-data index {index} out of range; the {tc.data} test split has "
                    f"{test.num_images} images (0..{test.num_images - 1})"
                )
            out.append(torch.from_numpy(test.images[index]))
    if not out:
        raise ValueError("no input image: give --image PATH or --from-data INDEX")
    return torch.stack(out)  # (N, C, H, W)


def load_mask(path: str | os.PathLike[str], config: RunConfig) -> torch.Tensor:
    """A (1, 1, H, W) inpainting mask from an image file: white (> 50% grey) = regenerate."""
    size = config.model.image_size
    try:
        with Image.open(path) as picture:
            grey = np.asarray(picture.convert("L"), dtype=np.float32)  # (H, W)
    except (OSError, SyntaxError) as err:
        raise ValueError(f"cannot read mask {path}: {err}") from err
    if grey.shape != (size, size):
        raise ValueError(
            f"mask {path} is {grey.shape[1]}x{grey.shape[0]}; this checkpoint expects {size}x{size}"
        )
    mask = torch.from_numpy((grey > 127.5).astype(np.float32))[None, None]
    if not mask.any():
        raise ValueError(f"mask {path} is all black: nothing to regenerate (white = regenerate)")
    return mask


def _like_model(x: torch.Tensor, model: UNet | NumpyUNet) -> Any:
    """A batch as the model's backend wants it: a NumPy array or a tensor on the model's device."""
    if isinstance(model, NumpyUNet):
        return x.numpy().astype(model.dtype)
    return x.to(next(model.parameters()).device)


class TrajectoryRecorder:
    """A sampler callback that keeps x_t (and x0_pred) at chosen timesteps, for pictures and GIFs."""

    def __init__(self, keep: Callable[[int, int], bool], num_images: int = 8) -> None:
        self.keep = keep  # keep(i, t) -> whether to record this step
        self.num_images = num_images
        self.frames: list[tuple[int, torch.Tensor]] = []  # (t, x_t) in sampling order
        self.x0_frames: list[tuple[int, torch.Tensor]] = []  # (t, x0_pred)

    def __call__(self, info: dict[str, Any]) -> None:
        if self.keep(info["i"], info["t"]):
            self.frames.append((info["t"], _cpu_copy(info["x"][: self.num_images])))
            self.x0_frames.append((info["t"], _cpu_copy(info["x0_pred"][: self.num_images])))

    def with_x0(self, final: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """(t, x_t, x0_pred) per recorded step, then (-1, final, final): frames for
        ``viz.save_denoising_gif``."""
        frames = [(t, x, x0) for (t, x), (_, x0) in zip(self.frames, self.x0_frames, strict=True)]
        final = final[: self.num_images]
        return [*frames, (-1, final, final)]


def _cpu_copy(x: Any) -> torch.Tensor:
    """A float32 CPU tensor copy of a torch tensor or NumPy array (either backend's batch)."""
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().clone()
    return torch.tensor(np.asarray(x, dtype=np.float32))
