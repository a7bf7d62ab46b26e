"""Training: the one harness every trainer runs on, and the run directory it writes. It knows no
objective (``difflab.objectives`` holds them; ``difflab.kinds`` says which one a run is).

  objective.py  what a trainer declares: ``Objective``, ``Phase``, ``Batch``, ``Context``,
                ``Report``, ``TrainResult``, and the errors a run stops with
  harness.py    ``fit``: the loop (lr -> batch -> loss -> backward -> clip -> step -> EMA -> log ->
                preview / checkpoint), exact resume, signals, limits, mixed precision, torchrun
  rundir.py     the run directory: layout, metrics log, checkpoint names and pruning, the loss
                curve and report.html, limits, and ``resume_config`` for --resume
"""

from difflab.training.harness import blend_into, fit, lr_at, settle_precision, update_ema
from difflab.training.objective import (
    Batch,
    Context,
    Objective,
    Phase,
    Report,
    TrainingError,
    TrainingInterrupted,
    TrainResult,
    count_parameters,
    ema_warmup,
)
from difflab.training.rundir import (
    RESUME_FLAGS,
    latest_checkpoint,
    resume_config,
    run_checkpoints,
    start_run_dir,
)

__all__ = [
    "RESUME_FLAGS",
    "Batch",
    "Context",
    "Objective",
    "Phase",
    "Report",
    "TrainResult",
    "TrainingError",
    "TrainingInterrupted",
    "blend_into",
    "count_parameters",
    "ema_warmup",
    "fit",
    "latest_checkpoint",
    "lr_at",
    "resume_config",
    "run_checkpoints",
    "settle_precision",
    "start_run_dir",
    "update_ema",
]
