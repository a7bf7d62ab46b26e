"""The prompt-adherence scorer's ceiling: how often it accepts real canvases with their true
captions, and how often it accepts them with wrong ones.

    .venv/bin/python benchmarks/compose_scorer.py [--data-dir ../shared/data/mnist]
        [--evaluator PATH] [--num-images 2000] [--image-sizes 32,48] [--picture PATH]

Draws ``--num-images`` canvases of MNIST's test digits with seen (training) captions and as many
with held-out captions (``difflab.compose``), reads them once with the scorer
(``difflab.evaluation.adherence``, the MNIST evaluator reading the digits) and judges them
against their true captions (accuracy overall, per kind of caption and per clause: the
scorer's ceiling) and against deliberately wrong ones (the share accepted, which should be
near 0): the objects swapped, the converse relation, a relation on the other axis, one object's
colour or digit changed, one object left out of a two-digit caption, one added to a one-digit
caption. Prints JSON. No training: about a minute on two CPU cores.

Needs MNIST (``--data-dir``) and the MNIST evaluator (``difflab train-evaluator --data mnist``,
or ``--evaluator``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from difflab import compose
from difflab import evaluation as ev
from difflab.compose import Caption, Thing
from difflab.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]


def other(values: tuple, value: object, rng: np.random.Generator) -> object:
    """A random element of ``values`` other than ``value``."""
    choices = [v for v in values if v != value]
    return choices[rng.integers(len(choices))]


def changed(
    caption: Caption, rng: np.random.Generator, field: str, values: tuple
) -> Caption | None:
    """``caption`` with one object's ``field`` (digit or colour) changed, the objects still
    different; None if no change keeps them different."""
    j = int(rng.integers(len(caption.objects)))
    for _ in range(20):
        things = list(caption.objects)
        old = things[j]
        new = other(values, getattr(old, field), rng)
        things[j] = Thing(new, old.colour) if field == "digit" else Thing(old.digit, new)
        if len(things) == 1 or things[0] != things[1]:
            return Caption(tuple(things), caption.relation)
    return None


def added(caption: Caption, rng: np.random.Generator) -> Caption:
    """A one-object caption with a second object (another digit) in a random relation."""
    first = caption.objects[0]
    second = Thing(
        int(other(compose.DIGITS, first.digit, rng)), str(rng.choice(compose.COLOUR_NAMES))
    )
    return Caption((first, second), compose.RELATIONS[rng.integers(len(compose.RELATIONS))])


OTHER_AXIS = {
    "left of": ("above", "below"),
    "right of": ("above", "below"),
    "above": ("left of", "right of"),
    "below": ("left of", "right of"),
}
WRONG: dict[str, Callable[[Caption, np.random.Generator], Caption | None]] = {
    "swapped objects": lambda c, rng: c.swapped() if c.relation else None,
    "converse relation": lambda c, rng: (
        Caption(c.objects, compose.CONVERSE[c.relation]) if c.relation else None
    ),
    "relation on the other axis": lambda c, rng: (
        Caption(c.objects, OTHER_AXIS[c.relation][rng.integers(2)]) if c.relation else None
    ),
    "wrong colour": lambda c, rng: changed(c, rng, "colour", compose.COLOUR_NAMES),
    "wrong digit": lambda c, rng: changed(c, rng, "digit", compose.DIGITS),
    "object left out": lambda c, rng: Caption(c.objects[:1]) if c.relation else None,
    "object added": lambda c, rng: None if c.relation else added(c, rng),
}


def measure(
    digits: np.ndarray,
    labels: np.ndarray,
    classify: ev.adherence.Classify,
    size: int,
    num_images: int,
    seed: int,
) -> dict:
    """The scorer on real canvases of ``size`` px: true captions and wrong ones."""
    out: dict = {"image_size": size, "digit_size": compose.digit_size(size)}
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for k, which in enumerate(("seen", "held-out")):
        canvases = compose.draw_canvases(
            digits, labels, num_images, seed=seed + k, captions=which, image_size=size
        )
        found = ev.read_canvases(canvases.images, classify)
        verdicts = [ev.judge(c, d) for c, d in zip(canvases.captions, found, strict=True)]
        summary = ev.adherence_summary(verdicts, canvases.captions)
        if which == "held-out":
            reasons = [compose.DEFAULT_SPLIT.why(c) for c in canvases.captions]
            summary["by_reason"] = {
                r: ev.adherence_summary(
                    [v for v, q in zip(verdicts, reasons, strict=True) if q == r],
                    [c for c, q in zip(canvases.captions, reasons, strict=True) if q == r],
                )["accuracy"]
                for r in sorted(set(reasons))
            }
        wrong = {}
        for name, make in WRONG.items():
            pairs = [(make(c, rng), d) for c, d in zip(canvases.captions, found, strict=True)]
            accepted = [ev.judge(c, d).correct for c, d in pairs if c is not None]
            wrong[name] = {"n": len(accepted), "accepted": float(np.mean(accepted))}
        out[which] = {"true captions": summary, "wrong captions": wrong}
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def save_picture(path: Path, canvases: compose.Canvases, verdicts: list, count: int = 12) -> None:
    """The first ``count`` canvases with their captions and the scorer's verdicts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 6
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.7 * rows))
    for ax, image, caption, verdict in zip(
        axes.flat, canvases.images, canvases.captions, verdicts, strict=False
    ):
        ax.imshow(((image.transpose(1, 2, 0) + 1) / 2).clip(0, 1), interpolation="nearest")
        mark = "ok" if verdict.correct else "rejected"
        words = caption.text.replace(f" {caption.relation} ", f"\n{caption.relation} ")
        ax.set_title(f"{words}\n[{mark}]", fontsize=8)
        ax.axis("off")
    for ax in axes.flat[count:]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared/data/mnist"))
    parser.add_argument("--evaluator", help="default: the MNIST evaluator in the user cache")
    parser.add_argument("--num-images", type=int, default=2000, help="canvases per caption set")
    parser.add_argument("--image-sizes", default="32,48", help="canvas sizes, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-shifts", action="store_true", help="read each crop once, unshifted")
    parser.add_argument("--picture", help="also save held-out canvases with their verdicts here")
    args = parser.parse_args()

    torch.set_num_threads(min(2, torch.get_num_threads()))
    path = Path(args.evaluator or ev.default_evaluator_path("mnist", 28)).expanduser()
    evaluator = ev.load_evaluator(path, hint=" (difflab train-evaluator --data mnist)")
    classify = ev.mnist_classifier(evaluator, shifts=not args.no_shifts)
    mnist = load_dataset("mnist", split="test", data_dir=args.data_dir, download=False)
    report: dict = {
        "benchmark": "compose_scorer",
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "evaluator": {
            "path": str(path),
            "mnist_test_accuracy": evaluator.info.get("test_accuracy"),
        },
        "num_images": args.num_images,
        "shifts": not args.no_shifts,
        "held_out_split": {
            "diagonals": compose.DEFAULT_SPLIT.diagonals,
            "bindings": [t.text for t in compose.DEFAULT_SPLIT.bindings],
        },
        "sizes": {},
    }
    for size in (int(s) for s in args.image_sizes.split(",")):
        result = measure(mnist.images, mnist.labels, classify, size, args.num_images, args.seed)
        report["sizes"][str(size)] = result
    if args.picture:
        examples = compose.draw_canvases(
            mnist.images, mnist.labels, 12, seed=args.seed, captions="held-out"
        )
        verdicts = ev.score_canvases(examples.images, examples.captions, classify)
        save_picture(Path(args.picture), examples, verdicts)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
