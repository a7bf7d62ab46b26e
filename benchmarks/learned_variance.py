"""Learned variances (Nichol & Dhariwal 2021) against DDPM's fixed variance on real MNIST: the
same recipe trained for the same number of steps with and without ``--learn-variance``, each
scored by ``difflab evaluate`` (FID, precision, recall against the test split) with DDPM
respaced to 50 and to 100 steps, where the paper finds the learned variance helps most.

    .venv/bin/python benchmarks/learned_variance.py --data-dir ../shared/data/mnist \\
        [--train-steps 5000] [--ddpm-steps 50,100] [--num-samples 5000] \\
        [--runs runs/learned_variance] [--out docs/learned_variance.json]

- ``fixed``: ``difflab train --data mnist`` as it is (L_simple); DDPM draws it with sigma^2 =
  beta of the respaced chain (``--variance beta``, DDPM's default for a fixed-variance model);
- ``learned``: the same with ``--learn-variance`` (L_hybrid = L_simple + 0.001 L_vlb); DDPM draws
  it with its learned variance (the default for such a model).

Both train from the same seed on the same data with the same flags; ``--epochs`` is set so that
the learning-rate schedule ends at ``--train-steps`` (``--max-steps``), so both runs see the same
schedule and the same number of images. Each (variant, DDPM steps) row is printed as JSON and
merged into ``--out`` with the machine it ran on. For a quick check of the plumbing, use a few
steps and images, e.g. ``--train-steps 4 --num-images 256 --num-samples 64 --out /tmp/lv.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from machine import cpu_name, device_name, matmul_gflops

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "learned_variance.json"
DIFFLAB = [sys.executable, "-m", "difflab"]
MNIST_TRAIN_IMAGES = 60_000
VARIANTS = {"fixed": [], "learned": ["--learn-variance"]}
VARIANCE = {"fixed": "beta", "learned": "learned"}  # what DDPM draws each with by default


def run(argv: list[str]) -> None:
    print("$ difflab " + shlex.join(argv), file=sys.stderr, flush=True)
    subprocess.run([*DIFFLAB, *argv], check=True, stdout=sys.stderr)


def train(args: argparse.Namespace, variant: str, run_dir: Path) -> dict:
    """Train one variant for ``--train-steps`` steps; its steps, seconds and final loss."""
    images = args.num_images or MNIST_TRAIN_IMAGES
    epochs = max(1, math.ceil(args.train_steps * args.batch_size / images))
    argv = ["train", "--data", "mnist", "--data-dir", args.data_dir, *VARIANTS[variant],
            "--batch-size", str(args.batch_size), "--epochs", str(epochs),
            "--max-steps", str(args.train_steps), "--sample-every", "0",
            "--checkpoint-every", "0", "--seed", "0", "--no-progress", "--overwrite",
            "--out", str(run_dir)]  # fmt: skip
    if args.num_images:
        argv += ["--num-images", str(args.num_images)]
    if args.prediction:
        argv += ["--prediction", args.prediction]
    run(argv)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in records if "loss" in r]
    return {
        "train_steps": max(r["step"] for r in losses),
        "train_s": round(max(r.get("elapsed_s", 0.0) for r in records), 1),
        "final_loss": round(losses[-1]["loss"], 5),  # its own objective's: L_hybrid if learned
    }


def score(args: argparse.Namespace, checkpoint: Path, steps: int) -> dict:
    """``difflab evaluate`` of DDPM in ``steps`` steps: FID, precision and recall."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "metrics.json"
        run(["evaluate", "--checkpoint", str(checkpoint), "--data-dir", args.data_dir,
             "--num-samples", str(args.num_samples), "--sampler", "ddpm", "--steps", str(steps),
             "--seed", "1", "--no-progress", "--out", str(out)])  # fmt: skip
        m = json.loads(out.read_text())["metrics"]
    return {"fid": round(m["fid"], 3), "precision": round(m["precision"], 3),
            "recall": round(m["recall"], 3)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="the MNIST IDX files")
    p.add_argument("--train-steps", type=int, default=5000, help="training steps of each variant")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-images", type=int, help="train on the first N images only (quick runs)")
    p.add_argument("--prediction", choices=("eps", "x0", "v"), help="default: the recipe's")
    p.add_argument("--ddpm-steps", default="50,100", help="DDPM steps, comma-separated")
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--variants", default="fixed,learned")
    p.add_argument("--runs", default="runs/learned_variance")
    p.add_argument("--out", default=str(RESULTS), help="JSON file the rows are merged into")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "device": device_name(device),
               "matmul_gflops": round(matmul_gflops(), 1)}  # fmt: skip
    print(json.dumps({"machine": machine}), flush=True)
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    settings = {"train_steps_asked": args.train_steps, "batch_size": args.batch_size,
                "num_images": args.num_images or MNIST_TRAIN_IMAGES,
                "prediction": args.prediction or "recipe",
                "num_samples": args.num_samples}  # fmt: skip
    for variant in args.variants.split(","):
        run_dir = Path(args.runs) / variant
        trained = train(args, variant, run_dir)
        for steps in [int(s) for s in args.ddpm_steps.split(",")]:
            row = {"variant": variant, "variance": VARIANCE[variant], "ddpm_steps": steps,
                   **trained, **score(args, run_dir / "model_final.safetensors", steps),
                   **settings, **machine}  # fmt: skip
            print(json.dumps(row), flush=True)
            key = (variant, steps, args.train_steps, settings["num_images"], settings["prediction"])
            rows = [r for r in rows if (r["variant"], r["ddpm_steps"], r["train_steps_asked"],
                                        r["num_images"], r["prediction"]) != key]  # fmt: skip
            rows.append(row)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
