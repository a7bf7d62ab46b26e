"""Dump the whole user-facing surface of the ``difflab`` command line as plain text.

Runs ``difflab --help`` and every subcommand's ``--help``, makes tiny fixtures with the CLI itself
(a diffusion run, a class-conditional one, a GAN, an autoencoder, a latent diffusion run, a
consistency distillation and a progressive one: two training steps each, on the built-in 8x8
emoji set), then some 160 bad inputs (bad flag values, missing and broken files, and the
refusals that depend on what kind of checkpoint a command is given) and a few cheap successful
commands. For each it prints the command, its exit code and its stdout and stderr, with the
temporary directory, the interpreter's and the package's paths, timings and losses masked, so
the output is the same from run to run (and, with the same packages, from machine to machine).

Its purpose: run it against the code before a refactor and after it, and ``diff`` the two outputs;
an empty diff shows that the refactor changed no --help text and no error message.

    PYTHONPATH=<old checkout>/src python benchmarks/cli_surface.py > before.txt
    python benchmarks/cli_surface.py > after.txt
    diff before.txt after.txt

It dumps whichever ``difflab`` is importable (PYTHONPATH wins over an installed one) and runs
every command as ``python -m difflab ...`` with COLUMNS=100 (argparse wraps its help by it),
CUDA hidden (so ``--device auto`` is the CPU everywhere), DIFFLAB_CACHE and HOME inside the
temporary directory (no evaluator or data from the user cache) and cwd the temporary directory.
Commands run --jobs at a time (the output does not depend on it); a bad-input case that could
change a fixture's run if the code under test wrongly accepted it (--resume, --out of a fixture)
runs alone, after all the others. It takes about 3 minutes on 2 CPU cores (--jobs 2); the time
it took goes to stderr, never to stdout (--slowest N lists the slowest commands there too, and
--keep keeps the temporary directory to look into).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import difflab
from difflab.cli import build_parser

# The fixtures' run directories, relative to the temporary directory (the commands' cwd).
DIFF, COND, GAN, AE, LAT, CM, PD = "diff", "cond", "gan", "ae", "latent", "cm", "pd"


def ckpt(run: str) -> str:
    """The final checkpoint of a fixture run."""
    return f"{run}/model_final.safetensors"


PD_STUDENT = f"{PD}/model_steps_2.safetensors"  # the progressive run's 2-step student

# What every fixture shares: the built-in 8x8 data set, a handful of images, two steps, no
# previews until the end, a fixed seed, the CPU.
QUICK = ("--max-steps", "2", "--sample-every", "0", "--seed", "0", "--no-progress")
CPU = ("--device", "cpu")
SMALL_DATA = ("--num-images", "16", "--batch-size", "8")
SMALL_UNET = ("--base-channels", "8", "--channel-mults", "1,2", "--num-res-blocks", "1")
CHEAP_PREVIEW = ("--preview-sampler", "ddim", "--preview-steps", "2", "--checkpoint-every", "0")

# name, the command that makes it, and the fixtures it needs first
FIXTURES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    (DIFF, ("train", *QUICK, *CPU, *SMALL_DATA, *SMALL_UNET, *CHEAP_PREVIEW,
           "--out", DIFF), ()),
    (COND, ("train", *QUICK, *CPU, *SMALL_DATA, *SMALL_UNET, *CHEAP_PREVIEW,
           "--conditional", "--out", COND), ()),
    (GAN, ("train-gan", *QUICK, *CPU, *SMALL_DATA, "--width", "8", "--num-preview", "4",
           "--checkpoint-every", "0", "--out", GAN), ()),
    (AE, ("train-autoencoder", *QUICK, *CPU, *SMALL_DATA, *SMALL_UNET, "--data", "emoji",
          "--checkpoint-every", "0", "--out", AE), ()),
    (LAT, ("train", *QUICK, *CPU, *SMALL_DATA, *SMALL_UNET, *CHEAP_PREVIEW,
           "--latent", ckpt(AE), "--out", LAT), (AE,)),
    (CM, ("distill", *QUICK, *CPU, "--teacher", ckpt(DIFF), "--method", "consistency",
          "--batch-size", "8", "--intervals", "4", "--num-preview", "4", "--out", CM), (DIFF,)),
    (PD, ("distill", *QUICK, *CPU, "--teacher", ckpt(DIFF), "--method", "progressive", "--steps",
          "2", "--start-steps", "4", "--round-steps", "2", "--batch-size", "8", "--num-preview",
          "4", "--out", PD), (DIFF,)),
)  # fmt: skip

# Appended to a bad-input case that fails only once the command runs (not in argparse): if the
# code under test wrongly accepted it, the command still ends in seconds, and writes nowhere
# that matters.
NOWHERE = ("--out", "should-not-exist")
NOWHERE_PNG = ("--out", "should-not-exist.png")
FAST_TRAIN = (*QUICK, *SMALL_DATA)  # train, train-gan
FAST_AE = (*QUICK, *SMALL_DATA, "--data", "emoji")
FAST_DISTILL = (*QUICK, "--batch-size", "8", "--num-preview", "4")
FAST_SAMPLE = ("--num-images", "2", *NOWHERE_PNG)
FAST_EDIT = ("--from-data", "0", "--num-images", "1", "--steps", "2")  # inpaint, img2img
FAST_WALK = ("--frames", "2", "--steps", "2")  # interpolate
FAST_EVAL = ("--num-samples", "4", "--no-progress", "--out", "should-not-exist.json")


@dataclass(frozen=True)
class Case:
    """One command and how to run it."""

    args: tuple[str, ...]
    serial: bool = False  # may write into a fixture's run if wrongly accepted: run it alone
    timeout: float = 180.0


@dataclass
class Result:
    """What a command did, normalised."""

    code: int | str
    stdout: str
    stderr: str
    seconds: float  # wall time: to stderr with --slowest, never to stdout


def bad(*args: str, serial: bool = False, timeout: float = 180.0) -> Case:
    return Case(tuple(args), serial=serial, timeout=timeout)


def bad_input_cases() -> list[Case]:
    """The bad inputs, in the order they are printed."""
    d, c, g, a, lat, cm = (ckpt(run) for run in (DIFF, COND, GAN, AE, LAT, CM))
    pd = PD_STUDENT
    kinds = {"gan": g, "consistency": cm, "autoencoder": a, "progressive": pd, "latent": lat}
    return [
        # no command, an unknown one
        bad(),
        bad("trian"),
        # train: flag values
        bad("train", "--epochs", "0"),
        bad("train", "--epochs", "-3"),
        bad("train", "--lr", "fast"),
        bad("train", "--lr", "0"),
        bad("train", "--batch-size", "0"),
        bad("train", "--timesteps", "-1"),
        bad("train", "--schedule", "quadratic"),
        bad("train", "--prediction", "noise"),
        bad("train", "--preset", "fancy"),
        bad("train", "--data", "imagenet"),
        bad("train", "--channel-mults", "1,x"),
        bad("train", "--min-snr-gamma", "-5"),
        bad("train", "--max-minutes", "0"),
        bad("train", "--ema-decay", "1.5", *FAST_TRAIN, *NOWHERE),
        bad("train", "--precision", "fp16", *CPU, *FAST_TRAIN, *NOWHERE),
        bad("train", "--device", "tpu", *FAST_TRAIN, *NOWHERE),
        bad("train", "--device", "cuda", *FAST_TRAIN, *NOWHERE),
        bad("train", "--data", "folder", "--data-dir", "no-such-folder", *FAST_TRAIN, *NOWHERE),
        bad("train", *FAST_TRAIN, "--out", DIFF, serial=True),  # a run is there already
        # train --latent
        bad("train", "--latent", "no-such-ae.safetensors", *FAST_TRAIN, *NOWHERE),
        bad("train", "--latent", d, *FAST_TRAIN, *NOWHERE),
        bad("train", "--latent", a, "--backend", "numpy", *FAST_TRAIN, *NOWHERE),
        bad("train", "--latent", a, "--image-size", "16", *FAST_TRAIN, *NOWHERE),
        # train-gan
        bad("train-gan", "--loss", "wgan"),
        bad("train-gan", "--z-dim", "0"),
        bad("train-gan", "--sample-every", "-1"),
        bad("train-gan", "--beta1", "1.5", *FAST_TRAIN, *NOWHERE),
        bad("train-gan", "--ema-decay", "-0.5", *FAST_TRAIN, *NOWHERE),
        # train-autoencoder
        bad("train-autoencoder", "--kl-weight", "-1"),
        bad("train-autoencoder", "--latent-channels", "0"),
        bad("train-autoencoder", "--channel-mults", "a,b"),
        bad("train-autoencoder", "--precision", "fp16", *CPU, *FAST_AE, *NOWHERE),
        bad("train-autoencoder", "--padded-size", "3", *FAST_AE, *NOWHERE),
        # distill: its flags, and teachers that are not diffusion models
        bad("distill", "--method", "rectified"),
        bad("distill", "--preview-steps", "3"),
        bad("distill", *FAST_DISTILL, *NOWHERE),  # no --teacher
        bad("distill", "--teacher", "no-such.safetensors", *FAST_DISTILL, *NOWHERE),
        bad("distill", "--teacher", d, "--method", "consistency", "--steps", "2", *FAST_DISTILL,
            *NOWHERE),
        bad("distill", "--teacher", d, "--method", "progressive", "--intervals", "4",
            *FAST_DISTILL, *NOWHERE),
        bad("distill", "--teacher", d, "--method", "progressive", "--steps", "3",
            "--start-steps", "4", *FAST_DISTILL, *NOWHERE),
        bad("distill", "--teacher", d, "--ema-decay", "1", *FAST_DISTILL, *NOWHERE),
        bad("distill", "--teacher", d, "--guidance", "2", *FAST_DISTILL, *NOWHERE),
        bad("distill", "--teacher", g, *FAST_DISTILL, *NOWHERE),
        bad("distill", "--teacher", cm, *FAST_DISTILL, *NOWHERE),
        bad("distill", "--teacher", lat, *FAST_DISTILL, *NOWHERE),
        bad("distill", "--teacher", a, *FAST_DISTILL, *NOWHERE),
        # --resume of the wrong kind of run, or with a flag that cannot change
        bad("train", "--resume", GAN, "--no-progress", serial=True),
        bad("train", "--resume", AE, "--no-progress", serial=True),
        bad("train", "--resume", CM, "--no-progress", serial=True),
        bad("train", "--resume", PD, "--no-progress", serial=True),
        bad("train", "--resume", PD, "--epochs", "2", "--no-progress", serial=True),
        bad("train", "--resume", DIFF, "--lr", "0.1", serial=True),
        bad("train", "--resume", "no-such-run", serial=True),
        bad("train-gan", "--resume", DIFF, "--no-progress", serial=True),
        bad("train-gan", "--resume", GAN, "--loss", "hinge", serial=True),
        bad("train-autoencoder", "--resume", DIFF, "--no-progress", serial=True),
        bad("distill", "--resume", DIFF, "--no-progress", serial=True),
        bad("distill", "--resume", CM, "--intervals", "8", serial=True),
        # sample: flags and files
        bad("sample", "--num-images", "4"),  # no --checkpoint
        bad("sample", "--checkpoint", d, "--num-images", "0"),
        bad("sample", "--checkpoint", d, "--sampler", "euler"),
        bad("sample", "--checkpoint", d, "--steps", "0"),
        bad("sample", "--checkpoint", d, "--eta", "some"),
        bad("sample", "--checkpoint", d, "--backend", "jax"),
        bad("sample", "--checkpoint", d, "--precision", "fp16"),  # a flag it does not have
        bad("sample", "--checkpoint", d, "--steps", "5000", *FAST_SAMPLE),
        bad("sample", "--checkpoint", d, "--out", "samples.jpg"),
        bad("sample", "--checkpoint", d, "--gif", "denoising.png", *FAST_SAMPLE),
        bad("sample", "--checkpoint", d, "--device", "cuda", *FAST_SAMPLE),
        bad("sample", "--checkpoint", "no-such.safetensors"),
        bad("sample", "--checkpoint", f"{DIFF}/config.json"),
        bad("sample", "--checkpoint", "foreign.safetensors"),
        bad("sample", "--checkpoint", "truncated.safetensors"),
        bad("sample", "--checkpoint", "empty.safetensors"),
        bad("sample", "--checkpoint", "text.safetensors"),
        # sample: what each kind of checkpoint refuses
        bad("sample", "--checkpoint", g, "--steps", "2", *FAST_SAMPLE),
        bad("sample", "--checkpoint", g, "--sampler", "ddim", *FAST_SAMPLE),
        bad("sample", "--checkpoint", g, "--guidance", "2", *FAST_SAMPLE),
        bad("sample", "--checkpoint", g, "--gif", "g.gif", *FAST_SAMPLE),
        bad("sample", "--checkpoint", g, "--class-label", "1", *FAST_SAMPLE),
        bad("sample", "--checkpoint", g, "--backend", "numpy", *FAST_SAMPLE),
        bad("sample", "--checkpoint", cm, "--steps", "3", *FAST_SAMPLE),
        bad("sample", "--checkpoint", cm, "--guidance", "2", *FAST_SAMPLE),
        bad("sample", "--checkpoint", cm, "--guidance-sweep", "1,2", *FAST_SAMPLE),
        bad("sample", "--checkpoint", pd, "--guidance", "2", *FAST_SAMPLE),
        bad("sample", "--checkpoint", pd, "--steps", "3", *FAST_SAMPLE),
        bad("sample", "--checkpoint", d, "--guidance", "2", *FAST_SAMPLE),
        bad("sample", "--checkpoint", d, "--class-label", "1", *FAST_SAMPLE),
        bad("sample", "--checkpoint", d, "--guidance-sweep", "0,1", *FAST_SAMPLE),
        bad("sample", "--checkpoint", c, "--class-label", "unicorn", *FAST_SAMPLE),
        bad("sample", "--checkpoint", c, "--class-label", "99", *FAST_SAMPLE),
        bad("sample", "--checkpoint", c, "--guidance", "-1", *FAST_SAMPLE),
        bad("sample", "--checkpoint", c, "--guidance-sweep", "1,x"),
        bad("sample", "--checkpoint", a, *FAST_SAMPLE),
        # evaluate: all fail before generating anything
        bad("evaluate", "--num-samples", "4"),  # neither --checkpoint nor --images
        bad("evaluate", "--checkpoint", d, "--images", "images"),
        bad("evaluate", "--checkpoint", d, "--num-samples", "0"),
        bad("evaluate", "--checkpoint", d, *FAST_EVAL),  # no evaluator in the cache
        bad("evaluate", "--checkpoint", d, "--evaluator", "no-such.safetensors", *FAST_EVAL),
        bad("evaluate", "--checkpoint", d, "--evaluator", "e.safetensors",
            "--inception-weights", "w.pth", *FAST_EVAL),
        bad("evaluate", "--checkpoint", d, "--num-samples", "1", *FAST_EVAL[2:]),
        bad("evaluate", "--checkpoint", d, "--guidance", "2", *FAST_EVAL),
        bad("evaluate", "--checkpoint", g, "--steps", "2", *FAST_EVAL),
        bad("evaluate", "--checkpoint", cm, "--steps", "3", *FAST_EVAL),
        bad("evaluate", "--checkpoint", a, *FAST_EVAL),
        bad("evaluate", "--images", "images", *FAST_EVAL),  # no --data
        # the editing commands and inspect, given each kind of checkpoint that is not theirs
        *[
            bad(command, "--checkpoint", path, *FAST_EDIT, "--out", f"{command}-{kind}.png")
            for command in ("inpaint", "img2img")
            for kind, path in kinds.items()
        ],
        *[
            bad("interpolate", "--checkpoint", path, "--from-data", "0", "--from-data", "1",
                *FAST_WALK, "--out", f"interpolate-{kind}.png")
            for kind, path in kinds.items()
        ],
        bad("interpolate", "--checkpoint", g, "--seeds", "1,2", "--steps", "3", *NOWHERE_PNG),
        bad("interpolate", "--checkpoint", g, "--from-data", "0", "--from-data", "1",
            *NOWHERE_PNG),
        *[
            bad("inspect", "--checkpoint", path, "--from-data", "0", "--out", f"inspect-{kind}")
            for kind, path in kinds.items()
        ],
        # the editing commands' own flags and inputs
        bad("inpaint", "--checkpoint", d, "--mask-region", "middle"),
        bad("inpaint", "--checkpoint", d, "--resample", "0"),
        bad("inpaint", "--checkpoint", d, "--from-data", "-1"),
        bad("inpaint", "--checkpoint", d, *FAST_EDIT[2:], *NOWHERE_PNG),  # no input image
        bad("inpaint", "--checkpoint", d, "--image", "no-such.png", *FAST_EDIT[2:], *NOWHERE_PNG),
        bad("inpaint", "--checkpoint", d, "--image", "text.png", *FAST_EDIT[2:], *NOWHERE_PNG),
        bad("inpaint", "--checkpoint", d, "--mask", "black.png", *FAST_EDIT, *NOWHERE_PNG),
        bad("inpaint", "--checkpoint", d, *FAST_EDIT, "--out", "inpaint.gif"),
        bad("inpaint", "--checkpoint", d, "--steps", "5000", *FAST_EDIT[:4], *NOWHERE_PNG),
        bad("img2img", "--checkpoint", d, "--strength", "1.5", *FAST_EDIT, *NOWHERE_PNG),
        bad("img2img", "--checkpoint", d, "--strength", "half"),
        bad("interpolate", "--checkpoint", d, "--frames", "1", "--seeds", "1,2", "--steps", "2",
            *NOWHERE_PNG),
        bad("interpolate", "--checkpoint", d, "--seeds", "1,2,3", *FAST_WALK, *NOWHERE_PNG),
        bad("interpolate", "--checkpoint", d, "--seeds", "1,2", "--from-data", "0", *FAST_WALK,
            *NOWHERE_PNG),
        bad("interpolate", "--checkpoint", d, "--from-data", "0", *FAST_WALK, *NOWHERE_PNG),
        bad("interpolate", "--checkpoint", d, "--seeds", "1,2", "--gif", "walk.png", *FAST_WALK,
            *NOWHERE_PNG),
        bad("inspect", "--checkpoint", d, "--t", "5000", *NOWHERE),
        bad("inspect", "--checkpoint", d, "--query", "1,2,3", *NOWHERE),
        bad("inspect", "--checkpoint", d, "--query", "99,0", *NOWHERE),
        # visualize, demo, train-evaluator, serve (argument errors only: no server starts)
        bad("visualize", "--num-images", "0"),
        bad("visualize", "--timesteps", "0"),
        bad("visualize", "--schedule", "sigmoid"),
        bad("demo", "--minutes", "0"),
        bad("demo", "--data", "mnist"),
        bad("train-evaluator", "--epochs", "0"),
        bad("train-evaluator", "--lr", "-1"),
        bad("serve", "--port", "0", timeout=60),
        bad("serve", "--port", "http", timeout=60),
        bad("serve", "--max-images", "0", timeout=60),
        bad("serve", "--concurrency", "-1", timeout=60),
        bad("serve", "--checkpoint", "no-such.safetensors", timeout=60),
        bad("serve", timeout=60),  # no --checkpoint, and no demo model in runs/demo
    ]  # fmt: skip


def success_cases() -> list[Case]:
    """Cheap commands that work, one line of output each once the timings are masked."""
    sample = ("--num-images", "4")
    return [
        Case(("--version",)),
        Case(("sample", "--checkpoint", ckpt(DIFF), *sample, "--steps", "4", "--out", "d.png")),
        Case(("sample", "--checkpoint", ckpt(COND), *sample, "--steps", "4", "--out", "c.png")),
        Case(("sample", "--checkpoint", ckpt(COND), *sample, "--steps", "4", "--class-label", "1",
              "--guidance", "2", "--out", "c1.png")),
        Case(("sample", "--checkpoint", ckpt(GAN), *sample, "--out", "g.png")),
        Case(("sample", "--checkpoint", ckpt(CM), *sample, "--steps", "2", "--out", "cm.png")),
        Case(("sample", "--checkpoint", PD_STUDENT, *sample, "--out", "pd.png")),
        Case(("sample", "--checkpoint", ckpt(LAT), *sample, "--steps", "4", "--out", "l.png")),
        Case(("interpolate", "--checkpoint", ckpt(GAN), "--seeds", "1,2", "--frames", "3",
              "--out", "gi.png")),
    ]  # fmt: skip


def write_broken_files(tmp: Path) -> None:
    """The files that bad-input cases give in place of a checkpoint or an image."""
    final = (tmp / ckpt(DIFF)).read_bytes() if (tmp / ckpt(DIFF)).is_file() else b""
    (tmp / "truncated.safetensors").write_bytes(final[: len(final) // 2])
    (tmp / "empty.safetensors").write_bytes(b"")
    (tmp / "text.safetensors").write_text("not a checkpoint\n")
    (tmp / "text.png").write_text("not an image\n")
    # a valid safetensors file, but not difflab's: one tensor, no difflab metadata
    header = json.dumps({"weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})
    header += " " * (-len(header) % 8)
    (tmp / "foreign.safetensors").write_bytes(
        struct.pack("<Q", len(header)) + header.encode() + bytes(8)
    )
    from PIL import Image

    Image.new("L", (8, 8), 0).save(tmp / "black.png")  # a mask with nothing to regenerate
    (tmp / "images").mkdir(exist_ok=True)


# Running and normalising ------------------------------------------------------------------------

# A timing ("(1.2 s)", "(0.3 min)": every one the CLI prints has a decimal point; "about 3
# minutes" in a message is text), and the loss "0.4422 -> 0.1488" of a run that trains.
TIMING = re.compile(r"(?<![\w.])\d+\.\d+(?=\s?(?:s|ms|min)\b)")
LOSS = re.compile(r"-?\d+\.\d+ -> -?\d+\.\d+")
LINE_NUMBER = re.compile(r'(File "[^"]*", line )\d+')
ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")


def path_replacements(tmp: Path) -> list[tuple[str, str]]:
    """Machine-specific paths and what they print as, longest first."""
    package = Path(difflab.__file__).resolve().parent
    pairs = {
        str(tmp): "<tmp>",
        str(tmp.resolve()): "<tmp>",
        str(package.parent): "<src>",  # the checkout's src/ (tracebacks)
        sys.prefix: "<venv>",
        sys.base_prefix: "<python>",
        str(Path(sys.executable).parent): "<venv>/bin",
        str(Path.home()): "<home>",
    }
    return sorted(((k, v) for k, v in pairs.items() if len(k) > 1), key=lambda kv: -len(kv[0]))


def normalise(text: str, replacements: Sequence[tuple[str, str]]) -> str:
    for path, name in replacements:
        text = text.replace(path, name)
    text = TIMING.sub("<t>", text)
    text = LOSS.sub("<loss> -> <loss>", text)
    text = LINE_NUMBER.sub(r"\g<1><n>", text)
    return ADDRESS.sub("0x<addr>", text)


def child_env(tmp: Path) -> dict[str, str]:
    """The commands' environment: the same on every machine, whatever the caller's."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp / "home"),
        "COLUMNS": "100",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONUNBUFFERED": "1",
        "CUDA_VISIBLE_DEVICES": "",  # --device auto is the CPU on every machine
        "DIFFLAB_CACHE": str(tmp / "cache"),  # no evaluator, no data from the user's cache
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": str(tmp / "home" / "mpl"),
        "OMP_NUM_THREADS": "1",  # several commands at once share the cores
    }
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def run(case: Case, tmp: Path, replacements: Sequence[tuple[str, str]]) -> Result:
    command = [sys.executable, "-m", "difflab", *case.args]
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=tmp, env=child_env(tmp), capture_output=True, text=True,
            timeout=case.timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else err.stdout or ""
        errs = err.stderr.decode() if isinstance(err.stderr, bytes) else err.stderr or ""
        code: int | str = f"timed out after {case.timeout:g} s"
        seconds = time.perf_counter() - start
        return Result(code, normalise(out, replacements), normalise(errs, replacements), seconds)
    return Result(
        done.returncode,
        normalise(done.stdout, replacements),
        normalise(done.stderr, replacements),
        time.perf_counter() - start,
    )


def run_all(
    cases: Sequence[Case], tmp: Path, replacements: Sequence[tuple[str, str]], jobs: int
) -> list[Result]:
    """Every case's result, in the cases' order: the others ``jobs`` at a time, then the serial
    ones one by one."""
    results: dict[int, Result] = {}
    parallel = [i for i, case in enumerate(cases) if not case.serial]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        ran = pool.map(lambda i: run(cases[i], tmp, replacements), parallel)
        results.update(zip(parallel, ran, strict=True))
    for i, case in enumerate(cases):
        if case.serial:
            results[i] = run(case, tmp, replacements)
    return [results[i] for i in range(len(cases))]


def make_fixtures(
    tmp: Path, replacements: Sequence[tuple[str, str]], jobs: int
) -> list[tuple[str, Case, Result]]:
    """The fixture runs, in waves: each waits for the fixtures it needs."""
    done: dict[str, Result] = {}
    pending = list(FIXTURES)
    while pending:
        wave = [f for f in pending if all(need in done for need in f[2])]
        assert wave, f"fixtures with needs never made: {pending}"
        pending = [f for f in pending if f not in wave]
        ran = run_all([Case(f[1], timeout=600) for f in wave], tmp, replacements, jobs)
        done.update(zip([f[0] for f in wave], ran, strict=True))
    return [(name, Case(args), done[name]) for name, args, _ in FIXTURES]


# Printing ---------------------------------------------------------------------------------------


def header(args: Sequence[str]) -> str:
    return "$ " + shlex.join(["difflab", *args])


def show(case: Case, result: Result, write: Callable[[str], None]) -> None:
    write(header(case.args))
    write(f"[exit {result.code}]")
    for name, text in (("stdout", result.stdout), ("stderr", result.stderr)):
        if text:
            write(f"[{name}]")
            write(text.rstrip("\n"))
    write("")


def help_cases() -> list[Case]:
    parser = build_parser()
    commands: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            commands += sorted(action.choices)
    return [Case(("--help",)), *[Case((command, "--help")) for command in commands]]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--jobs", type=int, default=min(4, os.cpu_count() or 1),
        help="commands run at once (the output does not depend on it)",
    )  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument(
        "--slowest", type=int, default=0, metavar="N", help="list the N slowest commands (stderr)"
    )
    args = p.parse_args()
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="difflab-cli-surface-"))
    replacements = path_replacements(tmp)
    lines: list[str] = []
    write = lines.append
    ran: list[tuple[Case, Result]] = []
    try:
        (tmp / "home").mkdir()
        write("# difflab CLI surface (benchmarks/cli_surface.py)")
        write("")
        write("## --help")
        write("")
        cases = help_cases()
        for case, result in zip(cases, run_all(cases, tmp, replacements, args.jobs), strict=True):
            show(case, result, write)
            ran.append((case, result))

        write("## fixtures")
        write("")
        for name, case, result in make_fixtures(tmp, replacements, args.jobs):
            write(f"fixture {name}: {header(case.args)}")
            write(f"[exit {result.code}]")
            if result.code != 0:  # what went wrong, since the cases below need it
                write(result.stderr.rstrip("\n"))
            ran.append((case, result))
        write("")
        write_broken_files(tmp)

        # One batch, so that the serial cases (which may change a fixture if the code under test
        # wrongly accepts them) run after every other case.
        sections = [("bad input", bad_input_cases()), ("cheap commands that work", success_cases())]
        cases = [case for _, section in sections for case in section]
        results = iter(run_all(cases, tmp, replacements, args.jobs))
        for title, section in sections:
            write(f"## {title} ({len(section)} cases)")
            write("")
            for case in section:
                result = next(results)
                show(case, result, write)
                ran.append((case, result))
    finally:
        if args.keep:
            print(f"cli_surface: kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    sys.stdout.write("\n".join(lines).rstrip("\n") + "\n")
    seconds = time.perf_counter() - start
    print(f"cli_surface: {len(ran)} commands in {seconds:.0f} s", file=sys.stderr)
    for case, result in sorted(ran, key=lambda cr: -cr[1].seconds)[: args.slowest]:
        print(f"  {result.seconds:5.1f} s  {header(case.args)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
