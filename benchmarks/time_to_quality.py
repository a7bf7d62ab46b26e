"""Time to quality: FID after 5, 10, 20 and 40 CPU-minutes of training, per recipe.

    .venv/bin/python benchmarks/time_to_quality.py --data-dir ../shared/data/mnist \\
        [--budgets 5,10,20,40] [--recipes default,classic,diffusers] [--num-samples 1000] [--extend]
    .venv/bin/python benchmarks/time_to_quality.py --data emoji-datasource \\
        --data-dir ../shared/data/emoji-datasource --recipes default,base16,diffusers --num-samples 2000

``--data mnist`` (28 px grey, scored against the test split) or ``--data emoji-datasource`` (32 px
colour emoji, scored against the held-out emoji, with ``evaluate --memorisation``'s numbers beside
the FID: docs/colour.md). Each data set writes its own JSON, table and plot (``OUTPUTS`` below).

Recipes:
- ``default``: ``difflab train --data D`` as it is (docs/recipe.md says why);
- ``classic``: ``difflab train --data D --preset classic``, the tutorials' recipe;
- ``base16``, ``base32``, ``base64``: the U-Net shapes of the colour search (``SHAPES`` below);
- ``diffusers``: diffusers' ``UNet2DModel`` as its unconditional-training example sets it up for
  28 px (block_out_channels 32/64/64, two ResNet layers per block, attention at 14 and 7 px;
  1.7M parameters; the same at 32 px colour, attention at 16 and 8 px) with ``DDPMScheduler`` (1000 linear steps), trained as its ``train.sh`` does:
  batch 64, AdamW lr 1e-4 (betas 0.95/0.999, weight decay 1e-6) with 500 warm-up steps, and
  diffusers' ``EMAModel`` (warm-up power 3/4, decay up to 0.9999), whose weights are sampled. Its
  cosine decay spans 100 epochs (94k steps here), so within 40 minutes the rate is constant.

Each difflab recipe is one run continued with ``--resume RUN --max-minutes B`` to each budget B
(its clock counts training steps only, not previews or checkpoints; ``--extend`` continues the
runs left in ``--runs`` to the budgets that have no row yet); the diffusers loop runs in
this process and counts the same way. At each budget, N images are drawn with 20 steps of
DPM-Solver++(2M): difflab's ``dpmpp-2m`` for difflab's checkpoints, diffusers' own
``DPMSolverMultistepScheduler`` for the diffusers model (x0 clipped to [-1, 1] in both), and all
are scored by ``difflab evaluate`` against the MNIST test split. The diffusers loop also leaves
a grid of 64 of its samples and its weights at each budget in ``RUNS/diffusers/`` (difflab's
runs write their own previews and checkpoints).

Writes ``docs/time_to_quality.json`` (rows are merged by recipe and budget, so recipes can be run
one at a time), the table in ``docs/time_to_quality.md`` between the ``time_to_quality`` markers,
and the plot ``docs/time_to_quality.png``. Needs the ``bench`` extra for the diffusers recipe and an
otherwise idle machine: the budgets are wall time on the 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- time_to_quality:begin -->", "<!-- time_to_quality:end -->"
DIFFLAB = [sys.executable, "-m", "difflab"]
# per data set: its image size and channels, where its rows, table and plot go, the plot's title
OUTPUTS = {
    "mnist": dict(size=28, channels=1, results=ROOT / "docs" / "time_to_quality.json",
                  doc=ROOT / "docs" / "time_to_quality.md", plot=ROOT / "docs" / "time_to_quality.png",
                  title="MNIST: FID after a CPU-minute budget"),
    "emoji-datasource": dict(size=32, channels=3, results=ROOT / "docs" / "colour" / "time_to_quality.json",
                             doc=ROOT / "docs" / "colour.md", plot=ROOT / "docs" / "colour" / "time_to_quality.png",
                             title="Colour emoji, 32 px: FID after a CPU-minute budget"),
}  # fmt: skip
# U-Net shapes of the colour search: one residual block a level, 3 levels (32/16/8 px)
SHAPES = {
    "base16": ["--base-channels", "16", "--channel-mults", "1,2,4", "--num-res-blocks", "1"],
    "base32": ["--base-channels", "32", "--channel-mults", "1,2,4", "--num-res-blocks", "1"],
    "base64": ["--base-channels", "64", "--channel-mults", "1,2,2,2", "--num-res-blocks", "2"],
}
RECIPE_FLAGS = {"default": [], "classic": ["--preset", "classic"], **SHAPES}
RECIPES = (*RECIPE_FLAGS, "diffusers")

# diffusers' train_unconditional example, at MNIST's size (sample size and channels: the data's)
DIFFUSERS_UNET = dict(
    layers_per_block=2,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
)  # fmt: skip
DIFFUSERS_BATCH, DIFFUSERS_LR, DIFFUSERS_WARMUP = 64, 1e-4, 500  # its train.sh
RECIPE_RESULTS = ROOT / "docs" / "recipe_results.jsonl"  # holds the noisy-real reference row


def run(argv: list[str]) -> None:
    print("$ difflab " + shlex.join(argv), file=sys.stderr, flush=True)
    subprocess.run([*DIFFLAB, *argv], check=True, stdout=sys.stderr)


def score(args: argparse.Namespace, source: list[str], pictures: Path) -> dict:
    """FID, KID, precision and recall from ``difflab evaluate`` (and, for the colour emoji, the
    memorisation check's median-distance ratios, its nearest-pair pictures kept as ``pictures``*)."""
    colour = args.data == "emoji-datasource"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "metrics.json"
        run(["evaluate", *source, "--seed", "1", "--out", str(out),
             *(["--memorisation"] if colour else [])])  # fmt: skip
        m = json.loads(out.read_text())["metrics"]
        for picture in Path(tmp).glob("metrics.nearest-*.png"):
            picture.replace(pictures.with_name(pictures.name + picture.name[len("metrics") :]))
    row = {"fid": round(m["fid"], 3), "kid": round(m["kid"], 5),
           "precision": round(m["precision"], 3), "recall": round(m["recall"], 3)}  # fmt: skip
    if colour:
        for space in ("pixels", "features"):
            check = m["memorisation"][space]
            row[f"copy_ratio_{space}"] = round(check["median_ratio"], 3)
            row[f"likely_copies_{space}"] = round(check["likely_copy_fraction"], 3)
    return row


def read_log(run_dir: Path) -> list[dict]:
    """The records of a run's metrics.jsonl ([] when there is none)."""
    log = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def trained_seconds(run_dir: Path) -> float:
    """Training time so far of a run directory (0 when there is none)."""
    return max((r["elapsed_s"] for r in read_log(run_dir) if "elapsed_s" in r), default=0.0)


def difflab_recipe(args: argparse.Namespace, recipe: str, budgets: list[float], done: set):
    run_dir = Path(args.runs) / recipe
    so_far = trained_seconds(run_dir) if args.extend else 0.0
    for budget in budgets:
        if so_far >= budget * 60:  # --extend: this run is past the budget already
            if (recipe, budget) not in done:
                raise SystemExit(f"{run_dir} has trained {so_far / 60:.1f} min, past the "
                                 f"{budget:g}-min budget, which has no row: run without --extend")  # fmt: skip
            print(f"{recipe}: {budget:g} min already measured", file=sys.stderr)
            continue
        if so_far == 0:
            run(["train", "--data", args.data, "--data-dir", args.data_dir, *size_flags(args),
                 *RECIPE_FLAGS[recipe],
                 "--epochs", "1000", "--max-minutes", f"{budget:g}", "--sample-every", "0",
                 "--checkpoint-every", "0", "--seed", "0", "--no-progress", "--overwrite",
                 "--out", str(run_dir)])  # fmt: skip
        else:
            run(["train", "--resume", str(run_dir), "--max-minutes", f"{budget:g}",
                 "--no-progress"])  # fmt: skip
        so_far = budget * 60
        last = [r for r in read_log(run_dir) if "loss" in r][-1]
        ckpt = run_dir / "model_final.safetensors"
        sampling = [
            "--sampler",
            "dpmpp-2m",
            "--steps",
            "20",
            "--num-samples",
            str(args.num_samples),
        ]
        scores = score(args, ["--checkpoint", str(ckpt), *sampling], run_dir / f"{budget:g}min")
        yield {"recipe": recipe, "minutes": budget, "steps": last["step"],
               "trained_s": last["elapsed_s"], **scores}  # fmt: skip


def diffusers_recipe(args: argparse.Namespace, budgets: list[float]):
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
    from diffusers.training_utils import EMAModel
    from safetensors.torch import save_file

    from difflab.data import load_dataset
    from difflab.viz import save_grid

    torch.manual_seed(0)
    size, channels = OUTPUTS[args.data]["size"], OUTPUTS[args.data]["channels"]
    model = UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, **DIFFUSERS_UNET
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000)  # linear betas 1e-4 .. 0.02
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=DIFFUSERS_LR, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8
    )
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    images = load_dataset(args.data, data_dir=args.data_dir, image_size=size).images
    images = torch.from_numpy(images)
    gen = torch.Generator().manual_seed(0)
    print(f"diffusers UNet2DModel: {sum(p.numel() for p in model.parameters()):,} parameters",
          file=sys.stderr)  # fmt: skip
    step, elapsed, order, pos = 0, 0.0, torch.randperm(len(images), generator=gen), 0
    for budget in budgets:
        model.train()
        while elapsed < budget * 60:
            t0 = time.perf_counter()
            if pos + DIFFUSERS_BATCH > len(order):
                order, pos = torch.randperm(len(images), generator=gen), 0
            x0 = images[order[pos : pos + DIFFUSERS_BATCH]]
            pos += DIFFUSERS_BATCH
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.randint(0, 1000, (len(x0),), generator=gen)
            pred = model(scheduler.add_noise(x0, noise, t), t, return_dict=False)[0]
            loss = torch.nn.functional.mse_loss(pred, noise)
            for group in optimizer.param_groups:
                group["lr"] = DIFFUSERS_LR * min(1.0, (step + 1) / DIFFUSERS_WARMUP)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ema.step(model.parameters())
            step += 1
            elapsed += time.perf_counter() - t0
        print(f"diffusers: {step} steps in {elapsed / 60:.1f} min, loss {loss.item():.4f}",
              file=sys.stderr)  # fmt: skip
        model.eval()
        ema.store(model.parameters())
        ema.copy_to(model.parameters())  # sample the EMA weights, as the example's pipeline does
        # thresholding with sample_max_value 1 clips the x0 predictions to [-1, 1], as difflab's
        # samplers do by default (unclipped, a 10-minute model here scored 94 instead of 76)
        solver = DPMSolverMultistepScheduler(  # not `scheduler`: training goes on with that one
            num_train_timesteps=1000, thresholding=True, sample_max_value=1.0
        )
        samples = sample_diffusers(model, solver, args.num_samples, (channels, size, size))
        out = Path(args.runs) / "diffusers"
        save_grid(samples[:64], out / f"samples_{budget:g}min.png")
        save_file(model.state_dict(), str(out / f"unet_{budget:g}min.safetensors"))  # EMA weights
        ema.restore(model.parameters())
        with tempfile.TemporaryDirectory() as tmp:
            npz = Path(tmp) / "samples.npz"
            np.savez_compressed(npz, images=np.round((samples + 1) * 127.5).astype(np.uint8))
            scores = score(args, ["--images", str(npz), "--data", args.data,
                                  "--data-dir", args.data_dir], out / f"{budget:g}min")  # fmt: skip
        yield {"recipe": "diffusers", "minutes": budget, "steps": step,
               "trained_s": round(elapsed, 2), **scores}  # fmt: skip


@torch.no_grad()
def sample_diffusers(model, scheduler, n: int, shape: tuple, batch: int = 250) -> np.ndarray:
    """diffusers' pipeline loop (set_timesteps, then UNet and scheduler.step), 20 steps."""
    gen = torch.Generator().manual_seed(1)
    out = []
    for start in range(0, n, batch):
        scheduler.set_timesteps(20)
        x = torch.randn((min(batch, n - start), *shape), generator=gen)
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t, return_dict=False)[0], t, x, return_dict=False)[0]
        out.append(x.clamp(-1, 1).numpy())
    return np.concatenate(out)


def size_flags(args: argparse.Namespace) -> list[str]:
    return ["--image-size", "32"] if args.data == "emoji-datasource" else []


def write_outputs(rows: list[dict], data: str) -> None:
    where = OUTPUTS[data]
    where["results"].parent.mkdir(parents=True, exist_ok=True)
    where["results"].write_text(json.dumps(rows, indent=1) + "\n")
    budgets = sorted({r["minutes"] for r in rows})
    recipes = [r for r in RECIPES if any(x["recipe"] == r for x in rows)]
    fid = {(r["recipe"], r["minutes"]): r for r in rows}
    colour = data == "emoji-datasource"  # the memorisation check's ratio at the last budget
    head = "| recipe | " + " | ".join(f"FID @ {b:g} min" for b in budgets) + " | steps at the end |"
    head += " nearest-training distance / held-out's, pixels, features |" if colour else ""
    lines = [head, "|---" * (len(budgets) + 2 + colour) + "|"]
    for recipe in recipes:
        cells = [f"{fid[(recipe, b)]['fid']:.2f}" if (recipe, b) in fid else "-" for b in budgets]
        last = max((r for r in rows if r["recipe"] == recipe), key=lambda r: r["minutes"])
        ratios = f" {last['copy_ratio_pixels']:.2f}, {last['copy_ratio_features']:.2f} |"
        lines.append(f"| {recipe} | " + " | ".join(cells) + f" | {last['steps']} |"
                     + (ratios if colour else ""))  # fmt: skip
    text = where["doc"].read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    where["doc"].write_text(text[:start] + "\n" + "\n".join(lines) + "\n" + text[end:])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for recipe in recipes:
        points = sorted((r["minutes"], r["fid"]) for r in rows if r["recipe"] == recipe)
        ax.plot(*zip(*points, strict=True), marker="o", label=recipe)
    noisy = [json.loads(line) for line in RECIPE_RESULTS.read_text().splitlines() if line.strip()]
    noisy = [r for r in noisy if r["name"] == "real train + noise 0.1"
             and r["num_samples"] == rows[0].get("num_samples")]  # fmt: skip
    if noisy and data == "mnist":  # benchmarks/recipe_search.py --noise-reference at the same N
        ax.axhline(noisy[-1]["fid"], color="grey", linestyle="--", linewidth=1)
        ax.annotate("real images + noise 0.1", (budgets[-1], noisy[-1]["fid"]), color="grey",
                    textcoords="offset points", xytext=(0, 4), fontsize=8, ha="right")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    # label the minor ticks 2 and 5 of each decade only: all eight overlap
    ax.yaxis.set_minor_formatter(
        FuncFormatter(lambda v, _: f"{v:g}" if f"{v:e}"[0] in "25" else "")
    )
    ax.set_xlabel("training time on the 2-core CPU (minutes)")
    ax.set_ylabel(f"FID (difflab evaluate, N = {rows[0].get('num_samples', 0)})")
    ax.set_title(where["title"])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(where["plot"])
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=tuple(OUTPUTS), default="mnist")
    parser.add_argument("--data-dir", default="../shared/data/mnist")
    parser.add_argument("--budgets", default="5,10,20,40", help="minutes, comma-separated")
    parser.add_argument("--recipes", default="default,classic,diffusers")
    parser.add_argument("--num-samples", type=int, default=1000, help="N for FID")
    parser.add_argument("--runs", help="run directories (default: runs/time_to_quality[-DATA])")
    parser.add_argument("--no-write", action="store_true", help="print JSON only")
    parser.add_argument(
        "--extend",
        action="store_true",
        help="continue the difflab runs already in --runs to the budgets not yet measured, "
        "instead of training afresh (the diffusers recipe always starts afresh)",
    )
    parser.add_argument("--replot", action="store_true", help="only rewrite the table and plot")
    args = parser.parse_args(argv)
    args.runs = args.runs or "runs/time_to_quality" + (
        "" if args.data == "mnist" else f"-{args.data}"
    )
    budgets = sorted(float(b) for b in args.budgets.split(","))
    results = OUTPUTS[args.data]["results"]
    rows = json.loads(results.read_text()) if results.exists() and not args.no_write else []
    if args.replot:
        return write_outputs(rows, args.data)
    for recipe in args.recipes.split(","):
        if recipe not in RECIPES:
            parser.error(f"unknown recipe {recipe!r}; expected one of {', '.join(RECIPES)}")
        points = (diffusers_recipe(args, budgets) if recipe == "diffusers"
                  else difflab_recipe(args, recipe, budgets, {(r["recipe"], r["minutes"]) for r in rows}))  # fmt: skip
        for row in points:
            row.update(
                num_samples=args.num_samples, load_average=[round(x, 2) for x in os.getloadavg()]
            )
            print(json.dumps(row), flush=True)
            if not args.no_write:
                rows = [r for r in rows if (r["recipe"], r["minutes"]) != (recipe, row["minutes"])]
                rows.append(row)
                rows.sort(key=lambda r: (r["recipe"], r["minutes"]))
                write_outputs(rows, args.data)


if __name__ == "__main__":
    main()
