"""One and two steps from a flow matching teacher: reflow against MeanFlow on real MNIST.

    .venv/bin/python benchmarks/flow_few_step.py --data-dir ../shared/data/mnist \\
        --teacher runs/flow_vs_ddpm/flow/model_final.safetensors [--steps 2000] \\
        [--pairs 10000] [--num-samples 2000] [--runs runs/flow_few_step]

From one flow teacher (``difflab train --objective flow``), each route trains a fixed number of
steps (``--steps``, batch 64), so its quality does not depend on the machine; the CPU-minutes
each took are recorded beside it (the teacher's own from its metrics.jsonl), wall time including
reflow's pair drawing:

- ``reflow``: ``difflab distill --method reflow`` (``--pairs`` teacher ODE pairs, Heun 10 steps);
- ``meanflow``: ``difflab distill --method meanflow`` (fine-tuned with the JVP target).

Every model is scored by ``difflab evaluate`` at 1 and 2 steps (the teacher with Euler, and at
20 UniPC evaluations for reference), N = ``--num-samples``, seed 1, against the test split. A
grid of each route's one-step images (seed 0) is written to ``docs/flow/`` for looking at.
Then each model's straightness (Liu et al. 2022: how far its ODE paths are from the straight
lines one Euler step follows; ``--straightness-only`` measures just that on finished runs).
Prints one JSON row per model and steps, then the machine's fp32 matmul rate.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_name, matmul_gflops

ROOT = Path(__file__).resolve().parents[1]
DIFFLAB = [sys.executable, "-m", "difflab"]


def run(argv: list[str]) -> float:
    """Run ``difflab ARGV``; the wall seconds it took."""
    print("$ difflab " + shlex.join(argv), file=sys.stderr, flush=True)
    start = time.perf_counter()
    subprocess.run([*DIFFLAB, *argv], check=True, stdout=sys.stderr)
    return time.perf_counter() - start


def score(args: argparse.Namespace, checkpoint: Path, steps: int, sampler: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "metrics.json"
        how = ["--sampler", sampler] if sampler else []
        run(["evaluate", "--checkpoint", str(checkpoint), "--data-dir", args.data_dir,
             "--num-samples", str(args.num_samples), *how, "--steps", str(steps), "--seed", "1",
             "--no-progress", "--out", str(out)])  # fmt: skip
        m = json.loads(out.read_text())["metrics"]
    return {"fid": round(m["fid"], 2), "precision": round(m["precision"], 3),
            "recall": round(m["recall"], 3)}  # fmt: skip


def teacher_minutes(teacher: Path) -> float:
    log = teacher.parent / "metrics.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return max(r.get("elapsed_s", 0.0) for r in records) / 60


def straightness_rows(teacher: Path, runs: Path, routes: list[str], n: int = 256) -> list[dict]:
    """Each model's straightness (``flow.straightness``: the mean squared gap between v and the
    path's chord, per pixel) along 50 Euler steps from the same ``n`` noise draws; a MeanFlow
    network is read at r = t (its instantaneous velocity)."""
    import torch

    from difflab.flow import flow_timesteps, straightness
    from difflab.kinds import load_model
    from difflab.sampling.draw import flow_velocity

    rows = []
    for name, ckpt in [
        ("teacher", teacher),
        *((r, runs / r / "model_final.safetensors") for r in routes),
    ]:
        loaded = load_model(ckpt, "cpu")
        shape = (n, loaded.config.model.in_channels, *(2 * [loaded.config.model.image_size]))
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            s = straightness(flow_velocity(loaded.model, None, 1.0, 0), x, flow_timesteps(50))
        rows.append({"model": name, "straightness": round(float(s.mean()), 4)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="the MNIST IDX files")
    p.add_argument("--teacher", required=True, help="a flow matching checkpoint")
    p.add_argument("--steps", type=int, default=2000, help="training steps of each route")
    p.add_argument("--pairs", type=int, default=10000, help="reflow's teacher pairs")
    p.add_argument("--num-samples", type=int, default=2000)
    p.add_argument("--routes", default="reflow,meanflow")
    p.add_argument("--runs", default="runs/flow_few_step")
    p.add_argument("--straightness-only", action="store_true", help="measure the trained runs' "
                   "straightness only (no training or FID)")  # fmt: skip
    args = p.parse_args()
    if args.straightness_only:
        for row in straightness_rows(Path(args.teacher), Path(args.runs), args.routes.split(",")):
            print(json.dumps(row), flush=True)
        return
    rate = matmul_gflops()
    teacher, runs = Path(args.teacher), Path(args.runs)
    base_minutes = teacher_minutes(teacher)
    rows = []

    def emit(row: dict) -> None:
        row |= {"cpu": cpu_name(), "matmul_gflops": round(rate)}
        rows.append(row)
        print(json.dumps(row), flush=True)

    for steps, sampler in ((1, "euler"), (2, "euler"), (20, "unipc")):
        emit({"model": "teacher", "sampler": sampler, "steps": steps,
              "cpu_minutes": round(base_minutes, 1), **score(args, teacher, steps, sampler)})  # fmt: skip
    extra = {"reflow": ["--pairs", str(args.pairs)], "meanflow": []}
    for route in args.routes.split(","):
        out = runs / route
        seconds = run(["distill", "--teacher", str(teacher), "--method", route,
                       "--data-dir", args.data_dir, "--max-steps", str(args.steps),
                       "--epochs", "1000", "--sample-every", "0", "--no-progress",
                       "--overwrite", *extra[route], "--out", str(out)])  # fmt: skip
        ckpt = out / "model_final.safetensors"
        for steps in (1, 2):
            emit({"model": route, "sampler": "default", "steps": steps,
                  "train_steps": args.steps, "cpu_minutes": round(base_minutes + seconds / 60, 1),
                  **score(args, ckpt, steps, None)})  # fmt: skip
        run(["sample", "--checkpoint", str(ckpt), "--steps", "1", "--num-images", "64",
             "--seed", "0", "--out", str(ROOT / "docs" / "flow" / f"{route}_1step.png")])  # fmt: skip
    for row in straightness_rows(teacher, runs, args.routes.split(",")):
        print(json.dumps(row), flush=True)
    print(json.dumps({"matmul_gflops_end": round(matmul_gflops())}))


if __name__ == "__main__":
    main()
