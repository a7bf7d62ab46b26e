"""Offline metrics: FID / KID / precision-recall against independent oracles, the evaluator, the CLI."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difflab import evaluation as ev
from difflab.cli import main
from difflab.data import EMOJI_CLASSES, load_dataset
from difflab.kinds import load_model
from difflab.sampling import generate

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# --- FID -----------------------------------------------------------------------------------------


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 4.0, 16), rng.uniform(0.1, 4.0, 16)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
    got = ev.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_handles_singular_covariances():
    # Zero variances (a dead feature, or fewer images than dimensions) must not give NaN.
    a, b = np.array([1.0, 0.0, 4.0]), np.array([0.0, 0.0, 1.0])
    assert ev.frechet_distance(np.zeros(3), np.diag(a), np.zeros(3), np.diag(b)) == pytest.approx(
        1.0 + 0.0 + 1.0, abs=1e-12
    )
    x = np.random.default_rng(1).normal(size=(5, 20))  # rank-4 covariance in 20 dimensions
    assert math.isfinite(ev.fid_from_features(x, x + 1.0))


def test_frechet_distance_of_non_commuting_2x2_covariances():
    # For 2x2 S1 S2 with eigenvalues l1, l2 >= 0: Tr sqrt = sqrt(l1 + l2 + 2 sqrt(l1 l2))
    # = sqrt(Tr(S1 S2) + 2 sqrt(det S1 det S2)).
    s1 = np.array([[2.0, 0.7], [0.7, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
    mu1, mu2 = np.array([1.0, -2.0]), np.array([0.5, 0.5])
    tr_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert ev.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_matches_general_eigenvalues_of_s1_s2():
    # A second route: the eigenvalues of the (non-symmetric) product S1 S2 are real and >= 0.
    rng = np.random.default_rng(2)
    s1, s2 = random_spd(rng, 12), random_spd(rng, 12)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    tr_sqrt = np.sqrt(np.linalg.eigvals(s1 @ s2).real.clip(0)).sum()
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * tr_sqrt
    assert ev.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
    assert ev.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        ev.frechet_distance(mu2, s2, mu1, s1), rel=1e-10
    )


def test_frechet_distance_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(300, 10)), rng.normal(size=(200, 10)) @ random_spd(rng, 10) + 0.3
    (mu1, s1), (mu2, s2) = ev.feature_statistics(x), ev.feature_statistics(y)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert ev.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_fid_of_a_set_with_itself_is_zero_and_statistics_are_numpys():
    x = np.random.default_rng(4).normal(size=(500, 32)) * 3 + 1
    assert ev.fid_from_features(x, x) == pytest.approx(0.0, abs=1e-9)
    mu, sigma = ev.feature_statistics(x)
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(sigma, (x - x.mean(0)).T @ (x - x.mean(0)) / (len(x) - 1))
    with pytest.raises(ValueError, match="at least 2 rows"):
        ev.feature_statistics(x[:1])
    with pytest.raises(ValueError, match="do not fit"):
        ev.frechet_distance(mu, sigma, mu[:3], sigma[:3, :3])


# --- KID -----------------------------------------------------------------------------------------


def brute_force_mmd2(x, y):
    d = x.shape[1]

    def k(a, b):
        return (sum(float(p) * float(q) for p, q in zip(a, b, strict=True)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_mmd2_unbiased_matches_a_brute_force_double_loop():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(7, 4)), rng.normal(size=(9, 4)) + 0.5
    assert ev.mmd2_unbiased(x, y) == pytest.approx(brute_force_mmd2(x, y), rel=1e-12)
    # One subset holding every row is the plain estimator, whatever order the rows come in.
    y = y[:7]
    mean, std = ev.kid(x, y, generator=np.random.default_rng(0), num_subsets=1, subset_size=50)
    assert mean == pytest.approx(brute_force_mmd2(x, y), rel=1e-12) and std == 0.0


def test_mmd2_estimator_is_unbiased():
    # Over many independent pairs of small samples of one distribution the estimates average to 0
    # (the biased V-statistic would sit clearly above 0 at m = 5).
    rng = np.random.default_rng(6)
    values = [
        ev.mmd2_unbiased(rng.normal(size=(5, 3)), rng.normal(size=(5, 3))) for _ in range(4000)
    ]
    mean, se = np.mean(values), np.std(values) / math.sqrt(len(values))
    assert abs(mean) < 3 * se, (mean, se)


def test_kid_is_zero_within_its_std_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
    mean, std = ev.kid(x, y, generator=rng, num_subsets=30, subset_size=200)
    assert abs(mean) < std, (mean, std)
    shifted_mean, shifted_std = ev.kid(x, y + 0.5, generator=rng, num_subsets=30, subset_size=200)
    assert shifted_mean > 10 * shifted_std / math.sqrt(30) and shifted_mean > 20 * abs(mean)


# --- precision / recall and nearest neighbours --------------------------------------------------


def test_precision_recall_on_a_hand_computed_example():
    # On a line, k = 3. Real: clusters {0,1,2,3} and {100,...,103}; 3rd-neighbour radii 3,2,2,3
    # per cluster, so the real manifold is [-3, 6] U [97, 106]. Fake: {0.5,1.5,2.5,3.5} (radii
    # 3,2,2,3) and an outlier at 50 (radius 48.5): fake manifold [-2.5, 98.5].
    # Precision: 4 of 5 fakes in the real manifold = 0.8. Recall: the first real cluster only = 0.5.
    real = np.array([0, 1, 2, 3, 100, 101, 102, 103], float)
    fake = np.array([0.5, 1.5, 2.5, 3.5, 50], float)
    angle = 0.3  # place the line in 2-D at an angle: distances are unchanged
    direction = np.array([math.cos(angle), math.sin(angle)])
    precision, recall = ev.precision_recall(real[:, None] * direction, fake[:, None] * direction)
    assert (precision, recall) == (pytest.approx(0.8), pytest.approx(0.5))
    # k = 1 on the same points: real balls [-1,1] [0,2] [1,3] [2,4] ... so 0.5..3.5 are inside
    # and 50 is not; fake radii 1,1,1,1,46.5: fake manifold [-0.5, 96.5] holds 0..3 only.
    assert ev.precision_recall(real[:, None], fake[:, None], k=1) == (0.8, 0.5)


def test_precision_recall_of_identical_sets_is_one_and_of_disjoint_sets_zero():
    x = np.random.default_rng(8).normal(size=(200, 8))
    assert ev.precision_recall(x, x.copy()) == (1.0, 1.0)
    assert ev.precision_recall(x, x + 100.0) == (0.0, 0.0)
    with pytest.raises(ValueError, match="more than k"):
        ev.precision_recall(x[:3], x[:3])


def test_nearest_distances_match_brute_force_and_copies_are_at_zero():
    rng = np.random.default_rng(9)
    reference = rng.normal(size=(500, 16)) * 10 + 50  # large offset: float32 screening is inexact
    query = np.concatenate([rng.normal(size=(40, 16)) * 10 + 50, reference[:5]])
    brute = np.sqrt(((query[:, None] - reference[None]) ** 2).sum(-1)).min(1)
    got = ev.nearest_distances(query, reference)
    np.testing.assert_allclose(got, brute, rtol=1e-12)
    assert (got[-5:] == 0.0).all()
    radii = ev.metrics._knn_distances(reference, reference, 3, exclude_self=True)
    full = np.sqrt(((reference[:, None] - reference[None]) ** 2).sum(-1))
    np.fill_diagonal(full, np.inf)
    np.testing.assert_allclose(radii, np.sort(full, axis=1)[:, :3], rtol=1e-12)


# --- the evaluator -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emoji_sets():
    return ev.reference_datasets("emoji")


@pytest.fixture(scope="module")
def trained(emoji_sets, one_torch_thread):
    train, test = emoji_sets
    return ev.train_classifier(train, test, epochs=10, max_steps=60, seed=1)


def test_training_is_seeded_and_leaves_the_global_rng_alone(emoji_sets, trained, one_torch_thread):
    model, info = trained
    assert info["steps"] == 60 and info["data"] == "emoji"
    assert info["test_accuracy"] > 0.6  # five classes: chance is 0.2
    state = torch.get_rng_state()
    again, _ = ev.train_classifier(*emoji_sets, epochs=10, max_steps=60, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_evaluator_round_trip_and_reference_cache(emoji_sets, trained, tmp_path):
    model, info = trained
    train, test = emoji_sets
    path = ev.save_evaluator(tmp_path / "emoji.safetensors", model, info)
    loaded = ev.load_evaluator(path)
    assert loaded.info["test_accuracy"] == info["test_accuracy"]
    with torch.no_grad():
        direct = model.features(torch.from_numpy(test.images[:50])).numpy()
        direct = (direct - model.feature_mean.numpy()) / model.feature_scale.numpy()
    np.testing.assert_array_equal(loaded.features(test.images[:50]), direct)

    ref = ev.reference_statistics(loaded, train, test)
    assert not ref.from_cache and ref.path.is_file() and ref.path.parent == tmp_path
    features = direct_all = loaded.features(test.images)
    np.testing.assert_allclose(ref.mu, direct_all.mean(0, dtype=np.float64), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ref.sigma, np.cov(features.astype(np.float64), rowvar=False))
    cached = ev.reference_statistics(ev.load_evaluator(path), train, test)
    assert cached.from_cache and cached.path == ref.path
    np.testing.assert_array_equal(cached.sigma, ref.sigma)
    np.testing.assert_array_equal(cached.train_features, ref.train_features)
    # Other test data (the built-in set drawn with another seed) gets other statistics.
    other_train, other_test = ev.reference_datasets("emoji", seed=1)
    assert ev.reference_cache_path(loaded, other_train, other_test) != ref.path


def test_scores_of_real_copies_noise_and_one_class(emoji_sets, trained, tmp_path):
    model, info = trained
    train, test = emoji_sets
    evaluator = ev.load_evaluator(ev.save_evaluator(tmp_path / "e.safetensors", model, info))
    ref = ev.reference_statistics(evaluator, train, test)

    def score(images):
        return ev.score_features(
            evaluator.features(images), ref, kid_subsets=10, kid_subset_size=200
        )

    held_out = ev.reference_datasets("emoji", seed=5)[1].images[:400]  # new draws of the same set
    clean, copies = score(held_out), score(train.images[:400])
    rng = np.random.default_rng(0)
    noisy = score(np.clip(held_out + rng.normal(0, 0.6, held_out.shape), -1, 1).astype(np.float32))
    one_class = score(train.images[train.labels == 0][:400])
    assert clean["fid"] < noisy["fid"] and clean["fid"] < one_class["fid"]
    assert clean["precision"] > noisy["precision"] and clean["recall"] > one_class["recall"]
    # Copies of training images sit at distance 0 from the training set; new draws do not.
    assert copies["nn_train_min"] == 0.0 and copies["nn_train_close_fraction"] == 1.0
    assert clean["nn_train_min"] > 0 and clean["nn_train_close_fraction"] < 0.1
    assert copies["nn_train_ratio"] == 0.0 and 0.5 < clean["nn_train_ratio"] < 2


def test_load_evaluator_errors(tmp_path):
    with pytest.raises(ValueError, match=r"no evaluator at .*missing.safetensors; run this"):
        ev.load_evaluator(tmp_path / "missing.safetensors", hint="; run this")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="not a safetensors file"):
        ev.load_evaluator(junk)


def test_images_to_float_reads_layouts_and_rejects_bad_ranges():
    rng = np.random.default_rng(10)
    pixels = rng.integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)  # NHWC
    out = ev.images_to_float(pixels, "x")
    assert out.shape == (4, 3, 8, 8) and out.dtype == np.float32
    np.testing.assert_array_equal(out, pixels.transpose(0, 3, 1, 2) / np.float32(127.5) - 1)
    assert ev.images_to_float(pixels[..., 0], "x").shape == (4, 1, 8, 8)
    with pytest.raises(ValueError, match=r"range over \[0, 255\]; expected \[-1, 1\]"):
        ev.images_to_float(np.array([[[[0.0, 255.0]]]]), "x")
    with pytest.raises(ValueError, match="no 1- or 3-channel axis"):
        ev.images_to_float(np.zeros((2, 5, 8, 8), np.float32), "x")


# --- the command line ----------------------------------------------------------------------------


def read_report(path):
    return json.loads(Path(path).read_text())


def test_train_evaluator_writes_the_default_evaluator_and_reference(cache, capsys):
    folder = cache / "evaluators"
    assert (folder / "emoji-8px.safetensors").is_file()
    assert len(list(folder.glob("emoji-8px.ref-emoji-*.safetensors"))) == 1
    evaluator = ev.load_evaluator(cache / "evaluators" / "emoji-8px.safetensors")
    assert evaluator.info["test_accuracy"] > 0.9
    assert evaluator.info["steps"] == 6 * math.ceil(4096 / 128)


def test_evaluate_a_conditional_checkpoint(cache, tmp_path, monkeypatch, capsys, tiny_checkpoint):
    monkeypatch.setenv("DIFFLAB_CACHE", str(cache))
    ckpt = tiny_checkpoint(tmp_path / "cond.safetensors", num_classes=5)
    out, kept = tmp_path / "metrics.json", tmp_path / "samples.npz"
    argv = ["evaluate", "--checkpoint", str(ckpt), "--num-samples", "40", "--sampler", "ddim",
            "--steps", "4", "--seed", "3", "--out", str(out), "--save-images", str(kept)]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "FID vs emoji test" in printed and "class accuracy" in printed
    assert "generating:" in captured.err and "/40 " in captured.err  # the progress bar
    report = read_report(out)
    m, setup = report["metrics"], report["setup"]
    assert setup["num_images"] == 40 and setup["steps"] == 4 and setup["guidance"] is None
    assert setup["evaluator"] == str(cache / "evaluators" / "emoji-8px.safetensors")
    assert m["fid"] > 0 and 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1

    # Oracle: the same images, made directly, scored directly.
    loaded = load_model(ckpt, "cpu")
    labels = torch.arange(40) % 5
    images = generate(loaded.model, loaded.config, loaded.schedule, num_images=40, seed=3,
                      sampler="ddim", steps=4, labels=labels).numpy()  # fmt: skip
    evaluator = ev.load_evaluator(setup["evaluator"])
    assert m["class_accuracy"] == pytest.approx(
        float((evaluator.predict(images) == labels.numpy()).mean())
    )
    ref = ev.reference_statistics(evaluator, *ev.reference_datasets("emoji"))
    assert ref.from_cache
    mu, sigma = ev.feature_statistics(evaluator.features(images))
    assert m["fid"] == pytest.approx(ev.frechet_distance(mu, sigma, ref.mu, ref.sigma), rel=1e-9)

    # The kept images (uint8) score almost the same through --images, labels included.
    again = tmp_path / "again.json"
    argv = ["evaluate", "--images", str(kept), "--data", "emoji", "--out", str(again)]
    assert main(argv) == 0
    m2 = read_report(again)["metrics"]
    assert m2["fid"] == pytest.approx(m["fid"], rel=0.05)
    assert m2["class_accuracy"] == pytest.approx(m["class_accuracy"], abs=0.05)

    # Guidance reaches the sampler: another scale, other images, another FID.
    guided = tmp_path / "guided.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--num-samples", "40",
                 "--sampler", "ddim", "--steps", "4", "--seed", "3", "--guidance", "4",
                 "--out", str(guided), "--no-progress"]) == 0  # fmt: skip
    assert "generating:" not in capsys.readouterr().err
    assert read_report(guided)["setup"]["guidance"] == 4.0
    assert read_report(guided)["metrics"]["fid"] != m["fid"]


def test_evaluate_images_the_test_split_and_training_copies(cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIFFLAB_CACHE", str(cache))
    train, test = ev.reference_datasets("emoji")
    np.savez(tmp_path / "test.npz", images=test.images[:300])
    np.savez(tmp_path / "copies.npz", images=train.images[:300])
    noise = np.random.default_rng(0).normal(0, 0.4, (300, *test.images.shape[1:]))
    np.savez(tmp_path / "noisy.npz", images=np.clip(test.images[:300] + noise, -1, 1))
    for name in ("test", "copies", "noisy"):
        argv = ["evaluate", "--images", str(tmp_path / f"{name}.npz"), "--data", "emoji",
                "--out", str(tmp_path / f"{name}.json")]  # fmt: skip
        assert main(argv) == 0
    real, copies, noisy = (
        read_report(tmp_path / f"{n}.json")["metrics"] for n in ("test", "copies", "noisy")
    )
    assert real["fid"] < 0.25 * noisy["fid"] and real["kid"] < 0.25 * noisy["kid"]
    assert real["precision"] > 0.8 and real["recall"] > 0.8 and noisy["precision"] < 0.5
    assert real["class_accuracy"] is None
    assert real["nn_train_close_fraction"] < 0.05 and real["nn_train_min"] > 0
    assert copies["nn_train_min"] == 0.0 and copies["nn_train_close_fraction"] == 1.0


def test_evaluate_a_folder_with_class_subfolders(cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIFFLAB_CACHE", str(cache))
    test = load_dataset("emoji", split="test", num_images=60)
    pixels = np.round((test.images + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)
    for i, (img, label) in enumerate(zip(pixels, test.labels, strict=True)):
        folder = tmp_path / "imgs" / EMOJI_CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    out = tmp_path / "m.json"
    assert main(["evaluate", "--images", str(tmp_path / "imgs"), "--data", "emoji",
                 "--out", str(out)]) == 0  # fmt: skip
    evaluator = ev.load_evaluator(cache / "evaluators" / "emoji-8px.safetensors")
    expected = (
        evaluator.predict(pixels.transpose(0, 3, 1, 2) / np.float32(127.5) - 1) == test.labels
    ).mean()
    assert read_report(out)["metrics"]["class_accuracy"] == pytest.approx(expected)


def one_line_error(capsys, argv, match):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, (argv, code, err)
    assert len(err.splitlines()) == 1, err
    assert match in err, err
    assert "Traceback" not in err


def test_bad_input_is_one_clear_line(cache, tmp_path, monkeypatch, capsys, tiny_checkpoint):
    monkeypatch.setenv("DIFFLAB_CACHE", str(cache))
    uncond = str(tiny_checkpoint(tmp_path / "uncond.safetensors", num_classes=0))
    evaluator = str(cache / "evaluators" / "emoji-8px.safetensors")
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for i in range(3):
        Image.new("RGB", (10, 10), (i, 0, 0)).save(wrong / f"{i}.png")
    np.savez(tmp_path / "range.npz", images=np.full((4, 3, 8, 8), 3.0, np.float32))
    np.savez(tmp_path / "ok.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    one_class = tmp_path / "one_class"
    (one_class / "cat").mkdir(parents=True)
    for i in range(30):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(one_class / "cat" / f"{i}.png")
    weights = tmp_path / "pt_inception-2015-12-05.pth"
    weights.write_bytes(b"not really")
    cases = [
        (["evaluate", "--checkpoint", uncond, "--num-samples", "1"], "at least 2"),
        (["evaluate", "--checkpoint", uncond, "--guidance", "3"], "needs a class-conditional"),
        (["evaluate", "--checkpoint", uncond, "--steps", "31"], "exceeds the model's 30"),
        (["evaluate", "--images", str(wrong)], "--images needs --data"),
        (["evaluate", "--images", str(wrong), "--data", "emoji", "--evaluator", evaluator],
         "do not fit the evaluator"),
        (["evaluate", "--images", str(tmp_path / "range.npz"), "--data", "emoji"],
         "expected [-1, 1]"),
        (["evaluate", "--images", str(tmp_path / "nothing.npz"), "--data", "emoji"],
         "does not exist"),
        (["evaluate", "--images", str(tmp_path / "ok.npz"), "--data", "shapes"],
         "train one with: difflab train-evaluator --data shapes --image-size 8"),
        (["evaluate", "--images", str(tmp_path / "ok.npz"), "--data", "shapes",
          "--evaluator", evaluator], "was trained on 'emoji', not on 'shapes'"),
        (["evaluate", "--checkpoint", uncond, "--inception-weights", str(weights)],
         "is not pytorch-fid's FID-Inception state dict"),
        (["evaluate", "--checkpoint", uncond, "--inception-weights", str(tmp_path / "no.pth")],
         "does not exist (pytorch-fid's pt_inception-2015-12-05-6726825d.pth"),
        (["evaluate", "--checkpoint", uncond, "--inception-weights", str(weights),
          "--evaluator", evaluator], "choose one network"),
        (["evaluate", "--checkpoint", uncond, "--evaluator", uncond], "not a difflab evaluator"),
        (["train-evaluator", "--data", "folder", "--data-dir", str(one_class)],
         "needs at least 2 classes"),
    ]  # fmt: skip
    for argv, match in cases:
        one_line_error(capsys, argv, match)
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--images", str(wrong), "--data", "imagenet"])
    assert exit_.value.code == 2 and "invalid choice: 'imagenet'" in capsys.readouterr().err


# --- real MNIST (slow) ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.is_dir(), reason="real MNIST not present")
def test_mnist_evaluator_reaches_99_percent_and_orders_degradations(tmp_path, capsys):
    path = tmp_path / "mnist.safetensors"
    argv = ["train-evaluator", "--data", "mnist", "--data-dir", str(MNIST), "--out", str(path),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    evaluator = ev.load_evaluator(path)
    assert evaluator.info["test_accuracy"] >= 0.985
    train, test = ev.reference_datasets("mnist", MNIST)
    ref = ev.reference_statistics(evaluator, train, test)
    rng = np.random.default_rng(0)
    real = train.images[rng.choice(train.num_images, 5000, replace=False)]

    def fid(images):
        mu, sigma = ev.feature_statistics(evaluator.features(images.astype(np.float32)))
        return ev.frechet_distance(mu, sigma, ref.mu, ref.sigma)

    def noisy(std):  # std in [0, 1] pixel units = 2 std in [-1, 1] units
        return np.clip(real + rng.normal(0, 2 * std, real.shape), -1, 1)

    scores = [fid(real), fid(noisy(0.1)), fid(noisy(0.3))]
    assert scores == sorted(scores) and scores[0] < 0.05 * scores[2], scores
