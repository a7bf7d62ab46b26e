"""Image sets as arrays: digests and subsets of datasets, and images made elsewhere to score.

``load_images`` reads the images to score from a ``.npz`` or a folder into difflab's layout
(float32 NCHW in [-1, 1]). ``dataset_digest`` is the hash of a dataset that evaluators record and
reference statistics are keyed by.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from difflab.data import ImageDataset, load_dataset


def dataset_digest(dataset: ImageDataset) -> str:
    """SHA-256 of a dataset's images and labels (what the reference statistics depend on)."""
    digest = hashlib.sha256()
    digest.update(str(dataset.images.shape).encode())
    digest.update(np.ascontiguousarray(dataset.images, np.float32).tobytes())
    digest.update(np.ascontiguousarray(dataset.labels, np.int64).tobytes())
    return digest.hexdigest()


def subset(dataset: ImageDataset, n: int | None, seed: int = 0) -> ImageDataset:
    """``n`` images of ``dataset`` drawn without replacement (in their original order); all if
    ``n`` is None or not smaller."""
    if n is None or n >= dataset.num_images:
        return dataset
    keep = np.sort(np.random.default_rng(seed).choice(dataset.num_images, n, replace=False))
    names = None if dataset.names is None else tuple(dataset.names[i] for i in keep)
    return ImageDataset(
        dataset.name, dataset.images[keep], dataset.labels[keep], dataset.class_names, names
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
