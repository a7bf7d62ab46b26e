"""One generation (default: 20 steps, 16 images) in the web demo against `difflab sample`, on
the same machine in the same run, interleaved. Prints JSON.

Each round runs, in turn:
  page     the page's path: a gradio_client request through the server's queue, with the live
           frames streamed, until the final grid, PNG and GIF are back (``--browser``: instead,
           headless Chromium presses Generate and waits for "done" in the status box);
  sample   `difflab sample` in a child process: its wall time (Python start, checkpoint load,
           sampling, PNG) and the sampling time it prints itself.

    python benchmarks/serve_speed.py --checkpoint runs/demo/model_final.safetensors
    python benchmarks/serve_speed.py --checkpoint CKPT --quick            # a smoke run
    python benchmarks/serve_speed.py --checkpoint CKPT --browser --screenshot page.png

Needs the demo extra (pip install -e ".[demo]"); --browser also needs chromium.
"""

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from gradio_client import Client

from difflab.web.process import running_server


def time_client(client, args, seed):
    start = time.perf_counter()
    out = client.predict(
        args.sampler, args.steps, str(seed), args.num_images, None, 1.0, 0.0, 0,
        api_name="/generate",
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if not str(out[2]).startswith("done"):
        sys.exit(f"the page did not finish: {out[2]}")
    return seconds


def time_browser(page, args, seed):
    if page.locator("#steps input[type=radio]").count():  # a distilled model: 1, 2 or 4
        page.check(f"#steps input[value='{args.steps}']")
    else:
        page.fill("#steps input", str(args.steps))
    page.fill("#seed textarea", str(seed))
    page.fill("#num_images input", str(args.num_images))
    start = time.perf_counter()
    page.click("#generate")
    done = f"seed {seed}"  # this run's "done: N images, S steps, seed SEED"
    page.wait_for_function(
        "(end) => { const v = document.querySelector('#status textarea').value;"
        " return v.startsWith('done') && v.endsWith(end); }",
        arg=done, timeout=600_000,
    )  # fmt: skip
    return time.perf_counter() - start


def time_sample(args, seed, out):
    argv = [
        sys.executable, "-m", "difflab", "sample", "--checkpoint", args.checkpoint, "--sampler",
        args.sampler, "--steps", str(args.steps), "--num-images", str(args.num_images), "--seed",
        str(seed), "--device", args.device, "--out", out,
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    printed = re.search(r", ([0-9.]+) s\)", done.stdout)
    return wall, float(printed.group(1)) if printed else None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", default="runs/demo/model_final.safetensors")
    p.add_argument("--sampler", default="dpmpp-2m-sde")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--browser", action="store_true", help="time the page in headless Chromium")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round of 5 steps")
    p.add_argument("--screenshot", help="with --browser: a full-page PNG after the last round")
    args = p.parse_args()
    if args.quick:
        args.rounds = 1
        args.steps = 5 if args.steps == 20 else args.steps  # unless --steps was given
    page_s, sample_wall, sample_gen = [], [], []
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_server(args.checkpoint, "--device", args.device, log=f"{tmp}/serve.log") as (
            url,
            _,
        ),
    ):
        if args.browser:
            from playwright.sync_api import sync_playwright

            pw = sync_playwright().start()
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), headless=True)
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("#generate")
            run_page = lambda seed: time_browser(page, args, seed)  # noqa: E731
        else:
            client = Client(url, verbose=False, download_files=tmp)
            run_page = lambda seed: time_client(client, args, seed)  # noqa: E731
        run_page(0)  # warm-up: the first request pays for lazy imports on both sides
        for r in range(args.rounds):  # interleaved, so load on the machine hits both alike
            page_s.append(run_page(r + 1))
            wall, gen = time_sample(args, r + 1, f"{tmp}/sample.png")
            sample_wall.append(wall)
            if gen is not None:
                sample_gen.append(gen)
        if args.browser:
            if args.screenshot:
                page.screenshot(path=args.screenshot, full_page=True)
            browser.close()
            pw.stop()
    print(json.dumps({
        "benchmark": "serve_speed", "checkpoint": args.checkpoint, "sampler": args.sampler,
        "steps": args.steps, "num_images": args.num_images, "device": args.device,
        "rounds": args.rounds, "page_via": "chromium" if args.browser else "gradio_client",
        "page_s_median": round(statistics.median(page_s), 3),
        "sample_wall_s_median": round(statistics.median(sample_wall), 3),
        "sample_sampling_s_median": round(statistics.median(sample_gen), 3) if sample_gen else None,
        "page_s": [round(s, 3) for s in page_s],
        "sample_wall_s": [round(s, 3) for s in sample_wall],
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
