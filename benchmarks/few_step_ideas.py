"""Measured attempts to close the few-step gap (docs/lab/few_step.md), one command each, so that anyone
can rerun them. Those that did not help enough stay here; ``dmd``, which did, became the stage of
``difflab distill --method progressive --dmd-steps`` (``difflab.objectives.progressive``).

    .venv/bin/python benchmarks/few_step_ideas.py stochastic --checkpoint S --mode meng \\
        --out images.npz                      # then: difflab evaluate --images images.npz ...
    .venv/bin/python benchmarks/few_step_ideas.py adversarial --student RUN/model_steps_4.safetensors \\
        --teacher RUN/model_steps_8.safetensors --data-dir ../shared/data/mnist --place chain \\
        --weight 0.5 --steps 300 --out adv.safetensors   # then: difflab evaluate --checkpoint ...
    .venv/bin/python benchmarks/few_step_ideas.py adversarial ... \\
        --features runs/teacher/model_final.safetensors --d-t-max 0 --d-lr 1e-3 \\
        --d-warmup 300 --weight 0.5 --steps 300 --out ladd.safetensors
    .venv/bin/python benchmarks/few_step_ideas.py dmd --student RUN/model_steps_4.safetensors \\
        --teacher RUN/model_steps_8.safetensors --real runs/teacher/model_final.safetensors \\
        --data-dir ../shared/data/mnist --weight 0.005 --steps 300 --out dmd.safetensors
    .venv/bin/python benchmarks/few_step_ideas.py direct --teacher runs/teacher/model_final.safetensors \\
        --like RUN/model_steps_4.safetensors --data-dir ../shared/data/mnist --substeps 4 \\
        --minutes 20 --out direct.safetensors

- ``stochastic``: draws a progressive student's images on its own grid with DDIM (``ddim``), DDIM
  with noise (``eta0.5``, ``eta1``: Song et al. 2021, Eq. 16), or Meng et al. 2023's sampler for
  distilled models (``meng``: a deterministic DDIM jump two grid points down, then forward noise
  back up one, x_s = (alpha_s / alpha_u) x_u + sqrt(sigma_s^2 - (alpha_s sigma_u / alpha_u)^2) z).
- ``adversarial``: fine-tunes a 4-step student with its last round's loss (its 8-step teacher,
  DDIM, ``difflab.objectives.progressive``) plus a hinge GAN loss (Lim & Ye 2017) against a fresh spectrally
  normalised discriminator (``difflab.models.gan``), weighted by VQGAN's adaptive rule (Esser et
  al. 2021, Eq. 7: the ratio of the losses' gradient norms at the student's last layer) times
  ``--weight``; on the x0 prediction at every grid step from noised real images (``--place x0``,
  after Sauer et al. 2023) or on the output of the whole DDIM chain from fresh noise, gradients
  through every evaluation (``--place chain``). ``--features CKPT`` swaps the discriminator for
  LADD's (Sauer et al. 2024): the frozen encoder of the diffusion model CKPT, on the images noised
  to t <= ``--d-t-max`` (T - 1), with a trainable head per resolution; ``--d-warmup`` trains it
  alone first, on the student as it is.
- ``dmd``: the same fine-tuning with distribution matching distillation's loss (Yin et al. 2024,
  DMD; DMD2's two time scales with ``--fake-steps``) in place of the GAN: the images of the whole
  chain are noised to a random t in [``--t-min``, ``--t-max``] (T - 1), and moved against the
  difference of two denoisers' x0 predictions there, a "fake" one that keeps learning the
  student's images (from a copy of ``--real``) minus the real one (``--real``, frozen), that is
  along s_real - s_fake; ``--weight`` times that loss is added to the last round's.
- ``direct``: one round from the teacher straight to a 4-step student (TRACT's idea, Berthelot
  et al. 2023): each student step spanned by ``--substeps`` DPM-Solver++(2S) steps of the
  teacher, the target progressive distillation's x_tilde, for ``--minutes`` of wall time.

The written checkpoints are ordinary progressive students (the ``--student`` / ``--like``
checkpoint's configuration), so ``difflab sample`` and ``evaluate`` take them. Run on an otherwise
idle machine; ``direct`` is a wall-time budget.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from difflab.checkpoint import Checkpoint, load_checkpoint, load_weights_into, write_checkpoint
from difflab.config import RunConfig
from difflab.data import load_dataset
from difflab.diffusion import diffusion_loss, eps_and_x0, q_sample
from difflab.kinds import load_model
from difflab.models.gan import Discriminator
from difflab.models.unet import Downsample, UNet
from difflab.objectives.progressive import (
    alpha_sigma,
    ddim_chain,
    dmd_direction,
    ode_step,
    step_grid,
    truncated_snr_loss,
    x0_target,
)
from difflab.samplers import timestep_sequence
from difflab.sampling import model_denoiser
from difflab.schedules import Schedule, make_schedule
from difflab.training import blend_into, update_ema


def unet_from(ckpt: Checkpoint) -> UNet:
    net = UNet(ckpt.config.model)
    load_weights_into(net, ckpt.sampling_weights, str(ckpt.path))
    return net


def save_student(out: str, config: RunConfig, student: UNet, ema: UNet, steps: int) -> None:
    config = replace(config, train=replace(config.train, max_steps=steps))
    write_checkpoint(out, config, {"model": student.state_dict(), "ema": ema.state_dict()})
    print(f"wrote {out} after {steps} steps", flush=True)


class FeatureDiscriminator(torch.nn.Module):
    """LADD's discriminator (Sauer et al. 2024): a frozen diffusion model's encoder, run on the
    images noised to a random level t, with a small trainable head on the features at every
    resolution (before each downsampling, and after the middle blocks); logits per position."""

    def __init__(self, trunk: UNet, t_max: int) -> None:
        super().__init__()
        self.trunk, self.t_max = trunk.eval().requires_grad_(False), t_max
        mc = trunk.config
        widths = [mc.base_channels * m for m in mc.channel_mults]
        self.heads = torch.nn.ModuleList(  # no spectral norm: with it they learned too slowly
            torch.nn.Sequential(
                torch.nn.Conv2d(c, c, 3, padding=1),
                torch.nn.LeakyReLU(0.2),
                torch.nn.Conv2d(c, 1, 1),
            )
            for c in widths  # before each downsampling, then the middle
        )

    def features(self, x: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        low, skips = self.trunk.encode(x, self.trunk.embed(t, None))
        down = self.trunk.down  # skips[j] is the input of down[j]
        return [skips[j] for j, m in enumerate(down) if isinstance(m, Downsample)] + [low]

    def forward(self, x: torch.Tensor, sched: Schedule, gen: torch.Generator) -> torch.Tensor:
        t = torch.randint(0, self.t_max + 1, (len(x),), generator=gen)
        z = q_sample(x, t, torch.randn(x.shape, generator=gen), sched)
        return torch.cat(
            [head(f).flatten(1) for head, f in zip(self.heads, self.features(z, t), strict=True)],
            dim=1,
        )  # (B, positions over every level)


def stochastic(args: argparse.Namespace) -> None:
    torch.set_grad_enabled(False)
    loaded = load_model(args.checkpoint, "cpu")
    if loaded.config.progressive is None:
        raise SystemExit(f"{args.checkpoint} is not a progressive student (difflab distill)")
    steps = args.steps or loaded.config.progressive.steps
    den = model_denoiser(loaded.model, loaded.config, loaded.schedule, None, 1.0, clip_x0=False)
    seq = timestep_sequence(loaded.schedule.num_timesteps, steps)
    ab = [float(loaded.schedule.alpha_bar[t]) for t in seq] + [1.0]  # the data last
    al, sg = [a**0.5 for a in ab], [(1 - a) ** 0.5 for a in ab]
    gen, mc = torch.Generator().manual_seed(args.seed), loaded.config.model
    images, start = [], time.perf_counter()
    for b0 in range(0, args.num_images, 250):
        n = min(250, args.num_images - b0)
        x = torch.randn((n, mc.in_channels, mc.image_size, mc.image_size), generator=gen)
        for i, t in enumerate(seq):
            eps, x0 = den(x, torch.full((n,), t, dtype=torch.long))
            if i == steps - 1:
                x = x0
                break
            s = i + 1
            if args.mode == "ddim":
                x = al[s] * x0 + sg[s] * eps
            elif args.mode == "meng":
                u = min(i + 2, steps)  # two grid points down (the data at most)
                r = al[s] / al[u]
                z = torch.randn(x.shape, generator=gen)
                x = (
                    r * (al[u] * x0 + sg[u] * eps)
                    + max(sg[s] ** 2 - (r * sg[u]) ** 2, 0.0) ** 0.5 * z
                )
            else:  # eta<X>
                c = float(args.mode[3:]) * ((1 - ab[s]) / (1 - ab[i]) * (1 - ab[i] / ab[s])) ** 0.5
                z = torch.randn(x.shape, generator=gen)
                x = al[s] * x0 + (sg[s] ** 2 - c**2) ** 0.5 * eps + c * z
        images.append(x.clamp(-1, 1))
    np.savez(args.out, images=torch.cat(images).numpy())
    print(f"{args.mode}, {steps} steps: {args.num_images} images in "
          f"{time.perf_counter() - start:.1f} s -> {args.out}")  # fmt: skip


class FineTune:
    """What ``adversarial`` and ``dmd`` share: an N-step progressive student, fine-tuned with its
    last round's loss (its 2N-step teacher, DDIM) plus another loss on what it draws."""

    def __init__(self, args: argparse.Namespace) -> None:
        torch.manual_seed(args.seed)
        st_ck, te_ck = load_checkpoint(args.student), load_checkpoint(args.teacher)
        self.config = config = st_ck.config
        if config.progressive is None or config.model.num_classes:
            raise SystemExit(f"{args.student} is not an unconditional progressive student")
        self.n, self.batch_size = config.progressive.steps, args.batch_size
        self.student = unet_from(st_ck).train()
        teacher = unet_from(te_ck).eval().requires_grad_(False)
        self.ema = copy.deepcopy(self.student).eval().requires_grad_(False)
        self.sched = make_schedule(config.diffusion.schedule, config.diffusion.timesteps)
        (self.alpha, self.sigma), self.g_n, self.g_2n = (
            alpha_sigma(self.sched, "cpu"),
            step_grid(self.sched, self.n, "cpu"),
            step_grid(self.sched, 2 * self.n, "cpu"),
        )
        self.images = torch.from_numpy(
            load_dataset(config.train.data, data_dir=args.data_dir).images
        )
        self.opt = torch.optim.AdamW(self.student.parameters(), lr=args.lr, weight_decay=0.0)
        self.last = [p for name, p in self.student.named_parameters() if name.endswith("weight")][
            -1
        ]
        self.t_den = model_denoiser(teacher, config, self.sched, None, 1.0, clip_x0=False)
        self.gen = torch.Generator().manual_seed(args.seed + 1)
        self.start, self.updates = time.perf_counter(), 0

    def denoise(self, z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.student(z, t, None)
        return eps_and_x0(output, z, t, self.sched, self.config.diffusion.prediction)

    def reals(self, count: int) -> torch.Tensor:
        return self.images[torch.randint(0, len(self.images), (count,), generator=self.gen)]

    def chain(self, count: int) -> torch.Tensor:
        """The student's whole DDIM chain from fresh noise, with gradients unless disabled."""
        x = torch.randn((count, *self.images.shape[1:]), generator=self.gen)
        return ddim_chain(self.student, x, self.g_n, self.alpha, self.sigma, self.sched,
                          self.config.diffusion.prediction)  # fmt: skip

    def noised_reals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Real images noised to the levels of the student's grid, with those levels."""
        x0 = self.reals(self.batch_size)
        t = self.g_n[torch.randint(0, self.n, (self.batch_size,), generator=self.gen)]
        return q_sample(x0, t, torch.randn(x0.shape, generator=self.gen), self.sched), t

    def pd_loss(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The last round's loss (Salimans & Ho 2022, Alg. 2) and the x0 predictions it scored."""
        gen, alpha, sigma = self.gen, self.alpha, self.sigma
        x0 = self.reals(self.batch_size)
        k = torch.randint(0, self.n, (self.batch_size,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        t, t_mid, t_end = self.g_n[k], self.g_2n[2 * k + 1], self.g_n[k + 1]
        z = q_sample(x0, t, eps, self.sched)
        with torch.no_grad():
            z_mid = ode_step("ddim", self.t_den, z, t, t_mid, alpha, sigma)
            z_end = ode_step("ddim", self.t_den, z_mid, t_mid, t_end, alpha, sigma)
            target = x0_target(z, z_end, t, t_end, alpha, sigma)
        _, x0_p = self.denoise(z, t)
        return truncated_snr_loss(x0_p, target, t, alpha, sigma).mean(), x0_p

    def grad_norm(self, loss: torch.Tensor) -> torch.Tensor:
        """The norm of the loss's gradient at the student's last layer (VQGAN's yardstick)."""
        return torch.autograd.grad(loss, self.last, retain_graph=True)[0].norm()

    def update(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
        self.opt.step()
        update_ema(self.ema, self.student, self.config.train.ema_decay, self.updates)
        self.updates += 1

    def log(self, message: str) -> None:
        print(f"{message}, {time.perf_counter() - self.start:.0f} s", flush=True)

    def save(self, out: str) -> None:
        save_student(out, self.config, self.student, self.ema, self.updates)


def adversarial(args: argparse.Namespace) -> None:
    ft = FineTune(args)
    if args.features:
        trunk = unet_from(load_checkpoint(args.features))
        fdisc = FeatureDiscriminator(trunk, int(args.d_t_max * (ft.sched.num_timesteps - 1)))

        def disc(x: torch.Tensor) -> torch.Tensor:
            return fdisc(x, ft.sched, ft.gen)

        d_params = list(fdisc.heads.parameters())
    else:
        mc = ft.config.model
        pixel = Discriminator(mc.image_size, mc.in_channels, 64, spectral=True)
        disc, d_params = pixel, list(pixel.parameters())
    d_opt = torch.optim.Adam(d_params, lr=args.d_lr, betas=(0.5, 0.999))

    def train_disc(fake: torch.Tensor) -> torch.Tensor:
        real = ft.reals(len(fake))
        d_loss = (torch.relu(1 - disc(real)) + torch.relu(1 + disc(fake.detach()))).mean()
        d_opt.zero_grad()
        d_loss.backward()
        d_opt.step()
        return d_loss

    for step in range(args.d_warmup):  # the discriminator alone, on the student as it is
        with torch.no_grad():
            fake = (
                ft.chain(args.batch_size // 2)
                if args.place == "chain"
                else ft.denoise(*ft.noised_reals())[1]
            )
        d_loss = train_disc(fake)
        if step % 25 == 0:
            ft.log(f"warm-up {step}: D hinge {d_loss.item():.3f}")
    for step in range(args.steps):
        l_pd, x0_p = ft.pd_loss()
        fake = x0_p if args.place == "x0" else ft.chain(args.batch_size // 2)
        d_loss = train_disc(fake)
        l_adv = -disc(fake).mean()
        balance = (ft.grad_norm(l_pd) / (ft.grad_norm(l_adv) + 1e-8)).clamp(max=1e4).detach()
        ft.update(l_pd + args.weight * balance * l_adv)
        if step % 25 == 0:
            ft.log(f"step {step}: pd {l_pd.item():.4f}, D hinge {d_loss.item():.3f}, "
                   f"G {l_adv.item():.3f}, balance {balance.item():.3g}")  # fmt: skip
    ft.save(args.out)


def dmd(args: argparse.Namespace) -> None:
    ft = FineTune(args)
    real_ck = load_checkpoint(args.real)
    real = unet_from(real_ck).eval().requires_grad_(False)
    fake = copy.deepcopy(real).train().requires_grad_(True)  # starts as the real score
    f_opt = torch.optim.AdamW(fake.parameters(), lr=args.fake_lr, weight_decay=0.0)
    pred, gamma = real_ck.config.diffusion.prediction, real_ck.config.diffusion.min_snr_gamma
    last_t = ft.sched.num_timesteps - 1
    lo, hi = int(args.t_min * last_t), int(args.t_max * last_t)
    count = args.batch_size // 2

    def noise_levels() -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.randint(lo, hi + 1, (count,), generator=ft.gen)
        return t, torch.randn((count, *ft.images.shape[1:]), generator=ft.gen)

    def train_fake(x: torch.Tensor) -> torch.Tensor:
        """The fake score learns the student's images by the teacher's own diffusion loss."""
        t, noise = noise_levels()
        loss = diffusion_loss(lambda z, s: fake(z, s, None), x.detach(), t, noise, ft.sched,
                              pred, gamma).mean()  # fmt: skip
        f_opt.zero_grad()
        loss.backward()
        f_opt.step()
        return loss

    for step in range(args.fake_warmup):  # the fake score alone, on the student as it is
        with torch.no_grad():
            x = ft.chain(count)
        f_loss = train_fake(x)
        if step % 25 == 0:
            ft.log(f"warm-up {step}: fake loss {f_loss.item():.4f}")
    # Uniform averages of the student over its last K updates (--averages), beside the EMA.
    averages = {k: copy.deepcopy(ft.student).eval().requires_grad_(False) for k in args.averages}
    for step in range(args.steps):
        l_pd, _ = ft.pd_loss()
        x = ft.chain(count)
        direction = dmd_direction(x, *noise_levels(), real, fake, ft.sched, pred)
        l_dmd = 0.5 * (x - (x - direction).detach()).pow(2).mean()  # its gradient: direction / size
        if step % 25 == 0:
            ratio = (ft.grad_norm(l_dmd) / ft.grad_norm(l_pd)).item()
        ft.update(l_pd + args.weight * l_dmd)
        for k, avg in averages.items():
            if step >= args.steps - k:  # the n-th averaged update: d = (n - 1) / n, a mean
                n = step - (args.steps - k) + 1
                blend_into(avg, ft.student, (n - 1) / n)
        f_loss = train_fake(x)
        for _ in range(args.fake_steps - 1):  # two time scales (DMD2): more, on fresh images
            with torch.no_grad():
                x = ft.chain(count)
            f_loss = train_fake(x)
        if step % 25 == 0:
            ft.log(f"step {step}: pd {l_pd.item():.4f}, dmd {l_dmd.item():.3g} (gradient "
                   f"{ratio:.3g} x pd's), fake loss {f_loss.item():.4f}")  # fmt: skip
    ft.save(args.out)
    for k, avg in averages.items():  # the average in the EMA's place: what is sampled
        save_student(str(Path(args.out).with_suffix(f".avg{k}.safetensors")), ft.config,
                     ft.student, avg, ft.updates)  # fmt: skip


def direct(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    config = load_checkpoint(args.like).config
    if config.progressive is None or config.progressive.steps != 4:
        raise SystemExit(f"--like {args.like} must be a 4-step progressive student")
    teacher = unet_from(load_checkpoint(args.teacher)).eval().requires_grad_(False)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    ema = copy.deepcopy(teacher).eval()
    sched = make_schedule(config.diffusion.schedule, config.diffusion.timesteps)
    alpha, sigma = alpha_sigma(sched, "cpu")
    g4, gs, sub = (
        step_grid(sched, 4, "cpu"),
        step_grid(sched, 4 * args.substeps, "cpu"),
        args.substeps,
    )
    assert torch.equal(gs[::sub], g4), "the fine grid must hold the student's"
    images = torch.from_numpy(load_dataset(config.train.data, data_dir=args.data_dir).images)
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.0)
    t_den = model_denoiser(teacher, config, sched, None, 1.0, clip_x0=False)
    gen, pred, start, step = (
        torch.Generator().manual_seed(args.seed + 1),
        config.diffusion.prediction,
        time.perf_counter(),
        0,
    )
    while time.perf_counter() - start < args.minutes * 60:
        for group in opt.param_groups:  # the harness's linear warm-up over 100 steps
            group["lr"] = args.lr * min(1.0, (step + 1) / 100)
        x0 = images[torch.randint(0, len(images), (args.batch_size,), generator=gen)]
        k = torch.randint(0, 4, (args.batch_size,), generator=gen)
        t, t_end = g4[k], g4[k + 1]
        z = q_sample(x0, t, torch.randn(x0.shape, generator=gen), sched)
        with torch.no_grad():
            x = z
            for j in range(sub):
                x = ode_step(
                    "dpmpp-2s", t_den, x, gs[sub * k + j], gs[sub * k + j + 1], alpha, sigma
                )
            target = x0_target(z, x, t, t_end, alpha, sigma)
        x0_p = eps_and_x0(student(z, t, None), z, t, sched, pred)[1]
        loss = truncated_snr_loss(x0_p, target, t, alpha, sigma).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        update_ema(ema, student, config.train.ema_decay, step)
        if step % 50 == 0:
            print(
                f"step {step}: loss {loss.item():.4f}, {time.perf_counter() - start:.0f} s",
                flush=True,
            )
        step += 1
    save_student(args.out, config, student, ema, step)


def counts(text: str) -> list[int]:
    """``--averages 100,200``: whole numbers, comma-separated."""
    try:
        return [int(k) for k in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected whole numbers such as 100,200, got {text!r}"
        ) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stochastic", help="draw a progressive student's images with noise")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--mode", default="meng", help="ddim, meng or eta<X> (default meng)")
    p.add_argument("--steps", type=int, default=None, help="default: the student's")
    p.add_argument("--num-images", type=int, default=5000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True, help="an .npz for difflab evaluate --images")
    p = sub.add_parser("adversarial", help="fine-tune a student with a GAN loss added")
    p.add_argument("--student", required=True, help="a progressive student (model_steps_N)")
    p.add_argument("--teacher", required=True, help="its teacher, the 2N-step student")
    p.add_argument("--place", choices=("x0", "chain"), default="chain")
    p.add_argument("--weight", type=float, default=0.5, help="times the adaptive balance")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--features", default=None, help="a diffusion checkpoint: LADD's discriminator "
                   "on its encoder's features (default: a fresh pixel discriminator)")  # fmt: skip
    p.add_argument("--d-warmup", type=int, default=0, help="discriminator-only steps first")
    p.add_argument("--d-lr", type=float, default=2e-4, help="the discriminator's learning rate")
    p.add_argument("--d-t-max", type=float, default=0.0,
                   help="--features: noise the images to t up to this fraction of T - 1")  # fmt: skip
    p = sub.add_parser("dmd", help="fine-tune a student with distribution matching added")
    p.add_argument("--student", required=True, help="a progressive student (model_steps_N)")
    p.add_argument("--teacher", required=True, help="its teacher, the 2N-step student")
    p.add_argument("--real", required=True, help="the diffusion model whose distribution to "
                   "match (the first teacher); the fake score starts as a copy")  # fmt: skip
    p.add_argument("--weight", type=float, default=1.0, help="the DMD loss's weight")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--fake-warmup", type=int, default=100, help="fake-score-only steps first")
    p.add_argument("--fake-steps", type=int, default=1, help="fake score steps per student step")
    p.add_argument("--fake-lr", type=float, default=1e-4)
    p.add_argument("--t-min", type=float, default=0.02, help="noise levels, fractions of T - 1")
    p.add_argument("--t-max", type=float, default=0.98)
    p.add_argument("--averages", type=counts, default=[],
                   help="also write OUT.avgK.safetensors, the student averaged over its last K "
                   "updates, for each K (comma-separated)")  # fmt: skip
    p = sub.add_parser("direct", help="one round from the teacher to a 4-step student")
    p.add_argument("--teacher", required=True, help="a trained diffusion checkpoint")
    p.add_argument("--like", required=True, help="a 4-step student whose configuration to write")
    p.add_argument("--substeps", type=int, default=4, help="teacher steps per student step")
    p.add_argument("--minutes", type=float, default=20.0)
    for p in sub.choices.values():
        if p.prog.endswith(("adversarial", "dmd", "direct")):
            p.add_argument("--data-dir", required=True)
            p.add_argument("--lr", type=float, default=3e-4)
            p.add_argument("--batch-size", type=int, default=64)
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--out", required=True, help="the student's .safetensors")
    args = parser.parse_args(argv)
    if args.command == "stochastic" and args.mode not in ("ddim", "meng"):
        try:
            eta = float(args.mode.removeprefix("eta")) if args.mode.startswith("eta") else -1.0
        except ValueError:
            eta = -1.0
        if not 0.0 <= eta <= 1.0:
            parser.error(f"--mode {args.mode}: expected ddim, meng or eta<X> with X in [0, 1]")
    if args.command == "adversarial" and not 0.0 <= args.d_t_max <= 1.0:
        parser.error(f"--d-t-max {args.d_t_max:g}: expected a fraction of T - 1 in [0, 1]")
    if args.command == "dmd" and not 0.0 <= args.t_min <= args.t_max <= 1.0:
        parser.error(f"--t-min {args.t_min:g} --t-max {args.t_max:g}: expected "
                     "0 <= t-min <= t-max <= 1, fractions of T - 1")  # fmt: skip
    if args.command == "dmd" and not all(1 <= k <= args.steps for k in args.averages):
        parser.error(f"--averages {','.join(map(str, args.averages))}: expected counts of updates "
                     f"in 1..{args.steps} (--steps)")  # fmt: skip
    if Path(args.out).exists():
        parser.error(f"--out {args.out} exists; choose another path")
    commands = {"stochastic": stochastic, "adversarial": adversarial, "dmd": dmd, "direct": direct}
    commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
