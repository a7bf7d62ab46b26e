"""FID-Inception (models/inception.py) against pytorch-fid's own network, and its use in evaluate.

The oracle file ``oracles/fid_inception.json`` was written by ``oracles/fid_inception.py`` with
pytorch-fid 0.3.0 and torchvision installed: its parameter names and shapes, and its features for
seeded weights and images. Neither library is needed here.
"""

import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from difflab import evaluation as ev
from difflab.cli import main
from difflab.data import make_shapes
from difflab.models.inception import FIDInception

ORACLES = Path(__file__).parent / "oracles"
_spec = importlib.util.spec_from_file_location("fid_oracle", ORACLES / "fid_inception.py")
oracle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(oracle)
REFERENCE = json.loads((ORACLES / "fid_inception.json").read_text())


def shapes_of(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def seeded():
    """FIDInception with the oracle's seeded weights, and those weights."""
    model = FIDInception().eval()
    weights = oracle.seeded_state_dict(shapes_of(model))
    model.load_state_dict(weights)
    return model, weights


def test_parameter_names_and_shapes_are_pytorch_fids():
    theirs = {k: tuple(v) for k, v in REFERENCE["state_dict_shapes"].items()}
    ours = shapes_of(FIDInception())
    assert sorted(set(ours) ^ set(theirs)) == []
    assert ours == theirs
    assert sum(v.numel() for v in FIDInception().parameters()) == 23_850_960


def test_features_match_pytorch_fid_on_seeded_weights(seeded):
    model, _ = seeded
    assert REFERENCE["weight_seed"] == oracle.WEIGHT_SEED
    for images, expected in zip(oracle.seeded_images(), REFERENCE["batches"], strict=True):
        assert list(images.shape) == expected["shape"]
        with torch.no_grad():  # pytorch-fid takes [0, 1]; difflab [-1, 1]
            ours = model.embed(torch.from_numpy(images) * 2 - 1).double().numpy()
        assert ours.shape == (len(images), 2048)
        theirs = np.array(expected["features_every_8th"])
        atol = 2e-5 * np.abs(theirs).max()
        assert np.abs(theirs[1] - theirs[0]).max() > 100 * atol  # the images' features differ
        np.testing.assert_allclose(ours[:, :: REFERENCE["every"]], theirs, atol=atol)
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), expected["norm"], rtol=1e-5)
        np.testing.assert_allclose(ours.mean(axis=1), expected["mean"], atol=atol)


def test_grey_images_are_read_as_three_equal_channels(seeded):
    model, _ = seeded
    grey = torch.rand(2, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model.embed(grey), model.embed(grey.repeat(1, 3, 1, 1)))


def test_load_inception_reads_pytorch_fid_files_and_safetensors(seeded, tmp_path):
    model, weights = seeded
    # pytorch-fid's file predates BatchNorm's num_batches_tracked: a state dict without it loads
    old_style = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}
    torch.save(old_style, tmp_path / ev.INCEPTION_FILE)
    save_file(weights, str(tmp_path / "inception.safetensors"))
    images = np.random.default_rng(0).uniform(-1, 1, (3, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = model.embed(torch.from_numpy(images)).numpy()
    digests = set()
    for name in (ev.INCEPTION_FILE, "inception.safetensors"):
        evaluator = ev.load_inception(tmp_path / name)
        assert evaluator.is_inception and evaluator.feature_dim == 2048
        np.testing.assert_allclose(evaluator.features(images), expected, rtol=1e-5, atol=1e-5)
        digests.add(evaluator.digest)
        with pytest.raises(ValueError, match="class accuracy needs the project's evaluator"):
            evaluator.predict(images)
        with pytest.raises(ValueError, match="expects \\(N, 1 or 3, H, W\\)"):
            evaluator.features(images[:, :2])
    assert len(digests) == 1  # same tensors, same reference cache


class Payload:
    def __reduce__(self):
        return (print, ("code from a weights file ran",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the hand-made code.pth
def test_load_inception_rejects_other_files_in_one_line(seeded, tmp_path):
    _, weights = seeded
    torch.save({**weights, "fc.bias": torch.zeros(1000)}, tmp_path / "imagenet_fc.pth")
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00not a torch file")
    (tmp_path / "text.pth").write_text("junk\n")  # the unpickler fails with a KeyError here
    torch.save(weights, tmp_path / "whole.pth")
    whole = (tmp_path / "whole.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "code.pth").write_bytes(pickle.dumps(Payload()))
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    for name, match in [
        ("missing.pth", "does not exist"),
        (
            "other.pth",
            "tensors in the file: 1; 472 missing \\(first: Conv2d_1a_3x3.conv.weight\\), 1 unexpected",
        ),
        ("junk.pth", "not pytorch-fid's FID-Inception state dict"),
        ("code.pth", "not pytorch-fid's FID-Inception state dict"),
        ("text.pth", "not a readable torch file"),
        ("truncated.pth", "not pytorch-fid's FID-Inception state dict"),
        ("list.pth", "holds a list, not a state dict"),
        ("imagenet_fc.pth", "tensors in the file: 566; 1 of another shape \\(first: fc.bias\\)"),
    ]:
        with pytest.raises(ValueError, match=match) as err:
            ev.load_inception(tmp_path / name)
        assert "\n" not in str(err.value)


def test_evaluate_with_inception_weights_scores_in_inception_features(
    seeded, tmp_path, monkeypatch, capsys, tiny_checkpoint
):
    """``difflab evaluate --inception-weights``: the report's FID is that of Inception features."""
    _, weights = seeded
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path / "cache"))
    save_file(weights, str(tmp_path / "inception.safetensors"))
    folder = tmp_path / "real"
    folder.mkdir()
    real = make_shapes(60, seed=0, image_size=16)  # 54 train + every 10th held out: 6 test
    for i, image in enumerate(real.images):
        pixels = np.round((image.transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    fake = make_shapes(12, seed=1, image_size=16).images
    np.savez(tmp_path / "fake.npz", images=fake)
    out = tmp_path / "metrics.json"
    argv = ["evaluate", "--images", str(tmp_path / "fake.npz"), "--data", "folder",
            "--data-dir", str(folder), "--inception-weights", str(tmp_path / "inception.safetensors"),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Inception features of 6 test and 54 training folder images" in printed
    assert "2048-d features" in printed and "class accuracy" not in printed
    report = json.loads(out.read_text())
    m, setup = report["metrics"], report["setup"]
    assert setup["feature_network"] == "inception" and setup["feature_dim"] == 2048
    assert setup["reference_test_images"] == 6 and setup["reference_train_images"] == 54
    assert m["class_accuracy"] is None
    cache_file = Path(setup["reference_cache"])
    assert cache_file.is_file() and cache_file.parent == tmp_path / "cache" / "evaluators"

    # Oracle: the same FID from FIDInception features computed here, of the same decoded images
    evaluator = ev.load_inception(tmp_path / "inception.safetensors")
    _, test = ev.reference_datasets("folder", folder)
    expected = ev.fid_from_features(evaluator.features(fake), evaluator.features(test.images))
    assert m["fid"] == pytest.approx(expected, rel=1e-4)

    # the second run reads the cached reference and does not announce the work again
    assert main(argv) == 0
    assert "Inception features of" not in capsys.readouterr().out
    assert json.loads(out.read_text())["metrics"]["fid"] == pytest.approx(m["fid"], rel=1e-6)

    # a class-conditional checkpoint (8 px emoji classes) scored against the same folder (resized
    # to 8 px): generated, scored in Inception features, no class accuracy and no class check
    ckpt = tiny_checkpoint(tmp_path / "cond.safetensors", num_classes=5)
    argv = ["evaluate", "--checkpoint", str(ckpt), "--num-samples", "10", "--sampler", "ddim",
            "--steps", "3", "--data", "folder", "--data-dir", str(folder),
            "--inception-weights", str(tmp_path / "inception.safetensors"),
            "--reference-train-images", "20", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["setup"]["num_images"] == 10 and report["setup"]["reference_train_images"] == 20
    assert report["metrics"]["class_accuracy"] is None and report["metrics"]["fid"] > 0


def test_evaluate_gives_pytorch_fids_fid_on_png_folders(seeded, tmp_path, monkeypatch, capsys):
    """The whole pipeline (PNG -> pixels -> resize -> features -> FID) against pytorch-fid's own
    ``calculate_fid_given_paths`` on the same seeded folders and weights."""
    _, weights = seeded
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path / "cache"))
    save_file(weights, str(tmp_path / "inception.safetensors"))
    oracle.seeded_folders(tmp_path)
    out = tmp_path / "metrics.json"
    argv = ["evaluate", "--images", str(tmp_path / "generated"), "--data", "folder",
            "--data-dir", str(tmp_path / "real"),
            "--inception-weights", str(tmp_path / "inception.safetensors"), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    setup = json.loads(out.read_text())["setup"]
    assert setup["num_images"] == REFERENCE["folder_sizes"]["generated"]
    assert setup["reference_test_images"] == REFERENCE["folder_sizes"]["real/test"]
    fid = json.loads(out.read_text())["metrics"]["fid"]
    assert REFERENCE["folder_fid"] > 1.0  # the two folders differ
    assert fid == pytest.approx(REFERENCE["folder_fid"], rel=1e-4)
