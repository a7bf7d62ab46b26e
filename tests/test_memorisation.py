"""The memorisation check (difflab.evaluation.memorisation, `difflab evaluate --memorisation`):
nearest neighbours against brute force, known answers on synthetic sets (copies of training
images are at distance 0 and all flagged; held-out images give a ratio of 1), the picture of the
closest pairs, `evaluate --vendors`, and one-line errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difflab import evaluation as ev
from difflab.cli import main
from difflab.data import EMOJI_DATASOURCE, load_dataset
from test_colour_pictures import PALETTE, TINY_COLOUR, colour_count, colour_packages


def brute_force(query, reference):
    q = np.asarray(query, np.float64).reshape(len(query), -1)
    r = np.asarray(reference, np.float64).reshape(len(reference), -1)
    d = np.sqrt(((q[:, None] - r[None]) ** 2).sum(-1))  # (Nq, Nr)
    return d.min(1), d.argmin(1)


@pytest.fixture(scope="module")
def sets():
    """Training, held-out and a second held-out set of one distribution: 3x8x8 images in [-1, 1]
    (a smooth random colour field each, so the sets are not all equally far apart)."""
    rng = np.random.default_rng(0)

    def draw(n):
        coarse = rng.uniform(-1, 1, (n, 3, 4, 4))
        return np.clip(coarse.repeat(2, 2).repeat(2, 3) + rng.normal(0, 0.2, (n, 3, 8, 8)), -1, 1)

    return draw(400).astype(np.float32), draw(200).astype(np.float32), draw(200).astype(np.float32)


# --- nearest neighbours ----------------------------------------------------------------------


@pytest.mark.parametrize("block_rows", [None, 1, 7, 1000])
def test_nearest_neighbours_match_brute_force_in_any_blocks(sets, block_rows):
    train, held_out, _ = sets
    distance, index = ev.nearest_neighbours(held_out[:50], train, block_rows=block_rows)
    want_d, want_i = brute_force(held_out[:50], train)
    np.testing.assert_allclose(distance, want_d, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(index, want_i)
    assert distance.dtype == np.float64 and index.dtype == np.int64


def test_nearest_neighbours_of_copies_are_exactly_zero_and_ties_take_the_lowest_index():
    rng = np.random.default_rng(1)
    reference = rng.normal(0, 50, (30, 5)).astype(np.float32)  # large values: float32 rounding
    reference[20] = reference[3]  # a duplicate: the lowest index wins
    query = reference[[3, 7, 29]] + 0.0
    distance, index = ev.nearest_neighbours(torch.from_numpy(query), reference, block_rows=4)
    assert distance.tolist() == [0.0, 0.0, 0.0] and index.tolist() == [3, 7, 29]


def test_features_rows_work_like_images():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(20, 16)).astype(np.float32)  # compared as float32 values
    train = rng.normal(size=(50, 16)).astype(np.float32)
    distance, index = ev.nearest_neighbours(features, train)
    want_d, want_i = brute_force(features, train)
    np.testing.assert_allclose(distance, want_d, rtol=1e-10)
    np.testing.assert_array_equal(index, want_i)


# --- the check on sets whose answer is known ------------------------------------------------------


def test_copies_of_training_images_are_at_zero_and_all_flagged(sets):
    train, held_out, _ = sets
    picks = np.array([5, 0, 399, 123, 5])
    check = ev.memorisation_check(train[picks], train, held_out)
    assert check.generated_distance.tolist() == [0.0] * 5
    assert check.generated_index.tolist() == picks.tolist()
    s = check.summary()
    assert s["median_ratio"] == 0.0 and s["likely_copy_fraction"] == 1.0
    assert s["likely_copies"] == 5 and s["exact_copies"] == 5 and s["generated_min"] == 0.0
    assert s["held_out_median"] > 0 and s["num_train"] == 400 and s["num_held_out"] == 200


def test_held_out_images_as_samples_give_a_ratio_of_one(sets):
    train, held_out, other = sets
    itself = ev.memorisation_check(held_out, train, held_out).summary()
    assert itself["median_ratio"] == 1.0  # the same images: the same distances
    assert itself["likely_copy_fraction"] == pytest.approx(0.05, abs=0.006)  # by definition
    fresh = ev.memorisation_check(other, train, held_out).summary()  # new draws, never trained on
    assert 0.9 < fresh["median_ratio"] < 1.1
    assert fresh["likely_copy_fraction"] < 0.12 and fresh["exact_copies"] == 0


def test_a_model_that_copies_most_of_the_time_is_caught(sets):
    train, held_out, other = sets
    rng = np.random.default_rng(3)
    near = train[:120] + rng.normal(0, 0.01, train[:120].shape).astype(np.float32)  # near-copies
    s = ev.memorisation_check(np.concatenate([near, other[:80]]), train, held_out).summary()
    assert 0.6 <= s["likely_copy_fraction"] < 0.7 and s["exact_copies"] == 0
    assert s["median_ratio"] < 0.2  # the median sample is a near-copy


def test_the_check_in_feature_space(sets):
    train, held_out, _ = sets
    flat = {k: v.reshape(len(v), -1) @ np.ones((192, 4)) for k, v in
            {"train": train, "held": held_out}.items()}  # fmt: skip
    check = ev.memorisation_check(flat["train"][:10], flat["train"], flat["held"], space="features")
    assert check.space == "features" and check.summary()["likely_copy_fraction"] == 1.0


# --- the picture ---------------------------------------------------------------------------------


def test_the_picture_shows_the_closest_pairs_first_in_colour(sets, tmp_path):
    train, held_out, other = sets
    colours = np.asarray(PALETTE[:2], np.float32) / 127.5 - 1  # two flat colour training images
    train = train.copy()
    train[[10, 20]] = colours[:, :, None, None]
    generated = np.concatenate([other[:30], train[[20]]])  # the copy is the last sample
    check = ev.memorisation_check(generated, train, held_out)
    assert check.closest(3)[0] == 30  # the copy first
    path = ev.save_memorisation_picture(check, generated, train, tmp_path / "pairs.png",
                                        num_pairs=6, attribution="Twemoji by ...")  # fmt: skip
    with Image.open(path) as img:
        img.load()
        assert img.mode == "RGB" and img.size[0] > 300
        pixels = np.asarray(img)
    cell = (8 * ev_scale()) ** 2
    assert colour_count(pixels, PALETTE[1]) == 2 * cell  # the copy beside its training image
    assert colour_count(pixels, PALETTE[0]) == 0  # image 10 is no neighbour of the six drawn


def ev_scale():
    from difflab import viz

    return viz._scale_for(8, viz.PAIR_CELL_MIN_PX)


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: ev.memorisation_check(s[0][:, :1], s[0], s[1]),
         "differ in shape (generated (1, 8, 8), training (3, 8, 8), held-out (3, 8, 8))"),
        (lambda s: ev.memorisation_check(s[0][:0], s[0], s[1]), "must be a non-empty batch"),
        (lambda s: ev.memorisation_check(s[0], s[0], s[1], quantile=1.5),
         "strictly between 0 and 1, got 1.5"),
        (lambda s: ev.memorisation_check(s[0], s[0], s[1], space="latent"),
         "unknown space 'latent'; expected one of pixels, features"),
        (lambda s: ev.memorisation_check(s[0] * np.nan, s[0], s[1]), "NaN or infinite"),
        (lambda s: ev.nearest_neighbours(s[0], s[0][:, :, :4]), "differ; both sets must be"),
        (lambda s: ev.save_memorisation_picture(
            ev.memorisation_check(s[0][:3], s[0], s[1]), s[0][:2], s[0], "x.png"),
         "covers 3 generated and 400 training images, but 2 and 400 were given"),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_line(sets, call, message):
    with pytest.raises(ValueError) as err:
        call(sets)
    assert message in str(err.value) and "\n" not in str(err.value)


# --- difflab evaluate --memorisation on colour emoji ----------------------------------------------


@pytest.fixture(scope="module")
def emoji_setup(tmp_path_factory, one_torch_thread):
    """Colour packages, an evaluator trained on them (16 px), and a google-only tiny model."""
    root = tmp_path_factory.mktemp("memorisation")
    packages = colour_packages(root / "data")
    evaluator = root / "evaluator.safetensors"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFLAB_CACHE", str(root / "cache"))
        assert main(["train-evaluator", "--data", EMOJI_DATASOURCE, "--data-dir", str(packages),
                     "--image-size", "16", "--epochs", "2", "--batch-size", "32",
                     "--no-progress", "--out", str(evaluator)]) == 0  # fmt: skip
        run = root / "google"
        assert main(["train", *TINY_COLOUR, "--data-dir", str(packages), "--vendors", "google",
                     "--max-steps", "2", "--out", str(run)]) == 0  # fmt: skip
        yield packages, evaluator, run / "model_final.safetensors", root


def evaluate(argv, root, out):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFLAB_CACHE", str(root / "cache"))
        assert main([*argv, "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_evaluate_flags_training_copies_and_passes_held_out_images(emoji_setup, tmp_path, capsys):
    packages, evaluator, _, root = emoji_setup
    common = ["--data", EMOJI_DATASOURCE, "--data-dir", str(packages), "--evaluator",
              str(evaluator), "--memorisation"]  # fmt: skip
    train = load_dataset(EMOJI_DATASOURCE, data_dir=packages, image_size=16)
    test = load_dataset(EMOJI_DATASOURCE, data_dir=packages, image_size=16, split="test")
    pixels = np.rint((train.images[:20] + 1) * 127.5).astype(np.uint8)
    np.savez(tmp_path / "copies.npz", images=pixels)  # as uint8: still exact copies
    np.savez(tmp_path / "test.npz", images=test.images)

    report = evaluate(["evaluate", "--images", str(tmp_path / "copies.npz"), *common], root,
                      tmp_path / "copies.json")  # fmt: skip
    printed = capsys.readouterr().out
    m = report["metrics"]["memorisation"]
    assert set(m) == {"pixels", "features"}
    px = m["pixels"]
    assert px["likely_copy_fraction"] == 1.0 and px["median_ratio"] == 0.0
    assert px["exact_copies"] == 20 and px["num_train"] == train.num_images
    assert px["num_held_out"] == test.num_images
    assert m["features"]["likely_copy_fraction"] == 1.0 and m["features"]["median_ratio"] < 1e-3
    first = px["closest"][0]
    assert first["distance"] == 0.0 and first["train_name"] == train.names[first["train"]]
    assert "memorisation check" in printed and "likely copies 20 of 20 (100.0%" in printed
    for space in ("pixels", "features"):
        picture = tmp_path / f"copies.nearest-{space}.png"
        assert m[space]["picture"] == str(picture) and f"wrote {picture}" in printed
        with Image.open(picture) as img:
            img.load()
            assert img.mode == "RGB"
            assert sum(colour_count(np.asarray(img), c) > 0 for c in PALETTE) >= 4

    held = evaluate(["evaluate", "--images", str(tmp_path / "test.npz"), *common], root,
                    tmp_path / "test.json")["metrics"]["memorisation"]  # fmt: skip
    assert held["pixels"]["median_ratio"] == 1.0 and held["features"]["median_ratio"] == 1.0
    assert held["pixels"]["exact_copies"] == 0
    assert report["setup"]["vendors"] is None  # both, as the data was read


def test_evaluate_reads_the_vendors_the_model_was_trained_on(emoji_setup, tmp_path, capsys):
    packages, evaluator, model, root = emoji_setup
    argv = ["evaluate", "--checkpoint", str(model), "--num-samples", "8", "--sampler", "ddim",
            "--steps", "2", "--evaluator", str(evaluator), "--no-progress"]  # fmt: skip
    google = {split: load_dataset(EMOJI_DATASOURCE, data_dir=packages, split=split,
                                  vendors="google", image_size=16) for split in ("train", "test")}  # fmt: skip
    setup = evaluate(argv, root, tmp_path / "g.json")["setup"]
    assert setup["vendors"] == "google" and setup["data_dir"] == str(packages.resolve())
    assert setup["reference_train_images"] == google["train"].num_images
    assert setup["reference_test_images"] == google["test"].num_images
    both = load_dataset(EMOJI_DATASOURCE, data_dir=packages, split="test", image_size=16)
    setup = evaluate([*argv, "--vendors", "both"], root, tmp_path / "b.json")["setup"]
    assert setup["vendors"] == "both" and setup["reference_test_images"] == both.num_images


def test_evaluate_vendors_for_other_data_is_one_line(emoji_setup, tmp_path, capsys):
    root = emoji_setup[3]
    np.savez(tmp_path / "x.npz", images=np.zeros((4, 3, 16, 16), np.uint8))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFLAB_CACHE", str(root / "cache"))
        code = main(["evaluate", "--images", str(tmp_path / "x.npz"), "--data", "emoji",
                     "--vendors", "google", "--memorisation", "--out", str(tmp_path / "m.json")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "--vendors applies to --data emoji-datasource only, not to emoji" in err


# --- the real colour emoji (slow) ----------------------------------------------------------------

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "emoji-datasource"


@pytest.mark.slow
@pytest.mark.skipif(not REAL.is_dir(), reason=f"no emoji-datasource packages in {REAL}")
def test_real_emoji_new_emoji_score_one_and_training_copies_zero(tmp_path):
    train = load_dataset(EMOJI_DATASOURCE, data_dir=REAL, image_size=16)
    test = load_dataset(EMOJI_DATASOURCE, data_dir=REAL, image_size=16, split="test")
    order = np.random.default_rng(0).permutation(test.num_images)
    half, other = order[: len(order) // 2], order[len(order) // 2 :]
    new = ev.memorisation_check(test.images[half], train.images, test.images[other]).summary()
    assert 0.9 < new["median_ratio"] < 1.1 and new["likely_copy_fraction"] < 0.15
    copies = train.images[::50]
    check = ev.memorisation_check(copies, train.images, test.images)
    assert check.summary()["likely_copy_fraction"] == 1.0
    # an image may repeat under another name: the copy's neighbour is that very image
    assert np.array_equal(train.images[check.generated_index], copies)
    path = ev.save_memorisation_picture(check, copies, train.images, tmp_path / "real.png")
    with Image.open(path) as img:
        assert img.mode == "RGB"
