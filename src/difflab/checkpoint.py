"""Checkpoints: safetensors weights with the JSON configuration inside, written atomically.

One file holds everything: tensors named ``model.*`` (raw weights), ``ema.*`` (the moving average,
used for sampling), ``optim.*`` (optimiser moments) and ``rng.*``; the safetensors metadata holds
the run configuration and the training state (step, epoch, ...) as JSON. Nothing is ever
unpickled. ``load_checkpoint`` is the one loader every command uses (STYLE 8).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import difflab
from difflab.config import RunConfig, run_config_from_dict, to_dict
from difflab.io import atomic_path

FORMAT = "difflab-checkpoint-1"


@dataclass
class Checkpoint:
    """What a checkpoint file holds, as loaded."""

    config: RunConfig
    model: dict[str, torch.Tensor]  # raw weights
    ema: dict[str, torch.Tensor] | None = None  # EMA weights, if the run kept them
    optimizer: dict[str, Any] | None = None  # torch optimiser state_dict, if saved for resuming
    rng: dict[str, torch.Tensor] = field(default_factory=dict)  # generator states for resuming
    state: dict[str, Any] = field(default_factory=dict)  # step, epoch, ... (JSON values)
    path: Path | None = None

    @property
    def sampling_weights(self) -> dict[str, torch.Tensor]:
        """EMA weights when present (they sample better), else the raw weights."""
        return self.ema if self.ema is not None else self.model


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], Any]:
    """Split a torch optimiser state_dict into named tensors and a JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in rest.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}


def save_checkpoint(
    path: str | os.PathLike[str],
    config: RunConfig,
    model: dict[str, torch.Tensor],
    *,
    ema: dict[str, torch.Tensor] | None = None,
    optimizer: dict[str, Any] | None = None,
    rng: dict[str, torch.Tensor] | None = None,
    state: dict[str, Any] | None = None,
) -> Path:
    """Write one checkpoint file atomically (temporary file, then rename)."""
    tensors = {f"model.{k}": v for k, v in model.items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.items()})
    metadata = {
        "format": FORMAT,
        "difflab_version": difflab.__version__,
        "config": json.dumps(to_dict(config)),
        "state": json.dumps(state or {}),
    }
    if optimizer is not None:
        optim_tensors, rest = _flatten_optimizer(optimizer)
        tensors.update(optim_tensors)
        metadata["optimizer"] = json.dumps(rest)
    for name, value in (rng or {}).items():
        tensors[f"rng.{name}"] = value
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def _read_metadata(path: Path) -> dict[str, str]:
    with open(path, "rb") as f:
        header = f.read(8)
        if len(header) < 8:
            raise ValueError(f"checkpoint {path} is empty or truncated")
        size = int.from_bytes(header, "little")
        if size <= 0 or size > 100_000_000:
            raise ValueError(f"checkpoint {path} is corrupt or not a safetensors file (bad header)")
        try:
            header_json = json.loads(f.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(
                f"checkpoint {path} is corrupt or truncated, or not a safetensors file ({err})"
            ) from err
    return header_json.get("__metadata__") or {}


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load a difflab checkpoint; any problem is a one-line ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist (expected a .safetensors file)")
    metadata = _read_metadata(path)
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise ValueError(f"checkpoint {path} was not written by difflab (no difflab configuration)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ValueError(f"checkpoint {path} is corrupt or truncated ({err})") from err
    try:
        config = run_config_from_dict(json.loads(metadata["config"]))
        config.model.validate()
        config.diffusion.validate()
        state = json.loads(metadata.get("state", "{}"))
        optimizer_rest = json.loads(metadata["optimizer"]) if "optimizer" in metadata else None
    except (ValueError, TypeError) as err:
        raise ValueError(f"checkpoint {path} has an invalid configuration ({err})") from err

    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}, "optim": {}, "rng": {}}
    for name, value in tensors.items():
        prefix, _, rest = name.partition(".")
        if prefix not in groups:
            raise ValueError(f"checkpoint {path} has an unexpected tensor {name!r}")
        groups[prefix][rest if prefix != "optim" else name] = value
    if not groups["model"]:
        raise ValueError(f"checkpoint {path} holds no model weights")
    return Checkpoint(
        config=config,
        model=groups["model"],
        ema=groups["ema"] or None,
        optimizer=_unflatten_optimizer(groups["optim"], optimizer_rest) if optimizer_rest else None,
        rng=groups["rng"],
        state=state,
        path=path,
    )


def load_weights_into(
    module: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path | str
) -> None:
    """``module.load_state_dict(weights)`` with a one-line error for a wrong architecture."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {source} does not match the model: "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    for name, value in weights.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise ValueError(
                f"checkpoint {source}: tensor {name} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(expected[name].shape)}"
            )
    module.load_state_dict(weights)


def numpy_weights(weights: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The same weights as float32 NumPy arrays, for the NumPy backend."""
    return {k: v.detach().cpu().float().numpy() for k, v in weights.items()}
