"""Flow matching against DDPM-v (the default recipe) per CPU-minute on real MNIST: FID after B
CPU-minutes of training, each objective at each of its samplers and 4 / 8 / 20 network
evaluations.

    .venv/bin/python benchmarks/flow_vs_ddpm.py --data-dir ../shared/data/mnist \\
        [--budgets 5,10,20] [--nfe 4,8,20] [--num-samples 5000] [--runs runs/flow_vs_ddpm]

- ``ddpm-v``: ``difflab train --data mnist`` as it is (v prediction, cosine schedule, min-SNR-5);
- ``flow``: ``difflab train --data mnist --objective flow`` (the same U-Net, optimiser and data;
  velocity target, logit-normal t).

Each is one run continued with ``--resume --max-minutes B`` to each budget (its clock counts
training steps only), both with ``--epochs 1000`` so that the learning rate stays at its peak
within the budgets. At each budget every sampler draws ``--num-samples`` images at each number of
evaluations (Heun takes (NFE + 1) / 2 steps, NFE - 1 evaluations when the grid ends at 0; the
row says the count it used), scored by ``difflab evaluate`` against the test split with the same
seed. Writes ``docs/flow_vs_ddpm.json`` (rows merged by objective, budget, sampler and NFE), the
table in ``docs/flow.md`` between the ``flow_vs_ddpm`` markers, and prints each row as JSON. Needs
an otherwise idle machine: the budgets are wall time on its cores. The machine's fp32 matmul rate
is recorded beside the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import cpu_name, matmul_gflops

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "flow_vs_ddpm.json"
DOC = ROOT / "docs" / "flow.md"
BEGIN, END = "<!-- flow_vs_ddpm:begin -->", "<!-- flow_vs_ddpm:end -->"
DIFFLAB = [sys.executable, "-m", "difflab"]
OBJECTIVES = {"ddpm-v": [], "flow": ["--objective", "flow"]}
SAMPLERS = {"ddpm-v": ("dpmpp-2m", "unipc", "ddim"), "flow": ("euler", "heun", "dpmpp-2m", "unipc")}


def run(argv: list[str]) -> None:
    print("$ difflab " + shlex.join(argv), file=sys.stderr, flush=True)
    subprocess.run([*DIFFLAB, *argv], check=True, stdout=sys.stderr)


def steps_for(sampler: str, nfe: int) -> tuple[int, int]:
    """(--steps, the network evaluations they take) for about ``nfe`` evaluations."""
    if sampler == "heun":
        steps = (nfe + 1) // 2
        return steps, 2 * steps - 1  # the step to t = 0 is Euler's: one evaluation
    return nfe, nfe


def score(args: argparse.Namespace, checkpoint: Path, sampler: str, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "metrics.json"
        run(["evaluate", "--checkpoint", str(checkpoint), "--data-dir", args.data_dir,
             "--num-samples", str(args.num_samples), "--sampler", sampler, "--steps", str(steps),
             "--seed", "1", "--no-progress", "--out", str(out)])  # fmt: skip
        m = json.loads(out.read_text())["metrics"]
    return {"fid": round(m["fid"], 3), "precision": round(m["precision"], 3),
            "recall": round(m["recall"], 3)}  # fmt: skip


def trained(run_dir: Path) -> tuple[float, int]:
    """(training seconds, steps) of a run so far, from its metrics.jsonl."""
    log = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    seconds = max((r["elapsed_s"] for r in records if "elapsed_s" in r), default=0.0)
    steps = max((r["step"] for r in records if "step" in r), default=0)
    return seconds, steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="the MNIST IDX files")
    p.add_argument("--budgets", default="5,10,20", help="CPU-minutes, comma-separated")
    p.add_argument("--nfe", default="4,8,20", help="network evaluations, comma-separated")
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--objectives", default="ddpm-v,flow")
    p.add_argument("--runs", default="runs/flow_vs_ddpm")
    args = p.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    nfes = [int(n) for n in args.nfe.split(",")]
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(),
               "matmul_gflops": round(matmul_gflops(), 1)}  # fmt: skip
    print(json.dumps({"machine": machine}), flush=True)
    rows = json.loads(RESULTS.read_text())["rows"] if RESULTS.exists() else []
    for budget in budgets:  # the objectives take turns, so a machine that slows down over the
        for objective in args.objectives.split(","):  # run slows both alike
            run_dir = Path(args.runs) / objective
            if trained(run_dir)[0] == 0:
                run(["train", "--data", "mnist", "--data-dir", args.data_dir,
                     *OBJECTIVES[objective], "--epochs", "1000", "--max-minutes", f"{budget:g}",
                     "--sample-every", "0", "--checkpoint-every", "0", "--seed", "0",
                     "--no-progress", "--overwrite", "--out", str(run_dir)])  # fmt: skip
            else:
                run(["train", "--resume", str(run_dir), "--max-minutes", f"{budget:g}",
                     "--no-progress"])  # fmt: skip
            seconds, steps = trained(run_dir)
            for sampler in SAMPLERS[objective]:
                for nfe in nfes:
                    sampler_steps, evaluations = steps_for(sampler, nfe)
                    row = {"objective": objective, "budget_min": budget,
                           "train_steps": steps, "train_s": round(seconds, 1),
                           "sampler": sampler, "steps": sampler_steps, "nfe": evaluations,
                           **score(args, run_dir / "model_final.safetensors", sampler,
                                   sampler_steps), "num_samples": args.num_samples,
                           **machine}  # fmt: skip
                    print(json.dumps(row), flush=True)
                    key = (objective, budget, sampler, nfe)
                    rows = [r for r in rows if (r["objective"], r["budget_min"], r["sampler"],
                                                r.get("nfe_asked", r["nfe"])) != key]  # fmt: skip
                    rows.append({**row, "nfe_asked": nfe})
                    RESULTS.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    write_table(rows)


def write_table(rows: list[dict]) -> None:
    """The table in docs/flow.md: per objective and budget, FID at each NFE, each sampler."""
    nfes = sorted({r["nfe_asked"] for r in rows})
    lines = ["| objective | CPU-min (steps) | sampler | " + " | ".join(f"NFE {n}" for n in nfes)
             + " |", "|---|---|---|" + "---:|" * len(nfes)]  # fmt: skip
    keys = sorted({(r["objective"], r["budget_min"], r["sampler"]) for r in rows})
    for objective, budget, sampler in keys:
        cells, steps = [], 0
        for n in nfes:
            match = [r for r in rows if (r["objective"], r["budget_min"], r["sampler"],
                                         r["nfe_asked"]) == (objective, budget, sampler, n)]  # fmt: skip
            steps = match[0]["train_steps"] if match else steps
            cells.append(f"{match[0]['fid']:.2f}" if match else "")
        lines.append(f"| {objective} | {budget:g} ({steps}) | {sampler} | " + " | ".join(cells)
                     + " |")  # fmt: skip
    machine = rows[-1]
    lines.append("")
    lines.append(f"FID against the MNIST test split at N = {machine['num_samples']} (difflab's "
                 f"evaluator); {machine['cpu']}, {machine['cores']} cores, fp32 matmul "
                 f"{machine['matmul_gflops']} GFLOP/s. Heun's columns take one evaluation fewer "
                 "(3, 7, 19): its last step, to t = 0, is Euler's.")  # fmt: skip
    text = DOC.read_text() if DOC.exists() else f"{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{BEGIN}\n" + "\n".join(lines) + f"\n{END}{tail}")


if __name__ == "__main__":
    main()
