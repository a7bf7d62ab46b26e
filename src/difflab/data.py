"""Datasets: every set becomes float32 NCHW images in [-1, 1] with integer class labels.

Sources, all behind one function, ``load_dataset(name, ...)``:

- ``emoji``: 8x8 RGB faces drawn in code (the learner's toy set; five expressions as classes).
- ``shapes``: circles, squares, triangles and crosses on a dark background, 16..32 pixels.
- ``mnist`` / ``fashion-mnist``: the standard IDX files (gzipped or not), downloaded if missing.
- ``cifar10``: the python (pickled) or binary batches, downloaded if missing.
- ``folder``: a directory of images; the immediate subfolders are the classes.
- ``mnist-compose``: 32x32 canvases of one or two coloured MNIST digits, captioned ("a red 3
  left of a blue 7", the data set's ``names``), some combinations held out of the train split;
  drawn by ``difflab.compose`` from the MNIST files (``--data-dir``: MNIST's).
- ``emoji-datasource``: 64x64 colour emoji of Noto Emoji (google) and Twemoji (twitter), read
  from the npm packages ``emoji-datasource-google`` / ``-twitter`` 16.0.0 (folders or ``.tgz``),
  never downloaded; classes are the emoji categories, and each image keeps its name.

Pixels map as ``uint8 / 127.5 - 1``, so 0 -> -1 and 255 -> 1 exactly. Pickled CIFAR batches are
read with a restricted unpickler that can only rebuild NumPy arrays, and every download is
checked against a published SHA-256 before it is kept.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import json
import os
import pickle
import tarfile
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from difflab import compose
from difflab.io import atomic_path

EMOJI_DATASOURCE = "emoji-datasource"  # the colour emoji; not the built-in 8x8 "emoji" toy set
MNIST_COMPOSE = "mnist-compose"  # captioned canvases of coloured MNIST digits (difflab.compose)
DATASETS = ("emoji", "shapes", "mnist", "fashion-mnist", "cifar10", "folder", EMOJI_DATASOURCE,
            MNIST_COMPOSE)  # fmt: skip
SPLITS = ("train", "test")


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A whole dataset in memory: images (N, C, H, W) float32 in [-1, 1] and labels (N,) int64."""

    name: str  # the name it was loaded under, e.g. "mnist"
    images: np.ndarray  # (N, C, H, W) float32 in [-1, 1], square (H == W)
    labels: np.ndarray  # (N,) int64 indices into class_names
    class_names: tuple[str, ...]  # ("all",) for a set without classes
    names: tuple[str, ...] | None = None  # a name per image (emoji-datasource: for text
    # conditioning; mnist-compose: its caption), None for a set whose images have none

    def __post_init__(self) -> None:
        n, _, h, w = self.images.shape
        if h != w or self.labels.shape != (n,):
            raise ValueError(
                f"dataset {self.name!r}: images {self.images.shape} must be square and match "
                f"labels {self.labels.shape}"
            )
        if self.names is not None and len(self.names) != n:
            raise ValueError(f"dataset {self.name!r}: {len(self.names)} names for {n} images")

    @property
    def num_images(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[2]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def default_cache_dir() -> Path:
    """Where downloads go: $DIFFLAB_CACHE, else $XDG_CACHE_HOME/difflab, else ~/.cache/difflab."""
    if os.environ.get("DIFFLAB_CACHE"):
        return Path(os.environ["DIFFLAB_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "difflab"
    return Path.home() / ".cache" / "difflab"


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    split: str = "train",
    image_size: int | None = None,
    download: bool = True,
    seed: int = 0,
    num_images: int | None = None,
    vendors: str | None = None,
    background: tuple[int, int, int] | None = None,
    components: bool = False,
) -> ImageDataset:
    """Load dataset ``name`` (one of ``DATASETS``) as float32 NCHW images in [-1, 1].

    data_dir: where the files are (folder: required; mnist, fashion-mnist, cifar10,
        emoji-datasource: default ``default_cache_dir() / name``).
    split: "train" or "test".
    image_size: None keeps the native size; otherwise images are centre-cropped to square and
        resized with Pillow's LANCZOS filter (emoji is always 8; shapes are drawn at 16..32;
        emoji-datasource is 64, or 16 or 32 with the BOX filter; mnist-compose draws its
        canvases at this even size, 28 to 64, default 32).
    download: fetch missing MNIST / Fashion-MNIST / CIFAR-10 files (checked against SHA-256).
    seed: draws the built-in sets and mnist-compose's canvases (the test split uses a different
        seed derived from it).
    num_images: keep only the first N images (for built-ins: draw only N).

    For emoji-datasource only (``_load_emoji_datasource``):
    vendors: "google" (Noto Emoji), "twitter" (Twemoji) or "both" (None: both).
    background: the RGB colour the transparent emoji are composited onto (None: white).
    components: also keep the "Component" category (the five skin-tone swatches).
    """
    _check_choice("dataset", name, DATASETS)
    _check_choice("split", split, SPLITS)
    if num_images is not None and num_images < 1:
        raise ValueError(f"number of images must be at least 1, got {num_images}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image size must be a positive number of pixels, got {image_size}")
    if name != EMOJI_DATASOURCE:
        used = {"--vendors": vendors is not None, "background": background is not None,
                "components": components}  # fmt: skip
        given = [option for option, is_used in used.items() if is_used]
        if given:
            raise ValueError(f"{given[0]} applies to --data {EMOJI_DATASOURCE} only, not to {name}")

    if name in ("emoji", "shapes"):
        return _load_builtin(name, split, image_size, seed, num_images)
    directory = Path(data_dir).expanduser() if data_dir is not None else None
    if name == EMOJI_DATASOURCE:
        return _load_emoji_datasource(
            directory or default_cache_dir() / name, split=split, image_size=image_size,
            vendors="both" if vendors is None else vendors,
            background=WHITE if background is None else background, components=components,
            num_images=num_images,
        )  # fmt: skip
    if name == MNIST_COMPOSE:
        return _load_compose(directory or default_cache_dir() / "mnist", split, image_size,
                             download, seed, num_images)  # fmt: skip
    if name == "folder":
        images, labels, class_names = _load_folder(directory, split, image_size, num_images)
    else:
        directory = directory or default_cache_dir() / name
        if name == "cifar10":
            images, labels = _load_cifar10(directory, split, download)
            class_names = CIFAR10_CLASSES
        else:
            images, labels = _load_idx_set(_IDX_SETS[name], directory, split, download)
            class_names = _IDX_SETS[name].class_names
        images, labels = images[:num_images], labels[:num_images]
        if image_size is not None and image_size != images.shape[-1]:
            images = _resize_array(images, image_size)
    return ImageDataset(name, _to_float(images), labels.astype(np.int64), class_names)


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")


def _to_float(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]; exact at both ends."""
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


# --- built-in sets ------------------------------------------------------------------------------

DEFAULT_NUM_IMAGES = {"emoji": 4096, "shapes": 8192}
SHAPES_SIZES = range(16, 33)


def _load_builtin(
    name: str, split: str, image_size: int | None, seed: int, num_images: int | None
) -> ImageDataset:
    n = num_images or DEFAULT_NUM_IMAGES[name]
    split_seed = _split_seed(seed, split)
    if name == "emoji":
        if image_size not in (None, EMOJI_SIZE):
            raise ValueError(
                f"emoji images are {EMOJI_SIZE}x{EMOJI_SIZE}, got image size {image_size}"
            )
        return make_emoji(n, split_seed)
    size = image_size or SHAPES_SIZES[0]
    if size not in SHAPES_SIZES:
        raise ValueError(
            f"shapes are drawn at {SHAPES_SIZES[0]} to {SHAPES_SIZES[-1]} pixels, "
            f"got image size {size}"
        )
    return make_shapes(n, split_seed, size)


def _split_seed(seed: int, split: str) -> int:
    """The train split uses ``seed`` itself; the test split a different seed derived from it."""
    if split == "train":
        return seed
    return int(np.random.SeedSequence([seed, SPLITS.index(split)]).generate_state(1)[0])


def _balanced_labels(rng: np.random.Generator, num_images: int, num_classes: int) -> np.ndarray:
    """Every class equally often (up to one), in random order."""
    return rng.permutation(np.arange(num_images) % num_classes)


# Each emoji is drawn from a picture: "#" face, "o" eyes and mouth, "." background.
EMOJI_SIZE = 8
_EMOJI_ART = {
    "smile": (
        "..####..",
        ".######.",
        "##o##o##",
        "##o##o##",
        "#o####o#",
        "##oooo##",
        ".######.",
        "..####..",
    ),
    "frown": (
        "..####..",
        ".######.",
        "##o##o##",
        "##o##o##",
        "########",
        "##oooo##",
        ".o####o.",
        "..####..",
    ),
    "surprised": (
        "..####..",
        ".######.",
        "##o##o##",
        "##o##o##",
        "###oo###",
        "##o##o##",
        ".##oo##.",
        "..####..",
    ),
    "wink": (
        "..####..",
        ".######.",
        "##o#####",
        "##o##oo#",
        "#o####o#",
        "##oooo##",
        ".######.",
        "..####..",
    ),
    "neutral": (
        "..####..",
        ".######.",
        "##o##o##",
        "##o##o##",
        "########",
        "##oooo##",
        ".######.",
        "..####..",
    ),
}
EMOJI_CLASSES = tuple(_EMOJI_ART)
_EMOJI_YELLOW = np.array([1.0, 0.82, 0.18])  # face, jittered per image
_EMOJI_BROWN = np.array([0.25, 0.13, 0.05])  # eyes and mouth, jittered per image
_EMOJI_BACKGROUNDS = np.array(  # base colours, jittered per image; none close to the yellow face
    [
        [0.55, 0.75, 0.95],  # sky blue
        [0.95, 0.95, 0.95],  # white
        [0.95, 0.65, 0.75],  # pink
        [0.60, 0.85, 0.65],  # mint
        [0.15, 0.20, 0.35],  # navy
        [0.45, 0.45, 0.50],  # grey
    ]
)


def make_emoji(num_images: int, seed: int) -> ImageDataset:
    """``num_images`` 8x8 RGB faces, one class per expression, drawn deterministically.

    Per image: face colour jittered around yellow, a jittered background colour from a small
    palette, dark-brown features, eyes one or two pixels tall, and a random left-right mirror
    (which moves the wink to the other eye).
    """
    rng = np.random.default_rng(seed)
    art = np.array([[list(row) for row in rows] for rows in _EMOJI_ART.values()])  # (K, 8, 8)
    labels = _balanced_labels(rng, num_images, len(EMOJI_CLASSES))

    face = art[labels] != "."  # (N, 8, 8)
    features = art[labels] == "o"  # (N, 8, 8)
    short_eyes = rng.random(num_images) < 0.5
    features[short_eyes, 3] &= ~features[short_eyes, 2]  # drop the lower half of each open eye
    mirror = rng.random(num_images) < 0.5
    features[mirror] = features[mirror, :, ::-1]  # the face outline is symmetric

    face_rgb = np.clip(_EMOJI_YELLOW + rng.normal(0.0, [0.03, 0.06, 0.06], (num_images, 3)), 0, 1)
    feature_rgb = np.clip(_EMOJI_BROWN + rng.normal(0.0, 0.04, (num_images, 3)), 0, 1)
    background = _EMOJI_BACKGROUNDS[rng.integers(len(_EMOJI_BACKGROUNDS), size=num_images)]
    background_rgb = np.clip(background + rng.normal(0.0, 0.05, (num_images, 3)), 0, 1)

    def colour(rgb: np.ndarray) -> np.ndarray:
        return rgb[:, :, None, None]  # (N, 3, 1, 1)

    images = np.where(  # (N, 3, 8, 8)
        features[:, None],
        colour(feature_rgb),
        np.where(face[:, None], colour(face_rgb), colour(background_rgb)),
    )
    return ImageDataset("emoji", (2 * images - 1).astype(np.float32), labels, EMOJI_CLASSES)


# Shapes are drawn from approximate signed distances (negative inside, in pixels) in a frame
# (u, v) centred on the shape and rotated with it; r is the shape's radius.
def _circle(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    return np.hypot(u, v) - r


def _square(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) - 0.8 * r


def _triangle(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Equilateral, pointing up, circumradius 1.2 r: inside all three edges' half-planes."""
    edges = [u * np.sin(a) + v * np.cos(a) for a in np.deg2rad([0.0, 120.0, 240.0])]
    return np.max(edges, axis=0) - 0.6 * r


def _cross(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """A plus sign: the union of a horizontal and a vertical bar 0.6 r thick."""
    horizontal = np.maximum(np.abs(u) - r, np.abs(v) - 0.3 * r)
    vertical = np.maximum(np.abs(v) - r, np.abs(u) - 0.3 * r)
    return np.minimum(horizontal, vertical)


_SHAPES: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
}
SHAPES_CLASSES = tuple(_SHAPES)


def make_shapes(num_images: int, seed: int, image_size: int = 16) -> ImageDataset:
    """``num_images`` RGB images of one shape each (the class) on a dark background.

    Random position, radius (18-32% of the image), rotation (within 22.5 degrees) and bright
    colour; edges are anti-aliased by turning the signed distance into pixel coverage.
    """
    rng = np.random.default_rng(seed)
    n, size = num_images, image_size
    labels = _balanced_labels(rng, n, len(SHAPES_CLASSES))
    radius = rng.uniform(0.18, 0.32, n) * size
    margin = 1.2 * radius  # the farthest any shape reaches from its centre
    cx, cy = (rng.uniform(margin, size - margin) for _ in range(2))
    angle = rng.uniform(-np.pi / 8, np.pi / 8, n)
    fg = rng.uniform(0.15, 1.0, (n, 3))
    fg *= rng.uniform(0.7, 1.0, (n, 1)) / fg.max(axis=1, keepdims=True)  # brightest channel >= 0.7
    bg = rng.uniform(0.0, 0.15, (n, 3))

    pixel = np.arange(size) + 0.5  # pixel centres
    dx = pixel[None, None, :] - cx[:, None, None]  # (N, 1, S)
    dy = pixel[None, :, None] - cy[:, None, None]  # (N, S, 1)
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u, v = cos * dx + sin * dy, cos * dy - sin * dx  # (N, S, S)

    distance = np.empty((n, size, size))
    for k, shape in enumerate(_SHAPES.values()):
        sel = labels == k
        distance[sel] = shape(u[sel], v[sel], radius[sel, None, None])
    coverage = np.clip(0.5 - distance, 0.0, 1.0)[:, None]  # (N, 1, S, S)
    images = bg[:, :, None, None] * (1 - coverage) + fg[:, :, None, None] * coverage
    return ImageDataset("shapes", (2 * images - 1).astype(np.float32), labels, SHAPES_CLASSES)


def _load_compose(
    directory: Path, split: str, image_size: int | None, download: bool, seed: int,
    num_images: int | None,
) -> ImageDataset:  # fmt: skip
    """Canvases of the MNIST digits of ``split``: the train split draws only the captions
    ``compose.DEFAULT_SPLIT`` keeps for training, the test split draws from all captions."""
    digits, labels = _load_idx_set(_IDX_SETS["mnist"], directory, split, download)
    canvases = compose.draw_canvases(
        digits, labels, num_images or compose.DEFAULT_NUM_CANVASES[split],
        seed=_split_seed(seed, split), captions="seen" if split == "train" else "all",
        image_size=image_size or compose.CANVAS_SIZE,
    )  # fmt: skip
    return ImageDataset(MNIST_COMPOSE, canvases.images, canvases.labels, compose.KINDS,
                        canvases.texts)  # fmt: skip


# --- downloads ----------------------------------------------------------------------------------


def _open_url(url: str) -> tuple[IO[bytes], int | None]:
    """Open ``url``; return the stream and its length if known. The one place that goes online."""
    response = urllib.request.urlopen(url, timeout=60)
    length = response.headers.get("Content-Length")
    return response, int(length) if length else None


def _download(urls: tuple[str, ...], dest: Path, sha256: str) -> None:
    """Fetch the first of ``urls`` that answers into ``dest``; keep it only if its SHA-256 matches.

    Raises OSError (URLError included) when no URL answers, ValueError on a checksum mismatch;
    either way nothing is left at ``dest``.
    """
    error: OSError | None = None
    for url in urls:
        try:
            _download_one(url, dest, sha256)
            return
        except OSError as exc:
            error = exc
    assert error is not None, "no URLs given"
    raise error


def _download_one(url: str, dest: Path, sha256: str) -> None:
    digest = hashlib.sha256()
    stream, length = _open_url(url)
    progress = tqdm(
        total=length, unit="B", unit_scale=True, desc=f"downloading {dest.name}", disable=None
    )  # disable=None: shown on a terminal only
    with stream, progress, atomic_path(dest) as tmp, tmp.open("wb") as out:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            out.write(chunk)
            digest.update(chunk)
            progress.update(len(chunk))
        if digest.hexdigest() != sha256:
            raise ValueError(
                f"download of {url} is corrupt: sha256 {digest.hexdigest()}, expected {sha256}; "
                f"the file was not kept, try again"
            )


# --- MNIST and Fashion-MNIST (IDX files) ---------------------------------------------------------

_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (plain or gzipped) into an array in native byte order.

    Format: two zero bytes, a type code (0x08 uint8 ... 0x0E float64), the number of dimensions,
    each dimension as a big-endian uint32, then the values, big-endian, row-major.
    """
    path = Path(path)
    try:
        with path.open("rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gzipped else path.open("rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path} is not an IDX file (magic number {data[:4].hex() or 'missing'}; expected "
            f"0000 then a type code 08..0e and the number of dimensions)"
        )
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    if len(data) != header + int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(
            f"{path} is truncated or padded: its header promises shape {shape} of {dtype.name} "
            f"but it holds {len(data) - header} bytes of data"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


@dataclass(frozen=True)
class _IdxSet:
    title: str  # for messages
    mirrors: tuple[str, ...]  # base URLs, tried in order
    sha256: dict[str, str]  # file name -> SHA-256 of the published .gz file
    class_names: tuple[str, ...]


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _parse_sha256sums(text: str) -> dict[str, str]:
    """``sha256sum`` output ("<hex>  <file name>" per line) -> {file name: hex}."""
    return {name: digest for digest, name in (line.split() for line in text.strip().splitlines())}


# SHA-256 of the original .gz files as listed by TensorFlow Datasets
# (tensorflow/datasets: tensorflow_datasets/url_checksums/mnist.txt and fashion_mnist.txt).
# The mirrors serve byte-identical copies of the files once published by LeCun et al. / Zalando.
_MNIST_SHA256 = """
440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609  train-images-idx3-ubyte.gz
3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c  train-labels-idx1-ubyte.gz
8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6  t10k-images-idx3-ubyte.gz
f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6  t10k-labels-idx1-ubyte.gz
"""
_FASHION_MNIST_SHA256 = """
3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84  train-images-idx3-ubyte.gz
a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845  train-labels-idx1-ubyte.gz
346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073  t10k-images-idx3-ubyte.gz
67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5  t10k-labels-idx1-ubyte.gz
"""

_IDX_SETS = {
    "mnist": _IdxSet(
        title="MNIST",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        sha256=_parse_sha256sums(_MNIST_SHA256),
        class_names=tuple("0123456789"),
    ),
    "fashion-mnist": _IdxSet(
        title="Fashion-MNIST",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        sha256=_parse_sha256sums(_FASHION_MNIST_SHA256),
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
}


def _find_idx(directory: Path, stem: str) -> Path | None:
    return next((p for p in (directory / f"{stem}.gz", directory / stem) if p.is_file()), None)


def _load_idx_set(
    source: _IdxSet, directory: Path, split: str, download: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 1, 28, 28) uint8, labels (N,) uint8) of one split, downloading if allowed."""
    stems = _IDX_FILES[split]
    paths = [_find_idx(directory, stem) for stem in stems]
    if None in paths:
        expected = f"{stems[0]}.gz and {stems[1]}.gz, gzipped or not"
        reason = _fetch_idx(source, directory, stems) if download else "downloading is off"
        if reason:
            raise ValueError(
                f"no {source.title} {split} files in --data-dir {directory} (expected {expected}); "
                f"{reason}"
            )
        paths = [_find_idx(directory, stem) for stem in stems]
    images_path, labels_path = paths
    assert images_path and labels_path, "downloaded files are in place"
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{images_path} holds {images.dtype.name} of shape {images.shape}; "
            f"expected uint8 images of shape (N, 28, 28)"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1 or labels.max(initial=0) >= 10:
        raise ValueError(f"{labels_path} does not hold labels 0..9 (uint8, one dimension)")
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    return images[:, None], labels


def _fetch_idx(source: _IdxSet, directory: Path, stems: tuple[str, ...]) -> str | None:
    """Download the missing .gz files; return why that failed, or None on success."""
    for stem in stems:
        if _find_idx(directory, stem) is None:
            name = f"{stem}.gz"
            try:
                urls = tuple(mirror + name for mirror in source.mirrors)
                _download(urls, directory / name, source.sha256[name])
            except OSError as exc:
                return f"download failed ({exc}); put the files there or check the connection"
    return None


# --- CIFAR-10 -----------------------------------------------------------------------------------

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
# SHA-256 of cifar-10-python.tar.gz as used by torchvision's prototype datasets
# (pytorch/vision: torchvision/prototype/datasets/_builtin/cifar.py) and Keras-style loaders;
# the authors publish only its MD5, c58f30108f718f92721af3b95e74349a.
_CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
_CIFAR10_BATCHES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}

# What a CIFAR batch pickle may name: NumPy's array reconstruction (numpy.core before NumPy 2,
# numpy._core since; taken from numpy itself so both names resolve without a deprecated import)
# and _codecs.encode, with which Python 3 writes bytes under pickle protocol 2.
_NP_RECONSTRUCT = np.ndarray(0).__reduce__()[0]
_PICKLE_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can build dicts, lists and NumPy arrays and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(
                f"it names {module}.{name}, which a CIFAR batch never does"
            )
        return _PICKLE_ALLOWED[module, name]


def _read_cifar_pickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, OSError, EOFError, ValueError, TypeError, LookupError) as exc:
        raise ValueError(f"refusing to load {path} as a CIFAR-10 batch: {exc}") from exc
    batch = batch if isinstance(batch, dict) else {}
    data, labels = batch.get(b"data"), np.asarray(batch.get(b"labels", []))
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise ValueError(f"{path} is not a CIFAR-10 batch (no uint8 b'data' array)")
    if data.shape[1] != 3072 or labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"{path} is not a CIFAR-10 batch: data {data.shape}, {labels.size} labels; "
            f"expected (N, 3072) and N labels"
        )
    return data, labels


def _read_cifar_binary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Records of 1 label byte + 3072 pixel bytes (1024 red, 1024 green, 1024 blue)."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % 3073:
        raise ValueError(f"{path} is not a CIFAR-10 binary batch ({raw.size} bytes, not N x 3073)")
    records = raw.reshape(-1, 3073)
    return records[:, 1:], records[:, 0]


def _cifar_batch_files(directory: Path, split: str) -> list[Path] | None:
    """The split's batch files in the first layout found under ``directory``, else None."""
    names = _CIFAR10_BATCHES[split]
    layouts = [
        (directory, ""),
        (directory / "cifar-10-batches-py", ""),
        (directory, ".bin"),
        (directory / "cifar-10-batches-bin", ".bin"),
    ]
    for folder, suffix in layouts:
        files = [folder / f"{name}{suffix}" for name in names]
        if all(f.is_file() for f in files):
            return files
    return None


def _load_cifar10(directory: Path, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,)) of one split, downloading if allowed."""
    files = _cifar_batch_files(directory, split)
    if files is None:
        reason = _fetch_cifar10(directory) if download else "downloading is off"
        files = _cifar_batch_files(directory, split)
        if files is None:
            raise ValueError(
                f"no CIFAR-10 {split} batches in --data-dir {directory} (expected "
                f"{', '.join(_CIFAR10_BATCHES[split])} there or in cifar-10-batches-py/, or the "
                f".bin files in cifar-10-batches-bin/); {reason or 'the download lacks them'}"
            )
    batches = [
        _read_cifar_binary(f) if f.suffix == ".bin" else _read_cifar_pickle(f) for f in files
    ]
    data = np.concatenate([data for data, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= len(CIFAR10_CLASSES):
        raise ValueError(f"CIFAR-10 labels in {directory} are outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def _fetch_cifar10(directory: Path) -> str | None:
    """Download and unpack the python batches; return why that failed, or None on success."""
    archive = directory / "cifar-10-python.tar.gz"
    try:
        if not archive.is_file():
            _download((_CIFAR10_URL,), archive, _CIFAR10_SHA256)
        _extract_tar(archive, directory)
    except (OSError, tarfile.TarError) as exc:
        return f"download failed ({exc}); put the batches there or check the connection"
    return None


def _extract_tar(archive: Path, directory: Path) -> None:
    """Extract without letting a member escape ``directory`` (tarfile's "data" filter)."""
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(directory, filter="data")
            return
        root = directory.resolve()
        for member in tar.getmembers():
            target = (root / member.name).resolve()
            if not (member.isfile() or member.isdir()) or not target.is_relative_to(root):
                raise tarfile.TarError(f"unsafe member {member.name!r} in {archive}")
        tar.extractall(directory)


# --- image folders ------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_GREY_MODES = ("L", "1", "LA")


def _image_files(directory: Path, pattern: str) -> list[Path]:
    """Image files under ``directory`` matching ``pattern``, sorted; hidden ones left out."""
    return sorted(
        p
        for p in directory.glob(pattern)
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )


def _load_folder(
    directory: Path | None, split: str, image_size: int | None, num_images: int | None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images under ``directory``, classes from its immediate subfolders (sorted).

    A folder with ``train/`` and ``test/`` subfolders is split by them; otherwise it is one
    training set. Images are greyscale (1 channel) when all are, else RGB.
    """
    if directory is None:
        raise ValueError("dataset 'folder' needs --data-dir, a directory of images")
    if not directory.is_dir():
        raise ValueError(f"--data-dir {directory} is not a directory")
    if (directory / "train").is_dir() and (directory / "test").is_dir():
        directory = directory / split
    elif split != "train":
        raise ValueError(
            f"--data-dir {directory} has no {split} split (no train/ and test/ folders)"
        )

    files, labels, class_names = _classify_files(directory)
    files, labels = files[:num_images], labels[:num_images]
    pictures = [_open_image(f) for f in files]
    mode = "L" if all(p.mode in _GREY_MODES for p in pictures) else "RGB"
    pictures = [p.convert(mode) for p in pictures]
    if image_size is None:
        _check_same_square_size(files, pictures)
    else:
        pictures = [_resize_square(p, image_size) for p in pictures]
    images = np.stack([np.asarray(p).reshape(p.height, p.width, -1) for p in pictures])
    return images.transpose(0, 3, 1, 2), np.array(labels), class_names


def _classify_files(directory: Path) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """All image files with their class index: one class per subfolder, or "all" if none."""
    loose = _image_files(directory, "*")
    subfolders = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = [(d.name, _image_files(d, "**/*")) for d in subfolders]
    classes = [(name, found) for name, found in classes if found]
    if classes and loose:
        raise ValueError(
            f"--data-dir {directory} holds both loose images ({loose[0].name}) and class "
            f"subfolders ({classes[0][0]}); put every image in a class subfolder, or none"
        )
    if not classes and not loose:
        raise ValueError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) in --data-dir {directory} or its subfolders"
        )
    if not classes:
        classes = [("all", loose)]
    files = [f for _, found in classes for f in found]
    labels = [k for k, (_, found) in enumerate(classes) for _ in found]
    return files, labels, tuple(name for name, _ in classes)


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as picture:
            picture.load()
            return picture
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc


def _check_same_square_size(files: list[Path], pictures: list[Image.Image]) -> None:
    first, first_size = files[0], pictures[0].size
    if first_size[0] != first_size[1]:
        raise ValueError(
            f"{first} is {first_size[0]}x{first_size[1]}, not square; "
            f"pass --image-size N to centre-crop and resize all images"
        )
    for path, picture in zip(files, pictures, strict=True):
        if picture.size != first_size:
            raise ValueError(
                f"{path} is {picture.width}x{picture.height} but {first} is "
                f"{first_size[0]}x{first_size[1]}; pass --image-size N to resize all images"
            )


def _resize_square(picture: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square, then resize to ``size`` x ``size`` with LANCZOS."""
    side = min(picture.size)
    left, top = (picture.width - side) // 2, (picture.height - side) // 2
    square = picture.crop((left, top, left + side, top + side))
    return square if side == size else square.resize((size, size), Image.Resampling.LANCZOS)


def _resize_array(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 (N, C, H, W) images to (N, C, size, size) through Pillow, one at a time."""
    channels_last = images.transpose(0, 2, 3, 1)  # (N, H, W, C)
    if channels_last.shape[-1] == 1:
        channels_last = channels_last[..., 0]  # (N, H, W): Pillow's shape for greyscale
    resized = [np.asarray(_resize_square(Image.fromarray(img), size)) for img in channels_last]
    return np.stack(resized).reshape(len(images), size, size, -1).transpose(0, 3, 1, 2)


# --- colour emoji (emoji-datasource) ------------------------------------------------------------

EMOJI_DATASOURCE_VERSION = "16.0.0"  # of the npm packages emoji-datasource-google / -twitter
EMOJI_VENDORS = ("google", "twitter")  # Noto Emoji (Apache 2.0), Twemoji (CC BY 4.0)
VENDOR_CHOICES = ("both", *EMOJI_VENDORS)
EMOJI_DATASOURCE_SIZES = (64, 32, 16)  # the PNGs' own size, and BOX downscales by 2 and by 4
WHITE = (255, 255, 255)  # the default background under the transparent emoji
# emoji.json's categories in Unicode's order (emoji-test.txt's groups, as categories.json lists
# them). The class names are these without "Component" (the five skin-tone swatches), unless
# they are asked for.
EMOJI_CATEGORIES = (
    "Smileys & Emotion",
    "People & Body",
    "Component",
    "Animals & Nature",
    "Food & Drink",
    "Travel & Places",
    "Activities",
    "Objects",
    "Symbols",
    "Flags",
)
EMOJI_DATASOURCE_CLASSES = tuple(c for c in EMOJI_CATEGORIES if c != "Component")
# The Fitzpatrick modifiers that key emoji.json's skin_variations, by their Unicode (CLDR) names.
SKIN_TONES = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}
EMOJI_DATASOURCE_NPM_PACK = (
    f"npm pack emoji-datasource-google@{EMOJI_DATASOURCE_VERSION} "
    f"emoji-datasource-twitter@{EMOJI_DATASOURCE_VERSION}"
)
TWEMOJI_ATTRIBUTION = (
    "Twemoji graphics by Twitter, Inc. and other contributors (github.com/jdecked/twemoji, "
    "v16.0.1), licensed under CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)"
)
_TEST_EVERY = 10  # an emoji is in the test split when the hash of its code points is 0 mod 10
_MAX_MEMBER_BYTES = 16 * 2**20  # larger files in a tarball are refused (emoji.json is 1.3 MB)


def dataset_attribution(name: str, vendors: str | None = None) -> str | None:
    """The attribution line that pictures of data set ``name`` (with ``vendors``, for
    emoji-datasource; None: both), and models trained on it, must carry, or None if it needs
    none: Twemoji's CC BY 4.0 licence requires one."""
    if name == EMOJI_DATASOURCE and vendors in (None, "both", "twitter"):
        return TWEMOJI_ATTRIBUTION
    return None


def emoji_in_test_split(unified: str) -> bool:
    """Whether the emoji with code points ``unified`` (emoji.json's, of the base emoji) is in the
    test split: about one in ten, by the SHA-256 of its code points, so the same on every
    machine, and the same for both vendors' images and all its skin tones."""
    digest = hashlib.sha256(unified.upper().encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") % _TEST_EVERY == 0


# Text conditioning on the colour emoji (train --data emoji-datasource --text): each image's
# caption is its name, with punctuation dropped and the coloured shapes named "<colour> <shape>"
# ("large red square" -> "red square"; the red heart is "heavy black heart" in emoji.json). The
# grid of the 7 colours by the 3 shapes (both vendors draw each) is the held-out test: the
# captions of EMOJI_HELD_OUT are left out of training, while each of their words is seen with
# others ("purple heart", "red square"), so a model draws them only by combining the words.
EMOJI_COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "brown")
EMOJI_SHAPES = ("heart", "circle", "square")
EMOJI_HELD_OUT = ("purple square", "green heart", "orange circle")
# the prompt a text model's faces show at first (inspect, the web page's prompt box), by data
EXAMPLE_PROMPTS = {MNIST_COMPOSE: compose.EXAMPLE_PROMPT, EMOJI_DATASOURCE: EMOJI_HELD_OUT[0]}
_EMOJI_RENAMED = {"heavy black heart": "red heart"}


def emoji_caption(name: str) -> str:
    """The caption of an emoji named ``name`` (emoji.json's name, any case): lowercase words of
    letters, digits and hyphens, and a coloured shape as "<colour> <shape>"."""
    name = name.lower()
    words = "".join(c if c.isalnum() or c == "-" else " " for c in _EMOJI_RENAMED.get(name, name))
    caption = words.split()
    large = caption[:1] == ["large"] and len(caption) == 3
    if large and caption[1] in EMOJI_COLOURS and caption[2] in EMOJI_SHAPES:
        caption = caption[1:]  # "large red circle", "large red square"
    return " ".join(caption)


def emoji_grid() -> tuple[str, ...]:
    """The 21 captions "<colour> <shape>" that the held-out test draws from."""
    return tuple(f"{colour} {shape}" for shape in EMOJI_SHAPES for colour in EMOJI_COLOURS)


def text_training_data(dataset: ImageDataset) -> ImageDataset:
    """The images and captions a text model trains on (``ImageDataset.names`` = the captions):
    mnist-compose's canvases as they are; the colour emoji captioned by ``emoji_caption``, less
    the images captioned with one of ``EMOJI_HELD_OUT``. The same when applied twice."""
    if dataset.name != EMOJI_DATASOURCE:
        return dataset
    if dataset.names is None:
        raise ValueError(f"{EMOJI_DATASOURCE} images need their names to be captioned")
    captions = [emoji_caption(name) for name in dataset.names]
    keep = np.array([caption not in EMOJI_HELD_OUT for caption in captions])
    return ImageDataset(
        dataset.name, dataset.images[keep], dataset.labels[keep], dataset.class_names,
        tuple(c for c, k in zip(captions, keep, strict=True) if k),
    )  # fmt: skip


def caption_vocabulary(captions: Sequence[str]) -> tuple[str, ...]:
    """The vocabulary of a text model trained on ``captions``: the pad token (id 0), then their
    words in sorted order."""
    return (compose.PAD, *sorted({word for caption in captions for word in caption.split()}))


@dataclass(frozen=True)
class _EmojiPackage:
    """One vendor's npm package: an unpacked folder, or the files read from its .tgz."""

    vendor: str
    source: Path  # the folder that holds emoji.json, or the .tgz file
    members: (
        dict[str, bytes] | None
    )  # the .tgz's files by their path inside package/; None: a folder

    def where(self, inner: str) -> str:
        """A file of the package as messages name it."""
        return (
            str(self.source / inner) if self.members is None else f"{self.source}:package/{inner}"
        )

    def read(self, inner: str) -> bytes | None:
        """The bytes of the file at ``inner`` (a path inside the package), None if it has none."""
        if self.members is not None:
            return self.members.get(inner)
        path = self.source / inner
        if not path.is_file():
            return None
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc}") from exc


@dataclass(frozen=True)
class _EmojiImage:
    """One image of emoji.json: a base emoji or one of its skin-tone variations."""

    order: tuple[tuple[int, ...], str, int]  # (base code points, tones, vendor index)
    vendor: str
    image: str  # the PNG's file name in img/<vendor>/64/
    name: (
        str  # emoji.json's name, lowercased, with the skin tones: "thumbs up sign: dark skin tone"
    )
    category: str  # emoji.json's category
    unified: str  # the base emoji's code points, which decide the split


def _load_emoji_datasource(
    directory: Path,
    *,
    split: str,
    image_size: int | None,
    vendors: str,
    background: tuple[int, int, int],
    components: bool,
    num_images: int | None,
) -> ImageDataset:
    """The colour emoji of ``vendors`` in ``directory``, composited onto ``background`` and read
    at ``image_size`` (None: 64) pixels.

    ``directory`` holds each vendor's npm package emoji-datasource-<vendor>@16.0.0, unpacked
    (``<vendor>/``: the tarball's ``package/`` folder) or as ``npm pack`` wrote it
    (``emoji-datasource-<vendor>-16.0.0.tgz``, read in memory). Skin-tone variations are images
    of their own. An emoji's images (both vendors', every skin tone's) are in one split
    (``emoji_in_test_split``) and follow each other, the emoji in the order of their code points.
    """
    _check_choice("vendors", vendors, VENDOR_CHOICES)
    size = image_size or EMOJI_DATASOURCE_SIZES[0]
    if size not in EMOJI_DATASOURCE_SIZES:
        raise ValueError(
            f"{EMOJI_DATASOURCE} images are read at 64, 32 or 16 pixels, got image size {size}"
        )
    if len(background) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in background):
        raise ValueError(
            f"background must be an RGB colour, three integers 0..255, got {background!r}"
        )
    chosen = EMOJI_VENDORS if vendors == "both" else (vendors,)
    packages = {vendor: _open_emoji_package(directory, vendor, vendors) for vendor in chosen}
    records = sorted(
        (r for package in packages.values() for r in _emoji_records(package, components)),
        key=lambda r: r.order,
    )
    records = [r for r in records if emoji_in_test_split(r.unified) == (split == "test")]
    if not records:
        raise ValueError(f"no {split} images of {EMOJI_DATASOURCE} in --data-dir {directory}")
    records = records[:num_images]

    class_names = EMOJI_CATEGORIES if components else EMOJI_DATASOURCE_CLASSES
    pixels = [_emoji_pixels(packages[r.vendor], r.image, background, size) for r in records]
    images = np.stack(pixels).transpose(0, 3, 1, 2)  # (N, 3, size, size) uint8
    labels = np.array([class_names.index(r.category) for r in records], dtype=np.int64)
    names = tuple(r.name for r in records)
    return ImageDataset(EMOJI_DATASOURCE, _to_float(images), labels, class_names, names)


def _open_emoji_package(directory: Path, vendor: str, vendors: str) -> _EmojiPackage:
    """``vendor``'s package in ``directory``: the folder ``<vendor>/`` if it holds emoji.json,
    else the tarball that ``npm pack`` writes; one line saying how to get it if neither is there."""
    folder = directory / vendor
    tarball = directory / f"emoji-datasource-{vendor}-{EMOJI_DATASOURCE_VERSION}.tgz"
    if (folder / "emoji.json").is_file():
        return _EmojiPackage(vendor, folder, None)
    if tarball.is_file():
        return _EmojiPackage(vendor, tarball, _read_npm_tarball(tarball, vendor))
    found = "does not exist" if not directory.is_dir() else f"has no {vendor} package"
    alone = vendors == "both" and directory.is_dir()
    one = "; --vendors google or --vendors twitter reads one alone" if alone else ""
    raise ValueError(
        f"--data-dir {directory} {found} (expected {vendor}/emoji.json with "
        f"{vendor}/img/{vendor}/64/*.png, or {tarball.name}); {EMOJI_DATASOURCE} is never "
        f"downloaded at run time: get it with `{EMOJI_DATASOURCE_NPM_PACK}` in that folder, and "
        f"keep the .tgz files there or unpack each one's package/ folder into google/ and "
        f"twitter/ (mkdir google && tar -xzf emoji-datasource-google-{EMOJI_DATASOURCE_VERSION}"
        f".tgz -C google --strip-components 1){one}"
    )


def _read_npm_tarball(path: Path, vendor: str) -> dict[str, bytes]:
    """The files the loader reads from an npm tarball, in memory: emoji.json and
    img/<vendor>/64/*.png, by their path inside package/. Only regular files under package/ are
    looked at (no links, nothing outside it), and nothing is written to disk."""
    images = f"img/{vendor}/64/"
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                inner = PurePosixPath(member.name)
                if not member.isfile() or inner.parts[:1] != ("package",) or ".." in inner.parts:
                    continue
                name = "/".join(inner.parts[1:])
                wanted = name == "emoji.json" or (
                    name.startswith(images) and "/" not in name[len(images) :]
                )
                if not wanted:
                    continue
                if member.size > _MAX_MEMBER_BYTES:
                    raise ValueError(f"{path}: {member.name} is {member.size} bytes; too large")
                stream = tar.extractfile(member)
                assert stream is not None, "a regular file has contents"
                members[name] = stream.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"cannot read {path} as an npm package tarball (.tgz): {exc}") from exc
    if "emoji.json" not in members:
        raise ValueError(f"{path} holds no package/emoji.json; is it emoji-datasource-{vendor}?")
    return members


def _emoji_records(package: _EmojiPackage, components: bool) -> list[_EmojiImage]:
    """The images that ``package``'s emoji.json lists and the vendor has, skin tones included;
    the Component category only if ``components``."""
    where = package.where("emoji.json")
    try:
        entries = json.loads(package.read("emoji.json") or b"")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {where}: {exc}") from exc
    if not isinstance(entries, list):
        raise ValueError(f"{where} is not emoji-datasource's emoji.json (not a list of emoji)")
    has_image, vendor_index = f"has_img_{package.vendor}", EMOJI_VENDORS.index(package.vendor)
    records = []
    for k, entry in enumerate(entries):
        try:
            unified, category = str(entry["unified"]), entry["category"]
            code_points = tuple(int(c, 16) for c in unified.split("-"))
            name = str(entry.get("name") or entry["short_name"]).lower()
            images = [("", entry["image"], entry.get(has_image, True), name)]
            for tones, variation in (entry.get("skin_variations") or {}).items():
                images.append(
                    (tones, variation["image"], variation.get(has_image, True),
                     f"{name}: {_tone_names(tones)}")
                )  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(
                f"{where}: entry {k} is not an emoji-datasource emoji (it needs unified, image, "
                f"category, name; skin tones 1F3FB..1F3FF): {exc!r}"
            ) from exc
        if category not in EMOJI_CATEGORIES:
            raise ValueError(
                f"{where}: entry {k} ({name}) has category {category!r}; expected one of "
                f"{', '.join(EMOJI_CATEGORIES)}"
            )
        if category == "Component" and not components:
            continue
        for tones, image, present, label in images:
            if not present:  # the vendor draws no picture of it
                continue
            if not (isinstance(image, str) and PurePosixPath(image).name == image != ".."):
                raise ValueError(f"{where}: entry {k} ({name}) names image {image!r}, not a file")
            records.append(
                _EmojiImage((code_points, tones, vendor_index), package.vendor, image, label,
                            category, unified)
            )  # fmt: skip
    return records


def _tone_names(tones: str) -> str:
    """A skin_variations key ("1F3FB", or "1F3FB-1F3FF" for two people) as words."""
    names = [SKIN_TONES[code.upper()] for code in tones.split("-")]
    return ", ".join(dict.fromkeys(names))  # one tone once: "light skin tone", not twice


def _emoji_pixels(
    package: _EmojiPackage, image: str, background: tuple[int, int, int], size: int
) -> np.ndarray:
    """One emoji's (size, size, 3) uint8 RGB: its 64x64 PNG over ``background``, downscaled."""
    inner = f"img/{package.vendor}/64/{image}"
    where, data = package.where(inner), package.read(inner)
    if data is None:
        raise ValueError(f"missing image {where} (emoji.json lists it)")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as picture:
            found = picture.size
            rgba = np.asarray(picture.convert("RGBA")) if found == (64, 64) else None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = "not a PNG file" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise ValueError(f"cannot read image {where}: {reason}") from exc
    if rgba is None:
        raise ValueError(f"image {where} is {found[0]}x{found[1]}; expected 64x64")
    rgb = composite(rgba, background)
    if size == rgb.shape[0]:
        return rgb
    # BOX averages each 2x2 (4x4) block: the exact coverage of a pixel, where LANCZOS would ring
    # around the emoji's hard outlines.
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BOX))


def composite(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """(..., 4) uint8 RGBA with straight (PNG) alpha over an opaque ``background`` colour:
    ``rgb * a + background * (1 - a)`` with ``a = alpha / 255``, rounded to (..., 3) uint8."""
    rgb, alpha = rgba[..., :3].astype(np.int32), rgba[..., 3:].astype(np.int32)
    mixed = rgb * alpha + np.asarray(background, np.int32) * (255 - alpha)  # 255 x the result
    return ((2 * mixed + 255) // 510).astype(np.uint8)  # nearest integer, halves up
