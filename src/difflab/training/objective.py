"""What a trainer declares to the harness: an ``Objective`` (its networks, optimisers, random
streams and the loss of one batch), its ``Phase``s, its part of the report, and what a run returns.

A new trainer is a subclass of ``Objective`` in a module of ``difflab.objectives``, registered in
the kind table (``difflab.kinds``); it writes no code for resuming, signals or limits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


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
    carried: tuple[str, ...] = ()  # networks saved with the model but not trained (a latent
    # model's autoencoder); a checkpoint written before they were carried may lack them

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


def ema_warmup(decay: float, step: int) -> float:
    """The EMA's weight on its past in its update after ``step`` updates: min(decay, (1 + step) /
    (10 + step)), which lets it forget its first weights fast."""
    return min(decay, (1.0 + step) / (10.0 + step))
