"""``difflab serve``: the web demo on a trained checkpoint (docs/web_demo.md).

One command per module; a new command is a new module like this one, listed in
``difflab/cli/__init__.py``. Gradio is imported only when the command runs, so the rest of the
CLI works without the ``demo`` extra.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from difflab.cli.flags import HelpFormatter, add_command, positive_int

# What `difflab demo` writes with its default --out
DEFAULT_CHECKPOINT = Path("runs/demo/model_final.safetensors")

EPILOG = """The page has two tabs. Generate: pick a sampler, steps, seed ('random' draws one and
shows it), number of images, and for a class-conditional model the class and guidance scale;
x_t and the predicted x0 are streamed as the sampler computes them, then the grid, with the PNG
and the GIF to download. The same seed and settings give the same images as `difflab sample`.
A distilled model (`difflab distill`) samples in 1, 2 or 4 steps. Forward process: slide t over
a test image (or an upload) and see x_t, the noise and alpha_bar_t and the SNR on the schedule.

It works with no internet (no CDN, system fonts, no analytics, no share link), listens on
127.0.0.1 unless --host says otherwise, validates every value on the server, queues requests
(--concurrency at once, --queue-size waiting, then "queue is full"), refuses direct API calls
that bypass the queue, limits uploads to --max-upload and never serves the checkpoint's folder.
A gate in front of it refuses requests over 64 kB, events the page lacks, files it did not
upload and URLs (nothing is fetched); uploads are checked from their header before decoding.
docs/web_demo.md lists each protection and the test that proves it.

examples:
  difflab demo && difflab serve          # train the built-in demo model, then open the page
  difflab serve --checkpoint runs/mnist/model_final.safetensors --port 8000
"""


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "serve",
        "Open the web demo: watch a checkpoint draw images live, and the forward process.",
    )
    p.epilog = EPILOG
    p.formatter_class = _Formatter
    p.add_argument(
        "--checkpoint",
        help=f"a .safetensors file written by difflab (default: {DEFAULT_CHECKPOINT}, what "
        "`difflab demo` trains)",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: all)")
    p.add_argument("--port", type=positive_int, default=7860, help="TCP port")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--max-images", type=positive_int, default=64, help="most images per request")
    p.add_argument(
        "--concurrency", type=positive_int, default=1, help="generations that run at once"
    )
    p.add_argument(
        "--queue-size", type=positive_int, default=16,
        help="requests that may wait; more are told the queue is full",
    )  # fmt: skip
    p.add_argument(
        "--max-upload", default="1mb", help="largest upload (forward-process tab), e.g. 500kb"
    )


class _Formatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The commands' help (defaults appended), keeping the epilog's line breaks."""


def checkpoint_path(given: str | None) -> Path:
    """The checkpoint to serve: the one given, or the demo's, or a one-line way to get one."""
    if given is not None:
        return Path(given)
    if not DEFAULT_CHECKPOINT.is_file():
        raise ValueError(
            f"no --checkpoint given and {DEFAULT_CHECKPOINT} does not exist: train the demo "
            "model with `difflab demo` (about 3 minutes on a CPU), or pass --checkpoint PATH"
        )
    return DEFAULT_CHECKPOINT


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cmd_serve(args: argparse.Namespace) -> None:
    path = checkpoint_path(args.checkpoint)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    from difflab.web.guard import parse_size

    parse_size(
        args.max_upload, "--max-upload"
    )  # before anything starts: "--max-upload 1zb" is one line
    work_dir = Path(tempfile.mkdtemp(prefix="difflab-serve-"))
    os.environ["GRADIO_TEMP_DIR"] = str(work_dir / "gradio")  # Gradio's files, removed at exit
    try:
        try:
            from difflab.web.app import ServeOptions, is_loopback, serve
        except ImportError as err:
            raise ValueError(
                f"difflab serve needs the demo extra ({err.name or err} is missing): "
                'pip install -e ".[demo]"'
            ) from None
        from difflab.web.core import DemoModel

        demo = DemoModel(path, args.device, max_images=args.max_images)
        options = ServeOptions(
            host=args.host, port=args.port, concurrency=args.concurrency,
            queue_size=args.queue_size, max_upload=args.max_upload,
        )  # fmt: skip
        if not is_loopback(args.host):
            print(
                f"difflab serve: warning: listening on {args.host}, not 127.0.0.1: anyone who "
                f"can reach port {args.port} of this machine can use the demo",
                file=sys.stderr,
            )
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
        app = serve(demo, options, work_dir / "requests", block=False)
        shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        print(f"difflab serve: {demo.describe()}")
        print(f"difflab serve: open http://{shown}:{args.port} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            print("difflab serve: stopped", flush=True)
        finally:
            app.close()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
