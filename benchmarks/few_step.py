"""Few-step generation on real MNIST: the teacher's samplers against its distilled student.

    .venv/bin/python benchmarks/few_step.py --data-dir ../shared/data/mnist --teacher RUN/model_final.safetensors \\
        [--budgets 10,20] [--num-samples 5000] [--ddpm] [--runs /tmp/few_step]

Rows, every one scored by ``difflab evaluate`` (the project's MNIST evaluator, the test split,
the same N and seed):
- the teacher (the default recipe's 10-minute model: ``difflab train --data mnist --max-minutes
  10``; ``--teacher-minutes M`` trains one first when ``--teacher`` is not given) with
  ``dpmpp-2m-sde`` 20 steps, ``--ddpm`` adds DDPM-1000 (hours of a CPU: its images are kept in
  chunks under ``--runs``, drawn over several runs, or in minutes on a GPU by ``--ddpm-images-only
  --ddpm-device cuda`` and copied there; scored last), and the training-free high-order solvers
  that ``difflab.samplers`` has (``ipndm``, ``dpmpp-3m``, ``unipc``) at 4, 6 and 10 steps;
- the student, ``difflab distill --teacher ...`` continued with ``--resume --max-minutes B`` to
  each budget B (its clock counts distillation steps only), at 1, 2 and 4 steps;
- with ``--progressive``, progressive distillation's students (``difflab distill --method
  progressive``, DDIM ``--pd-start-steps`` 16 -> 8 -> ... -> 1, the first teacher stepping with
  ``--teacher-solver``) at each budget B, a run of its own: 1-minute calibration runs measure the
  steps per second of the first round and of the others, and the rounds are sized to fill B
  (``--round-steps``); its 4-, 2- and 1-step students are scored. ``--pd-steps 1,4`` adds, at
  each budget, a run that stops at 4 steps (two rounds, sized the same way; its 4-step student);
  ``--pd-dmd-steps S`` ends that run with S steps of distribution matching at the largest
  budget, S x B / largest at a smaller one B (``difflab distill --dmd-steps``, after its warm-up;
  a probe measures the stage's rate, and the rounds fill the rest of the budget), with the weight
  ``--pd-dmd-weight`` gives that stop (``4:0.2,2:0.3``, or one weight for all), sampling the
  mean of its last ``--pd-dmd-average`` steps (scaled the same way) where given, and scores both
  its students, before the stage and after.

Timing: 64 images from the student at 1 step against the teacher's 20-step ``dpmpp-2m-sde``,
in this process, alternating, median of 5. Writes ``docs/few_step.json``, the table in
``docs/few_step.md`` between the ``few_step`` markers and 64-image grids in ``docs/few_step/``.
Needs an otherwise idle machine: the budgets are wall time on its cores.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from difflab.config import TEACHER_SOLVERS, ProgressiveConfig
from difflab.kinds import load_model, plan_sampling
from difflab.objectives.progressive import round_plan
from difflab.samplers import SAMPLERS
from difflab.sampling import SamplingRequest, execute, generate
from difflab.viz import save_grid
from machine import device_name, matmul_gflops

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "few_step.json"
DOC = ROOT / "docs" / "few_step.md"
GRIDS = ROOT / "docs" / "few_step"
BEGIN, END = "<!-- few_step:begin -->", "<!-- few_step:end -->"
DIFFLAB = [sys.executable, "-m", "difflab"]
TRAINING_FREE = [name for name in ("ipndm", "dpmpp-3m", "unipc") if name in SAMPLERS]


def run(argv: list[str]) -> None:
    print("$ difflab " + shlex.join(argv), file=sys.stderr, flush=True)
    subprocess.run([*DIFFLAB, *argv], check=True, stdout=sys.stderr)


def score(args: argparse.Namespace, ckpt: Path, sampling: list[str]) -> dict:
    return evaluated(args, ["--checkpoint", str(ckpt), *sampling])


def evaluated(args: argparse.Namespace, source: list[str]) -> dict:
    """A row's metric columns: ``difflab evaluate`` of ``source`` (a checkpoint and its sampling,
    or ``--images``) at ``--num-samples``, seed 1."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "metrics.json"
        run(["evaluate", *source, "--num-samples", str(args.num_samples), "--seed", "1",
             "--no-progress", "--out", str(out)])  # fmt: skip
        report = json.loads(out.read_text())
    m = report["metrics"]
    return {"fid": round(m["fid"], 3), "kid": round(m["kid"], 5),
            "precision": round(m["precision"], 3), "recall": round(m["recall"], 3),
            "generate_s": report["setup"].get("generate_seconds")}  # fmt: skip


def grid(ckpt: Path, sampling: list[str], name: str) -> None:
    GRIDS.mkdir(parents=True, exist_ok=True)
    run(["sample", "--checkpoint", str(ckpt), *sampling, "--num-images", "64", "--seed", "0",
         "--out", str(GRIDS / f"{name}.png")])  # fmt: skip


DDPM_CHUNK = 500  # images per kept chunk of DDPM-1000: ~15-20 min of 2 CPU cores


def ddpm_images(
    args: argparse.Namespace, teacher: Path, chunk: int = DDPM_CHUNK, compile: bool = True
) -> tuple[Path, float, int]:
    """The teacher's DDPM with all its T steps (1000): ``--num-samples`` images, drawn in chunks
    that are kept under ``--runs``/ddpm_T (chunk i of ``chunk`` images with seed 1000 + i), so
    that the hours this takes can be spread over several runs: a run draws the chunks still
    missing. The U-Net is ``torch.compile``d (1.3x on a 2-core CPU; its outputs match eager's to
    5e-7). Returns the .npz of all the images, the seconds their chunks took, summed (over
    runs, perhaps on different machines: each chunk records its device, and on a CPU its matmul
    rate), and T. ``--ddpm-device cuda`` draws them on a GPU (minutes instead of hours): the
    same checkpoint and sampler, another random stream (CUDA's generator), the same FID."""
    from difflab.io import atomic_path

    loaded = load_model(teacher, args.ddpm_device)
    device = loaded.device
    on_cpu = device.type == "cpu"  # a CPU records its matmul rate and draws in smaller batches
    steps = loaded.schedule.num_timesteps
    folder = Path(args.runs) / f"ddpm_{steps}"
    model = torch.compile(loaded.model) if compile else loaded.model
    gflops = None  # measured once, if a chunk is drawn
    chunks = []
    for i in range(-(-args.num_samples // chunk)):
        path = folder / f"chunk_{i:03d}.npz"
        n = min(chunk, args.num_samples - i * chunk)
        if not path.exists():
            if on_cpu:
                gflops = gflops or matmul_gflops()
            start = time.perf_counter()
            images = generate(model, loaded.config, loaded.schedule, num_images=n, seed=1000 + i,
                              sampler="ddpm", steps=steps, batch_size=250 if on_cpu else chunk,
                              progress=True)  # fmt: skip
            seconds = time.perf_counter() - start
            with atomic_path(path) as tmp, tmp.open("wb") as f:
                np.savez(f, images=images.numpy(), seconds=seconds, gflops=gflops or np.nan,
                         device=device_name(device))  # fmt: skip
            print(f"DDPM-{steps} chunk {i}: {n} images in {seconds:.0f} s on {device}",
                  file=sys.stderr)  # fmt: skip
        with np.load(path) as kept:
            chunks.append((kept["images"], float(kept["seconds"])))
    images = np.concatenate([c[0] for c in chunks])
    assert len(images) == args.num_samples, (len(images), args.num_samples)
    everything = folder / "images.npz"
    np.savez(everything, images=images)
    return everything, round(sum(c[1] for c in chunks), 1), steps


def ddpm_row(args: argparse.Namespace, teacher: Path) -> dict:
    """DDPM-1000's row, scored last in a run (its chunks may still be drawing elsewhere, on a GPU,
    while the students train) and listed first."""
    images, seconds, steps = ddpm_images(args, teacher)
    source = ["--images", str(images), "--data", "mnist", "--data-dir", args.data_dir]
    with np.load(images) as kept:  # the first 64 of chunk 0 (seed 1000), not seed 0
        GRIDS.mkdir(parents=True, exist_ok=True)
        save_grid(kept["images"][:64], GRIDS / f"teacher_ddpm_{steps}.png")
    return {"model": "teacher", "sampler": "ddpm", "steps": steps,
            **evaluated(args, source), "generate_s": seconds}  # fmt: skip


def teacher_rows(args: argparse.Namespace, teacher: Path):
    plans = [("dpmpp-2m-sde", 20)]
    plans += [(name, steps) for name in TRAINING_FREE for steps in (4, 6, 10)]
    for sampler, steps in plans:
        sampling = ["--sampler", sampler, "--steps", str(steps)]
        row = {"model": "teacher", "sampler": sampler, "steps": steps,
               **score(args, teacher, sampling)}  # fmt: skip
        if (sampler, steps) == ("dpmpp-2m-sde", 20):
            grid(teacher, sampling, "teacher_dpmpp-2m-sde_20")
        yield row


def student_rows(args: argparse.Namespace, teacher: Path):
    run_dir = Path(args.runs) / "student"
    for i, budget in enumerate(args.budgets):
        if i == 0:
            run(["distill", "--teacher", str(teacher), "--method", "consistency",
                 "--data-dir", args.data_dir, "--epochs", "1000", "--max-minutes", f"{budget:g}", "--sample-every", "0",
                 "--no-progress", "--overwrite", "--out", str(run_dir)])  # fmt: skip
        else:
            run(["distill", "--resume", str(run_dir), "--max-minutes", f"{budget:g}",
                 "--no-progress"])  # fmt: skip
        if i == 0 and args.tune_times:
            args.time_rows = tune_times(run_dir / "model_final.safetensors")
            print(json.dumps(args.time_rows), file=sys.stderr)
        log = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        last = [r for r in log if r.get("loss") is not None][-1]
        ckpt = run_dir / "model_final.safetensors"
        for steps in (1, 2, 4):
            sampling = ["--steps", str(steps)]
            yield {"model": f"student {budget:g} min", "sampler": "consistency", "steps": steps,
                   "budget_min": budget, "distill_steps": last["step"], "distill_s": last["elapsed_s"],
                   **score(args, ckpt, sampling)}  # fmt: skip
            if budget == args.budgets[-1]:
                grid(ckpt, sampling, f"student_{budget:g}min_{steps}step")


def probe_log(argv: list[str], probe: Path, minutes: float = 1.0) -> list[dict]:
    """A short run of ``argv`` into ``probe``: its metrics.jsonl rows (every 10th step, and the
    last), each with its step count and elapsed seconds."""
    run([*argv, "--max-minutes", f"{minutes:g}", "--out", str(probe)])
    return [json.loads(x) for x in (probe / "metrics.jsonl").read_text().splitlines()]


def rate_between(log: list[dict], first: int, last: int | None = None) -> float:
    """Steps per second from the row of step ``first`` to that of ``last`` (default: the last)."""
    rows = {0: 0.0} | {r["step"]: r["elapsed_s"] for r in log if "elapsed_s" in r}
    last = max(rows) if last is None else last
    return (last - first) / (rows[last] - rows[first])


def round_steps_for(budget_min: float, seconds_per_round_step: float, stage_s: float) -> int:
    """Steps per round that fill 97% of the budget, after the DMD stage's ``stage_s`` seconds
    (the runs overran by up to 11% when sized to fill all of it: the machines slow down)."""
    rounds_s = 0.97 * budget_min * 60 - stage_s
    if rounds_s < seconds_per_round_step:
        raise SystemExit(f"the DMD stage alone takes {stage_s / 60:.1f} min here: no time is "
                         f"left for the rounds in a {budget_min:g}-min budget")  # fmt: skip
    return int(rounds_s / seconds_per_round_step)


def dmd_steps_for(steps: int, budget_min: float, budgets: list[float]) -> int:
    """The DMD stage's steps at ``budget_min``: ``steps`` at the largest budget, the same share of
    a smaller one."""
    return round(steps * budget_min / max(budgets))


def dmd_weights(text: str, stops: list[int]) -> dict[int, float]:
    """``--pd-dmd-weight``: one weight for every stop above 1 step (``0.2``), or a weight per stop
    (``4:0.2,2:0.3``, every such stop named)."""
    wanted = [n for n in stops if n > 1]
    try:
        if ":" not in text:
            weights = dict.fromkeys(wanted, float(text))
        else:
            weights = {int(n): float(w) for n, w in (item.split(":") for item in text.split(","))}
    except ValueError:
        weights = {}
    if sorted(weights) != sorted(wanted) or not all(w > 0 for w in weights.values()):
        raise ValueError(f"--pd-dmd-weight {text}: expected a weight > 0, or STEPS:WEIGHT for "
                         f"each of the stops {','.join(map(str, wanted))}")  # fmt: skip
    return weights


def progressive_rows(args: argparse.Namespace, teacher: Path):
    """Progressive distillation's 4-, 2- and 1-step students, a run per budget sized to fill it;
    with ``--pd-steps 1,4`` also runs that stop at 4 steps (fewer rounds, each longer), which
    with ``--pd-dmd-steps`` end with the distribution-matching stage inside the same budget."""
    base = ["distill", "--method", "progressive", "--teacher", str(teacher), "--data-dir",
            args.data_dir, "--sample-every", "0", "--no-progress", "--overwrite"]  # fmt: skip
    start = ["--start-steps", str(args.pd_start_steps)]
    rate = {}  # distillation steps per second on this machine: the first round's, the others'
    for solver in sorted({args.teacher_solver, "ddim"}):
        argv = [*base, *start, "--steps", "1", "--teacher-solver", solver,
                "--round-steps", "100000"]  # fmt: skip
        log = probe_log(argv, Path(args.runs) / f"progressive_probe_{solver}")
        rate[solver] = rate_between(log, 0)
    stage_rates = {}  # the warm-up's and the DMD steps' rates, for each stop that gets a stage
    for stop in [n for n in args.pd_steps if n > 1 and args.pd_dmd_steps]:
        # One 1-step round, then the stage with a 50-step warm-up (steps 2-51: only the fake
        # score learns, cheaper) and its DMD steps (the student's chain of `stop` evaluations
        # with gradients): the rates of both, from the steps logged at 10-50 and 60 on.
        argv = [*base, "--start-steps", str(2 * stop), "--steps", str(stop), "--round-steps", "1",
                "--teacher-solver", "ddim", "--dmd-steps", "100000", "--dmd-warmup", "50"]  # fmt: skip
        log = probe_log(argv, Path(args.runs) / f"progressive_probe_dmd{stop}", minutes=1.5)
        stage_rates[stop] = (rate_between(log, 10, 50), rate_between(log, 60))
    base += [*start, "--teacher-solver", args.teacher_solver]
    for stop in args.pd_steps:
        rounds = len(round_plan(args.pd_start_steps, stop, args.pd_start_steps))
        seconds_per_round_step = 1 / rate[args.teacher_solver] + (rounds - 1) / rate["ddim"]
        with_dmd = stop in stage_rates
        suffix = "" if stop == 1 else f"_stop{stop}" + ("_dmd" if with_dmd else "")
        for budget in args.budgets:
            stage_s, stage_steps, dmd = 0.0, 0, ["--dmd-steps", "0"]  # the rounds alone
            if with_dmd:
                dmd_steps = dmd_steps_for(args.pd_dmd_steps, budget, args.budgets)
                warm_rate, dmd_rate = stage_rates[stop]
                stage_s = ProgressiveConfig.dmd_warmup / warm_rate + dmd_steps / dmd_rate
                stage_steps = ProgressiveConfig.dmd_warmup + dmd_steps
                weight = args.pd_dmd_weight[stop]
                dmd = ["--dmd-steps", str(dmd_steps), "--dmd-weight", f"{weight:g}"]
                if args.pd_dmd_average:
                    average = dmd_steps_for(args.pd_dmd_average, budget, args.budgets)
                    dmd += ["--dmd-average", str(average)]
            round_steps = round_steps_for(budget, seconds_per_round_step, stage_s)
            run_dir = Path(args.runs) / f"progressive_{budget:g}{suffix}"
            run([*base, "--steps", str(stop), "--round-steps", str(round_steps), "--max-minutes",
                 f"{1.5 * budget:g}", *dmd, "--out", str(run_dir)])  # fmt: skip
            log = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
            last = [r for r in log if r.get("loss") is not None][-1]
            model = f"progressive {budget:g} min" + ("" if stop == 1 else f", stop at {stop}")
            students = [(model, f"model_steps_{s}", s) for s in (1, 2, 4) if s >= stop]
            if with_dmd:  # the rounds' student (a share of the budget), then the stage's
                students = [(f"{model}, before DMD", f"model_steps_{stop}", stop),
                            (f"{model} + DMD", f"model_steps_{stop}_dmd", stop)]  # fmt: skip
            for name, file, steps in students:
                ckpt = run_dir / f"{file}.safetensors"
                yield {"model": name, "sampler": "ddim", "steps": steps, "budget_min": budget,
                       "distill_steps": last["step"], "distill_s": last["elapsed_s"],
                       "round_steps": round_steps, "stage_steps": stage_steps,
                       **({"dmd_weight": args.pd_dmd_weight[stop]} if with_dmd else {}),
                       **score(args, ckpt, [])}  # fmt: skip
                if budget == args.budgets[-1]:
                    grid(ckpt, [], f"progressive_{budget:g}min_{steps}step{suffix}"
                         + ("_before" if file == f"model_steps_{stop}" and with_dmd else ""))  # fmt: skip


# Candidate times (fractions of T - 1) for multistep consistency sampling, measured at N = 1000.
TIME_CANDIDATES = {
    2: [(1.0, 0.3), (1.0, 0.5), (1.0, 0.7)],
    4: [(1.0, 0.7, 0.45, 0.2), (1.0, 0.75, 0.5, 0.25), (1.0, 0.6, 0.35, 0.15)],
}


def tune_times(ckpt: Path, num_samples: int = 1000) -> list[dict]:
    """FID of each candidate time sequence, in this process (``STEP_TIMES`` patched), so that the
    times ``consistency.STEP_TIMES`` holds are chosen by measurement."""
    from difflab import consistency
    from difflab.cli import main as difflab

    rows = []
    saved = dict(consistency.STEP_TIMES)
    try:
        for steps, candidates in TIME_CANDIDATES.items():
            for times in candidates:
                consistency.STEP_TIMES[steps] = times
                with tempfile.TemporaryDirectory() as tmp:
                    out = Path(tmp) / "m.json"
                    assert difflab(["evaluate", "--checkpoint", str(ckpt), "--steps", str(steps),
                                    "--num-samples", str(num_samples), "--seed", "1",
                                    "--out", str(out)]) == 0  # fmt: skip
                    fid = json.loads(out.read_text())["metrics"]["fid"]
                rows.append({"steps": steps, "times": times, "fid": round(fid, 3),
                             "num_samples": num_samples})  # fmt: skip
    finally:
        consistency.STEP_TIMES.update(saved)
    return rows


def timing(teacher: Path, student: Path, repeats: int = 5) -> dict:
    """Seconds for 64 images: the student at 1 step, the teacher at 20 of dpmpp-2m-sde."""
    models = {"student_1": (load_model(student, "cpu"), {"steps": 1}),
              "teacher_20": (load_model(teacher, "cpu"), {"sampler": "dpmpp-2m-sde", "steps": 20})}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, (loaded, options) in models.items():
            start = time.perf_counter()
            request = SamplingRequest(num_images=64, seed=0, **options)
            execute(loaded, plan_sampling(loaded, request))  # the student's own plan
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {"seconds_64": {k: round(v, 4) for k, v in medians.items()},
            "speedup": round(medians["teacher_20"] / medians["student_1"], 1)}  # fmt: skip


def verdict(rows: list[dict]) -> dict:
    """The issue's targets against each method's longest-distilled students (each run's own
    step counts: a progressive run that stops at 4 steps is judged at 4)."""
    best_teacher = min(r["fid"] for r in rows if r["model"] == "teacher")
    six = [r["fid"] for r in rows if r["model"] == "teacher" and r["steps"] == 6]
    out: dict = {"best_teacher_fid": best_teacher}
    for method in ("student", "progressive"):
        runs = [r for r in rows if r["model"].startswith(method)]
        if not runs:
            continue
        longest = max(r["budget_min"] for r in runs)  # its four-round and stop-at-4 runs
        for name in dict.fromkeys(r["model"] for r in runs if r["budget_min"] == longest):
            student = {r["steps"]: r["fid"] for r in rows if r["model"] == name}
            checks = {}
            if 4 in student:
                checks["4_steps_within_25%"] = student[4] <= 1.25 * best_teacher
            if 2 in student:
                checks["2_steps_within_50%"] = student[2] <= 1.5 * best_teacher
            if 1 in student:
                checks["1_step_within_3x"] = student[1] <= 3 * best_teacher
            if 4 in student:
                checks["4_steps_beat_every_6_step_solver"] = bool(six) and student[4] < min(six)
            out[name] = checks
    return out


def write_doc(results: dict) -> None:
    lines = ["| model | sampler | steps | FID | KID | precision | recall | seconds for N |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results["rows"]:
        lines.append(f"| {r['model']} | {r['sampler']} | {r['steps']} | {r['fid']:.2f} | "
                     f"{r['kid']:.4f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['generate_s']} |")  # fmt: skip
    t = results["timing"]
    lines += ["", f"Machine: {results['matmul_gflops']:g} GFLOP/s fp32 matmul (2048^2), "
              f"{results['threads']} threads."]  # fmt: skip
    lines += ["", f"64 images: student 1 step {t['seconds_64']['student_1']:.3f} s, teacher "
              f"dpmpp-2m-sde 20 steps {t['seconds_64']['teacher_20']:.3f} s ({t['speedup']}x).",
              "", f"Targets (best teacher FID {results['verdict']['best_teacher_fid']:.2f}):"]  # fmt: skip
    for method, checks in results["verdict"].items():
        if isinstance(checks, dict):
            met = ", ".join(
                f"{k.replace('_', ' ')} {'yes' if v else 'no'}" for k, v in checks.items()
            )
            lines.append(f"- {method}: {met}")
    text = DOC.read_text() if DOC.exists() else f"# Few-step generation\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN)
    DOC.write_text(head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + rest.split(END)[1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="the MNIST IDX files")
    parser.add_argument("--teacher", help="the teacher checkpoint (default: train one)")
    parser.add_argument("--teacher-minutes", type=float, default=10.0)
    parser.add_argument("--budgets", default="10,20", help="distillation CPU-minutes")
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument(
        "--ddpm", action="store_true",
        help="also DDPM-1000: ~2.5 h of 2 CPU cores at 5000 images, kept in chunks under --runs, "
        "so a stopped run goes on where it stopped",
    )  # fmt: skip
    parser.add_argument(
        "--ddpm-images-only",
        action="store_true",
        help="only draw DDPM-1000's missing chunks, then stop (to spread them over sittings)",
    )
    parser.add_argument(
        "--ddpm-device", default="cpu",
        help="where DDPM-1000's chunks are drawn (cuda: minutes instead of hours)",
    )  # fmt: skip
    parser.add_argument("--runs", default="/tmp/few_step", help="where the runs go")
    parser.add_argument(
        "--tune-times", action="store_true", help="score candidate 2- and 4-step times first"
    )
    parser.add_argument(
        "--progressive", action="store_true", help="also progressive distillation's students"
    )
    parser.add_argument(
        "--pd-start-steps",
        type=int,
        default=ProgressiveConfig.start_steps,
        help="progressive: the first teacher's steps",
    )
    parser.add_argument(
        "--pd-steps", default="1",
        help="progressive: the last students' steps, a run each (1,4: also runs that stop at 4)",
    )  # fmt: skip
    parser.add_argument(
        "--pd-dmd-steps", type=int, default=0,
        help="progressive: end the runs that stop above 1 step with this many steps of "
        "distribution matching (difflab distill --dmd-steps) at the largest budget, the same "
        "share of a smaller one, sized into the same budget",
    )  # fmt: skip
    parser.add_argument(
        "--pd-dmd-weight", default=f"{ProgressiveConfig.dmd_weight:g}",
        help="progressive: the DMD loss's weight (--dmd-weight), one for all or per stop: 4:0.2,2:0.3",
    )  # fmt: skip
    parser.add_argument(
        "--pd-dmd-average", type=int, default=0,
        help="progressive: sample the DMD students as the mean of their last N DMD steps "
        "(--dmd-average) at the largest budget, the same share of a smaller one (default 0: EMA)",
    )  # fmt: skip
    parser.add_argument(
        "--teacher-solver", default="dpmpp-2s", choices=TEACHER_SOLVERS,
        help="progressive: the first teacher's ODE step",
    )  # fmt: skip
    parser.add_argument(
        "--no-consistency", action="store_true", help="skip consistency distillation's students"
    )
    args = parser.parse_args(argv)
    args.budgets = [float(b) for b in args.budgets.split(",")]
    args.pd_steps = [int(n) for n in args.pd_steps.split(",")]
    if 1 not in args.pd_steps:  # the timing row draws with the 1-step student
        parser.error(f"--pd-steps {','.join(map(str, args.pd_steps))} must include 1")
    if args.pd_dmd_steps < 0:
        parser.error(f"--pd-dmd-steps {args.pd_dmd_steps}: expected steps >= 0")
    if not 0 <= args.pd_dmd_average <= args.pd_dmd_steps:
        parser.error(f"--pd-dmd-average {args.pd_dmd_average}: expected steps in "
                     f"0..{args.pd_dmd_steps} (--pd-dmd-steps)")  # fmt: skip
    try:
        args.pd_dmd_weight = dmd_weights(args.pd_dmd_weight, args.pd_steps)
    except ValueError as e:
        parser.error(str(e))
    for stop in args.pd_steps:  # before the teacher's rows, not after them
        try:
            round_plan(args.pd_start_steps, stop, args.pd_start_steps)
        except ValueError as e:
            parser.error(str(e))
    teacher = (
        Path(args.teacher) if args.teacher else Path(args.runs) / "teacher/model_final.safetensors"
    )
    if args.ddpm_images_only:  # needs no evaluator: it may run on a machine without the data
        if not args.teacher:
            parser.error("--ddpm-images-only needs --teacher")
        print(ddpm_images(args, teacher))
        return {}
    from difflab.evaluation import default_evaluator_path

    if not default_evaluator_path("mnist", 28, args.data_dir).is_file():  # evaluate needs it
        run(["train-evaluator", "--data", "mnist", "--data-dir", args.data_dir, "--no-progress"])
    if not args.teacher:
        run(["train", "--data", "mnist", "--data-dir", args.data_dir, "--max-minutes",
             f"{args.teacher_minutes:g}", "--sample-every", "0", "--no-progress", "--overwrite",
             "--out", str(teacher.parent)])  # fmt: skip
    rows = [*teacher_rows(args, teacher)]
    if not args.no_consistency:
        rows += student_rows(args, teacher)
    if args.progressive:
        rows += progressive_rows(args, teacher)
    if args.ddpm:
        rows.insert(0, ddpm_row(args, teacher))
    student = Path(args.runs) / (  # the 1-step student of the longest distillation
        f"progressive_{args.budgets[-1]:g}/model_steps_1.safetensors"
        if args.no_consistency
        else "student/model_final.safetensors"
    )
    results = {"benchmark": "few_step", "num_samples": args.num_samples, "teacher": str(teacher),
               "threads": torch.get_num_threads(), "matmul_gflops": round(matmul_gflops(), 1),
               "rows": rows,
               "timing": timing(teacher, student),
               "time_candidates": getattr(args, "time_rows", [])}  # fmt: skip
    results["verdict"] = verdict(rows)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    write_doc(results)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
