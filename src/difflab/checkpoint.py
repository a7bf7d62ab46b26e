"""Checkpoints: safetensors weights with the JSON configuration inside, written atomically.

One file holds everything an objective declares (``difflab.training``): the tensors of each network
under its name (``model.*`` the raw weights, ``ema.*`` the moving average used for sampling, and
any others, e.g. a discriminator), of each optimiser (``optim.*``, the moments) and ``rng.*``; the
safetensors metadata holds the run configuration, the network names, the optimisers' scalars and
the training state (step, epoch, ...) as JSON. Nothing is ever
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
    networks: dict[str, dict[str, torch.Tensor]]  # weights by network name ("model", "ema", ...)
    optimizers: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # torch state_dicts, by name
    rng: dict[str, torch.Tensor] = field(default_factory=dict)  # generator states for resuming
    state: dict[str, Any] = field(default_factory=dict)  # step, epoch, ... (JSON values)
    path: Path | None = None

    @property
    def model(self) -> dict[str, torch.Tensor]:
        """The raw weights of the trained network (of a one-network objective such as diffusion)."""
        if "model" not in self.networks:
            raise ValueError(
                f"checkpoint {self.path} holds no 'model' network (it has "
                f"{', '.join(sorted(self.networks))}): it is not a diffusion model"
            )
        return self.networks["model"]

    @property
    def ema(self) -> dict[str, torch.Tensor] | None:
        """Its moving average, if the run kept one."""
        return self.networks.get("ema")

    @property
    def optimizer(self) -> dict[str, Any] | None:
        """The optimiser state of the trained network, if saved for resuming."""
        return self.optimizers.get(DEFAULT_OPTIMIZER)

    @property
    def sampling_weights(self) -> dict[str, torch.Tensor]:
        """EMA weights when present (they sample better), else the raw weights."""
        return self.ema if self.ema is not None else self.model


def _flatten_optimizer(
    name: str, state_dict: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a torch optimiser state_dict into tensors ``NAME.INDEX.KEY`` and a JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}.{index}.{key}"] = value
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


# The one optimiser of a one-network run is ``optim`` (tensors ``optim.*``, metadata
# ``optimizer``), as in every checkpoint written before objectives had several.
DEFAULT_OPTIMIZER = "optim"
# Networks of checkpoints that do not list theirs (written before the list existed).
LEGACY_NETWORKS = ("model", "ema")


def _optimizer_key(name: str) -> str:
    return "optimizer" if name == DEFAULT_OPTIMIZER else f"optimizer.{name}"


def _optimizer_names(metadata: dict[str, str]) -> list[str]:
    return [
        DEFAULT_OPTIMIZER if key == "optimizer" else key.removeprefix("optimizer.")
        for key in metadata
        if key == "optimizer" or key.startswith("optimizer.")
    ]


def write_checkpoint(
    path: str | os.PathLike[str],
    config: RunConfig,
    networks: dict[str, dict[str, torch.Tensor]],
    *,
    optimizers: dict[str, dict[str, Any]] | None = None,
    rng: dict[str, torch.Tensor] | None = None,
    state: dict[str, Any] | None = None,
) -> Path:
    """Write one checkpoint file atomically (temporary file, then rename).

    ``networks`` are state_dicts by name (their tensors become ``NAME.*``), ``optimizers`` torch
    optimiser state_dicts by name, ``rng`` generator states, ``state`` JSON values (step, ...).
    """
    optimizers, reserved = optimizers or {}, {"rng"}
    for name in [*networks, *optimizers]:
        assert name.isidentifier() and name not in reserved, f"bad checkpoint group name {name!r}"
        reserved.add(name)
    tensors = {f"{net}.{k}": v for net, weights in networks.items() for k, v in weights.items()}
    metadata = {
        "format": FORMAT,
        "difflab_version": difflab.__version__,
        "config": json.dumps(to_dict(config)),
        "state": json.dumps(state or {}),
        "networks": json.dumps(list(networks)),
    }
    for name, optimizer in optimizers.items():
        optim_tensors, rest = _flatten_optimizer(name, optimizer)
        tensors.update(optim_tensors)
        metadata[_optimizer_key(name)] = json.dumps(rest)
    for name, value in (rng or {}).items():
        tensors[f"rng.{name}"] = value
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


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
    """A one-network checkpoint (weights, EMA, optimiser): ``write_checkpoint`` with those names."""
    networks = {"model": model, **({"ema": ema} if ema is not None else {})}
    optimizers = {DEFAULT_OPTIMIZER: optimizer} if optimizer is not None else None
    return write_checkpoint(path, config, networks, optimizers=optimizers, rng=rng, state=state)


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
        network_names = json.loads(metadata.get("networks", json.dumps(LEGACY_NETWORKS)))
        optimizer_rests = {
            name: json.loads(metadata[_optimizer_key(name)]) for name in _optimizer_names(metadata)
        }
    except (ValueError, TypeError) as err:
        raise ValueError(f"checkpoint {path} has an invalid configuration ({err})") from err

    groups: dict[str, dict[str, torch.Tensor]] = {
        name: {} for name in [*network_names, *optimizer_rests, "rng"]
    }
    for name, value in tensors.items():
        prefix, _, rest = name.partition(".")
        if prefix not in groups:
            raise ValueError(f"checkpoint {path} has an unexpected tensor {name!r}")
        groups[prefix][name if prefix in optimizer_rests else rest] = value
    if not any(groups[name] for name in network_names):
        raise ValueError(f"checkpoint {path} holds no network weights")
    return Checkpoint(
        config=config,
        networks={name: groups[name] for name in network_names if groups[name]},
        optimizers={
            name: _unflatten_optimizer(groups[name], rest) for name, rest in optimizer_rests.items()
        },
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
