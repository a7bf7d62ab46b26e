"""The static page (`difflab export --web`) in headless Chromium against `difflab sample`, on the
same machine in the same run, interleaved. Prints JSON.

Two drawings of 16 images, each timed both ways:
  student  a distilled student in one step (a consistency student; target: < 1 s in the page)
  ddim     a diffusion model with DDIM in 20 steps (target: < 5 s in the page)

  page     the computation time the page measures itself (performance.now() around the sampler
           loop, less the time spent drawing frames), read from its DOM; the first draw, which
           pays for WebAssembly's compilation tiers, is a warm-up and not counted
  sample   `difflab sample` in a child process: its wall time (Python start, checkpoint load,
           sampling, PNG) and the sampling time it prints itself; PyTorch on all its threads
           unless --sample-threads

Without checkpoints it makes difflab's default MNIST U-Net (28 px, 0.64M parameters,
unconditional) with its initial weights moved off by noise, as a student and as a diffusion
model: the time of a network does not depend on what it has learnt.

    python benchmarks/web_page.py
    python benchmarks/web_page.py --student runs/cd/model_final.safetensors \\
        --ddim runs/mnist/model_final.safetensors --rounds 5 --screenshot page.png

Needs onnxruntime-web (make web-runtime), the demo extra's Playwright and chromium.
"""

import argparse
import functools
import http.server
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from playwright.sync_api import sync_playwright

from difflab.checkpoint import write_checkpoint
from difflab.config import ConsistencyConfig, RunConfig, default_model_config
from difflab.export.web import ORT_WEB_VERSION, export_web
from difflab.models.unet import UNet
from machine import cpu_name, matmul_gflops

TARGETS_S = {"student": 1.0, "ddim": 5.0}
DEFAULT = "difflab's default MNIST U-Net (0.64M parameters), initial weights + noise"


def default_checkpoints(folder):
    """difflab's default MNIST U-Net as a consistency student and as a diffusion model."""
    mc = default_model_config("mnist", 28, 1)
    torch.manual_seed(0)
    unet = UNet(mc)
    gen = torch.Generator().manual_seed(1)
    weights = {k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
               for k, v in unet.state_dict().items()}  # fmt: skip
    student = RunConfig(model=mc, consistency=ConsistencyConfig(teacher="teacher.safetensors",
                                                                teacher_sha256="0" * 64))  # fmt: skip
    return (
        write_checkpoint(folder / "student.safetensors", student, {"model": weights}),
        write_checkpoint(folder / "ddim.safetensors", RunConfig(model=mc), {"model": weights}),
    )


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def draw(page, steps, seed):
    """One draw of 16 images in the page: the computation time it shows, in seconds."""
    if page.locator("select#steps").count():
        page.select_option("#steps", str(steps))
    else:
        page.fill("#steps", str(steps))
    page.fill("#seed", str(seed))
    page.click("#draw")
    page.wait_for_function(
        "(s) => document.querySelector('#status').textContent === s",
        arg=f"done: seed {seed}, {steps} step{'s' if steps > 1 else ''}", timeout=600_000,
    )  # fmt: skip
    return float(page.get_attribute("#time", "data-compute-ms")) / 1000


def time_sample(checkpoint, steps, seed, sampler, out, threads):
    argv = [
        sys.executable, "-m", "difflab", "sample", "--checkpoint", str(checkpoint), "--steps",
        str(steps), "--num-images", "16", "--seed", str(seed), "--device", "cpu", "--out", out,
        *(["--sampler", sampler] if sampler else []),
    ]  # fmt: skip
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
    wall = time.perf_counter() - start
    printed = re.search(r", ([0-9.]+) s\)", done.stdout)
    return wall, float(printed.group(1)) if printed else None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--student", help="a consistency (or progressive) student's checkpoint")
    p.add_argument("--ddim", help="a diffusion model's checkpoint")
    p.add_argument("--student-steps", type=int, default=1)
    p.add_argument("--ddim-steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sample-threads", type=int, help="OMP_NUM_THREADS for `difflab sample`")
    p.add_argument("--screenshot", help="a full-page PNG of the DDIM page after the last round")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        made = default_checkpoints(tmp) if not (args.student and args.ddim) else (None, None)
        checkpoints = {"student": args.student or made[0], "ddim": args.ddim or made[1]}
        steps = {"student": args.student_steps, "ddim": args.ddim_steps}
        samplers = {"student": None, "ddim": "ddim"}
        site = tmp / "site"
        pages = {name: export_web(ckpt, site / name) for name, ckpt in checkpoints.items()}
        handler = functools.partial(QuietHandler, directory=str(site))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        results = {}
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), headless=True)
            tabs = {}
            for name in pages:
                tab = browser.new_page(viewport={"width": 900, "height": 1100})
                tab.goto(url + name + "/")
                tab.wait_for_function("window.difflab && document.querySelector('#status')"
                                      ".textContent.startsWith('ready')", timeout=120_000)  # fmt: skip
                draw(tab, steps[name], 0)  # warm-up
                tabs[name] = tab
            timings = {name: {"page": [], "wall": [], "sampling": []} for name in pages}
            for r in range(args.rounds):  # interleaved: load on the machine hits both alike
                for name in pages:
                    timings[name]["page"].append(draw(tabs[name], steps[name], r + 1))
                    wall, gen = time_sample(checkpoints[name], steps[name], r + 1,
                                            samplers[name], str(tmp / "sample.png"),
                                            args.sample_threads)  # fmt: skip
                    timings[name]["wall"].append(wall)
                    if gen is not None:
                        timings[name]["sampling"].append(gen)
            if args.screenshot:
                tabs["ddim"].screenshot(path=args.screenshot, full_page=True)
            browser.close()
        server.shutdown()
        for name, done in pages.items():
            t = timings[name]
            results[name] = {
                "kind": done.kind, "sampler": done.sampler, "steps": steps[name],
                "num_images": 16, "page_bytes": done.total_bytes,
                "page_compute_s_median": round(statistics.median(t["page"]), 3),
                "target_s": TARGETS_S[name],
                "within_target": statistics.median(t["page"]) < TARGETS_S[name],
                "sample_wall_s_median": round(statistics.median(t["wall"]), 3),
                "sample_sampling_s_median": round(statistics.median(t["sampling"]), 3)
                if t["sampling"] else None,
                "page_compute_s": [round(s, 3) for s in t["page"]],
                "sample_wall_s": [round(s, 3) for s in t["wall"]],
            }  # fmt: skip
    print(json.dumps({
        "benchmark": "web_page", "onnxruntime_web": ORT_WEB_VERSION, "page_threads": 1,
        "sample_torch_threads": args.sample_threads or torch.get_num_threads(), "cpu": cpu_name(),
        "matmul_gflops": round(matmul_gflops(), 1), "rounds": args.rounds,
        "checkpoints": {"student": args.student or DEFAULT, "ddim": args.ddim or DEFAULT},
        "page_bytes": results["ddim"]["page_bytes"], **results,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
