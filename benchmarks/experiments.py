"""The seed experiments, one command each: what changes FID when one thing changes.

    .venv/bin/python benchmarks/experiments.py NAME [NAME ...] | all [--minutes 5]
        [--data-dir ../shared/data/mnist] [--num-samples 1000] [--runs runs/experiments]
        [--doc docs/experiments.md] [--fresh]
    .venv/bin/python benchmarks/experiments.py --list

NAME is one of ``EXPERIMENTS`` below: training-time, batch-size, learning-rate, timesteps,
schedule, dataset, backend. Each arm is one ``difflab train`` of the default recipe with one
thing changed and the same wall-time budget (``--minutes``; the training-time experiment instead
resumes one run to a quarter, a half and all of it), then one ``difflab evaluate`` (N images,
seed 1, the project's evaluator for the data, the default sampler). Every command is printed
before it runs, so any row can be rerun by hand.

Each experiment writes ``RUNS/NAME/results.json`` (the rows, the commands, the machine's matmul
rate, the steps each arm reached) and ``RUNS/NAME/NAME.png`` (FID per arm beside the arms' loss
trends), and replaces its section of ``--doc`` (between the ``experiment:NAME`` markers) with its
table and the figure (copied into a folder named after the page, docs/experiments/). The budget
is wall time of training steps: run on an otherwise idle machine, and compare numbers within one
run only (machines differ up to 3.6x in speed; the matmul rate says which).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from difflab.checkpoint import load_checkpoint
from difflab.training import latest_checkpoint
from difflab.viz import smooth_curve
from machine import matmul_gflops

ROOT = Path(__file__).resolve().parents[1]
DIFFLAB = [sys.executable, "-m", "difflab"]
FASHION_DIRS = (
    ROOT.parent / "shared/data/fashion-mnist",
    Path("/usr/share/datasets/fashion-mnist"),
)


@dataclass(frozen=True)
class Arm:
    label: str  # the row's name
    flags: tuple[str, ...] = ()  # what differs from the default recipe
    data: str = "mnist"
    budget: float = 1.0  # fraction of --minutes (training-time resumes one run through them)


@dataclass(frozen=True)
class Experiment:
    question: str  # what the experiment asks, for the doc
    arms: tuple[Arm, ...] = field(default_factory=tuple)
    resumed: bool = False  # one run resumed through the arms' budgets (training time)


EXPERIMENTS: dict[str, Experiment] = {
    "training-time": Experiment(
        "How does FID fall with training time?",
        (Arm("1/4 of the budget", budget=0.25), Arm("1/2", budget=0.5), Arm("all", budget=1.0)),
        resumed=True,
    ),
    "batch-size": Experiment(
        "Bigger batches or more steps, for the same time?",
        (
            Arm("batch 32", ("--batch-size", "32")),
            Arm("batch 64 (default)"),
            Arm("batch 128", ("--batch-size", "128")),
        ),
    ),
    "learning-rate": Experiment(
        "How sensitive is training to the learning rate?",
        (
            Arm("lr 3e-4", ("--lr", "3e-4")),
            Arm("lr 1e-3 (default)"),
            Arm("lr 3e-3", ("--lr", "3e-3")),
        ),
    ),
    "timesteps": Experiment(
        "Does the number of diffusion steps T matter (sampling with the same 20 solver steps)?",
        (
            Arm("T = 500", ("--timesteps", "500")),
            Arm("T = 1000 (default)"),
            Arm("T = 2000", ("--timesteps", "2000")),
        ),
    ),
    "schedule": Experiment(
        "Linear (Ho et al. 2020) against cosine (Nichol & Dhariwal 2021) noise schedule",
        (Arm("linear", ("--schedule", "linear")), Arm("cosine (default)")),
    ),
    "dataset": Experiment(
        "The same recipe and budget on MNIST and on Fashion-MNIST (each scored by its own "
        "evaluator, so the FIDs are not on one scale)",
        (Arm("mnist"), Arm("fashion-mnist", data="fashion-mnist")),
    ),
    "backend": Experiment(
        "The from-scratch NumPy U-Net against PyTorch, for the same time",
        (Arm("numpy", ("--backend", "numpy")), Arm("torch (default)")),
    ),
}


def run(argv: list[str], log: list[str], reuse: Path | None = None) -> None:
    """Print and log one difflab command, then run it, unless ``reuse`` (its output) exists
    already: a rerun skips what is done (callers pass no ``reuse`` under --fresh)."""
    line = "difflab " + shlex.join(argv)
    log.append(line)
    if reuse is not None and reuse.exists():
        print(f"$ {line}  # done already: reusing {reuse}", file=sys.stderr, flush=True)
        return
    print("$ " + line, file=sys.stderr, flush=True)
    subprocess.run([*DIFFLAB, *argv], check=True, stdout=sys.stderr)


def data_dir(args: argparse.Namespace, data: str) -> str:
    if data == "mnist":
        return args.data_dir
    if args.fashion_dir:
        return args.fashion_dir
    found = next((d for d in FASHION_DIRS if d.is_dir()), None)
    if found is None:
        raise SystemExit("no Fashion-MNIST files found; pass --fashion-dir DIR")
    return str(found)


def evaluator_ready(args: argparse.Namespace, data: str, log: list[str]) -> None:
    """Train the data's evaluator once (it lands in the user cache, where evaluate looks)."""
    from difflab.evaluation import default_evaluator_path

    size = 28
    if not default_evaluator_path(data, size).exists():
        run(["train-evaluator", "--data", data, "--data-dir", data_dir(args, data),
             "--no-progress"], log)  # fmt: skip


def run_metrics(run_dir: Path) -> tuple[list[int], list[float], float]:
    """The run's loss curve (steps, losses) and the wall time of its training steps, from its
    metrics.jsonl (the NumPy backend's checkpoints do not hold the time)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    seconds = max(r["elapsed_s"] for r in rows if "elapsed_s" in r)
    rows = [r for r in rows if r.get("loss") is not None]
    return [r["step"] for r in rows], [r["loss"] for r in rows], seconds


def arm_dir(args: argparse.Namespace, arm: Arm) -> Path:
    """Where an arm trains. Arms with the same data, flags and minutes are one run, trained once
    per --runs folder: the default recipe is an arm of six experiments, and a rerun continues
    where an interrupted one stopped (--fresh trains everything again)."""
    words = [
        arm.data,
        *(flag.lstrip("-") for flag in arm.flags),
        f"{arm.budget * args.minutes:g}min",
    ]
    return Path(args.runs) / "arms" / "_".join(words)


def arm_row(args: argparse.Namespace, arm: Arm, run_dir: Path, log: list[str]) -> dict:
    ckpt = run_dir / "model_final.safetensors"
    metrics = run_dir / f"metrics_{arm.budget:g}_n{args.num_samples}.json"
    run(["evaluate", "--checkpoint", str(ckpt), "--num-samples", str(args.num_samples),
         "--seed", "1", "--out", str(metrics)], log, reuse=None if args.fresh else metrics)  # fmt: skip
    report = json.loads(metrics.read_text())
    steps, values, seconds = run_metrics(run_dir)
    state = load_checkpoint(latest_checkpoint(run_dir)).state  # where training stopped
    trend = smooth_curve(values, max(1, len(values) // 10))
    return {
        "arm": arm.label, "data": arm.data, "flags": list(arm.flags),
        "minutes": round(arm.budget * args.minutes, 3), "steps": state["step"],
        "train_s": round(seconds, 1), "final_loss": round(float(trend[-1]), 5),
        "fid": round(report["metrics"]["fid"], 3), "kid": round(report["metrics"]["kid"], 5),
        "sample_s": report["setup"].get("generate_seconds"),
        "steps_curve": steps, "loss_curve": [round(v, 5) for v in values],
    }  # fmt: skip


def run_experiment(args: argparse.Namespace, name: str) -> dict:
    experiment = EXPERIMENTS[name]
    out, log, rows = Path(args.runs) / name, [], []
    out.mkdir(parents=True, exist_ok=True)  # its results; the arms train under RUNS/arms
    for data in sorted({arm.data for arm in experiment.arms}):
        evaluator_ready(args, data, log)
    for i, arm in enumerate(experiment.arms):
        run_dir = out / "run" if experiment.resumed else arm_dir(args, arm)
        minutes = f"{arm.budget * args.minutes:g}"
        if experiment.resumed and i > 0:
            run(["train", "--resume", str(run_dir), "--max-minutes", minutes, "--no-progress"], log)
        else:
            shared = not experiment.resumed and not args.fresh
            run(["train", "--data", arm.data, "--data-dir", data_dir(args, arm.data),
                 *arm.flags, "--epochs", "1000", "--max-minutes", minutes, "--seed", "0",
                 "--sample-every", "0", "--no-progress", "--overwrite", "--out", str(run_dir)],
                log, reuse=run_dir / "model_final.safetensors" if shared else None)  # fmt: skip
        rows.append(arm_row(args, arm, run_dir, log))
    results = {"experiment": name, "question": experiment.question, "minutes": args.minutes,
               "num_samples": args.num_samples, "matmul_gflops": round(matmul_gflops(), 1),
               "rows": rows, "commands": log}  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    figure(results, out / f"{name}.png")
    if args.doc:
        write_doc(Path(args.doc), results, out / f"{name}.png")
    return results


def figure(results: dict, path: Path) -> Path:
    """FID per arm (bars) beside each arm's loss trend against training step (log axis)."""
    rows = results["rows"]
    fig = Figure(figsize=(11, 4.2))
    ax = fig.add_subplot(1, 2, 1)
    ax.bar(range(len(rows)), [r["fid"] for r in rows], color=[f"C{i}" for i in range(len(rows))])
    ax.set_xticks(range(len(rows)), [r["arm"] for r in rows], rotation=15)
    ax.set_ylabel(f"FID (N = {results['num_samples']})")
    ax.set_title(results["question"], fontsize=9)
    ax = fig.add_subplot(1, 2, 2)
    for i, r in enumerate(rows):
        trend = smooth_curve(r["loss_curve"], max(1, len(r["loss_curve"]) // 10))
        ax.plot(r["steps_curve"], trend, color=f"C{i}", label=f"{r['arm']} ({r['steps']} steps)")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (trend)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    FigureCanvasAgg(fig)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def write_doc(doc: Path, results: dict, picture: Path) -> None:
    name = results["experiment"]
    begin, end = f"<!-- experiment:{name}:begin -->", f"<!-- experiment:{name}:end -->"
    lines = [begin, f"### {name}: {results['question']}", "",
             f"{results['minutes']:g} minutes per arm on a {results['matmul_gflops']:g} GFLOP/s "
             f"machine, FID at N = {results['num_samples']}.", "",
             "| arm | steps | final loss | FID | KID | sampling s |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in results["rows"]:
        lines.append(f"| {r['arm']} | {r['steps']} | {r['final_loss']:.4f} | {r['fid']:.2f} | "
                     f"{r['kid']:.4f} | {r['sample_s']} |")  # fmt: skip
    if not picture.is_relative_to(doc.parent):  # the figure goes beside the page it is in
        copy = doc.parent / doc.stem / picture.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(picture, copy)
        picture = copy
    lines += ["", f"![{name}]({picture.relative_to(doc.parent)})", end]
    text = doc.read_text() if doc.exists() else "# The seed experiments\n"
    if begin in text:
        head, rest = text.split(begin)
        text = head + "\n".join(lines) + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"
    doc.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="experiments to run, in order, or 'all' (see --list)")  # fmt: skip
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget per arm")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared/data/mnist"))
    parser.add_argument("--fashion-dir", help="Fashion-MNIST files (default: where they lie)")
    parser.add_argument("--num-samples", type=int, default=1000, help="images FID is taken on")
    parser.add_argument("--runs", default="runs/experiments", help="where the runs go")
    parser.add_argument("--fresh", action="store_true",
                        help="train and evaluate every arm again, even one already in --runs")  # fmt: skip
    parser.add_argument("--doc", default=str(ROOT / "docs/experiments.md"),
                        help="the page whose section is replaced ('' for none)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.list or not args.names:
        for name, experiment in EXPERIMENTS.items():
            print(f"{name:14} {experiment.question}")
        return
    names = list(EXPERIMENTS) if args.names == ["all"] else args.names
    unknown = [name for name in names if name not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiment {unknown[0]!r}; expected 'all' or one of "
                     f"{', '.join(EXPERIMENTS)}")  # fmt: skip
    for name in names:
        print(json.dumps(run_experiment(args, name), indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
