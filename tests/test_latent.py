"""Latent diffusion: the autoencoder (its KL term, shapes, latent scale, exact resume) and diffusion
on its latents (scale applied on both sides, sample / evaluate round trip, the autoencoder's hash),
on tiny runs of the built-in 8 px emoji."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from difflab.checkpoint import load_checkpoint, write_checkpoint
from difflab.cli import main
from difflab.config import AutoencoderConfig
from difflab.data import load_dataset
from difflab.kinds import load_model
from difflab.models.autoencoder import LOGVAR_RANGE, Autoencoder, gaussian_kl
from difflab.objectives.autoencoder import autoencoder_loss, encode_images, reconstruct
from difflab.objectives.latent import LatentDiffusion
from difflab.sampling import generate, load_autoencoder
from test_train_robust import assert_bitwise_equal, tensors

AE = ["train-autoencoder", "--data", "emoji", "--num-images", "48", "--batch-size", "16",
      "--base-channels", "8", "--channel-mults", "1,2", "--epochs", "2", "--seed", "1",
      "--no-progress"]  # fmt: skip
LATENT = ["train", "--data", "emoji", "--num-images", "48", "--batch-size", "16", "--epochs", "2",
          "--timesteps", "30", "--base-channels", "8", "--preview-steps", "3", "--seed", "2",
          "--no-progress"]  # fmt: skip


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    assert main([*AE, "--out", str(root / "ae")]) == 0
    ae = root / "ae" / "model_final.safetensors"
    assert main([*LATENT, "--latent", str(ae), "--out", str(root / "ld")]) == 0
    return {"root": root, "ae": ae, "ld": root / "ld" / "model_final.safetensors"}


def error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


# The autoencoder ----------------------------------------------------------------------------------


def test_kl_term_matches_the_closed_form_and_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(3, 4, 5, 5, generator=gen) * 2
    logvar = torch.randn(3, 4, 5, 5, generator=gen) * 3
    ours = gaussian_kl(mean, logvar)
    q = torch.distributions.Normal(mean.double(), torch.exp(0.5 * logvar.double()))
    p = torch.distributions.Normal(torch.zeros_like(q.loc), torch.ones_like(q.scale))
    oracle = torch.distributions.kl_divergence(q, p)  # elementwise, independent formula
    torch.testing.assert_close(ours.double(), oracle, rtol=1e-5, atol=1e-6)
    assert float(gaussian_kl(torch.zeros(2), torch.zeros(2)).abs().max()) == 0.0  # q = p


def test_loss_is_ldm_summed_loss_over_pixels():
    """mean-reduced loss * pixels == sum |d| + l2 sum d^2 + kl_weight * sum KL (LDM's reduction)."""
    cfg = AutoencoderConfig(image_size=8, image_channels=3, padded_size=8, base_channels=8,
                            channel_mults=(1, 2), kl_weight=0.3, l2_weight=0.5)  # fmt: skip
    torch.manual_seed(0)
    ae = Autoencoder(cfg)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(5, 3, 8, 8, generator=gen) * 2 - 1
    eps = torch.randn(5, 4, 4, 4, generator=gen)
    loss = autoencoder_loss(ae, x, eps, cfg)
    with torch.no_grad():
        mean, logvar = ae.encode(x)
        rec = ae.decode(mean + torch.exp(0.5 * logvar) * eps)
    d = (rec - x).flatten(1)
    kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).flatten(1).sum(1)
    summed = d.abs().sum(1) + 0.5 * d.pow(2).sum(1) + 0.3 * kl
    torch.testing.assert_close(loss.detach() * 3 * 8 * 8, summed, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(("padded", "latent"), [(32, 8), (28, 7)])
def test_encoder_and_decoder_shapes(padded, latent):
    cfg = AutoencoderConfig(image_size=28, padded_size=padded, base_channels=8)
    torch.manual_seed(0)
    ae = Autoencoder(cfg)
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    mean, logvar = ae.encode(x)
    assert (
        mean.shape
        == logvar.shape
        == (2, 4, latent, latent)
        == (2, 4, cfg.latent_size, cfg.latent_size)
    )
    assert ae.decode(mean).shape == (2, 1, 28, 28)
    # The padding is the background (-1) around the image, inside encode.
    p = (padded - 28) // 2
    direct = ae.encoder(F.pad(x, (p, p, p, p), value=-1.0))
    torch.testing.assert_close(mean, direct[0])
    # The log-variance head is clamped as LDM's DiagonalGaussianDistribution.
    with torch.no_grad():
        ae.encoder.conv_out.bias[4:] = 1e4
        assert float(ae.encode(x)[1].max()) == LOGVAR_RANGE[1]


def test_bad_padding_is_one_line(capsys):
    assert main([*AE, "--padded-size", "9", "--out", "/nonexistent/x"]) == 2
    assert "padded size 9" in error_line(capsys)


def test_latent_scale_is_one_over_the_latent_std(runs):
    ckpt = load_checkpoint(runs["ae"])
    ac = ckpt.config.autoencoder
    assert ac.latent_scale is not None and ac.latent_size == 4 and ac.padded_size == 8
    ae, _, _ = load_autoencoder(runs["ae"])
    train = load_dataset("emoji", num_images=48, seed=1)
    mean, logvar = encode_images(ae, torch.from_numpy(train.images))
    # z = mean + sigma eps: var over all elements = var(mean) + E[sigma^2], up to sampling noise
    expected = 1.0 / np.sqrt(float(mean.double().var() + logvar.double().exp().mean()))
    assert ac.latent_scale == pytest.approx(expected, rel=0.03)
    # The report names it, and the checkpoints of the run (before the end) had none.
    assert f"{ac.latent_scale:.4f}" in (runs["root"] / "ae" / "report.html").read_text()
    for picture in ("reconstructions.png", "latent_channels.png", "latent_walk.png"):
        assert (runs["root"] / "ae" / picture).is_file()


def test_autoencoder_resume_is_bitwise(runs, tmp_path):
    out = tmp_path / "ae"
    assert main([*AE, "--max-steps", "4", "--out", str(out)]) == 0  # stops inside epoch 2
    assert main(["train-autoencoder", "--resume", str(out), "--no-progress"]) == 0
    assert_bitwise_equal(tensors(out / "model_final.safetensors"), tensors(runs["ae"]))
    again = load_checkpoint(out / "model_final.safetensors").config.autoencoder
    assert again.latent_scale == load_checkpoint(runs["ae"]).config.autoencoder.latent_scale


def test_autoencoder_resume_refuses_a_flag_it_cannot_honour(runs, capsys):
    run = runs["root"] / "ae"
    before = sorted(p.name for p in run.iterdir())
    for flag, value in (("--latent-channels", "8"), ("--kl-weight", "0.5"), ("--lr", "0.1")):
        assert main(["train-autoencoder", "--resume", str(run), flag, value]) == 2
        err = error_line(capsys)
        assert f"{flag} cannot change when a run is resumed" in err and "--max-minutes" in err
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written


# Diffusion on the latents ----------------------------------------------------------------------


def test_latent_scale_is_applied_on_both_sides(runs):
    config = load_checkpoint(runs["ld"]).config
    lc, ac = config.latent, load_checkpoint(runs["ae"]).config.autoencoder
    assert lc.latent_scale == ac.latent_scale
    assert (config.model.in_channels, config.model.image_size) == (4, 4)  # the latent grid
    ae, _, _ = load_autoencoder(runs["ae"])
    x = torch.from_numpy(load_dataset("emoji", split="test", seed=2).images[:5])
    mean, _ = ae.encode(x)
    space = load_model(runs["ld"], "cpu").space
    # Encode side multiplies, decode side divides: the round trip is D(mean), the reconstruction.
    z = space.from_images(x)
    torch.testing.assert_close(z, mean * lc.latent_scale)
    torch.testing.assert_close(space.to_images(z), reconstruct(ae, x))
    torch.testing.assert_close(space.to_images(z), ae.decode(z / lc.latent_scale).clamp(-1, 1))
    # The diffusion objective's data: the scaled means, and draws of unit-ish variance.
    from difflab.training import Batch, Context

    train = load_dataset("emoji", num_images=48, seed=2)
    obj = LatentDiffusion(config, train, Context(torch.device("cpu"), torch.contiguous_format))
    m, lv = encode_images(ae, torch.from_numpy(train.images))
    torch.testing.assert_close(obj.images, m * lc.latent_scale)
    draws = obj.x0_batch(Batch(torch.arange(48), slice(None), 0))
    torch.testing.assert_close(
        draws.std(), (m + lv.mul(0.5).exp() * torch.randn(m.shape, generator=torch.Generator().manual_seed(9))).std() * lc.latent_scale,
        rtol=0.1, atol=0.0,
    )  # fmt: skip
    again = obj.x0_batch(Batch(torch.arange(48), slice(None), 1))
    assert not torch.equal(draws, again)  # drawn afresh each time an image comes up


def test_latent_checkpoint_samples_and_evaluates(runs, cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIFFLAB_CACHE", str(cache))
    out = tmp_path / "s.png"
    assert main(["sample", "--checkpoint", str(runs["ld"]), "--num-images", "4", "--steps", "3",
                 "--show-intermediate", "--out", str(out)]) == 0  # fmt: skip
    assert out.is_file() and (tmp_path / "s_intermediate.png").is_file()
    loaded = load_model(runs["ld"], "cpu")
    frames = []
    images = generate(loaded.model, loaded.config, loaded.schedule, num_images=3, seed=0,
                      sampler="ddim", steps=3, callback=frames.append, space=loaded.space)  # fmt: skip
    assert images.shape == (3, 3, 8, 8) and images.abs().max() <= 1  # decoded, not 4x4 latents
    assert frames[0]["z"].shape == (3, 4, 4, 4) and frames[0]["x"].shape == (3, 3, 8, 8)
    # The decoded samples are D(z / scale) of the latent samples.
    space = loaded.space
    latent_only = generate(loaded.model, loaded.config, loaded.schedule, num_images=3, seed=0,
                           sampler="ddim", steps=3, callback=lambda info: None,
                           space=space)  # fmt: skip
    torch.testing.assert_close(latent_only, images)
    torch.testing.assert_close(space.to_images(frames[-1]["z0_pred"]), frames[-1]["x0_pred"])

    report = tmp_path / "m.json"
    assert main(["evaluate", "--checkpoint", str(runs["ld"]), "--num-samples", "20",
                 "--sampler", "ddim", "--steps", "3", "--out", str(report)]) == 0  # fmt: skip
    metrics = json.loads(report.read_text())
    assert metrics["setup"]["num_images"] == 20 and metrics["metrics"]["fid"] > 0
    assert "emoji-8px" in metrics["setup"]["evaluator"]


def latent_run_on_a_copy(runs, tmp_path):
    """A one-step latent run on a copy of the autoencoder (to be replaced later): the copy's path
    and the run's final checkpoint."""
    copy = tmp_path / "ae.safetensors"
    shutil.copy(runs["ae"], copy)
    assert main([*LATENT, "--latent", str(copy), "--max-steps", "1", "--out",
                 str(tmp_path / "ld")]) == 0  # fmt: skip
    return copy, tmp_path / "ld" / "model_final.safetensors"


def test_a_latent_checkpoint_carries_its_autoencoder(runs, tmp_path, capsys, monkeypatch):
    """Sampling needs no autoencoder file: the checkpoint carries it (moved, its autoencoder
    replaced or deleted, read from another working directory); resuming still reads the file."""
    sha = load_checkpoint(runs["ld"]).config.latent.autoencoder_sha256
    copy, ckpt = latent_run_on_a_copy(runs, tmp_path)
    assert "autoencoder" in load_checkpoint(ckpt).networks
    before = tmp_path / "before.png"
    assert main(["sample", "--checkpoint", str(ckpt), "--steps", "2", "--out", str(before)]) == 0
    assert main([*AE, "--seed", "5", "--max-steps", "1", "--out", str(tmp_path / "other")]) == 0
    shutil.copy(tmp_path / "other" / "model_final.safetensors", copy)
    capsys.readouterr()
    after = tmp_path / "after.png"
    assert main(["sample", "--checkpoint", str(ckpt), "--steps", "2", "--out", str(after)]) == 0
    assert np.array_equal(np.asarray(Image.open(before)), np.asarray(Image.open(after)))
    assert main(["train", "--resume", str(tmp_path / "ld"), "--epochs", "3"]) == 2
    assert f"expected sha256 {sha}" in error_line(capsys)
    copy.unlink()
    moved = tmp_path / "elsewhere" / "model.safetensors"
    moved.parent.mkdir()
    shutil.move(ckpt, moved)
    monkeypatch.chdir(tmp_path / "other")  # the path it recorded means nothing from here
    loaded = load_model(moved, "cpu")
    images = generate(loaded.model, loaded.config, loaded.schedule, num_images=2, seed=0,
                      sampler="ddim", steps=2, space=loaded.space)  # fmt: skip
    assert images.shape == (2, 3, 8, 8) and images.abs().max() <= 1


def test_wrong_or_missing_autoencoder_is_one_line(runs, tmp_path, capsys):
    """A latent checkpoint written before checkpoints carried the autoencoder finds it by its
    recorded path, checked by sha256."""
    sha = load_checkpoint(runs["ld"]).config.latent.autoencoder_sha256
    copy, ckpt = latent_run_on_a_copy(runs, tmp_path)
    old = load_checkpoint(ckpt)  # as written before: no autoencoder network, no architecture
    config = replace(old.config, latent=replace(old.config.latent, architecture=None))
    networks = {k: v for k, v in old.networks.items() if k != "autoencoder"}
    write_checkpoint(ckpt, config, networks, state=old.state)
    assert main([*AE, "--seed", "5", "--max-steps", "1", "--out", str(tmp_path / "other")]) == 0
    shutil.copy(tmp_path / "other" / "model_final.safetensors", copy)
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(ckpt), "--steps", "2",
                 "--out", str(tmp_path / "x.png")]) == 2  # fmt: skip
    err = error_line(capsys)
    assert f"expected sha256 {sha}" in err and str(copy) in err
    assert main(["train", "--resume", str(tmp_path / "ld"), "--epochs", "3"]) == 2
    assert f"expected sha256 {sha}" in error_line(capsys)
    copy.unlink()
    assert main(["evaluate", "--checkpoint", str(ckpt), "--num-samples", "4"]) == 2
    err = error_line(capsys)
    assert "does not exist" in err and sha in err
    assert not (tmp_path / "x.png").exists()


def test_latent_editing_encodes_and_decodes_or_refuses(runs, tmp_path, capsys):
    out = tmp_path / "i.png"
    assert main(["img2img", "--checkpoint", str(runs["ld"]), "--from-data", "0",
                 "--num-images", "2", "--steps", "4", "--out", str(out)]) == 0  # fmt: skip
    assert out.is_file()
    assert main(["interpolate", "--checkpoint", str(runs["ld"]), "--seeds", "1,2",
                 "--frames", "3", "--steps", "3", "--out", str(tmp_path / "w.png")]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["inpaint", "--checkpoint", str(runs["ld"]), "--from-data", "0", "--steps", "3",
                 "--out", str(tmp_path / "p.png")]) == 2  # fmt: skip
    assert "latent diffusion model" in error_line(capsys)


def test_latent_resume_is_bitwise(runs, tmp_path):
    out = tmp_path / "ld"
    assert main([*LATENT, "--latent", str(runs["ae"]), "--max-steps", "4", "--out", str(out)]) == 0
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert_bitwise_equal(tensors(out / "model_final.safetensors"), tensors(runs["ld"]))


def test_a_latent_run_from_before_the_carried_autoencoder_resumes_bitwise(runs, tmp_path):
    """Checkpoints written before a latent model carried its autoencoder (no such network, no
    architecture) resume from the file they name, to the same weights; the new ones carry it."""
    out = tmp_path / "ld"
    assert main([*LATENT, "--latent", str(runs["ae"]), "--max-steps", "4", "--out", str(out)]) == 0
    for path in (out / "checkpoints").glob("*.safetensors"):
        old = load_checkpoint(path)
        config = replace(old.config, latent=replace(old.config.latent, architecture=None))
        networks = {k: v for k, v in old.networks.items() if k != "autoencoder"}
        write_checkpoint(path, config, networks, optimizers=old.optimizers, rng=old.rng,
                         state=old.state)  # fmt: skip
        assert "autoencoder" not in load_checkpoint(path).networks
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    final = tensors(out / "model_final.safetensors")
    assert_bitwise_equal(
        {k: v for k, v in final.items() if not k.startswith("autoencoder.")},
        {k: v for k, v in tensors(runs["ld"]).items() if not k.startswith("autoencoder.")},
    )
    assert any(k.startswith("autoencoder.") for k in final)
