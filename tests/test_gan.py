"""The GAN baseline: DCGAN's initialisation and shapes, the two losses against their formulas,
spectral normalisation against the matrix 2-norm, bitwise resume of the two-network objective,
and `difflab train-gan` -> `sample` / `evaluate` / `interpolate`, with one-line errors where a GAN
checkpoint meets a diffusion-only command."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from difflab import evaluation as ev
from difflab.checkpoint import load_checkpoint
from difflab.cli import main
from difflab.kinds import draw, load_model
from difflab.models.gan import INIT_STD, Discriminator, Generator, levels_of
from difflab.objectives.gan import (
    d_loss_bce,
    d_loss_hinge,
    default_gan_config,
    g_loss_bce,
    g_loss_hinge,
)
from difflab.sampling import LoadedGAN, gan_latents, generate_gan
from test_train_robust import assert_bitwise_equal, records, rendezvous, tensors, wait_all

# 40 emoji in batches of 16: 16 + 16 + 8, so an uneven last batch; 3 steps per epoch.
TINY = ["--data", "emoji", "--num-images", "40", "--batch-size", "16", "--epochs", "2",
        "--width", "8", "--z-dim", "16", "--num-preview", "8", "--seed", "3", "--device", "cpu",
        "--no-progress"]  # fmt: skip


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    yield


# --- the networks ---------------------------------------------------------------------------------


def test_dcgan_initialisation_is_normal_0_002():
    torch.manual_seed(0)
    g, d = Generator(28, 1, 100, 24), Discriminator(28, 1, 24, spectral=False)
    convs = [m for m in [*g.modules(), *d.modules()]
             if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]  # fmt: skip
    big = [m.weight for m in convs if m.weight.numel() > 20_000]
    assert len(big) >= 3
    for w in big:
        assert abs(w.mean().item()) < 5e-4
        assert w.std().item() == pytest.approx(INIT_STD, rel=0.03)
    bn = torch.cat([m.weight for m in g.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert bn.mean().item() == pytest.approx(1.0, abs=0.01)
    assert bn.std().item() == pytest.approx(INIT_STD, rel=0.2)


@pytest.mark.parametrize(("size", "channels", "s0", "k"), [(28, 1, 7, 2), (32, 3, 4, 3),
                                                           (8, 3, 4, 1), (16, 1, 4, 2)])  # fmt: skip
def test_shapes_and_range(size, channels, s0, k):
    assert levels_of(size) == (s0, k)
    torch.manual_seed(0)
    g, d = Generator(size, channels, 16, 8), Discriminator(size, channels, 8, spectral=True)
    with torch.no_grad():
        g.net[-2].weight.mul_(1000.0)  # the output layer's pre-activations saturate tanh ...
    x = g(torch.randn(5, 16))
    assert x.shape == (5, channels, size, size)
    assert x.abs().max() <= 1.0 and x.abs().max() > 0.99  # ... and never go beyond it
    assert d(x).shape == (5,)
    assert Discriminator(size, channels, 8, spectral=False)(x).shape == (5,)


def test_an_image_size_a_dcgan_cannot_halve_is_refused():
    with pytest.raises(ValueError, match="even image size of at least 8 pixels, got 7"):
        levels_of(7)


def test_default_widths_give_about_the_default_unets_parameters():
    from difflab.config import default_model_config
    from difflab.models.unet import UNet, count_parameters

    gan = default_gan_config("mnist", 28, 1)
    assert (gan.g_width, gan.d_width, gan.loss) == (24, 24, "dcgan")
    g, d = Generator(28, 1, 100, 24), Discriminator(28, 1, 24, spectral=False)
    unet = count_parameters(UNet(default_model_config("mnist", 28, 1)))
    total = sum(p.numel() for p in [*g.parameters(), *d.parameters()])
    assert (unet, total) == (636_465, 624_577)  # the numbers in difflab.models.gan's docstring


# --- the losses -----------------------------------------------------------------------------------

REAL = torch.tensor([2.0, 0.5, -1.0, 0.0], dtype=torch.float64)
FAKE = torch.tensor([-2.0, 0.3, 1.0, 0.0], dtype=torch.float64)


def test_bce_losses_are_the_log_likelihoods():
    sigmoid = (
        [1 / (1 + math.exp(-v)) for v in REAL.tolist()],
        [1 / (1 + math.exp(-v)) for v in FAKE.tolist()],
    )
    want_d = [-math.log(r) - math.log(1 - f) for r, f in zip(*sigmoid, strict=True)]
    want_g = [-math.log(f) for f in sigmoid[1]]  # the non-saturating loss, not log(1 - D)
    torch.testing.assert_close(d_loss_bce(REAL, FAKE), torch.tensor(want_d, dtype=torch.float64))
    torch.testing.assert_close(g_loss_bce(FAKE), torch.tensor(want_g, dtype=torch.float64))
    bce = F.binary_cross_entropy_with_logits  # torch's own, as a second oracle
    oracle = bce(REAL, torch.ones(4, dtype=torch.float64), reduction="none") + bce(
        FAKE, torch.zeros(4, dtype=torch.float64), reduction="none"
    )
    torch.testing.assert_close(d_loss_bce(REAL, FAKE), oracle)
    # Large logits stay finite (softplus, not log(sigmoid)).
    assert torch.isfinite(d_loss_bce(torch.tensor([-200.0]), torch.tensor([200.0]))).all()


def test_hinge_losses_by_hand():
    # max(0, 1 - r) = 0, 0.5, 2, 1 and max(0, 1 + f) = 0, 1.3, 2, 1
    torch.testing.assert_close(
        d_loss_hinge(REAL, FAKE), torch.tensor([0.0, 1.8, 4.0, 2.0], dtype=torch.float64)
    )
    torch.testing.assert_close(g_loss_hinge(FAKE), -FAKE)


# --- spectral normalisation -----------------------------------------------------------------------


def test_spectral_norm_bounds_the_largest_singular_value():
    torch.manual_seed(0)
    d = Discriminator(28, 1, 8, spectral=True)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for m in convs:
            m.parametrizations.weight.original.mul_(100.0)  # far from norm 1 before normalising
    x = torch.randn(4, 1, 28, 28)
    for _ in range(30):  # one power iteration per forward pass in training mode
        d(x)
    d.eval()
    for m in convs:
        raw = m.parametrizations.weight.original.flatten(1)  # (out, in * kh * kw)
        normalised = m.weight.flatten(1)
        assert torch.linalg.matrix_norm(raw, ord=2) > 10.0
        assert torch.linalg.matrix_norm(normalised, ord=2).item() == pytest.approx(1.0, abs=1e-3)


# --- train-gan, resume, sample, evaluate ----------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One uninterrupted run of each loss (2 epochs, 6 steps)."""
    root = tmp_path_factory.mktemp("gan")
    for loss in ("dcgan", "hinge"):
        assert main(["train-gan", *TINY, "--loss", loss, "--out", str(root / loss)]) == 0
    return root


def test_a_run_directory_with_both_phases_logged(runs):
    run = runs / "dcgan"
    for name in ["config.json", "metrics.jsonl", "training_loss.png", "model_final.safetensors",
                 "report.html", "samples/epoch_001.png", "checkpoints/epoch_002.safetensors"]:  # fmt: skip
        assert (run / name).is_file(), name
    lines = [r for r in records(run) if r.get("loss") is not None]
    assert lines[-1]["step"] == 6
    for r in lines:
        assert r["loss"] == pytest.approx(r["loss_discriminator"] + r["loss_generator"])
        assert r["lr_discriminator"] == r["lr_generator"] == 2e-4  # no warm-up, constant
    report = (run / "report.html").read_text()
    assert "D(G(z)), mean probability" in report and "non-saturating BCE" in report
    ckpt = load_checkpoint(run / "checkpoints/epoch_002.safetensors")
    assert ckpt.config.gan is not None and ckpt.config.gan.loss == "dcgan"
    assert sorted(ckpt.networks) == ["discriminator", "generator", "generator_ema"]
    assert sorted(ckpt.optimizers) == ["d_optim", "g_optim"]
    assert ckpt.optimizers["d_optim"]["param_groups"][0]["betas"] == [0.5, 0.999]
    assert "z" in ckpt.rng
    d_real, d_fake = ckpt.state["objective"]["d_real"], ckpt.state["objective"]["d_fake"]
    assert 0.0 < d_fake < 1.0 and 0.0 < d_real < 1.0  # probabilities
    # BatchNorm's running statistics of the generator are its EMA copy's too.
    g, ema = ckpt.networks["generator"], ckpt.networks["generator_ema"]
    stats = [k for k in g if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(g[k], ema[k]) for k in stats)
    assert not torch.equal(g["net.0.weight"], ema["net.0.weight"])  # the weights are averaged


@pytest.mark.parametrize("loss", ["dcgan", "hinge"])
def test_train_gan_resumes_bitwise(runs, tmp_path, loss):
    run = tmp_path / "stopped"
    argv = ["train-gan", *TINY, "--loss", loss, "--out", str(run)]
    assert main([*argv, "--max-steps", "4"]) == 0  # inside the second epoch
    assert (run / "checkpoints/epoch_001_step_000004.safetensors").is_file()
    assert main(["train-gan", "--resume", str(run), "--no-progress"]) == 0
    whole = tensors(runs / loss / "checkpoints/epoch_002.safetensors")
    if loss == "hinge":  # the power iteration's vectors are in the checkpoint, and resume
        vectors = [k for k in whole if k.startswith("discriminator.") and k.endswith(("_u", "_v"))]
        assert len(vectors) == 2 * 2  # u and v of both convolutions (8 px: one halving)
    for prefix in ("generator.", "generator_ema.", "discriminator.", "d_optim.", "g_optim.",
                   "rng.z"):  # fmt: skip
        assert any(k.startswith(prefix) for k in whole), prefix
    for name in ["model_final.safetensors", "checkpoints/epoch_002.safetensors"]:
        assert_bitwise_equal(tensors(runs / loss / name), tensors(run / name))

    # The objective's own running means of D(x) and D(G(z)) too.
    states = [
        load_checkpoint(r / "checkpoints/epoch_002.safetensors").state for r in (run, runs / loss)
    ]
    assert states[0]["objective"] == states[1]["objective"]
    assert states[0]["step"] == 6


def test_sampling_is_one_evaluation_and_fixed_by_the_seed(runs, tmp_path, capsys):
    final = str(runs / "hinge/model_final.safetensors")
    outs = [tmp_path / f"{k}.png" for k in range(3)]
    for out, seed in zip(outs, (5, 5, 6), strict=True):
        assert main(["sample", "--checkpoint", final, "--seed", str(seed), "--num-images", "9",
                     "--out", str(out)]) == 0  # fmt: skip
    assert "GAN generator, 1 evaluation" in capsys.readouterr().out
    assert outs[0].read_bytes() == outs[1].read_bytes()
    assert outs[0].read_bytes() != outs[2].read_bytes()
    with Image.open(outs[0]) as image:
        assert image.size[0] > 3 * 8
    loaded = load_model(final, "cpu")
    assert isinstance(loaded, LoadedGAN)
    many = draw(loaded, num_images=7, seed=5)
    assert torch.equal(draw(loaded, num_images=3, seed=5, batch_size=2), many[:3])  # per image
    assert torch.equal(gan_latents(1, 16, 5), gan_latents(7, 16, 5)[:1])
    # interpolate --seeds A,B starts at sample --seed A's first image and ends at B's.
    assert main(["interpolate", "--checkpoint", final, "--seeds", "5,6", "--frames", "4",
                 "--out", str(tmp_path / "i.png")]) == 0  # fmt: skip
    from difflab.editing import slerp

    z = torch.cat([slerp(gan_latents(1, 16, 5), gan_latents(1, 16, 6), a) for a in (0.0, 1.0)])
    ends = generate_gan(loaded.model, num_images=2, z=z)
    torch.testing.assert_close(ends[0], many[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(ends[1], draw(loaded, num_images=1, seed=6)[0], rtol=0, atol=1e-6)


def test_a_gan_checkpoint_is_scored_by_evaluate(runs, cache, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFLAB_CACHE", str(cache))
    out, keep = tmp_path / "m.json", tmp_path / "images.npz"
    argv = ["evaluate", "--checkpoint", str(runs / "dcgan/model_final.safetensors"),
            "--num-samples", "40", "--save-images", str(keep), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    m, setup = report["metrics"], report["setup"]
    assert setup["sampler"] == "gan generator" and setup["steps"] == 1
    assert math.isfinite(m["fid"]) and m["class_accuracy"] is None  # unconditional
    # The scored images are the ones sample draws for that seed (kept as uint8)...
    loaded = load_model(runs / "dcgan/model_final.safetensors", "cpu")
    drawn = draw(loaded, num_images=40, seed=0).numpy()
    assert np.abs(np.round((drawn + 1) * 127.5) - np.load(keep)["images"]).max() <= 1
    # ... and class entropy and the smallest share, recomputed from them. Evaluate scores the
    # float images, and rounding to uint8 can move this short GAN's off-data images across a
    # class boundary of the evaluator (it did once, with one thread: entropy 0.325 vs 0.377).
    evaluator = ev.load_evaluator(setup["evaluator"])
    share = np.bincount(evaluator.predict(drawn).astype(int), minlength=5) / 40
    entropy = -sum(p * math.log(p) for p in share if p > 0)
    assert m["class_entropy"] == pytest.approx(entropy, abs=1e-9)
    assert m["smallest_class_share"] == pytest.approx(share.min())
    assert m["class_entropy_max"] == pytest.approx(math.log(5))


def test_a_gan_checkpoint_given_to_a_diffusion_only_command_is_one_line(
    runs, tmp_path, capsys, tiny_checkpoint, cache, monkeypatch
):
    monkeypatch.setenv("DIFFLAB_CACHE", str(cache))
    final = str(runs / "dcgan/model_final.safetensors")
    diffusion_run = tmp_path / "diffusion"
    (diffusion_run / "checkpoints").mkdir(parents=True)
    tiny_checkpoint(diffusion_run / "checkpoints/epoch_001.safetensors", 0)
    out = tmp_path / "out"
    not_diffusion = "is a GAN generator (made by difflab train-gan), not a diffusion model"
    one_evaluation = "applies to diffusion checkpoints"
    capsys.readouterr()
    cases = [
        (["inpaint", "--checkpoint", final, "--from-data", "0"], not_diffusion),
        (["img2img", "--checkpoint", final, "--from-data", "0"], not_diffusion),
        (["distill", "--teacher", final], not_diffusion),
        (["train", "--resume", str(runs / "dcgan")], "is a GAN run; continue it with difflab "
         "train-gan --resume"),
        (["train-gan", "--resume", str(diffusion_run)], "is not a GAN run"),
        (["train-gan", "--resume", str(runs / "dcgan"), "--loss", "hinge"],
         "--loss cannot change when a run is resumed"),
        (["sample", "--checkpoint", final, "--steps", "4"], f"--steps {one_evaluation}"),
        (["sample", "--checkpoint", final, "--sampler", "ddim"], f"--sampler {one_evaluation}"),
        (["sample", "--checkpoint", final, "--sampler", "dpmpp-2m-sde"],  # its default value
         f"--sampler {one_evaluation}"),
        (["sample", "--checkpoint", final, "--show-intermediate"], "--show-intermediate"),
        (["sample", "--checkpoint", final, "--guidance", "2"], f"--guidance {one_evaluation}"),
        (["sample", "--checkpoint", final, "--backend", "numpy"], "runs in torch, not the numpy"),
        (["evaluate", "--checkpoint", final, "--steps", "3"], f"--steps {one_evaluation}"),
        (["evaluate", "--checkpoint", final, "--sampler", "ddpm"], f"--sampler {one_evaluation}"),
        (["interpolate", "--checkpoint", final, "--from-data", "0", "--from-data", "1"],
         "give --seeds A,B and no input images"),
        (["interpolate", "--checkpoint", final, "--seeds", "1,2", "--steps", "9"],
         f"--steps {one_evaluation}"),
        (["train-gan", "--data", "emoji", "--image-size", "7"], "emoji images are 8x8"),
    ]  # fmt: skip
    for argv, match in cases:
        if argv[0] in ("train", "train-gan", "distill"):
            full = [*argv, "--out", str(out)] if "--resume" not in argv else argv
        else:
            full = [*argv, "--out", str(out / ("m.json" if argv[0] == "evaluate" else "a.png"))]
        assert main(full) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert match in err, (argv, err)
        assert not out.exists(), argv  # nothing written


# --- real MNIST (slow) ----------------------------------------------------------------------------

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.is_dir(), reason="real MNIST not present")
@pytest.mark.parametrize("loss", ["dcgan", "hinge"])
def test_a_short_mnist_gan_learns_the_digits_pixel_statistics(tmp_path, loss):
    """400 steps: the generator goes from mid-grey noise (every pixel near 0) to MNIST's look: a
    dark background (84% of MNIST's pixels lie below -0.5; DCGAN's reach about -0.65 by then,
    the hinge GAN's -1) and the data's mean image."""
    from difflab.data import load_dataset

    out = tmp_path / loss
    argv = ["train-gan", "--data", "mnist", "--data-dir", str(MNIST), "--loss", loss,
            "--max-steps", "400", "--sample-every", "0", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    real = load_dataset("mnist", data_dir=MNIST, num_images=5000).images  # (N, 1, 28, 28)
    torch.manual_seed(0)
    untrained = Generator(28, 1, 100, default_gan_config("mnist", 28, 1).g_width)
    before = generate_gan(untrained, num_images=1000, seed=0).numpy()
    after = draw(
        load_model(out / "model_final.safetensors", "cpu"), num_images=1000, seed=0
    ).numpy()

    def mean_image_error(x):
        return float(((x.mean(0) - real.mean(0)) ** 2).mean())

    def background(x):
        return float((x < -0.5).mean())

    assert background(real) > 0.8 and background(before) < 0.05
    assert background(after) > 0.6, background(after)
    assert mean_image_error(after) < 0.2 * mean_image_error(before)


def _set_order(hash_seed: int) -> str:
    code = "print(list({'discriminator', 'generator'}))"
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True).stdout  # fmt: skip


@pytest.mark.slow
def test_two_processes_whose_hash_seeds_differ_wrap_the_same_networks(tmp_path):
    """torchrun's processes hash strings differently: the harness must wrap the phases'
    networks for DDP in phase order, not in a set's order (which once made rank 0 wrap the
    generator while rank 1 wrapped the discriminator, and DDP refused to start)."""
    seeds = [0, next(s for s in range(1, 50) if _set_order(s) != _set_order(0))]
    argv = [sys.executable, "-m", "difflab", "train-gan", *TINY, "--out", str(tmp_path / "ddp")]
    procs, logs = [], [tmp_path / f"rank{rank}.txt" for rank in range(2)]
    with rendezvous(2) as ranks_env:
        for rank, seed in enumerate(seeds):
            env = {**os.environ, **ranks_env, "PYTHONHASHSEED": str(seed), "RANK": str(rank),
                   "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"}  # fmt: skip
            with open(logs[rank], "w") as log:  # a file: a full pipe nobody reads blocks a rank
                procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
        codes = wait_all(procs, timeout=300)
    outputs = [log.read_text() for log in logs]
    assert codes == [0, 0], f"exit codes {codes}\n" + "\n".join(o[-2000:] for o in outputs)
    assert "x 2 processes" in outputs[0]
    assert load_checkpoint(tmp_path / "ddp/model_final.safetensors").config.gan is not None
