"""What the web demo does, without the web: load a checkpoint, validate a request, stream the
denoising, show the forward process.

A face is thin (STYLE 17): the Gradio handlers in ``difflab.web.app`` only turn page values into
calls of this module, and this module asks the kind table for the same sampling plan that
``difflab sample`` executes (``kinds.plan_sampling``), so the page and the command give the same
images for the same seed. Every value that arrives from a page is checked here, on the server: a bad
one is a ``ValueError`` whose one line names the value and the range expected.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import math
import os
import queue
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from difflab import viz
from difflab.data import ImageDataset, load_dataset
from difflab.diffusion import q_sample
from difflab.kinds import kind_of, load_model, plan_sampling
from difflab.sampling import (
    SamplingPlan,
    SamplingRequest,
    TrajectoryRecorder,
    execute,
    load_input_images,
)

RANDOM_SEED = "random"  # what the seed box says to draw a fresh seed
EVERY_CLASS = "every class (one row each)"  # the class choice that mirrors `difflab sample`
MAX_GUIDANCE = 20.0  # guidance scales above this only saturate the images
MAX_SEED = 2**32 - 1
PREVIEWS = 20  # about this many live frames when the page leaves "every k steps" at 0 (auto)
DISPLAY_PX = 384  # streamed grids are upscaled (nearest, integer factor) to at least this width
FORWARD_IMAGES = 1000  # the forward-process tab offers the first this many test images
PIXELATED = "image-rendering: pixelated; width: 100%; max-width: 768px"  # small images stay sharp
MAX_SHOWN = 40  # characters of a page value that an error message repeats


class Stopped(Exception):
    """Raised inside the sampler's callback when the page pressed Stop: sampling ends there."""


@dataclass(frozen=True)
class GenerateRequest:
    """One validated "Generate" press: everything ``generate`` needs, nothing left to parse."""

    sampler: str  # one of SAMPLERS, or "consistency" for a distilled model
    steps: int  # network evaluations
    seed: int  # the seed actually used (drawn when the page asked for a random one)
    num_images: int  # images drawn (every-class grids round up to whole rows)
    class_label: int | None  # the class of every image; None: every class in turn, or no classes
    guidance: float  # classifier-free guidance scale (1 = plain conditional)
    eta: float  # DDIM noise, 0 for the other samplers
    every: int  # a live frame every this many steps (and always the last step)
    plan: SamplingPlan  # what the sampler runs: the same plan difflab sample makes


@dataclass(frozen=True)
class Frame:
    """A live preview: the noisy x_t and the network's predicted x0 after step ``step`` of
    ``total``, as uint8 RGB grids (H, W, 3) ready to be shown losslessly."""

    step: int  # 1-based step just evaluated
    total: int  # steps in this generation
    t: float  # its code timestep (difflab.schedules: paper step t + 1), or a flow time in [0, 1]
    x_t: np.ndarray  # (H, W, 3) uint8 grid of x_t
    x0_pred: np.ndarray  # (H, W, 3) uint8 grid of the predicted x0

    @property
    def status(self) -> str:
        return f"step {self.step}/{self.total} (t = {self.t:g})"


@dataclass(frozen=True)
class Result:
    """A finished generation: the final images and the files the page offers for download."""

    images: torch.Tensor  # (N, C, H, W) in [-1, 1], as generate returned them
    grid: np.ndarray  # (H, W, 3) uint8: the PNG's pixels
    png: Path  # the grid, written as `difflab sample --out` writes it
    gif: Path  # the denoising GIF, x_t beside the predicted x0, as `difflab sample --gif`
    seed: int  # the seed used


@dataclass(frozen=True)
class ForwardView:
    """The forward-process tab for one image and one t (Ho et al. 2020, Eq. 4)."""

    x0: np.ndarray  # (H, W, 3) uint8, the image
    x_t: np.ndarray  # (H, W, 3) uint8, sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps
    eps: np.ndarray  # (H, W, 3) uint8, the noise eps / 3 (so +-3 sigma spans black to white)
    curves: np.ndarray  # (H, W, 3) uint8 plot of alpha_bar_t and the SNR with t marked
    alpha_bar: float  # alpha_bar_t
    snr: float  # alpha_bar_t / (1 - alpha_bar_t)

    @property
    def status(self) -> str:
        return f"alpha_bar_t = {self.alpha_bar:.4g}, SNR = {self.snr:.4g} (log10 {math.log10(self.snr):+.2f})"


def shown(value: Any) -> str:
    """A page value as an error message repeats it: its repr, cut to ``MAX_SHOWN`` characters
    (a request may carry megabytes, which a message must not echo)."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else f"{text[:MAX_SHOWN]}... ({len(text):,} characters)"


def _number(name: str, value: Any) -> float:
    """A page value as a finite float, or a one-line error naming the field."""
    if isinstance(value, str):
        value = value.strip()
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {shown(value)}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {shown(value)}")
    return number


def check_int(name: str, value: Any, low: int, high: int) -> int:
    """``value`` (a number or text from the page) as an integer in ``low..high``."""
    number = _number(name, value)
    if number != int(number) or not low <= number <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}, got {shown(value)}")
    return int(number)


def check_float(name: str, value: Any, low: float, high: float) -> float:
    number = _number(name, value)
    if not low <= number <= high:
        raise ValueError(f"{name} must lie in [{low:g}, {high:g}], got {shown(value)}")
    return number


def parse_seed(value: Any, draw: Callable[[], int] | None = None) -> int:
    """An integer seed in 0..2^32-1, or a fresh one when the box says "random" (or is empty)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", RANDOM_SEED)):
        return (draw or (lambda: secrets.randbelow(MAX_SEED + 1)))()
    name = f"seed (an integer or '{RANDOM_SEED}')"
    if isinstance(value, str) and not value.strip().isdigit():  # "1e3" or "7.0": not a seed
        raise ValueError(f"{name} must be an integer in 0..{MAX_SEED}, got {shown(value)}")
    return check_int(name, value, 0, MAX_SEED)


def to_display(images: Any, nrow: int | None = None, min_width: int = DISPLAY_PX) -> np.ndarray:
    """A batch in [-1, 1] as one (H, W, 3) uint8 grid, upscaled by an integer factor (nearest)
    to at least ``min_width`` pixels: small images stay sharp and every pixel is exact."""
    grid = viz.make_grid(images, nrow=nrow)  # (H, W, 3)
    factor = max(1, math.ceil(min_width / grid.shape[1]))
    return grid.repeat(factor, axis=0).repeat(factor, axis=1)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def data_from_html(text: str) -> bytes:
    """The bytes of the first data URI in ``text`` (a picture or a download of the page)."""
    match = re.search(r'"data:[\w/+.-]+;base64,([A-Za-z0-9+/=]+)"', text)
    if match is None:
        raise ValueError(f"no data URI in {shown(text)}")
    return base64.b64decode(match.group(1))


def picture_html(grid: np.ndarray | None, alt: str) -> str:
    """An (H, W, 3) uint8 grid as an ``<img>`` holding its lossless PNG: the page shows pictures
    without a file on the server, so no URL names a server path and nothing is left behind."""
    if grid is None:
        return ""
    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="PNG")
    src = data_uri(buffer.getvalue(), "image/png")
    return f'<img src="{src}" alt="{html.escape(alt)}" style="{PIXELATED}">'


def download_html(path: Path | None, label: str) -> str:
    """A link that downloads the file ``path`` (read now, so the file can go) under its name."""
    if path is None:
        return ""
    mime = "image/gif" if path.suffix == ".gif" else "image/png"
    href = data_uri(path.read_bytes(), mime)
    return f'<a href="{href}" download="{html.escape(path.name)}">{html.escape(label)}</a>'


class DemoModel:
    """A checkpoint loaded once for the server, with everything the page needs to know about it."""

    def __init__(
        self,
        checkpoint: str | os.PathLike[str],
        device: str = "auto",
        *,
        max_images: int = 64,
    ) -> None:
        if max_images < 1:
            raise ValueError(f"max images must be >= 1, got {max_images}")
        self.path = Path(checkpoint)
        self.loaded = load_model(self.path, device, stepwise=True)  # not a GAN: no steps to show
        self.kind = kind_of(self.loaded.config)
        self.config = self.loaded.config
        self.schedule = self.loaded.schedule
        self.max_images = max_images
        self._dataset: ImageDataset | None = None
        self._dataset_error: str | None = None
        self._lock = threading.Lock()  # one sampler at a time on one model
        self._data_lock = threading.Lock()

    # What the page shows --------------------------------------------------------------------

    @property
    def distilled(self) -> bool:
        """A distilled model (``difflab distill``): a consistency model (1, 2 or 4 steps) or a
        progressive student (DDIM in its own steps); no sampler, no guidance to choose."""
        return self.kind.step_choices is not None

    @property
    def num_classes(self) -> int:
        return self.config.model.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.config.label_names

    @property
    def class_choices(self) -> list[str]:
        """The class box: every class in turn, or one class by name (conditional models only)."""
        return [EVERY_CLASS, *self.class_names] if self.num_classes else []

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    @property
    def step_choices(self) -> list[int]:
        """Steps a distilled model samples in: 1, 2 or 4 (consistency), or the steps a
        progressive student was distilled for (the kind table's)."""
        assert self.kind.step_choices is not None
        return self.kind.step_choices(self.config)

    @property
    def samplers(self) -> list[str]:
        """The samplers the page offers: the kind table's for this model."""
        return list(self.kind.samplers)

    @property
    def default_sampler(self) -> str:
        """The sampler ``difflab sample`` uses for this model when none is asked for."""
        return plan_sampling(self.loaded, SamplingRequest(num_images=1)).sampler

    def default_steps(self, sampler: str | None = None) -> int:
        """The steps ``difflab sample`` takes with ``sampler`` (None: the model's default)."""
        if self.distilled:
            return self.step_choices[0]
        return plan_sampling(self.loaded, SamplingRequest(num_images=1, sampler=sampler)).steps

    def describe(self) -> str:
        """One line about the model, for the top of the page."""
        mc = self.config.model
        classes = f", {mc.num_classes} classes" if mc.num_classes else ", unconditional"
        return (
            f"{self.path.name}: {self.kind.title(self.config)} of {self.config.train.data}, "
            f"{mc.image_size}x{mc.image_size}x{mc.in_channels}{classes}, "
            f"T = {self.num_timesteps}, {self.loaded.device.type}"
        )

    # Generate -------------------------------------------------------------------------------

    def parse_request(
        self,
        *,
        sampler: Any = None,
        steps: Any = None,
        seed: Any = 0,
        num_images: Any = 16,
        class_choice: Any = None,
        guidance: Any = 1.0,
        eta: Any = 0.0,
        every: Any = 0,
        draw_seed: Callable[[], int] | None = None,
    ) -> GenerateRequest:
        """Parse every field of a Generate press within the page's bounds (values that do not
        apply to this model are ignored), then plan it as ``difflab sample`` plans its flags
        (``kinds.plan_sampling``)."""
        n = check_int("number of images", num_images, 1, self.max_images)
        # checked even where they do not apply (an unconditional model, a sampler without eta):
        # a malformed value is refused, never silently ignored
        w = check_float("guidance", guidance, 0.0, MAX_GUIDANCE)
        eta_value = check_float("eta", eta, 0.0, 1.0)
        if self.distilled:
            choices = self.step_choices
            given = steps if steps not in (None, "") else choices[0]
            got = check_int("steps", given, 1, max(choices))
            if got not in choices:
                raise ValueError(
                    f"steps must be one of {', '.join(map(str, choices))} for a distilled model, "
                    f"got {shown(steps)}"
                )
            request = SamplingRequest(num_images=n, steps=got)
        else:
            total = (
                None if steps in (None, "") else check_int("steps", steps, 1, self.num_timesteps)
            )
            sampler = self.default_sampler if sampler is None else sampler
            if sampler not in self.samplers:
                raise ValueError(
                    f"unknown sampler {shown(sampler)}; expected one of {', '.join(self.samplers)}"
                )
            request = SamplingRequest(
                num_images=n, sampler=str(sampler), steps=total, spacing="trailing",
                eta=eta_value if sampler == "ddim" else None,
                guidance=w if self.num_classes else None,
            )  # fmt: skip
        label: int | None = None
        if self.num_classes and class_choice not in (None, "", EVERY_CLASS):
            if class_choice not in self.class_names:
                raise ValueError(
                    f"unknown class {shown(class_choice)}; expected one of "
                    f"{', '.join(self.class_choices)}"
                )
            label = self.class_names.index(class_choice)
        # no class chosen: one row per class, as difflab sample draws
        plan = plan_sampling(self.loaded, replace(request, class_label=label, class_rows=True))
        k = check_int("preview every k steps (0 = auto)", every, 0, plan.steps)
        plan = replace(plan, seed=parse_seed(seed, draw_seed))
        return GenerateRequest(
            sampler=plan.sampler, steps=plan.steps, seed=plan.seed, num_images=plan.num_images,
            class_label=label, guidance=plan.shown_guidance, eta=plan.eta,
            every=k or max(1, round(plan.steps / PREVIEWS)), plan=plan,
        )  # fmt: skip

    def generate_kwargs(self, request: GenerateRequest) -> dict[str, Any]:
        """The keywords of ``generate`` for a request: its plan's, which ``difflab sample`` makes
        for the same flags."""
        return request.plan.generate_kwargs()

    def labels(self, request: GenerateRequest) -> torch.Tensor | None:
        """One label per image: the chosen class, or classes in blocks of a row each (the rows of
        ``difflab sample``'s class grid); None for an unconditional model."""
        return request.plan.labels

    def stream(
        self,
        request: GenerateRequest,
        out_dir: str | os.PathLike[str],
        stop: threading.Event | None = None,
    ) -> Iterator[Frame | Result]:
        """Run one generation and yield a ``Frame`` every ``request.every`` steps (and at the last
        step), then the ``Result``, whose files are written into ``out_dir``.

        The sampler runs in a worker thread and hands frames over a small queue; the sampler
        callback checks ``stop`` before each step's bookkeeping, so setting it (the Stop button,
        or closing this generator) ends sampling after the step in progress, and nothing more is
        written. The worker is always joined before this generator returns.
        """
        stop = stop if stop is not None else threading.Event()
        out = Path(out_dir)
        nrow = request.plan.rows or None
        handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=2)
        seq_len = request.steps
        gif_every = max(1, seq_len // 40)  # as difflab sample --gif
        gif = TrajectoryRecorder(
            lambda i, t: i % gif_every == 0, num_images=min(16, request.num_images)
        )

        def put(item: tuple[str, Any]) -> None:
            while not stop.is_set():
                try:
                    handoff.put(item, timeout=0.05)
                    return
                except queue.Full:
                    continue
            raise Stopped

        def callback(info: dict[str, Any]) -> None:
            if stop.is_set():
                raise Stopped
            gif(info)
            i = info["i"]
            if i % request.every == 0 or i == seq_len - 1:
                put(("frame", Frame(
                    step=i + 1, total=seq_len, t=float(info["t"]),
                    x_t=to_display(info["x"], nrow), x0_pred=to_display(info["x0_pred"], nrow),
                )))  # fmt: skip

        def work() -> None:
            try:
                with self._lock:
                    images = execute(self.loaded, request.plan, callback=callback)
                put(("done", images))
            except BaseException as err:  # handed to the caller, raised there
                with contextlib.suppress(Stopped):
                    put(("error", err))

        worker = threading.Thread(target=work, name="difflab-generate", daemon=True)
        worker.start()
        try:
            while True:
                try:
                    kind, item = handoff.get(timeout=0.05)
                except queue.Empty:
                    if worker.is_alive():
                        continue
                    try:  # it may have handed something over just before it ended
                        kind, item = handoff.get_nowait()
                    except queue.Empty:
                        return  # stopped: the worker ended with nothing more to hand over
                if kind == "frame":
                    yield item
                    continue
                if kind == "error":
                    if isinstance(item, Stopped):
                        return
                    raise item
                yield self._finish(item, request, gif, nrow, out)
                return
        finally:
            stop.set()
            worker.join()

    def _finish(
        self,
        images: torch.Tensor,
        request: GenerateRequest,
        gif: TrajectoryRecorder,
        nrow: int | None,
        out: Path,
    ) -> Result:
        """Write the PNG as `difflab sample --out` does (a labelled grid with a row per class for
        a conditional model without a chosen class) and the GIF as `--gif` does."""
        out.mkdir(parents=True, exist_ok=True)
        png = out / f"samples_seed{request.seed}.png"
        if nrow is not None:
            cells = images.view(self.num_classes, nrow, *images.shape[1:])
            viz.save_labelled_grid(cells, png, [""] * nrow, row_headers=self.class_names)
        else:
            viz.save_grid(images, png)
        path = viz.save_denoising_gif(
            gif.with_x0(images), out / f"denoising_seed{request.seed}.gif"
        )
        with Image.open(png) as picture:
            grid = np.asarray(picture.convert("RGB"))
        return Result(images=images, grid=grid, png=png, gif=path, seed=request.seed)

    # Forward process ------------------------------------------------------------------------

    def dataset(self) -> ImageDataset:
        """The test split of the data the model was trained on (first ``FORWARD_IMAGES``), loaded
        once; a ``ValueError`` saying why when its files are not on this machine."""
        with self._data_lock:
            if self._dataset is None and self._dataset_error is None:
                tc, mc = self.config.train, self.config.model
                try:
                    data = load_dataset(
                        tc.data, data_dir=tc.data_dir, split="test", image_size=mc.image_size,
                        seed=tc.seed, download=False, vendors=tc.vendors,
                    )  # fmt: skip
                    keep = min(FORWARD_IMAGES, data.num_images)
                    self._dataset = ImageDataset(
                        data.name, data.images[:keep], data.labels[:keep], data.class_names
                    )
                except (ValueError, OSError) as err:
                    self._dataset_error = (
                        f"the {tc.data} test images are not available here ({err}); upload an image"
                    )
        if self._dataset is None:
            raise ValueError(self._dataset_error)
        return self._dataset

    def forward_image(self, index: Any = None, upload: str | None = None) -> torch.Tensor:
        """(1, C, H, W) in [-1, 1]: an uploaded file (the model's size and channels, checked by
        ``load_input_images``) or test image ``index``."""
        if upload:
            try:
                return load_input_images(self.config, paths=[upload])
            except ValueError as err:  # name the file as the visitor knows it, not where it lies
                message = str(err).replace(f"image {upload}", "the uploaded image")
                message = message.replace(f" '{upload}'", "").replace(str(upload), "the upload")
                raise ValueError(message) from None
        data = self.dataset()
        i = check_int("image index", index, 0, data.num_images - 1)
        return torch.from_numpy(data.images[i : i + 1].copy())

    def forward_view(self, x0: torch.Tensor, t: Any, seed: Any = 0) -> ForwardView:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (Ho et al. 2020, Eq. 4) with eps
        from ``np.random.default_rng(seed)``, and where t stands on the schedule's curves."""
        step = check_int("t", t, 0, self.num_timesteps - 1)
        rng = np.random.default_rng(parse_seed(seed))
        x = x0.numpy().astype(np.float64)  # (1, C, H, W)
        eps = rng.standard_normal(x.shape)  # (1, C, H, W)
        x_t = q_sample(x, np.array([step]), eps, self.schedule)  # (1, C, H, W)
        ab = float(self.schedule.alpha_bar[step])
        snr = float(self.schedule.snr[step])
        return ForwardView(
            x0=to_display(x, min_width=192), x_t=to_display(x_t, min_width=192),
            eps=to_display(np.clip(eps / 3.0, -1.0, 1.0), min_width=192),
            curves=schedule_curves(self.schedule, step), alpha_bar=ab, snr=snr,
        )  # fmt: skip


def schedule_curves(schedule: Any, t: int) -> np.ndarray:
    """(H, W, 3) uint8 plot: alpha_bar_t (left) and log10 SNR_t (right) against t, ``t`` marked."""
    fig = Figure(figsize=(7.5, 2.8), dpi=100)
    canvas = FigureCanvasAgg(fig)
    steps = np.arange(schedule.num_timesteps)
    left, right = fig.subplots(1, 2)
    left.plot(steps, schedule.alpha_bar, color="C0")
    left.plot([t], [schedule.alpha_bar[t]], "o", color="C3")
    left.axvline(t, color="C3", alpha=0.4)
    left.set_title(r"$\bar\alpha_t$ (signal kept)")
    left.set_ylim(-0.02, 1.02)
    right.plot(steps, np.log10(schedule.snr), color="C1")
    right.plot([t], [np.log10(schedule.snr[t])], "o", color="C3")
    right.axvline(t, color="C3", alpha=0.4)
    right.set_title(r"$\log_{10}$ SNR $= \log_{10} \bar\alpha_t / (1 - \bar\alpha_t)$")
    for ax in (left, right):
        ax.set_xlabel(f"t (0 .. {schedule.num_timesteps - 1}, {schedule.name})")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()  # (H, W, 3)
