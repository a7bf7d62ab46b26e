"""Offline quality numbers: FID, KID, precision/recall, distance to the training set, class accuracy.

All of them compare images in the feature space of an *evaluator*: a small CNN classifier the
project trains on the dataset itself (``difflab train-evaluator``, ``models/classifier.py``), in
place of the Inception-v3 network behind published FIDs. The maths works on any feature matrices
(rows = images) and lives at the top of this module, each function next to its paper:

- ``frechet_distance``: FID (Heusel et al. 2017, Eq. 6), computed stably in float64.
- ``kid``: KID, the unbiased MMD^2 with a cubic polynomial kernel (Bińkowski et al. 2018).
- ``precision_recall``: k-NN manifold precision and recall (Kynkäänniemi et al. 2019).
- ``nearest_distances``: feature distance from each image to its nearest training image, the
  memorisation check (a model that copies its training set scores closer than held-out images).

The evaluator is one safetensors file with its configuration as JSON in the header; beside it
the reference statistics of the test split (mean, covariance, features) are cached, keyed by
the dataset and hashes of the evaluator and the data, so they are computed once. Why scores in
this feature space differ from published Inception FIDs: docs/metrics.md.

``load_inception`` makes an evaluator of pytorch-fid's FID-Inception weights file instead
(``models/inception.py``): the feature space of published FIDs, for colour datasets.
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
from difflab.data import DATASETS, ImageDataset, default_cache_dir, load_dataset
from difflab.io import atomic_path
from difflab.models.classifier import Classifier, ClassifierConfig
from difflab.models.inception import FEATURE_DIM as INCEPTION_FEATURES
from difflab.models.inception import FIDInception

EVALUATOR_FORMAT = "difflab-evaluator-1"
REFERENCE_FORMAT = "difflab-reference-1"
NATIVE_SIZES = {"emoji": 8, "shapes": 16, "mnist": 28, "fashion-mnist": 28, "cifar10": 32}
HOLDOUT_EVERY = 10  # a folder without train/ and test/ holds out every 10th image as its test split


# --- the metrics -----------------------------------------------------------------------------


def _as_features(x: Any, what: str = "features") -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(
            f"{what} must be a matrix with one row per image and at least 2 rows, got shape "
            f"{x.shape}"
        )
    return x


def feature_statistics(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), in float64 (covariance with N - 1)."""
    x = _as_features(features)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017, Eq. 6).

        d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})

    Tr (S1 S2)^{1/2} is computed as Tr (S1^{1/2} S2 S1^{1/2})^{1/2}, the same eigenvalues, but of a
    symmetric PSD matrix, so two symmetric eigendecompositions in float64 suffice (eigenvalues
    clipped at 0): no complex parts to discard, unlike ``scipy.linalg.sqrtm`` on S1 S2.
    """
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    s1, s2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"means {mu1.shape}, {mu2.shape} and covariances {s1.shape}, {s2.shape} do not fit "
            f"one {d}-dimensional feature space"
        )
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    sqrt_s1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T  # S1^{1/2}
    m = sqrt_s1 @ s2 @ sqrt_s1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    fid = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean
    return float(max(fid, 0.0))  # a squared distance; only rounding can make it negative


def fid_from_features(features1: Any, features2: Any) -> float:
    """FID between two feature matrices (N1, D) and (N2, D)."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3, KID's kernel (Bińkowski et al. 2018, Sec. 4), float64."""
    d = x.shape[1]
    return (np.asarray(x, np.float64) @ np.asarray(y, np.float64).T / d + 1.0) ** 3


def mmd2_unbiased(x: Any, y: Any) -> float:
    """The unbiased estimator of MMD^2 (Gretton et al. 2012, Eq. 3) with ``polynomial_kernel``.

    mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j)
    """
    x, y = _as_features(x, "x"), _as_features(y, "y")
    m, n = len(x), len(y)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2.0 * kxy.mean()
    )


def kid(
    x: Any,
    y: Any,
    *,
    generator: np.random.Generator,
    num_subsets: int = 100,
    subset_size: int = 1000,
) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): ``mmd2_unbiased`` averaged over random subsets; (mean, std).

    Each subset draws ``min(subset_size, len(x), len(y))`` rows of each set without replacement.
    The estimator is unbiased, so unlike FID its expected value does not depend on N; the std is
    the spread over subsets (not the standard error of the mean).
    """
    x, y = _as_features(x, "x"), _as_features(y, "y")
    m = min(subset_size, len(x), len(y))
    if num_subsets < 1 or m < 2:
        raise ValueError(f"KID needs >= 1 subset of >= 2 rows, got {num_subsets} of {m}")
    values = [
        mmd2_unbiased(
            x[generator.choice(len(x), m, replace=False)],
            y[generator.choice(len(y), m, replace=False)],
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def _knn_distances(
    query: np.ndarray, reference: np.ndarray, k: int, *, exclude_self: bool = False
) -> np.ndarray:
    """Distances (Nq, k), ascending, from each query row to its k nearest reference rows.

    Candidates are screened with a float32 matrix product (|q|^2 + |r|^2 - 2 q.r, fast but
    inexact for near-duplicates), then the best few are recomputed exactly in float64, so an exact
    copy is at distance 0. ``exclude_self``: query is reference, and row i is not its own neighbour.
    """
    q64, r64 = np.asarray(query, np.float64), np.asarray(reference, np.float64)
    n_ref = len(r64) - int(exclude_self)
    if not 1 <= k <= n_ref:
        raise ValueError(f"k = {k} nearest neighbours needs more than {k} reference rows")
    q32, r32 = torch.from_numpy(q64.astype(np.float32)), torch.from_numpy(r64.astype(np.float32))
    r_sq = (r32 * r32).sum(1)
    candidates = min(k + 8 + int(exclude_self), len(r64))
    out = np.empty((len(q64), k))
    chunk = max(1, (1 << 22) // len(r64))  # about 16 MB of float32 distances at a time
    for start in range(0, len(q64), chunk):
        q = q32[start : start + chunk]
        rows = torch.arange(start, start + len(q))
        d2 = (q * q).sum(1, keepdim=True) + r_sq[None] - 2.0 * (q @ r32.T)  # (c, Nr)
        if exclude_self:
            d2[torch.arange(len(q)), rows] = math.inf
        idx = torch.topk(d2, candidates, dim=1, largest=False).indices.numpy()  # (c, m)
        exact = ((q64[start : start + len(q), None, :] - r64[idx]) ** 2).sum(-1)  # (c, m)
        if exclude_self:
            exact[idx == rows.numpy()[:, None]] = math.inf
        out[start : start + len(q)] = np.sqrt(np.sort(exact, axis=1)[:, :k])
    return out


def nearest_distances(query: Any, reference: Any) -> np.ndarray:
    """Euclidean distance (Nq,) from each query row to its nearest reference row (exact in float64)."""
    q = np.asarray(query, np.float64)
    r = np.asarray(reference, np.float64)
    if q.ndim != 2 or r.ndim != 2 or q.shape[1] != r.shape[1] or len(r) < 1:
        raise ValueError(f"query {q.shape} and reference {r.shape} must be (N, D) and (M, D)")
    return _knn_distances(q, r, 1)[:, 0]


def _inside_any_ball(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """For each point: is it within ``radii[i]`` of some ``centres[i]``? (closed balls, float64)"""
    p, c = torch.from_numpy(points), torch.from_numpy(centres)
    c_sq, r_sq = (c * c).sum(1), torch.from_numpy(radii) ** 2
    inside = np.empty(len(points), dtype=bool)
    chunk = max(1, (1 << 21) // len(centres))
    for start in range(0, len(points), chunk):
        q = p[start : start + chunk]
        d2 = (q * q).sum(1, keepdim=True) + c_sq[None] - 2.0 * (q @ c.T)  # (c, Nc)
        inside[start : start + len(q)] = (d2 <= r_sq[None]).any(1).numpy()
    return inside


def precision_recall(real: Any, fake: Any, *, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, Eqs. 1-3).

    Each set's manifold is the union of balls around its points, each ball's radius the distance
    to the point's k-th nearest neighbour in its own set. Precision: the fraction of fake points
    inside the real manifold (fidelity); recall: the fraction of real points inside the fake
    manifold (coverage).
    """
    real, fake = _as_features(real, "real features"), _as_features(fake, "fake features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real {real.shape} and fake {fake.shape} features differ in width")
    if k < 1 or k >= min(len(real), len(fake)):
        raise ValueError(
            f"k = {k} needs more than k images in each set; got {len(real)} real and "
            f"{len(fake)} generated"
        )
    real_radii = _knn_distances(real, real, k, exclude_self=True)[:, -1]
    fake_radii = _knn_distances(fake, fake, k, exclude_self=True)[:, -1]
    precision = _inside_any_ball(fake, real, real_radii).mean()
    recall = _inside_any_ball(real, fake, fake_radii).mean()
    return float(precision), float(recall)


# --- the evaluator network -------------------------------------------------------------------


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


def subset(dataset: ImageDataset, n: int | None, seed: int = 0) -> ImageDataset:
    """``n`` images of ``dataset`` drawn without replacement (in their original order); all if
    ``n`` is None or not smaller."""
    if n is None or n >= dataset.num_images:
        return dataset
    keep = np.sort(np.random.default_rng(seed).choice(dataset.num_images, n, replace=False))
    return ImageDataset(
        dataset.name, dataset.images[keep], dataset.labels[keep], dataset.class_names
    )


# --- reference data and statistics -----------------------------------------------------------


def dataset_digest(dataset: ImageDataset) -> str:
    """SHA-256 of a dataset's images and labels (what the reference statistics depend on)."""
    digest = hashlib.sha256()
    digest.update(str(dataset.images.shape).encode())
    digest.update(np.ascontiguousarray(dataset.images, np.float32).tobytes())
    digest.update(np.ascontiguousarray(dataset.labels, np.int64).tobytes())
    return digest.hexdigest()


def reference_datasets(
    data: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    image_size: int | None = None,
    seed: int = 0,
) -> tuple[ImageDataset, ImageDataset]:
    """The (train, test) splits that an evaluator learns from and generated images are compared to.

    A folder without ``train/`` and ``test/`` subfolders is split here: every 10th image (in
    sorted file order) is held out as the test split. ``seed`` draws the built-in sets.
    """
    _check_dataset(data)
    kwargs: dict[str, Any] = dict(data_dir=data_dir, image_size=image_size, seed=seed)
    folder = Path(data_dir).expanduser() if data_dir is not None else None
    unsplit_folder = (
        data == "folder"
        and folder is not None
        and folder.is_dir()
        and not ((folder / "train").is_dir() and (folder / "test").is_dir())
    )
    if unsplit_folder:
        whole = load_dataset(data, **kwargs)
        if whole.num_images < 2 * HOLDOUT_EVERY:
            raise ValueError(
                f"--data-dir {folder} has {whole.num_images} images; an evaluator needs at "
                f"least {2 * HOLDOUT_EVERY} (every {HOLDOUT_EVERY}th is held out for testing)"
            )
        held_out = np.arange(whole.num_images) % HOLDOUT_EVERY == 0

        def part(mask: np.ndarray) -> ImageDataset:
            return ImageDataset(data, whole.images[mask], whole.labels[mask], whole.class_names)

        return part(~held_out), part(held_out)
    return load_dataset(data, split="train", **kwargs), load_dataset(data, split="test", **kwargs)


@dataclass
class Reference:
    """Features and statistics of the real data, in one evaluator's feature space."""

    test_features: np.ndarray  # (N_test, D) float32
    train_features: np.ndarray  # (N_train, D) float32: for the distance-to-training-set check
    mu: np.ndarray  # (D,) float64 mean of the test features
    sigma: np.ndarray  # (D, D) float64 covariance of the test features
    test_nn_train: np.ndarray  # (N_test,) distance from each test image to its nearest train image
    data: str
    path: Path | None = None  # the cache file
    from_cache: bool = False


def reference_cache_path(
    evaluator: Evaluator,
    train: ImageDataset,
    test: ImageDataset,
    digests: tuple[str, str] | None = None,
) -> Path:
    """``<evaluator>.ref-<data>-<hash>.safetensors`` beside the evaluator (or in the user cache).

    ``digests``: (train, test) ``dataset_digest`` values, when already computed.
    """
    train_digest, test_digest = digests or (dataset_digest(train), dataset_digest(test))
    key = hashlib.sha256(f"{evaluator.digest}|{test_digest}|{train_digest}".encode()).hexdigest()
    key = key[:16]
    if evaluator.is_inception:  # its file may sit anywhere, read-only: keep caches in ours
        folder, stem = default_cache_dir() / "evaluators", f"inception-{evaluator.digest[:12]}"
    elif evaluator.path is not None:
        folder, stem = evaluator.path.parent, evaluator.path.stem
    else:
        folder, stem = default_cache_dir() / "evaluators", "unsaved"
    return folder / f"{stem}.ref-{test.name}-{key}.safetensors"


def reference_statistics(
    evaluator: Evaluator,
    train: ImageDataset,
    test: ImageDataset,
    *,
    cache: bool = True,
    on_compute: Callable[[], None] | None = None,
) -> Reference:
    """The test split's features, mean and covariance, and the train features; cached on disk.

    The cache file's name holds a hash of the evaluator's weights and of both splits, so a new
    evaluator or changed data never reuses stale statistics. ``on_compute`` is called before
    the features are computed (not when they come from the cache).
    """
    digests = dataset_digest(train), dataset_digest(test)
    path = reference_cache_path(evaluator, train, test, digests)
    if cache and path.is_file():
        try:
            tensors = load_file(str(path))
            meta = _read_header(path, "reference statistics")
            if meta.get("format") == REFERENCE_FORMAT:
                return Reference(
                    **{k: tensors[k].numpy() for k in
                       ("test_features", "train_features", "mu", "sigma", "test_nn_train")},
                    data=test.name, path=path, from_cache=True,
                )  # fmt: skip
        except (SafetensorError, OSError, KeyError, ValueError):
            pass  # unreadable cache: recompute and overwrite it below
    if on_compute is not None:
        on_compute()
    test_features = evaluator.features(test.images)
    train_features = evaluator.features(train.images)
    mu, sigma = feature_statistics(test_features)
    ref = Reference(
        test_features=test_features, train_features=train_features, mu=mu, sigma=sigma,
        test_nn_train=nearest_distances(test_features, train_features), data=test.name,
        path=path if cache else None,
    )  # fmt: skip
    if cache:
        tensors = {
            k: torch.from_numpy(np.ascontiguousarray(getattr(ref, k)))
            for k in ("test_features", "train_features", "mu", "sigma", "test_nn_train")
        }
        metadata = {
            "format": REFERENCE_FORMAT,
            "data": test.name,
            "evaluator_digest": evaluator.digest,
            "train_digest": digests[0],
            "test_digest": digests[1],
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
    return ref


# --- scoring ---------------------------------------------------------------------------------


def score_features(
    features: np.ndarray,
    reference: Reference,
    *,
    k: int = 3,
    seed: int = 0,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
) -> dict[str, float]:
    """FID, KID, precision/recall and distance-to-train of generated features against a reference.

    FID and KID use the whole test split; precision/recall and the held-out distance baseline use
    a random subset of the test split as large as the generated set (both depend on set sizes).
    """
    features = _as_features(features, "generated features")
    n = len(features)
    if features.shape[1] != reference.mu.shape[0]:
        raise ValueError(
            f"features of width {features.shape[1]} do not fit reference statistics of width "
            f"{reference.mu.shape[0]}"
        )
    rng = np.random.default_rng(seed)
    fid = frechet_distance(*feature_statistics(features), reference.mu, reference.sigma)
    kid_mean, kid_std = kid(
        features, reference.test_features, generator=rng, num_subsets=kid_subsets,
        subset_size=kid_subset_size,
    )  # fmt: skip
    n_test = len(reference.test_features)
    subset = np.sort(rng.choice(n_test, min(n, n_test), replace=False))
    precision, recall = precision_recall(reference.test_features[subset], features, k=k)
    gen_nn = nearest_distances(features, reference.train_features)
    test_nn = reference.test_nn_train[subset]
    close = float(np.mean(gen_nn < np.quantile(reference.test_nn_train, 0.01)))
    return {
        "fid": fid,
        "kid": kid_mean,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
        "nn_train_mean": float(gen_nn.mean()),
        "nn_train_min": float(gen_nn.min()),
        "nn_train_test_mean": float(test_nn.mean()),
        "nn_train_test_min": float(test_nn.min()),
        "nn_train_ratio": float(gen_nn.mean() / test_nn.mean()),
        "nn_train_close_fraction": close,
    }


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


# --- images made elsewhere -------------------------------------------------------------------


def images_to_float(array: np.ndarray, source: str) -> np.ndarray:
    """An image array as float32 NCHW in [-1, 1].

    uint8 is read as 0..255; float as difflab's [-1, 1]. Layouts: (N, C, H, W), (N, H, W, C) with
    C in {1, 3}, or (N, H, W) for grey.
    """
    a = np.asarray(array)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise ValueError(
            f"{source}: images of shape {a.shape}; expected (N, C, H, W) or (N, H, W, C)"
        )
    if a.shape[1] not in (1, 3) and a.shape[-1] in (1, 3):
        a = a.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    if a.shape[1] not in (1, 3):
        raise ValueError(f"{source}: images of shape {a.shape} have no 1- or 3-channel axis")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    if a.dtype.kind != "f":
        raise ValueError(f"{source}: images of dtype {a.dtype}; expected uint8 (0..255) or float")
    a = a.astype(np.float32)
    if not np.isfinite(a).all() or a.min(initial=0) < -1.001 or a.max(initial=0) > 1.001:
        raise ValueError(
            f"{source}: float images range over [{np.nanmin(a):.3g}, {np.nanmax(a):.3g}]; "
            "expected [-1, 1] (or save them as uint8 0..255)"
        )
    return np.clip(a, -1.0, 1.0)


def load_images(
    path: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """Images to score from a ``.npz`` or a folder: (float32 NCHW in [-1, 1], labels or None, class names).

    A ``.npz`` holds the images under ``images``, ``arr_0`` or as its only array, and optionally
    ``labels`` (indices of the evaluator's classes). A folder is read like ``--data folder``; its
    class subfolders, if any, are the labels.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        dataset = load_dataset("folder", data_dir=path)
        if dataset.class_names == ("all",):
            return dataset.images, None, ()
        return dataset.images, dataset.labels, dataset.class_names
    if not path.is_file():
        raise ValueError(f"--images {path} does not exist (expected a folder of images or a .npz)")
    if path.suffix.lower() != ".npz":
        raise ValueError(f"--images {path} is neither a folder nor a .npz file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"cannot read --images {path} as .npz ({err})") from err
    names = [k for k in arrays if k != "labels"]
    key = next(
        (k for k in ("images", "arr_0") if k in arrays), names[0] if len(names) == 1 else None
    )
    if key is None:
        raise ValueError(
            f"--images {path} holds arrays {sorted(arrays)}; expected one named images or arr_0"
        )
    images = images_to_float(arrays[key], str(path))
    labels = arrays.get("labels")
    if labels is not None and (labels.shape != (len(images),) or labels.dtype.kind not in "iu"):
        raise ValueError(f"--images {path}: labels {labels.shape} must be {len(images)} integers")
    return images, labels, ()


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


# --- report ----------------------------------------------------------------------------------


def format_table(metrics: dict[str, Any], data: str) -> str:
    """The metrics as a readable table (what ``difflab evaluate`` prints)."""
    m = metrics
    rows = [
        (f"FID vs {data} test", f"{m['fid']:.3f}", "lower is better; 0 = same feature statistics"),
        ("KID", f"{m['kid']:.5f} ± {m['kid_std']:.5f}", "unbiased, so ~0 (can be < 0) = same"),
        (
            "precision (k=3)",
            f"{m['precision']:.3f}",
            "samples on the real-image manifold (fidelity)",
        ),
        ("recall (k=3)", f"{m['recall']:.3f}", "real images on the sample manifold (coverage)"),
        (
            "distance to train, mean",
            f"{m['nn_train_mean']:.3f}",
            f"held-out test images: {m['nn_train_test_mean']:.3f} "
            f"(ratio {m['nn_train_ratio']:.2f}; well below 1 = copying)",
        ),
        (
            "distance to train, min",
            f"{m['nn_train_min']:.3f}",
            f"held-out test images: {m['nn_train_test_min']:.3f}; 0 = an exact copy",
        ),
        (
            "closer than 99% of test",
            f"{100 * m['nn_train_close_fraction']:.1f}%",
            "share of samples nearer to a training image than 99% of test images (~1% expected)",
        ),
    ]
    if m.get("class_entropy") is not None:
        rows.append(
            (
                "class entropy",
                f"{m['class_entropy']:.3f}",
                f"of the evaluator's predicted classes; {m['class_entropy_max']:.3f} = all equally "
                f"often (smallest class share {m['smallest_class_share']:.3f})",
            )
        )
    if m.get("class_accuracy") is not None:
        rows.append(
            (
                "class accuracy",
                f"{m['class_accuracy']:.3f}",
                "evaluator agrees with the requested class",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c}" for a, b, c in rows)
