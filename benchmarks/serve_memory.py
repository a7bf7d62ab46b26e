"""Does `difflab serve` keep its memory from request to request? Prints JSON.

Starts the server on a checkpoint in a child process, runs ``--first`` generations (default 5)
through gradio_client (the same queue the page uses), reads the server process's resident
memory (RSS, psutil), runs more up to ``--total`` (default 50), reads it again. The issue's bar:
RSS after 50 within 50 MB of RSS after 5.

    python benchmarks/serve_memory.py --checkpoint runs/demo/model_final.safetensors
    python benchmarks/serve_memory.py --checkpoint CKPT --quick     # a smoke run: 2 then 4

Needs the demo extra (pip install -e ".[demo]").
"""

import argparse
import json
import sys
import tempfile
import time

import psutil
from gradio_client import Client

from difflab.web.process import running_server

LIMIT_MB = 50.0


def rss_mb(pid):
    return psutil.Process(pid).memory_info().rss / 2**20


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", default="runs/demo/model_final.safetensors")
    p.add_argument("--sampler", default="dpmpp-2m-sde")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--first", type=int, default=5, help="generations before the first reading")
    p.add_argument("--total", type=int, default=50, help="generations before the second")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 then 4 generations, 5 steps")
    args = p.parse_args()
    if args.quick:
        args.first, args.total = 2, 4
        args.steps = 5 if args.steps == 20 else args.steps  # unless --steps was given
    readings = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_server(args.checkpoint, "--device", args.device, log=f"{tmp}/serve.log") as (
            url,
            process,
        ),
    ):
        client = Client(url, verbose=False, download_files=tmp)
        readings[0] = rss_mb(process.pid)
        start = time.perf_counter()
        for k in range(1, args.total + 1):
            out = client.predict(
                args.sampler, args.steps, str(k), args.num_images, None, 1.0, 0.0, 0,
                api_name="/generate",
            )  # fmt: skip
            if not str(out[2]).startswith("done"):
                sys.exit(f"generation {k} did not finish: {out[2]}")
            if k in (args.first, args.total):
                readings[k] = rss_mb(process.pid)
        seconds = time.perf_counter() - start
    growth = readings[args.total] - readings[args.first]
    print(json.dumps({
        "benchmark": "serve_memory", "checkpoint": args.checkpoint, "sampler": args.sampler,
        "steps": args.steps, "num_images": args.num_images, "device": args.device,
        "rss_mb_at_start": round(readings[0], 1),
        f"rss_mb_after_{args.first}": round(readings[args.first], 1),
        f"rss_mb_after_{args.total}": round(readings[args.total], 1),
        "growth_mb": round(growth, 1), "limit_mb": LIMIT_MB, "within_limit": growth <= LIMIT_MB,
        "seconds": round(seconds, 1),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
