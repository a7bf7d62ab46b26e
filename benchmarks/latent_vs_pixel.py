"""Latent against pixel diffusion on real MNIST and Fashion-MNIST, at equal total CPU-minutes.

    .venv/bin/python benchmarks/latent_vs_pixel.py --data mnist,fashion-mnist \\
        [--data-root ../shared/data] [--budgets 5,10,20] [--ae-minutes 2] [--num-samples 5000] \\
        [--kinds pixel,latent] [--results /tmp/latent_vs_pixel] [--write-docs]

For each dataset:
- the autoencoder: ``difflab train-autoencoder --max-minutes AE`` once; its training minutes are
  counted in every latent budget, with two encodings of the training set (one for the latent
  scale, one before latent diffusion's first step; timed here once). Its ceiling: PSNR
  and FID (difflab's evaluator, the test split) of N reconstructed test images;
- pixel diffusion: ``difflab train --max-minutes B``, continued with ``--resume --max-minutes B``
  to each next budget B, so one run passes through all of them;
- latent diffusion: ``difflab train --latent AE.safetensors --max-minutes (B - AE)``, the same way;
- each row: ``difflab evaluate`` at N = --num-samples (same sampler, steps and seed for both),
  the steps the run reached, the total minutes, and a 64-image grid (``--sampler``, 20 steps);
- images per second: training steps (the objective's loss, backward, AdamW; batch 64) and
  sampling (64 images, decoding included), latent and pixel alternating in this process, median
  of --repeats; with the machine's fp32 matmul rate (2048^3, as benchmarks/bench_vs_diffusers.py)
  measured in the same loop, so that a busy machine shows.

Results go to --results (``results.json``, ``table.md``, ``grids/``, ``runs/``); a row already in
``results.json`` is not measured again, so an interrupted benchmark continues where it stopped.
``--write-docs`` copies the table into docs/latent.md (between the ``latent:`` markers) and the
grids into docs/latent/. Needs an otherwise idle machine: the budgets are wall time on its cores.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "latent.md"
DOC_GRIDS = ROOT / "docs" / "latent"
BEGIN, END = "<!-- latent:begin -->", "<!-- latent:end -->"
DIFFLAB = [sys.executable, "-m", "difflab"]
MATMUL_N = 2048


def run(argv: list[str]) -> None:
    print("$ difflab " + shlex.join(argv), file=sys.stderr, flush=True)
    subprocess.run([*DIFFLAB, *argv], check=True, stdout=sys.stderr)


def metrics_log(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def reached(run_dir: Path) -> tuple[int, float]:
    """(steps, training seconds) of a run, from its metrics.jsonl."""
    last = [r for r in metrics_log(run_dir) if "step" in r and "elapsed_s" in r][-1]
    return last["step"], last["elapsed_s"]


class Results:
    """results.json: rows by key; a row there is done."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        self.data.setdefault("rows", {})

    def has(self, key: str) -> bool:
        return key in self.data["rows"]

    def put(self, key: str, row: dict) -> None:
        self.data["rows"][key] = row
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        tmp.replace(self.path)


def score(args: argparse.Namespace, ckpt: Path, data_dir: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "metrics.json"
        run(["evaluate", "--checkpoint", str(ckpt), "--data-dir", data_dir, "--sampler",
             args.sampler, "--steps", str(args.steps), "--num-samples", str(args.num_samples),
             "--seed", "1", "--out", str(out)])  # fmt: skip
        report = json.loads(out.read_text())
    m = report["metrics"]
    return {"fid": round(m["fid"], 3), "kid": round(m["kid"], 5),
            "precision": round(m["precision"], 3), "recall": round(m["recall"], 3),
            "generate_s": report["setup"].get("generate_seconds")}  # fmt: skip


def ensure_evaluator(data: str, data_dir: str) -> None:
    from difflab import evaluation as ev

    if not ev.default_evaluator_path(data, 28, data_dir).is_file():
        run(["train-evaluator", "--data", data, "--data-dir", data_dir])


def train_autoencoder(args: argparse.Namespace, data: str, data_dir: str, res: Results) -> Path:
    run_dir = Path(args.results) / "runs" / data / "autoencoder"
    ckpt = run_dir / "model_final.safetensors"
    key = f"{data}/autoencoder"
    if res.has(key) and ckpt.is_file():
        return ckpt
    run(["train-autoencoder", "--data", data, "--data-dir", data_dir, *subset(args), "--epochs", "1000",
         "--max-minutes", f"{args.ae_minutes:g}", "--sample-every", "0", "--no-progress",
         "--overwrite", "--out", str(run_dir)])  # fmt: skip
    steps, seconds = reached(run_dir)
    res.put(key, {"data": data, "kind": "autoencoder", "steps": steps,
                  "train_minutes": round(seconds / 60, 3),
                  "encode_minutes": round(encode_minutes(ckpt, data, data_dir, args.num_images), 4),
                  **reconstruction_ceiling(ckpt, data, data_dir, args.num_samples)})  # fmt: skip
    return ckpt


def reconstruction_ceiling(ckpt: Path, data: str, data_dir: str, n: int) -> dict:
    """PSNR and FID of n reconstructed test images: what latent diffusion cannot beat."""
    from difflab import evaluation as ev
    from difflab.objectives.autoencoder import psnr, reconstruct
    from difflab.sampling import load_autoencoder

    ae, _, _ = load_autoencoder(ckpt)
    train_set, test_set = ev.reference_datasets(data, data_dir, image_size=28)
    x = torch.from_numpy(test_set.images[:n])
    rec = reconstruct(ae, x)
    evaluator = ev.load_evaluator(ev.default_evaluator_path(data, 28, data_dir))
    reference = ev.reference_statistics(evaluator, train_set, test_set)
    m = ev.score_features(evaluator.features(rec.numpy()), reference, seed=1)
    return {"reconstruction_psnr_db": round(float(psnr(rec, x).mean()), 3),
            "reconstruction_fid": round(m["fid"], 3), "reconstructed_images": len(x)}  # fmt: skip


def diffusion_rows(
    args: argparse.Namespace, data: str, data_dir: str, kind: str, ae: Path | None, res: Results
) -> None:
    """One run per kind, continued through the budgets; a row per budget."""
    run_dir = Path(args.results) / "runs" / data / kind
    ae_minutes = 0.0
    if kind == "latent":
        assert ae is not None
        ae_row = res.data["rows"][f"{data}/autoencoder"]
        # Training, and two encodings of the training set: the latent scale's (at the end of
        # train-autoencoder) and latent diffusion's (before its first step).
        ae_minutes = ae_row["train_minutes"] + 2 * ae_row["encode_minutes"]
    for budget in args.budgets:
        key = f"{data}/{kind}/{budget:g}"
        if res.has(key):
            continue
        minutes = budget - ae_minutes
        if minutes <= 0:
            res.put(key, {"data": data, "kind": kind, "budget": budget, "skipped":
                          f"the autoencoder took {ae_minutes:.2f} of {budget:g} minutes"})  # fmt: skip
            continue
        if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
            run(["train", "--resume", str(run_dir), "--max-minutes", f"{minutes:g}",
                 "--no-progress"])  # fmt: skip
        else:
            extra = ["--latent", str(ae)] if kind == "latent" else []
            run(["train", "--data", data, "--data-dir", data_dir, *extra, *subset(args), "--epochs", "1000",
                 "--max-minutes", f"{minutes:g}", "--sample-every", "0", "--no-progress",
                 "--overwrite", "--out", str(run_dir)])  # fmt: skip
        steps, seconds = reached(run_dir)
        ckpt = run_dir / "model_final.safetensors"
        grid = Path(args.results) / "grids" / f"{data}_{kind}_{budget:g}min.png"
        grid.parent.mkdir(parents=True, exist_ok=True)
        run(["sample", "--checkpoint", str(ckpt), "--sampler", args.sampler, "--steps",
             str(args.steps), "--num-images", "64", "--seed", "0", "--out", str(grid)])  # fmt: skip
        res.put(key, {"data": data, "kind": kind, "budget": budget, "steps": steps,
                      "diffusion_minutes": round(seconds / 60, 3),
                      "total_minutes": round(seconds / 60 + ae_minutes, 3),
                      **score(args, ckpt, data_dir), "grid": grid.name})  # fmt: skip


def subset(args: argparse.Namespace) -> list[str]:
    return [] if args.num_images is None else ["--num-images", str(args.num_images)]


def encode_minutes(ae: Path, data: str, data_dir: str, num_images: int | None) -> float:
    """Minutes to encode the training set once (latent diffusion does it before its first step)."""
    from difflab.data import load_dataset
    from difflab.objectives.autoencoder import encode_images
    from difflab.sampling import load_autoencoder

    model, _, _ = load_autoencoder(ae)
    images = torch.from_numpy(load_dataset(data, data_dir=data_dir, num_images=num_images).images)
    start = time.perf_counter()
    encode_images(model, images)
    return (time.perf_counter() - start) / 60


def throughput(
    data: str, data_dir: str, runs: Path, repeats: int, sampler: str, steps: int
) -> dict:
    """Images per second of a training step (batch 64) and of sampling (64 images), latent and
    pixel alternating with the matmul reference, medians of ``repeats``."""
    from difflab.checkpoint import load_checkpoint
    from difflab.data import load_dataset
    from difflab.kinds import load_model
    from difflab.objectives.diffusion import DiffusionObjective
    from difflab.objectives.latent import LatentDiffusion
    from difflab.sampling import generate
    from difflab.training import Batch, Context

    ctx = Context(torch.device("cpu"), torch.contiguous_format)
    train = load_dataset(data, data_dir=data_dir, num_images=512)
    jobs: dict[str, Any] = {}
    for kind, cls in (("pixel", DiffusionObjective), ("latent", LatentDiffusion)):
        ckpt = runs / kind / "model_final.safetensors"
        if not ckpt.is_file():
            continue
        config = load_checkpoint(ckpt).config
        obj = cls(config, train, ctx)
        optim = torch.optim.AdamW(obj.networks["model"].parameters(), lr=1e-4)
        idx = torch.arange(64)

        def train_step(obj: Any = obj, optim: Any = optim, idx: torch.Tensor = idx) -> None:
            loss = obj.loss("diffusion", Batch(idx, slice(None), 0), obj.networks).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()

        loaded = load_model(ckpt, "cpu")

        def sample(loaded: Any = loaded) -> None:
            generate(loaded.model, loaded.config, loaded.schedule, num_images=64, seed=0,
                     sampler=sampler, steps=steps, space=loaded.space)  # fmt: skip

        jobs[f"{kind}_train"], jobs[f"{kind}_sample"] = train_step, sample
    gen = torch.Generator().manual_seed(0)
    a, b = (
        torch.randn(MATMUL_N, MATMUL_N, generator=gen),
        torch.randn(MATMUL_N, MATMUL_N, generator=gen),
    )
    jobs["matmul"] = lambda: torch.mm(a, b)
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for job in jobs.values():  # warm-up
        job()
    for _ in range(repeats):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    out: dict[str, Any] = {
        "matmul_gflop_per_s": round(2 * MATMUL_N**3 / med.pop("matmul") / 1e9, 1)
    }
    out.update({f"{name}_images_per_s": round(64 / s, 1) for name, s in med.items()})
    if "latent_sample" in med and "pixel_sample" in med:
        out["sampling_speedup"] = round(med["pixel_sample"] / med["latent_sample"], 2)
        out["training_speedup"] = round(med["pixel_train"] / med["latent_train"], 2)
    return out


def verdict(rows: dict, data: str, budgets: list[float], speed: dict) -> dict:
    """The issue's target: latent reaches pixel's last-budget FID in fewer total minutes, and
    samples at least 3x faster."""
    pixel = rows.get(f"{data}/pixel/{budgets[-1]:g}", {})
    if "fid" not in pixel:
        return {}
    latent = [rows[k] for b in budgets if "fid" in rows.get(k := f"{data}/latent/{b:g}", {})]
    good = [r for r in latent if r["fid"] <= pixel["fid"]]
    return {
        "pixel_fid_at_last_budget": pixel["fid"],
        "latent_total_minutes_to_reach_it": min((r["total_minutes"] for r in good), default=None),
        "latent_best_fid": min((r["fid"] for r in latent), default=None),
        "sampling_at_least_3x_faster": speed.get("sampling_speedup", 0) >= 3,
    }


def table(res: Results) -> str:
    rows = res.data["rows"]
    lines = ["| data | model | budget (min) | total min | steps | FID | KID | precision | recall |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows.values():
        if r["kind"] == "autoencoder" or "fid" not in r:
            continue
        lines.append(f"| {r['data']} | {r['kind']} | {r['budget']:g} | {r['total_minutes']:.2f} | "
                     f"{r['steps']} | {r['fid']:.2f} | {r['kid']:.4f} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} |")  # fmt: skip
    lines += ["", "| data | autoencoder minutes | steps | reconstruction PSNR (dB) | reconstruction FID |",
              "|---|---|---|---|---|"]  # fmt: skip
    for r in rows.values():
        if r["kind"] == "autoencoder":
            lines.append(f"| {r['data']} | {r['train_minutes']:.2f} | {r['steps']} | "
                         f"{r['reconstruction_psnr_db']:.2f} | {r['reconstruction_fid']:.2f} |")  # fmt: skip
    for data, speed in res.data.get("throughput", {}).items():
        lines += ["", f"{data}: " + ", ".join(f"{k} {v}" for k, v in speed.items())]
    for data, v in res.data.get("verdict", {}).items():
        lines += ["", f"{data} target: " + ", ".join(f"{k} {v}" for k, v in v.items())]
    return "\n".join(lines) + "\n"


def write_docs(results: Path, text: str) -> None:
    doc = DOC.read_text()
    head, rest = doc.split(BEGIN)
    DOC.write_text(head + BEGIN + "\n" + text + END + rest.split(END)[1])
    DOC_GRIDS.mkdir(parents=True, exist_ok=True)
    for grid in (results / "grids").glob("*.png"):
        shutil.copy(grid, DOC_GRIDS / grid.name)
    for png in (results / "runs").glob("*/autoencoder/reconstructions.png"):
        shutil.copy(png, DOC_GRIDS / f"{png.parts[-3]}_reconstructions.png")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist,fashion-mnist", help="comma-separated datasets")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"),
                        help="folder holding mnist/ and fashion-mnist/ (IDX .gz files)")  # fmt: skip
    parser.add_argument("--budgets", default="5,10,20", help="total CPU-minutes per run")
    parser.add_argument("--ae-minutes", type=float, default=2.0,
                        help="autoencoder training minutes, counted in every latent budget")  # fmt: skip
    parser.add_argument("--kinds", default="pixel,latent", help="which models: pixel, latent")
    parser.add_argument("--num-samples", type=int, default=5000, help="N for FID")
    parser.add_argument("--sampler", default="dpmpp-2m-sde", help="for both, evaluate and grids")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats")
    parser.add_argument("--results", default="/tmp/latent_vs_pixel", help="results directory")
    parser.add_argument("--num-images", type=int, help="train on the first N images (smoke runs)")
    parser.add_argument("--write-docs", action="store_true", help="update docs/latent.md")
    args = parser.parse_args(argv)
    args.budgets = sorted(float(b) for b in args.budgets.split(","))
    kinds = args.kinds.split(",")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    res = Results(results / "results.json")
    res.data["setup"] = {"budgets": args.budgets, "ae_minutes": args.ae_minutes,
                         "num_samples": args.num_samples, "sampler": args.sampler,
                         "steps": args.steps, "torch_threads": torch.get_num_threads()}  # fmt: skip
    for data in args.data.split(","):
        data_dir = str(Path(args.data_root) / data)
        ensure_evaluator(data, data_dir)
        ae = train_autoencoder(args, data, data_dir, res) if "latent" in kinds else None
        for kind in kinds:
            diffusion_rows(args, data, data_dir, kind, ae, res)
        runs = results / "runs" / data
        speed = throughput(data, data_dir, runs, args.repeats, args.sampler, args.steps)
        res.data.setdefault("throughput", {})[data] = speed
        res.data.setdefault("verdict", {})[data] = verdict(
            res.data["rows"], data, args.budgets, speed
        )
        res.save()
    text = table(res)
    (results / "table.md").write_text(text)
    print(text)
    if args.write_docs:
        write_docs(results, text)
    return res.data


if __name__ == "__main__":
    main()
