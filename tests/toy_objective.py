"""A second, tiny objective for the harness: two networks trained in two phases, no diffusion.

It proves that ``difflab.harness`` is generic: this file has no code for resuming, signals,
limits or checkpoints, and gets them all from the harness. Phase ``regress`` fits a small MLP with
dropout (torch's global generator) to noisy targets, its inputs jittered from the objective's own
generator; phase ``critic`` fits a second network, with another optimiser (SGD with momentum), to
the MLP's per-sample error. The MLP has an EMA copy, and the objective keeps a counter of its own.
With ``critic_from``, the critic takes no update before that step (its loss is None).

Run as a script (``python tests/toy_objective.py OUT [--epochs N] [--max-steps N] [--resume]``) it
is a training command of its own, for the tests that send it signals.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import torch

from difflab.config import RunConfig, TrainConfig
from difflab.training import Batch, Context, Objective, Phase, TrainingInterrupted, fit

NUM_POINTS = 40  # batches of 16: 16 + 16 + 8 per epoch


class ToyObjective(Objective):
    def __init__(
        self, config: RunConfig, ctx: Context, nan_at_step: int | None = None, critic_from: int = 0
    ) -> None:
        data = torch.Generator().manual_seed(123)  # the data set: fixed, whatever the run's seed
        self.x = torch.randn(NUM_POINTS, 4, generator=data).to(ctx.device)  # (N, 4)
        weights = torch.randn(4, 2, generator=data)
        self.y = (self.x.cpu() @ weights + 0.1 * torch.randn(NUM_POINTS, 2, generator=data)).to(
            ctx.device
        )  # (N, 2)
        mlp = torch.nn.Sequential(
            torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 2)
        ).to(ctx.device)
        critic = torch.nn.Linear(4, 1).to(ctx.device)
        self.networks = {
            "mlp": mlp,
            "mlp_ema": copy.deepcopy(mlp).eval().requires_grad_(False),
            "critic": critic,
        }
        self.ema = {"mlp_ema": "mlp"}
        cfg = config.train
        self.optimizers = {
            "adam": torch.optim.Adam(mlp.parameters(), lr=cfg.lr),
            "sgd": torch.optim.SGD(critic.parameters(), lr=cfg.lr, momentum=0.9),
        }
        self.jitter = torch.Generator(device=ctx.device).manual_seed(cfg.seed + 7)
        self.generators = {"jitter": self.jitter}
        self.phases = (
            Phase("regress", network="mlp", optimizer="adam", lr=cfg.lr),
            Phase("critic", network="critic", optimizer="sgd", lr=cfg.lr / 2),
        )
        self.num_items = NUM_POINTS
        self.points_seen = 0  # the objective's own counter, checkpointed by the harness
        self.nan_at_step = nan_at_step  # the 1-based step whose critic loss is made NaN
        self.critic_from = critic_from  # the 0-based step of the critic's first update

    def loss(self, phase: str, batch: Batch, nets: dict[str, Any]) -> torch.Tensor | None:
        idx = batch.idx[batch.mine]
        x, y = self.x[idx], self.y[idx]  # (b, 4), (b, 2)
        if phase == "regress":
            self.points_seen += len(idx)
            jitter = 0.05 * torch.randn(x.shape, generator=self.jitter, device=x.device)
            return ((nets["mlp"](x + jitter) - y) ** 2).mean(dim=1)  # (b,)
        if batch.step < self.critic_from:
            return None
        with torch.no_grad():
            error = ((self.networks["mlp"](x) - y) ** 2).mean(dim=1)  # (b,)
        per_sample = (nets["critic"](x).squeeze(1) - error) ** 2
        if batch.step + 1 == self.nan_at_step:
            per_sample = per_sample * float("nan")
        return per_sample

    def state_dict(self) -> dict[str, Any]:
        return {"points_seen": self.points_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.points_seen = state["points_seen"]


def toy_config(**train: Any) -> RunConfig:
    settings = dict(data="toy", batch_size=16, epochs=3, lr=1e-2, warmup_steps=2,
                    lr_decay="cosine", device="cpu", seed=5, ema_decay=0.9,
                    log_every=1)  # fmt: skip
    return RunConfig(train=TrainConfig(**{**settings, **train}))


def train_toy(
    out: Path,
    config: RunConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    nan_at_step: int | None = None,
    critic_from: int = 0,
):
    def make(ctx: Context) -> ToyObjective:
        return ToyObjective(config, ctx, nan_at_step, critic_from)

    return fit(
        make, config, out, resume=resume, overwrite=overwrite, progress=False, prog="toy train"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = toy_config(epochs=args.epochs, max_steps=args.max_steps)
    try:
        train_toy(args.out, config, resume=args.resume)
    except TrainingInterrupted as stop:
        print(f"toy train: {stop}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
