"""``difflab export``: a checkpoint's network as ONNX, with a JSON of what a sampler needs, or a
pixel diffusion model as a diffusers folder (``difflab.export``; docs/export.md). onnx and
onnxruntime (the ``export`` extra), or diffusers, are imported when the command runs, so the rest
of the CLI works without them.
"""

from __future__ import annotations

import argparse

from difflab.cli.flags import add_command, check_suffix
from difflab.export import export_diffusers, export_onnx


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "export",
        "Export a checkpoint's denoising network (a GAN: its generator) as ONNX, with a JSON of "
        "what a sampler needs beside it (a latent model's decoder too), or a pixel diffusion "
        "model as a folder diffusers' DDPMPipeline loads; docs/export.md.",
    )
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument(
        "--onnx", metavar="OUT.onnx",
        help="the network's file; OUT.json (and OUT.decoder.onnx for a latent model) go beside it",
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
    check_suffix(args.onnx, ".onnx", "--onnx")
    result = export_onnx(args.checkpoint, args.onnx, ema=ema, overwrite=args.overwrite)
    files = [result.network, result.metadata, *([result.decoder] if result.decoder else [])]
    print(
        f"wrote {', '.join(map(str, files))} ({result.kind}, output {result.output}, "
        f"onnxruntime matches PyTorch to {result.max_abs_diff:.1e})"
    )
