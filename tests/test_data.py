"""Tests for difflab.data: every loader on tiny files written here; no test touches the network."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difflab import data
from difflab.data import ImageDataset, load_dataset, make_emoji, make_shapes, read_idx

REAL_MNIST = Path(__file__).parents[2] / "shared/data/mnist"


# --- helpers ------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` as an IDX file (uint8 or big-endian int32)."""
    code = {np.dtype("u1"): 0x08, np.dtype("i4"): 0x0C}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    payload = idx_bytes(array)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def tiny_mnist(n: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    return images, np.arange(n, dtype=np.uint8) % 10


def write_mnist(directory: Path, split: str = "train", n: int = 5, gz: bool = True):
    images, labels = tiny_mnist(n)
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if gz else ""
    write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return images, labels


def cifar_batch(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), [int(x) for x in rng.integers(0, 10, n)]


def write_cifar_python(directory: Path, protocol: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Five train batches of 2 images and a test batch of 3, like cifar-10-batches-py."""
    directory.mkdir(parents=True, exist_ok=True)
    all_data, all_labels = [], []
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        batch_data, batch_labels = cifar_batch(3 if name == "test_batch" else 2, seed=i)
        batch = {b"batch_label": b"fake", b"data": batch_data, b"labels": batch_labels}
        (directory / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        all_data.append(batch_data)
        all_labels.append(batch_labels)
    train = np.concatenate(all_data[:5]), np.concatenate(all_labels[:5])
    return train


def save_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def grey(value: int, size: tuple[int, int] = (4, 4)) -> np.ndarray:
    return np.full(size, value, dtype=np.uint8)


class FakeResponse(io.BytesIO):
    """What ``_open_url`` returns in tests: a stream of fixed bytes."""


def serve(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes]) -> list[str]:
    """Make ``_open_url`` answer from ``files`` (keyed by URL file name); return the URLs asked."""
    asked: list[str] = []

    def fake_open(url: str):
        asked.append(url)
        payload = files[url.rsplit("/", 1)[-1]]
        return FakeResponse(payload), len(payload)

    monkeypatch.setattr(data, "_open_url", fake_open)
    return asked


# --- general ------------------------------------------------------------------------------------


def test_unknown_dataset_and_split_are_one_clear_line():
    with pytest.raises(ValueError, match=r"unknown dataset 'mnst'; expected one of emoji, shapes"):
        load_dataset("mnst")
    with pytest.raises(ValueError, match=r"unknown split 'val'; expected one of train, test"):
        load_dataset("emoji", split="val")
    with pytest.raises(ValueError, match="at least 1, got 0"):
        load_dataset("emoji", num_images=0)


def test_default_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("DIFFLAB_CACHE")
    assert data.default_cache_dir() == tmp_path / "xdg" / "difflab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.default_cache_dir() == Path.home() / ".cache" / "difflab"


def test_image_dataset_properties_and_shape_check():
    ds = ImageDataset("x", np.zeros((3, 1, 5, 5), np.float32), np.zeros(3, np.int64), ("all",))
    assert (ds.num_images, ds.channels, ds.image_size, ds.num_classes) == (3, 1, 5, 1)
    with pytest.raises(ValueError, match="square"):
        ImageDataset("x", np.zeros((3, 1, 5, 4), np.float32), np.zeros(3, np.int64), ("all",))


# --- read_idx -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["images.idx", "images.idx.gz"])
def test_read_idx_returns_exact_arrays(tmp_path, name):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([7, 0, 255], dtype=np.uint8)
    out = read_idx(write_idx(tmp_path / name, images))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, images)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / f"l{name}", labels)), labels)


def test_read_idx_reads_big_endian_int32(tmp_path):
    values = np.array([[1, -2], [70000, -(2**31)]], dtype=np.int32)
    out = read_idx(write_idx(tmp_path / "ints.idx", values))
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, values)


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path):
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x12\x34\x08\x01" + bytes(8))
    with pytest.raises(ValueError, match=r"bad\.idx is not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short.idx"
    short.write_bytes(idx_bytes(np.zeros((4, 2), np.uint8))[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(short)


# --- MNIST / Fashion-MNIST ----------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_loads_tiny_files_exactly(tmp_path, gz):
    images, labels = write_mnist(tmp_path, gz=gz)
    ds = load_dataset("mnist", data_dir=tmp_path, download=False)
    assert ds.images.shape == (5, 1, 28, 28) and ds.images.dtype == np.float32
    assert ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.images[0, 0, 0, 0] == -1.0 and ds.images[0, 0, 0, 1] == 1.0
    np.testing.assert_allclose(ds.images[:, 0], images / 127.5 - 1, atol=1e-6)
    assert ds.class_names == tuple("0123456789")


def test_mnist_test_split_num_images_and_resize(tmp_path):
    write_mnist(tmp_path, split="test", n=7)
    ds = load_dataset("mnist", data_dir=tmp_path, split="test", download=False, num_images=3)
    assert ds.num_images == 3
    resized = load_dataset("mnist", data_dir=tmp_path, split="test", download=False, image_size=14)
    assert resized.images.shape == (7, 1, 14, 14)
    assert resized.images.min() >= -1.0 and resized.images.max() <= 1.0


def test_fashion_mnist_has_its_class_names(tmp_path):
    write_mnist(tmp_path)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
    assert ds.class_names[:2] == ("T-shirt/top", "Trouser") and ds.num_classes == 10


def test_mnist_count_mismatch_and_wrong_shape_raise(tmp_path):
    images, labels = tiny_mnist(5)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels[:4])
    with pytest.raises(ValueError, match=r"has 5 images but .* has 4 labels"):
        load_dataset("mnist", data_dir=tmp_path, download=False)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images[:, :14])
    with pytest.raises(ValueError, match=r"expected uint8 images of shape \(N, 28, 28\)"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


def test_mnist_missing_files_without_download(tmp_path, monkeypatch):
    serve(monkeypatch, {})  # any network use would raise KeyError
    with pytest.raises(ValueError, match=r"no MNIST train files in --data-dir .*train-images"):
        load_dataset("mnist", data_dir=tmp_path / "nothing", download=False)


def test_mnist_offline_gives_the_same_clear_error(tmp_path, monkeypatch):
    def offline(url):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(data, "_open_url", offline)
    with pytest.raises(ValueError, match=r"--data-dir .*download failed .*no network"):
        load_dataset("mnist", data_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_download_with_wrong_checksum_keeps_nothing(tmp_path, monkeypatch):
    serve(monkeypatch, {"train-images-idx3-ubyte.gz": b"not mnist at all"})
    with pytest.raises(ValueError, match=r"corrupt: sha256 .* expected 440fcabf"):
        load_dataset("mnist", data_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_download_tries_mirrors_and_verifies(tmp_path, monkeypatch):
    source = tmp_path / "source"
    source.mkdir()
    write_mnist(source)
    files = {p.name: p.read_bytes() for p in source.iterdir()}
    sums = {name: hashlib.sha256(payload).hexdigest() for name, payload in files.items()}
    patched = dataclasses.replace(data._IDX_SETS["mnist"], sha256=sums)
    monkeypatch.setitem(data._IDX_SETS, "mnist", patched)
    asked = serve(monkeypatch, files)
    first_mirror = data._open_url

    def first_mirror_down(url):
        if url.startswith(patched.mirrors[0]):
            raise urllib.error.URLError("mirror down")
        return first_mirror(url)

    monkeypatch.setattr(data, "_open_url", first_mirror_down)
    ds = load_dataset("mnist", data_dir=tmp_path / "cache")
    assert ds.num_images == 5
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(files)
    assert all(url.startswith(patched.mirrors[1]) for url in asked) and len(asked) == 2


# --- CIFAR-10 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar10_python_batches(tmp_path, protocol):
    batch_dir = tmp_path / "cifar-10-batches-py"
    train_data, train_labels = write_cifar_python(batch_dir, protocol)
    ds = load_dataset("cifar10", data_dir=tmp_path, download=False)
    assert ds.images.shape == (10, 3, 32, 32) and ds.class_names[0] == "airplane"
    np.testing.assert_array_equal(ds.labels, train_labels)
    expected = train_data.reshape(10, 3, 32, 32) / 127.5 - 1
    np.testing.assert_allclose(ds.images, expected, atol=1e-6)
    test = load_dataset("cifar10", data_dir=batch_dir, split="test", download=False)
    assert test.num_images == 3


def test_cifar10_numpy1_pickles_load_and_resize(tmp_path):
    """Real batches name numpy.core.multiarray (NumPy 1); that must load without a warning."""
    write_cifar_python(tmp_path)
    for batch in tmp_path.iterdir():
        pickled = batch.read_bytes()
        assert b"numpy._core.multiarray" in pickled
        batch.write_bytes(pickled.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    ds = load_dataset("cifar10", data_dir=tmp_path, split="test", download=False, image_size=16)
    assert ds.images.shape == (3, 3, 16, 16)
    assert ds.images.min() >= -1.0 and ds.images.max() <= 1.0


class RunsShellCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_cifar10_refuses_malicious_pickle_without_running_it(tmp_path):
    write_cifar_python(tmp_path)
    marker = tmp_path / "pwned"
    payload = {b"data": RunsShellCommand(f"touch {marker}"), b"labels": []}
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(ValueError, match=r"refusing to load .*data_batch_3.*(posix|os)\.system"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)
    assert not marker.exists()


def test_cifar10_rejects_pickle_that_is_not_a_batch(tmp_path):
    write_cifar_python(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"labels": [1]}, protocol=2))
    with pytest.raises(ValueError, match="test_batch is not a CIFAR-10 batch"):
        load_dataset("cifar10", data_dir=tmp_path, split="test", download=False)


def test_cifar10_binary_batches(tmp_path):
    batch_dir = tmp_path / "cifar-10-batches-bin"
    batch_dir.mkdir()
    records = []
    for k in range(1, 6):
        pixels, labels = cifar_batch(2, seed=k)
        records.append((pixels, labels))
        rows = np.concatenate([np.array(labels, np.uint8)[:, None], pixels], axis=1)
        rows.tofile(batch_dir / f"data_batch_{k}.bin")
    ds = load_dataset("cifar10", data_dir=tmp_path, download=False)
    pixels = np.concatenate([p for p, _ in records])
    np.testing.assert_array_equal(ds.labels, np.concatenate([lab for _, lab in records]))
    np.testing.assert_allclose(ds.images, pixels.reshape(10, 3, 32, 32) / 127.5 - 1, atol=1e-6)
    (batch_dir / "data_batch_2.bin").write_bytes(bytes(3000))
    with pytest.raises(ValueError, match=r"data_batch_2\.bin is not a CIFAR-10 binary batch"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)


def test_cifar10_missing_without_download(tmp_path):
    with pytest.raises(ValueError, match=r"no CIFAR-10 train batches in --data-dir .*data_batch_1"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)


def make_tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def test_cifar10_download_verifies_and_extracts(tmp_path, monkeypatch):
    source = tmp_path / "source" / "cifar-10-batches-py"
    write_cifar_python(source)
    archive = make_tar_gz(
        {f"cifar-10-batches-py/{p.name}": p.read_bytes() for p in source.iterdir()}
    )
    monkeypatch.setattr(data, "_CIFAR10_SHA256", hashlib.sha256(archive).hexdigest())
    serve(monkeypatch, {"cifar-10-python.tar.gz": archive})
    ds = load_dataset("cifar10", data_dir=tmp_path / "cache")
    assert ds.num_images == 10
    assert (tmp_path / "cache" / "cifar-10-batches-py" / "test_batch").is_file()


def test_cifar10_download_refuses_archive_escaping_its_folder(tmp_path, monkeypatch):
    archive = make_tar_gz({"../escaped": b"x"})
    monkeypatch.setattr(data, "_CIFAR10_SHA256", hashlib.sha256(archive).hexdigest())
    serve(monkeypatch, {"cifar-10-python.tar.gz": archive})
    with pytest.raises(ValueError, match="download failed"):
        load_dataset("cifar10", data_dir=tmp_path / "cache")
    assert not (tmp_path / "escaped").exists()


# --- image folders ------------------------------------------------------------------------------


def test_folder_grey_classes_from_subfolders(tmp_path):
    save_png(tmp_path / "cats" / "a.png", grey(0))
    save_png(tmp_path / "cats" / "b.png", grey(255))
    save_png(tmp_path / "dogs" / "c.png", grey(51))
    ds = load_dataset("folder", data_dir=tmp_path)
    assert ds.class_names == ("cats", "dogs")
    assert ds.images.shape == (3, 1, 4, 4)
    np.testing.assert_array_equal(ds.labels, [0, 0, 1])
    np.testing.assert_allclose(ds.images[:, 0, 0, 0], [-1.0, 1.0, 51 / 127.5 - 1], atol=1e-6)


def test_folder_any_colour_image_makes_the_set_rgb(tmp_path):
    save_png(tmp_path / "a.png", grey(10))
    save_png(tmp_path / "b.png", np.full((4, 4, 3), (255, 0, 0), np.uint8))
    ds = load_dataset("folder", data_dir=tmp_path)
    assert ds.class_names == ("all",) and ds.channels == 3
    np.testing.assert_array_equal(ds.labels, [0, 0])
    np.testing.assert_allclose(ds.images[1, :, 0, 0], [1.0, -1.0, -1.0])
    np.testing.assert_allclose(ds.images[0, :, 0, 0], 10 / 127.5 - 1, atol=1e-6)


def test_folder_mixed_sizes_name_the_file(tmp_path):
    save_png(tmp_path / "a.png", grey(0, (4, 4)))
    save_png(tmp_path / "b.png", grey(0, (6, 6)))
    with pytest.raises(ValueError, match=r"b\.png is 6x6 but .*a\.png is 4x4; .*--image-size"):
        load_dataset("folder", data_dir=tmp_path)


def test_folder_image_size_crops_and_resizes(tmp_path):
    wide = np.zeros((8, 16), np.uint8)
    wide[:, 4:12] = 255  # the centre square is all white, the sides black
    save_png(tmp_path / "a.png", wide)
    save_png(tmp_path / "b.png", grey(0, (6, 6)))
    ds = load_dataset("folder", data_dir=tmp_path, image_size=4)
    assert ds.images.shape == (2, 1, 4, 4)
    np.testing.assert_allclose(ds.images[0], 1.0)
    with pytest.raises(ValueError, match=r"a\.png is 16x8, not square"):
        load_dataset("folder", data_dir=tmp_path)


def test_folder_corrupt_image_names_the_file(tmp_path):
    save_png(tmp_path / "good.png", grey(0))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        load_dataset("folder", data_dir=tmp_path)


def test_folder_empty_or_missing_names_the_folder(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no images .* in --data-dir .*empty"):
        load_dataset("folder", data_dir=tmp_path / "empty")
    with pytest.raises(ValueError, match="needs --data-dir"):
        load_dataset("folder")
    with pytest.raises(ValueError, match="is not a directory"):
        load_dataset("folder", data_dir=tmp_path / "nope")


def test_folder_train_and_test_subfolders_are_splits(tmp_path):
    save_png(tmp_path / "train" / "x" / "a.png", grey(0))
    save_png(tmp_path / "train" / "y" / "b.png", grey(0))
    save_png(tmp_path / "test" / "x" / "c.png", grey(255))
    test = load_dataset("folder", data_dir=tmp_path, split="test")
    assert test.num_images == 1 and test.class_names == ("x",)
    assert load_dataset("folder", data_dir=tmp_path).num_classes == 2
    with pytest.raises(ValueError, match="has no test split"):
        load_dataset("folder", data_dir=tmp_path / "train", split="test")


def test_folder_skips_hidden_files_and_folders(tmp_path):
    save_png(tmp_path / "cls" / "a.png", grey(0))
    save_png(tmp_path / "cls" / ".ipynb_checkpoints" / "a.png", grey(0, (9, 9)))
    save_png(tmp_path / ".hidden" / "b.png", grey(0))
    (tmp_path / "cls" / "notes.txt").write_text("not an image")
    ds = load_dataset("folder", data_dir=tmp_path)
    assert ds.num_images == 1 and ds.class_names == ("cls",)


def test_folder_refuses_loose_images_beside_class_folders(tmp_path):
    save_png(tmp_path / "loose.png", grey(0))
    save_png(tmp_path / "cls" / "a.png", grey(0))
    with pytest.raises(ValueError, match=r"both loose images \(loose\.png\) and class subfolders"):
        load_dataset("folder", data_dir=tmp_path)


# --- built-in sets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda seed: make_emoji(200, seed), (3, 8, 8)),
        (lambda seed: make_shapes(200, seed), (3, 16, 16)),
    ],
    ids=["emoji", "shapes"],
)
def test_builtin_sets_are_deterministic_distributions(make, shape):
    ds = make(1)
    assert ds.images.shape == (200, *shape) and ds.images.dtype == np.float32
    assert ds.images.min() >= -1.0 and ds.images.max() <= 1.0
    assert ds.images.min() < -0.5 and ds.images.max() > 0.5  # uses the range, not a grey blur
    np.testing.assert_array_equal(make(1).images, ds.images)
    np.testing.assert_array_equal(make(1).labels, ds.labels)
    assert not np.array_equal(make(2).images, ds.images)
    counts = np.bincount(ds.labels, minlength=ds.num_classes)
    assert counts.min() >= 200 // ds.num_classes  # every class, balanced
    means = np.stack([ds.images[ds.labels == k].mean(axis=0) for k in range(ds.num_classes)])
    gaps = np.abs(means[:, None] - means[None]).mean(axis=(2, 3, 4))  # (K, K)
    assert gaps[~np.eye(ds.num_classes, dtype=bool)].min() > 0.01
    assert len(np.unique(ds.images.reshape(200, -1), axis=0)) > 150  # not a handful of images


def test_emoji_classes_and_faces():
    ds = make_emoji(50, seed=0)
    assert ds.num_classes >= 4 and "smile" in ds.class_names
    corner, centre = ds.images[:, :, 0, 0], ds.images[:, :, 3:5, 3:5].mean(axis=(2, 3))
    assert not np.allclose(corner, centre)  # face is drawn over the background
    red, blue = centre[:, 0], centre[:, 2]
    assert (red > blue + 0.5).mean() > 0.9  # yellowish faces


def test_load_dataset_builtins_defaults_splits_and_sizes():
    emoji = load_dataset("emoji")
    assert emoji.num_images == 4096 and emoji.name == "emoji"
    np.testing.assert_array_equal(emoji.images[:10], make_emoji(4096, 0).images[:10])
    test = load_dataset("emoji", split="test", num_images=64)
    assert not np.array_equal(test.images, load_dataset("emoji", num_images=64).images)
    shapes = load_dataset("shapes", image_size=24, num_images=8, seed=3)
    assert shapes.images.shape == (8, 3, 24, 24)
    with pytest.raises(ValueError, match="emoji images are 8x8, got image size 16"):
        load_dataset("emoji", image_size=16)
    with pytest.raises(ValueError, match="16 to 32 pixels, got image size 64"):
        load_dataset("shapes", image_size=64)


# --- real data (slow) ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason=f"no real MNIST in {REAL_MNIST}")
def test_real_mnist():
    train = load_dataset("mnist", data_dir=REAL_MNIST, download=False)
    test = load_dataset("mnist", data_dir=REAL_MNIST, split="test", download=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.num_images == 10000
    assert train.images.min() == -1.0 and train.images.max() == 1.0
    for ds in (train, test):
        counts = np.bincount(ds.labels, minlength=10)
        assert counts.min() > 0.08 * ds.num_images and counts.max() < 0.12 * ds.num_images
