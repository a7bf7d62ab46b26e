"""The training loop (STYLE 7): lr for this step -> batch -> loss -> backward -> clip -> step -> EMA
-> log -> preview / checkpoint. It reads top to bottom; everything else is a small helper.

A run directory holds everything one run made::

    config.json  metrics.jsonl  samples/epoch_001.png ...  checkpoints/epoch_001.safetensors ...
    training_loss.png  forward_process.png  model_final.safetensors  report.html
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from difflab import viz
from difflab.checkpoint import load_checkpoint, load_weights_into, save_checkpoint
from difflab.config import DiffusionConfig, ModelConfig, RunConfig, TrainConfig, to_dict
from difflab.data import ImageDataset, load_dataset
from difflab.diffusion import diffusion_loss
from difflab.generate import generate, pick_device
from difflab.io import write_text_atomic
from difflab.models.unet import UNet, count_parameters
from difflab.schedules import Schedule, make_schedule


class TrainingError(RuntimeError):
    """Training cannot go on (for example the loss became NaN); the message says why and what to do."""


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    epochs_done: int
    first_loss: float
    last_loss: float
    minutes: float
    num_parameters: int


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to 10% of ``lr``."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_decay == "cosine":
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))
    return cfg.lr


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """ema <- d * ema + (1 - d) * weights, with d = min(decay, (1 + step) / (10 + step)) warming up."""
    d = min(decay, (1.0 + step) / (10.0 + step))
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1.0 - d)


def check_run_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to mix two runs in one directory, or to write where we cannot."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output path {out_dir} exists and is not a directory")
    if (out_dir / "config.json").exists() and not overwrite:
        raise ValueError(
            f"run directory {out_dir} already holds a run; pass --resume {out_dir} to continue it, "
            "--overwrite to replace it, or another --out"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"cannot write to output directory {out_dir} ({err.strerror})") from err


def start_run_dir(out: Path, config: RunConfig, *, resume: bool, overwrite: bool) -> Path:
    """Check and lay out the run directory, write config.json; returns the metrics.jsonl path."""
    if not resume:
        check_run_dir(out, overwrite)
        (out / "metrics.jsonl").unlink(missing_ok=True)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    write_text_atomic(out / "config.json", json.dumps(to_dict(config), indent=2) + "\n")
    return out / "metrics.jsonl"


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
    """Load the data and fit the default U-Net for it (with any overrides) into a RunConfig."""
    from difflab.config import default_model_config

    diffusion_cfg.validate()
    make_schedule(diffusion_cfg.schedule, diffusion_cfg.timesteps)  # fail early on a bad T
    dataset = load_dataset(
        train_cfg.data,
        data_dir=train_cfg.data_dir,
        image_size=image_size,
        seed=train_cfg.seed,
        num_images=num_images,
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


def _log(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _read_losses(path: Path) -> tuple[list[int], list[float]]:
    steps, losses = [], []
    if path.exists():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "loss" in record and "step" in record:
                steps.append(record["step"])
                losses.append(record["loss"])
    return steps, losses


def _epoch_label(epoch: int, elapsed: float, cfg: TrainConfig) -> str:
    """Progress-bar label: the epoch, and the time budget when there is one."""
    if cfg.max_minutes is None:
        return f"epoch {epoch + 1}/{cfg.epochs}"
    return f"epoch {epoch + 1} ({elapsed / 60:.1f} of {cfg.max_minutes:g} min)"


def _prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    ckpts = sorted(ckpt_dir.glob("epoch_*.safetensors"))
    for old in ckpts[: max(0, len(ckpts) - keep)]:
        old.unlink()


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest checkpoint of a run directory (the one --resume continues from)."""
    ckpts = sorted((run_dir / "checkpoints").glob("*.safetensors"))
    if not ckpts:
        raise ValueError(f"no checkpoints in {run_dir / 'checkpoints'} to resume from")
    return max(ckpts, key=lambda p: p.stat().st_mtime_ns)


def train(
    config: RunConfig,
    dataset: ImageDataset,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    channels_last: bool = True,
) -> TrainResult:
    """Train a U-Net on ``dataset`` as ``config`` says, writing everything into ``out_dir``."""
    if config.backend == "numpy":
        if resume:
            raise ValueError("--resume is available for the torch backend only")
        return train_numpy(config, dataset, out_dir, overwrite=overwrite, progress=progress)
    cfg, out = config.train, Path(out_dir)
    metrics = start_run_dir(out, config, resume=resume, overwrite=overwrite)

    device = pick_device(cfg.device)
    use_channels_last = channels_last and device.type == "cpu"
    memory_format = torch.channels_last if use_channels_last else torch.contiguous_format
    torch.manual_seed(cfg.seed)  # initial weights
    model = UNet(config.model).to(device, memory_format=memory_format)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = make_schedule(config.diffusion.schedule, config.diffusion.timesteps)

    images = torch.from_numpy(dataset.images).to(device)  # (N, C, H, W) in [-1, 1]
    labels = torch.from_numpy(dataset.labels).to(device)  # (N,)
    n = len(images)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    data_gen = torch.Generator().manual_seed(cfg.seed)  # data order
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)  # t, eps, label dropout

    step, epoch, batch_in_epoch, elapsed = 0, 0, 0, 0.0
    if resume:
        ckpt = load_checkpoint(latest_checkpoint(out))
        load_weights_into(model, ckpt.model, ckpt.path or "")
        load_weights_into(ema, ckpt.sampling_weights, ckpt.path or "")
        if ckpt.optimizer is not None:
            optimizer.load_state_dict(ckpt.optimizer)
        data_gen.set_state(ckpt.rng["data_epoch_start"])
        noise_gen.set_state(ckpt.rng["noise"].to(noise_gen.get_state().device))
        step, epoch = ckpt.state["step"], ckpt.state["epoch"]
        batch_in_epoch, elapsed = ckpt.state["batch_in_epoch"], ckpt.state["elapsed_s"]

    num_params = count_parameters(model)
    print(
        f"difflab train: {dataset.name} ({n} images, {dataset.channels}x{dataset.image_size}x"
        f"{dataset.image_size}), U-Net with {num_params:,} parameters, device {device}, "
        f"{steps_per_epoch} steps/epoch x {cfg.epochs} epochs"
        + (f", stopping after {cfg.max_minutes:g} min" if cfg.max_minutes else "")
    )

    def save(kind: str, epoch_start_state: torch.Tensor) -> Path:
        path = out / "checkpoints" / f"{kind}.safetensors"
        save_checkpoint(
            path, config, model.state_dict(), ema=ema.state_dict(),
            optimizer=optimizer.state_dict(),
            rng={"data_epoch_start": epoch_start_state, "noise": noise_gen.get_state().cpu()},
            state={"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                   "elapsed_s": elapsed},
        )  # fmt: skip
        _prune_checkpoints(out / "checkpoints", cfg.keep_checkpoints)
        return path

    def preview(name: str) -> Path:
        x = generate(
            ema, config, schedule, num_images=cfg.num_preview, seed=cfg.seed,
            sampler=cfg.preview_sampler, steps=cfg.preview_steps,
        )  # fmt: skip
        return viz.save_grid(x, out / "samples" / f"{name}.png")

    first_loss, last_loss, out_of_time = math.nan, math.nan, False
    last_ckpt: Path | None = None
    saved_step = -1
    epoch_start_state = data_gen.get_state()
    model.train()
    while epoch < cfg.epochs and not out_of_time:
        epoch_start_state = data_gen.get_state()
        perm = torch.randperm(n, generator=data_gen).to(device)
        batches = perm.split(cfg.batch_size)
        bar = tqdm(
            total=len(batches), initial=batch_in_epoch, desc=_epoch_label(epoch, elapsed, cfg),
            disable=None if progress else True, leave=True, dynamic_ncols=True,  # bars on a terminal only
        )  # fmt: skip
        window: list[float] = []
        for idx in batches[batch_in_epoch:]:
            t0 = time.perf_counter()
            lr = lr_at(step, cfg, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x0 = images[idx].contiguous(memory_format=memory_format)  # (B, C, H, W)
            b = len(idx)
            t = torch.randint(0, schedule.num_timesteps, (b,), generator=noise_gen, device=device)
            eps = torch.randn(x0.shape, generator=noise_gen, device=device).contiguous(
                memory_format=memory_format
            )
            y = None
            if config.model.num_classes > 0:
                drop = torch.rand(b, generator=noise_gen, device=device) < cfg.label_dropout
                y = torch.where(drop, config.model.num_classes, labels[idx])

            def model_fn(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = y) -> Any:
                return model(x_t, t, y)

            loss = diffusion_loss(
                model_fn, x0, t, eps, schedule, config.diffusion.prediction,
                config.diffusion.min_snr_gamma,
            ).mean()  # fmt: skip
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                where = (
                    f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint yet"
                )
                raise TrainingError(
                    f"loss became {loss_value} at step {step}; {where}. Lower --lr or check the data"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
                if cfg.grad_clip > 0
                else math.nan
            )
            optimizer.step()
            update_ema(ema, model, cfg.ema_decay, step)

            step += 1
            batch_in_epoch += 1
            elapsed += time.perf_counter() - t0
            first_loss = loss_value if math.isnan(first_loss) else first_loss
            last_loss = loss_value
            window.append(loss_value)
            bar.set_postfix(loss=f"{np.mean(window[-50:]):.4f}", lr=f"{lr:.1e}", refresh=False)
            bar.update()
            out_of_time = cfg.max_minutes is not None and elapsed >= cfg.max_minutes * 60
            end_of_epoch = batch_in_epoch == len(batches)
            if step % cfg.log_every == 0 or out_of_time or end_of_epoch:
                since_log = (step - 1) % cfg.log_every + 1  # steps since the last line
                _log(metrics, {
                    "step": step, "epoch": epoch + batch_in_epoch / len(batches),
                    "loss": float(np.mean(window[-since_log:])), "lr": lr,
                    "grad_norm": grad_norm, "elapsed_s": round(elapsed, 2),
                })  # fmt: skip
            if out_of_time:
                break
        bar.close()
        if out_of_time:
            break
        epoch += 1
        batch_in_epoch = 0
        _log(metrics, {"epoch_end": epoch, "step": step, "elapsed_s": round(elapsed, 2),
                       "epoch_loss": float(np.mean(window)) if window else None})  # fmt: skip
        if cfg.sample_every and epoch % cfg.sample_every == 0 and epoch < cfg.epochs:
            preview(f"epoch_{epoch:03d}")
        if cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0:
            last_ckpt, saved_step = save(f"epoch_{epoch:03d}", data_gen.get_state()), step

    # The end of training, whether by epochs or by time budget.
    name = f"epoch_{epoch:03d}" if batch_in_epoch == 0 else f"epoch_{epoch:03d}_step_{step:06d}"
    if saved_step != step:
        save(name, epoch_start_state if batch_in_epoch else data_gen.get_state())
    save_checkpoint(
        out / "model_final.safetensors", config, model.state_dict(), ema=ema.state_dict()
    )
    result = TrainResult(
        run_dir=out, steps=step, epochs_done=epoch, first_loss=first_loss, last_loss=last_loss,
        minutes=elapsed / 60, num_parameters=num_params,
    )  # fmt: skip
    finish_run(config, dataset, schedule, result, preview(name))
    return result


def finish_run(
    config: RunConfig,
    dataset: ImageDataset,
    schedule: Schedule,
    result: TrainResult,
    final_grid: Path,
) -> None:
    """The pictures and the report every run ends with, whichever backend trained it."""
    out = result.run_dir
    loss_steps, losses = _read_losses(out / "metrics.jsonl")
    if losses:
        viz.plot_loss(loss_steps, losses, out / "training_loss.png")
    viz.save_forward_process_grid(
        dataset.images[:8], schedule, out / "forward_process.png",
        generator=np.random.default_rng(config.train.seed),
    )  # fmt: skip
    write_run_report(out, config, result, final_grid)


def train_numpy(
    config: RunConfig,
    dataset: ImageDataset,
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> TrainResult:
    """The same loop for the from-scratch NumPy U-Net: no autograd, every gradient by hand.

    lr -> batch -> loss and gradients (``nn_numpy.loss_and_grads``) -> clip -> AdamW step -> EMA
    -> log -> preview / checkpoint. Checkpoints hold the same tensors as the PyTorch backend's
    (weights and EMA weights), so either backend samples from them; resuming is PyTorch-only.
    """
    from difflab.nn_numpy import AdamW, NumpyUNet, clip_grad_norm, loss_and_grads

    cfg, out = config.train, Path(out_dir)
    metrics = start_run_dir(out, config, resume=False, overwrite=overwrite)

    model = NumpyUNet(config.model, seed=cfg.seed)
    ema = NumpyUNet(config.model, seed=cfg.seed)  # holds the moving average, used for sampling
    params = {name: p for name, p, _ in model.named_parameters()}
    ema_params = {name: p for name, p, _ in ema.named_parameters()}
    optimizer = AdamW(model.named_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = make_schedule(config.diffusion.schedule, config.diffusion.timesteps)
    rng = np.random.default_rng(cfg.seed)  # data order, t, eps and label dropout
    n = dataset.num_images
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    num_params = model.num_parameters()
    print(
        f"difflab train (numpy backend): {dataset.name} ({n} images), U-Net with "
        f"{num_params:,} parameters, {steps_per_epoch} steps/epoch x {cfg.epochs} epochs"
    )

    def tensors(m: NumpyUNet) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in m.state_dict().items()}

    def preview(name: str) -> Path:
        x = generate(
            ema, config, schedule, num_images=cfg.num_preview, seed=cfg.seed,
            sampler=cfg.preview_sampler, steps=cfg.preview_steps,
        )  # fmt: skip
        return viz.save_grid(x, out / "samples" / f"{name}.png")

    step, epoch, elapsed, out_of_time = 0, 0, 0.0, False
    first_loss, last_loss = math.nan, math.nan
    while epoch < cfg.epochs:
        batches = np.array_split(rng.permutation(n), steps_per_epoch)
        bar = tqdm(
            batches, desc=_epoch_label(epoch, elapsed, cfg), disable=None if progress else True
        )
        losses: list[float] = []
        for idx in bar:
            t0 = time.perf_counter()
            optimizer.lr = lr_at(step, cfg, total_steps)
            x0 = dataset.images[idx]  # (B, C, H, W) float32
            t = rng.integers(0, schedule.num_timesteps, len(idx))
            eps = rng.standard_normal(x0.shape).astype(np.float32)
            y = None
            if config.model.num_classes > 0:
                drop = rng.random(len(idx)) < cfg.label_dropout
                y = np.where(drop, config.model.num_classes, dataset.labels[idx])
            model.zero_grad()
            per_sample = loss_and_grads(
                model, x0, t, eps, schedule, config.diffusion.prediction, y,
                config.diffusion.min_snr_gamma,
            )  # fmt: skip
            loss = float(per_sample.mean())
            if not math.isfinite(loss):
                raise TrainingError(f"loss became {loss} at step {step}. Lower --lr")
            grads = (g for _, _, g in model.named_parameters())
            grad_norm = clip_grad_norm(grads, cfg.grad_clip) if cfg.grad_clip > 0 else math.nan
            optimizer.step()
            d = min(cfg.ema_decay, (1.0 + step) / (10.0 + step))
            for name, p in params.items():  # ema <- d * ema + (1 - d) * p
                ema_params[name] += (1.0 - d) * (p - ema_params[name])
            step += 1
            elapsed += time.perf_counter() - t0
            first_loss = loss if math.isnan(first_loss) else first_loss
            last_loss = loss
            losses.append(loss)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
            out_of_time = cfg.max_minutes is not None and elapsed >= cfg.max_minutes * 60
            if step % cfg.log_every == 0 or out_of_time or len(losses) == len(batches):
                since_log = (step - 1) % cfg.log_every + 1  # steps since the last line
                _log(metrics, {"step": step, "loss": float(np.mean(losses[-since_log:])),
                               "lr": optimizer.lr, "grad_norm": grad_norm,
                               "elapsed_s": round(elapsed, 2)})  # fmt: skip
            if out_of_time:
                break
        bar.close()
        epoch += 1
        _log(metrics, {"epoch_end": epoch, "step": step, "elapsed_s": round(elapsed, 2)})
        done = epoch == cfg.epochs or (
            cfg.max_minutes is not None and elapsed >= cfg.max_minutes * 60
        )
        if (cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0) or done:
            save_checkpoint(out / "checkpoints" / f"epoch_{epoch:03d}.safetensors", config,
                            tensors(model), ema=tensors(ema), state={"step": step, "epoch": epoch})  # fmt: skip
            _prune_checkpoints(out / "checkpoints", cfg.keep_checkpoints)
        if done:
            break
        if cfg.sample_every and epoch % cfg.sample_every == 0:
            preview(f"epoch_{epoch:03d}")

    save_checkpoint(out / "model_final.safetensors", config, tensors(model), ema=tensors(ema))
    result = TrainResult(
        run_dir=out, steps=step, epochs_done=epoch, first_loss=first_loss, last_loss=last_loss,
        minutes=elapsed / 60, num_parameters=num_params,
    )  # fmt: skip
    finish_run(config, dataset, schedule, result, preview(f"epoch_{epoch:03d}"))
    return result


def write_run_report(out: Path, config: RunConfig, result: TrainResult, final_grid: Path) -> Path:
    """report.html: what was trained, how it went, and every picture of the run."""
    images = [
        ("Samples from the final model (EMA weights)", final_grid.relative_to(out).as_posix())
    ]
    for caption, name in [
        ("Training loss (faint: per log interval; bold: moving average)", "training_loss.png"),
        ("The forward process on training images", "forward_process.png"),
        ("Denoising trajectory: x_t from noise to image", "trajectory.png"),
        ("Noise schedules", "schedules.png"),
    ]:
        if (out / name).exists():
            images.append((caption, name))
    previews = sorted((out / "samples").glob("epoch_*.png"))
    images += [(f"Preview after {p.stem.replace('_', ' ')}", f"samples/{p.name}") for p in previews]
    summary = {
        "dataset": config.train.data,
        "parameters": f"{result.num_parameters:,}",
        "steps": result.steps,
        "epochs completed": result.epochs_done,
        "training minutes": f"{result.minutes:.1f}",
        "loss (first step -> last step)": f"{result.first_loss:.4f} -> {result.last_loss:.4f}",
        "schedule": f"{config.diffusion.schedule}, T = {config.diffusion.timesteps}",
        "prediction": config.diffusion.prediction,
    }
    return viz.write_report(
        out,
        title=f"difflab run: {out.name}",
        summary=summary,
        images=images,
        config=to_dict(config),
    )


def model_config_overrides(**values: Any) -> dict[str, Any]:
    """Keep only the U-Net fields the user set (None means: use the default for the data)."""
    fields = set(ModelConfig.__dataclass_fields__)
    return {k: v for k, v in values.items() if v is not None and k in fields}
