"""Denoising diffusion (Ho et al. 2020): the objective of ``difflab train`` on the harness.

``DiffusionObjective`` says what one step computes: draw t and eps for the batch, and take
``diffusion.diffusion_loss`` of the U-Net's prediction (eps, x0 or v, with min-SNR weights), or
with ``ModelConfig.learn_variance`` Nichol & Dhariwal's ``diffusion.hybrid_loss``. The
harness (``difflab.training``) does the rest: the loop, exact resume, Ctrl-C, limits, the
non-finite guard, torchrun. ``prepare_run`` turns the data and the flags into a ``RunConfig``.
Latent diffusion (``objectives.latent``) is this objective on an autoencoder's latents; the NumPy
U-Net trains in ``objectives.numpy_diffusion``.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difflab import compose, distributed, viz
from difflab.config import DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from difflab.data import (
    EMOJI_DATASOURCE,
    MNIST_COMPOSE,
    ImageDataset,
    caption_vocabulary,
    load_dataset,
    text_training_data,
)
from difflab.device import check_precision, pick_device
from difflab.diffusion import VLB_WEIGHT, diffusion_loss, hybrid_loss
from difflab.models.text import tokenize
from difflab.models.unet import UNet, count_parameters
from difflab.sampling.draw import generate
from difflab.sampling.plan import ddpm_variance
from difflab.sampling.spaces import LatentSpace, PixelSpace
from difflab.schedules import Schedule, make_schedule
from difflab.training import rundir
from difflab.training.objective import Batch, Context, Objective, Phase, Report, TrainResult

TEXT_DATA = (MNIST_COMPOSE, EMOJI_DATASOURCE)  # the captioned data sets --text trains on


class DiffusionObjective(Objective):
    """Denoising diffusion (Ho et al. 2020, Alg. 1): one U-Net learns to undo q(x_t | x_0).

    Networks ``model`` (trained) and ``ema`` (its moving average, which previews and sampling
    use); optimiser ``optim`` (AdamW); generator ``noise`` (t, eps and the label dropout of
    classifier-free guidance). The loss is ``diffusion.diffusion_loss`` (STYLE 5), or
    ``diffusion.hybrid_loss`` for a U-Net that learns its variances.
    """

    def __init__(self, config: RunConfig, dataset: ImageDataset, ctx: Context) -> None:
        cfg = config.train
        check_learned_variance(
            config.model.learn_variance, prediction=config.diffusion.prediction,
            backend=config.backend, latent=config.kind == "latent-diffusion",
        )  # fmt: skip
        if config.takes_prompts:  # a resumed run reads the data as it is: caption it again
            dataset = text_training_data(dataset)
        self.config, self.dataset, self.memory_format = config, dataset, ctx.memory_format
        model = UNet(config.model).to(ctx.device, memory_format=ctx.memory_format)
        ema = copy.deepcopy(model).eval().requires_grad_(False)
        self.networks = {"model": model, "ema": ema}
        self.ema = {"ema": "model"}
        adamw = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.optimizers = {"optim": adamw}
        self.noise_gen = torch.Generator(device=ctx.device).manual_seed(cfg.seed + 1)
        self.generators = {"noise": self.noise_gen}
        self.phases = (Phase("diffusion", network="model", optimizer="optim", lr=cfg.lr),)
        self.schedule = make_schedule(config.diffusion.schedule, config.diffusion.timesteps)
        self.images = torch.from_numpy(dataset.images).to(ctx.device)  # (N, C, H, W) in [-1, 1]
        self.labels = torch.from_numpy(dataset.labels).to(ctx.device)  # (N,)
        self.tokens = None  # a text model's captions as token ids, (N, L)
        if config.takes_prompts:
            self.tokens = caption_tokens(config, dataset).to(ctx.device)
        self.num_items = len(self.images)
        self.space: PixelSpace | LatentSpace = PixelSpace()  # where samples live: pixels

    def loss(self, phase: str, batch: Batch, nets: dict[str, Any]) -> torch.Tensor:
        config, gen, device = self.config, self.noise_gen, self.images.device
        # Every process draws t, eps and the label dropout for the whole global batch from the
        # same generator and keeps its slice: the update and the generator state are the same
        # whatever the number of processes.
        b = len(batch.idx)
        t = self.draw_t(b)
        eps = self.draw_noise(batch)
        y = tokens = None
        if config.model.num_classes > 0:
            drop = torch.rand(b, generator=gen, device=device) < config.train.label_dropout
            y = torch.where(drop, config.model.num_classes, self.labels[batch.idx])
        elif self.tokens is not None:  # the prompt dropped is the empty prompt: all pad (id 0)
            drop = torch.rand(b, generator=gen, device=device) < config.train.label_dropout
            tokens = torch.where(drop[:, None], 0, self.tokens[batch.idx])  # (b, L)
        mine = batch.mine  # ddp: this process's share
        x0 = self.x0_batch(batch).contiguous(memory_format=self.memory_format)
        eps = eps[mine].contiguous(memory_format=self.memory_format)  # (b / world, C, H, W)
        t, y = t[mine], (None if y is None else y[mine])
        text = {} if tokens is None else {"tokens": tokens[mine]}
        net = nets["model"]
        with_variance = self.config.model.learn_variance  # (B, 2C, H, W): hybrid_loss splits it

        def model_fn(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = y) -> Any:
            if with_variance:
                return net(x_t, t, y, with_variance=True, **text)
            return net(x_t, t, y, **text)

        return self.batch_loss(model_fn, x0, t, eps)  # (b / world,) float32

    def draw_noise(self, batch: Batch) -> torch.Tensor:
        """The global batch's noise eps, (B, C, H, W): fresh draws (reflow reads its pairs')."""
        shape = (len(batch.idx), *self.images.shape[1:])
        return torch.randn(shape, generator=self.noise_gen, device=self.images.device)

    def draw_t(self, b: int) -> torch.Tensor:
        """The batch's timesteps: (b,) code timesteps, uniform over 0 .. T-1 (Ho et al. Alg. 1)."""
        return torch.randint(
            0, self.schedule.num_timesteps, (b,), generator=self.noise_gen,
            device=self.images.device,
        )  # fmt: skip

    def batch_loss(
        self, model_fn: Any, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        """The per-sample loss, (b,): ``diffusion.diffusion_loss`` of the network's target, or
        ``diffusion.hybrid_loss`` (L_simple + lambda L_vlb) for a learned-variance U-Net."""
        d = self.config.diffusion
        loss = hybrid_loss if self.config.model.learn_variance else diffusion_loss
        return loss(model_fn, x0, t, eps, self.schedule, d.prediction, d.min_snr_gamma)

    def x0_batch(self, batch: Batch) -> torch.Tensor:
        """This process's share of the batch's clean data x0, (b / world, C, H, W): the images
        (``objectives.latent.LatentDiffusion`` draws latents here instead)."""
        return self.images[batch.idx[batch.mine]]

    def describe(self) -> str:
        d = self.dataset
        return (
            f"{d.name} ({self.num_items} images, {d.channels}x{d.image_size}x{d.image_size}), "
            f"U-Net with {count_parameters(self.networks['model']):,} parameters"
        )

    def preview(self, path: Path) -> Path:
        cfg = self.config.train
        ddpm = (
            {"variance": ddpm_variance(self.config, None)} if cfg.preview_sampler == "ddpm" else {}
        )
        labels = None  # a text model previews the training captions in turn, one image each
        if self.tokens is not None:
            labels = self.tokens[torch.arange(cfg.num_preview) % len(self.tokens)].cpu()  # (n, L)
        x = generate(
            self.networks["ema"], self.config, self.schedule, num_images=cfg.num_preview,
            seed=cfg.seed, sampler=cfg.preview_sampler, steps=cfg.preview_steps, space=self.space,
            labels=labels, **ddpm,
        )  # fmt: skip
        return viz.save_grid(x, path)

    def finish(self, result: TrainResult, final_preview: Path | None) -> None:
        save_forward_process(self.config, self.dataset, self.schedule, result.run_dir)

    def report(self) -> Report:
        return diffusion_report(self.config)


def prepare_run(
    train_cfg: TrainConfig,
    diffusion_cfg: DiffusionConfig,
    model_overrides: dict[str, Any] | None = None,
    *,
    image_size: int | None = None,
    conditional: bool = False,
    num_images: int | None = None,
    backend: str = "torch",
    text: bool = False,
) -> tuple[RunConfig, ImageDataset]:
    """Load the data and fit the default U-Net for it (with any overrides) into a RunConfig.

    Flags are checked before the data is read, so a mistake costs no loading time.
    ``num_images`` (default: ``train_cfg.num_images``) is kept in the config for --resume.
    ``text``: condition on the data's captions (``--data mnist-compose``) through a text encoder
    and cross-attention (``ModelConfig.text_vocab``); the vocabulary goes into the config.
    """
    from difflab.config import default_model_config

    if num_images is not None:
        train_cfg = replace(train_cfg, num_images=num_images)
    train_cfg.validate()
    check_learned_variance(
        bool((model_overrides or {}).get("learn_variance")), prediction=diffusion_cfg.prediction,
        backend=backend,
    )  # fmt: skip
    if backend == "numpy":
        check_numpy_options(train_cfg)
    else:
        check_precision(train_cfg.precision, pick_device(train_cfg.device))
    diffusion_cfg.validate()
    make_schedule(diffusion_cfg.schedule, diffusion_cfg.timesteps)  # fail early on a bad T
    check_text(text, data=train_cfg.data, conditional=conditional, backend=backend)
    dataset = load_dataset(
        train_cfg.data,
        data_dir=train_cfg.data_dir,
        vendors=train_cfg.vendors,
        image_size=image_size,
        seed=train_cfg.seed,
        num_images=train_cfg.num_images,
    )
    if conditional and dataset.num_classes < 2:
        raise ValueError(
            f"--conditional needs labelled data with at least 2 classes; {dataset.name} has "
            f"{dataset.num_classes} (for a folder: one subfolder of images per class)"
        )
    num_classes = dataset.num_classes if conditional else 0
    model_cfg = default_model_config(
        train_cfg.data, dataset.image_size, dataset.channels, num_classes
    )
    if model_overrides:
        model_cfg = replace(model_cfg, **model_overrides)
    vocabulary: tuple[str, ...] = ()
    if text:  # the captions' words; the checkpoint keeps them, so prompts need no data
        dataset = text_training_data(dataset)
        vocabulary, length = text_vocabulary(dataset)
        model_cfg = replace(model_cfg, text_vocab=len(vocabulary), text_length=length)
        model_cfg = replace(model_cfg, cross_attention_levels=model_cfg.cross_levels)
    model_cfg.validate()
    config = RunConfig(
        model=model_cfg, diffusion=diffusion_cfg, train=train_cfg,
        class_names=dataset.class_names, backend=backend, vocabulary=vocabulary,
    )  # fmt: skip
    return config, dataset


def check_text(text: bool, *, data: str, conditional: bool = False, backend: str = "torch") -> None:
    """Refuse, in one line, text conditioning where it has no captions or no implementation."""
    if not text:
        return
    if data not in TEXT_DATA:
        raise ValueError(
            f"--text trains on captioned data: --data {' or '.join(TEXT_DATA)} (not {data}); "
            "its captions' vocabulary is what prompts may use"
        )
    if conditional:
        raise ValueError("--text and --conditional exclude each other: a caption or a class label")
    if backend != "torch":
        raise ValueError("--text trains with the torch backend only (the NumPy U-Net has no text)")


def caption_tokens(config: RunConfig, dataset: ImageDataset) -> torch.Tensor:
    """The data's captions (``ImageDataset.names``; ``text_training_data`` has made them) as
    token ids of the config's vocabulary, (N, text_length) int64, 0 = pad."""
    if dataset.names is None:
        raise ValueError(f"--text needs captioned data; {dataset.name} has no captions")
    return tokenize(dataset.names, config.vocabulary, config.model.text_length)


def text_vocabulary(dataset: ImageDataset) -> tuple[tuple[str, ...], int]:
    """A text model's vocabulary and prompt length (tokens) for its training data: compose's
    grammar for the canvases; the training captions' words and longest caption for the emoji."""
    if dataset.name == MNIST_COMPOSE:
        return compose.VOCABULARY, compose.MAX_TOKENS
    assert dataset.names is not None, "text_training_data gives captioned data"
    return caption_vocabulary(dataset.names), max(len(c.split()) for c in dataset.names)


def check_numpy_options(cfg: TrainConfig) -> None:
    for flag, used in [
        ("--precision", cfg.precision != "fp32"),
        ("--compile", cfg.compile),
        ("--channels-last", bool(cfg.channels_last)),
        ("--skip-nonfinite", cfg.skip_nonfinite),
        ("torchrun (several processes)", distributed.launched_by_torchrun()),
    ]:
        if used:
            raise ValueError(f"{flag} is available for the torch backend only")


def check_learned_variance(
    learn_variance: bool, *, prediction: str, backend: str = "torch", latent: bool = False
) -> None:
    """Refuse, in one line, a learned variance (``ModelConfig.learn_variance``) where it has no
    meaning or no implementation: a flow model (no DDPM reverse steps), latent diffusion (L_vlb's
    t = 0 term is the likelihood of 8-bit pixels), the NumPy backend."""
    if not learn_variance:
        return
    if prediction == "flow":
        raise ValueError(
            "--learn-variance learns the variance of DDPM's reverse steps (Nichol & Dhariwal "
            "2021); a flow matching model has none: use it with --objective diffusion"
        )
    if latent:
        raise ValueError(
            "--learn-variance trains pixel-space diffusion (its t = 0 term is the likelihood of "
            "8-bit pixels), not --latent"
        )
    if backend != "torch":
        raise ValueError(
            "--learn-variance trains with the torch backend only (the NumPy U-Net has no "
            "variance output)"
        )


def save_forward_process(
    config: RunConfig, dataset: ImageDataset, schedule: Schedule, out: Path
) -> None:
    """forward_process.png: eight training images dissolving into noise."""
    viz.save_forward_process_grid(
        dataset.images[:8], schedule, out / "forward_process.png",
        generator=np.random.default_rng(config.train.seed),
    )  # fmt: skip


def diffusion_report(config: RunConfig) -> Report:
    """Diffusion's part of report.html."""
    facts = {
        "schedule": f"{config.diffusion.schedule}, T = {config.diffusion.timesteps}",
        "prediction": config.diffusion.prediction,
    }
    if config.model.learn_variance:
        facts["variance"] = (
            f"learned: L_simple + {VLB_WEIGHT:g} L_vlb (Nichol & Dhariwal 2021, Eq. 16)"
        )
    return Report(
        facts=facts,
        pictures=(
            ("The forward process on training images", "forward_process.png"),
            ("Denoising trajectory: x_t from noise to image", "trajectory.png"),
            ("Noise schedules", "schedules.png"),
        ),
        final_caption="Samples from the final model (EMA weights)",
    )


def write_run_report(out: Path, config: RunConfig, result: TrainResult, final_grid: Path) -> Path:
    """report.html of a diffusion run (``difflab demo`` rewrites it after adding pictures)."""
    return rundir.write_run_report(out, config, result, final_grid, diffusion_report(config))


def model_config_overrides(**values: Any) -> dict[str, Any]:
    """Keep only the U-Net fields the user set (None means: use the default for the data)."""
    fields = set(ModelConfig.__dataclass_fields__)
    return {k: v for k, v in values.items() if v is not None and k in fields}
