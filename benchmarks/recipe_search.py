"""The MNIST recipe search: train each candidate for a fixed CPU-minute budget, judge it by FID.

    .venv/bin/python benchmarks/recipe_search.py --data-dir ../shared/data/mnist \\
        --minutes 5 --only seed,base16 [--num-samples 1000] [--sampler dpmpp-2m --steps 20]
    .venv/bin/python benchmarks/recipe_search.py --data-dir ../shared/data/mnist --noise-reference

Every experiment is one ``difflab train`` and one ``difflab evaluate`` command (printed before it
runs, so each row of the results log can be rerun by hand). The flags of every experiment are
written out in full (``SEED`` below is what ``difflab train --data mnist`` did before the search),
so the log stays reproducible when the defaults change. ``--noise-reference`` scores real training
images with Gaussian noise of std 0.1 (pixel range [0, 1], clipped) at the same N: issue 7's bar.

Results are appended to ``docs/recipe_results.jsonl`` and the table in ``docs/recipe.md`` (between
the ``recipe_search`` markers) is rebuilt from it. Run on an otherwise idle machine: the budget is
wall time, and a second process on the 2 cores halves what a run gets done.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "recipe_results.jsonl"
DOC = ROOT / "docs" / "recipe.md"
BEGIN, END = "<!-- recipe_search:begin -->", "<!-- recipe_search:end -->"
DIFFLAB = [sys.executable, "-m", "difflab"]

# What `difflab train --data mnist` did before the search (issue 2's defaults), spelled out.
SEED = ["--base-channels", "32", "--channel-mults", "1,2,4", "--num-res-blocks", "1",
        "--batch-size", "64", "--lr", "1e-3", "--warmup-steps", "100", "--ema-decay", "0.999",
        "--schedule", "linear", "--prediction", "eps", "--min-snr-gamma", "0", "--timesteps",
        "1000"]  # fmt: skip


def flags(base: list[str], **changes: str) -> list[str]:
    """``base`` with some flags replaced (``channel_mults="1,2,2"``) or added; "" drops a flag."""
    out = list(base)
    for name, value in changes.items():
        flag = "--" + name.replace("_", "-")
        if flag in out:
            i = out.index(flag)
            del out[i : i + 2]
        if value == "on":
            out.append(flag)
        elif value != "":
            out += [flag, value]
    return out


# Round 1 changed one thing at a time from SEED; base16 won it by far (a quarter of the compute
# per image). Round 2 changed one thing at a time from B16; v prediction with min-SNR-5 won it.
# Round 3 changed one thing at a time from V16; the cosine schedule won it. Round 4 changes one
# thing at a time from C16, the default recipe: where the compute goes, batch size, T.
B16 = flags(SEED, base_channels="16")
V16 = flags(B16, prediction="v", min_snr_gamma="5")
C16 = flags(V16, schedule="cosine")
EXPERIMENTS: dict[str, list[str]] = {
    "seed": SEED,
    "base16": B16,
    "base8": flags(SEED, base_channels="8"),
    "base24": flags(SEED, base_channels="24"),
    "b16-2res": flags(B16, num_res_blocks="2"),
    "b16-mults-1-4-8": flags(B16, channel_mults="1,4,8"),
    "b16-batch32": flags(B16, batch_size="32"),
    "b16-batch128-lr2e-3": flags(B16, batch_size="128", lr="2e-3"),
    "b16-lr2e-3": flags(B16, lr="2e-3"),
    "b16-ema0.9995": flags(B16, ema_decay="0.9995"),
    "b16-cosine": flags(B16, schedule="cosine"),
    "b16-v": flags(B16, prediction="v"),
    "b16-v-minsnr5": flags(B16, prediction="v", min_snr_gamma="5"),
    "b16-eps-minsnr5": flags(B16, min_snr_gamma="5"),
    "v16-lr2e-3": flags(V16, lr="2e-3"),
    "v16-ema0.9995": flags(V16, ema_decay="0.9995"),
    "v16-cosine": flags(V16, schedule="cosine"),
    "v16-2res": flags(V16, num_res_blocks="2"),
    "v16-base24": flags(V16, base_channels="24"),
    "v16-batch32": flags(V16, batch_size="32"),
    "v16-batch128-lr2e-3": flags(V16, batch_size="128", lr="2e-3"),
    "v16-minsnr1": flags(V16, min_snr_gamma="1"),
    "c16-attn14": flags(C16, attention_levels="1"),
    "c16-mults-1-4-8": flags(C16, channel_mults="1,4,8"),
    "c16-batch128-lr2e-3": flags(C16, batch_size="128", lr="2e-3"),
    "c16-T250": flags(C16, timesteps="250"),
}


def run(argv: list[str]) -> None:
    print("$ difflab " + shlex.join(argv), flush=True)
    subprocess.run([*DIFFLAB, *argv], check=True, stdout=sys.stderr)


def evaluate_argv(args: argparse.Namespace, source: list[str], out: Path) -> list[str]:
    return [
        "evaluate", *source, "--num-samples", str(args.num_samples), "--sampler", args.sampler,
        "--steps", str(args.steps), "--seed", "1", "--out", str(out),
    ]  # fmt: skip


def train_and_score(args: argparse.Namespace, name: str) -> dict:
    run_dir = Path(args.runs) / name
    train = ["train", "--data", "mnist", "--data-dir", args.data_dir, "--max-minutes",
             f"{args.minutes:g}", "--epochs", "1000", "--sample-every", "0",
             "--checkpoint-every", "0", "--no-progress", "--overwrite", "--out", str(run_dir),
             "--seed", "0", *EXPERIMENTS[name]]  # fmt: skip
    run(train)
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in log if "loss" in r][-1]
    ckpt = run_dir / "model_final.safetensors"
    evaluate = evaluate_argv(args, ["--checkpoint", str(ckpt)], run_dir / "metrics.json")
    run(evaluate)
    report = json.loads((run_dir / "metrics.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    return {
        "name": name, "minutes": args.minutes, "flags": shlex.join(EXPERIMENTS[name]),
        "steps": last["step"], "images_per_s": round(last["step"] * config["train"]["batch_size"]
                                                    / last["elapsed_s"], 1),
        "final_loss": round(np.mean([r["loss"] for r in log if r.get("loss")][-20:]), 4),
        "parameters": _parameters(ckpt), **_scores(report, args),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "commands": ["difflab " + shlex.join(train), "difflab " + shlex.join(evaluate)],
    }  # fmt: skip


def _parameters(ckpt: Path) -> int:
    from difflab.checkpoint import load_checkpoint

    weights = load_checkpoint(ckpt).model
    return int(sum(w.numel() for w in weights.values()))


def _scores(report: dict, args: argparse.Namespace) -> dict:
    m = report["metrics"]
    return {
        "num_samples": args.num_samples, "sampler": f"{args.sampler} {args.steps}",
        "fid": round(m["fid"], 3), "kid": round(m["kid"], 5),
        "precision": round(m["precision"], 3), "recall": round(m["recall"], 3),
    }  # fmt: skip


def noise_reference(args: argparse.Namespace) -> dict:
    """Real MNIST training images + N(0, 0.1^2) noise in [0, 1] units, clipped: the bar to beat."""
    sys.path.insert(0, str(Path(__file__).parent))
    from difflab.data import load_dataset
    from validate_metrics import add_noise

    train = load_dataset("mnist", data_dir=args.data_dir, seed=0)
    rng = np.random.default_rng(1)
    index = np.sort(rng.choice(len(train.images), args.num_samples, replace=False))
    images = add_noise(np.asarray(train.images[index], dtype=np.float32), 0.1, rng)
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "noisy.npz"
        np.savez_compressed(npz, images=np.round((images + 1) * 127.5).astype(np.uint8))
        out = Path(tmp) / "metrics.json"
        evaluate = ["evaluate", "--images", str(npz), "--data", "mnist", "--seed", "1",
                    "--out", str(out)]  # fmt: skip
        run(evaluate)
        report = json.loads(out.read_text())
    scores = _scores(report, args)
    scores["sampler"] = "-"
    return {"name": "real train + noise 0.1", "minutes": None, "flags": "", **scores,
            "commands": [f"python benchmarks/recipe_search.py --noise-reference --num-samples "
                         f"{args.num_samples}"]}  # fmt: skip


def markdown(rows: list[dict]) -> str:
    head = (
        "| experiment | minutes | parameters | steps | images/s | FID | KID | precision "
        "| recall | N, sampler | flags |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        cells = [r["name"], r["minutes"], f"{r.get('parameters', 0):,}" if "parameters" in r
                 else "-", r.get("steps", "-"), r.get("images_per_s", "-"),
                 r["fid"], r["kid"], r["precision"], r["recall"],
                 f"{r['num_samples']}, {r['sampler']}", f"`{r['flags']}`" if r["flags"] else ""]  # fmt: skip
        lines.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    return head + "\n".join(lines) + "\n"


def write_table() -> None:
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    text = DOC.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    DOC.write_text(text[:start] + "\n" + markdown(rows) + text[end:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/data/mnist")
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget per run")
    parser.add_argument("--only", help=f"comma-separated experiments: {', '.join(EXPERIMENTS)}")
    parser.add_argument("--num-samples", type=int, default=1000, help="N for FID")
    parser.add_argument("--sampler", default="dpmpp-2m")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", default="runs/recipe", help="run directories")
    parser.add_argument("--noise-reference", action="store_true", help="score noisy real images")
    parser.add_argument("--no-log", action="store_true", help="do not touch docs/")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else ([] if args.noise_reference else EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiment {unknown[0]!r}; expected one of {', '.join(EXPERIMENTS)}")
    jobs = [noise_reference] if args.noise_reference else []
    jobs += [lambda a, n=n: train_and_score(a, n) for n in names]
    for job in jobs:
        row = job(args)
        print(json.dumps(row), flush=True)
        if not args.no_log:
            with RESULTS.open("a") as f:
                f.write(json.dumps(row) + "\n")
            write_table()


if __name__ == "__main__":
    main()
