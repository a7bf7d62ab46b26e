"""The web demo's logic without a browser or Gradio (difflab.web.core): validation of every page
value, the live frames, Stop, the same images as `difflab sample`, the forward-process view,
and `difflab serve`'s one-line errors. The browser and load tests are in test_web_browser.py."""

import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from attacks import png_bomb, reset_peak_rss, rss_kb
from difflab.checkpoint import save_checkpoint
from difflab.cli import main
from difflab.config import (
    ConsistencyConfig,
    DiffusionConfig,
    ModelConfig,
    ProgressiveConfig,
    RunConfig,
    TrainConfig,
)
from difflab.data import EMOJI_CLASSES
from difflab.models.unet import UNet
from difflab.sampling import TrajectoryRecorder, generate
from difflab.web.core import MAX_SEED, DemoModel, Frame, Result, parse_seed, shown, to_display


def tiny(path, num_classes=0, distilled=False, progressive=None):
    """An 8 px emoji U-Net with its initial weights (T = 30): enough to test the plumbing."""
    mc = ModelConfig(
        image_size=8, in_channels=3, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
        num_classes=num_classes,
    )  # fmt: skip
    config = RunConfig(
        model=mc, diffusion=DiffusionConfig(timesteps=30), train=TrainConfig(data="emoji"),
        class_names=EMOJI_CLASSES if num_classes else (),
        consistency=ConsistencyConfig(teacher="t", teacher_sha256="0" * 64) if distilled else None,
        progressive=progressive,
    )  # fmt: skip
    torch.manual_seed(0)
    return save_checkpoint(path, config, UNet(mc).state_dict())


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("web")
    paths = {
        "uncond": tiny(root / "uncond.safetensors"),
        "cond": tiny(root / "cond.safetensors", num_classes=len(EMOJI_CLASSES)),
        "cm": tiny(root / "cm.safetensors", distilled=True),
        "pd": tiny(root / "pd.safetensors",
                   progressive=ProgressiveConfig(teacher="t", teacher_sha256="0" * 64, steps=2)),
    }  # fmt: skip
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def models(ckpts):
    return {k: DemoModel(v, "cpu") for k, v in ckpts.items()}


def pixels(path):
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("which", "fields", "match"),
    [
        ("uncond", {"steps": 5000}, "steps must be an integer in 1..30, got 5000"),
        ("uncond", {"steps": 0}, "steps must be an integer in 1..30"),
        ("uncond", {"steps": 2.5}, "steps must be an integer"),
        ("uncond", {"steps": "ten"}, "steps must be a number, got 'ten'"),
        ("uncond", {"num_images": 65}, "number of images must be an integer in 1..64, got 65"),
        ("uncond", {"num_images": float("nan")}, "number of images must be a finite number"),
        ("uncond", {"sampler": "euler"}, "unknown sampler 'euler'"),
        ("uncond", {"seed": "-1"}, "seed (an integer or 'random') must be an integer in 0..4294967295"),
        ("uncond", {"seed": 2**32}, "must be an integer in 0..4294967295"),
        ("uncond", {"sampler": "ddim", "eta": 1.5}, "eta must lie in [0, 1], got 1.5"),
        ("uncond", {"every": 31, "steps": 30}, "preview every k steps (0 = auto) must be an integer in 0..30"),
        ("cond", {"guidance": 25}, "guidance must lie in [0, 20], got 25"),
        ("cond", {"guidance": -1}, "guidance must lie in [0, 20]"),
        ("cond", {"class_choice": "cat"}, "unknown class 'cat'; expected one of every class"),
        ("cm", {"steps": 3}, "steps must be one of 1, 2, 4 for a distilled model, got 3"),
        ("cm", {"steps": 8}, "steps must be an integer in 1..4"),
    ],
)  # fmt: skip
def test_every_page_value_is_checked_on_the_server(models, which, fields, match):
    with pytest.raises(ValueError) as err:
        models[which].parse_request(**{"steps": 10, **fields})
    assert match in str(err.value) and "\n" not in str(err.value)


def test_values_that_do_not_apply_are_checked_then_ignored_and_defaults_follow_the_sampler(models):
    m = models["uncond"]
    # eta applies to DDIM only; guidance and class to conditional models only
    req = m.parse_request(sampler="dpmpp-2m", steps=None, eta=0.7, guidance=9, class_choice="x")
    assert (req.steps, req.eta, req.guidance, req.class_label) == (20, 0.0, 1.0, None)
    # ... but a malformed or out-of-range value is refused even where it would be ignored
    for field, value, message in [
        ("guidance", float("nan"), "guidance must be a finite number, got nan"),
        ("guidance", "Infinity", "guidance must be a finite number, got 'Infinity'"),
        ("guidance", "abc", "guidance must be a number, got 'abc'"),
        ("guidance", 99, "guidance must lie in [0, 20], got 99"),
        ("eta", 7, "eta must lie in [0, 1], got 7"),
    ]:
        with pytest.raises(ValueError) as err:
            m.parse_request(sampler="dpmpp-2m", **{field: value})
        assert str(err.value) == message
    assert m.parse_request(sampler="ddpm", steps="").steps == 30  # all T
    assert m.parse_request(sampler="ddim", steps="12", eta="0.5").eta == 0.5
    # every k steps: 0 is about 20 previews
    assert m.parse_request(steps=30, every=0).every == 2
    assert m.parse_request(steps=5, every=0).every == 1
    c = models["cond"]
    assert c.parse_request(num_images=7).num_images == 10  # 5 classes, whole rows
    one = c.parse_request(num_images=7, class_choice=EMOJI_CLASSES[3], guidance=2.5)
    assert (one.num_images, one.class_label, one.guidance) == (7, 3, 2.5)
    assert c.labels(one).tolist() == [3] * 7
    assert c.labels(c.parse_request(num_images=4)).tolist() == [0, 1, 2, 3, 4]
    cm = models["cm"]
    req = cm.parse_request(sampler="ignored", steps=None, guidance=5)  # baked in: ignored
    assert (req.sampler, req.steps, req.guidance) == ("consistency", 1, 1.0)


@pytest.mark.parametrize(
    "fields",
    [
        {"seed": "7" * 20_000_000},  # a 20 MB seed: the page's value, not difflab's
        {"seed": "x" * 5000},
        {"steps": "9" * 5000},
        {"num_images": "1e400"},
        {"sampler": "s" * 100_000},
    ],
)
def test_an_error_message_never_echoes_a_long_value(models, fields):
    with pytest.raises(ValueError) as err:
        models["uncond"].parse_request(**fields)
    message = str(err.value)
    assert len(message) < 200 and "\n" not in message, message[:300]
    assert "characters)" in message or "1e400" in message


def test_an_upload_error_names_no_server_path(models, tmp_path):
    """The server's temporary folder stays out of the page's messages; the size is read from the
    header, so a huge image is refused without being decoded."""
    folder = tmp_path / "server-private-folder"
    folder.mkdir()
    Image.new("L", (5000, 5000)).save(folder / "huge.png")
    (folder / "junk.png").write_bytes(b"not an image")
    Image.new("P", (8, 8)).save(folder / "palette.png")  # 8x8, but its pixels are indices
    (folder / "bomb.png").write_bytes(png_bomb(13000, 13000))  # 0.7 MB, 676 MB decoded
    (folder / "bigger.png").write_bytes(png_bomb(20000, 20000, 0))  # over Pillow's bomb limit
    expected = {
        "huge.png": "the uploaded image is 5000x5000 with 1 channel(s) (mode L); this checkpoint expects 8x8 with 3 channel(s)",
        "junk.png": "cannot read the uploaded image: cannot identify image file",
        "palette.png": "the uploaded image has mode P; expected 8-bit greyscale or RGB (L, LA, RGB, RGBA), 8x8 with 3 channel(s)",
        "bomb.png": "the uploaded image is 13000x13000 with 3 channel(s) (mode RGBA); this checkpoint expects 8x8 with 3 channel(s)",
        "bigger.png": "the uploaded image has 400,000,000 pixels, more than Pillow's limit of 89,478,485 allows; this checkpoint expects 8x8 with 3 channel(s)",
    }  # fmt: skip
    reset_peak_rss()
    before, _ = rss_kb()
    for name, message in expected.items():
        with pytest.raises(ValueError) as err:
            models["uncond"].forward_image(upload=str(folder / name))
        assert str(err.value) == message
    _, peak = rss_kb()
    assert peak - before < 100_000, f"the peak grew by {peak - before} kB"  # 676 MB if decoded


def test_a_shown_value_is_its_repr_cut_short():
    assert shown("euler") == "'euler'" and shown(2.5) == "2.5"
    long = shown("a" * 1000)
    assert long.startswith("'aaaa") and long.endswith("... (1,002 characters)") and len(long) < 70


def test_random_seed_is_drawn_and_reported():
    assert parse_seed("random", draw=lambda: 1234) == 1234
    assert parse_seed("", draw=lambda: 9) == 9
    assert parse_seed(" 42 ") == 42 and parse_seed(7.0) == 7
    for text in ("1e3", "7.0", "0x10"):  # as the CLI's --seed: no float or hex
        with pytest.raises(ValueError, match=r"must be an integer in 0\.\.4294967295"):
            parse_seed(text)
    drawn = {parse_seed("random") for _ in range(20)}
    assert len(drawn) > 15 and all(0 <= s <= MAX_SEED for s in drawn)


# --- streaming -------------------------------------------------------------------------------


def test_frames_every_k_steps_match_the_sampler_callback(models, tmp_path):
    """Frames arrive every k steps and at the last one, and show exactly the sampler's x_t and
    x0_pred (recorded independently with TrajectoryRecorder on a second run)."""
    m = models["uncond"]
    req = m.parse_request(sampler="ddim", steps=10, seed=3, num_images=4, every=3)
    items = list(m.stream(req, tmp_path))
    frames, result = items[:-1], items[-1]
    assert all(isinstance(f, Frame) for f in frames) and isinstance(result, Result)
    assert [f.step for f in frames] == [1, 4, 7, 10]
    assert [f.status.split(" (")[0] for f in frames] == [
        "step 1/10",
        "step 4/10",
        "step 7/10",
        "step 10/10",
    ]
    rec = TrajectoryRecorder(lambda i, t: i % 3 == 0 or i == 9, num_images=4)
    images = generate(m.loaded.model, m.config, m.schedule, callback=rec, **m.generate_kwargs(req))
    assert [f.t for f in frames] == [t for t, _ in rec.frames]
    for f, (_, x), (_, x0) in zip(frames, rec.frames, rec.x0_frames, strict=True):
        assert np.array_equal(f.x_t, to_display(x)) and np.array_equal(f.x0_pred, to_display(x0))
        assert f.x_t.dtype == np.uint8 and f.x_t.shape[1] >= 384
    assert not np.array_equal(frames[0].x_t, frames[1].x_t)  # the image changes as it denoises
    torch.testing.assert_close(result.images, images, rtol=0, atol=0)
    assert result.png.is_file() and np.array_equal(pixels(result.png), result.grid)
    with Image.open(result.gif) as gif:
        assert gif.n_frames == 11  # 10 steps (every step, as sample --gif for <= 40) + final


@pytest.mark.parametrize(
    ("which", "flags", "fields"),
    [
        ("uncond", ["--sampler", "ddim", "--steps", "8", "--eta", "0.3"],
         {"sampler": "ddim", "steps": 8, "eta": 0.3}),
        ("uncond", ["--sampler", "ddpm", "--steps", "6"], {"sampler": "ddpm", "steps": 6}),
        ("uncond", ["--sampler", "dpmpp-2m-sde", "--steps", "5"], {"sampler": "dpmpp-2m-sde", "steps": 5}),
        ("cond", ["--sampler", "dpmpp-2m", "--steps", "5"], {"sampler": "dpmpp-2m", "steps": 5}),
        ("cond", ["--sampler", "unipc", "--steps", "5", "--class-label", "2", "--guidance", "3"],
         {"sampler": "unipc", "steps": 5, "class_choice": EMOJI_CLASSES[2], "guidance": 3}),
        ("cm", ["--steps", "2"], {"steps": 2}),
    ],
)  # fmt: skip
def test_the_page_gives_the_same_png_as_difflab_sample(
    ckpts, models, tmp_path, which, flags, fields
):
    out = tmp_path / "sample.png"
    gif = tmp_path / "sample.gif"
    argv = ["sample", "--checkpoint", ckpts[which], "--num-images", "6", "--seed", "11",
            "--device", "cpu", "--out", str(out), "--gif", str(gif), *flags]  # fmt: skip
    assert main(argv) == 0
    m = models[which]
    req = m.parse_request(seed="11", num_images=6, **fields)
    result = list(m.stream(req, tmp_path / "page"))[-1]
    assert np.array_equal(pixels(result.png), pixels(out))
    with Image.open(result.gif) as a, Image.open(gif) as b:
        assert a.n_frames == b.n_frames
        for k in range(a.n_frames):
            a.seek(k)
            b.seek(k)
            assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


def test_a_progressive_student_draws_in_its_own_steps_as_sample_does(models, ckpts, tmp_path):
    m = models["pd"]
    assert m.distilled and m.step_choices == [2] and "DDIM, 2 steps" in m.describe()
    req = m.parse_request(sampler="ignored", steps=None, num_images=3, seed=4)
    assert (req.sampler, req.steps) == ("ddim", 2)
    items = list(m.stream(req, tmp_path / "web"))
    assert [i.t for i in items if isinstance(i, Frame)] == [29, 14]  # the trailing 2-step grid
    assert main(["sample", "--checkpoint", ckpts["pd"], "--num-images", "3", "--seed", "4",
                 "--out", str(tmp_path / "cli.png")]) == 0  # fmt: skip
    np.testing.assert_array_equal(pixels(items[-1].png), pixels(tmp_path / "cli.png"))


def test_a_distilled_model_streams_its_one_step(models, tmp_path):
    m = models["cm"]
    items = list(m.stream(m.parse_request(steps=1, num_images=3), tmp_path))
    assert [type(i) for i in items] == [Frame, Result] and items[0].status.startswith("step 1/1")
    assert items[0].t == 29  # from pure noise, t = T - 1


def _workers():
    return [t for t in threading.enumerate() if t.name == "difflab-generate"]


def test_stop_ends_sampling_between_steps_and_writes_nothing(models, tmp_path):
    m = models["uncond"]
    req = m.parse_request(sampler="ddpm", steps=30, num_images=2, every=1)
    stop = threading.Event()
    seen = []
    for item in m.stream(req, tmp_path / "out", stop):
        seen.append(item)
        if len(seen) == 2:
            stop.set()
    assert all(isinstance(i, Frame) for i in seen) and len(seen) <= 4  # a step or two in flight
    assert not (tmp_path / "out").exists() and not _workers()


def test_closing_the_stream_stops_its_worker(models, tmp_path):
    """What Gradio does when the page cancels, or the browser goes away."""
    m = models["uncond"]
    stream = m.stream(m.parse_request(sampler="ddpm", steps=30, num_images=2, every=1), tmp_path)
    assert isinstance(next(stream), Frame)
    stream.close()
    assert not _workers()


# --- forward process -------------------------------------------------------------------------


def test_forward_view_is_q_sample_with_its_schedule_values(models, tmp_path):
    m = models["uncond"]
    x0 = m.forward_image(index=5)
    assert x0.shape == (1, 3, 8, 8)
    view = m.forward_view(x0, t=12, seed=4)
    ab = float(m.schedule.alpha_bar[12])
    eps = np.random.default_rng(4).standard_normal((1, 3, 8, 8))
    x_t = np.sqrt(ab) * x0.numpy().astype(np.float64) + np.sqrt(1 - ab) * eps  # Ho et al. Eq. 4
    assert np.array_equal(view.x_t, to_display(x_t, min_width=192))
    assert np.array_equal(view.eps, to_display(np.clip(eps / 3, -1, 1), min_width=192))
    assert view.alpha_bar == pytest.approx(ab) and view.snr == pytest.approx(ab / (1 - ab))
    assert view.curves.ndim == 3 and view.curves.dtype == np.uint8
    late = m.forward_view(x0, t=29, seed=4)
    assert late.snr < view.snr < m.forward_view(x0, t=0, seed=4).snr  # noisier as t grows
    for bad, match in [({"t": 30}, r"t must be an integer in 0\.\.29"), ({"t": -1}, r"0\.\.29")]:
        with pytest.raises(ValueError, match=match):
            m.forward_view(x0, **bad)
    with pytest.raises(ValueError, match=r"image index must be an integer in 0\.\."):
        m.forward_image(index=10**6)
    # an upload of the model's size and channels works; another size is refused in one line
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "ok.png")
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "big.png")
    up = m.forward_image(upload=str(tmp_path / "ok.png"))
    assert up.shape == (1, 3, 8, 8) and torch.allclose(up, torch.full_like(up, 200 / 127.5 - 1))
    with pytest.raises(ValueError, match=r"is 9x9 with 3 channel.*expects 8x8 with 3"):
        m.forward_image(upload=str(tmp_path / "big.png"))


# --- the command -----------------------------------------------------------------------------


def test_serve_without_a_checkpoint_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "difflab demo" in err and "--checkpoint" in err
    assert main(["serve", "--checkpoint", "nope.safetensors"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.safetensors does not exist" in err


def test_serve_help_explains_the_page(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for words in ("Forward process", "--queue-size", "127.0.0.1", "no internet", "difflab demo"):
        assert words in out


def test_serve_without_the_demo_extra_says_how_to_install_it(ckpts, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    monkeypatch.delitem(sys.modules, "difflab.web.app", raising=False)
    monkeypatch.setenv("GRADIO_TEMP_DIR", "unused")  # serve sets it; restored afterwards
    assert main(["serve", "--checkpoint", ckpts["uncond"]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install -e ".[demo]"' in err and "gradio" in err


@pytest.mark.slow  # importing Gradio alone takes seconds
@pytest.mark.parametrize(("host", "warned"), [("127.0.0.1", False), ("0.0.0.0", True)])
def test_serve_says_so_in_one_line_when_not_on_loopback(ckpts, monkeypatch, capsys, host, warned):
    pytest.importorskip("gradio")
    import difflab.cli.serve as serve_cli
    import difflab.web.app as app

    launched = {}

    class App:
        def close(self):
            launched["closed"] = True

    def fake_serve(demo, options, work_dir, block=True):
        launched.update(options=options, work_dir=work_dir)
        return App()

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(app, "serve", fake_serve)
    monkeypatch.setattr(serve_cli.time, "sleep", interrupt)
    monkeypatch.setenv("GRADIO_TEMP_DIR", "unused")
    monkeypatch.setattr(serve_cli.signal, "signal", lambda *a: None)
    assert main(["serve", "--checkpoint", ckpts["uncond"], "--host", host, "--port", "8123"]) == 0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == (1 if warned else 0), lines
    if warned:
        assert "warning: listening on 0.0.0.0" in lines[0] and "8123" in lines[0]
    assert launched["options"].host == host and launched["closed"]
    assert "open http://127.0.0.1:8123" in captured.out
    assert not launched["work_dir"].parent.exists()  # its temporary folder is removed at exit
