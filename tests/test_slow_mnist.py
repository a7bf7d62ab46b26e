"""Slow tests on real MNIST (skipped when ../shared/data/mnist is absent): `make test-slow`."""

import json
from pathlib import Path

import pytest

from difflab.cli import main

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not MNIST.is_dir(), reason="real MNIST not present"),
]


def test_short_mnist_training_lowers_the_loss_and_samples(tmp_path):
    out = tmp_path / "mnist"
    argv = ["train", "--data", "mnist", "--data-dir", str(MNIST), "--num-images", "4096",
            "--epochs", "2", "--batch-size", "64", "--lr", "1e-3", "--no-progress",
            "--preview-steps", "20", "--num-res-blocks", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) >= 10
    # An untrained net predicts ~0: its loss is the target's weighted variance. Within 128 steps
    # it must fall to a small fraction of that (the default recipe: v prediction, min-SNR-5).
    assert max(losses[-3:]) < 0.25 * losses[0] and max(losses[-3:]) < 0.1, losses
    sample = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(out / "model_final.safetensors"), "--sampler",
                 "dpmpp-2m", "--steps", "10", "--num-images", "16", "--out", str(sample)]) == 0  # fmt: skip
    assert sample.stat().st_size > 1000
