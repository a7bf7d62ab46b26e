"""The reference: the real images generated ones are compared to, their statistics, and the score.

``reference_datasets`` gives the (train, test) splits that an evaluator learns from and generated
images are compared to. ``reference_statistics`` computes the test split's features, mean and
covariance and the train split's features in one evaluator's feature space, and caches them
beside the evaluator, keyed by the dataset and hashes of the evaluator and the data, so they are
computed once. ``score_features`` scores generated features against them (``metrics.py``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from difflab.data import ImageDataset, default_cache_dir, load_dataset
from difflab.evaluation.evaluator import Evaluator, _check_dataset, _read_header
from difflab.evaluation.images import dataset_digest
from difflab.evaluation.metrics import (
    _as_features,
    feature_statistics,
    frechet_distance,
    kid,
    nearest_distances,
    precision_recall,
)
from difflab.io import atomic_path

REFERENCE_FORMAT = "difflab-reference-1"
HOLDOUT_EVERY = 10  # a folder without train/ and test/ holds out every 10th image as its test split


def reference_datasets(
    data: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    image_size: int | None = None,
    seed: int = 0,
    vendors: str | None = None,
) -> tuple[ImageDataset, ImageDataset]:
    """The (train, test) splits that an evaluator learns from and generated images are compared to.

    A folder without ``train/`` and ``test/`` subfolders is split here: every 10th image (in
    sorted file order) is held out as the test split. ``seed`` draws the built-in sets;
    ``vendors`` picks whose images of emoji-datasource (None: both), as ``load_dataset`` does.
    """
    _check_dataset(data)
    kwargs: dict[str, Any] = dict(data_dir=data_dir, image_size=image_size, seed=seed)
    if vendors is not None:  # load_dataset refuses it for any other data, in one line
        kwargs["vendors"] = vendors
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
