"""``difflab export``: a checkpoint's network as ONNX, with a JSON of what a sampler needs
(``difflab.export``; docs/export.md). onnx and onnxruntime (the ``export`` extra) are imported
when the command runs, so the rest of the CLI works without them.
"""

from __future__ import annotations

import argparse

from difflab.cli.flags import add_command, check_suffix
from difflab.export import export_onnx


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers,
        "export",
        "Export a checkpoint's denoising network (a GAN: its generator) as ONNX, with a JSON of "
        "what a sampler needs beside it (a latent model's decoder too); docs/export.md.",
    )
    p.add_argument(
        "--onnx", required=True, metavar="OUT.onnx",
        help="the network's file; OUT.json (and OUT.decoder.onnx for a latent model) go beside it",
    )  # fmt: skip
    p.add_argument("--checkpoint", required=True, help="a .safetensors file written by difflab")
    p.add_argument("--raw-weights", action="store_true", help="use raw instead of EMA weights")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an export")


def cmd_export(args: argparse.Namespace) -> None:
    check_suffix(args.onnx, ".onnx", "--onnx")
    result = export_onnx(
        args.checkpoint, args.onnx, ema=not args.raw_weights, overwrite=args.overwrite
    )
    files = [result.network, result.metadata, *([result.decoder] if result.decoder else [])]
    print(
        f"wrote {', '.join(map(str, files))} ({result.kind}, output {result.output}, "
        f"onnxruntime matches PyTorch to {result.max_abs_diff:.1e})"
    )
