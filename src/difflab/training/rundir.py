"""A run directory and what it holds: laying it out, its metrics log, its checkpoints (names,
pruning, the newest one), the loss curve and report.html, the step and time limits, and the
configuration a resumed run goes on with.

A run directory holds everything one training run made::

    config.json  metrics.jsonl  samples/epoch_001.png ...  checkpoints/epoch_001.safetensors ...
    training_loss.png  model_final.safetensors  report.html   (and each objective's pictures)
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from difflab import viz
from difflab.checkpoint import Checkpoint
from difflab.config import RunConfig, TrainConfig, to_dict
from difflab.data import dataset_attribution
from difflab.device import check_precision, pick_device
from difflab.io import write_text_atomic
from difflab.training.objective import Report, TrainResult


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
    attribution = dataset_attribution(config.train.data, config.train.vendors)
    if attribution:  # the data's licence asks for it wherever its images or models are shown
        summary["data attribution"] = attribution
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
    if cfg.precision != stored.precision:  # given anew: the recorded reason is not its own
        cfg = replace(cfg, precision_reason="")
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
