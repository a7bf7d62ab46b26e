"""Shared test fixtures."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from difflab.checkpoint import save_checkpoint
from difflab.config import DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from difflab.data import EMOJI_CLASSES
from difflab.models.unet import UNet


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one thread is faster, and spares a shared 2-core machine OpenMP spin-waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_checkpoint():
    """``make(path, num_classes)``: an 8 px emoji U-Net with its initial weights, saved as a
    checkpoint: enough to test generation -> metrics plumbing."""

    def make(path, num_classes):
        model_cfg = ModelConfig(
            image_size=8, in_channels=3, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
            num_classes=num_classes,
        )  # fmt: skip
        config = RunConfig(
            model=model_cfg, diffusion=DiffusionConfig(timesteps=30),
            train=TrainConfig(data="emoji"), class_names=EMOJI_CLASSES if num_classes else (),
        )  # fmt: skip
        torch.manual_seed(0)
        return save_checkpoint(path, config, UNet(model_cfg).state_dict())

    return make


@pytest.fixture(scope="module")
def cache(tmp_path_factory, one_torch_thread):
    """A user cache holding an emoji evaluator made by `difflab train-evaluator` (one for each
    test module: evaluating adds reference statistics to it)."""
    from difflab.cli import main

    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFLAB_CACHE", str(root))
        assert main(["train-evaluator", "--data", "emoji", "--epochs", "6", "--no-progress"]) == 0
        yield root


@pytest.fixture(scope="session")
def teacher(tmp_path_factory):
    """A tiny class-conditional emoji model trained by `difflab train`, read (never written) by
    the distillation tests of both methods."""
    from difflab.cli import main
    from test_train_robust import TINY

    run = tmp_path_factory.mktemp("teacher") / "run"
    assert main(["train", *TINY, "--conditional", "--out", str(run)]) == 0
    return run / "model_final.safetensors"


def load_benchmark_script(name: str):
    """benchmarks/NAME.py as a module, imported as running it does (its sibling modules, such as
    ``machine``, importable), registered in ``sys.modules`` (dataclasses look their module up)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    if str(script.parent) not in sys.path:
        sys.path.insert(0, str(script.parent))
    spec = importlib.util.spec_from_file_location(f"{name}_script", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
