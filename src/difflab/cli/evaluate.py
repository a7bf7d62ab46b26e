"""``difflab evaluate | train-evaluator``: score generated images (FID, KID, precision/recall,
distance to the training set, class accuracy), and train the classifier whose features they are
scored in.

The metrics and the evaluator are ``difflab.evaluation``'s. A new command that scores images goes
here, as ``_add_<name>(subparsers)`` called from ``add_commands`` and ``cmd_<name>(args)`` listed
in ``difflab/cli/__init__.py``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from difflab.cli.flags import (
    add_command,
    add_data_flags,
    positive_float,
    positive_int,
    sampling_request,
)
from difflab.data import DATASETS, EMOJI_DATASOURCE, VENDOR_CHOICES, ImageDataset
from difflab.flow import FLOW_SOLVERS
from difflab.kinds import load_model, plan_sampling
from difflab.samplers import DEFAULT_SAMPLER, SAMPLERS
from difflab.sampling import SamplingPlan, SamplingRequest, execute

if TYPE_CHECKING:
    from difflab.evaluation import Evaluator, Reference

INCEPTION_TRAIN_IMAGES = 10_000  # Inception runs ~18 images/s on 2 cores: 60k would take an hour
COLOUR_PROMPT_ROUNDS = 48  # a colour emoji text model: images per "<colour> <shape>" prompt
TEXT_PROMPTS = 2000  # a text model's prompts, half seen and half held out: +-2% on held-out ones
# Flags of evaluate that a text model's prompt adherence (scored by reading digits) has no use for
NOT_FOR_PROMPTS = ("data", "vendors", "inception_weights", "reference_train_images", "memorisation")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    _add_evaluate(subparsers)
    _add_train_evaluator(subparsers)


def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "evaluate",
        "Score generated images against the test split: FID, KID, precision/recall, distance to "
        "the training set and, for class-conditional models, class accuracy (docs/metrics.md). "
        "A text model (train --text) is scored by prompt adherence instead: one image per "
        "prompt, half of the prompts held out of training, each judged by reading its digits "
        "with the MNIST evaluator (docs/text.md).",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="generate from this .safetensors checkpoint")
    source.add_argument(
        "--images", help="score these instead: a folder of images, or a .npz (uint8 or [-1, 1])"
    )
    p.add_argument("--data", choices=DATASETS, help="reference dataset (default: the checkpoint's)")
    p.add_argument("--data-dir", help="its files (default: as recorded by the evaluator)")
    p.add_argument(
        "--vendors", choices=VENDOR_CHOICES,
        help="emoji-datasource: whose images the reference train and test splits hold (default: "
        "the vendors the checkpoint was trained on, else both)",
    )  # fmt: skip
    p.add_argument(
        "--num-samples", type=positive_int,
        help=f"images to generate (default: 5000; a text model: {TEXT_PROMPTS}, one per prompt; "
        f"a colour emoji text model: {COLOUR_PROMPT_ROUNDS} per colour-shape prompt)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="generation noise and metric subsets")
    p.add_argument(
        "--sampler",
        default=DEFAULT_SAMPLER,
        choices=(*SAMPLERS, *FLOW_SOLVERS),
        help="sampling algorithm: the one difflab sample uses by default (the model's own: "
        "dpmpp-2m-sde, or euler for a flow matching model)",
    )
    p.add_argument(
        "--steps",
        type=positive_int,
        help="sampling steps (default: ddpm T, ddim 50, dpmpp-2m(-sde) 20)",
    )
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    p.add_argument(
        "--evaluator",
        help="evaluator file (default: ~/.cache/difflab/evaluators/<data>-<size>px.safetensors, "
        "or under $DIFFLAB_CACHE)",
    )
    p.add_argument(
        "--inception-weights",
        metavar="PATH",
        help="score in Inception features instead: pytorch-fid's "
        "pt_inception-2015-12-05-6726825d.pth on disk (never downloaded; ~18 images/s on a "
        "2-core CPU; no class accuracy). See docs/metrics.md",
    )
    p.add_argument(
        "--reference-train-images",
        type=positive_int,
        metavar="N",
        help="training images for the distance-to-train check (default: all of them; "
        f"{INCEPTION_TRAIN_IMAGES} with --inception-weights)",
    )
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per batch")
    p.add_argument("--raw-weights", action="store_true", help="use raw instead of EMA weights")
    p.add_argument("--device", default="auto")
    p.add_argument("--save-images", help="also keep the generated images in this .npz")
    p.add_argument(
        "--memorisation", action="store_true",
        help="also the memorisation check: each image's distance to its nearest training image, "
        "in pixels and in the evaluator's features, against the held-out test images' "
        "(docs/colour.md); draws the closest pairs beside --out as <name>.nearest-pixels.png and "
        "<name>.nearest-features.png",
    )  # fmt: skip
    p.add_argument("--out", default="metrics.json", help="JSON report")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while generating")


def _add_train_evaluator(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "train-evaluator",
        "Train the small CNN classifier whose features `difflab evaluate` compares, and cache "
        "the test split's reference statistics beside it.",
    )
    add_data_flags(p, default="mnist", vendors=False)
    p.add_argument(
        "--epochs", type=positive_int, help="passes over the data (default: 3, or >= 1000 steps)"
    )
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=positive_float, default=2e-3, help="peak learning rate (AdamW)")
    p.add_argument("--seed", type=int, default=0, help="initial weights and batch order")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--out", help="evaluator file (default: the user cache, where evaluate looks for it)"
    )
    p.add_argument("--no-progress", action="store_true")


# evaluate ---------------------------------------------------------------------------------------


def cmd_evaluate(args: argparse.Namespace) -> None:
    import json

    from difflab import evaluation as ev
    from difflab.device import pick_device
    from difflab.io import write_text_atomic

    device = pick_device(args.device)
    if args.inception_weights and args.evaluator:
        raise ValueError("--evaluator and --inception-weights both given; choose one network")
    start = time.perf_counter()
    setup: dict[str, Any] = {"seed": args.seed}
    labels: np.ndarray | None = None
    if args.checkpoint:
        loaded = load_model(args.checkpoint, args.device, ema=not args.raw_weights)
        if loaded.config.takes_prompts:  # a text model: prompt adherence
            _prompt_adherence(args, loaded, device, start)
            return
    if args.num_samples is None:
        args.num_samples = 5000
    if args.checkpoint:  # checked now, generated once the reference statistics are ready
        plan = _checkpoint_plan(args, loaded)
        sampler, steps = plan.sampler, plan.steps
        config = loaded.config
        data, size = args.data or config.train.data, config.image_shape[1]
        recorded_dir = config.train.data_dir
        data_seed = config.train.seed if data in ("emoji", "shapes") else 0  # the draw it saw
        if args.vendors is None and data == config.train.data:  # the images it was trained on
            args.vendors = config.train.vendors
        setup.update(source="checkpoint", checkpoint=str(args.checkpoint), sampler=sampler,
                     steps=steps, guidance=args.guidance, ema=not args.raw_weights)  # fmt: skip
    else:
        images, labels, class_names = _images_to_score(args)
        data, size, recorded_dir, data_seed = args.data, images.shape[-1], None, 0
        setup.update(source="images", images=str(args.images))

    if args.vendors is not None and data != EMOJI_DATASOURCE:  # before any work
        raise ValueError(f"--vendors applies to --data {EMOJI_DATASOURCE} only, not to {data}")
    evaluator, data_dir, reference_size = _feature_network(args, data, size, recorded_dir, device)
    train_set, test_set, reference = _reference(
        args, evaluator, data, data_dir, reference_size, data_seed
    )
    if args.checkpoint:
        images, labels = _generate(args, loaded, plan, evaluator, setup)
        source = str(args.checkpoint)
    else:
        source = str(args.images)
        labels = _evaluator_labels(evaluator, labels, class_names, source)
    images = ev.match_channels(images, evaluator, source)
    evaluator.check_images(images)
    if len(images) < 2:
        raise ValueError(f"{source}: need at least 2 images for FID and KID, got {len(images)}")
    if args.save_images:
        _save_images(Path(args.save_images), images, labels)

    features = evaluator.features(images)
    metrics: dict[str, Any] = ev.score_features(features, reference, seed=args.seed)
    metrics["class_accuracy"] = (
        None if labels is None else ev.class_accuracy(evaluator, images, labels)
    )
    if not evaluator.is_inception:  # mode coverage in the evaluator's classes
        metrics.update(ev.class_coverage(evaluator, images))
    if args.memorisation:
        metrics["memorisation"] = _memorisation(
            args, images, features, train_set, test_set, reference, data, device
        )
    setup.update(
        data=data, data_dir=None if data_dir is None else str(data_dir), vendors=args.vendors,
        num_images=len(images),
        evaluator=str(evaluator.path), evaluator_test_accuracy=evaluator.info.get("test_accuracy"),
        feature_network="inception" if evaluator.is_inception else "evaluator",
        feature_dim=evaluator.feature_dim, reference_test_images=test_set.num_images,
        reference_train_images=train_set.num_images, reference_cache=str(reference.path),
        k=3, kid_subsets=100, kid_subset_size=min(1000, len(images), test_set.num_images),
        seconds=round(time.perf_counter() - start, 2),
    )  # fmt: skip
    write_text_atomic(args.out, json.dumps({"metrics": metrics, "setup": setup}, indent=2) + "\n")
    print(
        f"{len(images)} images from {source} vs {test_set.num_images} {data} test images, in the "
        f"{evaluator.feature_dim}-d features of {evaluator.path}"
    )
    print(ev.format_table(metrics, data))
    if args.memorisation:
        checks = metrics["memorisation"].values()
        print(ev.format_memorisation(list(checks)))
        for check in checks:
            print(f"wrote {check['picture']}")
    print(f"wrote {args.out}")


def _memorisation(
    args: argparse.Namespace,
    images: np.ndarray,
    features: np.ndarray,
    train_set: ImageDataset,
    test_set: ImageDataset,
    reference: Reference,
    data: str,
    device: torch.device,
) -> dict[str, dict[str, Any]]:
    """--memorisation: the check in pixels and in the evaluator's features, each with its picture
    of the closest pairs beside --out and the closest pairs themselves (with the training images'
    names, where the data has them)."""
    from difflab import evaluation as ev
    from difflab.data import dataset_attribution

    if images.shape[1] == 3 and train_set.channels == 1 and np.ptp(images, axis=1).max() <= 1e-6:
        images = images[:, :1]  # grey images stored as RGB, against grey data (as for Inception)
    out = Path(args.out)
    attribution = dataset_attribution(data, args.vendors)
    inputs = {
        "pixels": (images, train_set.images, test_set.images),
        "features": (features, reference.train_features, reference.test_features),
    }
    report = {}
    for space, (generated, train, held_out) in inputs.items():
        check = ev.memorisation_check(generated, train, held_out, space=space, device=device)
        picture = ev.save_memorisation_picture(
            check, images, train_set.images, out.with_name(f"{out.stem}.nearest-{space}.png"),
            attribution=attribution,
        )  # fmt: skip
        closest = []
        for i in check.closest(16):
            j = int(check.generated_index[i])
            pair = {"generated": int(i), "train": j, "distance": float(check.generated_distance[i])}
            if train_set.names is not None:
                pair["train_name"] = train_set.names[j]
            closest.append(pair)
        report[space] = {**check.summary(), "picture": str(picture), "closest": closest}
    return report


def _checkpoint_plan(args: argparse.Namespace, loaded: Any) -> SamplingPlan:
    """The plan --checkpoint's model is drawn with, the flags checked before any work."""
    if args.num_samples < 2:
        raise ValueError("--num-samples must be at least 2 for FID and KID, got 1")
    request = sampling_request(args, num_images=args.num_samples, seed=args.seed)
    return plan_sampling(loaded, request)


def _prompt_adherence(
    args: argparse.Namespace, loaded: Any, device: torch.device, start: float
) -> None:
    """A text model's evaluate: prompt adherence on seen and held-out captions, the table, the
    JSON report and a picture of the first images with their verdicts beside --out."""

    from difflab import evaluation as ev

    for flag in NOT_FOR_PROMPTS:
        if getattr(args, flag):
            raise ValueError(
                f"--{flag.replace('_', '-')} does not apply to a text model, which evaluate "
                "scores by prompt adherence (reading what is drawn for each prompt)"
            )
    out = Path(args.out)
    if out.suffix != ".json":
        raise ValueError(f"--out {out} must end in .json")
    if args.save_images and Path(args.save_images).suffix != ".npz":
        raise ValueError(f"--save-images {args.save_images} must end in .npz")
    if loaded.config.train.data == EMOJI_DATASOURCE:
        _colour_prompts(args, loaded, out, start)
        return
    num_prompts = TEXT_PROMPTS if args.num_samples is None else args.num_samples
    path = args.evaluator or ev.default_evaluator_path("mnist", 28)
    hint = f"; train one with: {ev.train_evaluator_command('mnist', 28, None)}"
    evaluator = ev.load_evaluator(path, device, hint=hint)
    ev.mnist_classifier(evaluator)  # an MNIST evaluator, checked before any drawing
    print(f"drawing {num_prompts} images, one per prompt, half of the prompts held out ...",
          flush=True)  # fmt: skip
    captions, held_out = ev.adherence_captions(num_prompts, args.seed)
    request = ev.prompt_request(
        captions, seed=args.seed, sampler=args.sampler, steps=args.steps, guidance=args.guidance
    )
    plan = plan_sampling(loaded, request)
    images = execute(loaded, plan, batch_size=args.batch_size, progress=not args.no_progress)
    report = ev.score_prompts(images.numpy(), captions, held_out, evaluator, plan)
    if args.save_images:
        texts = np.array([c.text for c in report.captions])
        _save_images(Path(args.save_images), report.images, None, captions=texts)
    picture = ev.save_adherence_picture(report, out.with_name(f"{out.stem}.prompts.png"))
    setup = {
        "source": "checkpoint", "checkpoint": str(args.checkpoint), "sampler": report.sampler,
        "steps": report.steps, "guidance": report.guidance, "ema": not args.raw_weights,
        "seed": args.seed, "num_prompts": len(report.captions),
        "held_out_prompts": int(report.held_out.sum()), "evaluator": str(evaluator.path),
        "evaluator_test_accuracy": evaluator.info.get("test_accuracy"), "picture": str(picture),
        "seconds": round(time.perf_counter() - start, 2),
    }  # fmt: skip
    headline = (f"{len(report.captions)} images from {args.checkpoint}, {report.sampler} "
                f"{report.steps} steps, guidance {report.guidance:g}")  # fmt: skip
    _write_prompt_report(out, {"prompt_adherence": report.summary, "setup": setup},
                         [headline, ev.format_adherence(report.summary), f"wrote {picture}"])  # fmt: skip


def _colour_prompts(args: argparse.Namespace, loaded: Any, out: Path, start: float) -> None:
    """A colour emoji text model's evaluate: the "<colour> <shape>" prompts in turn, one image
    each, judged by the colour of the drawn shape; seen against never-seen prompts."""

    from difflab import evaluation as ev
    from difflab.data import emoji_grid

    if args.evaluator:
        raise ValueError("--evaluator does not apply: an emoji prompt is judged by its colour")
    tc = loaded.config.train
    references, held_out = ev.colour_prompt_setup(
        args.data_dir or tc.data_dir, loaded.config.image_shape[1], tc.vendors
    )
    grid = emoji_grid()
    num = len(grid) * COLOUR_PROMPT_ROUNDS if args.num_samples is None else args.num_samples
    prompts = ev.grid_prompts(num)
    print(f"drawing {num} images for the {len(grid)} colour-shape prompts in turn, "
          f"{len(held_out)} of them never seen in training ...", flush=True)  # fmt: skip
    request = SamplingRequest(num_images=num, seed=args.seed, prompts=prompts,
                              sampler=args.sampler, steps=args.steps, guidance=args.guidance)  # fmt: skip
    plan = plan_sampling(loaded, request)
    images = execute(loaded, plan, batch_size=args.batch_size, progress=not args.no_progress)
    report = ev.score_colour_prompts(images.numpy(), prompts, held_out, references)
    if args.save_images:
        _save_images(Path(args.save_images), report.images, None, captions=np.array(prompts))
    picture = ev.save_colour_prompts_picture(report, out.with_name(f"{out.stem}.prompts.png"))
    setup = {
        "source": "checkpoint", "checkpoint": str(args.checkpoint), "sampler": plan.sampler,
        "steps": plan.steps, "guidance": plan.guidance, "ema": not args.raw_weights,
        "seed": args.seed, "num_images": num, "picture": str(picture),
        "seconds": round(time.perf_counter() - start, 2),
    }  # fmt: skip
    headline = (f"{num} images from {args.checkpoint}, {plan.sampler} {plan.steps} steps, "
                f"guidance {plan.guidance:g}")  # fmt: skip
    _write_prompt_report(out, {"colour_prompts": report.summary, "setup": setup},
                         [headline, ev.format_colour_prompts(report.summary), f"wrote {picture}"])  # fmt: skip


def _write_prompt_report(out: Path, report: dict[str, Any], lines: list[str]) -> None:
    """Write a text model's JSON report to ``out``, then print its lines and where it went."""
    import json

    from difflab.io import write_text_atomic

    write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")


def _images_to_score(
    args: argparse.Namespace,
) -> tuple[np.ndarray, np.ndarray | None, Sequence[str]]:
    """The --images, their labels (None: unlabelled) and their class folders' names."""
    from difflab import evaluation as ev

    if args.data is None:
        raise ValueError(
            "--images needs --data, the dataset to compare against (e.g. --data mnist)"
        )
    for flag in ("steps", "guidance"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag} applies to --checkpoint, not to --images")
    return ev.load_images(args.images)


def _feature_network(
    args: argparse.Namespace, data: str, size: int, recorded_dir: str | None, device: torch.device
) -> tuple[Evaluator, str | None, int]:
    """The feature network, the reference images' data directory, and the size they are read at.

    The network is difflab's evaluator for the dataset, or Inception with --inception-weights.
    """
    from difflab import evaluation as ev

    if args.inception_weights:  # any image size: Inception resizes to 299
        return (
            ev.load_inception(args.inception_weights, device),
            args.data_dir or recorded_dir,
            size,
        )
    path = args.evaluator or ev.default_evaluator_path(data, size, args.data_dir or recorded_dir)
    hint_dir = args.data_dir or recorded_dir
    hint = f"; train one with: {ev.train_evaluator_command(data, size, hint_dir)}"
    evaluator = ev.load_evaluator(path, device, hint=hint)
    if evaluator.info.get("data") != data:
        raise ValueError(
            f"evaluator {path} was trained on {evaluator.info.get('data')!r}, not on {data!r}"
        )
    data_dir = args.data_dir or evaluator.info.get("data_dir") or recorded_dir
    return evaluator, data_dir, evaluator.config.image_size


def _reference(
    args: argparse.Namespace,
    evaluator: Evaluator,
    data: str,
    data_dir: str | None,
    size: int,
    data_seed: int,
) -> tuple[ImageDataset, ImageDataset, Reference]:
    """The reference training and test images, and their statistics in the evaluator's features
    (computed once, then read from the cache)."""
    from difflab import evaluation as ev

    train_set, test_set = ev.reference_datasets(
        data, data_dir, image_size=size, seed=data_seed, vendors=args.vendors
    )
    train_limit = args.reference_train_images
    if train_limit is None and evaluator.is_inception:
        train_limit = INCEPTION_TRAIN_IMAGES
    train_set = ev.subset(train_set, train_limit)

    def announce() -> None:  # Inception features take minutes on a CPU: say what is coming
        if evaluator.is_inception:
            print(
                f"Inception features of {test_set.num_images} test and {train_set.num_images} "
                f"training {data} images: once, cached for later runs ...",
                flush=True,
            )

    reference = ev.reference_statistics(evaluator, train_set, test_set, on_compute=announce)
    return train_set, test_set, reference


def _generate(
    args: argparse.Namespace,
    loaded: Any,
    plan: SamplingPlan,
    evaluator: Evaluator,
    setup: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray | None]:
    """--num-samples images from the checkpoint, and their labels for class accuracy (None: an
    unconditional model, or Inception features); records the time taken in ``setup``."""
    from difflab import evaluation as ev

    labels = None
    if plan.labels is not None and not evaluator.is_inception:  # i % num_classes
        ev.check_classes(evaluator, loaded.config.class_names)
        labels = plan.labels.numpy()
    print(f"generating {plan.num_images} images ({plan.sampler}, {plan.steps} steps) ...",
          flush=True)  # fmt: skip
    gen_start = time.perf_counter()
    images = execute(
        loaded, plan, batch_size=args.batch_size, progress=not args.no_progress
    ).numpy()
    setup["generate_seconds"] = round(time.perf_counter() - gen_start, 2)
    return images, labels


def _evaluator_labels(
    evaluator: Evaluator, labels: np.ndarray | None, class_names: Sequence[str], source: str
) -> np.ndarray | None:
    """Labels of scored images as the evaluator numbers its classes (None: no class accuracy)."""
    if evaluator.is_inception:
        return None  # Inception's classes are not the dataset's
    if class_names:  # class subfolders: labels, if they are the evaluator's classes
        names = list(evaluator.info.get("class_names") or ())
        missing = [c for c in class_names if c not in names]
        if missing:
            raise ValueError(
                f"--images {source}: class folders {missing[:5]} are not classes of the "
                f"evaluator ({names[:10]}); put the images in one folder or name the folders "
                "after the classes"
            )
        assert labels is not None  # load_images labels every image of class folders
        labels = np.array([names.index(class_names[i]) for i in labels])
    if labels is not None and labels.max(initial=0) >= evaluator.config.num_classes:
        raise ValueError(
            f"--images {source}: labels up to {labels.max()}, but the evaluator has "
            f"{evaluator.config.num_classes} classes"
        )
    return labels


def _save_images(
    keep: Path, images: np.ndarray, labels: np.ndarray | None, **extra: np.ndarray
) -> None:
    """--save-images: the scored images as uint8, with their labels if they have any (and a text
    model's captions)."""
    from difflab.io import atomic_path

    if keep.suffix != ".npz":
        raise ValueError(f"--save-images {keep} must end in .npz")
    pixels = np.round((images + 1) * 127.5).clip(0, 255).astype(np.uint8)
    with atomic_path(keep) as tmp, tmp.open("wb") as f:
        np.savez_compressed(
            f, images=pixels, **({} if labels is None else {"labels": labels}), **extra
        )


# train-evaluator --------------------------------------------------------------------------------


def cmd_train_evaluator(args: argparse.Namespace) -> None:
    from difflab import evaluation as ev
    from difflab.device import pick_device

    device = pick_device(args.device)
    train_set, test_set = ev.reference_datasets(
        args.data, args.data_dir, image_size=args.image_size
    )
    if train_set.num_classes < 2:
        raise ValueError(
            f"the evaluator is a classifier and needs at least 2 classes; {args.data} "
            f"{args.data_dir or ''} has one (a folder needs one subfolder per class)"
        )
    out = Path(
        args.out or ev.default_evaluator_path(args.data, train_set.image_size, args.data_dir)
    )
    epochs = args.epochs or ev.default_epochs(train_set.num_images, args.batch_size)
    print(
        f"training the {args.data} evaluator on {train_set.num_images} images for {epochs} "
        f"epochs ({device}) ...",
        flush=True,
    )
    model, info = ev.train_classifier(
        train_set, test_set, epochs=epochs, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, device=device, progress=not args.no_progress,
    )  # fmt: skip
    data_dir = str(Path(args.data_dir).expanduser().resolve()) if args.data_dir else None
    info.update(data_dir=data_dir, image_size=train_set.image_size)
    ev.save_evaluator(out, model, info)
    reference = ev.reference_statistics(ev.load_evaluator(out, device), train_set, test_set)
    for stale in out.parent.glob(f"{out.stem}.ref-*.safetensors"):
        if stale != reference.path:
            stale.unlink()  # statistics of an evaluator this file no longer holds
    print(
        f"test accuracy {info['test_accuracy']:.2%} on {test_set.num_images} images after "
        f"{info['steps']} steps ({info['train_seconds'] / 60:.1f} min); wrote {out}"
    )
    print(f"reference statistics of the test split: {reference.path}")
