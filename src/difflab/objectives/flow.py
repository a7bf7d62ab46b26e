"""Flow matching (Lipman et al. 2023; rectified flow, Liu et al. 2023; SD3's recipe, Esser et al.
2024): the objective of ``difflab train --objective flow`` on the harness.

The network learns the velocity eps - x0 of the straight path x_t = (1 - t) x0 + t eps at t drawn
logit-normal (or uniform), ``flow.flow_loss``; everything else (the networks, EMA, label dropout
for classifier-free guidance, previews) is ``DiffusionObjective``'s. Its checkpoint says
``prediction = "flow"``, so every DDPM sampler, editing command and the web page read it through
``diffusion.predict`` (the flow point with the same SNR), and ``euler``/``heun`` walk its own ODE.
"""

from __future__ import annotations

from typing import Any

import torch

from difflab.config import FlowConfig, RunConfig
from difflab.data import ImageDataset
from difflab.flow import flow_loss, sample_t
from difflab.objectives.diffusion import DiffusionObjective
from difflab.training.objective import Context, Report, TrainResult


class FlowObjective(DiffusionObjective):
    """Conditional flow matching: ``DiffusionObjective`` with continuous t and a velocity target."""

    def __init__(self, config: RunConfig, dataset: ImageDataset, ctx: Context) -> None:
        super().__init__(config, dataset, ctx)
        self.flow = config.section(FlowConfig)

    def draw_t(self, b: int) -> torch.Tensor:
        """(b,) flow times in (0, 1): logit-normal (SD3, Sec. 3.1) or uniform."""
        t = sample_t(b, self.noise_gen, self.flow.time_sampling, self.flow.loc, self.flow.scale)
        return t.to(dtype=torch.float32)

    def batch_loss(
        self, model_fn: Any, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        return flow_loss(model_fn, x0, t, eps)  # (b,)

    def finish(self, result: TrainResult, final_preview: Any) -> None:
        """No DDPM forward-process picture: the flow path is a straight line (docs/flow.md)."""

    def report(self) -> Report:
        f = self.flow
        sampling = f.time_sampling + (
            f" (loc {f.loc:g}, scale {f.scale:g})" if f.time_sampling == "logit-normal" else ""
        )
        return Report(
            facts={
                "objective": "flow matching: the velocity eps - x0 of x_t = (1 - t) x0 + t eps",
                "training t": sampling,
                "DDPM grid for the DDPM samplers": f"{self.config.diffusion.schedule}, T = "
                f"{self.config.diffusion.timesteps}",
                "euler/heun grid shift": f"{f.shift:g}",
            },
            final_caption="Samples from the final model (EMA weights)",
        )
