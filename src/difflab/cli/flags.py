"""What the command modules share: the parser and help classes, the flag types, the flag groups
that several commands take, and small checks of flag values.

A flag that one command alone takes belongs in that command's module; a group of flags that a
second command starts to take moves here, as ``add_<group>_flags(parser)``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from difflab.config import PRECISIONS, DiffusionConfig, RunConfig
from difflab.data import DATASETS, VENDOR_CHOICES, ImageDataset
from difflab.flow import FLOW_SOLVERS
from difflab.samplers import SAMPLERS, SPACINGS, VARIANCES
from difflab.sampling.plan import SamplingRequest
from difflab.schedules import SCHEDULES

T = TypeVar("T")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (and a pointer to --help), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends a flag's default, unless it has none or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action) or text


def add_command(
    subparsers: argparse._SubParsersAction, name: str, help_text: str
) -> argparse.ArgumentParser:
    """The parser of command ``name``; ``help_text`` is its line in ``difflab --help`` and the
    description in ``difflab NAME --help``."""
    return subparsers.add_parser(
        name, help=help_text, description=help_text,
        formatter_class=HelpFormatter,
    )  # fmt: skip


# Flag types -------------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value


def int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip() != "")
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from err


def float_tuple(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0,1,3, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one number, got {text!r}")
    return values


# argparse names the type in "invalid <name> value" errors
positive_int.__name__ = "positive integer"
non_negative_int.__name__ = "integer >= 0"
positive_float.__name__ = "positive number"
non_negative_float.__name__ = "number >= 0"
probability.__name__ = "probability"
int_tuple.__name__ = "list of integers"


# Flag groups ------------------------------------------------------------------------------------


def add_data_flags(
    p: argparse.ArgumentParser, default: str = "emoji", *, vendors: bool = True
) -> None:
    """--data, --data-dir, --image-size and, if ``vendors``, --vendors (for a command that passes
    it on to ``load_dataset``; the others read both vendors of emoji-datasource)."""
    p.add_argument(
        "--data", default=default, choices=DATASETS,
        help="dataset (default: %(default)s); emoji is the built-in 8x8 toy set, emoji-datasource "
        "the 64x64 colour emoji of Noto Emoji and Twemoji, composited onto white",
    )  # fmt: skip
    p.add_argument(
        "--data-dir",
        help="folder with the dataset's files (mnist / fashion-mnist: IDX .gz files; cifar10: "
        "python batches; folder: images, one subfolder per class; emoji-datasource: google/ and "
        "twitter/, the unpacked npm packages, or their .tgz files from `npm pack "
        "emoji-datasource-google@16.0.0 emoji-datasource-twitter@16.0.0`). Default: the user "
        "cache, downloading when online (emoji-datasource is never downloaded)",
    )
    p.add_argument(
        "--image-size",
        type=positive_int,
        help="resize images to this size (folder, mnist, cifar10; emoji-datasource: 16, 32 or 64)",
    )
    if vendors:
        p.add_argument(
            "--vendors", choices=VENDOR_CHOICES,
            help="emoji-datasource: whose images, google (Noto Emoji), twitter (Twemoji, CC BY "
            "4.0: name it where its images or models are shown) or both (default: both)",
        )  # fmt: skip


def add_diffusion_flags(p: argparse.ArgumentParser) -> None:
    d = DiffusionConfig()
    p.add_argument("--timesteps", type=positive_int, default=d.timesteps, help="T")
    p.add_argument("--schedule", default=d.schedule, choices=SCHEDULES, help="beta schedule")


def add_sampler_flags(p: argparse.ArgumentParser, default: str) -> None:
    """How to sample a trained model: shared by sample and the editing commands."""
    p.add_argument(
        "--sampler", default=default, choices=(*SAMPLERS, *FLOW_SOLVERS),
        help="sampling algorithm: ddpm (ancestral), ddim, the second-order dpmpp-2m and "
        "dpmpp-2m-sde, or the higher-order ODE solvers for 4-10 steps: ipndm, dpmpp-3m, unipc "
        "(docs/samplers.md); a flow matching model also takes euler and heun on its own ODE, "
        "and draws with unipc in 10 steps by default (MNIST FID 1.83 at 8 evaluations against "
        "Euler's 4.17: docs/flow.md)",
    )  # fmt: skip
    p.add_argument(
        "--steps", type=positive_int,
        help="sampling steps = network evaluations (default: all T for ddpm, 50 for ddim, 20 for "
        "dpmpp-2m and dpmpp-2m-sde, 10 for ipndm, dpmpp-3m and unipc)",
    )  # fmt: skip
    p.add_argument(
        "--spacing", default="trailing", choices=SPACINGS,
        help="which timesteps a respaced sampler visits (docs/samplers.md)",
    )  # fmt: skip
    p.add_argument(
        "--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic, 1 DDPM-like"
    )
    p.add_argument(
        "--variance", default="beta", choices=VARIANCES,
        help="DDPM sigma^2 (default: learned for a model trained with --learn-variance, else "
        "beta; the editing commands take beta or beta_tilde)",
    )  # fmt: skip


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """Which weights, which class, how much guidance: shared by sample and the editing commands."""
    p.add_argument("--checkpoint", required=True, help="a .safetensors file written by difflab")
    p.add_argument("--no-clip", action="store_true", help="do not clip the predicted x0 to [-1, 1]")
    p.add_argument(
        "--class-label", metavar="LABEL",
        help="class to generate (index or name) with a class-conditional model",
    )  # fmt: skip
    p.add_argument(
        "--guidance", type=float, metavar="W",
        help="classifier-free guidance scale: 0 unconditional, 1 conditional (default), >1 "
        "stronger; try 2-4",
    )  # fmt: skip
    p.add_argument("--raw-weights", action="store_true", help="use raw instead of EMA weights")
    p.add_argument("--seed", type=int, default=0, help="which noise")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")


def add_run_flags(p: argparse.ArgumentParser, *, default_out: str, resume_help: str) -> None:
    """The run directory of a training command: where it goes, how to continue one, the progress
    bar and the precision (train, train-gan, train-autoencoder, distill)."""
    p.add_argument("--out", help=f"run directory (default: {default_out})")
    p.add_argument("--resume", metavar="RUN_DIR", help=resume_help)
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--precision", choices=PRECISIONS, default="auto",
        help="auto (default): bf16 autocast on a CPU with Intel AMX bf16 matrix units, fp32 "
        "elsewhere, where bf16 was measured slower for the default U-Net: CPUs without AMX, "
        "AVX512-BF16 without AMX included (0.81x of fp32 on an AMD EPYC), GPUs (0.81x on an "
        "H200: the small network waits on the host), mps. A fixed rule, "
        "not a timing, so that a machine and seed always give the same weights; the run records "
        "what it chose and why (config.json: precision, precision_reason) and --resume keeps "
        "it. fp32, bf16 (autocast; weights, EMA and optimiser stay fp32) or fp16 (autocast with "
        "loss scaling, CUDA only) force one",
    )  # fmt: skip


def add_input_flags(p: argparse.ArgumentParser) -> None:
    """The images to edit: files, or test-set images of the data the model was trained on."""
    p.add_argument("--image", action="append", default=[], metavar="PATH", help="input image file")
    p.add_argument(
        "--from-data", action="append", default=[], type=non_negative_int, metavar="INDEX",
        help="input: image INDEX of the test split of the model's training data",
    )  # fmt: skip


# Checks of flag values --------------------------------------------------------------------------


def sampling_request(args: argparse.Namespace, **fields: Any) -> SamplingRequest:
    """The ``SamplingRequest`` of the sampling flags this command has and the command line gave
    (a flag left at its default is None: the model's own default, which is that flag's default
    for a diffusion model), with ``fields`` (num_images, seed, class_rows, ...)."""
    request: dict[str, Any] = {}
    for name in ("sampler", "steps", "spacing", "eta", "variance", "guidance", "class_label"):
        if hasattr(args, name):
            request[name] = getattr(args, name) if name in args.given else None
    request["guidance_sweep"] = getattr(args, "guidance_sweep", None) or None
    if getattr(args, "prompt", None) is not None:  # --prompt, given once or more
        request["prompts"] = tuple(args.prompt)
    request["clip"] = False if getattr(args, "no_clip", False) else None
    shown = [f for f in ("show_intermediate", "gif") if getattr(args, f, None)]
    request["trajectory"] = "--" + shown[0].replace("_", "-") if shown else None
    return SamplingRequest(**{**request, **fields})


def config_from_flags(cls: type[T], args: argparse.Namespace, **values: Any) -> T:
    """The config dataclass ``cls`` from the flags named like its fields (a flag left unset, None,
    takes the field's default), with ``values`` for the fields a command sets itself."""
    flags = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if getattr(args, f.name, None) is not None
    }
    return cls(**{**flags, **values})


def check_suffix(path: str | None, suffix: str, flag: str) -> None:
    if path is not None and Path(path).suffix.lower() != suffix:
        raise ValueError(f"{flag} {path} must end in {suffix}")


def check_png(path: str) -> Path:
    """``--out``, which must name a .png file."""
    check_suffix(path, ".png", "--out")
    return Path(path)


def resume_from_flags(
    args: argparse.Namespace, command: str, allowed: Sequence[str]
) -> tuple[RunConfig, ImageDataset, dict[str, Any]]:
    """``COMMAND --resume RUN_DIR``: the flags checked (only ``allowed`` may change), then the
    run's configuration with them, its data and its objective's resources (``kinds.resume_run``)."""
    from difflab.kinds import resume_run

    check_resume_flags(args, allowed)
    # A flag not on the command line keeps the run's value (None), even one with a default
    # (--precision auto must not choose again: the run goes on in the precision it recorded).
    changes = {name: getattr(args, name) if name in args.given else None for name in allowed}
    return resume_run(args.resume, command, **changes)


def given_on_command_line(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The dests of the flags ``argv`` names, whatever their values: a flag given with its
    default value counts. ``argv`` parsed by ``parser`` with every default taken away, so only
    what the command line sets is in the result; this changes ``parser``, so pass a fresh one."""
    _drop_defaults(parser)
    return set(vars(parser.parse_args(argv)))


def _drop_defaults(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                _drop_defaults(command)
        else:
            action.default = argparse.SUPPRESS


def flags_given(args: argparse.Namespace, names: Sequence[str]) -> list[str]:
    """Which of ``names`` (dests) the command line gave, even at their default values (``main``
    records them in ``args.given``), as --flag-names."""
    return ["--" + n.replace("_", "-") for n in names if n in args.given]


def check_resume_flags(args: argparse.Namespace, allowed: Sequence[str]) -> None:
    """With --resume a run continues with its own settings: a flag outside ``allowed`` (dests:
    how long to go on, and where) is an error, not silently ignored, even at its default."""
    others = [n for n in vars(args) if n not in (*allowed, "command", "resume", "no_progress")]
    fixed = flags_given(args, others)
    if fixed:
        raise ValueError(
            f"{fixed[0]} cannot change when a run is resumed (--resume continues with the run's "
            f"own settings; flags it takes: {', '.join('--' + n.replace('_', '-') for n in allowed)})"
        )
