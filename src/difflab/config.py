"""Configuration: a few frozen dataclasses that CLI flags map onto and checkpoints store.

Checkpoints keep ``asdict(config)`` as JSON; ``from_dict`` turns that back into dataclasses, so a
checkpoint alone is enough to rebuild the model and the schedule it was trained with.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from difflab.diffusion import PREDICTIONS
from difflab.flow import TIME_SAMPLINGS
from difflab.samplers import DEFAULT_SAMPLER
from difflab.schedules import SCHEDULES

T = TypeVar("T")

LR_DECAYS = ("constant", "cosine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto: device.auto_precision, when a run starts
TEACHER_SOLVERS = ("ddim", "dpmpp-2s")  # progressive distillation's first teacher step
TEXT_ENCODERS = ("transformer", "bag")  # models.text: a small transformer, or a bag of words
CROSS_ATTENTION_SIDE = 8  # a text U-Net's cross-attention sits at levels this many px or fewer


@dataclass(frozen=True)
class ModelConfig:
    """The U-Net's shape. Same fields for the PyTorch and the NumPy backend."""

    image_size: int = 28  # height = width of the images, in pixels
    in_channels: int = 1  # 1 for grey images, 3 for RGB, the latent channels for latent diffusion
    base_channels: int = 32  # channels at full resolution; also the time-embedding input size
    channel_mults: tuple[int, ...] = (
        1,
        2,
        2,
    )  # channels per level = base * mult; one level per entry
    num_res_blocks: int = 2  # residual blocks per level on the way down (one more on the way up)
    attention_levels: tuple[int, ...] = ()  # levels (0 = full resolution) with self-attention
    mid_attention: bool = True  # self-attention in the bottleneck (lowest resolution, cheap)
    dropout: float = 0.0  # dropout inside residual blocks
    norm_groups: int = 8  # GroupNorm groups; every channel count must divide by it
    num_classes: int = 0  # 0 = unconditional; else a label embedding with one extra null label
    learn_variance: bool = False  # also output each pixel's reverse-step variance (Nichol &
    # Dhariwal 2021): conv_out has 2 x in_channels, trained with L_hybrid (diffusion.hybrid_loss)
    interval_input: bool = False  # a second time input, the interval t - r of MeanFlow's average
    # velocity u(z_t, r, t) (Geng et al. 2025), embedded like t and added to its embedding
    # Text conditioning (models.text; train --text): a text encoder trained with the U-Net, and
    # cross-attention blocks (Rombach et al. 2022's SpatialTransformer) that attend to its tokens.
    text_vocab: int = 0  # 0 = no text conditioning; else the vocabulary's size, pad (id 0) included
    text_length: int = 8  # tokens per prompt, padded with id 0
    text_encoder: str = "transformer"  # transformer (pre-norm layers) or bag (bag of words)
    text_width: int = 64  # width of the token embeddings and the encoder's states
    text_layers: int = 2  # the transformer's layers
    text_heads: int = 4  # heads of the encoder's attention and of the U-Net's cross-attention
    cross_attention_levels: tuple[int, ...] | None = None  # levels (0 = full resolution) with a
    # cross-attention block after each residual block; the middle has one if the lowest level
    # does. None: the levels of at most CROSS_ATTENTION_SIDE px (``cross_levels``)
    cross_positions: bool = False  # add a fixed 2-D sin-cos code of each cell's (row, column) to
    # the cross-attention blocks' tokens, so that a cell knows where it is (train --text
    # --cross-positions; measured no better, docs/text.md)

    @property
    def cross_levels(self) -> tuple[int, ...]:
        """The levels with cross-attention blocks: none without text conditioning; else
        ``cross_attention_levels``, by default those at most ``CROSS_ATTENTION_SIDE`` (8) px
        wide, or the lowest-resolution level if none is that small. Attention is cheap there
        (64 queries at 8x8 against 1,024 at 32x32; the mnist-compose U-Net's training step
        took 0.40 s with cross-attention at 8 px against 0.84 s at 16 and 8 px) and a cell still
        sees where in the image it is (left, right, above, below)."""
        if not self.text_vocab:
            return ()
        if self.cross_attention_levels is not None:
            return tuple(self.cross_attention_levels)
        levels = len(self.channel_mults)
        small = [i for i in range(levels) if self.image_size >> i <= CROSS_ATTENTION_SIDE]
        return tuple(small) or (levels - 1,)

    def validate(self) -> None:
        levels = len(self.channel_mults)
        factor = 2 ** (levels - 1)
        if self.image_size < 1 or self.image_size % factor:
            raise ValueError(
                f"image size {self.image_size} cannot be halved {levels - 1} times by a U-Net with "
                f"channel_mults {self.channel_mults}; use a multiple of {factor}"
            )
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer, got {self.in_channels}")
        for mult in self.channel_mults:
            if (self.base_channels * mult) % self.norm_groups:
                raise ValueError(
                    f"channels {self.base_channels * mult} do not divide into "
                    f"{self.norm_groups} GroupNorm groups"
                )
        if any(level < 0 or level >= levels for level in self.attention_levels):
            raise ValueError(
                f"attention_levels {self.attention_levels} must lie in 0..{levels - 1}"
            )
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if self.text_vocab:
            self._validate_text()

    def _validate_text(self) -> None:
        levels = len(self.channel_mults)
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(
                f"unknown text encoder {self.text_encoder!r}; expected one of "
                f"{', '.join(TEXT_ENCODERS)}"
            )
        if self.num_classes:
            raise ValueError("a U-Net is conditioned on class labels or on text, not both")
        if self.text_vocab < 2 or self.text_length < 1 or self.text_layers < 0:
            raise ValueError(
                f"text_vocab must be >= 2, text_length >= 1 and text_layers >= 0; got "
                f"{self.text_vocab}, {self.text_length} and {self.text_layers}"
            )
        if self.text_heads < 1 or self.text_width % self.text_heads:
            raise ValueError(
                f"text width {self.text_width} does not divide into {self.text_heads} heads"
            )
        if any(level < 0 or level >= levels for level in self.cross_levels):
            raise ValueError(
                f"cross_attention_levels {self.cross_levels} must lie in 0..{levels - 1}"
            )
        for level in self.cross_levels:
            if (self.base_channels * self.channel_mults[level]) % self.text_heads:
                raise ValueError(
                    f"channels {self.base_channels * self.channel_mults[level]} at level {level} "
                    f"do not divide into {self.text_heads} cross-attention heads"
                )


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process and what the network learns to predict."""

    timesteps: int = 1000  # T, the number of noising steps
    schedule: str = "cosine"  # beta schedule: linear (Ho et al.) or cosine (Nichol & Dhariwal)
    prediction: str = "v"  # network target: eps (Ho et al.), x0, or v (Salimans & Ho)
    min_snr_gamma: float | None = 5.0  # min-SNR-gamma loss weighting (Hang et al.); None = off

    def validate(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"unknown schedule {self.schedule!r}; expected one of {', '.join(SCHEDULES)}"
            )
        if self.prediction not in PREDICTIONS:
            raise ValueError(
                f"unknown prediction {self.prediction!r}; expected one of {', '.join(PREDICTIONS)}"
            )
        if self.timesteps < 2:
            raise ValueError(f"timesteps must be >= 2, got {self.timesteps}")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be a positive number, got {self.min_snr_gamma}")


@dataclass(frozen=True)
class TrainConfig:
    """The training run: data, optimisation, and what gets written when."""

    data: str = "emoji"  # dataset name (see difflab.data.DATASETS)
    data_dir: str | None = None  # where mnist / fashion-mnist / cifar10 files or a folder lie
    vendors: str | None = None  # emoji-datasource: google, twitter or both (None: both)
    epochs: int = 20  # passes over the training set
    max_minutes: float | None = None  # stop after this much wall time (checked every step)
    batch_size: int = 64  # images per optimisation step (the tutorials' 128 halves the steps)
    lr: float = 1e-3  # peak AdamW learning rate (the tutorials' 2e-4 is slow on a CPU budget)
    warmup_steps: int = 100  # linear learning-rate warm-up from 0
    lr_decay: str = "constant"  # after warm-up: constant or cosine (to 10% of lr at the end)
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 = off
    ema_decay: float = 0.999  # exponential moving average of the weights, used for sampling
    label_dropout: float = 0.1  # p of replacing the label by the null label (class-conditional)
    seed: int = 0  # seeds data order, timesteps, noise and initial weights
    device: str = "auto"  # auto (cuda, then mps, then cpu), or a torch device string
    sample_every: int = 1  # write a preview grid every N epochs; 0 = only at the end
    checkpoint_every: int = 1  # write a checkpoint every N epochs; 0 = only at the end
    keep_checkpoints: int = 3  # keep the newest N checkpoints
    num_preview: int = 64  # images in each preview grid
    # Previews: stochastic samplers forgive young models; on MNIST 20 steps of DPM-Solver++(2M)
    # SDE score as well as 100 of DDPM at a fifth of the cost (docs/samplers.md).
    preview_sampler: str = DEFAULT_SAMPLER  # sampler for previews
    preview_steps: int = 20  # sampler steps for previews
    log_every: int = 10  # write a metrics.jsonl line every N steps
    num_images: int | None = None  # train on the first N images; None = all (kept for resume)
    max_steps: int | None = None  # stop after N steps in all (LR schedule still spans the epochs)
    # fp32, or autocast to bf16 (CPU, GPU) or fp16 (CUDA, loss-scaled); auto (the training
    # commands' default) is resolved when the run starts, and the run records what it chose.
    precision: str = "fp32"
    precision_reason: str = ""  # why that precision: auto's reason, or given; "" = not recorded
    channels_last: bool | None = None  # NHWC memory layout; None = on for CPU, off elsewhere
    compile: bool = False  # torch.compile the U-Net: a slow first step, faster ones after
    skip_nonfinite: bool = False  # skip a step with a NaN/inf loss or gradient; False = stop

    def validate(self) -> None:
        """One clear ValueError for a value the training loop cannot use."""
        for name in ("epochs", "batch_size", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("num_images", "max_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer or None, got {value}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be a positive number, got {self.max_minutes}")
        if not self.lr > 0:
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(
                f"unknown lr_decay {self.lr_decay!r}; expected one of {', '.join(LR_DECAYS)}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"unknown precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}"
            )


@dataclass(frozen=True)
class ConsistencyConfig:
    """A consistency model distilled from a diffusion teacher (``difflab distill``, Song et al.
    2023, Alg. 2). Its network keeps the teacher's shape, schedule and prediction target."""

    teacher: str  # the teacher checkpoint's path, as given
    teacher_sha256: str  # its content hash: --resume refuses another file
    intervals: int = 32  # N: the teacher's ODE is discretised into N intervals of code time
    guidance: float = 1.0  # classifier-free guidance scale of the teacher, baked into the student

    def validate(self) -> None:
        if self.intervals < 2:
            raise ValueError(f"intervals must be >= 2, got {self.intervals}")
        if not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise ValueError(f"guidance must be a finite number >= 0, got {self.guidance}")


@dataclass(frozen=True)
class FlowConfig:
    """Flow matching (``difflab train --objective flow``; ``difflab.flow``): the network learns the
    velocity eps - x0 of the straight path x_t = (1 - t) x0 + t eps. Its DiffusionConfig says
    ``prediction = "flow"`` and holds the DDPM schedule whose grid the DDPM samplers walk (each
    of their timesteps is read as the flow time with the same SNR)."""

    time_sampling: str = "logit-normal"  # how training draws t: SD3's logit-normal, or uniform
    loc: float = 0.0  # logit-normal: the mean of logit(t)
    scale: float = 1.0  # logit-normal: the standard deviation of logit(t)
    shift: float = 1.0  # SD3's timestep shift of the euler/heun grid (1: none; > 1: noisier)

    def validate(self) -> None:
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(
                f"unknown time sampling {self.time_sampling!r}; expected one of "
                f"{', '.join(TIME_SAMPLINGS)}"
            )
        if not math.isfinite(self.loc):
            raise ValueError(f"loc must be a finite number, got {self.loc}")
        for name in ("scale", "shift"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")


@dataclass(frozen=True)
class ReflowConfig:
    """A rectified flow student (``difflab distill --method reflow``; Liu et al. 2022, "Flow
    Straight and Fast"): the teacher's ODE carries ``pairs`` noise draws to images, and the
    student, starting from the teacher, learns the straight line of each pair, so one Euler step
    goes far. Its FlowConfig is the student's (the teacher's, with uniform training times)."""

    teacher: str  # the flow teacher checkpoint's path, as given
    teacher_sha256: str  # its content hash: --resume refuses another file
    pairs: int = 10000  # (noise, image) pairs drawn by the teacher before training
    pair_steps: int = 10  # Heun steps of the teacher's ODE per pair (2 x steps - 1 evaluations)
    guidance: float = 1.0  # a conditional teacher's guidance scale in the pairs

    def validate(self) -> None:
        if self.pairs < 1 or self.pair_steps < 1:
            raise ValueError(
                f"--pairs and --pair-steps must be >= 1, got {self.pairs} and {self.pair_steps}"
            )
        if not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise ValueError(f"guidance must be a finite number >= 0, got {self.guidance}")


@dataclass(frozen=True)
class MeanFlowConfig:
    """A MeanFlow student (``difflab distill --method meanflow``; Geng et al. 2025, "Mean Flows
    for One-step Generative Modeling"), fine-tuned from a flow teacher: the network, given the
    interval t - r too (ModelConfig.interval_input), learns the average velocity u(z_t, r, t)
    from the MeanFlow identity (``flow.average_velocity_target``) and jumps from noise to data
    in one evaluation."""

    teacher: str  # the flow teacher checkpoint's path, as given
    teacher_sha256: str  # its content hash
    ratio: float = 0.25  # the share of training pairs with r != t (the paper's best; the rest
    # are plain flow matching)
    loc: float = -0.4  # logit-normal location of r and t (the paper's best on ImageNet)
    scale: float = 1.0  # logit-normal scale
    power: float = 1.0  # the adaptive loss weight's power (0: plain squared error)

    def validate(self) -> None:
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"--mean-ratio must lie in (0, 1], got {self.ratio}")
        if not (math.isfinite(self.loc) and math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(
                f"loc and scale must be finite, scale > 0; got {self.loc}, {self.scale}"
            )
        if not (math.isfinite(self.power) and self.power >= 0):
            raise ValueError(f"power must be a finite number >= 0, got {self.power}")


GAN_LOSSES = ("dcgan", "hinge")


@dataclass(frozen=True)
class GANConfig:
    """A GAN baseline (``difflab train-gan``, ``difflab.objectives.gan``): its losses and networks.
    The image size and channels are ``RunConfig.model``'s; the U-Net fields there are unused."""

    loss: str = (
        "dcgan"  # dcgan: non-saturating BCE, BatchNorm D (Radford 2016); hinge: SN D (Miyato 2018)
    )
    z_dim: int = 100  # length of the generator's input z ~ N(0, I)
    g_width: int = 24  # generator channels next to the output; doubled at each halving
    d_width: int = 24  # discriminator channels after its first convolution; doubled likewise
    beta1: float = 0.5  # Adam's beta1 for both networks (Radford et al.: 0.9 oscillates)
    beta2: float = 0.999  # Adam's beta2 for both networks

    def validate(self) -> None:
        if self.loss not in GAN_LOSSES:
            raise ValueError(
                f"unknown GAN loss {self.loss!r}; expected one of {', '.join(GAN_LOSSES)}"
            )
        for name in ("z_dim", "g_width", "d_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class ProgressiveConfig:
    """A student of progressive distillation (``difflab distill --method progressive``, Salimans
    & Ho 2022, Alg. 2): the teacher's network, sampled with deterministic DDIM in ``steps``."""

    teacher: str  # the original teacher checkpoint's path, as given
    teacher_sha256: str  # its content hash: --resume refuses another file
    steps: int = 4  # the student's DDIM steps (the last round's; each round halves them)
    start_steps: int = 16  # the first teacher's steps; rounds go start/2, start/4, ... steps
    round_steps: int = 500  # training steps per round
    guidance: float = 1.0  # classifier-free guidance of the first teacher, baked into students
    teacher_solver: str = "ddim"  # the first teacher's ODE step: ddim (the paper; what runs from
    # before this field used) or dpmpp-2s (difflab distill's default)
    dmd_steps: int = 0  # after the last round, steps of distribution matching (Yin et al. 2024)
    dmd_warmup: int = 100  # before them, steps in which only DMD's fake score learns
    dmd_weight: float = 0.2  # the DMD loss's weight beside the last round's loss
    dmd_average: int = 0  # the stage's student to sample: the plain mean of its weights over its
    # last N DMD steps (0: the EMA, as the rounds have, and as runs from before this field had)

    def stage_steps(self) -> int:
        """The distribution-matching stage's length after the rounds: its warm-up and its steps."""
        return self.dmd_warmup + self.dmd_steps if self.dmd_steps else 0

    def validate(self) -> None:
        if self.steps < 1 or self.round_steps < 1:
            raise ValueError(
                f"steps and round_steps must be >= 1, got {self.steps} and {self.round_steps}"
            )
        if self.dmd_steps < 0 or self.dmd_warmup < 0:
            raise ValueError(
                f"--dmd-steps and --dmd-warmup must be >= 0, got {self.dmd_steps} and "
                f"{self.dmd_warmup}"
            )
        if not 0 <= self.dmd_average <= self.dmd_steps:
            raise ValueError(
                f"--dmd-average must lie in 0..{self.dmd_steps} (--dmd-steps), got {self.dmd_average}"
            )
        if not (math.isfinite(self.dmd_weight) and self.dmd_weight > 0):
            raise ValueError(f"--dmd-weight must be a finite number > 0, got {self.dmd_weight}")
        if not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise ValueError(f"guidance must be a finite number >= 0, got {self.guidance}")
        if self.teacher_solver not in TEACHER_SOLVERS:
            raise ValueError(
                f"teacher solver {self.teacher_solver!r} is not one of {', '.join(TEACHER_SOLVERS)}"
            )


@dataclass(frozen=True)
class AutoencoderConfig:
    """A KL-regularised autoencoder (``difflab train-autoencoder``; Rombach et al. 2022, Sec. 3.1
    and App. G) that maps images to a small latent grid and back, for latent diffusion."""

    image_size: int = 28  # the data's height = width, in pixels
    image_channels: int = 1  # the data's channels
    padded_size: int = 32  # images are padded with -1 (background) to this size before encoding
    latent_channels: int = 4  # channels of the latent grid (LDM's KL-f4 has 3, its f8 has 4)
    base_channels: int = 16  # channels at full resolution
    channel_mults: tuple[int, ...] = (1, 2, 4)  # per level; the latent is padded_size / 2^(L-1)
    num_res_blocks: int = 1  # residual blocks per level, in the encoder and the decoder
    norm_groups: int = 8  # GroupNorm groups; every channel count must divide by it
    kl_weight: float = 1e-6  # LDM's weight: KL summed over latents vs. L1 summed over pixels
    l2_weight: float = 1.0  # weight of the squared error beside the L1 error, per pixel
    latent_scale: float | None = None  # 1 / std of z = mu + sigma eps over the training set;
    # None until training ends (App. G); latent diffusion multiplies latents by it

    @property
    def latent_size(self) -> int:
        return self.padded_size // 2 ** (len(self.channel_mults) - 1)

    def validate(self) -> None:
        factor = 2 ** (len(self.channel_mults) - 1)
        if self.padded_size < self.image_size or self.padded_size % factor:
            raise ValueError(
                f"padded size {self.padded_size} must be >= the image size {self.image_size} "
                f"and a multiple of {factor} (channel_mults {self.channel_mults})"
            )
        if (self.padded_size - self.image_size) % 2:
            raise ValueError(
                f"padded size {self.padded_size} - image size {self.image_size} must be even "
                "(the same padding on each side)"
            )
        for name in ("latent_channels", "base_channels", "num_res_blocks", "image_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for mult in self.channel_mults:
            if (self.base_channels * mult) % self.norm_groups:
                raise ValueError(
                    f"channels {self.base_channels * mult} do not divide into "
                    f"{self.norm_groups} GroupNorm groups"
                )
        for name in ("kl_weight", "l2_weight"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class LatentConfig:
    """Diffusion in the latent space of an autoencoder (``difflab train --latent``, LDM): the
    U-Net (``RunConfig.model``) works on the latent grid; samples are decoded to images."""

    autoencoder: str  # the autoencoder checkpoint's path, as given to --latent
    autoencoder_sha256: str  # its content hash: sampling and --resume refuse another file
    latent_scale: float  # the autoencoder's 1 / std of the latents (z_scaled = scale * z)
    image_size: int  # height = width of the decoded images
    image_channels: int  # their channels
    architecture: AutoencoderConfig | None = None  # the shape of the autoencoder whose weights
    # the checkpoint carries (None: one written before it carried them, which finds the file)


@dataclass(frozen=True)
class RunConfig:
    """Everything a checkpoint needs to rebuild the model and its diffusion, plus how it was trained."""

    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    class_names: tuple[str, ...] = ()  # names of the labels, when the data has classes
    vocabulary: tuple[str, ...] = ()  # a text model's words, token id = index (0: the pad token)
    backend: str = "torch"  # torch or numpy
    consistency: ConsistencyConfig | None = None  # set for a distilled (few-step) model
    progressive: ProgressiveConfig | None = None  # set for a progressively distilled student
    gan: GANConfig | None = None  # set for a GAN (difflab train-gan): no diffusion at all
    autoencoder: AutoencoderConfig | None = None  # set for an autoencoder run (train-autoencoder)
    latent: LatentConfig | None = None  # set for a latent diffusion model (train --latent)
    flow: FlowConfig | None = None  # set for a flow matching model (train --objective flow)
    reflow: ReflowConfig | None = None  # set for a rectified flow student (distill --method reflow)
    meanflow: MeanFlowConfig | None = None  # set for a MeanFlow student (distill --method meanflow)

    @property
    def kind(self) -> str:
        """What this configuration describes: one of ``KINDS`` (``model_kind``)."""
        return model_kind(self)

    @property
    def takes_prompts(self) -> bool:
        """Is this a text model (train --text), conditioned on prompts of its ``vocabulary``? The
        one place the faces ask; they never read the text fields themselves."""
        return bool(self.model.text_vocab)

    @property
    def label_names(self) -> list[str]:
        """A name for each class label: the data's class names, else the label indices."""
        return list(self.class_names) or [str(k) for k in range(self.model.num_classes)]

    def section(self, cls: type[T]) -> T:
        """The optional section of type ``cls`` (``ConsistencyConfig``, ``ProgressiveConfig``,
        ``GANConfig``, ``AutoencoderConfig``, ``LatentConfig``, ``FlowConfig``, ``ReflowConfig`` or
        ``MeanFlowConfig``) that this configuration's kind
        has; code that knows the kind reads its section here, without testing fields for None."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, cls):
                return value
        raise ValueError(f"a {self.kind} configuration has no {cls.__name__} section")

    @property
    def image_shape(self) -> tuple[int, int]:
        """(channels, size) of the images the model makes or reads (a latent model's decoded
        images, an autoencoder's inputs)."""
        if self.kind == "latent-diffusion":
            latent = self.section(LatentConfig)
            return latent.image_channels, latent.image_size
        if self.kind == "autoencoder":
            ac = self.section(AutoencoderConfig)
            return ac.image_channels, ac.image_size
        return self.model.in_channels, self.model.image_size


# The kinds of model a checkpoint holds. ``difflab.kinds`` maps each to how it is trained (its
# objective) and how it is drawn (its sampling plan); a new kind is a new name here and a row there.
KINDS = (
    "diffusion", "latent-diffusion", "flow", "consistency", "progressive", "reflow", "meanflow",
    "gan", "autoencoder",
)  # fmt: skip


def model_kind(config: RunConfig) -> str:
    """The kind of model a configuration describes: the one place that reads which optional
    sections it has (every other module asks this function, or ``difflab.kinds``)."""
    if config.gan is not None:
        return "gan"
    if config.autoencoder is not None:
        return "autoencoder"
    if config.consistency is not None:
        return "consistency"
    if config.progressive is not None:
        return "progressive"
    if config.latent is not None:
        return "latent-diffusion"
    if config.reflow is not None:
        return "reflow"
    if config.meanflow is not None:
        return "meanflow"
    if config.flow is not None:
        return "flow"
    return "diffusion"


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    return asdict(config)


def _build(cls: type[T], data: dict[str, Any]) -> T:
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        value = data[f.name]
        if isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


# What a checkpoint that lacks a diffusion field was trained with: the defaults before the recipe
# search (docs/recipe.md), not today's, so an old run samples and resumes as it was trained.
LEGACY_DIFFUSION: dict[str, Any] = {
    "schedule": "linear",
    "prediction": "eps",
    "min_snr_gamma": None,
}


def run_config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from ``to_dict`` output (as read back from JSON)."""
    try:
        return RunConfig(
            model=_build(ModelConfig, data["model"]),
            diffusion=_build(DiffusionConfig, {**LEGACY_DIFFUSION, **data["diffusion"]}),
            train=_build(TrainConfig, data.get("train", {})),
            class_names=tuple(data.get("class_names", ())),
            vocabulary=tuple(data.get("vocabulary", ())),
            backend=data.get("backend", "torch"),
            consistency=(
                _build(ConsistencyConfig, data["consistency"]) if data.get("consistency") else None
            ),
            progressive=(
                _build(ProgressiveConfig, data["progressive"]) if data.get("progressive") else None
            ),
            gan=_build(GANConfig, data["gan"]) if data.get("gan") else None,
            autoencoder=(
                _build(AutoencoderConfig, data["autoencoder"]) if data.get("autoencoder") else None
            ),
            latent=_latent_from_dict(data["latent"]) if data.get("latent") else None,
            flow=_build(FlowConfig, data["flow"]) if data.get("flow") else None,
            reflow=_build(ReflowConfig, data["reflow"]) if data.get("reflow") else None,
            meanflow=_build(MeanFlowConfig, data["meanflow"]) if data.get("meanflow") else None,
        )
    except (KeyError, TypeError) as err:
        raise ValueError(f"configuration is missing or malformed ({err})") from err


def _latent_from_dict(data: dict[str, Any]) -> LatentConfig:
    architecture = data.get("architecture")
    latent = _build(LatentConfig, {k: v for k, v in data.items() if k != "architecture"})
    if architecture:
        latent = dataclasses.replace(latent, architecture=_build(AutoencoderConfig, architecture))
    return latent


# Named recipes for `difflab train --preset NAME`: values for fields of ModelConfig (the U-Net's
# shape), DiffusionConfig and TrainConfig that replace difflab's defaults. A flag given on the
# command line wins over its preset. docs/recipe.md has the experiments behind "default".
PRESETS: dict[str, dict[str, Any]] = {
    # difflab's recipe: the dataclass defaults above and default_model_config below.
    "default": {},
    # The classic tutorial DDPM for MNIST: a 64-channel U-Net (64 at 28 px, 128 at 14 px; 2.6M
    # parameters), Adam at 2e-4 with batch 128, no warm-up, no clipping, no EMA; 1000 linear steps.
    "classic": dict(
        base_channels=64,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_levels=(),
        batch_size=128,
        lr=2e-4,
        warmup_steps=0,
        lr_decay="constant",
        grad_clip=0.0,
        ema_decay=0.0,
        timesteps=1000,
        schedule="linear",
        prediction="eps",
        min_snr_gamma=None,
    ),
}


def default_model_config(
    data: str, image_size: int, in_channels: int, num_classes: int = 0
) -> ModelConfig:
    """The U-Net difflab trains for a dataset of this kind and size (today the size decides).

    Most parameters sit at low resolution, where they cost little compute. The 28 px network
    (16/32/64 channels at 28/14/7 px, 0.64M parameters) won the MNIST recipe search
    (docs/recipe.md): at a quarter of the compute per image of the 32/64/128 one it trains on 3x
    as many images in a CPU-minute budget, which matters more there than width. At 32 px it won
    again on the colour emoji (docs/colour.md): FID 29.4 after 5 CPU-minutes, against 33.5 for
    32/64/128 and 49.7 for the 64-channel, two-blocks-a-level network that was the default
    (1,049, 441 and 129 steps of 64 images). On mnist-compose's 32 px canvases it makes a step
    with cross-attention 6.6x cheaper than that network's (0.40 s against 2.65 s).
    """
    if image_size <= 8:
        shape: dict[str, Any] = dict(base_channels=32, channel_mults=(1, 2), num_res_blocks=1)
    elif image_size <= 16:
        shape = dict(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1)
    elif image_size <= 32:
        shape = dict(base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=1)
    else:
        shape = dict(base_channels=64, channel_mults=(1, 2, 2, 2), num_res_blocks=2)
    levels = len(shape["channel_mults"])
    while image_size % 2 ** (levels - 1):
        levels -= 1
    shape["channel_mults"] = shape["channel_mults"][:levels]
    return ModelConfig(
        image_size=image_size, in_channels=in_channels, num_classes=num_classes, **shape
    )
