"""Validate difflab's offline metrics on real data: does each number move the way it should?

    .venv/bin/python benchmarks/validate_metrics.py --data mnist --data-dir ../shared/data/mnist

Needs the dataset's evaluator (``difflab train-evaluator --data mnist --data-dir DIR``; or pass
``--evaluator PATH``). Scores, against the test split as `difflab evaluate` does:

1. real images (training images, which are also copies of the training set; and test images)
   and degraded ones: Gaussian noise (std 0.1 and 0.3 in [0, 1] pixel units, clipped), Gaussian
   blur, shifts, half of the classes, a single class;
2. the dependence on N: FID and KID of N random training images (clean, and with noise 0.1) for
   N = 500 ... 10000, several seeds each: FID's bias and its seed-to-seed spread.

Prints JSON, and writes the Markdown tables into docs/metrics.md between the
``<!-- validate_metrics:begin -->`` and ``<!-- validate_metrics:end -->`` markers (``--markdown``;
``--quick`` runs a smaller version and writes nothing unless ``--markdown`` is given).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from difflab import evaluation as ev
from difflab.io import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- validate_metrics:begin -->", "<!-- validate_metrics:end -->"


def add_noise(images, std, rng):
    """Gaussian noise of ``std`` in [0, 1] pixel units (= 2 std in [-1, 1]), clipped."""
    return np.clip(images + rng.normal(0.0, 2.0 * std, images.shape), -1, 1).astype(np.float32)


def blur(images, sigma):
    """Separable Gaussian blur of ``sigma`` pixels, edges replicated."""
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    c = images.shape[1]
    x = F.pad(torch.from_numpy(images), (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)  # horizontal
    x = F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)  # vertical
    return x.numpy()


def shift(images, pixels):
    """Move every image ``pixels`` right and down; the background (-1) fills in."""
    out = np.full_like(images, -1.0)
    out[:, :, pixels:, pixels:] = images[:, :, :-pixels, :-pixels]
    return out


def pick(n, pool, rng):
    return np.sort(rng.choice(pool, min(n, len(pool)), replace=False))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--data-dir")
    parser.add_argument("--evaluator", help="default: the user cache, as for difflab evaluate")
    parser.add_argument("--num-images", type=int, help="N of the degradation table (5000)")
    parser.add_argument("--seeds", type=int, help="seeds per N in the bias study (3)")
    parser.add_argument("--quick", action="store_true", help="N = 1000, fewer seeds and subsets")
    parser.add_argument("--markdown", help="file with the markers to write the tables into")
    parser.add_argument("--json", help="also write the JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))

    n = args.num_images or (1000 if args.quick else 5000)
    seeds = args.seeds or (2 if args.quick else 3)
    sizes = [500, 1000, 2000] if args.quick else [500, 1000, 2000, 5000, 10000]
    kid_subsets = 20 if args.quick else 100
    markdown = args.markdown or (None if args.quick else str(ROOT / "docs" / "metrics.md"))

    start = time.perf_counter()
    train, test = ev.reference_datasets(args.data, args.data_dir)
    path = args.evaluator or ev.default_evaluator_path(args.data, test.image_size, args.data_dir)
    hint = (
        f"; train one with: {ev.train_evaluator_command(args.data, test.image_size, args.data_dir)}"
    )
    try:
        evaluator = ev.load_evaluator(path, hint=hint)
    except ValueError as err:
        sys.exit(f"validate_metrics: error: {err}")
    ref = ev.reference_statistics(evaluator, train, test)
    rng = np.random.default_rng(0)

    def score(images=None, *, index=None, labels=None, seed=0, subsets=kid_subsets):
        """Metrics of images, or of training images by index (their features are cached)."""
        features = ref.train_features[index] if images is None else evaluator.features(images)
        m = ev.score_features(features, ref, seed=seed, kid_subsets=subsets)
        if labels is not None:
            m["class_accuracy"] = ev.class_accuracy(evaluator, images, labels)
        return m

    # 1. real and degraded sets ---------------------------------------------------------------
    idx = pick(n, np.arange(train.num_images), rng)
    real, labels = train.images[idx], train.labels[idx]
    test_idx = pick(n, np.arange(test.num_images), rng)
    counts = np.bincount(train.labels, minlength=train.num_classes)
    big = int(np.argmax(counts))  # the largest class, so that N images exist
    first_half = np.flatnonzero(train.labels < train.num_classes // 2)
    one = pick(n, np.flatnonzero(train.labels == big), rng)
    half = pick(n, first_half, rng)
    sets = [
        ("real training images (copies of the training set)", dict(images=real, labels=labels)),
        ("real test images (part of the reference)",
         dict(images=test.images[test_idx], labels=test.labels[test_idx])),
        ("noise std 0.1", dict(images=add_noise(real, 0.1, rng), labels=labels)),
        ("noise std 0.3", dict(images=add_noise(real, 0.3, rng), labels=labels)),
        ("blur sigma 1 px", dict(images=blur(real, 1.0), labels=labels)),
        ("blur sigma 2 px", dict(images=blur(real, 2.0), labels=labels)),
        ("shift 2 px", dict(images=shift(real, 2), labels=labels)),
        ("shift 4 px", dict(images=shift(real, 4), labels=labels)),
        (f"half the classes ({train.class_names[0]}..{train.class_names[train.num_classes // 2 - 1]})",
         dict(images=train.images[half], labels=train.labels[half])),
        (f"a single class ({train.class_names[big]})",
         dict(images=train.images[one], labels=train.labels[one])),
    ]  # fmt: skip
    table = []
    for name, kwargs in sets:
        t0 = time.perf_counter()
        m = score(**kwargs)
        m.update(set=name, n=len(kwargs["images"]), seconds=round(time.perf_counter() - t0, 1))
        table.append(m)
        print(f"{name}: FID {m['fid']:.3f}", file=sys.stderr, flush=True)

    # 2. dependence on N ------------------------------------------------------------------------
    bias = []
    pool = np.arange(train.num_images)
    for size in sizes:
        for variant in ("clean", "noise 0.1"):
            fids, kids = [], []
            for seed in range(seeds):
                r = np.random.default_rng(1000 + seed)
                index = pick(size, pool, r)
                if variant == "clean":
                    m = score(index=index, seed=seed)
                else:
                    m = score(add_noise(train.images[index], 0.1, r), seed=seed)
                fids.append(m["fid"])
                kids.append(m["kid"])
            bias.append(dict(n=size, set=variant, fid=fids, kid=kids,
                             fid_mean=float(np.mean(fids)), fid_std=float(np.std(fids, ddof=1)),
                             kid_mean=float(np.mean(kids)), kid_std=float(np.std(kids, ddof=1))))  # fmt: skip
            print(f"N={size} {variant}: FID {np.mean(fids):.3f} ± {np.std(fids, ddof=1):.3f}",
                  file=sys.stderr, flush=True)  # fmt: skip

    result = {
        "data": args.data,
        "evaluator": str(evaluator.path),
        "evaluator_test_accuracy": evaluator.info.get("test_accuracy"),
        "reference_test_images": test.num_images,
        "train_images": train.num_images,
        "num_images": n,
        "seeds": seeds,
        "kid_subsets": kid_subsets,
        "degradations": table,
        "bias": bias,
        "seconds": round(time.perf_counter() - start, 1),
        "machine": f"{platform.machine()}, torch threads: {torch.get_num_threads()}",
        "command": command_line(args),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=2) + "\n")
    if markdown:
        write_tables(Path(markdown), result)
        print(f"wrote the tables into {markdown}", file=sys.stderr)


def command_line(args):
    """The command that reproduces the tables (output paths left out)."""
    parts = ["benchmarks/validate_metrics.py", f"--data {args.data}"]
    parts += [f"--data-dir {args.data_dir}"] if args.data_dir else []
    parts += [f"--num-images {args.num_images}"] if args.num_images else []
    parts += [f"--seeds {args.seeds}"] if args.seeds else []
    parts += ["--quick"] if args.quick else []
    return " ".join(parts)


def markdown_tables(result):
    acc = result["evaluator_test_accuracy"]
    lines = [
        f"Measured with `{result['command']}` ({result['seconds'] / 60:.1f} min on "
        f"{result['machine']}); evaluator test accuracy {100 * acc:.2f}%; reference: the "
        f"{result['reference_test_images']} test images; N = {result['num_images']} images per "
        f"set; KID over {result['kid_subsets']} subsets of up to 1000.",
        "",
        "| set | FID | KID x 1000 | precision | recall | dist. to train (ratio to test) | closer than 99% of test | class accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in result["degradations"]:
        lines.append(
            f"| {m['set']} | {m['fid']:.2f} | {1000 * m['kid']:.2f} | {m['precision']:.3f} | "
            f"{m['recall']:.3f} | {m['nn_train_ratio']:.2f} | "
            f"{100 * m['nn_train_close_fraction']:.1f}% | {m['class_accuracy']:.3f} |"
        )
    lines += [
        "",
        f"FID and KID against the test split for N random training images, clean and with "
        f"noise 0.1, mean ± standard deviation over {result['seeds']} seeds:",
        "",
        "| N | FID, clean | FID, noise 0.1 | KID x 1000, clean | KID x 1000, noise 0.1 |",
        "|---:|---:|---:|---:|---:|",
    ]
    rows = {}
    for b in result["bias"]:
        rows.setdefault(b["n"], {})[b["set"]] = b
    for size, row in rows.items():
        c, d = row["clean"], row["noise 0.1"]
        lines.append(
            f"| {size} | {c['fid_mean']:.3f} ± {c['fid_std']:.3f} | "
            f"{d['fid_mean']:.3f} ± {d['fid_std']:.3f} | "
            f"{1000 * c['kid_mean']:.3f} ± {1000 * c['kid_std']:.3f} | "
            f"{1000 * d['kid_mean']:.3f} ± {1000 * d['kid_std']:.3f} |"
        )
    return "\n".join(lines)


def write_tables(path, result):
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    block = f"{BEGIN}\n{markdown_tables(result)}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text + ("\n" if text else "") + block + "\n"
    write_text_atomic(path, text)


if __name__ == "__main__":
    main()
