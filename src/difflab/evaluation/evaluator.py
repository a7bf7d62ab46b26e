"""The evaluator: the network whose features the metrics compare, and what it predicts of images.

The project's evaluator is a small CNN classifier trained on the dataset itself (``difflab
train-evaluator``, ``models/classifier.py``), in place of the Inception-v3 network behind
published FIDs. It is one safetensors file with its configuration as JSON in the header, by
default in the user cache (``default_evaluator_path``). Why scores in this feature space differ
from published Inception FIDs: docs/metrics.md.

``load_inception`` makes an evaluator of pytorch-fid's FID-Inception weights file instead
(``models/inception.py``): the feature space of published FIDs, for colour datasets.

The classifier's predictions give class accuracy and class coverage (mode collapse);
``check_classes`` and ``match_channels`` check that images fit the evaluator before they are scored.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

import difflab
from difflab.data import DATASETS, ImageDataset, default_cache_dir
from difflab.evaluation.images import dataset_digest
from difflab.io import atomic_path
from difflab.models.classifier import Classifier, ClassifierConfig
from difflab.models.inception import FEATURE_DIM as INCEPTION_FEATURES
from difflab.models.inception import FIDInception

EVALUATOR_FORMAT = "difflab-evaluator-1"
NATIVE_SIZES = {"emoji": 8, "shapes": 16, "mnist": 28, "fashion-mnist": 28, "cifar10": 32}


def default_evaluator_path(
    data: str, image_size: int, data_dir: str | os.PathLike[str] | None = None
) -> Path:
    """``$DIFFLAB_CACHE/evaluators/<data>-<size>px.safetensors`` (default ``~/.cache/difflab``).

    A ``folder`` dataset is named by its directory: ``folder-<name>-<hash of its path>``.
    """
    _check_dataset(data)
    name = data
    if data == "folder":
        if data_dir is None:
            raise ValueError("dataset 'folder' needs --data-dir, a directory of images")
        resolved = str(Path(data_dir).expanduser().resolve())
        digest = hashlib.sha256(resolved.encode()).hexdigest()[:8]
        name = f"folder-{Path(resolved).name}-{digest}"
    return default_cache_dir() / "evaluators" / f"{name}-{image_size}px.safetensors"


def train_evaluator_command(
    data: str, image_size: int, data_dir: str | os.PathLike[str] | None
) -> str:
    """The ``difflab train-evaluator`` command line that makes the default evaluator for this data."""
    parts = ["difflab train-evaluator", f"--data {data}"]
    if data_dir is not None and data not in ("emoji", "shapes"):
        parts.append(f"--data-dir {data_dir}")
    if NATIVE_SIZES.get(data) != image_size:
        parts.append(f"--image-size {image_size}")
    return " ".join(parts)


def _check_dataset(data: str) -> None:
    if data not in DATASETS:
        raise ValueError(f"unknown dataset {data!r}; expected one of {', '.join(DATASETS)}")


@dataclass
class Evaluator:
    """A feature network, what it was trained on, and where it was loaded from.

    Either the project's classifier (``load_evaluator``: fixed image size and channels, class
    predictions) or pytorch-fid's FID-Inception (``load_inception``: any size, grey or RGB, no
    classes of the dataset).
    """

    model: Classifier | FIDInception
    info: dict[str, Any]  # data, data_dir, class_names, test_accuracy, ... (from the file header)
    digest: str  # SHA-256 of the weights: keys the cached reference statistics
    path: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_inception(self) -> bool:
        return isinstance(self.model, FIDInception)

    @property
    def config(self) -> ClassifierConfig:
        assert isinstance(self.model, Classifier), "FID-Inception has no ClassifierConfig"
        return self.model.config

    @property
    def feature_dim(self) -> int:
        return INCEPTION_FEATURES if self.is_inception else self.config.feature_dim

    @torch.no_grad()
    def _run(self, images: np.ndarray, fn: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
        self.check_images(images)
        self.model.eval()
        batch_size = 32 if self.is_inception else 500  # Inception: 299 px activations
        out = []
        slow = self.is_inception and len(images) > batch_size
        bar = tqdm(total=len(images), desc="Inception features", unit="img", disable=not slow)
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
            batch = batch.to(self.device, torch.float32)
            if self.is_inception:
                batch = batch.contiguous(memory_format=torch.channels_last)  # 1.5x on CPU
            out.append(fn(batch).float().cpu().numpy())
            bar.update(len(batch))
        bar.close()
        return np.concatenate(out)

    def features(self, images: np.ndarray) -> np.ndarray:
        """Images (N, C, S, S) float32 in [-1, 1] -> metric features (N, feature_dim) float32."""
        return self._run(images, self.model.embed)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """The evaluator's class index (N,) for each image."""
        if self.is_inception:
            raise ValueError(
                "class accuracy needs the project's evaluator (difflab train-evaluator), not "
                "Inception, whose classes are not the dataset's"
            )
        return self._run(images, lambda x: self.model(x).argmax(1))

    def check_images(self, images: np.ndarray) -> None:
        if self.is_inception:
            if images.ndim != 4 or images.shape[1] not in (1, 3):
                raise ValueError(
                    f"images of shape {tuple(images.shape)} do not fit Inception, which expects "
                    "(N, 1 or 3, H, W)"
                )
            return
        c, s = self.config.in_channels, self.config.image_size
        if images.ndim != 4 or images.shape[1:] != (c, s, s):
            raise ValueError(
                f"images of shape {tuple(images.shape[1:])} (C, H, W) do not fit the evaluator "
                f"{self.path or ''}, which expects ({c}, {s}, {s}) ({self.info.get('data')})"
            )


def _rng_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def train_classifier(
    train: ImageDataset,
    test: ImageDataset,
    *,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    width: int = 32,
    feature_dim: int = 128,
    max_steps: int | None = None,
    progress: bool = False,
) -> tuple[Classifier, dict[str, Any]]:
    """Train the evaluator CNN on ``train`` (AdamW, cosine LR decay); report accuracy on ``test``.

    Seeded end to end (initial weights, batch order, dropout) without touching the global RNG.
    Returns the model (eval mode) and what to store with it (accuracy, timing, data hashes).
    """
    device = torch.device(device)
    if train.channels != test.channels or train.image_size != test.image_size:
        raise ValueError(
            f"train images {train.images.shape[1:]} and test images {test.images.shape[1:]} differ"
        )
    config = ClassifierConfig(
        image_size=train.image_size, in_channels=train.channels, num_classes=train.num_classes,
        width=width, feature_dim=feature_dim,
    )  # fmt: skip
    steps_per_epoch = math.ceil(train.num_images / batch_size)
    total = (
        steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    )
    start_time = time.perf_counter()
    images = torch.from_numpy(train.images)
    labels = torch.from_numpy(train.labels)
    with torch.random.fork_rng(devices=_rng_devices(device)):
        torch.manual_seed(seed)  # initial weights and dropout
        model = Classifier(config).to(device)
        order_gen = torch.Generator().manual_seed(seed)  # batch order
        losses = _fit_classifier(
            model, images, labels, order_gen, total=total, batch_size=batch_size, lr=lr,
            device=device, progress=progress,
        )  # fmt: skip
    model.eval()
    evaluator = Evaluator(model, {}, digest="", device=device)
    raw = evaluator._run(train.images, model.features).astype(np.float64)  # (N, D)
    model.feature_mean.copy_(torch.from_numpy(raw.mean(0)))
    model.feature_scale.fill_(float(np.sqrt(raw.var(0).mean())))
    seconds = time.perf_counter() - start_time
    accuracy = float((evaluator.predict(test.images) == test.labels).mean())
    info = {
        "data": train.name,
        "class_names": list(train.class_names),
        "test_accuracy": accuracy,
        "train_images": train.num_images,
        "test_images": test.num_images,
        "train_digest": dataset_digest(train),
        "test_digest": dataset_digest(test),
        "steps": len(losses),  # one per step
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "train_seconds": seconds,
    }
    return model, info


def _fit_classifier(
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    order_gen: torch.Generator,
    *,
    total: int,
    batch_size: int,
    lr: float,
    device: torch.device,
    progress: bool,
) -> list[float]:
    """``total`` AdamW steps of cross-entropy on shuffled batches (the order ``order_gen``
    draws), the LR decaying on a cosine to 5% of ``lr``; the loss of each step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    step, losses = 0, []
    bar = tqdm(total=total, desc="training evaluator", disable=not progress, leave=False)
    while step < total:
        perm = torch.randperm(len(images), generator=order_gen)
        for start in range(0, len(images), batch_size):
            if step >= total:
                break
            idx = perm[start : start + batch_size]
            x, y = images[idx].to(device), labels[idx].to(device)
            for group in optimizer.param_groups:  # cosine decay to 5% of lr
                group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / total)))
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    bar.close()
    return losses


def default_epochs(num_images: int, batch_size: int) -> int:
    """3 passes over MNIST-sized data; small sets get more, so that training takes >= 1000 steps."""
    return max(3, math.ceil(1000 / math.ceil(num_images / batch_size)))


def _weights_digest(weights: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(weights[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_evaluator(path: str | os.PathLike[str], model: Classifier, info: dict[str, Any]) -> Path:
    """Write the evaluator atomically: weights in safetensors, config and ``info`` as JSON."""
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": EVALUATOR_FORMAT,
        "difflab_version": difflab.__version__,
        "config": json.dumps(asdict(model.config)),
        "info": json.dumps(info),
    }
    with atomic_path(path) as tmp:
        save_file(weights, str(tmp), metadata=metadata)
    return Path(path)


def _read_header(path: Path, what: str) -> dict[str, str]:
    """The safetensors ``__metadata__`` of ``path``; a one-line ValueError if it is not one."""
    with open(path, "rb") as f:
        head = f.read(8)
        size = int.from_bytes(head, "little") if len(head) == 8 else 0
        if not 0 < size <= 100_000_000:
            raise ValueError(f"{what} {path} is empty, truncated or not a safetensors file")
        try:
            header = json.loads(f.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{what} {path} is corrupt or not a safetensors file ({err})") from err
    return header.get("__metadata__") or {}


def load_evaluator(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", *, hint: str = ""
) -> Evaluator:
    """Load an evaluator file; a missing or foreign file is a one-line ValueError (``hint`` appended)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"no evaluator at {path}{hint}")
    metadata = _read_header(path, "evaluator")
    if metadata.get("format") != EVALUATOR_FORMAT:
        raise ValueError(f"{path} is not a difflab evaluator (made by difflab train-evaluator)")
    try:
        weights = load_file(str(path))
        raw = json.loads(metadata["config"])
        config = ClassifierConfig(**raw)
        info = json.loads(metadata.get("info", "{}"))
        model = Classifier(config)
        model.load_state_dict(weights)
    except (SafetensorError, OSError, RuntimeError, TypeError, KeyError) as err:
        raise ValueError(
            f"evaluator {path} is corrupt or does not match its config ({err})"
        ) from err
    device = torch.device(device)
    return Evaluator(model.to(device).eval(), info, _weights_digest(weights), path, device)


INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = (
    f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{INCEPTION_FILE}"
)


def _check_tensor_names(weights: dict[str, Any], expected: dict[str, torch.Tensor]) -> None:
    """A ValueError naming the first missing, unexpected and mis-shaped tensors, if any."""
    missing = [k for k in expected if k not in weights and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in weights if k not in expected]
    wrong = [
        k
        for k in expected
        if k in weights and tuple(getattr(weights[k], "shape", ())) != tuple(expected[k].shape)
    ]
    problems = [
        f"{len(names)} {what} (first: {names[0]})"
        for names, what in (
            (missing, "missing"),
            (unexpected, "unexpected"),
            (wrong, "of another shape"),
        )
        if names
    ]
    if problems:
        raise ValueError(f"tensors in the file: {len(weights)}; {', '.join(problems)}")


def load_inception(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Evaluator:
    """pytorch-fid's FID-Inception weights (``INCEPTION_FILE``, or a .safetensors of the same
    tensors) as an evaluator: 2048-d pool features, the feature space of published FIDs.

    Nothing is downloaded: the file must be on disk (``INCEPTION_URL``, fetched by the user). It is
    read with ``torch.load(weights_only=True)``, which runs no code from the file. Any mismatch
    with the network (``models/inception.py``) is a one-line ValueError.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(
            f"--inception-weights {path} does not exist (pytorch-fid's {INCEPTION_FILE}, from "
            f"{INCEPTION_URL})"
        )
    try:
        if path.suffix == ".safetensors":
            weights = load_file(str(path))
        else:
            try:
                weights = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # untrusted bytes fail in many ways (KeyError, ...)
                raise ValueError(
                    f"not a readable torch file ({type(err).__name__}: {err})"
                ) from err
        if not isinstance(weights, dict):
            raise TypeError(f"it holds a {type(weights).__name__}, not a state dict")
        model = FIDInception()
        _check_tensor_names(weights, model.state_dict())
        model.load_state_dict(weights)
    except (SafetensorError, OSError, RuntimeError, TypeError, EOFError, ValueError,
            pickle.UnpicklingError) as err:  # fmt: skip
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"--inception-weights {path} is not pytorch-fid's FID-Inception state dict "
            f"({INCEPTION_FILE}): {first[:300]}"
        ) from err
    device = torch.device(device)
    model = model.to(device, memory_format=torch.channels_last).eval()
    info = {"network": "pytorch-fid FID-Inception", "weights": INCEPTION_FILE}
    return Evaluator(model, info, _weights_digest(model.state_dict()), path, device)


# --- what the evaluator predicts of images ---------------------------------------------------


def class_accuracy(evaluator: Evaluator, images: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of images the evaluator assigns to their requested class."""
    return float((evaluator.predict(images) == np.asarray(labels)).mean())


def class_coverage(evaluator: Evaluator, images: np.ndarray) -> dict[str, float]:
    """Mode coverage in the evaluator's classes: the entropy (nats) of the histogram of the
    classes it predicts for the images, the most it can be (log K: every class equally often) and
    the smallest class's share (0: a class is never drawn, as under mode collapse)."""
    k = evaluator.config.num_classes
    counts = np.bincount(evaluator.predict(images).astype(np.int64), minlength=k)  # (K,)
    share = counts / counts.sum()
    nonzero = share[share > 0]
    return {
        "class_entropy": float(-(nonzero * np.log(nonzero)).sum()),
        "class_entropy_max": float(np.log(k)),
        "smallest_class_share": float(share.min()),
    }


def check_classes(evaluator: Evaluator, class_names: tuple[str, ...] | list[str]) -> None:
    """A model's (or folder's) classes must be the evaluator's for class accuracy to mean anything."""
    ours = tuple(evaluator.info.get("class_names") or ())
    if tuple(class_names) != ours:
        raise ValueError(
            f"the images' classes {list(class_names)[:10]} are not the evaluator's "
            f"{list(ours)[:10]}; use an evaluator trained on the model's data (--evaluator)"
        )


def match_channels(images: np.ndarray, evaluator: Evaluator, source: str) -> np.ndarray:
    """Grey images stored as RGB (three equal channels) become 1-channel for a grey evaluator."""
    if images.shape[1] == 3 and not evaluator.is_inception and evaluator.config.in_channels == 1:
        if np.abs(images - images[:, :1]).max() > 1e-6:
            raise ValueError(
                f"{source}: colour images, but the evaluator ({evaluator.info.get('data')}) "
                "expects grey ones"
            )
        return images[:, :1]
    return images
