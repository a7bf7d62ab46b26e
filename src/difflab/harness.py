"""The training harness: the one loop every difflab trainer shares (STYLE 7 and 16).

A trainer is an **objective** handed to this harness (the shape of EDM's ``training_loop.py`` and
``loss.py``; the loop reads top to bottom like nanoGPT's ``train.py``). The objective owns its
networks, its optimisers, its random streams and the loss of one batch; the harness owns all the
rest, the same way for every objective, and never asks which one it runs::

    lr for this step -> batch -> loss (the objective's) -> backward -> clip -> non-finite guard
    -> optimiser step -> EMA -> log -> limits and signals -> preview / checkpoint

What the harness does for every objective: the run directory (``config.json, metrics.jsonl,
samples/, checkpoints/, training_loss.png, model_final.safetensors``); checkpoints of everything
the objective declares (networks and their EMA copies, optimisers, generators, its own counters,
the data order, torch's global generator that dropout draws from, the fp16 loss scale), written
atomically, so that ``--resume`` continues bit for bit; Ctrl-C and SIGTERM (finish the step, save,
``TrainingInterrupted``); ``--max-steps`` / ``--max-minutes``; the non-finite guard
(``--skip-nonfinite``); EMA; the progress bar; previews every ``--sample-every`` epochs; mixed
precision and ``torch.compile``; and torchrun (the lines marked ``ddp``).

Where a new trainer goes: a new small module with an ``Objective`` subclass (diffusion's is
``difflab.train.DiffusionObjective``) and a ``fit(make_objective, config, out)`` call. The NumPy
backend (``difflab.train.train_numpy``) has no autograd and no torch optimisers, so it cannot
take this loop's step; it shares the run directory, the limits, the log, the checkpoint names and
the report helpers below.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from difflab import distributed, viz
from difflab.checkpoint import Checkpoint, load_checkpoint, load_weights_into, write_checkpoint
from difflab.config import RunConfig, TrainConfig, to_dict
from difflab.generate import pick_device
from difflab.io import write_text_atomic


class TrainingError(RuntimeError):
    """Training cannot go on (for example the loss became NaN); the message says why and what to do."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped training after a step, and a checkpoint holds that step."""

    def __init__(
        self,
        run_dir: Path,
        checkpoint: Path,
        step: int,
        signal_name: str,
        processes: int = 1,
        prog: str = "difflab train",
    ) -> None:
        launch = f"torchrun --standalone --nproc_per_node {processes} -m " if processes > 1 else ""
        super().__init__(
            f"stopped by {signal_name} after step {step}; saved {checkpoint}; "
            f"continue with: {launch}{prog} --resume {run_dir}"
        )
        self.run_dir, self.checkpoint, self.step = run_dir, checkpoint, step


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
    networks: dict[str, Any] = field(default_factory=dict)  # every network of the objective


# -------------------------------------------------------------------------------------------------
# What an objective declares


@dataclass(frozen=True)
class Phase:
    """One optimiser update inside a training step. Most objectives have one; a GAN has two (the
    discriminator's, then the generator's), taken in order on the same batch."""

    name: str  # passed to Objective.loss; logged as loss_NAME when there are several phases
    network: str  # the network whose parameters this phase updates and whose gradient it clips
    optimizer: str  # the optimiser (a key of Objective.optimizers) that updates them
    lr: float  # the peak learning rate; TrainConfig's warm-up and decay scale it


@dataclass(frozen=True)
class Report:
    """An objective's part of report.html."""

    facts: dict[str, Any] = field(default_factory=dict)  # summary rows after steps, loss, ...
    pictures: tuple[tuple[str, str], ...] = ()  # (caption, file in the run dir), when it exists
    final_caption: str = "The final preview"  # the caption of the last preview, shown first


@dataclass(frozen=True)
class Context:
    """What the harness decided before the objective is built."""

    device: torch.device
    memory_format: torch.memory_format  # for the objective's image batches and networks


@dataclass(frozen=True)
class Batch:
    """One training step's batch: the objective reads its data at ``idx[mine]``."""

    idx: torch.Tensor  # (B,) indices into the training set: the global batch, on the device
    mine: slice  # ddp: this process's share of the global batch (all of it for one process)
    step: int  # the number of steps taken before this one


class Objective:
    """What a trainer adds to the harness: its networks and the loss of one batch.

    A subclass sets the attributes below in ``__init__`` (the harness has seeded torch's global
    generator with --seed just before, so initial weights follow the seed) and implements ``loss``.
    Everything it declares is checkpointed and restored by the harness: it writes no code for
    resuming, signals or limits.
    """

    networks: dict[str, torch.nn.Module]  # everything with weights, by name (checkpoint prefix)
    ema: dict[str, str]  # EMA copy -> the network it averages; updated after each good step
    optimizers: dict[str, torch.optim.Optimizer]
    generators: dict[str, torch.Generator]  # the objective's own random streams
    phases: tuple[Phase, ...]
    num_items: int  # the training set's size: the harness draws the order and the batches

    def loss(self, phase: str, batch: Batch, nets: dict[str, Any]) -> torch.Tensor | None:
        """The unreduced loss of this process's share of the batch, ``(len(idx[mine]),)``; or
        None: this phase takes no update on this step (no backward, no optimiser step, nothing
        logged for it), as a network that starts learning later in the run does.

        ``nets`` holds the networks to call (compiled and DDP-wrapped where the harness did so).
        Randomness comes from ``self.generators`` only, drawn for the *global* batch and then
        sliced with ``batch.mine``, so the step is the same for any number of processes.
        """
        raise NotImplementedError

    def ema_step(self, step: int) -> int:
        """The step an EMA's warm-up counts from (``update_ema``): the run's step, unless the
        objective restarts its networks from new weights within a run, as progressive
        distillation does at each round, where an average over the old weights would lag."""
        return step

    def ema_decay(self, step: int, decay: float) -> float:
        """The EMA's weight on its past in the update after ``step`` (``blend_into``): ``decay``,
        warmed up from ``ema_step``; an objective that samples another average returns its own,
        as progressive distillation's plain mean of the DMD stage's last steps does."""
        return ema_warmup(decay, self.ema_step(step))

    def lr_clock(self, step: int, total_steps: int) -> tuple[int, int]:
        """The step and the run length the learning-rate schedule (``lr_at``) counts: the run's,
        unless the objective restarts its training within a run, as progressive distillation
        does at each round with ``--lr-decay cosine``."""
        return step, total_steps

    def describe(self) -> str:
        """What is trained on what, for the first line the run prints."""
        return f"{type(self).__name__}, {count_parameters(self):,} parameters"

    def preview(self, path: Path) -> Path | None:
        """Draw a picture of what the networks do now into ``path`` (rank 0 only); None: none."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """The objective's own counters, as JSON values (checkpointed with the run)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def finish(self, result: TrainResult, final_preview: Path | None) -> None:
        """Pictures the run ends with beside the loss curve (rank 0 only), before the report."""

    def report(self) -> Report:
        """What report.html shows of this objective beside the harness's summary."""
        return Report()


def count_parameters(objective: Objective) -> int:
    """Parameters of the trained networks (not of their EMA copies)."""
    trained = {phase.network for phase in objective.phases}
    return sum(p.numel() for name in sorted(trained) for p in objective.networks[name].parameters())


# -------------------------------------------------------------------------------------------------
# Small pieces of the loop, shared with the NumPy backend's


def lr_at(step: int, cfg: TrainConfig, total_steps: int, base_lr: float | None = None) -> float:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to 10% of the peak.

    The peak is ``base_lr`` (a phase's own), or ``cfg.lr``."""
    lr = cfg.lr if base_lr is None else base_lr
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_decay == "cosine":
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))
    return lr


def ema_warmup(decay: float, step: int) -> float:
    """The EMA's weight on its past in its update after ``step`` updates: min(decay, (1 + step) /
    (10 + step)), which lets it forget its first weights fast."""
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def blend_into(ema: torch.nn.Module, model: torch.nn.Module, d: float) -> None:
    """ema <- d * ema + (1 - d) * weights."""
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1.0 - d)


def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """ema <- d * ema + (1 - d) * weights, with d = ema_warmup(decay, step) warming up."""
    blend_into(ema, model, ema_warmup(decay, step))


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


# What a run writes, so that --overwrite replaces all of an earlier run's: a checkpoint or
# preview left behind would be --resume's newest checkpoint, or a picture in the new report.
RUN_OUTPUTS = ("metrics.jsonl", "model_*.safetensors", "report.html", "training_loss.png",
               "checkpoints/epoch_*.safetensors", "samples/epoch_*.png")  # fmt: skip


def start_run_dir(out: Path, config: RunConfig, *, resume: bool, overwrite: bool) -> Path:
    """Check and lay out the run directory, write config.json; returns the metrics.jsonl path."""
    if not resume:
        check_run_dir(out, overwrite)
        for pattern in RUN_OUTPUTS:
            for path in out.glob(pattern):
                path.unlink()
    (out / "samples").mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    write_text_atomic(out / "config.json", json.dumps(to_dict(config), indent=2) + "\n")
    return out / "metrics.jsonl"


def log_metrics(path: Path, record: dict[str, Any]) -> None:
    """One JSON line; a value not measured (NaN, e.g. the gradient norm without clipping) is null,
    so that strict JSON readers (jq, JavaScript) can read the log."""
    clean = {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()
    }
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(clean, allow_nan=False) + "\n")


def read_losses(path: Path) -> tuple[list[int], list[float]]:
    """The (step, loss) pairs of a metrics.jsonl."""
    steps, losses = [], []
    if path.exists():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record.get("loss") is not None and "step" in record:
                steps.append(record["step"])
                losses.append(record["loss"])
    return steps, losses


def plot_loss_curve(run_dir: Path) -> None:
    """training_loss.png from the run's metrics.jsonl."""
    loss_steps, losses = read_losses(run_dir / "metrics.jsonl")
    if losses:
        viz.plot_loss(loss_steps, losses, run_dir / "training_loss.png")


def write_run_report(
    out: Path, config: RunConfig, result: TrainResult, final_preview: Path | None, report: Report
) -> Path:
    """report.html: what was trained, how it went, and every picture of the run."""
    images = []
    if final_preview is not None:
        images.append((report.final_caption, final_preview.relative_to(out).as_posix()))
    loss_curve = (
        "Training loss (faint: per log interval; bold: the trend, a local fit that does not lag)",
        "training_loss.png",
    )
    images += [(caption, name) for caption, name in [loss_curve, *report.pictures]
               if (out / name).exists()]  # fmt: skip
    previews = sorted((out / "samples").glob("epoch_*.png"))
    images += [(f"Preview after {p.stem.replace('_', ' ')}", f"samples/{p.name}") for p in previews]
    summary = {
        "dataset": config.train.data,
        "parameters": f"{result.num_parameters:,}",
        "steps": result.steps,
        "epochs completed": result.epochs_done,
        "training minutes": f"{result.minutes:.1f}",
        "loss (first step -> last step)": f"{result.first_loss:.4f} -> {result.last_loss:.4f}",
        **report.facts,
    }
    return viz.write_report(
        out, title=f"difflab run: {out.name}", summary=summary, images=images,
        config=to_dict(config),
    )  # fmt: skip


def epoch_label(epoch: int, elapsed: float, cfg: TrainConfig) -> str:
    """Progress-bar label: the epoch, and the time budget when there is one."""
    if cfg.max_minutes is None:
        return f"epoch {epoch + 1}/{cfg.epochs}"
    return f"epoch {epoch + 1} ({elapsed / 60:.1f} of {cfg.max_minutes:g} min)"


def out_of_budget(cfg: TrainConfig, step: int, elapsed: float) -> str | None:
    """Which limit (--max-steps, --max-minutes) the run has reached, if any."""
    if cfg.max_steps is not None and step >= cfg.max_steps:
        return f"--max-steps {cfg.max_steps}"
    if cfg.max_minutes is not None and elapsed >= cfg.max_minutes * 60:
        return "--max-minutes"
    return None


# Checkpoint names: ``epoch_002`` after two whole epochs, ``epoch_002_step_000150`` when stopped at
# step 150, inside the third epoch. A temporary file that a killed write left behind starts with a
# dot and never matches.
CHECKPOINT_NAME = re.compile(r"epoch_(\d+)(?:_step_(\d+))?\.safetensors")


def checkpoint_name(epoch: int, step: int, batch_in_epoch: int) -> str:
    """``epoch_EEE`` at an epoch's end, ``epoch_EEE_step_SSSSSS`` inside epoch EEE + 1."""
    return f"epoch_{epoch:03d}" if batch_in_epoch == 0 else f"epoch_{epoch:03d}_step_{step:06d}"


def run_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints of a run directory, oldest first (by epoch and step, from their names)."""
    found = []
    for path in (run_dir / "checkpoints").glob("epoch_*.safetensors"):
        match = CHECKPOINT_NAME.fullmatch(path.name)
        if match is not None:
            found.append(((int(match[1]), int(match[2] or -1)), path))
    return [path for _, path in sorted(found)]


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints of the run."""
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


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the lines a run logged after the checkpoint it resumes from (they will be redone)."""
    if path.exists():
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
        write_text_atomic(path, "".join(line + "\n" for line in kept))


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


def is_out_of_memory(err: RuntimeError) -> bool:
    """A step that ran out of memory: CUDA's OutOfMemoryError, or the CPU allocator's failure."""
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err)


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


def default_channels_last(device: torch.device) -> bool:
    """The memory layout when --channels-last is not given: NHWC on a CPU with AVX-512, else NCHW.

    oneDNN's NHWC convolutions pay off where it has AVX-512 kernels: 1.03x of NCHW on an AMD EPYC
    with AVX-512 and 1.31x on an Intel Xeon, but 0.97x on an AMD Zen3 without it
    (docs/benchmarks.md). A rule, not a start-up timing: timing noise must not pick the layout,
    since the two layouts sum in different orders and the same seed must give the same weights.
    On a GPU NCHW, as PyTorch's default (pass --channels-last with --precision bf16/fp16).
    """
    if device.type != "cpu":
        return False
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


class StopOnSignal:
    """The first Ctrl-C (SIGINT) or SIGTERM asks the loop to stop after the current step, so
    that it can save a checkpoint of a whole step; a second Ctrl-C stops at once.

    torchrun and cluster schedulers send SIGTERM before they kill a job, hence both signals.

    Under torchrun (``under_torchrun``) one Ctrl-C reaches each worker twice: from the terminal
    and forwarded by torchrun. So a repeat there does not stop at once; torchrun itself kills the
    workers that have not stopped 30 s after it forwarded the signal.
    """

    def __init__(
        self, announce: bool = True, under_torchrun: bool = False, prog: str = "difflab train"
    ) -> None:
        self.received: str | None = None  # the name of the signal, once one came
        self.announce = announce
        self.under_torchrun = under_torchrun
        self.prog = prog
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
                f"\n{self.prog}: {self.received}: stopping after this step to save a checkpoint "
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


def process_seed(seed: int, rank: int, step: int = 0) -> int:
    """A seed for one process's dropout masks: independent streams for each (seed, rank, step)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def rank_key(name: str, rank: int) -> str:
    """A process's generator state in a checkpoint: rank 0's under ``name`` (as one process saves
    it), rank r's under ``name_rank{r}``."""
    return f"{name}_rank{rank}" if rank else name


# More non-finite steps in a row than this, and skipping cannot help: the weights have diverged.
MAX_SKIPS_IN_A_ROW = 10

# A preview whose pixels span this many grey levels or fewer is one flat colour (all-grey samples).
FLAT_PREVIEW_LEVELS = 8


# -------------------------------------------------------------------------------------------------
# The loop


def fit(
    make_objective: Callable[[Context], Objective],
    config: RunConfig,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    prog: str = "difflab train",
) -> TrainResult:
    """Train the objective that ``make_objective`` builds, as ``config.train`` says, into ``out_dir``.

    ``resume`` continues from the newest checkpoint in ``out_dir`` exactly where it stopped, so
    the weights come out as those of a run that never stopped. Ctrl-C stops after the current step
    and saves a checkpoint (``TrainingInterrupted``). Started by ``torchrun``, each process trains
    on its slice of every batch (``difflab.distributed``) and rank 0 writes the files.
    """
    cfg, out = config.train, Path(out_dir)
    cfg.validate()
    device = pick_device(cfg.device)
    check_precision(cfg.precision, device)
    ckpt = load_checkpoint(latest_checkpoint(out)) if resume else None
    if ckpt is not None:
        check_can_continue(cfg, ckpt.state)
    with (
        distributed.process_group(device) as (ddp, device),
        StopOnSignal(announce=ddp.is_main, under_torchrun=ddp.enabled, prog=prog) as stop,
    ):
        harness = Harness(make_objective, config, out, ckpt, ddp, device, stop, prog)
        harness.set_up(overwrite=overwrite)
        return harness.run(progress=progress)


class Harness:
    """One training run of one objective, inside the process group and the signal handler."""

    def __init__(
        self,
        make_objective: Callable[[Context], Objective],
        config: RunConfig,
        out: Path,
        ckpt: Checkpoint | None,
        ddp: distributed.Dist,
        device: torch.device,
        stop: StopOnSignal,
        prog: str,
    ) -> None:
        self.make_objective, self.config, self.cfg, self.out = (
            make_objective,
            config,
            config.train,
            out,
        )
        self.prog = prog  # the command, for messages
        self.ckpt, self.ddp, self.device, self.stop = ckpt, ddp, device, stop
        self.metrics = out / "metrics.jsonl"
        self.step = self.epoch = self.batch_in_epoch = self.skipped = self.skipped_in_a_row = 0
        self.elapsed = 0.0
        self.last_ckpt = ckpt.path if ckpt is not None else None
        self.saved_step = ckpt.state["step"] if ckpt is not None else -1

    def set_up(self, *, overwrite: bool) -> None:
        """Run directory, objective, precision, data order and the resumed state."""
        cfg, ddp, device, ckpt = self.cfg, self.ddp, self.device, self.ckpt
        if cfg.batch_size % ddp.world_size:
            distributed.raise_on_every_process(
                ValueError(
                    f"--batch-size {cfg.batch_size} (the global batch) does not split evenly among "
                    f"{ddp.world_size} processes; use a multiple of {ddp.world_size}"
                )
            )
        # Rank 0 lays out the run directory; the others learn whether that worked, instead of
        # waiting for it forever in the first all-reduce.
        error = None
        if ddp.is_main:
            try:
                start_run_dir(self.out, self.config, resume=ckpt is not None, overwrite=overwrite)
                if ckpt is not None:
                    truncate_metrics(self.metrics, ckpt.state["step"])
            except (ValueError, OSError) as err:
                error = err
        if distributed.any_of([error is not None], device)[0]:
            distributed.raise_on_every_process(
                error or ValueError(f"rank 0 could not set up {self.out}")
            )

        channels_last = cfg.channels_last
        if channels_last is None:
            channels_last = default_channels_last(device)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        torch.manual_seed(cfg.seed)  # initial weights; later dropout masks (checkpointed)
        self.objective = obj = self.make_objective(Context(device, memory_format))
        if ddp.enabled:  # the same weights everywhere, but dropout masks of each process's own
            torch.manual_seed(process_seed(cfg.seed, ddp.rank))
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.amp_dtype = AMP_DTYPES[cfg.precision]
        self.steps_per_epoch = math.ceil(obj.num_items / cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.data_gen = torch.Generator().manual_seed(cfg.seed)  # data order
        if ckpt is not None:
            self.restore(ckpt)

        self.nets: dict[str, Any] = dict(obj.networks)  # what the steps call
        # In phase order, the same on every process (a set's order follows PYTHONHASHSEED, which
        # differs between torchrun's processes, and DDP wraps must match across ranks).
        for name in dict.fromkeys(phase.network for phase in obj.phases):
            if cfg.compile:
                self.nets[name] = torch.compile(self.nets[name])
            if ddp.enabled:  # averages the gradients over the processes during backward
                self.nets[name] = DistributedDataParallel(
                    self.nets[name], device_ids=[device.index] if device.type == "cuda" else None
                )
            obj.networks[name].train()

    def restore(self, ckpt: Checkpoint) -> None:
        """Everything ``save`` wrote, back into the objective and the loop."""
        obj, source = self.objective, ckpt.path or ""
        for name, module in obj.networks.items():
            weights = ckpt.networks.get(name)
            if weights is None and name in obj.ema:  # a copy the run did not keep: its source
                weights = ckpt.networks.get(obj.ema[name])
            if weights is None:
                raise ValueError(f"checkpoint {source} holds no weights for the {name!r} network")
            load_weights_into(module, weights, source)
        for name, optimizer in obj.optimizers.items():
            if name in ckpt.optimizers:
                optimizer.load_state_dict(ckpt.optimizers[name])
        self.data_gen.set_state(ckpt.rng["data_epoch_start"])
        for name, generator in obj.generators.items():
            generator.set_state(ckpt.rng[name].to(generator.get_state().device))
        # Dropout's generator, each process its own. Older checkpoints lack it, and a process
        # that the run did not have before lacks its own: they resume with other masks.
        cpu_key, cuda_key = (
            rank_key("torch_cpu", self.ddp.rank),
            rank_key("torch_cuda", self.ddp.rank),
        )
        if cpu_key in ckpt.rng:
            torch.set_rng_state(ckpt.rng[cpu_key])
        elif self.ddp.enabled:
            torch.manual_seed(process_seed(self.cfg.seed, self.ddp.rank, ckpt.state["step"]))
        if cuda_key in ckpt.rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt.rng[cuda_key], self.device)
        if "scaler" in ckpt.state and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt.state["scaler"])
        state = ckpt.state
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch, self.elapsed = state["batch_in_epoch"], state["elapsed_s"]
        self.skipped = state.get("skipped_steps", 0)
        obj.load_state_dict(state.get("objective", {}))

    def save(self, name: str, data_state: torch.Tensor) -> Path:
        """A checkpoint with everything that resuming needs; rank 0 writes it."""
        obj, device = self.objective, self.device
        path = self.out / "checkpoints" / f"{name}.safetensors"
        # ddp: dropout's generator state of every process (names: rank_key).
        dropout_rng = {"torch_cpu": distributed.gather_all(torch.get_rng_state(), device)}
        if device.type == "cuda":
            dropout_rng["torch_cuda"] = distributed.gather_all(
                torch.cuda.get_rng_state(device), device
            )
        self.last_ckpt, self.saved_step = path, self.step
        if not self.ddp.is_main:
            return path
        rng = {"data_epoch_start": data_state}
        rng.update({name: gen.get_state().cpu() for name, gen in obj.generators.items()})
        for key, states in dropout_rng.items():
            rng.update({rank_key(key, r): state for r, state in enumerate(states)})
        state: dict[str, Any] = {"step": self.step, "epoch": self.epoch,
                                 "batch_in_epoch": self.batch_in_epoch,
                                 "elapsed_s": self.elapsed, "skipped_steps": self.skipped}  # fmt: skip
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        if obj.state_dict():
            state["objective"] = obj.state_dict()
        write_checkpoint(
            path, self.config, {k: m.state_dict() for k, m in obj.networks.items()},
            optimizers={k: o.state_dict() for k, o in obj.optimizers.items()}, rng=rng,
            state=state,
        )  # fmt: skip
        prune_checkpoints(self.out, self.cfg.keep_checkpoints)
        return path

    def train_step(self, idx: torch.Tensor) -> tuple[dict[str, float], str | None]:
        """lr -> loss -> backward -> clip -> non-finite check -> optimiser step, for each phase;
        then EMA. Returns what to log (loss, lr, grad_norm), and what went wrong, if anything."""
        obj, cfg, scaler, b = self.objective, self.cfg, self.scaler, len(idx)
        batch = Batch(idx, distributed.rank_slice(b, self.ddp), self.step)  # ddp: my share
        stats: dict[str, float] = {}
        problem, stepped, several = None, False, len(obj.phases) > 1
        clock, length = obj.lr_clock(self.step, self.total_steps)
        for phase in obj.phases:
            lr = lr_at(clock, cfg, length, phase.lr)
            optimizer = obj.optimizers[phase.optimizer]
            for group in optimizer.param_groups:
                group["lr"] = lr
            amp = self.amp_dtype
            with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
                per_sample = obj.loss(phase.name, batch, self.nets)  # (b / world,) float32
            if per_sample is None:  # no update in this phase on this step
                continue
            # This slice's sum over the global batch size, times the number of processes: DDP's
            # gradient average then gives the global batch mean, even for a last batch that
            # does not split evenly.
            loss = per_sample.sum() * (self.ddp.world_size / b)
            loss_value = distributed.all_reduce_sum(per_sample.detach().sum()).item() / b

            optimizer.zero_grad(set_to_none=True)
            grad_norm = math.nan
            if math.isfinite(loss_value):
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    params = obj.networks[phase.network].parameters()
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip).item()
            # A NaN or inf would poison the weights: stop, or skip the step. (Under fp16 the
            # GradScaler skips inf-gradient steps by itself and lowers its scale.) Every process
            # sees the same all-reduced loss and gradients, so all decide alike.
            what = f"{phase.name} " if several else ""
            if not math.isfinite(loss_value):
                problem = problem or f"{what}loss became {loss_value}"
            elif cfg.grad_clip > 0 and not scaler.is_enabled() and not math.isfinite(grad_norm):
                problem = problem or f"{what}gradient norm became {grad_norm}"
            else:
                scaler.step(optimizer)
                stepped = True
            suffix = f"_{phase.name}" if several else ""
            stats.update({f"loss{suffix}": loss_value, f"lr{suffix}": lr,
                          f"grad_norm{suffix}": grad_norm})  # fmt: skip
        if stepped:
            scaler.update()
        if problem is None:
            for ema_name, source in obj.ema.items():
                blend_into(obj.networks[ema_name], obj.networks[source],
                           obj.ema_decay(self.step, cfg.ema_decay))  # fmt: skip
        if several:  # the total of the phases that ran, for the progress bar and the loss curve
            stats["loss"] = sum(stats.get(f"loss_{phase.name}", 0.0) for phase in obj.phases)
        return stats, problem

    def guard(self, problem: str | None) -> None:
        """The non-finite guard: stop the run (or, with --skip-nonfinite, count a skipped step)."""
        if problem is None:
            self.skipped_in_a_row = 0
            return
        self.skipped, self.skipped_in_a_row = self.skipped + 1, self.skipped_in_a_row + 1
        where = (
            f"the last good checkpoint is {self.last_ckpt}"
            if self.last_ckpt
            else "no checkpoint was written yet"
        )
        if not self.cfg.skip_nonfinite:
            distributed.raise_on_every_process(
                TrainingError(
                    f"{problem} at step {self.step + 1}; {where}. Lower --lr or check the "
                    "data (--skip-nonfinite skips such steps)"
                )
            )
        if self.skipped_in_a_row > MAX_SKIPS_IN_A_ROW:
            distributed.raise_on_every_process(
                TrainingError(
                    f"{problem} at step {self.step + 1}, {self.skipped_in_a_row} steps in a row: "
                    f"the weights have diverged and skipping cannot help; {where}. Lower --lr"
                )
            )
        if self.ddp.is_main:
            tqdm.write(
                f"{self.prog}: warning: {problem} at step {self.step + 1}; "
                "skipped the step (--skip-nonfinite)",
                file=sys.stderr,
            )

    def stop_reason(self) -> str | None:
        """Why the run stops after this step: a signal, a step limit or the time limit."""
        # Clocks and signals differ between processes: they all stop, or none.
        cfg = self.cfg
        signalled, out_of_time = distributed.any_of(
            [self.stop.received is not None,
             cfg.max_minutes is not None and self.elapsed >= cfg.max_minutes * 60],
            self.device,
        )  # fmt: skip
        if signalled:
            return "signal"
        # The time limit as all processes decided it (any one out of time stops them all).
        return out_of_budget(cfg, self.step, math.inf if out_of_time else 0.0)

    def log(self, record: dict[str, Any]) -> None:
        if self.ddp.is_main:
            log_metrics(self.metrics, record)

    def preview(self, name: str) -> Path | None:
        """The objective's preview, and a warning when its images are all one flat colour."""
        path = self.objective.preview(self.out / "samples" / f"{name}.png")
        if path is not None and (spread := viz.flat_spread(path)) <= FLAT_PREVIEW_LEVELS:
            tqdm.write(
                f"{self.prog}: warning: the preview {path.relative_to(self.out)} is blank: its "
                f"pixels span {spread} of 255 grey levels. Early in a run this passes; if it "
                "stays, train longer, lower --lr, or check that the data is not blank",
                file=sys.stderr,
            )
        return path

    def run(self, *, progress: bool) -> TrainResult:
        """The loop: epochs of batches, each step logged; previews and checkpoints at epoch ends."""
        cfg, obj, ddp = self.cfg, self.objective, self.ddp
        self.announce()
        first_loss, last_loss = math.nan, math.nan
        stop_reason: str | None = None  # why the run ends before its last epoch
        epoch_start_state = self.data_gen.get_state()
        while self.epoch < cfg.epochs and stop_reason is None:
            epoch_start_state = self.data_gen.get_state()
            perm = torch.randperm(obj.num_items, generator=self.data_gen).to(self.device)
            batches = perm.split(cfg.batch_size)
            bar = tqdm(
                total=len(batches), initial=self.batch_in_epoch,
                desc=epoch_label(self.epoch, self.elapsed, cfg),
                disable=None if progress and ddp.is_main else True,  # bars on a terminal only
                leave=True, dynamic_ncols=True,
            )  # fmt: skip
            window: list[float] = []  # recent losses, for the progress bar
            pending: list[dict[str, float]] = []  # what was logged since the last metrics line
            for idx in batches[self.batch_in_epoch :]:
                t0 = time.perf_counter()
                try:
                    stats, problem = self.train_step(idx)
                except RuntimeError as err:  # torch.OutOfMemoryError is one too
                    if not is_out_of_memory(err):
                        raise
                    raise TrainingError(
                        f"out of memory at step {self.step + 1} on {self.device} with "
                        f"--batch-size {cfg.batch_size}: lower --batch-size (halving it halves "
                        "the activations), or try --precision bf16; --resume continues from the "
                        "last checkpoint"
                    ) from err
                self.guard(problem)
                self.step += 1
                self.batch_in_epoch += 1
                self.elapsed += time.perf_counter() - t0
                if problem is None:
                    first_loss = stats["loss"] if math.isnan(first_loss) else first_loss
                    last_loss = stats["loss"]
                    window.append(stats["loss"])
                    pending.append(stats)
                    lr = next((v for k, v in stats.items() if k.startswith("lr")), math.nan)
                    bar.set_postfix(
                        loss=f"{np.mean(window[-50:]):.4f}", lr=f"{lr:.1e}", refresh=False
                    )
                bar.update()
                stop_reason = self.stop_reason()
                end_of_epoch = self.batch_in_epoch == len(batches)
                if self.step % cfg.log_every == 0 or stop_reason or end_of_epoch:
                    self.log_step(pending, stats)
                    pending = []
                if stop_reason:
                    break
            bar.close()
            if self.batch_in_epoch < len(batches):  # stopped inside the epoch
                break
            self.epoch += 1
            self.batch_in_epoch = 0
            self.log({"epoch_end": self.epoch, "step": self.step,
                      "elapsed_s": round(self.elapsed, 2),
                      "epoch_loss": float(np.mean(window)) if window else None})  # fmt: skip
            wants_preview = cfg.sample_every and self.epoch % cfg.sample_every == 0
            if wants_preview and self.epoch < cfg.epochs and stop_reason is None and ddp.is_main:
                self.preview(f"epoch_{self.epoch:03d}")
            if cfg.checkpoint_every and self.epoch % cfg.checkpoint_every == 0:
                self.save(f"epoch_{self.epoch:03d}", self.data_gen.get_state())
        data_state = epoch_start_state if self.batch_in_epoch else self.data_gen.get_state()
        return self.finish(stop_reason, data_state, first_loss, last_loss)

    def announce(self) -> None:
        """The run's first line: what is trained, where, how, and until when."""
        cfg, ddp = self.cfg, self.ddp
        if not ddp.is_main:
            return
        print(
            f"{self.prog}: {self.objective.describe()}, device {self.device}"
            + (f" x {ddp.world_size} processes" if ddp.enabled else "")
            + f", {cfg.precision}, {self.steps_per_epoch} steps/epoch x {cfg.epochs} epochs"
            + (f", stopping after {cfg.max_minutes:g} min" if cfg.max_minutes else "")
            + (f", stopping after step {cfg.max_steps}" if cfg.max_steps else "")
            + (f", resuming at step {self.step}" if self.ckpt is not None else "")
        )

    def log_step(self, pending: list[dict[str, float]], last: dict[str, float]) -> None:
        """A metrics line: the mean losses since the last line (of the steps where each phase
        ran), the last lr and gradient norm."""
        keys = dict.fromkeys(key for s in [*pending, last] for key in s if key.startswith("loss"))
        losses: dict[str, float | None] = {}
        for key in keys:
            values = [s[key] for s in pending if key in s]
            losses[key] = float(np.mean(values)) if values else None
        rest = {key: value for key, value in last.items() if not key.startswith("loss")}
        self.log({
            "step": self.step, "epoch": self.epoch + self.batch_in_epoch / self.steps_per_epoch,
            **losses, **rest, "elapsed_s": round(self.elapsed, 2),
            **({"skipped_steps": self.skipped} if self.skipped else {}),
        })  # fmt: skip

    def finish(
        self, stop_reason: str | None, data_state: torch.Tensor, first_loss: float, last_loss: float
    ) -> TrainResult:
        """The end of training (by epochs, by a step or time limit, or by a signal): the last
        checkpoint, then on rank 0 the final weights, the last preview, the loss curve, the
        objective's last pictures and report.html."""
        obj = self.objective
        if self.saved_step != self.step:
            self.save(checkpoint_name(self.epoch, self.step, self.batch_in_epoch), data_state)
        if stop_reason == "signal":
            assert self.last_ckpt is not None
            distributed.raise_on_every_process(
                TrainingInterrupted(
                    self.out,
                    self.last_ckpt,
                    self.step,
                    self.stop.received or "a signal to another rank",
                    self.ddp.world_size,
                    self.prog,
                )
            )
        result = TrainResult(
            run_dir=self.out, steps=self.step, epochs_done=self.epoch, first_loss=first_loss,
            last_loss=last_loss, minutes=self.elapsed / 60, num_parameters=count_parameters(obj),
            model=obj.networks.get("model"), ema=obj.networks.get("ema"),
            networks=dict(obj.networks),
        )  # fmt: skip
        if self.ddp.is_main:
            final = {k: m.state_dict() for k, m in obj.networks.items()}
            write_checkpoint(self.out / "model_final.safetensors", self.config, final)
            last_preview = self.preview(checkpoint_name(self.epoch, self.step, self.batch_in_epoch))
            plot_loss_curve(self.out)
            obj.finish(result, last_preview)
            write_run_report(self.out, self.config, result, last_preview, obj.report())
        return result
