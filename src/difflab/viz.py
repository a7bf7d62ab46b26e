"""Every picture difflab makes, and the run report.

Images come in as float NCHW batches in [-1, 1] (PyTorch tensors or NumPy arrays, C = 1 or 3)
and are turned into uint8 RGB grids with Pillow; plots use matplotlib's object API with the Agg
canvas (no pyplot, so no global figure state); GIFs are written with imageio. Every file is
written through ``difflab.io.atomic_path``, so it appears whole or not at all, and every function
returns the ``Path`` it wrote.

Timestep labels follow ``difflab.schedules``: ``t`` is the code index ``0 .. T-1`` (the paper's
step ``t + 1``); ``t = -1`` in a trajectory stands for the final sample, labelled ``x0``.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import imageio.v3 as iio
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from difflab.diffusion import q_sample
from difflab.io import atomic_path, write_text_atomic
from difflab.schedules import Schedule, scaled_timesteps

PathLike = str | os.PathLike[str]

FORWARD_TIMESTEPS = [0, 50, 100, 200, 400, 600, 800, 999]  # for T = 1000; scaled to other T
CELL_MIN_PX = 64  # labelled grids upscale each image to at least this many pixels wide
PAIR_CELL_MIN_PX = 96  # image pairs too, wider: a pair's label and headers fit under and above it


# ---------------------------------------------------------------------------------------------
# Arrays: [-1, 1] floats -> uint8 grids
# ---------------------------------------------------------------------------------------------


def _as_numpy(images: Any) -> np.ndarray:
    """A float NCHW batch as a float32 NumPy array (tensors detached, moved to the CPU)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().numpy()  # .float(): NumPy has no bfloat16
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) with C = 1 or 3, got shape {x.shape}")
    return x


def to_uint8(images: Any) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, 3) uint8.

    Pixel = round((x + 1) * 127.5) clipped to [0, 255], rounding half to even: -1 -> 0,
    0 -> 128, 1 -> 255. NaN shows as 0 (mid-grey 128). Grey images are repeated to 3 channels.
    """
    x = np.nan_to_num(_as_numpy(images), nan=0.0)
    pixels = np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)  # (N, C, H, W)
    pixels = pixels.transpose(0, 2, 3, 1)  # (N, H, W, C)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)  # (N, H, W, 3)
    return pixels


def make_grid(
    images: Any, nrow: int | None = None, padding: int = 1, pad_value: int = 0
) -> np.ndarray:
    """Tile a batch into one (H_grid, W_grid, 3) uint8 image, ``nrow`` images per row.

    ``nrow`` defaults to ceil(sqrt(N)); a batch smaller than ``nrow`` gives one row of N images.
    ``padding`` pixels of ``pad_value`` lie between the images and around the edge, so with
    ``cols = min(nrow, N)`` and ``rows = ceil(N / cols)`` the grid is
    ``(rows * (H + padding) + padding, cols * (W + padding) + padding, 3)``.
    """
    pixels = to_uint8(images)  # (N, H, W, 3)
    n, h, w, _ = pixels.shape
    if n == 0:
        raise ValueError("make_grid needs at least one image, got an empty batch")
    if nrow is None:
        nrow = math.ceil(math.sqrt(n))
    if nrow < 1 or padding < 0 or not 0 <= pad_value <= 255:
        raise ValueError(
            f"expected nrow >= 1, padding >= 0 and pad_value in 0..255, "
            f"got nrow={nrow}, padding={padding}, pad_value={pad_value}"
        )
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = np.full(
        (rows * (h + padding) + padding, cols * (w + padding) + padding, 3), pad_value, np.uint8
    )
    for i in range(n):
        top = padding + (i // cols) * (h + padding)
        left = padding + (i % cols) * (w + padding)
        grid[top : top + h, left : left + w] = pixels[i]
    return grid


def _upscale(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of an (H, W, 3) image by an integer factor."""
    return pixels.repeat(factor, axis=0).repeat(factor, axis=1)


def _scale_for(width: int, min_width: int) -> int:
    """The smallest integer factor that makes ``width`` at least ``min_width``."""
    return max(1, math.ceil(min_width / width))


def _save_png(pixels: np.ndarray, path: PathLike) -> Path:
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
    return Path(path)


def save_grid(
    images: Any, path: PathLike, *, nrow: int | None = None, min_width: int = 384
) -> Path:
    """Save a batch as a PNG grid, upscaled (nearest, integer factor) to at least ``min_width`` px."""
    grid = make_grid(images, nrow=nrow)
    return _save_png(_upscale(grid, _scale_for(grid.shape[1], min_width)), path)


def flat_spread(path: PathLike) -> int:
    """How many levels (of 255) a saved grid's images span: near 0 means every image is one flat
    colour, the "all-grey samples" of a model that has collapsed to the mean.

    Black pixels (all three channels 0) are left out: they are the grid's padding and the
    background of MNIST-like data, so a healthy digit grid is judged by its strokes. The spread
    is the largest, over the red, green and blue channels, of the 1st-99th percentile range of
    that channel's values in the other pixels (255 when there are too few of them to judge:
    fewer than 0.1%); an all-black grid spans 0. Taking each channel on its own makes one flat
    colour such as beige span 0, as flat grey does, although its channels differ from each other.
    """
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB")).reshape(-1, 3)  # (pixels, 3)
    lit = pixels[pixels.any(axis=1)]  # (lit pixels, 3)
    if len(lit) == 0:
        return 0
    if len(lit) < 1e-3 * len(pixels):
        return 255
    low, high = np.percentile(lit, [1, 99], axis=0)  # each (3,)
    return round(float((high - low).max()))


# ---------------------------------------------------------------------------------------------
# Labelled grids: forward process and denoising trajectories
# ---------------------------------------------------------------------------------------------


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the small bitmap font
        return ImageFont.load_default()


def _labelled_grid(
    cells: np.ndarray,
    headers: Sequence[str],
    padding: int = 4,
    row_headers: Sequence[str] | None = None,
) -> np.ndarray:
    """Lay out (rows, cols, C, H, W) images in [-1, 1] on white, with a text header per column
    and, when given, a label to the left of each row.

    Each image is upscaled (nearest) by an integer factor to at least ``CELL_MIN_PX`` wide.
    """
    rows, cols, c, h, w = cells.shape
    assert len(headers) == cols and (row_headers is None or len(row_headers) == rows)
    pixels = to_uint8(cells.reshape(rows * cols, c, h, w))  # (rows * cols, H, W, 3)
    scale = _scale_for(w, CELL_MIN_PX)
    cell_h, cell_w = h * scale, w * scale
    font = _font(max(11, min(16, cell_w // 5)))
    header_h = font.getbbox("t=0123456789x")[3] + 2 * padding if any(headers) else padding
    left = 0
    if row_headers:
        left = max(font.getbbox(text)[2] for text in row_headers) + 2 * padding

    width = left + cols * (cell_w + padding) + padding
    height = header_h + rows * (cell_h + padding)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for j, text in enumerate(headers):
        center_x = left + padding + j * (cell_w + padding) + cell_w // 2
        draw.text((center_x, header_h // 2), text, fill="black", font=font, anchor="mm")
    for i, text in enumerate(row_headers or ()):
        center_y = header_h + i * (cell_h + padding) + cell_h // 2
        draw.text((left - padding, center_y), text, fill="black", font=font, anchor="rm")
    for i in range(rows):
        for j in range(cols):
            cell = Image.fromarray(_upscale(pixels[i * cols + j], scale))
            canvas.paste(
                cell, (left + padding + j * (cell_w + padding), header_h + i * (cell_h + padding))
            )
    return np.asarray(canvas)


def save_labelled_grid(
    cells: Any,
    path: PathLike,
    headers: Sequence[str],
    row_headers: Sequence[str] | None = None,
) -> Path:
    """PNG of (rows, cols, C, H, W) images with column headers and optional row labels.

    Used for the class x sample grid (a row per class), guidance sweeps (a row per scale) and
    editing results (input, masked input, results).
    """
    rows, cols = cells.shape[:2]
    flat = _as_numpy(cells.reshape(rows * cols, *cells.shape[2:]))  # (rows * cols, C, H, W)
    grid = _labelled_grid(
        flat.reshape(rows, cols, *flat.shape[1:]), headers, row_headers=row_headers
    )
    return _save_png(grid, path)


def forward_process_cells(
    x0: Any, schedule: Schedule, timesteps: Sequence[int], generator: np.random.Generator
) -> np.ndarray:
    """q_sample(x0, t, eps) for each t: (N, len(timesteps), C, H, W), one eps per image for all t."""
    x0 = _as_numpy(x0).astype(np.float64)  # (N, C, H, W)
    num_timesteps = schedule.num_timesteps
    for t in timesteps:
        if not 0 <= t < num_timesteps:
            raise ValueError(f"timestep {t} is outside 0..{num_timesteps - 1} for this schedule")
    eps = generator.standard_normal(x0.shape)  # (N, C, H, W)
    columns = [q_sample(x0, np.full(len(x0), t), eps, schedule) for t in timesteps]
    return np.stack(columns, axis=1)  # (N, K, C, H, W)


def save_forward_process_grid(
    x0: Any,
    schedule: Schedule,
    path: PathLike,
    *,
    timesteps: Sequence[int] | None = None,
    generator: np.random.Generator,
) -> Path:
    """PNG of the forward process: one row per image, one column per ``t`` (header ``t=...``).

    Column ``t`` is q(x_t | x_0) (Ho et al. Eq. 4); ``t = 0`` is the paper's x_1, almost the
    data. Default columns: t = 0, 50, 100, 200, 400, 600, 800, 999 scaled to the schedule's T.
    """
    if timesteps is None:
        timesteps = scaled_timesteps(FORWARD_TIMESTEPS, schedule.num_timesteps)
    cells = forward_process_cells(x0, schedule, timesteps, generator)
    return _save_png(_labelled_grid(cells, [f"t={t}" for t in timesteps]), path)


def save_trajectory_grid(
    frames: Sequence[tuple[int, Any]], path: PathLike, *, num_images: int = 8
) -> Path:
    """PNG of a denoising trajectory: rows = the first ``num_images`` images, columns = frames.

    ``frames`` is ``[(t, x_t batch), ...]`` in recording order; ``t = -1`` marks the final
    sample (header ``x0``), any other ``t`` is labelled ``t=...``.
    """
    if not frames:
        raise ValueError("save_trajectory_grid needs at least one (t, images) frame")
    batches = [_as_numpy(images)[:num_images] for _, images in frames]  # each (n, C, H, W)
    cells = np.stack(batches, axis=1)  # (n, frames, C, H, W)
    headers = ["x0" if t == -1 else f"t={t}" for t, _ in frames]
    return _save_png(_labelled_grid(cells, headers), path)


def _wrap(text: str, font: Any, width: int) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels (a longer word alone)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def save_image_pairs(
    left: Any,
    right: Any,
    path: PathLike,
    *,
    labels: Sequence[str],
    headers: tuple[str, str] = ("generated", "training"),
    per_row: int = 4,
    title: str | None = None,
    footer: str | None = None,
) -> Path:
    """PNG of image pairs on white: ``left[i]`` beside ``right[i]``, ``labels[i]`` under the pair.

    ``left`` and ``right`` are (N, C, H, W) batches in [-1, 1] of one shape, drawn in colour when
    C = 3; ``per_row`` pairs make a row, in order. ``headers`` name the two images of a pair above
    the first row; ``title`` (above) and ``footer`` (below, e.g. the data's attribution) are
    wrapped to the picture's width. Used by the memorisation check (generated image, nearest
    training image, distance).
    """
    a, b = to_uint8(left), to_uint8(right)  # (N, H, W, 3) each
    n, h, w, _ = a.shape
    if n == 0 or b.shape != a.shape or len(labels) != n or per_row < 1:
        raise ValueError(
            f"save_image_pairs needs two batches of one shape and a label per pair, got "
            f"{_as_numpy(left).shape}, {_as_numpy(right).shape}, {len(labels)} labels and "
            f"per_row={per_row}"
        )
    scale = _scale_for(w, PAIR_CELL_MIN_PX)
    cell_h, cell_w, pad, gap = h * scale, w * scale, 12, 2
    pair_w = 2 * cell_w + gap
    font = _font(max(11, min(14, cell_w // 5)))
    line_h = font.getbbox("Ay0,")[3] + 4
    cols, rows = min(per_row, n), math.ceil(n / per_row)
    width = max(pad + cols * (pair_w + pad), 360)
    title_lines = _wrap(title, font, width - 2 * pad) if title else []
    footer_lines = _wrap(footer, font, width - 2 * pad) if footer else []
    top = pad + len(title_lines) * line_h + line_h  # the title, then the pair headers
    row_h = cell_h + line_h + pad  # a pair, then its label
    height = top + rows * row_h + len(footer_lines) * line_h + pad

    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(title_lines):
        draw.text((pad, pad + k * line_h), line, fill="black", font=font)
    for i in range(n):
        x = pad + (i % cols) * (pair_w + pad)
        y = top + (i // cols) * row_h
        if i < cols:
            for j, header in enumerate(headers):
                center = x + j * (cell_w + gap) + cell_w // 2
                draw.text((center, y - 2), header, fill="black", font=font, anchor="mb")
        canvas.paste(Image.fromarray(_upscale(a[i], scale)), (x, y))
        canvas.paste(Image.fromarray(_upscale(b[i], scale)), (x + cell_w + gap, y))
        draw.text((x + pair_w // 2, y + cell_h + 2), labels[i], fill="black", font=font,
                  anchor="ma")  # fmt: skip
    for k, line in enumerate(footer_lines):
        draw.text((pad, top + rows * row_h + k * line_h), line, fill="#555", font=font)
    return _save_png(np.asarray(canvas), path)


def save_captioned_grid(
    images: Any,
    path: PathLike,
    *,
    captions: Sequence[str],
    per_row: int = 6,
    title: str | None = None,
) -> Path:
    """PNG of images on white, each with its caption (wrapped) under it, ``per_row`` a row.

    ``images`` is an (N, C, H, W) batch in [-1, 1], drawn in colour when C = 3. Used by prompt
    adherence (each image drawn for a prompt, the prompt and the scorer's verdict under it).
    """
    pixels = to_uint8(images)  # (N, H, W, 3)
    n, h, w, _ = pixels.shape
    if n == 0 or len(captions) != n or per_row < 1:
        raise ValueError(
            f"save_captioned_grid needs a caption per image, got {n} images, {len(captions)} "
            f"captions and per_row={per_row}"
        )
    scale = _scale_for(w, PAIR_CELL_MIN_PX)
    cell_h, cell_w, pad = h * scale, w * scale, 10
    font = _font(11)
    line_h = font.getbbox("Ay0,")[3] + 3
    wrapped = [_wrap(text, font, cell_w + pad) for text in captions]
    label_h = max(len(lines) for lines in wrapped) * line_h
    cols, rows = min(per_row, n), math.ceil(n / per_row)
    width = pad + cols * (cell_w + pad)
    title_lines = _wrap(title, font, width - 2 * pad) if title else []
    top = pad + len(title_lines) * line_h
    row_h = cell_h + label_h + pad
    canvas = Image.new("RGB", (width, top + rows * row_h), "white")
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(title_lines):
        draw.text((pad, pad + k * line_h), line, fill="black", font=font)
    for i in range(n):
        x, y = pad + (i % cols) * (cell_w + pad), top + (i // cols) * row_h
        canvas.paste(Image.fromarray(_upscale(pixels[i], scale)), (x, y))
        for k, line in enumerate(wrapped[i]):
            draw.text((x + cell_w // 2, y + cell_h + 2 + k * line_h), line, fill="black",
                      font=font, anchor="ma")  # fmt: skip
    return _save_png(np.asarray(canvas), path)


# ---------------------------------------------------------------------------------------------
# GIFs
# ---------------------------------------------------------------------------------------------


def save_gif(
    frames: Sequence[Any],
    path: PathLike,
    *,
    nrow: int | None = None,
    duration: float = 0.08,
    final_hold: int = 10,
    min_width: int = 384,
) -> Path:
    """Animated, looping GIF: each frame (a batch) becomes a grid upscaled like ``save_grid``.

    Each frame shows for ``duration`` seconds and the last for ``final_hold`` times as long. The
    hold is one long frame, not repeated copies (Pillow merges identical frames anyway), so the
    file has ``len(frames)`` frames, fewer if consecutive frames are identical.
    """
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    if duration <= 0 or final_hold < 1:
        raise ValueError(
            f"expected duration > 0 and final_hold >= 1, got {duration} and {final_hold}"
        )
    grids = [make_grid(images, nrow=nrow) for images in frames]
    scale = _scale_for(grids[0].shape[1], min_width)
    stack = np.stack([_upscale(grid, scale) for grid in grids])  # (F, H, W, 3)
    ms = round(duration * 1000)
    durations = [ms] * (len(grids) - 1) + [ms * final_hold]
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, stack, extension=".gif", duration=durations, loop=0)
    return Path(path)


def save_denoising_gif(
    frames: Sequence[tuple[int, Any, Any]],
    path: PathLike,
    *,
    nrow: int | None = None,
    duration: float = 0.08,
    final_hold: int = 12,
) -> Path:
    """Animated GIF of sampling: x_t on the left, the network's predicted x0 on the right.

    ``frames`` is ``[(t, x_t batch, x0_pred batch), ...]`` as a sampler callback sees them
    (``t = -1`` for the final sample, shown on both sides). Early on x_t is noise while x0_pred
    already shows a blurry guess; the two meet at the end.
    """
    if not frames:
        raise ValueError("save_denoising_gif needs at least one frame")
    font = _font(14)
    pictures = []
    for t, x_t, x0 in frames:
        left, right = make_grid(x_t, nrow=nrow), make_grid(x0, nrow=nrow)
        scale = _scale_for(left.shape[1], 256)
        left, right = _upscale(left, scale), _upscale(right, scale)
        h, w, _ = left.shape
        canvas = Image.new("RGB", (2 * w + 12, h + 24), "white")
        canvas.paste(Image.fromarray(left), (0, 24))
        canvas.paste(Image.fromarray(right), (w + 12, 24))
        draw = ImageDraw.Draw(canvas)
        label = "sample" if t == -1 else f"x_t, t={t}"
        draw.text((w // 2, 12), label, fill="black", font=font, anchor="mm")
        draw.text((w + 12 + w // 2, 12), "predicted x0", fill="black", font=font, anchor="mm")
        pictures.append(np.asarray(canvas))
    ms = round(duration * 1000)
    durations = [ms] * (len(pictures) - 1) + [ms * final_hold]
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, np.stack(pictures), extension=".gif", duration=durations, loop=0)
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def _save_figure(fig: Figure, path: PathLike) -> Path:
    FigureCanvasAgg(fig)  # attach an Agg canvas: no pyplot, nothing global to close
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(path)


def plot_alpha_bar(schedules: Sequence[Schedule], path: PathLike) -> Path:
    """PNG of alpha_bar_t (solid) and sqrt(alpha_bar_t) (dashed) against t for each schedule."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for i, schedule in enumerate(schedules):
        color = f"C{i}"
        t = np.arange(schedule.num_timesteps)
        label = f"{schedule.name} (T={schedule.num_timesteps})"
        ax.plot(t, schedule.alpha_bar, color=color, label=rf"{label}: $\bar\alpha_t$")
        ax.plot(
            t,
            schedule.sqrt_alpha_bar,
            color=color,
            linestyle="--",
            label=rf"{label}: $\sqrt{{\bar\alpha_t}}$",
        )
    ax.set_xlabel("t (code index 0 .. T-1 = paper step t+1)")
    ax.set_ylabel(r"$\bar\alpha_t$ (signal kept)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Noise schedules")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save_figure(fig, path)


def smooth_curve(values: Sequence[float], window: int) -> np.ndarray:
    """The trend of a training curve: a local linear fit around each point, in log space when
    every value is positive (the loss plot's axis).

    Point i is the value at i of a least-squares line through the points ``i - h .. i + h``
    (cut at the ends of the curve), with ``h = min(window // 2, i // 3)``. It never lags: a
    trailing mean over ``window`` points lags a falling loss by ``window / 2`` points and draws
    its line far above them. The window narrows near the start, where the loss falls fastest,
    and a line (not a mean) over the one-sided window at the end follows the last points
    instead of bending towards the middle. Fitting ``log(loss)`` makes a loss that falls
    exponentially, a straight line on the log axis, come back exactly. Non-finite values are
    left out of the fits.
    """
    y = np.asarray(values, dtype=np.float64)
    n = len(y)
    w = np.isfinite(y).astype(np.float64)  # weight 0 leaves a point out
    positive = bool(np.all(y[w > 0] > 0))
    y = np.log(y, where=w > 0, out=np.zeros(n)) if positive else np.where(w > 0, y, 0.0)
    j = np.arange(n, dtype=np.float64)

    def window_sums(v: np.ndarray) -> np.ndarray:  # sum of v over each point's window
        csum = np.concatenate([[0.0], np.cumsum(v)])
        return csum[hi] - csum[lo]

    i = np.arange(n)
    half = np.minimum(window // 2, i // 3)
    lo, hi = np.maximum(i - half, 0), np.minimum(i + half + 1, n)
    # Sums of w, w*d, w*d^2, w*y, w*d*y over each window, with d = j - i the offset from point i.
    s_w, s_wj, s_wjj = window_sums(w), window_sums(w * j), window_sums(w * j * j)
    s_y, s_jy = window_sums(w * y), window_sums(w * j * y)
    s_d = s_wj - i * s_w
    s_dd = s_wjj - 2 * i * s_wj + i * i * s_w
    s_dy = s_jy - i * s_y
    det = s_w * s_dd - s_d * s_d
    with np.errstate(invalid="ignore", divide="ignore"):  # nan where a window has no point
        line_at_i = (s_dd * s_y - s_d * s_dy) / det  # intercept of the fitted line at d = 0
        trend = np.where(det > 1e-9 * np.maximum(s_w * s_dd, 1.0), line_at_i, s_y / s_w)
    return np.exp(trend) if positive else trend


def plot_loss(
    steps: Sequence[int], losses: Sequence[float], path: PathLike, *, window: int = 100
) -> Path:
    """PNG of the training loss: raw values faint, their trend bold, log y axis.

    The bold line is :func:`smooth_curve` over ``min(window, len(losses) // 5)`` points, which
    follows the loss instead of lagging it. The y axis is linear instead of log
    if any loss is <= 0.
    """
    steps_arr = np.asarray(steps, dtype=np.float64)
    loss_arr = np.asarray(losses, dtype=np.float64)
    if len(loss_arr) == 0 or steps_arr.shape != loss_arr.shape:
        raise ValueError(
            f"steps and losses must be non-empty and of equal length, "
            f"got {len(steps_arr)} and {len(loss_arr)}"
        )
    window = max(1, min(window, len(loss_arr) // 5))
    smooth = smooth_curve(loss_arr, window)

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    ax.plot(steps_arr, loss_arr, color="C0", alpha=0.3, linewidth=0.8, label="loss")
    ax.plot(steps_arr, smooth, color="C0", linewidth=2, label=f"trend ({window}-point local fit)")
    if np.all(loss_arr[np.isfinite(loss_arr)] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# The network's insides (difflab.insides computes, these draw)
# ---------------------------------------------------------------------------------------------


def _show_image(ax: Any, image: np.ndarray) -> None:
    """An (H, W, 3) uint8 image on an axis without ticks."""
    ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])


def _input_panel(fig: Figure, image: np.ndarray, t: int, i: int, rows: int, cols: int) -> None:
    """The first panel of row ``i``: the noised input x_t, labelled with its timestep."""
    ax = fig.add_subplot(rows, cols, i * cols + 1)
    _show_image(ax, image)
    ax.set_ylabel(f"t = {t}")
    if i == 0:
        ax.set_title("x_t", fontsize=8)


def plot_feature_maps(
    x_t: Any, timesteps: Sequence[int], levels: Sequence[Any], path: PathLike
) -> Path:
    """PNG grid: a row per timestep, the noised input then each U-Net level's feature energy.

    A level's panel is the per-pixel L2 norm of its feature vector (over channels), scaled to
    its own maximum: where the level's features are strong. ``levels`` are ``insides.Level``s.
    """
    images = to_uint8(x_t)  # (B, H, W, C)
    rows, cols = len(timesteps), 1 + len(levels)
    fig = Figure(figsize=(1.6 * cols, 1.6 * rows + 0.4))
    for i, t in enumerate(timesteps):
        _input_panel(fig, images[i], t, i, rows, cols)
        for j, level in enumerate(levels):
            energy = level.features[i].double().norm(dim=0).numpy()  # (h, w)
            ax = fig.add_subplot(rows, cols, i * cols + j + 2)
            ax.imshow(energy / max(energy.max(), 1e-12), cmap="magma", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{level.name}\n{level.features.shape[1]} ch", fontsize=8)
    fig.suptitle("Feature energy |h| per U-Net level (each panel scaled to its maximum)")
    return _save_figure(fig, path)


def plot_attention(
    x_t: Any,
    timesteps: Sequence[int],
    weights: Any,
    queries: Sequence[tuple[int, int]],
    query_rows: Sequence[int],
    path: PathLike,
) -> Path:
    """PNG grid: a row per timestep, a column per query pixel, the attention over the input.

    ``weights`` (B, hw, hw) are the bottleneck attention weights; ``query_rows`` the flattened
    bottleneck position of each query. The map is upsampled (nearest) onto the input, the query
    marked with a cross.
    """
    images = to_uint8(x_t)  # (B, H, W, C)
    size = images.shape[1]
    grid = math.isqrt(weights.shape[-1])
    rows, cols = len(timesteps), len(queries)
    fig = Figure(figsize=(max(2.2 * cols, 4.4), 2.0 * rows + 0.6))
    for i, t in enumerate(timesteps):
        for j, ((r, c), q) in enumerate(zip(queries, query_rows, strict=True)):
            attention = np.asarray(weights[i, q]).reshape(grid, grid)
            ax = fig.add_subplot(rows, cols, i * cols + j + 1)
            _show_image(ax, images[i])
            ax.imshow(attention, cmap="viridis", alpha=0.6, extent=(-0.5, size - 0.5, size - 0.5, -0.5),
                      interpolation="nearest")  # fmt: skip
            ax.plot([c], [r], marker="x", color="red", markersize=8, markeredgewidth=2)
            if i == 0:
                ax.set_title(f"query ({r}, {c})", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"t = {t}")
    fig.suptitle(f"Bottleneck attention ({grid}x{grid}):\nwhere each query pixel looks")
    return _save_figure(fig, path)


def plot_cross_attention(
    x_t: Any,
    timesteps: Sequence[int],
    maps: Any,
    tokens: Sequence[str],
    path: PathLike,
    *,
    prompt: str,
    blocks: Sequence[str],
) -> Path:
    """PNG grid: a row per timestep, the noised input then one panel per prompt token with the
    token's cross-attention weight at each pixel (``insides.cross_attention_maps``), each panel
    scaled to its own maximum (printed in its corner) and laid over the input in grey."""
    images = to_uint8(x_t)  # (B, H, W, C)
    weights = np.asarray(maps)  # (B, S, H, W)
    rows, cols = len(timesteps), 1 + len(tokens)
    fig = Figure(figsize=(1.5 * cols, 1.5 * rows + 0.8))
    for i, t in enumerate(timesteps):
        _input_panel(fig, images[i], t, i, rows, cols)
        grey = images[i].mean(-1)
        for j, token in enumerate(tokens):
            ax = fig.add_subplot(rows, cols, i * cols + j + 2)
            ax.imshow(grey, cmap="gray", vmin=0, vmax=255)
            top = float(weights[i, j].max())
            ax.imshow(weights[i, j] / max(top, 1e-12), cmap="magma", vmin=0, vmax=1, alpha=0.75)
            ax.text(0.5, 1.5, f"{top:.2f}", color="white", fontsize=6, va="top")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(token, fontsize=8)
    fig.suptitle(
        f'Cross-attention to "{prompt}": each token\'s weight at each pixel\n(mean over heads '
        f"and the blocks {', '.join(blocks)}; bright = looks at this token; max in the corner)",
        fontsize=8,
    )
    return _save_figure(fig, path)


def plot_similarity(
    t: np.ndarray, matrices: Sequence[tuple[str, np.ndarray]], path: PathLike
) -> Path:
    """PNG of cosine-similarity matrices side by side, both axes the timestep."""
    fig = Figure(figsize=(4.6 * len(matrices), 4.2))
    extent = (t[0], t[-1], t[-1], t[0])
    for j, (title, matrix) in enumerate(matrices):
        ax = fig.add_subplot(1, len(matrices), j + 1)
        image = ax.imshow(matrix, cmap="coolwarm", vmin=-1, vmax=1, extent=extent)
        ax.set_title(title)
        ax.set_xlabel("t")
        ax.set_ylabel("t")
        fig.colorbar(image, ax=ax, fraction=0.046, label="cosine similarity")
    return _save_figure(fig, path)


def plot_embedding_2d(
    points: np.ndarray, names: Sequence[str], share: np.ndarray, path: PathLike
) -> Path:
    """PNG scatter of labelled 2-D points (a projection), the axes' variance shares in labels."""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    ax.scatter(points[:, 0], points[:, 1], c=[f"C{i % 10}" for i in range(len(points))], s=60)
    for (px, py), name in zip(points, names, strict=True):
        ax.annotate(name, (px, py), textcoords="offset points", xytext=(5, 4), fontsize=9)
    ax.set_xlabel(f"principal axis 1 ({100 * share[0]:.0f}% of the variance)")
    ax.set_ylabel(f"principal axis 2 ({100 * share[1]:.0f}% of the variance)")
    ax.set_title("Class embeddings, projected onto their two principal axes")
    ax.grid(alpha=0.3)
    return _save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Run report
# ---------------------------------------------------------------------------------------------

_REPORT_CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.4; }
table { border-collapse: collapse; margin-bottom: 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.8rem; text-align: left; }
th { background: #f3f3f3; }
figure { margin: 0 0 1.5rem 0; }
figure img { max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }
figcaption { font-weight: 600; margin-bottom: 0.4rem; }
pre { background: #f6f6f6; padding: 1rem; overflow-x: auto; }
"""


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_report(
    run_dir: PathLike,
    *,
    title: str,
    summary: dict[str, Any],
    images: Sequence[tuple[str, str]],
    config: dict[str, Any] | None = None,
) -> Path:
    """Write ``run_dir/report.html``: title, summary table, captioned images, config as JSON.

    ``images`` are ``(caption, path)`` pairs; paths are written relative to ``run_dir`` (an
    absolute path inside ``run_dir`` is made relative), so the folder can be moved or zipped.
    The page has its CSS inline and needs nothing else; all text is HTML-escaped.
    """
    run_dir = Path(run_dir)
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        f"<style>{_REPORT_CSS}</style>",
        "</head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    if summary:
        parts.append("<h2>Summary</h2><table>")
        parts += [
            f"<tr><th>{esc(str(key))}</th><td>{esc(_format_value(value))}</td></tr>"
            for key, value in summary.items()
        ]
        parts.append("</table>")
    if images:
        parts.append("<h2>Images</h2>")
    for caption, image_path in images:
        rel = Path(image_path)
        if rel.is_absolute():
            rel = Path(os.path.relpath(rel, run_dir))
        src = quote(rel.as_posix())
        parts.append(
            f'<figure><figcaption>{esc(caption)}</figcaption><img src="{esc(src)}" '
            f'alt="{esc(caption)}"></figure>'
        )
    if config is not None:
        config_json = json.dumps(config, indent=2, default=str)
        parts.append(f"<h2>Configuration</h2><pre>{esc(config_json)}</pre>")
    parts.append("</body></html>")
    return write_text_atomic(run_dir / "report.html", "\n".join(parts) + "\n")
