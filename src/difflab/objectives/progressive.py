"""Progressive distillation (Salimans & Ho 2022, Algorithm 2): an objective on the shared harness.

A teacher that samples well with deterministic DDIM in 2N steps is distilled into a student that
does in N steps what the teacher does in two; then the student becomes the teacher and N halves
again, round after round, from ``start_steps`` down to ``steps``. One training example, with the
trailing grids of ``samplers.timestep_sequence`` (the 2N-step grid holds the N-step one at its
even places, so two teacher steps span exactly one student step):

    x0 from the data, k ~ U{0 .. N-1}, t = grid_N[k], t'' = grid_N[k+1] (the data after the last)
    z_t     = q_sample(x0, t, eps)
    z_t''   = two DDIM steps of the teacher, t -> grid_2N[2k+1] -> t''   (no x0 clipping: the ODE)
    x_tilde = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t)
    loss    = max(SNR_t, 1) ||x_tilde - x0_pred(z_t)||^2 / dim   (the "truncated SNR" weighting)

x_tilde is the x0 that makes one DDIM step of the student land where the teacher's two did (the
paper's Alg. 2 line 9, in its alpha/sigma notation; alpha = sqrt(alpha_bar), sigma = sqrt(1 -
alpha_bar)); at the last step t'' is the data (sigma = 0, alpha = 1) and x_tilde = z_t''.

Rounds are a fixed number of training steps each (``round_steps``), so a run's rounds follow from
its step count and resume is exact. At the start of each round the EMA of the last round's student
becomes the new teacher and the new student's starting point; the last round's student is written
as ``model_steps_N.safetensors`` (N its steps), sampled with ``difflab sample`` like any model
(DDIM in N steps, no x0 clipping: the kind table's plan for a ``progressive`` checkpoint).
A class-conditional teacher is distilled at one guidance scale W in the first round; later rounds'
teachers are students with W baked in. The kind table (``difflab.kinds``) runs this objective on the harness.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from difflab import distributed, viz
from difflab.checkpoint import Checkpoint, load_weights_into, write_checkpoint
from difflab.config import ProgressiveConfig, RunConfig, TrainConfig
from difflab.data import ImageDataset
from difflab.diffusion import diffusion_loss, predict, q_sample
from difflab.models.unet import UNet
from difflab.samplers import timestep_sequence
from difflab.sampling.draw import generate, model_denoiser
from difflab.schedules import Schedule, make_schedule
from difflab.training.objective import Batch, Context, Objective, Phase, Report, TrainResult


def round_plan(start_steps: int, steps: int, num_timesteps: int) -> list[int]:
    """The student's steps in each round: start_steps / 2, start_steps / 4, ..., steps."""
    if steps < 1 or start_steps > num_timesteps or start_steps <= steps:
        raise ValueError(
            f"--start-steps {start_steps} must lie above --steps {steps} and within the "
            f"teacher's {num_timesteps} timesteps"
        )
    ratio = start_steps // steps
    if start_steps % steps or ratio & (ratio - 1):
        raise ValueError(
            f"--start-steps {start_steps} must be --steps {steps} times a power of 2 (each round "
            "halves the steps)"
        )
    plan = []
    n = start_steps
    while n > steps:
        n //= 2
        plan.append(n)
    return plan


def student_config(
    teacher: Checkpoint, train: TrainConfig, progressive: ProgressiveConfig, num_items: int
) -> RunConfig:
    """The student's configuration: the teacher's network, schedule and classes, a new training
    as long as its rounds (``max_steps``, unless a smaller one stops it early to be resumed; and
    the epochs of ``num_items`` images that take)."""
    progressive.validate()
    if progressive.guidance != 1.0 and teacher.config.model.num_classes == 0:
        raise ValueError(
            f"--guidance {progressive.guidance:g} needs a class-conditional teacher; "
            f"{teacher.path} is unconditional"
        )
    plan = round_plan(
        progressive.start_steps, progressive.steps, teacher.config.diffusion.timesteps
    )
    if progressive.dmd_steps and teacher.config.model.num_classes:
        raise ValueError(
            f"--dmd-steps needs an unconditional teacher; {teacher.path} is class-conditional "
            "(its distribution matching is not built)"
        )
    total = len(plan) * progressive.round_steps + progressive.stage_steps()  # a smaller
    # --max-steps stops early (to resume)
    epochs = math.ceil(total / math.ceil(num_items / train.batch_size))
    train = replace(train, max_steps=min(train.max_steps or total, total), epochs=epochs)
    return replace(teacher.config, train=train, consistency=None, progressive=progressive,
                   backend="torch")  # fmt: skip


def step_grid(schedule: Schedule, steps: int, device: torch.device | str) -> torch.Tensor:
    """The trailing N-step grid with the data marker T after its last timestep: (N + 1,)."""
    seq = [*timestep_sequence(schedule.num_timesteps, steps), schedule.num_timesteps]
    return torch.tensor(seq, dtype=torch.long, device=device)


def alpha_sigma(
    schedule: Schedule, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha and sigma at each code time, and last at the data marker T (alpha 1, sigma 0)."""
    alpha = torch.tensor([*schedule.sqrt_alpha_bar, 1.0], dtype=torch.float32, device=device)
    sigma = torch.tensor([*schedule.sqrt_one_minus_alpha_bar, 0.0], dtype=torch.float32,
                         device=device)  # fmt: skip
    return alpha, sigma


def x0_target(z_t: torch.Tensor, z_end: torch.Tensor, t: torch.Tensor, t_end: torch.Tensor,
              alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """x_tilde: the x0 that makes one DDIM step from z_t at t land on z_end at t_end (Alg. 2,
    line 9); at the data marker (sigma 0, alpha 1) it is z_end itself."""
    a_t, s_t = alpha[t].view(-1, 1, 1, 1), sigma[t].view(-1, 1, 1, 1)
    a_e, s_e = alpha[t_end].view(-1, 1, 1, 1), sigma[t_end].view(-1, 1, 1, 1)
    ratio = s_e / s_t
    return (z_end - ratio * z_t) / (a_e - ratio * a_t)


def truncated_snr_loss(x0_pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor,
                       alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """max(SNR_t, 1) ||target - x0_pred||^2 / dim per sample: (B,)."""
    weight = torch.clamp(alpha[t] ** 2 / sigma[t] ** 2, min=1.0)
    return weight * (x0_pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def ode_step(solver: str, denoiser: Any, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
             alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """One deterministic step of the probability-flow ODE per sample, t -> t_next, where
    ``alpha`` and ``sigma`` hold every code time's and, last, the data marker T's (1 and 0).

    ``ddim``: x' = alpha' x0 + sigma' (x - alpha x0) / sigma (Song et al. 2021, Eq. 12 with
    eta = 0), first order. ``dpmpp-2s``: DPM-Solver++(2S) (Lu et al. 2022, Alg. 1), second order:
    a DDIM step to the code time u nearest the log-SNR midpoint, the denoiser there, and the DDIM
    step t -> t' with x0 replaced by D = (1 - 1/(2r)) x0_t + 1/(2r) x0_u, r = (lambda_u -
    lambda_t) / (lambda_t' - lambda_t). A step into the data stays DDIM (lambda is infinite there),
    as is any step of one code time (no time between).
    """
    eps_1, x0_1 = denoiser(x, t)
    a, s = alpha[t].view(-1, 1, 1, 1), sigma[t].view(-1, 1, 1, 1)
    a_n, s_n = alpha[t_next].view(-1, 1, 1, 1), sigma[t_next].view(-1, 1, 1, 1)
    ddim = a_n * x0_1 + s_n * eps_1
    if solver == "ddim":
        return ddim
    lam = torch.log(alpha[:-1] / sigma[:-1])  # log-SNR / 2 of each code time, decreasing in t
    second = (t_next < len(lam)) & (t - t_next >= 2)
    t_n = torch.where(second, t_next, t - 1)  # a code time (the others' result is discarded)
    u = (lam[None, :] - 0.5 * (lam[t] + lam[t_n])[:, None]).abs().argmin(dim=1)
    u = torch.minimum(torch.maximum(u, t_n + 1), t - 1)  # strictly between t and t'
    r = ((lam[u] - lam[t]) / (lam[t_n] - lam[t])).view(-1, 1, 1, 1)
    _, x0_u = denoiser(alpha[u].view(-1, 1, 1, 1) * x0_1 + sigma[u].view(-1, 1, 1, 1) * eps_1, u)
    d = (1 - 0.5 / r) * x0_1 + (0.5 / r) * x0_u
    two_s = a_n * d + s_n * (x - a * d) / s
    return torch.where(second.view(-1, 1, 1, 1), two_s, ddim)


def ddim_chain(model: Any, x: torch.Tensor, grid: torch.Tensor, alpha: torch.Tensor,
               sigma: torch.Tensor, schedule: Schedule, prediction: str) -> torch.Tensor:  # fmt: skip
    """A student's images: its DDIM steps from the noise ``x`` down ``grid`` (``step_grid``: N
    timesteps, then the data marker, where alpha is 1 and sigma 0), with gradients unless
    disabled. ``model`` is called as ``model(x_t, t, None)``."""
    for i in range(len(grid) - 1):
        t = grid[i].expand(len(x))
        eps, x0 = predict(lambda x, t: model(x, t, None), x, t, schedule, prediction)
        x = alpha[grid[i + 1]] * x0 + sigma[grid[i + 1]] * eps
    return x


# The fake score's learning rate in the distribution-matching stage, the one measured
# (benchmarks/few_step_ideas.py dmd, docs/few_step.md); the student keeps the run's --lr.
FAKE_LR = 1e-4


def dmd_direction(
    x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, real: Any, fake: Any,
    schedule: Schedule, prediction: str,
) -> torch.Tensor:  # fmt: skip
    """Distribution matching distillation's gradient on generated images x (Yin et al. 2024, Eq.
    7-8): noise them to t, and take the fake model's x0 prediction minus the real one's, that is
    (s_fake - s_real) sigma_t^2 / alpha_t, divided per image by the mean |x - x0_real| so that its
    scale does not depend on t. It is the loss's gradient: descent moves x along s_real - s_fake.
    ``real`` and ``fake`` are called as ``net(x_t, t, None)``."""
    with torch.no_grad():
        x_t = q_sample(x, t, noise, schedule)
        x0_real = predict(lambda x, t: real(x, t, None), x_t, t, schedule, prediction)[1]
        x0_fake = predict(lambda x, t: fake(x, t, None), x_t, t, schedule, prediction)[1]
        scale = (x - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True).clamp(min=1e-8)
        return (x0_fake - x0_real) / scale


class ProgressiveDistillation(Objective):
    """Networks ``model`` (the student), ``ema`` (for sampling) and ``teacher`` (frozen within a
    round, replaced at each round's start, so it is checkpointed); generator ``noise``. With
    ``dmd_steps``, also ``real`` (the first teacher, frozen) and ``fake`` (DMD's fake score, its
    own phase and optimiser) for the distribution-matching stage after the last round."""

    def __init__(
        self, config: RunConfig, teacher: Checkpoint, dataset: ImageDataset, ctx: Context,
        out_dir: Path,
    ) -> None:  # fmt: skip
        cfg, pc = config.train, config.section(ProgressiveConfig)
        self.config, self.dataset, self.memory_format = config, dataset, ctx.memory_format
        self.out_dir = out_dir  # where each round's student is written
        net = UNet(teacher.config.model)
        load_weights_into(net, teacher.sampling_weights, teacher.path or "")
        net.to(ctx.device, memory_format=ctx.memory_format)
        self.networks = {
            "model": copy.deepcopy(net).train().requires_grad_(True),
            "ema": copy.deepcopy(net).eval().requires_grad_(False),
            "teacher": net.eval().requires_grad_(False),
        }
        self.ema = {"ema": "model"}
        adam = torch.optim.AdamW(
            self.networks["model"].parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.optimizers = {"optim": adam}
        self.noise_gen = torch.Generator(device=ctx.device).manual_seed(cfg.seed + 1)
        self.generators = {"noise": self.noise_gen}
        self.phases = (Phase("distill", network="model", optimizer="optim", lr=cfg.lr),)
        self.schedule = make_schedule(config.diffusion.schedule, config.diffusion.timesteps)
        self.plan = round_plan(pc.start_steps, pc.steps, self.schedule.num_timesteps)
        self.grids = {n: step_grid(self.schedule, n, ctx.device)
                      for n in [pc.start_steps, *self.plan]}  # fmt: skip
        for n in self.plan:  # two teacher steps span one student step
            assert torch.equal(self.grids[2 * n][::2], self.grids[n]), n
        self.alpha, self.sigma = alpha_sigma(self.schedule, ctx.device)
        self.images = torch.from_numpy(dataset.images).to(ctx.device)  # (N, C, H, W) in [-1, 1]
        self.labels = torch.from_numpy(dataset.labels).to(ctx.device)  # (N,)
        self.num_items = len(self.images)
        self.round = 0  # the round the networks are in (the teacher is replaced at each start)
        self.stage_start = len(self.plan) * pc.round_steps  # where the DMD stage would start
        self.fakes: torch.Tensor | None = None  # the student's images this step, for ``fake``
        if pc.dmd_steps:
            fake = copy.deepcopy(net).train().requires_grad_(True)  # starts as the real score
            self.networks.update(real=copy.deepcopy(net), fake=fake)
            self.optimizers["fake_optim"] = torch.optim.AdamW(fake.parameters(), lr=FAKE_LR,
                                                        weight_decay=0.0)  # fmt: skip
            self.phases += (Phase("fake", network="fake", optimizer="fake_optim", lr=FAKE_LR),)

    def round_at(self, step: int) -> int:
        """The round of ``step``; len(plan), one past the last, for the DMD stage."""
        pc = self.config.section(ProgressiveConfig)
        if pc.dmd_steps and step >= self.stage_start:
            return len(self.plan)
        return min(step // pc.round_steps, len(self.plan) - 1)

    def in_stage(self) -> bool:
        return self.round == len(self.plan)

    def ema_step(self, step: int) -> int:
        """The step within this round: each round's EMA warms up anew from the round's start.
        Counted over the run, a decay of 0.999 would leave 0.999^500 = 61% of the previous
        round's weights in the EMA of a 500-step round: a student mostly still its teacher."""
        return step - self.round * self.config.section(ProgressiveConfig).round_steps

    def ema_decay(self, step: int, decay: float) -> float:
        """With ``dmd_average`` N, the stage's last N steps replace the EMA by the plain mean of
        the student's weights since the first of them: d = (n - 1) / n at the n-th (0 at the
        first: a copy). Averaged this way, five seeds of the stage spread less (docs/few_step.md)."""
        pc = self.config.section(ProgressiveConfig)
        first = self.stage_start + pc.stage_steps() - pc.dmd_average  # the first averaged step
        if pc.dmd_average and step >= first:  # validated: dmd_average > 0 needs dmd_steps >= it
            n = step - first + 1
            return (n - 1) / n
        return super().ema_decay(step, decay)

    def lr_clock(self, step: int, total_steps: int) -> tuple[int, int]:
        """With ``lr_decay`` cosine each round has its own schedule: warm-up, then cosine decay to
        10% of the peak at the round's end (the next student starts again at the peak). With
        constant, the run's clock (one warm-up at its start), as runs from before had."""
        if self.config.train.lr_decay == "constant":
            return step, total_steps
        pc = self.config.section(ProgressiveConfig)
        if self.round_at(step) == len(self.plan):  # the DMD stage: a clock of its own too
            return step - self.stage_start, pc.stage_steps()
        return step - self.round_at(step) * pc.round_steps, pc.round_steps

    def student_steps(self) -> int:
        return self.plan[min(self.round, len(self.plan) - 1)]

    @torch.no_grad()
    def next_round(self) -> None:
        """The EMA of this round's student becomes the next student's start, and the teacher;
        into the DMD stage the teacher stays: the stage goes on with the last round's loss."""
        if distributed.env_rank() == 0:
            self.save_student(self.round)
        ema = self.networks["ema"].state_dict()
        if self.round + 1 < len(self.plan):
            self.networks["teacher"].load_state_dict(ema)
        self.networks["model"].load_state_dict(ema)
        self.round += 1

    def save_student(self, round_index: int) -> Path:
        """``model_steps_N.safetensors`` for a round's student, ``model_steps_N_dmd`` for the
        DMD stage's."""
        n = self.plan[min(round_index, len(self.plan) - 1)]
        name = f"model_steps_{n}" + ("_dmd" if round_index == len(self.plan) else "")
        config = replace(self.config, progressive=replace(self.config.progressive, steps=n))
        weights = {name: self.networks[name].state_dict() for name in ("model", "ema")}
        return write_checkpoint(self.out_dir / f"{name}.safetensors", config, weights)

    def _teacher_step(self, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, y: Any,
                      guidance: float) -> torch.Tensor:  # fmt: skip
        """One step of the teacher per sample, t -> t_next (T: the data): the first round's with
        ``teacher_solver``, later rounds' DDIM (their teachers are students trained for DDIM)."""
        denoiser = model_denoiser(self.networks["teacher"], self.config, self.schedule, y,
                                  guidance, clip_x0=False)  # fmt: skip
        pc = self.config.section(ProgressiveConfig)
        solver = pc.teacher_solver if self.round == 0 else "ddim"
        return ode_step(solver, denoiser, x, t, t_next, self.alpha, self.sigma)

    def loss(self, phase: str, batch: Batch, nets: dict[str, Any]) -> torch.Tensor | None:
        while self.round < self.round_at(batch.step):  # a round starts (or resume skipped some)
            self.next_round()
        if phase == "fake":
            return self.fake_loss(batch, nets)
        pc, mc = self.config.section(ProgressiveConfig), self.config.model
        if self.in_stage() and batch.step < self.stage_start + pc.dmd_warmup:
            return None  # the warm-up: only the fake score learns
        if self.in_stage() and batch.step == self.stage_start + pc.dmd_warmup:
            # DMD's first step: fresh Adam moments. The rounds' second moments follow their
            # small gradients; kept, they would scale up DMD's first hundreds of steps ~2-3x.
            self.optimizers["optim"].state.clear()
        n = self.student_steps()
        student_grid, teacher_grid = self.grids[n], self.grids[2 * n]
        gen, device = self.noise_gen, self.images.device
        b = len(batch.idx)  # draws for the global batch, then this process's share (ddp)
        k = torch.randint(0, n, (b,), generator=gen, device=device)
        eps = torch.randn((b, *self.images.shape[1:]), generator=gen, device=device)
        mine = batch.mine
        x0 = self.images[batch.idx[mine]].contiguous(memory_format=self.memory_format)
        eps, k = eps[mine].contiguous(memory_format=self.memory_format), k[mine]
        y = self.labels[batch.idx[mine]] if mc.num_classes > 0 else None
        t, t_mid, t_end = student_grid[k], teacher_grid[2 * k + 1], student_grid[k + 1]
        guidance = pc.guidance if self.round == 0 else 1.0  # later teachers have it baked in
        z_t = q_sample(x0, t, eps, self.schedule)
        with torch.no_grad():
            z_mid = self._teacher_step(z_t, t, t_mid, y, guidance)
            z_end = self._teacher_step(z_mid, t_mid, t_end, y, guidance)
            x_tilde = x0_target(z_t, z_end, t, t_end, self.alpha, self.sigma)
        _, x0_pred = predict(lambda x, t: nets["model"](x, t, y), z_t, t, self.schedule,
                             self.config.diffusion.prediction)  # fmt: skip
        loss = truncated_snr_loss(x0_pred, x_tilde, t, self.alpha, self.sigma)
        if not self.in_stage():
            return loss
        return loss + pc.dmd_weight * self.dmd_loss(batch, nets, len(loss))

    def half(self, batch: Batch) -> tuple[int, slice]:
        """The stage draws the student's images for half the global batch (their chain of N
        evaluations with gradients is the step's cost); this process's share of them."""
        b = len(batch.idx)
        return b // 2, slice(batch.mine.start // 2, batch.mine.stop // 2)

    def chain(self, batch: Batch, nets: dict[str, Any]) -> torch.Tensor:
        """The student's images: its DDIM chain from fresh noise (gradients unless disabled)."""
        count, mine = self.half(batch)
        x = torch.randn((count, *self.images.shape[1:]), generator=self.noise_gen,
                        device=self.images.device)[mine]  # fmt: skip
        x = x.contiguous(memory_format=self.memory_format)
        return ddim_chain(nets["model"], x, self.grids[self.student_steps()], self.alpha,
                          self.sigma, self.schedule, self.config.diffusion.prediction)  # fmt: skip

    def stage_levels(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise levels t ~ U{0.02 .. 0.98} (T - 1) (DMD's range) and noise, for this share."""
        count, mine = self.half(batch)
        last, device = self.schedule.num_timesteps - 1, self.images.device
        t = torch.randint(int(0.02 * last), int(0.98 * last) + 1, (count,), generator=self.noise_gen,
                          device=device)  # fmt: skip
        noise = torch.randn((count, *self.images.shape[1:]), generator=self.noise_gen,
                            device=device)  # fmt: skip
        return t[mine], noise[mine].contiguous(memory_format=self.memory_format)

    def dmd_loss(self, batch: Batch, nets: dict[str, Any], size: int) -> torch.Tensor:
        """DMD's loss on the student's images, 0.5 ||x - sg(x - direction)||^2 averaged over
        their half of the batch, spread over the ``size`` per-sample entries the harness sums."""
        x = self.chain(batch, nets)
        self.fakes = x.detach()  # what the fake score learns from next, in its phase
        real, fake = self.networks["real"], self.networks["fake"]  # no gradient: not wrapped
        direction = dmd_direction(x, *self.stage_levels(batch), real, fake, self.schedule,
                                  self.config.diffusion.prediction)  # fmt: skip
        per_image = 0.5 * (x - (x - direction).detach()).pow(2).flatten(1).mean(dim=1)
        count, _ = self.half(batch)
        return (per_image.sum() * len(batch.idx) / count / size).expand(size)

    def fake_loss(self, batch: Batch, nets: dict[str, Any]) -> torch.Tensor | None:
        """The fake score learns the student's images with the teacher's own diffusion loss; no
        update before the stage."""
        if not self.in_stage():
            return None
        if self.fakes is None:  # the warm-up: the student's images as they are
            with torch.no_grad():
                self.fakes = self.chain(batch, nets)
        x, self.fakes = self.fakes, None
        t, noise = self.stage_levels(batch)
        per_image = diffusion_loss(lambda z, s: nets["fake"](z, s, None), x, t, noise,
                                   self.schedule, self.config.diffusion.prediction,
                                   self.config.diffusion.min_snr_gamma)  # fmt: skip
        count, _ = self.half(batch)
        return per_image * (len(batch.idx) / count)  # the harness divides the sum by the batch

    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round = state["round"]

    def describe(self) -> str:
        pc = self.config.section(ProgressiveConfig)
        params = sum(p.numel() for p in self.networks["model"].parameters())
        return (
            f"progressive distillation of {pc.teacher} (a U-Net with {params:,} parameters) on "
            f"{self.dataset.name} ({self.num_items} images): DDIM {pc.start_steps} -> "
            f"{' -> '.join(map(str, self.plan))} steps, {pc.round_steps} steps per round, first "
            f"teacher step {pc.teacher_solver}"
            + (f", guidance {pc.guidance:g}" if self.config.model.num_classes else "")
            + (
                f"; then distribution matching, {pc.dmd_warmup} + {pc.dmd_steps} steps at weight "
                f"{pc.dmd_weight:g}"
                + (f", the mean of the last {pc.dmd_average} sampled" if pc.dmd_average else "")
                if pc.dmd_steps
                else ""
            )
        )

    def preview(self, path: Path) -> Path:
        cfg, k = self.config.train, self.config.model.num_classes
        labels = torch.arange(cfg.num_preview) % k if k else None
        # the student's own plan (sampling.plan.plan_progressive): DDIM in its steps, unclipped
        x = generate(self.networks["ema"], self.config, self.schedule, num_images=cfg.num_preview,
                     seed=cfg.seed, labels=labels, sampler="ddim", steps=self.student_steps(),
                     clip_x0=False)  # fmt: skip
        return viz.save_grid(x, path)

    def finish(self, result: TrainResult, final_preview: Path | None) -> None:
        self.save_student(self.round)

    def report(self) -> Report:
        pc = self.config.section(ProgressiveConfig)
        return Report(
            facts={
                "teacher": pc.teacher,
                "rounds (student steps)": ", ".join(map(str, self.plan)),
                "steps per round": pc.round_steps,
                "guidance": pc.guidance,
                **(
                    {
                        "distribution matching (warm-up + steps, weight)": f"{pc.dmd_warmup} + {pc.dmd_steps}, {pc.dmd_weight:g}",
                        "the DMD student sampled": (
                            f"the mean of its last {pc.dmd_average} steps"
                            if pc.dmd_average
                            else "its EMA"
                        ),
                    }
                    if pc.dmd_steps
                    else {}
                ),
            },
            final_caption=f"Samples of the last round's student (EMA, DDIM {self.student_steps()} steps)",
        )
