"""Prompt adherence of captioned canvases (GenEval-style): does an image show what its caption says?

For the canvases of ``difflab.compose`` ("a red 3 left of a blue 7"), and for images a model
draws for such captions, ``score_canvases`` reads each image and judges it against its caption:

1. **find the digits**: pixels whose brightest channel exceeds ``THRESHOLD`` (the background is
   black) are ink; ink grown by one pixel is split into 8-connected components (so a stroke
   broken by a gap of up to two pixels stays one digit; the canvases keep ``compose.GAP`` = 3
   empty pixels between two digits); components of fewer than ``min_pixels`` ink pixels are
   specks of noise, not digits.
2. **read each digit** with an MNIST classifier, the project's evaluator (``mnist_classifier``):
   a window around the component's ink centroid, as wide as the digit box the canvas draws
   (half the canvas; wider if the ink needs it), masked to the component and resampled
   (bicubic) to MNIST's 28x28, grey = the brightest channel.
3. **read its colour**: the median chromaticity (RGB over the brightest channel) of its brighter
   ink pixels, matched to the nearest colour of ``compose.COLOURS``.
4. **judge**: the caption holds when as many digits are found as it names (no extra digit),
   each of its objects is found with its digit and colour, and for two objects the first stands
   in the relation to the second, judged from the two ink centroids along the axis on which
   they are farther apart (``relation_between``).

Its ceiling, measured on real canvases of MNIST's test digits by ``benchmarks/compose_scorer.py``
(docs/text.md), bounds what a model can be credited with.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from difflab.compose import COLOURS, KINDS, Caption, digit_size, parse_caption
from difflab.evaluation.evaluator import Evaluator

THRESHOLD = 0.3  # a pixel is ink when its brightest channel exceeds this (0..1)
MNIST_SIZE = 28  # the classifier's input
MNIST_INK = 20  # MNIST digits are scaled into a 20x20 box of their 28x28 image

# Images (M, 1, 28, 28) float32 in [-1, 1] -> scores (M, 10), the largest for the digit read.
Classify = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Detection:
    """A digit found on a canvas."""

    digit: int  # what the classifier reads
    colour: str  # the nearest colour of compose.COLOURS
    centre: tuple[float, float]  # (x, y) of the ink centroid, pixels (x right, y down)
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) of its ink pixels, end exclusive
    pixels: int  # its ink pixels

    @property
    def text(self) -> str:
        return f"a {self.colour} {self.digit}"


@dataclass(frozen=True)
class Verdict:
    """Whether an image shows its caption, and why not."""

    correct: bool  # every clause holds and nothing extra is there
    reason: str  # "ok", or the first clause that failed, in words
    detections: tuple[Detection, ...]  # what was found, left to right
    count_ok: bool  # as many digits as the caption names
    objects_ok: tuple[bool, ...]  # each object of the caption is found (digit and colour)
    relation_ok: bool | None  # the first object is in the relation to the second; None for one
    # object, or when the two are not both found
    failure: str | None  # the first clause that failed: "count", "object", "relation"; None: ok


def relation_between(a: tuple[float, float], b: tuple[float, float]) -> str:
    """Where the point ``a`` is from ``b``: "left of", "right of", "above" or "below", along the
    axis on which they are farther apart (ties: horizontal). y grows downwards."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def judge(caption: Caption | str, detections: Sequence[Detection]) -> Verdict:
    """The verdict on one image: its ``detections`` against ``caption``."""
    caption = parse_caption(caption) if isinstance(caption, str) else caption
    found = tuple(detections)
    wanted = caption.objects

    def matches(d: Detection, i: int) -> bool:
        return d.digit == wanted[i].digit and d.colour == wanted[i].colour

    objects_ok = tuple(any(matches(d, i) for d in found) for i in range(len(wanted)))
    count_ok = len(found) == len(wanted)
    relation_ok: bool | None = None
    reason, failure = "ok", None
    if caption.relation is not None:
        pairs = [
            (a, b) for a in found for b in found if a is not b and matches(a, 0) and matches(b, 1)
        ]
        if pairs:
            relation_ok = any(
                relation_between(a.centre, b.centre) == caption.relation for a, b in pairs
            )
        if relation_ok is False:
            a, b = pairs[0]
            where = relation_between(a.centre, b.centre)
            reason, failure = f"{a.text} is {where} {b.text}, not {caption.relation}", "relation"
    if not all(objects_ok):
        names = " and ".join(d.text for d in found) or "no digit"
        reason, failure = f"found {names}; no {wanted[objects_ok.index(False)].text}", "object"
    if not count_ok:
        reason, failure = f"found {len(found)} digit(s), the caption names {len(wanted)}", "count"
    correct = count_ok and all(objects_ok) and (caption.relation is None or relation_ok is True)
    return Verdict(correct, reason, found, count_ok, objects_ok, relation_ok, failure)


def score_canvases(
    images: np.ndarray,
    captions: Sequence[Caption | str],
    classify: Classify,
    *,
    threshold: float = THRESHOLD,
    min_pixels: int | None = None,
    box: int | None = None,
) -> list[Verdict]:
    """Judge each image (N, 3, S, S) in [-1, 1] against its caption (see the module docstring).

    classify: reads digits (``mnist_classifier(evaluator)``, or any function of that shape).
    min_pixels: the fewest ink pixels of a digit (default ``default_min_pixels(S)``).
    box: the digit box the canvases are drawn with (default ``compose.digit_size(S)``).
    """
    if len(captions) != len(images):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    found = read_canvases(images, classify, threshold=threshold, min_pixels=min_pixels, box=box)
    return [judge(c, d) for c, d in zip(captions, found, strict=True)]


def default_min_pixels(image_size: int) -> int:
    """The fewest ink pixels a component needs to count as a digit on an ``image_size`` canvas:
    about half of the thinnest real digits' (a "1" of MNIST's test split has 11 or more at
    32 px, 23 at 48), so that specks of noise are no digits while a thin digit still is."""
    return max(3, round(6 * (digit_size(image_size) / 16) ** 2))


def read_canvases(
    images: np.ndarray,
    classify: Classify,
    *,
    threshold: float = THRESHOLD,
    min_pixels: int | None = None,
    box: int | None = None,
) -> list[tuple[Detection, ...]]:
    """The digits on each image (N, 3, S, S) in [-1, 1], left to right (``score_canvases``
    explains the arguments)."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"canvases must be (N, 3, S, S) RGB images, got shape {images.shape}")
    size = images.shape[-1]
    min_pixels = default_min_pixels(size) if min_pixels is None else min_pixels
    box = digit_size(size) if box is None else box
    rgb = np.clip((images.astype(np.float64) + 1) / 2, 0.0, 1.0)  # (N, 3, S, S)
    grey = rgb.max(1)  # (N, S, S)
    ink = grey > threshold
    regions = _label(_dilate(ink))  # (N, S, S): 0 background, else a component's label

    # Each component big enough: its mask, ink box, centroid and colour.
    rows, cols = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    found: list[_Component] = []
    for n in range(len(images)):
        for label in np.unique(regions[n])[1:]:
            region = regions[n] == label
            core = region & ink[n]
            if core.sum() < min_pixels:
                continue
            ys, xs = np.nonzero(core)
            weights = grey[n] * region
            mass = weights.sum()
            found.append(
                _Component(
                    image=n,
                    region=region,
                    box=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
                    centre=(
                        float((cols * weights).sum() / mass),
                        float((rows * weights).sum() / mass),
                    ),
                    colour=_colour(rgb[n][:, core], grey[n][core]),
                    pixels=int(core.sum()),
                )
            )
    if not found:
        return [() for _ in images]

    # Read every digit at once.
    crops = _crops(grey, found, box)  # (M, 1, 28, 28) in [-1, 1]
    scores = np.asarray(classify(crops))
    if scores.shape != (len(crops), 10):
        raise ValueError(
            f"the classifier gave scores of shape {scores.shape}; expected ({len(crops)}, 10)"
        )
    out: list[list[Detection]] = [[] for _ in images]
    for c, digit in zip(found, scores.argmax(1), strict=True):
        out[c.image].append(Detection(int(digit), c.colour, c.centre, c.box, c.pixels))
    return [tuple(sorted(d, key=lambda d: d.centre)) for d in out]


@dataclass(frozen=True, eq=False)
class _Component:
    """A digit found on canvas ``image``, before it is read."""

    image: int
    region: np.ndarray  # (S, S) bool: its ink grown by a pixel
    box: tuple[int, int, int, int]
    centre: tuple[float, float]
    colour: str
    pixels: int


def _dilate(mask: np.ndarray) -> np.ndarray:
    """(N, H, W) bool grown by one pixel in all eight directions."""
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    h, w = mask.shape[1:]
    return np.any([padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=0)


def _label(mask: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> int labels of its 8-connected components (0: background): every pixel
    takes the largest label among its neighbours until nothing changes."""
    h, w = mask.shape[1:]
    labels = np.where(mask, np.arange(1, h * w + 1).reshape(1, h, w), 0)
    while True:
        padded = np.pad(labels, ((0, 0), (1, 1), (1, 1)))
        grown = np.max(
            [padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=0
        )
        grown = np.where(mask, grown, 0)
        if np.array_equal(grown, labels):
            return labels
        labels = grown


_PALETTE = np.array(list(COLOURS.values()), np.float64)  # (K, 3)
_CHROMA = _PALETTE / _PALETTE.max(1, keepdims=True)  # each colour over its brightest channel


def _colour(rgb: np.ndarray, grey: np.ndarray) -> str:
    """The palette colour of ink pixels ``rgb`` (3, P) with brightness ``grey`` (P,): the median
    chromaticity of the brighter half of their range, nearest in RGB."""
    bright = grey >= 0.5 * grey.max()
    chroma = np.median(rgb[:, bright] / grey[bright], axis=1)  # (3,)
    return list(COLOURS)[int(((_CHROMA - chroma) ** 2).sum(1).argmin())]


def _crops(grey: np.ndarray, found: list[_Component], box: int) -> np.ndarray:
    """MNIST-sized (M, 1, 28, 28) views of the components: a window centred on each centroid,
    ``box`` pixels wide (or 28/20 of its ink's longer side if that is wider), resampled."""
    size = grey.shape[-1]
    masked = np.stack([grey[c.image] * c.region for c in found])[:, None]  # (M, 1, S, S)
    grids = []
    for c in found:
        (x0, y0, x1, y1), (cx, cy) = c.box, c.centre
        side = max(box, max(x1 - x0, y1 - y0) * MNIST_SIZE / MNIST_INK)
        # MNIST puts the ink centroid at the centre of pixel 14 (14.5, 14.5), not at 14.0.
        u = (np.arange(MNIST_SIZE) - MNIST_SIZE // 2) / MNIST_SIZE  # (28,) window coordinates
        xs, ys = cx + u * side, cy + u * side  # pixel coordinates
        gx, gy = np.meshgrid(2 * xs / size - 1, 2 * ys / size - 1)  # grid_sample's [-1, 1]
        grids.append(np.stack([gx, gy], -1))  # (28, 28, 2)
    sampled = F.grid_sample(
        torch.from_numpy(masked).float(), torch.from_numpy(np.stack(grids)).float(),
        mode="bicubic", padding_mode="zeros", align_corners=False,
    )  # fmt: skip
    return (2 * sampled.clamp(0, 1) - 1).numpy()  # (M, 1, 28, 28)


def mnist_classifier(evaluator: Evaluator, *, shifts: bool = True) -> Classify:
    """The project's MNIST evaluator (``difflab train-evaluator --data mnist``) as a digit reader.

    shifts: average the log-probabilities over the nine one-pixel shifts of each crop (a digit
    redrawn from a 16 px canvas is blurrier than MNIST's; this takes back part of the loss).
    """
    classes = tuple(evaluator.info.get("class_names") or ())
    fits = not evaluator.is_inception and (
        evaluator.config.image_size, evaluator.config.in_channels, classes
    ) == (MNIST_SIZE, 1, tuple("0123456789"))  # fmt: skip
    if not fits:
        raise ValueError(
            f"the adherence scorer reads digits with an MNIST evaluator (28 px, grey, classes "
            f"0..9; difflab train-evaluator --data mnist); {evaluator.path or 'this evaluator'} "
            f"is trained on {evaluator.info.get('data')!r}"
        )
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)] if shifts else [(0, 0)]

    @torch.no_grad()
    def classify(crops: np.ndarray) -> np.ndarray:
        evaluator.model.eval()
        x = torch.from_numpy(np.ascontiguousarray(crops, np.float32)).to(evaluator.device)
        padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
        total = torch.zeros(len(x), 10, device=evaluator.device)
        for dy, dx in offsets:
            view = padded[:, :, 1 + dy : 1 + dy + MNIST_SIZE, 1 + dx : 1 + dx + MNIST_SIZE]
            total += F.log_softmax(evaluator.model(view).float(), 1)
        return total.cpu().numpy()

    return classify


def adherence_summary(
    verdicts: Sequence[Verdict],
    captions: Sequence[Caption | str],
    held_out: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """Accuracy (the share of correct verdicts) overall, per kind of caption, for held-out and
    seen captions (if ``held_out`` is given), per clause (the relation where both objects were
    found), and how many failed at each clause."""
    if len(verdicts) != len(captions):
        raise ValueError(f"{len(verdicts)} verdicts but {len(captions)} captions")
    kinds = [(parse_caption(c) if isinstance(c, str) else c).kind for c in captions]

    def accuracy(keep: Sequence[bool]) -> dict[str, Any]:
        chosen = [v.correct for v, k in zip(verdicts, keep, strict=True) if k]
        return {"n": len(chosen), "accuracy": _mean(chosen)}

    out: dict[str, Any] = accuracy([True] * len(verdicts))
    out["by_kind"] = {k: accuracy([q == k for q in kinds]) for k in KINDS if k in kinds}
    if held_out is not None:
        out["seen"] = accuracy([not h for h in held_out])
        out["held_out"] = accuracy([bool(h) for h in held_out])
    out["clauses"] = {
        "count": _mean([v.count_ok for v in verdicts]),
        "objects": _mean([ok for v in verdicts for ok in v.objects_ok]),
        "relation": _mean([v.relation_ok for v in verdicts if v.relation_ok is not None]),
    }
    out["failures"] = dict(Counter(v.failure for v in verdicts if v.failure).most_common())
    return out


def _mean(values: Sequence[bool]) -> float | None:
    return round(float(np.mean(values)), 4) if len(values) else None
