"""docs/guide.md runs as written: every fenced bash command, in order, with small budgets.

The guide's commands are extracted from its ```bash blocks (a trailing backslash continues a
line) and run from an empty directory with ``DATA`` set to real MNIST, so the runs the later
steps read (runs/guide/mnist, ...) are the ones the earlier steps wrote. Only the budgets are
rewritten (``BUDGETS``: minutes become a few steps, N a few dozen images, 1000 DDPM steps 10,
one evaluator epoch); three lines are left out (``SKIPPED``): the set-up, which the test
environment already is, and the web demo's install and server, which tests/test_web*.py cover.
Each command must exit 0 and write the files it names with --out.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guide.md"
MNIST = ROOT.parent / "shared" / "data" / "mnist"

BUDGETS = [
    (r"--max-minutes \S+", "--max-steps 3"),
    (r"--num-samples \d+", "--num-samples 32"),
    (r"--sampler ddpm --steps 1000", "--sampler ddpm --steps 10"),
    (r"--round-steps \d+", "--round-steps 1 --dmd-steps 3 --dmd-warmup 1"),
    (r"^(difflab train-evaluator .*)$", r"\1 --epochs 1"),
]
SKIPPED = ("make setup", "export DATA=", "pip install", "difflab serve")


def guide_commands(text: str) -> list[str]:
    """The lines of the guide's ```bash blocks, continuations joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                commands.append(re.sub(r"\s+", " ", line))
    return commands


def small(command: str) -> str:
    for pattern, replacement in BUDGETS:
        command = re.sub(pattern, replacement, command)
    return command


def test_the_guide_has_the_commands_the_steps_need():
    commands = guide_commands(GUIDE.read_text())
    run = [c for c in commands if not c.startswith(SKIPPED)]
    assert len(run) >= 20 and all(c.startswith("difflab ") for c in run), run
    for name in ["visualize", "train", "inspect", "sample", "evaluate", "distill", "inpaint",
                 "img2img", "interpolate", "train-autoencoder", "train-gan"]:  # fmt: skip
        assert any(c.startswith(f"difflab {name} ") for c in run), name
    assert small("difflab train --max-minutes 10 --out x") == "difflab train --max-steps 3 --out x"


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.is_dir(), reason="real MNIST not present")
def test_the_guide_runs_as_written(tmp_path):
    env = {**os.environ, "DATA": str(MNIST), "DIFFLAB_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "2"}  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    for command in guide_commands(GUIDE.read_text()):
        if command.startswith(SKIPPED):
            continue
        command = small(command)
        argv = shlex.split(os.path.expandvars(command.replace("$DATA", str(MNIST))))
        result = subprocess.run([sys.executable, "-m", "difflab", *argv[1:]], cwd=work, env=env,
                                capture_output=True, text=True, timeout=600)  # fmt: skip
        assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
        if "--out" in argv:
            out = work / argv[argv.index("--out") + 1]
            assert out.exists(), f"{command} did not write {out}"
