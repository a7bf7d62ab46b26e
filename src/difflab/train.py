"""The training loop (STYLE 7): lr for this step -> batch -> loss -> backward -> clip -> step -> EMA
-> log -> preview / checkpoint. It reads top to bottom; everything else is a small helper.

A run directory holds everything one run made::

    config.json  metrics.jsonl  samples/epoch_001.png ...  checkpoints/epoch_001.safetensors ...
    training_loss.png  forward_process.png  model_final.safetensors  report.html

Robustness, in short: a checkpoint holds every state the loop has (weights, EMA, optimiser, step,
data order, all random generators, the fp16 loss scale), so ``--resume`` gives bit for bit the
weights of a run that never stopped; checkpoints are written atomically and ``--resume`` ignores
what a killed write left behind; Ctrl-C finishes the step and saves. Under ``torchrun`` the lines
marked by ``ddp`` (and ``difflab.distributed``) split each batch over the processes.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from difflab import distributed, viz
from difflab.checkpoint import Checkpoint, load_checkpoint, load_weights_into, save_checkpoint
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
    model: Any = None  # the trained network (raw weights), for use in the same process
    ema: Any = None  # its moving average, the one to sample from


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


def _log(path: Path, record: dict[str, Any]) -> None:
    """One JSON line; a value not measured (NaN, e.g. the gradient norm without clipping) is null,
    so that strict JSON readers (jq, JavaScript) can read the log."""
    clean = {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()
    }
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(clean, allow_nan=False) + "\n")


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


# Checkpoint names: ``epoch_002`` after two whole epochs, ``epoch_002_step_000150`` when stopped at
# step 150, inside the third epoch. A temporary file that a killed write left behind starts with a
# dot and never matches.
CHECKPOINT_NAME = re.compile(r"epoch_(\d+)(?:_step_(\d+))?\.safetensors")


def run_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints of a run directory, oldest first (by epoch and step, from their names)."""
    found = []
    for path in (run_dir / "checkpoints").glob("epoch_*.safetensors"):
        match = CHECKPOINT_NAME.fullmatch(path.name)
        if match is not None:
            found.append(((int(match[1]), int(match[2] or -1)), path))
    return [path for _, path in sorted(found)]


def _prune_checkpoints(run_dir: Path, keep: int) -> None:
    for old in run_checkpoints(run_dir)[:-keep]:
        old.unlink()


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest checkpoint of a run directory (the one --resume continues from)."""
    if not (run_dir / "checkpoints").is_dir():
        raise ValueError(
            f"{run_dir} is not a difflab run directory (no checkpoints/ folder); "
            "--resume expects the --out folder of an earlier run"
        )
    ckpts = run_checkpoints(run_dir)
    if not ckpts:
        raise ValueError(f"no checkpoints in {run_dir / 'checkpoints'} to resume from")
    return ckpts[-1]


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


def check_can_continue(cfg: TrainConfig, state: dict[str, Any]) -> None:
    """Refuse to resume a run that has nothing left to do under ``cfg``."""
    step, epoch = state.get("step", 0), state.get("epoch", 0)
    if epoch >= cfg.epochs:
        raise ValueError(
            f"the run has already finished its {cfg.epochs} epochs (step {step}); "
            f"pass --epochs N with N > {cfg.epochs} to train on"
        )
    if cfg.max_steps is not None and step >= cfg.max_steps:
        raise ValueError(
            f"--max-steps {cfg.max_steps} is already reached (the run is at step {step}); "
            "pass a larger one"
        )
    elapsed = state.get("elapsed_s", 0.0)
    if cfg.max_minutes is not None and elapsed >= cfg.max_minutes * 60:
        raise ValueError(
            f"--max-minutes {cfg.max_minutes:g} is already reached (the run has trained "
            f"{elapsed / 60:.1f} min); pass a larger one"
        )


AMP_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision that this device cannot train in, before anything is written."""
    if precision not in AMP_DTYPES:
        raise ValueError(
            f"unknown precision {precision!r}; expected one of {', '.join(AMP_DTYPES)}"
        )
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f"--precision fp16 needs a CUDA GPU (it scales the loss with a CUDA GradScaler), "
            f"not device {device}; use --precision bf16 or fp32"
        )
    if precision == "bf16" and device.type not in ("cpu", "cuda"):
        raise ValueError(f"--precision bf16 runs on cpu or cuda, not {device}; use fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("--precision bf16 is not supported by this GPU; use fp16 or fp32")


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


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped training after a step, and a checkpoint holds that step."""

    def __init__(
        self, run_dir: Path, checkpoint: Path, step: int, signal_name: str, processes: int = 1
    ) -> None:
        launch = f"torchrun --nproc_per_node {processes} -m " if processes > 1 else ""
        super().__init__(
            f"stopped by {signal_name} after step {step}; saved {checkpoint}; "
            f"continue with: {launch}difflab train --resume {run_dir}"
        )
        self.run_dir, self.checkpoint, self.step = run_dir, checkpoint, step


class StopOnSignal:
    """The first Ctrl-C (SIGINT) or SIGTERM asks the loop to stop after the current step, so
    that it can save a checkpoint of a whole step; a second Ctrl-C stops at once.

    torchrun and cluster schedulers send SIGTERM before they kill a job, hence both signals.

    Under torchrun (``under_torchrun``) one Ctrl-C reaches each worker twice: from the terminal
    and forwarded by torchrun. So a repeat there does not stop at once; torchrun itself kills the
    workers that have not stopped 30 s after it forwarded the signal.
    """

    def __init__(self, announce: bool = True, under_torchrun: bool = False) -> None:
        self.received: str | None = None  # the name of the signal, once one came
        self.announce = announce
        self.under_torchrun = under_torchrun
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # handlers live there only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            if signum == signal.SIGINT and not self.under_torchrun:
                raise KeyboardInterrupt  # the second Ctrl-C: do not wait for the step
            return
        self.received = signal.Signals(signum).name
        if self.announce:
            again = (
                "torchrun stops the workers at once 30 s after a signal"
                if self.under_torchrun
                else "Ctrl-C again to stop at once"
            )
            print(
                f"\ndifflab train: {self.received}: stopping after this step to save a checkpoint "
                f"({again})",
                file=sys.stderr,
                flush=True,
            )

    def __exit__(self, *exc_info: object) -> None:
        # Under torchrun its copy of a signal that stopped the loop can come after the loop
        # (a worker may save and finish first): the worker is on its way out, so ignore it.
        leaving = self.under_torchrun and self.received is not None
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_IGN if leaving else handler)


def _process_seed(seed: int, rank: int, step: int = 0) -> int:
    """A seed for one process's dropout masks: independent streams for each (seed, rank, step)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def _rank_key(name: str, rank: int) -> str:
    """A process's generator state in a checkpoint: rank 0's under ``name`` (as one process saves
    it), rank r's under ``name_rank{r}``."""
    return f"{name}_rank{rank}" if rank else name


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the lines a run logged after the checkpoint it resumes from (they will be redone)."""
    if path.exists():
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
        write_text_atomic(path, "".join(line + "\n" for line in kept))


# More non-finite steps in a row than this, and skipping cannot help: the weights have diverged.
MAX_SKIPS_IN_A_ROW = 10


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
    cfg, out = config.train, Path(out_dir)
    cfg.validate()
    device = pick_device(cfg.device)
    check_precision(cfg.precision, device)
    ckpt = load_checkpoint(latest_checkpoint(out)) if resume else None
    if ckpt is not None:
        check_can_continue(cfg, ckpt.state)
    with (
        distributed.process_group(device) as (ddp, device),
        StopOnSignal(announce=ddp.is_main, under_torchrun=ddp.enabled) as stop,
    ):
        return _train_torch(
            config, dataset, out, ckpt, ddp, device, stop, overwrite=overwrite, progress=progress
        )


def _train_torch(
    config: RunConfig,
    dataset: ImageDataset,
    out: Path,
    ckpt: Checkpoint | None,
    ddp: distributed.Dist,
    device: torch.device,
    stop: StopOnSignal,
    *,
    overwrite: bool,
    progress: bool,
) -> TrainResult:
    """The PyTorch training loop of ``train``, inside the process group and the signal handler."""
    cfg = config.train
    if cfg.batch_size % ddp.world_size:
        distributed.raise_on_every_process(
            ValueError(
                f"--batch-size {cfg.batch_size} (the global batch) does not split evenly among "
                f"{ddp.world_size} processes; use a multiple of {ddp.world_size}"
            )
        )
    # Rank 0 lays out the run directory; the others learn whether that worked, instead of
    # waiting for it forever in the first all-reduce.
    metrics, error = out / "metrics.jsonl", None
    if ddp.is_main:
        try:
            start_run_dir(out, config, resume=ckpt is not None, overwrite=overwrite)
            if ckpt is not None:
                _truncate_metrics(metrics, ckpt.state["step"])
        except (ValueError, OSError) as err:
            error = err
    if distributed.any_of([error is not None], device)[0]:
        distributed.raise_on_every_process(error or ValueError(f"rank 0 could not set up {out}"))

    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cpu"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(cfg.seed)  # initial weights; later dropout masks (checkpointed)
    model = UNet(config.model).to(device, memory_format=memory_format)
    if ddp.enabled:  # the same weights everywhere, but dropout masks of each process's own
        torch.manual_seed(_process_seed(cfg.seed, ddp.rank))
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range and needs none.
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    amp_dtype = AMP_DTYPES[cfg.precision]
    schedule = make_schedule(config.diffusion.schedule, config.diffusion.timesteps)

    images = torch.from_numpy(dataset.images).to(device)  # (N, C, H, W) in [-1, 1]
    labels = torch.from_numpy(dataset.labels).to(device)  # (N,)
    n = len(images)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    data_gen = torch.Generator().manual_seed(cfg.seed)  # data order
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)  # t, eps, label dropout

    step, epoch, batch_in_epoch, elapsed, skipped = 0, 0, 0, 0.0, 0
    if ckpt is not None:
        load_weights_into(model, ckpt.model, ckpt.path or "")
        load_weights_into(ema, ckpt.sampling_weights, ckpt.path or "")
        if ckpt.optimizer is not None:
            optimizer.load_state_dict(ckpt.optimizer)
        data_gen.set_state(ckpt.rng["data_epoch_start"])
        noise_gen.set_state(ckpt.rng["noise"].to(noise_gen.get_state().device))
        # Dropout's generator, each process its own. Older checkpoints lack it, and a process
        # that the run did not have before lacks its own: they resume with other masks.
        cpu_key, cuda_key = _rank_key("torch_cpu", ddp.rank), _rank_key("torch_cuda", ddp.rank)
        if cpu_key in ckpt.rng:
            torch.set_rng_state(ckpt.rng[cpu_key])
        elif ddp.enabled:
            torch.manual_seed(_process_seed(cfg.seed, ddp.rank, ckpt.state["step"]))
        if cuda_key in ckpt.rng and device.type == "cuda":
            torch.cuda.set_rng_state(ckpt.rng[cuda_key], device)
        if "scaler" in ckpt.state and scaler.is_enabled():
            scaler.load_state_dict(ckpt.state["scaler"])
        step, epoch = ckpt.state["step"], ckpt.state["epoch"]
        batch_in_epoch, elapsed = ckpt.state["batch_in_epoch"], ckpt.state["elapsed_s"]
        skipped = ckpt.state.get("skipped_steps", 0)

    net: Any = model  # what the step calls; ``model`` holds the weights that are saved
    if cfg.compile:
        net = torch.compile(net)
    if ddp.enabled:  # averages the gradients over the processes during backward
        net = DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )

    num_params = count_parameters(model)
    if ddp.is_main:
        print(
            f"difflab train: {dataset.name} ({n} images, {dataset.channels}x{dataset.image_size}x"
            f"{dataset.image_size}), U-Net with {num_params:,} parameters, device {device}"
            + (f" x {ddp.world_size} processes" if ddp.enabled else "")
            + f", {cfg.precision}, {steps_per_epoch} steps/epoch x {cfg.epochs} epochs"
            + (f", stopping after {cfg.max_minutes:g} min" if cfg.max_minutes else "")
            + (f", stopping after step {cfg.max_steps}" if cfg.max_steps else "")
            + (f", resuming at step {step}" if ckpt is not None else "")
        )

    def log(record: dict[str, Any]) -> None:
        if ddp.is_main:
            _log(metrics, record)

    def save(name: str, data_state: torch.Tensor) -> Path:
        """A checkpoint with everything that resuming needs; rank 0 writes it."""
        path = out / "checkpoints" / f"{name}.safetensors"
        # Dropout's generator state of every process (names: _rank_key).
        dropout_rng = {"torch_cpu": distributed.gather_all(torch.get_rng_state(), device)}
        if device.type == "cuda":
            dropout_rng["torch_cuda"] = distributed.gather_all(
                torch.cuda.get_rng_state(device), device
            )
        if not ddp.is_main:
            return path
        rng = {"data_epoch_start": data_state, "noise": noise_gen.get_state().cpu()}
        for key, states in dropout_rng.items():
            rng.update({_rank_key(key, r): state for r, state in enumerate(states)})
        state = {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                 "elapsed_s": elapsed, "skipped_steps": skipped}  # fmt: skip
        if scaler.is_enabled():
            state["scaler"] = scaler.state_dict()
        save_checkpoint(
            path, config, model.state_dict(), ema=ema.state_dict(),
            optimizer=optimizer.state_dict(), rng=rng, state=state,
        )  # fmt: skip
        _prune_checkpoints(out, cfg.keep_checkpoints)
        return path

    def preview(name: str) -> Path:
        x = generate(
            ema, config, schedule, num_images=cfg.num_preview, seed=cfg.seed,
            sampler=cfg.preview_sampler, steps=cfg.preview_steps,
        )  # fmt: skip
        return viz.save_grid(x, out / "samples" / f"{name}.png")

    first_loss, last_loss = math.nan, math.nan
    stop_reason: str | None = None  # why the run ends before its last epoch
    last_ckpt = ckpt.path if ckpt is not None else None
    saved_step = step if ckpt is not None else -1
    skipped_in_a_row = 0
    epoch_start_state = data_gen.get_state()
    model.train()
    while epoch < cfg.epochs and stop_reason is None:
        epoch_start_state = data_gen.get_state()
        perm = torch.randperm(n, generator=data_gen).to(device)
        batches = perm.split(cfg.batch_size)
        bar = tqdm(
            total=len(batches), initial=batch_in_epoch, desc=_epoch_label(epoch, elapsed, cfg),
            disable=None if progress and ddp.is_main else True,  # bars on a terminal only
            leave=True, dynamic_ncols=True,
        )  # fmt: skip
        window: list[float] = []  # recent losses, for the progress bar
        pending: list[float] = []  # losses since the last metrics line
        for idx in batches[batch_in_epoch:]:
            t0 = time.perf_counter()
            lr = lr_at(step, cfg, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # Every process draws t, eps and the label dropout for the whole global batch from
            # the same generator and keeps its slice: the update and the generator state are the
            # same whatever the number of processes.
            b = len(idx)
            t = torch.randint(0, schedule.num_timesteps, (b,), generator=noise_gen, device=device)
            eps = torch.randn((b, *images.shape[1:]), generator=noise_gen, device=device)
            y = None
            if config.model.num_classes > 0:
                drop = torch.rand(b, generator=noise_gen, device=device) < cfg.label_dropout
                y = torch.where(drop, config.model.num_classes, labels[idx])
            mine = distributed.rank_slice(b, ddp)
            x0 = images[idx[mine]].contiguous(memory_format=memory_format)  # (b / world, C, H, W)
            eps = eps[mine].contiguous(memory_format=memory_format)
            t, y = t[mine], (None if y is None else y[mine])

            def model_fn(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = y) -> Any:
                return net(x_t, t, y)

            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                per_sample = diffusion_loss(
                    model_fn, x0, t, eps, schedule, config.diffusion.prediction,
                    config.diffusion.min_snr_gamma,
                )  # (b / world,) float32  # fmt: skip
            # This slice's sum over the global batch size, times the number of processes: DDP's
            # gradient average then gives the global batch mean, even for a last batch that
            # does not split evenly.
            loss = per_sample.sum() * (ddp.world_size / b)
            loss_value = distributed.all_reduce_sum(per_sample.detach().sum()).item() / b

            optimizer.zero_grad(set_to_none=True)
            grad_norm = math.nan
            if math.isfinite(loss_value):
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    grad_norm = torch.nn.utils.clip_grad_norm_(
                        model.parameters(), cfg.grad_clip
                    ).item()
            # A NaN or inf would poison the weights: stop, or skip the step. (Under fp16 the
            # GradScaler skips inf-gradient steps by itself and lowers its scale.) Every process
            # sees the same all-reduced loss and gradients, so all decide alike.
            problem = None
            if not math.isfinite(loss_value):
                problem = f"loss became {loss_value}"
            elif cfg.grad_clip > 0 and not scaler.is_enabled() and not math.isfinite(grad_norm):
                problem = f"gradient norm became {grad_norm}"
            if problem is None:
                scaler.step(optimizer)
                scaler.update()
                update_ema(ema, model, cfg.ema_decay, step)
                skipped_in_a_row = 0
            else:
                skipped, skipped_in_a_row = skipped + 1, skipped_in_a_row + 1
                where = (
                    f"the last good checkpoint is {last_ckpt}"
                    if last_ckpt
                    else "no checkpoint was written yet"
                )
                if not cfg.skip_nonfinite:
                    distributed.raise_on_every_process(
                        TrainingError(
                            f"{problem} at step {step + 1}; {where}. Lower --lr or check the "
                            "data (--skip-nonfinite skips such steps)"
                        )
                    )
                if skipped_in_a_row > MAX_SKIPS_IN_A_ROW:
                    distributed.raise_on_every_process(
                        TrainingError(
                            f"{problem} at step {step + 1}, {skipped_in_a_row} steps in a row: "
                            f"the weights have diverged and skipping cannot help; {where}. "
                            "Lower --lr"
                        )
                    )
                if ddp.is_main:
                    tqdm.write(
                        f"difflab train: warning: {problem} at step {step + 1}; "
                        "skipped the step (--skip-nonfinite)",
                        file=sys.stderr,
                    )

            step += 1
            batch_in_epoch += 1
            elapsed += time.perf_counter() - t0
            if problem is None:
                first_loss = loss_value if math.isnan(first_loss) else first_loss
                last_loss = loss_value
                window.append(loss_value)
                pending.append(loss_value)
                bar.set_postfix(loss=f"{np.mean(window[-50:]):.4f}", lr=f"{lr:.1e}", refresh=False)
            bar.update()
            # Clocks and signals differ between processes: they all stop, or none.
            signalled, out_of_time = distributed.any_of(
                [stop.received is not None,
                 cfg.max_minutes is not None and elapsed >= cfg.max_minutes * 60],
                device,
            )  # fmt: skip
            if signalled:
                stop_reason = "signal"
            elif cfg.max_steps is not None and step >= cfg.max_steps:
                stop_reason = f"--max-steps {cfg.max_steps}"
            elif out_of_time:
                stop_reason = "--max-minutes"
            end_of_epoch = batch_in_epoch == len(batches)
            if step % cfg.log_every == 0 or stop_reason or end_of_epoch:
                log({
                    "step": step, "epoch": epoch + batch_in_epoch / len(batches),
                    "loss": float(np.mean(pending)) if pending else None, "lr": lr,
                    "grad_norm": grad_norm, "elapsed_s": round(elapsed, 2),
                    **({"skipped_steps": skipped} if skipped else {}),
                })  # fmt: skip
                pending = []
            if stop_reason:
                break
        bar.close()
        if batch_in_epoch < len(batches):  # stopped inside the epoch
            break
        epoch += 1
        batch_in_epoch = 0
        log({"epoch_end": epoch, "step": step, "elapsed_s": round(elapsed, 2),
             "epoch_loss": float(np.mean(window)) if window else None})  # fmt: skip
        wants_preview = cfg.sample_every and epoch % cfg.sample_every == 0 and epoch < cfg.epochs
        if wants_preview and stop_reason is None and ddp.is_main:
            preview(f"epoch_{epoch:03d}")
        if cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0:
            last_ckpt, saved_step = save(f"epoch_{epoch:03d}", data_gen.get_state()), step

    # The end of training: by epochs, by a step or time limit, or by a signal.
    name = f"epoch_{epoch:03d}" if batch_in_epoch == 0 else f"epoch_{epoch:03d}_step_{step:06d}"
    if saved_step != step:
        last_ckpt = save(name, epoch_start_state if batch_in_epoch else data_gen.get_state())
    if stop_reason == "signal":
        assert last_ckpt is not None
        distributed.raise_on_every_process(
            TrainingInterrupted(
                out, last_ckpt, step, stop.received or "a signal to another rank", ddp.world_size
            )
        )
    result = TrainResult(
        run_dir=out, steps=step, epochs_done=epoch, first_loss=first_loss, last_loss=last_loss,
        minutes=elapsed / 60, num_parameters=num_params, model=model, ema=ema,
    )  # fmt: skip
    if ddp.is_main:
        save_checkpoint(
            out / "model_final.safetensors", config, model.state_dict(), ema=ema.state_dict()
        )
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
            out_of_time = (cfg.max_minutes is not None and elapsed >= cfg.max_minutes * 60) or (
                cfg.max_steps is not None and step >= cfg.max_steps
            )
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
        done = epoch == cfg.epochs or out_of_time
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
