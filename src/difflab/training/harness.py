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

Where a new trainer goes: a new small module in ``difflab.objectives`` with an ``Objective``
subclass (``training.objective``; diffusion's is ``objectives.diffusion.DiffusionObjective``),
registered in the kind table (``difflab.kinds``), which hands it to ``fit``. The NumPy backend
(``objectives.numpy_diffusion``) has no autograd and no torch optimisers, so it cannot take this
loop's step; it shares the run directory, the limits, the log, the checkpoint names and the
report helpers (``training.rundir``).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from difflab import distributed, viz
from difflab.checkpoint import Checkpoint, load_checkpoint, load_weights_into, write_checkpoint
from difflab.config import RunConfig, TrainConfig
from difflab.device import (
    AMP_DTYPES,
    auto_precision,
    check_precision,
    default_channels_last,
    pick_device,
)
from difflab.training.objective import (
    Batch,
    Context,
    Objective,
    TrainingError,
    TrainingInterrupted,
    TrainResult,
    count_parameters,
    ema_warmup,
)
from difflab.training.rundir import (
    check_can_continue,
    checkpoint_name,
    epoch_label,
    latest_checkpoint,
    log_metrics,
    out_of_budget,
    plot_loss_curve,
    prune_checkpoints,
    start_run_dir,
    truncate_metrics,
    write_run_report,
)

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


@torch.no_grad()
def blend_into(ema: torch.nn.Module, model: torch.nn.Module, d: float) -> None:
    """ema <- d * ema + (1 - d) * weights."""
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1.0 - d)


GIVEN = "given, not auto"  # the reason recorded for a precision given by name


def settle_precision(cfg: TrainConfig, device: torch.device) -> TrainConfig:
    """``cfg`` with the precision the run trains in, and why, as config.json records them.

    ``auto`` becomes what ``device.auto_precision`` picks for ``device``; a precision given by
    name is recorded as given, unless its giver said why (``precision_reason``). A resumed run
    goes on with the precision and reason its checkpoint recorded (``resume_config``): the
    commands pass ``auto`` on --resume only when it is given again, so a run is not resolved
    again, maybe to another precision, on another machine. Settling twice changes nothing.
    """
    if cfg.precision == "auto":
        precision, reason = auto_precision(device)
        return replace(cfg, precision=precision, precision_reason=reason)
    return cfg if cfg.precision_reason else replace(cfg, precision_reason=GIVEN)


def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """ema <- d * ema + (1 - d) * weights, with d = ema_warmup(decay, step) warming up."""
    blend_into(ema, model, ema_warmup(decay, step))


def is_out_of_memory(err: RuntimeError) -> bool:
    """A step that ran out of memory: CUDA's OutOfMemoryError, or the CPU allocator's failure."""
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err)


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
    on its slice of every batch (``difflab.distributed``) and rank 0 writes the files. Its
    precision is settled first (``settle_precision``: ``auto`` resolved), and recorded so.
    """
    config.train.validate()
    device = pick_device(config.train.device)
    config = replace(config, train=settle_precision(config.train, device))
    cfg, out = config.train, Path(out_dir)
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
            if weights is None and name in obj.carried:  # an older checkpoint: keep the built one
                continue
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
            + f", {cfg.precision} ({cfg.precision_reason})"
            + f", {self.steps_per_epoch} steps/epoch x {cfg.epochs} epochs"
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
