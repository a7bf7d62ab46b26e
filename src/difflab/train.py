"""Diffusion training: the first objective on the shared harness (``difflab.harness``).

``DiffusionObjective`` says what one step of denoising diffusion computes (Ho et al. 2020): draw
t and eps for the batch, and take ``diffusion.diffusion_loss`` of the U-Net's prediction (eps, x0
or v, with min-SNR weights). The harness does the rest: the loop (lr -> batch -> loss -> backward
-> clip -> step -> EMA -> log -> preview / checkpoint), exact resume, Ctrl-C, limits, the
non-finite guard, torchrun. ``train`` is what ``difflab train`` calls; ``train_numpy`` trains the
from-scratch NumPy U-Net with the harness's run directory, limits, log and report.

A run directory holds everything one run made::

    config.json  metrics.jsonl  samples/epoch_001.png ...  checkpoints/epoch_001.safetensors ...
    training_loss.png  forward_process.png  model_final.safetensors  report.html

A new trainer (distillation, an autoencoder, a GAN) is a new module like this one: an
``Objective`` subclass and a call to ``harness.fit``.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from difflab import distributed, harness, viz
from difflab.checkpoint import Checkpoint, save_checkpoint
from difflab.config import DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from difflab.data import ImageDataset, load_dataset
from difflab.diffusion import diffusion_loss
from difflab.generate import generate, pick_device
from difflab.harness import (  # noqa: F401 (re-exported: the names ``difflab.train`` always had)
    AMP_DTYPES,
    Batch,
    Context,
    Objective,
    Phase,
    Report,
    StopOnSignal,
    TrainingError,
    TrainingInterrupted,
    TrainResult,
    check_can_continue,
    check_precision,
    epoch_label,
    fit,
    latest_checkpoint,
    log_metrics,
    lr_at,
    out_of_budget,
    plot_loss_curve,
    prune_checkpoints,
    run_checkpoints,
    start_run_dir,
    update_ema,
)
from difflab.models.unet import UNet, count_parameters
from difflab.schedules import Schedule, make_schedule


class DiffusionObjective(Objective):
    """Denoising diffusion (Ho et al. 2020, Alg. 1): one U-Net learns to undo q(x_t | x_0).

    Networks ``model`` (trained) and ``ema`` (its moving average, which previews and sampling
    use); optimiser ``optim`` (AdamW); generator ``noise`` (t, eps and the label dropout of
    classifier-free guidance). The loss is ``diffusion.diffusion_loss`` (STYLE 5).
    """

    def __init__(self, config: RunConfig, dataset: ImageDataset, ctx: Context) -> None:
        cfg = config.train
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
        self.num_items = len(self.images)

    def loss(self, phase: str, batch: Batch, nets: dict[str, Any]) -> torch.Tensor:
        config, gen, device = self.config, self.noise_gen, self.images.device
        # Every process draws t, eps and the label dropout for the whole global batch from the
        # same generator and keeps its slice: the update and the generator state are the same
        # whatever the number of processes.
        b = len(batch.idx)
        t = torch.randint(0, self.schedule.num_timesteps, (b,), generator=gen, device=device)
        eps = torch.randn((b, *self.images.shape[1:]), generator=gen, device=device)
        y = None
        if config.model.num_classes > 0:
            drop = torch.rand(b, generator=gen, device=device) < config.train.label_dropout
            y = torch.where(drop, config.model.num_classes, self.labels[batch.idx])
        mine = batch.mine  # ddp: this process's share
        x0 = self.x0_batch(batch).contiguous(memory_format=self.memory_format)
        eps = eps[mine].contiguous(memory_format=self.memory_format)  # (b / world, C, H, W)
        t, y = t[mine], (None if y is None else y[mine])
        net = nets["model"]

        def model_fn(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = y) -> Any:
            return net(x_t, t, y)

        return diffusion_loss(
            model_fn, x0, t, eps, self.schedule, config.diffusion.prediction,
            config.diffusion.min_snr_gamma,
        )  # (b / world,) float32  # fmt: skip

    def x0_batch(self, batch: Batch) -> torch.Tensor:
        """This process's share of the batch's clean data x0, (b / world, C, H, W): the images
        (``difflab.latent.LatentDiffusion`` draws latents here instead)."""
        return self.images[batch.idx[batch.mine]]

    def describe(self) -> str:
        d = self.dataset
        return (
            f"{d.name} ({self.num_items} images, {d.channels}x{d.image_size}x{d.image_size}), "
            f"U-Net with {count_parameters(self.networks['model']):,} parameters"
        )

    def preview(self, path: Path) -> Path:
        cfg = self.config.train
        x = generate(
            self.networks["ema"], self.config, self.schedule, num_images=cfg.num_preview,
            seed=cfg.seed, sampler=cfg.preview_sampler, steps=cfg.preview_steps,
        )  # fmt: skip
        return viz.save_grid(x, path)

    def finish(self, result: TrainResult, final_preview: Path | None) -> None:
        save_forward_process(self.config, self.dataset, self.schedule, result.run_dir)

    def report(self) -> Report:
        return diffusion_report(self.config)


def train(
    config: RunConfig,
    dataset: ImageDataset,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train a U-Net on ``dataset`` as ``config`` says, writing everything into ``out_dir``.

    ``resume`` continues from the newest checkpoint in ``out_dir`` exactly where it stopped
    (weights, EMA, optimiser, LR schedule, step, data order and every random state), so the
    weights come out as those of a run that never stopped. Ctrl-C stops after the current step
    and saves a checkpoint (``TrainingInterrupted``). Started by ``torchrun``, each process trains
    on its slice of every batch (``difflab.distributed``) and rank 0 writes the files.
    """
    if config.backend == "numpy":
        _check_numpy_options(config.train)
        if resume:
            raise ValueError("--resume is available for the torch backend only")
        return train_numpy(config, dataset, out_dir, overwrite=overwrite, progress=progress)

    if config.autoencoder is not None:
        raise ValueError(
            f"{out_dir} is an autoencoder run; continue it with difflab train-autoencoder --resume"
        )
    if config.latent is not None:  # diffusion on an autoencoder's latents
        from difflab.latent import train_latent

        return train_latent(
            config, dataset, out_dir, resume=resume, overwrite=overwrite, progress=progress
        )

    def make_objective(ctx: Context) -> DiffusionObjective:
        return DiffusionObjective(config, dataset, ctx)

    return fit(
        make_objective, config, out_dir, resume=resume, overwrite=overwrite, progress=progress
    )


def prepare_run(
    train_cfg: TrainConfig,
    diffusion_cfg: DiffusionConfig,
    model_overrides: dict[str, Any] | None = None,
    *,
    image_size: int | None = None,
    conditional: bool = False,
    num_images: int | None = None,
    backend: str = "torch",
) -> tuple[RunConfig, ImageDataset]:
    """Load the data and fit the default U-Net for it (with any overrides) into a RunConfig.

    Flags are checked before the data is read, so a mistake costs no loading time.
    ``num_images`` (default: ``train_cfg.num_images``) is kept in the config for --resume.
    """
    from difflab.config import default_model_config

    if num_images is not None:
        train_cfg = replace(train_cfg, num_images=num_images)
    train_cfg.validate()
    if backend == "numpy":
        _check_numpy_options(train_cfg)
    else:
        check_precision(train_cfg.precision, pick_device(train_cfg.device))
    diffusion_cfg.validate()
    make_schedule(diffusion_cfg.schedule, diffusion_cfg.timesteps)  # fail early on a bad T
    dataset = load_dataset(
        train_cfg.data,
        data_dir=train_cfg.data_dir,
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
    model_cfg.validate()
    config = RunConfig(
        model=model_cfg, diffusion=diffusion_cfg, train=train_cfg,
        class_names=dataset.class_names, backend=backend,
    )  # fmt: skip
    return config, dataset


# Flags that may change when a run is resumed: how long to go on, and how to compute. Everything
# else (data, model, optimiser) is the run's own and comes from its checkpoint.
RESUME_FLAGS = ("epochs", "max_steps", "max_minutes", "device", "precision", "compile",
                "channels_last", "skip_nonfinite")  # fmt: skip


def resume_config(ckpt: Checkpoint, **changes: Any) -> RunConfig:
    """The configuration a resumed run goes on with: the checkpoint's, with ``changes`` applied.

    ``changes`` are values of ``RESUME_FLAGS`` (None = keep the stored value). A step or time limit
    that the run has already reached is lifted, so that ``--max-steps 100`` followed by
    ``--resume`` goes on to the last epoch; a limit given again with --resume stops it again.
    """
    config = ckpt.config
    if config.backend != "torch":
        raise ValueError(f"--resume is available for the torch backend only ({ckpt.path})")
    unknown = set(changes) - set(RESUME_FLAGS)
    if unknown:
        raise ValueError(f"{', '.join(sorted(unknown))} cannot change when a run is resumed")
    stored = config.train
    cfg = replace(stored, **{k: v for k, v in changes.items() if v is not None})
    step, elapsed = ckpt.state.get("step", 0), ckpt.state.get("elapsed_s", 0.0)
    if changes.get("max_steps") is None and cfg.max_steps is not None and step >= cfg.max_steps:
        cfg = replace(cfg, max_steps=None)
    if (
        changes.get("max_minutes") is None
        and cfg.max_minutes is not None
        and elapsed >= cfg.max_minutes * 60
    ):
        cfg = replace(cfg, max_minutes=None)
    cfg.validate()
    check_precision(cfg.precision, pick_device(cfg.device))
    check_can_continue(cfg, ckpt.state)
    return replace(config, train=cfg)


def _check_numpy_options(cfg: TrainConfig) -> None:
    for flag, used in [
        ("--precision", cfg.precision != "fp32"),
        ("--compile", cfg.compile),
        ("--channels-last", bool(cfg.channels_last)),
        ("--skip-nonfinite", cfg.skip_nonfinite),
        ("torchrun (several processes)", distributed.launched_by_torchrun()),
    ]:
        if used:
            raise ValueError(f"{flag} is available for the torch backend only")


def save_forward_process(
    config: RunConfig, dataset: ImageDataset, schedule: Schedule, out: Path
) -> None:
    """forward_process.png: eight training images dissolving into noise."""
    viz.save_forward_process_grid(
        dataset.images[:8], schedule, out / "forward_process.png",
        generator=np.random.default_rng(config.train.seed),
    )  # fmt: skip


class NumpyDiffusion:
    """The diffusion objective for the from-scratch NumPy U-Net: no autograd, every gradient by
    hand (``nn_numpy.loss_and_grads``), NumPy's AdamW, and one ``np.random.Generator`` for the
    data order, t, eps and the label dropout.

    Why not ``harness.fit``: its step is torch's (autograd backward, torch optimisers and their
    state_dicts, GradScaler, DDP, torch generators), none of which the NumPy networks have. So
    ``train_numpy`` keeps its own loop and shares the harness's run directory, limits, metrics
    log, checkpoint names and pruning, loss curve and report.
    """

    def __init__(self, config: RunConfig, dataset: ImageDataset) -> None:
        from difflab.nn_numpy import AdamW, NumpyUNet

        cfg = config.train
        self.config, self.dataset = config, dataset
        self.model = NumpyUNet(config.model, seed=cfg.seed)
        self.ema = NumpyUNet(config.model, seed=cfg.seed)  # the moving average, for sampling
        self.optimizer = AdamW(
            self.model.named_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.schedule = make_schedule(config.diffusion.schedule, config.diffusion.timesteps)
        self.rng = np.random.default_rng(cfg.seed)  # data order, t, eps and label dropout

    def step(self, idx: np.ndarray, lr: float, step: int) -> tuple[float, float]:
        """One AdamW step on the batch ``idx``, then EMA; returns the loss and gradient norm."""
        from difflab.nn_numpy import clip_grad_norm, loss_and_grads

        config, cfg, rng, model = self.config, self.config.train, self.rng, self.model
        self.optimizer.lr = lr
        x0 = self.dataset.images[idx]  # (B, C, H, W) float32
        t = rng.integers(0, self.schedule.num_timesteps, len(idx))
        eps = rng.standard_normal(x0.shape).astype(np.float32)
        y = None
        if config.model.num_classes > 0:
            drop = rng.random(len(idx)) < cfg.label_dropout
            y = np.where(drop, config.model.num_classes, self.dataset.labels[idx])
        model.zero_grad()
        per_sample = loss_and_grads(
            model, x0, t, eps, self.schedule, config.diffusion.prediction, y,
            config.diffusion.min_snr_gamma,
        )  # fmt: skip
        loss = float(per_sample.mean())
        if not math.isfinite(loss):
            raise TrainingError(f"loss became {loss} at step {step}. Lower --lr")
        grads = (g for _, _, g in model.named_parameters())
        grad_norm = clip_grad_norm(grads, cfg.grad_clip) if cfg.grad_clip > 0 else math.nan
        self.optimizer.step()
        d = min(cfg.ema_decay, (1.0 + step) / (10.0 + step))
        ema_params = {name: p for name, p, _ in self.ema.named_parameters()}
        for name, p, _ in model.named_parameters():  # ema <- d * ema + (1 - d) * p
            ema_params[name] += (1.0 - d) * (p - ema_params[name])
        return loss, grad_norm

    def save(self, path: Path, state: dict[str, Any] | None = None) -> Path:
        """The same tensors as the PyTorch backend's checkpoints (weights and EMA weights)."""

        def tensors(m: Any) -> dict[str, torch.Tensor]:
            return {k: torch.from_numpy(v) for k, v in m.state_dict().items()}

        return save_checkpoint(
            path, self.config, tensors(self.model), ema=tensors(self.ema), state=state
        )

    def preview(self, path: Path) -> Path:
        cfg = self.config.train
        x = generate(
            self.ema, self.config, self.schedule, num_images=cfg.num_preview, seed=cfg.seed,
            sampler=cfg.preview_sampler, steps=cfg.preview_steps,
        )  # fmt: skip
        return viz.save_grid(x, path)


def train_numpy(
    config: RunConfig,
    dataset: ImageDataset,
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> TrainResult:
    """The same loop for the from-scratch NumPy U-Net (``NumpyDiffusion``): lr -> batch -> loss
    and gradients -> clip -> AdamW step -> EMA -> log -> preview / checkpoint.

    Its checkpoints hold the same tensors as the PyTorch backend's, so either backend samples
    from them; resuming is PyTorch-only.
    """
    cfg, out = config.train, Path(out_dir)
    metrics = start_run_dir(out, config, resume=False, overwrite=overwrite)
    run = NumpyDiffusion(config, dataset)
    n = dataset.num_images
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    num_params = run.model.num_parameters()
    print(
        f"difflab train (numpy backend): {dataset.name} ({n} images), U-Net with "
        f"{num_params:,} parameters, {steps_per_epoch} steps/epoch x {cfg.epochs} epochs"
    )

    step, epoch, elapsed, limit = 0, 0, 0.0, None
    first_loss, last_loss = math.nan, math.nan
    while epoch < cfg.epochs:
        batches = np.array_split(run.rng.permutation(n), steps_per_epoch)
        bar = tqdm(
            batches, desc=epoch_label(epoch, elapsed, cfg), disable=None if progress else True
        )
        losses: list[float] = []
        for idx in bar:
            t0 = time.perf_counter()
            lr = lr_at(step, cfg, total_steps)
            loss, grad_norm = run.step(idx, lr, step)
            step += 1
            elapsed += time.perf_counter() - t0
            first_loss = loss if math.isnan(first_loss) else first_loss
            last_loss = loss
            losses.append(loss)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
            limit = out_of_budget(cfg, step, elapsed)
            if step % cfg.log_every == 0 or limit or len(losses) == len(batches):
                since_log = (step - 1) % cfg.log_every + 1  # steps since the last line
                log_metrics(metrics, {"step": step, "loss": float(np.mean(losses[-since_log:])),
                                      "lr": lr, "grad_norm": grad_norm,
                                      "elapsed_s": round(elapsed, 2)})  # fmt: skip
            if limit:
                break
        bar.close()
        epoch += 1
        log_metrics(metrics, {"epoch_end": epoch, "step": step, "elapsed_s": round(elapsed, 2)})
        done = epoch == cfg.epochs or limit is not None
        if (cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0) or done:
            run.save(out / "checkpoints" / f"epoch_{epoch:03d}.safetensors",
                     {"step": step, "epoch": epoch})  # fmt: skip
            prune_checkpoints(out, cfg.keep_checkpoints)
        if done:
            break
        if cfg.sample_every and epoch % cfg.sample_every == 0:
            run.preview(out / "samples" / f"epoch_{epoch:03d}.png")

    run.save(out / "model_final.safetensors")
    result = TrainResult(
        run_dir=out, steps=step, epochs_done=epoch, first_loss=first_loss, last_loss=last_loss,
        minutes=elapsed / 60, num_parameters=num_params,
    )  # fmt: skip
    final = run.preview(out / "samples" / f"epoch_{epoch:03d}.png")
    plot_loss_curve(out)
    save_forward_process(config, dataset, run.schedule, out)
    write_run_report(out, config, result, final)
    return result


def diffusion_report(config: RunConfig) -> Report:
    """Diffusion's part of report.html."""
    return Report(
        facts={
            "schedule": f"{config.diffusion.schedule}, T = {config.diffusion.timesteps}",
            "prediction": config.diffusion.prediction,
        },
        pictures=(
            ("The forward process on training images", "forward_process.png"),
            ("Denoising trajectory: x_t from noise to image", "trajectory.png"),
            ("Noise schedules", "schedules.png"),
        ),
        final_caption="Samples from the final model (EMA weights)",
    )


def write_run_report(out: Path, config: RunConfig, result: TrainResult, final_grid: Path) -> Path:
    """report.html of a diffusion run (``difflab demo`` rewrites it after adding pictures)."""
    return harness.write_run_report(out, config, result, final_grid, diffusion_report(config))


def model_config_overrides(**values: Any) -> dict[str, Any]:
    """Keep only the U-Net fields the user set (None means: use the default for the data)."""
    fields = set(ModelConfig.__dataclass_fields__)
    return {k: v for k, v in values.items() if v is not None and k in fields}
