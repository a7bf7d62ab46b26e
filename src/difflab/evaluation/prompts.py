"""A text model's prompt adherence: draw an image for each of many captions, and score them.

``adherence_captions`` picks the prompts: as many held-out captions (combinations training
never saw, ``compose.DEFAULT_SPLIT``) as seen ones, each set picked as ``compose.draw_canvases``
picks captions (a kind first, one digit or one of the four relations equally often, then a
caption of that kind). ``prompt_request`` asks for one image per caption, drawn through the
model's sampling plan (the same plan ``difflab sample --prompt`` uses), and ``score_prompts``
judges each with ``adherence.score_canvases``, the MNIST evaluator reading the digits; its
summary gives the accuracy overall, per kind and for seen against held-out captions. The scorer's own ceiling on
real canvases (about 98%, docs/text.md) bounds what a model can score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from difflab import compose
from difflab.compose import Caption
from difflab.evaluation.adherence import (
    Verdict,
    adherence_summary,
    mnist_classifier,
    score_canvases,
)
from difflab.evaluation.evaluator import Evaluator
from difflab.sampling import SamplingPlan, SamplingRequest


@dataclass(frozen=True)
class PromptReport:
    """Images drawn for captions, and the scorer's verdicts on them."""

    images: np.ndarray  # (N, 3, S, S) float32 in [-1, 1]
    captions: tuple[Caption, ...]  # image i was drawn for captions[i]
    held_out: np.ndarray  # (N,) bool: captions[i] is held out of training
    verdicts: tuple[Verdict, ...]
    summary: dict[str, Any]  # adherence_summary: accuracy overall, per kind, seen and held out
    sampler: str
    steps: int
    guidance: float


def adherence_captions(
    num_captions: int, seed: int = 0, split: compose.HeldOut = compose.DEFAULT_SPLIT
) -> tuple[list[Caption], np.ndarray]:
    """``num_captions`` captions, the first half seen in training and the rest held out (one
    more seen for an odd number), and which are held out (N,) bool. The same for the same
    seed."""
    if num_captions < 2:
        raise ValueError(
            f"prompt adherence needs at least 2 prompts (one seen, one held out), got "
            f"{num_captions}"
        )
    rng = np.random.default_rng(seed)
    held = num_captions // 2
    seen = compose.pick_captions(num_captions - held, rng, captions="seen", split=split)
    unseen = compose.pick_captions(held, rng, captions="held-out", split=split)
    flags = np.array([False] * len(seen) + [True] * len(unseen))
    return seen + unseen, flags


def prompt_request(
    captions: Sequence[Caption], *, seed: int = 0, **request: Any
) -> SamplingRequest:
    """The sampling request that draws image i for ``captions[i]`` (the prompts in turn, one
    image each); ``request``: other fields of ``SamplingRequest`` (sampler, steps, guidance)."""
    texts = tuple(c.text for c in captions)
    return SamplingRequest(num_images=len(texts), seed=seed, prompts=texts, **request)


def score_prompts(
    images: np.ndarray,
    captions: Sequence[Caption],
    held_out: np.ndarray,
    evaluator: Evaluator,
    plan: SamplingPlan,
) -> PromptReport:
    """Judge ``images`` (N, 3, S, S), drawn by ``plan`` for ``captions``
    (``prompt_request(captions)`` planned by the model's kind and executed), reading their digits
    with ``evaluator``, the MNIST evaluator; the summary adds per-kind accuracy within the seen
    and within the held-out captions."""
    if evaluator.info.get("data") != "mnist":
        raise ValueError(
            f"prompt adherence reads the digits with the MNIST evaluator; {evaluator.path} was "
            f"trained on {evaluator.info.get('data')!r} (difflab train-evaluator --data mnist)"
        )
    verdicts = tuple(score_canvases(images, captions, mnist_classifier(evaluator)))
    summary = adherence_summary(verdicts, captions, held_out)
    for which, keep in (("seen", ~held_out), ("held_out", held_out)):  # per kind within each
        chosen = np.flatnonzero(keep)
        part = adherence_summary([verdicts[i] for i in chosen], [captions[i] for i in chosen])
        summary[which]["by_kind"] = part["by_kind"]
    return PromptReport(
        images=images, captions=tuple(captions), held_out=held_out, verdicts=verdicts,
        summary=summary, sampler=plan.sampler, steps=plan.steps, guidance=plan.guidance,
    )  # fmt: skip


def format_adherence(summary: dict[str, Any]) -> str:
    """The report's lines: accuracy overall, seen against held out, per kind, per clause."""

    def pct(entry: dict[str, Any]) -> str:
        acc = entry["accuracy"]
        return f"{'-' if acc is None else f'{100 * acc:.1f}%':>6} of {entry['n']}"

    kinds = list(summary["by_kind"])
    header = ["", "all", *kinds]
    rows = [["all captions", pct(summary), *(pct(summary["by_kind"][k]) for k in kinds)]]
    for which in ("seen", "held_out"):
        if which in summary:
            by_kind = summary[which].get("by_kind", {})
            rows.append([
                f"{which.replace('_', '-')} captions", pct(summary[which]),
                *(pct(by_kind[k]) if k in by_kind else "-" for k in kinds),
            ])  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["prompt accuracy (share of images showing their caption, of N images)"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
              for r in [header, *rows]]  # fmt: skip
    clauses = summary["clauses"]
    lines.append(
        "clauses: " + ", ".join(
            f"{name} {'-' if v is None else f'{100 * v:.1f}%'}" for name, v in clauses.items()
        )
    )  # fmt: skip
    return "\n".join(lines)


def save_adherence_picture(report: PromptReport, path: str | Path, per_set: int = 12) -> Path:
    """PNG of the first ``per_set`` images drawn for seen captions and the first ``per_set`` for
    held-out ones, each with its caption and the scorer's verdict ("ok", or the clause that
    failed: count, object, relation)."""
    from difflab.viz import save_captioned_grid

    chosen = [
        *np.flatnonzero(~report.held_out)[:per_set],
        *np.flatnonzero(report.held_out)[:per_set],
    ]
    labels = []
    for i in chosen:
        verdict = report.verdicts[i]
        mark = "ok" if verdict.correct else f"wrong {verdict.failure}"
        labels.append(
            f"{'held out: ' if report.held_out[i] else ''}{report.captions[i].text} [{mark}]"
        )
    title = (
        f"Drawn for seen captions (first rows) and held-out ones (last rows): {report.sampler}, "
        f"{report.steps} steps, guidance {report.guidance:g}; [ok] or the clause the scorer "
        "rejected"
    )
    return save_captioned_grid(report.images[chosen], path, captions=labels, title=title)
