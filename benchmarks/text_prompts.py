"""Prompt adherence of text models (``difflab train --data mnist-compose --text``), measured.

    .venv/bin/python benchmarks/text_prompts.py --run transformer=runs/text/transformer \
        [--run bag=runs/text/bag] [--guidance 1,2,3,5] [--num-prompts 1000] \
        [--curve-prompts 400] [--curve-guidance 3] [--curve-every 1] [--pictures docs/text]
        [--out FILE.json]

For each run: the final model's accuracy (``difflab evaluate``'s prompt adherence: one image per
prompt, half of the prompts held out of training, digits read by the MNIST evaluator) at each
guidance scale, and the curve over the run's kept epoch checkpoints at one scale (accuracy
against training steps). Every row is scored in this one process on this machine, whose fp32
matmul rate is recorded beside them. Each run's picture of its final model at its best scale
goes to ``--pictures`` as ``prompts_<name>.png``. Prints one JSON line per row and the whole
report at the end (also to ``--out``).

Needs the MNIST evaluator (``difflab train-evaluator --data mnist``, or ``--evaluator``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from difflab import evaluation as ev
from difflab.checkpoint import load_checkpoint
from difflab.kinds import load_model, plan_sampling
from difflab.sampling import execute
from difflab.training.rundir import CHECKPOINT_NAME
from machine import cpu_name, matmul_gflops


def training_record(run: Path) -> dict:
    """What the run trained: steps, minutes, encoder, the network's shape."""
    config = json.loads((run / "config.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "step" in m and "elapsed_s" in m]
    model = config["model"]
    return {
        "steps": steps[-1]["step"] if steps else None,
        "training_minutes": round(steps[-1]["elapsed_s"] / 60, 1) if steps else None,
        "text_encoder": model["text_encoder"],
        "network": {
            k: model[k]
            for k in ("base_channels", "channel_mults", "num_res_blocks", "cross_attention_levels")
        },
        "batch_size": config["train"]["batch_size"],
    }


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    """The run's kept epoch checkpoints and its final model, by training step."""
    out = [(training_record(run)["steps"], run / "model_final.safetensors")]
    for path in (run / "checkpoints").glob("epoch_*.safetensors"):
        match = CHECKPOINT_NAME.fullmatch(path.name)
        if match and match.group(2) is None:  # whole epochs only
            out.append((int(load_checkpoint(path).state["step"]), path))
    return sorted(set(out))


def score(path: Path, evaluator: ev.Evaluator, num: int, guidance: float, seed: int) -> dict:
    loaded = load_model(path, "cpu")
    start = time.perf_counter()
    captions, held_out = ev.adherence_captions(num, seed)
    plan = plan_sampling(loaded, ev.prompt_request(captions, seed=seed, guidance=guidance))
    images = execute(loaded, plan).numpy()
    report = ev.score_prompts(images, captions, held_out, evaluator, plan)
    summary = report.summary
    row = {
        "guidance": guidance, "prompts": num, "accuracy": summary["accuracy"],
        "seen": summary["seen"]["accuracy"], "held_out": summary["held_out"]["accuracy"],
        "held_out_by_kind": {k: v["accuracy"] for k, v in summary["held_out"]["by_kind"].items()},
        "seen_by_kind": {k: v["accuracy"] for k, v in summary["seen"]["by_kind"].items()},
        "clauses": summary["clauses"], "failures": summary["failures"],
        "sampler": report.sampler, "steps": report.steps,
        "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    return {"row": row, "report": report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--guidance", default="1,2,3,5", help="scales for the final models")
    parser.add_argument("--num-prompts", type=int, default=1000)
    parser.add_argument("--curve-prompts", type=int, default=400, help="0: no curve")
    parser.add_argument("--curve-guidance", type=float, default=3.0)
    parser.add_argument("--curve-every", type=int, default=1, help="every K-th epoch checkpoint")
    parser.add_argument("--evaluator", help="default: the MNIST evaluator in the user cache")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pictures", help="folder for prompts_<name>.png")
    parser.add_argument("--out", help="also write the report here")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    evaluator = ev.load_evaluator(
        args.evaluator or ev.default_evaluator_path("mnist", 28), torch.device("cpu")
    )
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads":
               torch.get_num_threads(), "matmul_gflops_fp32": round(matmul_gflops(), 1)}  # fmt: skip
    print(json.dumps({"machine": machine}), flush=True)
    guidances = [float(g) for g in args.guidance.split(",")]
    report: dict = {"machine": machine, "evaluator": str(evaluator.path), "runs": {}}
    for spec in args.run:
        name, _, folder = spec.partition("=")
        run = Path(folder)
        entry: dict = {"run": str(run), **training_record(run), "final": [], "curve": []}
        best = None
        for guidance in guidances:
            got = score(run / "model_final.safetensors", evaluator, args.num_prompts, guidance,
                        args.seed)  # fmt: skip
            entry["final"].append(got["row"])
            print(json.dumps({"run": name, "final": got["row"]}), flush=True)
            if best is None or got["row"]["accuracy"] > best["row"]["accuracy"]:
                best = got
        if args.pictures and best is not None:
            picture = Path(args.pictures) / f"prompts_{name}.png"
            ev.save_adherence_picture(best["report"], picture)
            entry["picture"] = str(picture)
        if args.curve_prompts:
            kept = checkpoints(run)
            for step, path in [*kept[:-1][args.curve_every - 1 :: args.curve_every], kept[-1]]:
                got = score(path, evaluator, args.curve_prompts, args.curve_guidance, args.seed)
                row = {"step": step, **got["row"]}
                entry["curve"].append(row)
                print(json.dumps({"run": name, "curve": row}), flush=True)
        report["runs"][name] = entry
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
