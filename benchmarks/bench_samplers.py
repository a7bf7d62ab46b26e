"""Wall time of each sampler and step count on one trained model, same process, same noise.

For each (sampler, steps) it draws ``--num-images`` images (64 by default) with the checkpoint's
EMA weights and reports the wall time, the network evaluations per second (images x steps / s)
and, with ``--fid-samples N``, FID/KID from ``difflab evaluate``'s feature network
(the class-conditional images are labelled i % num_classes there) (which must
have been trained: ``difflab train-evaluator --data mnist --data-dir DIR``). The reference point
for both is the 1000-step DDPM: the script prints each sampler's time and FID relative to it.

    python benchmarks/bench_samplers.py --checkpoint runs/mnist/model_final.safetensors \\
        [--num-images 64] [--fid-samples 2000] [--class-label 3 --guidance 2]

Run it on an otherwise idle machine: a second process on the 2 cores makes timings meaningless.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from difflab.cli import main as cli_main
from difflab.kinds import load_model
from difflab.sampling import check_guidance, class_labels, generate

CONFIGS = [  # (sampler, steps, options)
    ("ddpm", 1000, {}),
    ("ddpm", 250, {}),
    ("ddpm", 100, {}),
    ("ddim", 100, {}),
    ("ddim", 50, {}),
    ("ddim", 20, {}),
    ("dpmpp-2m", 50, {}),
    ("dpmpp-2m", 20, {}),
    ("dpmpp-2m", 10, {}),
    ("dpmpp-2m-sde", 20, {}),
    ("dpmpp-2m-sde", 10, {}),
]


def time_sampler(loaded, sampler, steps, num_images, labels, guidance, seed=0):
    start = time.perf_counter()
    images = generate(
        loaded.model, loaded.config, loaded.schedule, num_images=num_images, seed=seed,
        sampler=sampler, steps=steps, labels=labels, guidance=guidance,
    )  # fmt: skip
    return time.perf_counter() - start, images


def quality(args: argparse.Namespace, sampler: str, steps: int) -> dict[str, float]:
    """FID and KID of ``--fid-samples`` images from ``difflab evaluate`` (same seed each time)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "metrics.json"
        argv = ["evaluate", "--checkpoint", args.checkpoint, "--sampler", sampler, "--steps",
                str(steps), "--num-samples", str(args.fid_samples), "--seed", "1", "--out", str(out)]  # fmt: skip
        if args.guidance is not None:
            argv += ["--guidance", str(args.guidance)]
        if args.evaluator:
            argv += ["--evaluator", args.evaluator]
        with contextlib.redirect_stdout(sys.stderr):
            if cli_main(argv) != 0:
                raise SystemExit("difflab evaluate failed; see the message above")
        metrics = json.loads(out.read_text())["metrics"]
    keys = ("fid", "kid", "precision", "recall", "class_accuracy")
    return {k: round(metrics[k], 4) for k in keys if metrics.get(k) is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--fid-samples", type=int, default=0, help="0 = timings only")
    parser.add_argument("--class-label", default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--evaluator", default=None, help="evaluator file (default: user cache)")
    parser.add_argument("--only", default=None, help="comma-separated sampler:steps to run")
    args = parser.parse_args()

    loaded = load_model(args.checkpoint, "cpu")
    config = loaded.config
    guidance = check_guidance(config, args.guidance)
    configs = CONFIGS
    if args.only:
        wanted = {tuple(item.split(":")) for item in args.only.split(",")}
        configs = [c for c in CONFIGS if (c[0], str(c[1])) in wanted]

    results = []
    passes = 2 if config.model.num_classes and guidance not in (0.0, 1.0) else 1  # guided: 2B batch
    for sampler, steps, _ in configs:
        labels = class_labels(config, args.class_label, args.num_images)
        seconds, _ = time_sampler(loaded, sampler, steps, args.num_images, labels, guidance)
        row = {
            "sampler": sampler, "steps": steps, "num_images": args.num_images,
            "seconds": round(seconds, 3),
            "images_x_steps_per_s": round(args.num_images * steps / seconds, 1),
            "network_evals_per_s": round(passes * args.num_images * steps / seconds, 1),
        }  # fmt: skip
        if args.fid_samples:
            row.update(quality(args, sampler, steps))
        results.append(row)
        print(json.dumps(row), flush=True)

    base = next((r for r in results if r["sampler"] == "ddpm" and r["steps"] == 1000), None)
    if base is not None:
        for r in results:
            r["time_vs_ddpm1000"] = round(r["seconds"] / base["seconds"], 4)
            if "fid" in base and "fid" in r:
                r["fid_vs_ddpm1000"] = round(r["fid"] / base["fid"], 3)
    summary = {
        "benchmark": "samplers",
        "checkpoint": args.checkpoint,
        "guidance": guidance if config.model.num_classes else None,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "load_average": os.getloadavg(),
        "results": results,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
