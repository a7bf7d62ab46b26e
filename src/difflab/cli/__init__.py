"""``difflab visualize | train | train-gan | train-autoencoder | distill | sample | inpaint |
img2img | interpolate | inspect | evaluate | train-evaluator | export | demo | serve``: the command
line.

Flags map onto the fields of the config dataclasses (``difflab.config``). What a checkpoint is and
how it is drawn or trained is the kind table's (``difflab.kinds``): a command asks it and adds no
checks of its own. Errors a user can cause are one line on stderr (``difflab: error: ...``) and
exit code 2; nothing half-written is left.

One module per command or family of commands, each with ``add_commands(subparsers)``, which
defines their flags, and a ``cmd_<name>(args)`` per command, which runs it:

  visualize.py   visualize
  train.py       train
  gan.py         train-gan, and what interpolate does with a GAN checkpoint
  autoencoder.py train-autoencoder
  distill.py     distill
  sample.py      sample
  edit.py        inpaint, img2img, interpolate
  insides.py     inspect
  evaluate.py    evaluate, train-evaluator
  export.py      export (ONNX)
  demo.py        demo
  serve.py       serve (the web demo)
  flags.py       what they share: the parser classes, flag types, flag groups, checks

A new command is a new module like these: add it to ``COMMAND_MODULES`` (its place there is its
place in ``difflab --help``) and its ``cmd_<name>`` to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from difflab import __version__, distributed
from difflab.cli import (
    autoencoder,
    demo,
    distill,
    edit,
    evaluate,
    export,
    gan,
    insides,
    sample,
    serve,
    train,
    visualize,
)
from difflab.cli.flags import ArgumentParser, given_on_command_line

EPILOG = """examples:
  difflab demo                                      # train on built-in faces, write every picture
  difflab serve                                     # then watch it draw, live, in a web page
  difflab visualize --data mnist --data-dir DIR     # watch MNIST digits dissolve into noise
  difflab train --data mnist --data-dir DIR --max-minutes 10 --out runs/mnist
  difflab sample --checkpoint runs/mnist/model_final.safetensors --show-intermediate
  difflab train --data mnist --data-dir DIR --conditional --epochs 2 --out runs/mnist-cond
  difflab sample --checkpoint runs/mnist-cond/model_final.safetensors --class-label 7 --guidance 3
  difflab train-autoencoder --data mnist --data-dir DIR --max-minutes 2 --out runs/ae
  difflab train --data mnist --data-dir DIR --latent runs/ae/model_final.safetensors  # latent
  difflab train-evaluator --data mnist --data-dir DIR     # once, then:
  difflab evaluate --checkpoint runs/mnist/model_final.safetensors --num-samples 5000
  difflab export --onnx model.onnx --checkpoint runs/mnist/model_final.safetensors  # onnxruntime
"""

COMMAND_MODULES = (
    visualize,
    train,
    gan,
    autoencoder,
    distill,
    sample,
    edit,
    insides,
    evaluate,
    export,
    demo,
    serve,
)  # in the order of --help

COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "visualize": visualize.cmd_visualize, "train": train.cmd_train,
    "train-gan": gan.cmd_train_gan,
    "distill": distill.cmd_distill, "sample": sample.cmd_sample,
    "train-autoencoder": autoencoder.cmd_train_autoencoder,
    "demo": demo.cmd_demo, "evaluate": evaluate.cmd_evaluate,
    "train-evaluator": evaluate.cmd_train_evaluator, "inpaint": edit.cmd_inpaint,
    "img2img": edit.cmd_img2img, "interpolate": edit.cmd_interpolate,
    "inspect": insides.cmd_inspect, "serve": serve.cmd_serve, "export": export.cmd_export,
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="difflab",
        description="Denoising diffusion models you can read end to end and train for real.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"difflab {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``difflab`` console script."""
    args = build_parser().parse_args(argv)
    args.given = given_on_command_line(build_parser(), argv)  # what flags_given reads
    # Under torchrun, an error that every process raised together is printed by rank 0 alone;
    # another rank's own error names the rank.
    rank = distributed.env_rank()
    who = f"difflab {args.command}" + (f" (rank {rank})" if rank else "")
    try:
        COMMANDS[args.command](args)
    except (ValueError, OSError) as err:
        if distributed.reported_here(err):
            print(f"{who}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C; training's says where it saved a checkpoint
        if rank == 0:  # one line, not one per torchrun process
            print(f"{who}: {stop or 'interrupted'}", file=sys.stderr)
        return 130
    except RuntimeError as err:  # TrainingError and friends: the message says what to do
        if distributed.reported_here(err):
            print(f"{who}: error: {err}", file=sys.stderr)
        return 1
    return 0
