"""Colour emoji prompts: is the shape drawn for "purple square" purple?

A text model trained on the colour emoji (``train --data emoji-datasource --text``) is asked for
the 21 captions of ``data.emoji_grid`` ("<colour> <shape>", 7 colours by 3 shapes). Some of them
never appeared in its training captions: ``data.EMOJI_HELD_OUT`` on purpose, and those whose
emoji the identity split put in the test split. Drawing those needs the words combined.

The judge reads the *colour* of a drawing, not its shape: the pixels that differ from the white
background (``FOREGROUND``) are the shape, their median RGB is its colour, and the colour is
named by the nearest real grid image's (both vendors' drawings of all 21 captions, of both
splits: ``colour_references``). The judge's own ceiling is its leave-one-out accuracy on those
real images (``reference_accuracy``): each named by the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from difflab.data import (
    EMOJI_COLOURS,
    EMOJI_DATASOURCE,
    ImageDataset,
    emoji_caption,
    emoji_grid,
    load_dataset,
    text_training_data,
)

FOREGROUND = 0.2  # a pixel is drawn when its mean distance from white exceeds this ([0, 1] units)
MIN_FOREGROUND = 0.05  # a drawing covers at least this share of the image, else "nothing drawn"


@dataclass(frozen=True)
class ColourReferences:
    """The real grid images' shape colours and what they are: the judge's yardstick."""

    colours: np.ndarray  # (M, 3) median RGB in [0, 1] of each real image's shape
    names: tuple[str, ...]  # the colour word of each (its caption's first word)
    captions: tuple[str, ...]  # the caption of each


def shape_colours(images: np.ndarray) -> np.ndarray:
    """(N, 3) median RGB in [0, 1] of the drawn pixels of each image (N, 3, S, S) in [-1, 1];
    NaN for an image with less than ``MIN_FOREGROUND`` of it drawn."""
    rgb = (np.clip(images, -1, 1) + 1) / 2  # (N, 3, S, S) in [0, 1]
    drawn = (1 - rgb).mean(axis=1) > FOREGROUND  # (N, S, S): far from the white background
    out = np.full((len(images), 3), np.nan)
    for i, mask in enumerate(drawn):
        if mask.mean() >= MIN_FOREGROUND:
            out[i] = np.median(rgb[i][:, mask], axis=1)
    return out


def colour_references(*datasets: ImageDataset) -> ColourReferences:
    """The grid images among ``datasets`` (emoji-datasource splits, any vendors, one size),
    captioned by ``data.emoji_caption``, with their shapes' colours."""
    grid = set(emoji_grid())
    images, captions = [], []
    for dataset in datasets:
        if dataset.names is None:
            raise ValueError(f"{dataset.name} has no names to find the coloured shapes by")
        for image, name in zip(dataset.images, dataset.names, strict=True):
            if emoji_caption(name) in grid:
                images.append(image)
                captions.append(emoji_caption(name))
    if not images:
        raise ValueError('no coloured shapes ("red heart", ...) among the emoji given')
    colours = shape_colours(np.stack(images))
    return ColourReferences(colours, tuple(c.split()[0] for c in captions), tuple(captions))


def name_colours(colours: np.ndarray, references: ColourReferences) -> list[str | None]:
    """The colour word of each (N, 3) colour: its nearest reference's (Euclidean in RGB);
    None for NaN (nothing drawn)."""
    out: list[str | None] = []
    for colour in colours:
        if np.isnan(colour).any():
            out.append(None)
            continue
        distance = np.linalg.norm(references.colours - colour, axis=1)
        out.append(references.names[int(np.argmin(distance))])
    return out


def reference_accuracy(references: ColourReferences) -> float:
    """The judge's ceiling: the share of real grid images whose colour is named right by the
    other real images (leave one out)."""
    right = 0
    for i in range(len(references.names)):
        keep = np.arange(len(references.names)) != i
        others = ColourReferences(
            references.colours[keep], tuple(np.array(references.names)[keep]), ()
        )
        right += name_colours(references.colours[i : i + 1], others)[0] == references.names[i]
    return right / len(references.names)


def grid_split(training_captions: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The grid captions seen in training and those never seen (held out on purpose, or whose
    emoji are in the test split), each in ``emoji_grid`` order."""
    trained = set(training_captions)
    grid = emoji_grid()
    return tuple(c for c in grid if c in trained), tuple(c for c in grid if c not in trained)


def grid_prompts(num_images: int) -> tuple[str, ...]:
    """``num_images`` prompts: the grid's captions in turn, so each is asked about as often."""
    grid = emoji_grid()
    return tuple(grid[i % len(grid)] for i in range(num_images))


def colour_prompt_setup(
    data_dir: str | None, image_size: int, vendors: str | None
) -> tuple[ColourReferences, tuple[str, ...]]:
    """For a model trained on the colour emoji in ``data_dir`` (its vendors, at its size): the
    judge's references (the real grid images of both splits) and the grid prompts its training
    captions never held."""
    splits = [
        load_dataset(EMOJI_DATASOURCE, data_dir=data_dir, image_size=image_size,
                     vendors=vendors, split=split)
        for split in ("train", "test")
    ]  # fmt: skip
    _, held_out = grid_split(text_training_data(splits[0]).names or ())
    return colour_references(*splits), held_out


@dataclass(frozen=True)
class ColourPromptReport:
    """Images drawn for grid prompts, and the colours the judge named."""

    images: np.ndarray  # (N, 3, S, S) in [-1, 1]
    prompts: tuple[str, ...]  # image i was drawn for prompts[i]
    held_out: np.ndarray  # (N,) bool: prompts[i] was never a training caption
    named: tuple[str | None, ...]  # the judge's colour word for image i (None: nothing drawn)
    summary: dict[str, Any]


def score_colour_prompts(
    images: np.ndarray,
    prompts: Sequence[str],
    held_out: Sequence[str],
    references: ColourReferences,
) -> ColourPromptReport:
    """Judge ``images`` (N, 3, S, S) drawn for ``prompts`` (grid captions); ``held_out``: the
    captions never seen in training. The summary: the share drawn in the asked colour, over all,
    seen and held-out prompts, per prompt, and the judge's ceiling on real images."""
    unknown = sorted(set(prompts) - set(emoji_grid()))
    if unknown:
        raise ValueError(f"not grid prompts ('<colour> <shape>'): {', '.join(unknown)}")
    named = tuple(name_colours(shape_colours(images), references))
    right = np.array([n == p.split()[0] for n, p in zip(named, prompts, strict=True)])
    unseen = np.array([p in set(held_out) for p in prompts])

    def share(keep: np.ndarray) -> dict[str, Any]:
        n = int(keep.sum())
        return {"accuracy": float(right[keep].mean()) if n else None, "n": n}

    summary: dict[str, Any] = {
        **share(np.ones(len(prompts), bool)),
        "seen": share(~unseen),
        "held_out": share(unseen),
        "held_out_prompts": sorted(set(held_out)),
        "by_prompt": {
            p: share(np.array([q == p for q in prompts])) for p in dict.fromkeys(prompts)
        },
        "nothing_drawn": int(sum(n is None for n in named)),
        "judge_ceiling": reference_accuracy(references),
        "colours": list(EMOJI_COLOURS),
    }
    return ColourPromptReport(images, tuple(prompts), unseen, named, summary)


def format_colour_prompts(summary: dict[str, Any]) -> str:
    """The report's lines: the share in the asked colour, seen against held out, per prompt."""

    def pct(entry: dict[str, Any]) -> str:
        acc = entry["accuracy"]
        return f"{'-' if acc is None else f'{100 * acc:.1f}%'} of {entry['n']}"

    held = set(summary["held_out_prompts"])
    lines = [
        "colour accuracy (share of images whose shape is drawn in the asked colour)",
        f"  all prompts       {pct(summary)}",
        f"  seen prompts      {pct(summary['seen'])}",
        f"  held-out prompts  {pct(summary['held_out'])}  ({', '.join(sorted(held))})",
        f"  judge's ceiling on the real images: {100 * summary['judge_ceiling']:.1f}%; "
        f"nothing drawn: {summary['nothing_drawn']}",
        "  per prompt: " + ", ".join(
            f"{p}{'*' if p in held else ''} {pct(e)}" for p, e in summary["by_prompt"].items()
        ),
    ]  # fmt: skip
    return "\n".join(lines)


def save_colour_prompts_picture(
    report: ColourPromptReport, path: str | Path, per_prompt: int = 4
) -> Path:
    """PNG with ``per_prompt`` images of each prompt, captioned with the prompt (``held out:``
    when unseen) and the colour the judge named."""
    from difflab.viz import save_captioned_grid

    chosen = [
        i for p in dict.fromkeys(report.prompts)
        for i in [j for j, q in enumerate(report.prompts) if q == p][:per_prompt]
    ]  # fmt: skip
    labels = [
        f"{'held out: ' if report.held_out[i] else ''}{report.prompts[i]} "
        f"[{report.named[i] or 'nothing'}]"
        for i in chosen
    ]
    title = "Drawn for the colour-shape prompts; [the colour the judge named]"
    return save_captioned_grid(report.images[chosen], path, captions=labels, title=title)
