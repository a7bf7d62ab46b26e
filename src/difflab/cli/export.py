"""``difflab export``: a checkpoint's network as ONNX, with a JSON of what a sampler needs; a
static page folder that draws in the browser with onnxruntime-web; or a pixel diffusion model as a
diffusers folder (``difflab.export``; docs/export.md). onnx and onnxruntime (the ``export``
extra), or diffusers, are imported when the command runs, so the rest of the CLI works without
them.
"""

from __future__ import annotations

import argparse
import sys

from difflab.cli.flags import add_command, check_suffix
from difflab.export import export_diffusers, export_onnx, export_web
from difflab.export.web import ORT_WEB_VERSION


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "export",
        "Export a checkpoint's denoising network (a GAN: its generator) as ONNX, with a JSON of "
        "what a sampler needs beside it (a latent model's decoder too), a static web page that "
        "draws in the browser, or a pixel diffusion model as a folder diffusers' DDPMPipeline "
        "loads; docs/export.md.",
    )
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument(
        "--onnx", metavar="OUT.onnx",
        help="the network's file; OUT.json (and OUT.decoder.onnx for a latent model) go beside it",
    )  # fmt: skip
    out.add_argument(
        "--web", metavar="DIR",
        help="a static page folder (index.html, the ONNX network, onnxruntime-web) that draws 16 "
        "images in the browser; serve it with python -m http.server -d DIR",
    )  # fmt: skip
    out.add_argument(
        "--diffusers", metavar="DIR",
        help="a folder for diffusers.DDPMPipeline.from_pretrained: unet/, scheduler/, README.md",
    )  # fmt: skip
    p.add_argument("--checkpoint", required=True, help="a .safetensors file written by difflab")
    p.add_argument("--raw-weights", action="store_true", help="use raw instead of EMA weights")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an export")


def cmd_export(args: argparse.Namespace) -> None:
    ema = not args.raw_weights
    if args.diffusers is not None:
        done = export_diffusers(args.checkpoint, args.diffusers, ema=ema, overwrite=args.overwrite)
        print(
            f"wrote {done.out_dir} (DDPMPipeline: UNet2DModel, DDPMScheduler "
            f"{done.beta_schedule}, {done.prediction_type}; UNet2DModel matches difflab to "
            f"{done.max_abs_diff:.1e})"
        )
        return
    if args.web is not None:
        page = export_web(
            args.checkpoint, args.web, ema=ema, overwrite=args.overwrite,
            note=lambda line: print(f"difflab export: {line}", file=sys.stderr, flush=True),
        )  # fmt: skip
        steps = (
            f"{', '.join(map(str, page.step_choices))} steps"
            if page.step_choices
            else f"DDIM in 1..{page.max_steps} steps"
        )
        print(
            f"wrote {page.out_dir} ({page.kind}, {page.sampler}: {steps}; {_mb(page.total_bytes)} "
            f"in all: model {_mb(page.model_bytes)}, onnxruntime-web {ORT_WEB_VERSION} "
            f"{_mb(page.runtime_bytes)}); serve it: python -m http.server -d {page.out_dir}"
        )
        return
    check_suffix(args.onnx, ".onnx", "--onnx")
    result = export_onnx(args.checkpoint, args.onnx, ema=ema, overwrite=args.overwrite)
    files = [result.network, result.metadata, *([result.decoder] if result.decoder else [])]
    print(
        f"wrote {', '.join(map(str, files))} ({result.kind}, output {result.output}, "
        f"onnxruntime matches PyTorch to {result.max_abs_diff:.1e})"
    )


def _mb(size: int) -> str:
    return f"{size / 2**20:.2f} MiB"
