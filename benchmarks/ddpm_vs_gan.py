"""DDPM against a GAN, measured: the default diffusion recipe, DCGAN and the hinge/spectral-norm
GAN, each trained for the same CPU-minute budgets on the same data and scored by the same evaluator.

    .venv/bin/python benchmarks/ddpm_vs_gan.py [--data mnist|fashion-mnist] [--data-dir DIR]
        [--budgets 5,10,20] [--families diffusion,dcgan,hinge] [--seeds 3] [--only CELL,...]
        [--num-samples 5000] [--student CONSISTENCY.safetensors] [--results runs/ddpm_vs_gan]

A cell is (family, budget, seed). Each (family, seed) is one training run through the CLI
(``difflab train`` with the default recipe, or ``difflab train-gan --loss dcgan|hinge``) with
``--max-minutes`` set to the first budget, then continued with ``--resume --max-minutes B`` to
each later budget (the LR is constant, so the 10-minute model is the 5-minute run trained on);
the harness's clock counts training steps only, not previews or checkpoint writes. At each
budget the model is copied aside and scored with ``difflab evaluate`` (N images, seed 1, the
project's evaluator for the data: FID, KID, precision, recall, class entropy and the smallest
class share of the evaluator's predicted labels).

A run **diverged** when (a) training stopped on a non-finite loss (the harness's guard), (b) its
images are flat (mean per-image pixel standard deviation below ``--flat-std``, 0.05 on [-1, 1]:
all-grey or constant samples), or (c) its FID exceeds ``--diverged-fid`` (150 by default; the
JSON keeps every FID, so another threshold can be applied later).

Each finished cell is kept in ``--results`` (``DATA/FAMILY/sSEED/BUDGETmin.json``), so an
interrupted benchmark run continues where it stopped; ``--only diffusion:20:0,hinge:5:1`` (or
``--families``, ``--budgets``, ``--seeds``) selects the cells to compute, and the tables show
every finished cell of the data. At the largest budget the first seed's
64-image grid goes to ``DOC_DIR/ddpm_vs_gan/DATA_FAMILY_Bmin.png``.

Drawing speed, in this process on the first seed's largest-budget models: seconds for 1,000
images from a GAN (one generator evaluation each), from the diffusion model with dpmpp-2m-sde at
20 steps, with DDPM at 1000 steps (timed on ``--ddpm-subset`` images and scaled to 1,000:
the cost is linear in the images, batches of 256), and with DDIM at 4, 2 and 1 steps, which is
what a progressive-distillation student of it costs (the same network, sampled with DDIM); with
``--student`` a consistency-distilled checkpoint (``difflab distill``) at 1, 2 and 4 steps.
Medians of ``--repeats``. The machine's rate on a 2048 x 2048 fp32 matmul (GFLOP/s) is recorded
beside it, so results from two machines can be put side by side.

``--jobs J --threads K`` trains and scores J (family, seed) runs side by side, each with K
threads (the table says which); the timing always uses this process's threads.

Writes ``DOC_DIR/ddpm_vs_gan_DATA.json`` and the table between the ``ddpm_vs_gan:DATA`` markers
of ``DOC_DIR/ddpm_vs_gan.md``. Needs an otherwise idle machine: the budgets are wall time of
training steps on its cores.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from machine import matmul_gflops

ROOT = Path(__file__).resolve().parents[1]
DIFFLAB = [sys.executable, "-m", "difflab"]
FAMILIES: dict[str, list[str]] = {
    "diffusion": ["train"],  # difflab's default recipe (docs/recipe.md)
    "dcgan": ["train-gan", "--loss", "dcgan"],
    "hinge": ["train-gan", "--loss", "hinge"],
}
NONFINITE = ("loss became", "gradient norm became")  # the harness's non-finite guard


def run(
    argv: list[str], *, check: bool = True, threads: int | None = None
) -> subprocess.CompletedProcess:
    """``difflab ARGV`` in a child process, with ``threads`` intra-op threads when given."""
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print("$ difflab " + shlex.join(argv), file=sys.stderr, flush=True)
    proc = subprocess.run(
        [*DIFFLAB, *argv], stdout=sys.stderr, stderr=subprocess.PIPE, text=True, env=env
    )
    sys.stderr.write(proc.stderr)
    if check and proc.returncode != 0:
        raise SystemExit(f"difflab {argv[0]} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def latest_state(run_dir: Path) -> dict[str, Any]:
    """step and elapsed_s of a run's newest checkpoint."""
    from difflab.checkpoint import load_checkpoint
    from difflab.training import latest_checkpoint

    return load_checkpoint(latest_checkpoint(run_dir)).state


# -------------------------------------------------------------------------------------------------
# Cells


class Cells:
    """The cells of one (data, family, seed): one training run continued through the budgets."""

    def __init__(self, args: argparse.Namespace, family: str, seed: int) -> None:
        self.args, self.family, self.seed = args, family, seed
        self.dir = Path(args.results) / args.data / family / f"s{seed}"
        self.run_dir = self.dir / "run"

    def result_path(self, budget: float) -> Path:
        return self.dir / f"{budget:g}min.json"

    def train_to(self, budget: float) -> dict[str, Any]:
        """Train (or continue) to ``budget`` minutes; the model goes to ``Bmin.safetensors``.
        Returns the steps and seconds reached, or the divergence."""
        info_path, snapshot = self.dir / f"{budget:g}min.train.json", self.snapshot(budget)
        if info_path.exists() and (
            snapshot.exists() or json.loads(info_path.read_text()).get("diverged")
        ):
            return json.loads(info_path.read_text())
        diverged = self.dir / "diverged.json"
        if diverged.exists():  # an earlier budget's run stopped on a non-finite loss
            return json.loads(diverged.read_text())
        args, command = self.args, FAMILIES[self.family]
        if (self.run_dir / "checkpoints").is_dir() and any(
            (self.run_dir / "checkpoints").iterdir()
        ):
            elapsed = latest_state(self.run_dir)["elapsed_s"]
            if elapsed >= budget * 60:
                raise SystemExit(
                    f"{self.run_dir} has trained {elapsed / 60:.2f} min, past the {budget:g}-minute "
                    f"budget whose model is missing; remove {self.dir} to redo this family and seed"
                )
            argv = [command[0], "--resume", str(self.run_dir), "--max-minutes", f"{budget:g}",
                    "--no-progress"]  # fmt: skip
        else:
            argv = [*command, "--data", args.data, "--data-dir", args.data_dir, "--seed",
                    str(self.seed), "--max-minutes", f"{budget:g}", "--epochs", "100000",
                    "--sample-every", "0", "--no-progress", "--overwrite",
                    "--out", str(self.run_dir)]  # fmt: skip
        proc = run(argv, check=False, threads=args.threads)
        if proc.returncode != 0:
            if any(text in proc.stderr for text in NONFINITE):
                state = (
                    latest_state(self.run_dir) if (self.run_dir / "checkpoints").is_dir() else {}
                )
                info = {"diverged": "non-finite loss", "message": proc.stderr.strip()[-300:],
                        "steps": state.get("step"), "train_s": state.get("elapsed_s")}  # fmt: skip
                write_json(diverged, info)
                return info
            raise SystemExit(f"difflab {argv[0]} failed ({proc.returncode}): {proc.stderr.strip()}")
        state = latest_state(self.run_dir)
        tmp = snapshot.with_name(f".{snapshot.name}.tmp")
        shutil.copyfile(self.run_dir / "model_final.safetensors", tmp)
        os.replace(tmp, snapshot)
        info = {"steps": state["step"], "train_s": round(state["elapsed_s"], 1), "diverged": None}
        write_json(info_path, info)
        return info

    def snapshot(self, budget: float) -> Path:
        return self.dir / f"{budget:g}min.safetensors"

    def score(self, budget: float, info: dict[str, Any]) -> dict[str, Any]:
        """difflab evaluate of the budget's model, and the divergence rules."""
        args = self.args
        cell = {"family": self.family, "budget_min": budget, "seed": self.seed, **info}
        if info.get("diverged"):
            return cell
        with tempfile.TemporaryDirectory() as tmp:
            out, keep = Path(tmp) / "metrics.json", Path(tmp) / "images.npz"
            run(["evaluate", "--checkpoint", str(self.snapshot(budget)), "--data-dir",
                 args.data_dir, "--num-samples", str(args.num_samples), "--seed", "1",
                 "--save-images", str(keep), "--out", str(out)], threads=args.threads)  # fmt: skip
            report = json.loads(out.read_text())
            pixels = np.load(keep)["images"].astype(np.float32) / 127.5 - 1.0  # (N, C, H, W)
        m = report["metrics"]
        flat = float(pixels.reshape(len(pixels), -1).std(axis=1).mean())
        cell.update({key: m.get(key) for key in ("fid", "kid", "kid_std", "precision", "recall",
                                                  "class_entropy", "class_entropy_max",
                                                  "smallest_class_share")})  # fmt: skip
        cell.update(pixel_std=round(flat, 4), generate_s=report["setup"].get("generate_seconds"))
        if flat < args.flat_std:
            cell["diverged"] = f"flat images (pixel std {flat:.3f} < {args.flat_std:g})"
        elif m["fid"] > args.diverged_fid:
            cell["diverged"] = f"FID {m['fid']:.1f} > {args.diverged_fid:g}"
        return cell

    def grid(self, budget: float) -> None:
        folder = Path(self.args.doc_dir) / "ddpm_vs_gan"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{self.args.data}_{self.family}_{budget:g}min.png"
        run(["sample", "--checkpoint", str(self.snapshot(budget)), "--num-images", "64",
             "--seed", "0", "--out", str(folder / name)], threads=self.args.threads)  # fmt: skip


def selected(args: argparse.Namespace, family: str, budget: float, seed: int) -> bool:
    if not args.only:
        return True
    return (family, budget, seed) in args.only


def run_group(args: argparse.Namespace, family: str, seed: int) -> list[dict[str, Any]]:
    """The selected budgets of one (family, seed), in order: one training run continued."""
    group, cells = Cells(args, family, seed), []
    for budget in args.budgets:
        if not selected(args, family, budget, seed):
            continue
        path = group.result_path(budget)
        if path.exists():
            cells.append(json.loads(path.read_text()))
            continue
        cell = group.score(budget, group.train_to(budget))
        last, first = budget == max(args.budgets), seed == args.seeds[0]
        if last and first and group.snapshot(budget).exists():  # diverged ones too
            group.grid(budget)
        write_json(path, cell)
        cells.append(cell)
    return cells


def run_cells(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every selected (family, seed) group, ``--jobs`` of them at a time (each in its own
    child processes with ``--threads`` threads), seeds first so that each family's first seed
    is done early."""
    groups = [(family, seed) for seed in args.seeds for family in args.families]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        done = pool.map(lambda g: run_group(args, *g), groups)
        return [cell for cells in done for cell in cells]


# -------------------------------------------------------------------------------------------------
# Summary, timing, the table

METRICS = ("fid", "kid", "precision", "recall", "class_entropy", "smallest_class_share", "steps")


def summarise(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (family, budget): mean, sample standard deviation, min and max over the seeds that
    did not diverge, and how many diverged."""
    rows = []
    for key in sorted({(c["family"], c["budget_min"]) for c in cells},
                      key=lambda k: (list(FAMILIES).index(k[0]), k[1])):  # fmt: skip
        group = [c for c in cells if (c["family"], c["budget_min"]) == key]
        good = [c for c in group if not c.get("diverged")]
        row: dict[str, Any] = {"family": key[0], "budget_min": key[1], "seeds": len(group),
                               "diverged": len(group) - len(good)}  # fmt: skip
        for metric in [*METRICS, "fid_all"]:  # steps and fid_all: every run, diverged or not
            pool = group if metric in ("steps", "fid_all") else good
            values = [c[metric.removesuffix("_all")] for c in pool
                      if c.get(metric.removesuffix("_all")) is not None]  # fmt: skip
            if values:
                row[metric] = {"mean": statistics.fmean(values),
                               "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                               "min": min(values), "max": max(values)}  # fmt: skip
        rows.append(row)
    return rows


def timing(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds to draw ``--timing-images`` (1,000) images from each family's first-seed model at
    the largest budget, scaled to 1,000 where a subset was timed."""
    from difflab.kinds import draw, load_model

    budget, seed, n = max(args.budgets), args.seeds[0], args.timing_images
    plans: list[tuple[str, Path, dict[str, Any], int]] = []
    for family in args.families:
        ckpt = Cells(args, family, seed).snapshot(budget)
        if not ckpt.exists():
            continue
        if family == "diffusion":
            plans.append(
                ("diffusion dpmpp-2m-sde 20", ckpt, {"sampler": "dpmpp-2m-sde", "steps": 20}, n)
            )
            plans.append(("diffusion ddpm 1000", ckpt, {"sampler": "ddpm", "steps": 1000},
                          args.ddpm_subset))  # fmt: skip
            # A progressive-distillation student is this network sampled with DDIM at 1-4 steps
            # (docs/few_step.md), so these rows are its drawing cost, whatever its quality.
            for steps in (4, 2, 1):
                plans.append((f"diffusion ddim {steps} (a distilled student's cost)", ckpt,
                              {"sampler": "ddim", "steps": steps}, n))  # fmt: skip
        else:
            plans.append((f"{family} generator", ckpt, {}, n))
    if args.student:
        for steps in (1, 2, 4):
            plans.append((f"consistency student {steps}", Path(args.student), {"steps": steps}, n))
    rows = {}
    for name, ckpt, sampling, images in plans:
        loaded = load_model(ckpt, "cpu")
        draw(loaded, num_images=min(images, 8), seed=0, **sampling)  # warm-up
        times = []
        for _ in range(1 if "ddpm" in name else args.repeats):
            start = time.perf_counter()
            draw(loaded, num_images=images, seed=0, **sampling)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times) * 1000 / images
        rows[name] = {"seconds_per_1000": round(seconds, 3), "timed_images": images,
                      "scaled": images != 1000}  # fmt: skip
    return {"model_budget_min": budget, "seed": seed, "rows": rows}


def runs_threads(results: dict[str, Any]) -> str:
    """'1 thread, 2 runs', as the table's caption says it."""
    threads, jobs = results["machine"]["threads_per_run"], results["machine"]["jobs"]
    return f"{threads} thread{'s' * (threads > 1)}, {jobs} run{'s' * (jobs > 1)}"


def fmt(row: dict[str, Any], metric: str, digits: int) -> str:
    if metric not in row:
        return "-"
    v = row[metric]
    return f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}"


def table(results: dict[str, Any]) -> str:
    lines = [
        f"Data: {results['data']}, N = {results['num_samples']} per model, seeds per cell: "
        f"{results['seeds']}; machine: {results['machine']['matmul_gflops']:.0f} GFLOP/s fp32 "
        f"matmul; each run trained and scored on {runs_threads(results)} at a time. Mean ± "
        "standard deviation over the seeds that did not diverge.",
        "",
        "| family | minutes | steps | FID | KID | precision | recall | class entropy | "
        "smallest class share | diverged | FID, every run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["summary"]:
        lines.append(
            f"| {r['family']} | {r['budget_min']:g} | {fmt(r, 'steps', 0)} | {fmt(r, 'fid', 2)} | "
            f"{fmt(r, 'kid', 4)} | {fmt(r, 'precision', 3)} | {fmt(r, 'recall', 3)} | "
            f"{fmt(r, 'class_entropy', 3)} | {fmt(r, 'smallest_class_share', 3)} | "
            f"{r['diverged']} of {r['seeds']} | {fmt(r, 'fid_all', 2)} |"
        )
    t = results.get("timing")
    if t and t["rows"]:
        lines += ["", f"Seconds to draw 1,000 images ({t['model_budget_min']:g}-minute models, "
                  f"seed {t['seed']}, {results['machine']['threads']} threads):", "",
                  "| model | seconds / 1,000 images | timed on |", "|---|---|---|"]  # fmt: skip
        for name, row in t["rows"].items():
            note = f"{row['timed_images']} images, scaled" if row["scaled"] else "1,000 images"
            lines.append(f"| {name} | {row['seconds_per_1000']:.2f} | {note} |")
    return "\n".join(lines)


def write_doc(path: Path, data: str, text: str) -> None:
    begin, end = f"<!-- ddpm_vs_gan:{data}:begin -->", f"<!-- ddpm_vs_gan:{data}:end -->"
    doc = path.read_text() if path.exists() else "# DDPM against a GAN\n"
    if begin not in doc:
        doc = doc.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    head, rest = doc.split(begin)
    path.write_text(head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1])


def ensure_evaluator(args: argparse.Namespace) -> None:
    from difflab import evaluation as ev

    if not ev.default_evaluator_path(args.data, 28, args.data_dir).exists():
        run(["train-evaluator", "--data", args.data, "--data-dir", args.data_dir, "--no-progress"])


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist", choices=("mnist", "fashion-mnist"))
    parser.add_argument("--data-dir", help="the IDX files (default: ../shared/data/DATA)")
    parser.add_argument("--budgets", default="5,10,20", help="training CPU-minutes")
    parser.add_argument("--families", default=",".join(FAMILIES), help="of " + ",".join(FAMILIES))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 per cell")
    parser.add_argument("--only", help="cells FAMILY:BUDGET:SEED,... (of the other selections)")
    parser.add_argument("--num-samples", type=int, default=5000, help="images per evaluate")
    parser.add_argument("--diverged-fid", type=float, default=150.0)
    parser.add_argument("--flat-std", type=float, default=0.05)
    parser.add_argument("--student", help="a consistency-distilled checkpoint to time at 1-4 steps")
    parser.add_argument("--timing-images", type=int, default=1000)
    parser.add_argument("--ddpm-subset", type=int, default=50, help="images DDPM-1000 is timed on")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="(family, seed) runs at a time")
    parser.add_argument("--threads", type=int, help="threads per run (default: torch's default)")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--results", default=str(ROOT / "runs" / "ddpm_vs_gan"))
    parser.add_argument("--doc-dir", default=str(ROOT / "docs"))
    args = parser.parse_args(argv)
    args.budgets = sorted(float(b) for b in args.budgets.split(","))
    args.families = [f for f in args.families.split(",") if f]
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; expected some of {', '.join(FAMILIES)}")
    args.seeds = list(range(args.seeds))
    if args.only:
        cells = [c.split(":") for c in args.only.split(",")]
        args.only = {(f, float(b), int(s)) for f, b, s in cells}
    default_dir = ROOT.parent / "shared" / "data" / args.data
    args.data_dir = str(Path(args.data_dir) if args.data_dir else default_dir)
    if not Path(args.data_dir).is_dir():
        parser.error(f"--data-dir {args.data_dir} does not exist")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    machine = {"matmul_gflops": round(matmul_gflops(), 1), "threads": torch.get_num_threads(),
               "threads_per_run": args.threads or torch.get_num_threads(), "jobs": args.jobs,
               "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "torch": torch.__version__}  # fmt: skip
    print(json.dumps({"machine": machine}), file=sys.stderr)
    ensure_evaluator(args)
    run_cells(args)
    # The table shows every finished cell of the data, also those an earlier invocation made.
    folder = Path(args.results) / args.data
    cells = [json.loads(p.read_text()) for p in sorted(folder.glob("*/s*/*min.json"))]
    results: dict[str, Any] = {
        "benchmark": "ddpm_vs_gan", "data": args.data, "num_samples": args.num_samples,
        "seeds": max(c["seed"] for c in cells) + 1 if cells else 0,
        "budgets_min": sorted({c["budget_min"] for c in cells}), "machine": machine,
        "divergence": f"a non-finite loss stop, or mean per-image pixel std < {args.flat_std:g} "
        f"(flat images), or FID > {args.diverged_fid:g}",
        "cells": cells, "summary": summarise(cells),
    }  # fmt: skip
    if not args.no_timing:
        write_json(folder / "timing.json", timing(args))
    if (folder / "timing.json").exists():  # the last timing made, kept with the cells
        results["timing"] = json.loads((folder / "timing.json").read_text())
    doc_dir = Path(args.doc_dir)
    write_json(doc_dir / f"ddpm_vs_gan_{args.data}.json", results)
    write_doc(doc_dir / "ddpm_vs_gan.md", args.data, table(results))
    print(table(results))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
