"""The memorisation check: are generated images nearer to the training set than new real images?

A model that memorises draws copies of its training images. Whether a sample is "near" a
training image means little on its own (emoji on a white background are all near each other in
pixel space), so the check calibrates distance on held-out real images, the test split the model
never saw: they show how near a training image an image lies that is *not* a copy. For every
generated image and every held-out image, ``memorisation_check`` finds the nearest training image
(Euclidean distance, in pixel space or in the evaluator's features) and compares the two sets of
distances:

- **median ratio**: the median generated distance over the median held-out distance. About 1:
  samples lie as far from the training set as new real images do; well below 1: the model
  reproduces training images; 0: its typical sample is an exact copy.
- **likely copies**: generated images nearer to a training image than 95% of held-out images are
  (at or below the held-out distances' 5th percentile). About 5% are expected of a model that
  does not copy (held-out images themselves score 5%); every exact copy is one.

This is the simplest form of the check of Carlini et al. (2023, "Extracting training data from
diffusion models") and Somepalli et al. (2023, "Diffusion art or digital forgery?"), who search a
model's samples for training images; their stronger copy detectors (calibrated distance ratios,
SSCD features) catch copies that are shifted or recoloured, which pixel distance does not.
``save_memorisation_picture`` draws the closest pairs, so the verdict can be looked at.

Nearest neighbours are computed by ``nearest_neighbours`` with torch, in blocks of both sets, so
memory stays bounded whatever their sizes, on any device; the result is exact in float64.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

COPY_QUANTILE = 0.05  # nearer than this quantile of the held-out distances = a likely copy
BLOCK_FLOATS = 1 << 24  # a block of rows holds about this many float32 numbers (64 MB)
CANDIDATES = 8  # nearest rows kept per query from the float32 screen, then ranked in float64
SPACES = ("pixels", "features")


def _rows(x: Any, what: str) -> np.ndarray:
    """Images (N, C, H, W) or feature rows (N, D) as a float32 (N, D) array, checked."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    a = np.asarray(x)
    if a.ndim < 2 or len(a) == 0 or a.dtype.kind not in "fiu":
        raise ValueError(
            f"{what} must be a non-empty batch of numbers, one row or image per item, got an "
            f"array of shape {a.shape} and dtype {a.dtype}"
        )
    rows = np.ascontiguousarray(a.reshape(len(a), -1), dtype=np.float32)
    if not np.isfinite(rows).all():
        raise ValueError(f"{what} hold NaN or infinite values")
    return rows


def nearest_neighbours(
    query: Any,
    reference: Any,
    *,
    device: str | torch.device = "cpu",
    block_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance (N,) from each query item to its nearest reference item, and that
    item's index (N,) in ``reference``.

    Items are images (N, C, H, W) or feature rows (N, D), compared flattened; both sets must have
    the same item shape. The search runs in blocks of ``block_rows`` query and reference rows
    (default: about 64 MB of float32 each), so memory stays bounded for any set sizes: on
    ``device``, squared distances |q - c|^2 + |r - c|^2 - 2 (q - c).(r - c), with c the reference
    mean (centring keeps float32 rounding small), screen the ``CANDIDATES`` nearest rows of each
    query; their distances are then recomputed exactly in float64, so an exact copy is at distance
    0 and ties go to the lowest index. Items are compared as float32 values, the precision of
    difflab's images and features.
    """
    q, r = _rows(query, "query"), _rows(reference, "reference")
    if q.shape[1] != r.shape[1]:
        raise ValueError(
            f"query items of shape {np.shape(query)[1:]} and reference items of shape "
            f"{np.shape(reference)[1:]} differ; both sets must be of one image size and channels"
        )
    dim = q.shape[1]
    block = block_rows or min(4096, max(16, BLOCK_FLOATS // dim))
    if block < 1:
        raise ValueError(f"block_rows must be at least 1, got {block_rows}")
    dev = torch.device(device)
    centre = r.mean(axis=0, dtype=np.float64).astype(np.float32)  # (D,)
    k = min(CANDIDATES, len(r))
    distance, index = np.empty(len(q)), np.empty(len(q), dtype=np.int64)
    with torch.no_grad():
        for qs in range(0, len(q), block):
            qb = torch.from_numpy(q[qs : qs + block] - centre).to(dev)  # (b, D)
            q_sq = (qb * qb).sum(1, keepdim=True)  # (b, 1)
            best_d2 = torch.empty(len(qb), 0, device=dev)  # (b, <= k) screened squared distances
            best_idx = torch.empty(len(qb), 0, dtype=torch.long, device=dev)  # (b, <= k)
            for rs in range(0, len(r), block):
                rb = torch.from_numpy(r[rs : rs + block] - centre).to(dev)  # (m, D)
                d2 = q_sq + (rb * rb).sum(1)[None] - 2.0 * (qb @ rb.T)  # (b, m)
                vals, idx = torch.topk(d2, min(k, d2.shape[1]), dim=1, largest=False)
                best_d2 = torch.cat([best_d2, vals], 1)
                best_idx = torch.cat([best_idx, idx + rs], 1)
                if best_d2.shape[1] > k:
                    best_d2, keep = torch.topk(best_d2, k, dim=1, largest=False)  # (b, k)
                    best_idx = torch.gather(best_idx, 1, keep)
            candidates = np.sort(best_idx.cpu().numpy(), axis=1)  # (b, k): lowest index first
            exact = np.empty(candidates.shape)  # (b, k) squared distances in float64
            q64 = q[qs : qs + block].astype(np.float64)  # (b, D)
            for j in range(candidates.shape[1]):
                diff = q64 - r[candidates[:, j]].astype(np.float64)  # (b, D)
                exact[:, j] = np.einsum("ij,ij->i", diff, diff)
            nearest = exact.argmin(axis=1)  # the first of equal distances: the lowest index
            rows = np.arange(len(candidates))
            distance[qs : qs + block] = np.sqrt(exact[rows, nearest])
            index[qs : qs + block] = candidates[rows, nearest]
    return distance, index


@dataclass(frozen=True)
class MemorisationCheck:
    """Each generated and each held-out image's nearest training image, and what they say."""

    space: str  # "pixels" (images in [-1, 1], flattened) or "features" (the evaluator's)
    generated_distance: np.ndarray  # (N,) Euclidean distance to the nearest training image
    generated_index: np.ndarray  # (N,) that training image's index
    held_out_distance: np.ndarray  # (M,) the same for each held-out (test) image
    held_out_index: np.ndarray  # (M,)
    num_train: int  # training images searched
    quantile: float = COPY_QUANTILE  # held-out quantile below which a sample is a likely copy

    @property
    def threshold(self) -> float:
        """The held-out distances' ``quantile``: a sample at or below it is a likely copy."""
        return float(np.quantile(self.held_out_distance, self.quantile))

    @property
    def likely_copies(self) -> np.ndarray:
        """(N,) bool: is the generated image at or below ``threshold`` from the training set?"""
        return self.generated_distance <= self.threshold

    def closest(self, n: int) -> np.ndarray:
        """Indices of the ``n`` generated images nearest to the training set, nearest first."""
        return np.argsort(self.generated_distance, kind="stable")[:n]

    def summary(self) -> dict[str, Any]:
        """The numbers ``difflab evaluate --memorisation`` reports (plain floats and ints)."""
        gen, held = self.generated_distance, self.held_out_distance
        median_gen, median_held = float(np.median(gen)), float(np.median(held))
        ratio = median_gen / median_held if median_held > 0 else math.inf
        copies = self.likely_copies
        return {
            "space": self.space,
            "generated_median": median_gen,
            "held_out_median": median_held,
            "median_ratio": ratio,
            "generated_min": float(gen.min()),
            "held_out_min": float(held.min()),
            "copy_quantile": self.quantile,
            "copy_threshold": self.threshold,
            "likely_copies": int(copies.sum()),
            "likely_copy_fraction": float(copies.mean()),
            "exact_copies": int((gen == 0).sum()),
            "num_generated": len(gen),
            "num_held_out": len(held),
            "num_train": self.num_train,
        }


def memorisation_check(
    generated: Any,
    train: Any,
    held_out: Any,
    *,
    space: str = "pixels",
    quantile: float = COPY_QUANTILE,
    device: str | torch.device = "cpu",
    block_rows: int | None = None,
) -> MemorisationCheck:
    """Nearest training image of every generated and every held-out image, compared.

    ``generated``, ``train`` and ``held_out`` are images (N, C, H, W) in [-1, 1] for ``space =
    "pixels"``, or their feature rows (N, D) for ``"features"``; the held-out images are real
    images that were not trained on (the test split). Distances are Euclidean, exact in float64
    (``nearest_neighbours``).
    """
    if space not in SPACES:
        raise ValueError(f"unknown space {space!r}; expected one of {', '.join(SPACES)}")
    if not 0 < quantile < 1:
        raise ValueError(f"the copy quantile must lie strictly between 0 and 1, got {quantile}")
    shapes = {name: np.shape(x)[1:] for name, x in
              (("generated", generated), ("training", train), ("held-out", held_out))}  # fmt: skip
    if len(set(shapes.values())) != 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"the images to compare differ in shape ({listed}); they must match")
    kwargs: dict[str, Any] = dict(device=device, block_rows=block_rows)
    gen_d, gen_i = nearest_neighbours(generated, train, **kwargs)
    held_d, held_i = nearest_neighbours(held_out, train, **kwargs)
    return MemorisationCheck(
        space=space, generated_distance=gen_d, generated_index=gen_i, held_out_distance=held_d,
        held_out_index=held_i, num_train=len(train), quantile=quantile,
    )  # fmt: skip


def save_memorisation_picture(
    check: MemorisationCheck,
    generated: Any,
    train: Any,
    path: str | os.PathLike[str],
    *,
    num_pairs: int = 16,
    attribution: str | None = None,
) -> Path:
    """PNG of the ``num_pairs`` generated images nearest to the training set, closest first, each
    beside its nearest training image, labelled with the distance (``*``: a likely copy).

    ``generated`` and ``train`` are the images (N, C, H, W) in [-1, 1] that ``check`` indexes
    (for a feature-space check, the images behind the features); colour images are drawn in
    colour. ``attribution`` is printed under the pairs (the data's licence may ask for it).
    """
    from difflab import viz  # matplotlib and Pillow: only when a picture is drawn

    if num_pairs < 1:
        raise ValueError(f"the picture needs at least 1 pair, got {num_pairs}")
    gen, ref = np.asarray(generated), np.asarray(train)
    if len(gen) != len(check.generated_distance) or len(ref) != check.num_train:
        raise ValueError(
            f"the check covers {len(check.generated_distance)} generated and {check.num_train} "
            f"training images, but {len(gen)} and {len(ref)} were given to draw"
        )
    order = check.closest(num_pairs)
    copies = check.likely_copies
    labels = [
        f"d={check.generated_distance[i]:.3g}{'*' if copies[i] else ''} train #{check.generated_index[i]}"
        for i in order
    ]
    title = (
        f"The {len(order)} of {len(gen)} generated images nearest to the training set "
        f"({check.space}), each beside its nearest training image (train #index), closest "
        "first. "
        f"Held-out test images lie at median d={np.median(check.held_out_distance):.3g} from "
        f"it; * = a likely copy, at or below their {100 * check.quantile:g}th percentile "
        f"d={check.threshold:.3g}."
    )
    return viz.save_image_pairs(
        gen[order], ref[check.generated_index[order]], path, labels=labels, title=title,
        footer=attribution,
    )  # fmt: skip


def format_memorisation(summaries: Sequence[dict[str, Any]]) -> str:
    """The memorisation check as ``difflab evaluate`` prints it: a few lines per space."""
    lines = ["memorisation check: distance to the nearest training image"]
    for s in summaries:
        lines += [
            f"  {s['space']}: median {s['generated_median']:.4g} vs held-out test images "
            f"{s['held_out_median']:.4g} (ratio {s['median_ratio']:.3f}; ~1 = no copying, "
            "well below 1 = copying)",
            f"  {s['space']}: likely copies {s['likely_copies']} of {s['num_generated']} "
            f"({100 * s['likely_copy_fraction']:.1f}%; nearer than {100 * (1 - s['copy_quantile']):g}"
            f"% of test images, ~{100 * s['copy_quantile']:g}% expected), exact copies "
            f"{s['exact_copies']}",
        ]
    return "\n".join(lines)
