"""Class-conditional sampling, guidance, pictures and editing from the command line, on a tiny
class-conditional model of the built-in shapes (4 classes)."""

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.checkpoint import load_checkpoint
from difflab.cli import main
from difflab.kinds import load_model
from difflab.sampling import class_labels, generate

TINY = [
    "--data", "shapes", "--image-size", "16", "--num-images", "64", "--epochs", "1",
    "--batch-size", "32", "--timesteps", "50", "--base-channels", "8", "--channel-mults", "1,2",
    "--no-progress", "--preview-steps", "5", "--seed", "3",
]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", *TINY, "--conditional", "--out", str(root / "cond")]) == 0
    assert main(["train", *TINY, "--out", str(root / "uncond")]) == 0
    return {
        "cond": str(root / "cond" / "model_final.safetensors"),
        "uncond": str(root / "uncond" / "model_final.safetensors"),
    }


def decode(path):
    with Image.open(path) as img:
        img.load()
        return np.asarray(img.convert("RGB"))


def test_conditional_model_knows_its_classes(runs):
    config = load_checkpoint(runs["cond"]).config
    assert config.model.num_classes == 4 and len(config.class_names) == 4
    assert class_labels(config, None, 6).tolist() == [0, 1, 2, 3, 0, 1]
    name = config.class_names[2]
    assert class_labels(config, name, 3).tolist() == [2, 2, 2]
    assert class_labels(config, "1", 2).tolist() == [1, 1]


def test_guidance_mixes_conditional_and_unconditional_outputs(runs):
    """eps_w = eps_null + w (eps_y - eps_null), checked against two separate network calls."""
    loaded = load_model(runs["cond"], "cpu")
    model, config = loaded.model, loaded.config
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([40, 20, 5])
    y = torch.tensor([0, 1, 3])
    null = torch.full_like(y, 4)
    from difflab.sampling import guided_model_fn

    with torch.no_grad():
        cond, uncond = model(x, t, y), model(x, t, null)
        for w in (0.0, 1.0, 3.0):
            got = guided_model_fn(model, y, w, 4)(x, t)
            torch.testing.assert_close(got, uncond + w * (cond - uncond), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(cond, uncond)  # the label matters to the network
    a = generate(model, config, loaded.schedule, num_images=4, labels=y[:1].repeat(4), steps=10,
                 sampler="ddim", guidance=1.0)  # fmt: skip
    b = generate(model, config, loaded.schedule, num_images=4, labels=y[:1].repeat(4), steps=10,
                 sampler="ddim", guidance=4.0)  # fmt: skip
    assert not torch.allclose(a, b)


def test_sample_class_grid_label_guidance_sweep_and_gif(runs, tmp_path, capsys):
    base = ["sample", "--checkpoint", runs["cond"], "--sampler", "dpmpp-2m", "--steps", "5"]
    grid = tmp_path / "classes.png"
    assert main([*base, "--num-images", "8", "--out", str(grid)]) == 0
    one = tmp_path / "one.png"
    assert main([*base, "--num-images", "8", "--class-label", "2", "--guidance", "3",
                 "--out", str(one), "--gif", str(tmp_path / "d.gif")]) == 0  # fmt: skip
    sweep = tmp_path / "sweep.png"
    assert main([*base, "--guidance-sweep", "0,1,4", "--out", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "guidance 3" in out and "guidance sweep" in out
    g, s = decode(grid), decode(sweep)
    assert g.shape[0] > 1.5 * g.shape[1] / 2  # 4 rows of 2: taller than half its width
    assert s.shape[1] > s.shape[0]  # 3 rows of 4 classes: wider than tall
    with Image.open(tmp_path / "d.gif") as gif:
        assert gif.n_frames > 3


def test_editing_commands_write_their_grids(runs, tmp_path, capsys):
    ckpt = ["--checkpoint", runs["cond"]]
    inp, i2i, itp = tmp_path / "inpaint.png", tmp_path / "i2i.png", tmp_path / "itp.png"
    assert main(["inpaint", *ckpt, "--from-data", "0", "--from-data", "5", "--num-images", "3",
                 "--steps", "10", "--resample", "2", "--out", str(inp)]) == 0  # fmt: skip
    assert main(["img2img", *ckpt, "--from-data", "1", "--strength", "0.3,0.8", "--num-images",
                 "2", "--sampler", "ddim", "--steps", "10", "--out", str(i2i)]) == 0  # fmt: skip
    assert main(["interpolate", *ckpt, "--from-data", "1", "--from-data", "2", "--frames", "5",
                 "--steps", "10", "--out", str(itp), "--gif", str(tmp_path / "i.gif")]) == 0  # fmt: skip
    assert main(["interpolate", *ckpt, "--seeds", "1,2", "--frames", "4", "--steps", "5",
                 "--class-label", "1", "--out", str(tmp_path / "seeds.png")]) == 0  # fmt: skip
    a, b, c = decode(inp), decode(i2i), decode(itp)
    assert a.shape[1] > a.shape[0]  # 2 rows of 5 (input, masked, 3 results)
    assert b.shape[1] > 2 * b.shape[0]  # 1 row of 5
    assert c.shape[1] > 2 * c.shape[0]  # 2 rows of 5

    # An input image file round-trips through the same path as --from-data
    from difflab.data import load_dataset

    test = load_dataset("shapes", split="test", image_size=16, seed=3)
    pixels = np.rint((test.images[1].transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[:, 8:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert main(["inpaint", *ckpt, "--image", str(tmp_path / "in.png"), "--mask",
                 str(tmp_path / "mask.png"), "--num-images", "2", "--steps", "5",
                 "--out", str(tmp_path / "file.png")]) == 0  # fmt: skip


def one_line_error(capsys, argv, match):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and match in err, (argv, code, err)
    assert "Traceback" not in err


def test_bad_input_is_one_clear_line(runs, tmp_path, capsys):
    Image.new("L", (16, 16)).save(tmp_path / "grey.png")
    Image.new("RGB", (20, 20)).save(tmp_path / "big.png")
    Image.new("L", (16, 16)).save(tmp_path / "black_mask.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    flat = tmp_path / "flat"
    flat.mkdir()
    for k in range(4):
        Image.new("RGB", (16, 16), (60 * k, 0, 0)).save(flat / f"{k}.png")
    cond, uncond = ["--checkpoint", runs["cond"]], ["--checkpoint", runs["uncond"]]
    cases = [
        (["train", "--data", "folder", "--data-dir", str(flat), "--conditional", "--no-progress"],
         "--conditional needs labelled data"),
        (["sample", *uncond, "--guidance", "3"], "needs a class-conditional model"),
        (["sample", *uncond, "--class-label", "1"], "this model is unconditional"),
        (["sample", *cond, "--class-label", "7"], "class label 7 out of range; expected 0..3"),
        (["sample", *cond, "--class-label", "hexagon"], "unknown class 'hexagon'"),
        (["sample", *cond, "--guidance", "-1"], "guidance must be a finite number >= 0"),
        (["sample", *cond, "--steps", "51"], "exceeds the model's 50 timesteps"),
        (["sample", *cond, "--gif", str(tmp_path / "x.mp4")], "must end in .gif"),
        (["inpaint", *cond], "no input image"),
        (["inpaint", *cond, "--image", str(tmp_path / "grey.png")], "expects 16x16 with 3 channel(s)"),
        (["inpaint", *cond, "--image", str(tmp_path / "big.png")], "is 20x20"),
        (["inpaint", *cond, "--image", str(tmp_path / "junk.png")], "cannot read image"),
        (["inpaint", *cond, "--from-data", "0", "--mask", str(tmp_path / "black_mask.png")],
         "all black"),
        (["inpaint", *cond, "--from-data", "0", "--mask", str(tmp_path / "big.png")], "is 20x20"),
        (["inpaint", *cond, "--from-data", "100000"], "out of range"),
        (["img2img", *cond, "--from-data", "0", "--strength", "1.5"], "--strength 1.5 out of range"),
        (["interpolate", *cond, "--from-data", "0"], "exactly two input images, got 1"),
        (["interpolate", *cond, "--seeds", "1,2,3"], "exactly two seeds"),
        (["interpolate", *cond, "--seeds", "1,2", "--frames", "1"], "at least 2"),
    ]  # fmt: skip
    for argv, match in cases:
        try:
            one_line_error(capsys, [*argv, "--out", str(tmp_path / "never.png")], match)
        except SystemExit as exit_:  # argparse exits by itself
            err = capsys.readouterr().err.strip()
            assert exit_.code == 2 and len(err.splitlines()) == 1 and match in err, (argv, err)
    assert not (tmp_path / "never.png").exists()


def test_an_input_image_of_the_wrong_size_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    """A small file can hold a huge image: its size is read from the header and refused before
    a pixel is decoded; an RGBA image of the right size loads as RGB without its alpha."""
    from PIL import ImageFile

    from difflab.config import ModelConfig, RunConfig
    from difflab.sampling import load_input_images

    config = RunConfig(model=ModelConfig(image_size=16, in_channels=3, channel_mults=(1, 2)))
    Image.new("L", (6000, 6000)).save(tmp_path / "huge.png")  # 36 Mpixel in a few kB
    rgba = np.random.default_rng(0).integers(0, 256, (16, 16, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or
                        real_load(self))  # fmt: skip
    with pytest.raises(ValueError, match="is 6000x6000 with 1 channel"):
        load_input_images(config, [tmp_path / "huge.png"])
    assert decoded == []
    x = load_input_images(config, [tmp_path / "rgba.png"])
    assert set(decoded) == {(16, 16)} and x.shape == (1, 3, 16, 16)
    expected = torch.from_numpy(rgba[:, :, :3].astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
    torch.testing.assert_close(x[0], expected, rtol=0, atol=0)
