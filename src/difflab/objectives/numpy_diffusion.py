"""The diffusion objective for the from-scratch NumPy U-Net (``difflab train --backend numpy``):
its own loop, sharing the harness's run directory, limits, log, checkpoint names and report.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from difflab import viz
from difflab.checkpoint import save_checkpoint
from difflab.config import RunConfig
from difflab.data import ImageDataset
from difflab.objectives.diffusion import save_forward_process, write_run_report
from difflab.sampling.draw import generate
from difflab.schedules import make_schedule
from difflab.training.harness import lr_at
from difflab.training.objective import TrainingError, TrainResult
from difflab.training.rundir import (
    epoch_label,
    log_metrics,
    out_of_budget,
    plot_loss_curve,
    prune_checkpoints,
    start_run_dir,
)


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
