"""Colour images are drawn in colour wherever difflab draws pictures (grids, labelled grids,
trajectories, GIFs, the forward process, inspect's panels, the web page, training previews and
report.html), and grey images stay grey.

Known colours go in and the same colours must come out. The end-to-end tests train a tiny
class-conditional model on small emoji-datasource packages written here, whose images are each
one known colour with a square of another (``colour_packages``)."""

import io
import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from difflab import viz
from difflab.cli import main
from difflab.data import EMOJI_CATEGORIES, EMOJI_DATASOURCE, EMOJI_DATASOURCE_CLASSES, load_dataset
from difflab.schedules import make_schedule
from difflab.web.core import EVERY_CLASS, DemoModel, Frame, Result, data_from_html, picture_html

# Opaque colours, far from grey and from each other; image i of google is PALETTE[i % 6] with a
# square of PALETTE[(i + 3) % 6], twitter's the other way round.
PALETTE = np.array(
    [(220, 40, 40), (40, 160, 60), (40, 80, 220), (240, 200, 30), (150, 60, 200), (30, 200, 200)],
    dtype=np.uint8,
)
CATEGORIES = ("Smileys & Emotion", "Animals & Nature", "Food & Drink")
NUM_EMOJI = 60  # per vendor: about 6 in the test split (1 in 10, by the code points' hash)


def _png(rgba: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def emoji_image(vendor: str, i: int) -> np.ndarray:
    """(64, 64, 4) uint8: one colour of PALETTE, a 24-pixel square of another at a place of its
    own (multiples of 4, so the 16 px BOX downscale keeps both colours exactly)."""
    base, square = (i, i + 3) if vendor == "google" else (i + 3, i)
    pixels = np.empty((64, 64, 4), np.uint8)
    pixels[..., :3], pixels[..., 3] = PALETTE[base % 6], 255
    top, left = 16 + 4 * (i % 5), 12 + 4 * ((i // 5) % 7)
    pixels[top : top + 24, left : left + 24, :3] = PALETTE[square % 6]
    return pixels


def colour_packages(root: Path, num_emoji: int = NUM_EMOJI) -> Path:
    """emoji-datasource-google and -twitter package folders of ``num_emoji`` emoji each."""
    for vendor in ("google", "twitter"):
        emoji = []
        for i in range(num_emoji):
            code = f"1F{0x600 + i:03X}"
            name = f"{code.lower()}.png"
            (root / vendor / "img" / vendor / "64").mkdir(parents=True, exist_ok=True)
            (root / vendor / "img" / vendor / "64" / name).write_bytes(_png(emoji_image(vendor, i)))
            emoji.append({"name": f"EMOJI {i}", "unified": code, "image": name,
                          f"has_img_{vendor}": True, "category": CATEGORIES[i % 3]})  # fmt: skip
        (root / vendor / "emoji.json").write_text(json.dumps(emoji))
        (root / vendor / "categories.json").write_text(
            json.dumps({c: {} for c in EMOJI_CATEGORIES})
        )
    return root


TINY_COLOUR = [
    "--data", EMOJI_DATASOURCE, "--image-size", "16", "--epochs", "1", "--batch-size", "32",
    "--timesteps", "30", "--base-channels", "8", "--channel-mults", "1,2", "--no-progress",
    "--preview-steps", "2", "--seed", "2", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    return colour_packages(tmp_path_factory.mktemp("colour_emoji"))


@pytest.fixture(scope="module")
def colour_run(packages, tmp_path_factory, one_torch_thread):
    """A tiny class-conditional model trained by `difflab train` on the colour packages."""
    run = tmp_path_factory.mktemp("colour_run") / "run"
    argv = ["train", *TINY_COLOUR, "--data-dir", str(packages), "--conditional", "--out", str(run)]
    assert main(argv) == 0
    return run


def rgb(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def gif_frames(path) -> np.ndarray:
    """(F, H, W, C) of every frame, as imageio reads them."""
    return iio.imread(path, index=None)


def colour_count(pixels: np.ndarray, colour, tol: int = 0) -> int:
    """How many pixels of an (..., 3) array lie within ``tol`` of ``colour`` in every channel."""
    diff = np.abs(pixels[..., :3].astype(int) - np.asarray(colour, int))
    return int((diff <= tol).all(axis=-1).sum())


def is_grey(pixels: np.ndarray) -> bool:
    p = pixels[..., :3].astype(int)
    return bool((p[..., 0] == p[..., 1]).all() and (p[..., 1] == p[..., 2]).all())


def to_unit(colours) -> torch.Tensor:
    """uint8 colours (N, 3) as (N, 3, 8, 8) flat images in [-1, 1] (exact: 0..255 / 127.5 - 1)."""
    c = torch.tensor(np.asarray(colours), dtype=torch.float32) / 127.5 - 1
    return c[:, :, None, None].expand(-1, -1, 8, 8).contiguous()


# --- the drawing functions, on known colours -----------------------------------------------------


def test_a_grid_of_known_colours_keeps_every_colour_exactly(tmp_path):
    path = viz.save_grid(to_unit(PALETTE), tmp_path / "grid.png", nrow=3)
    pixels = rgb(path)
    assert pixels.shape[2] == 3
    for colour in PALETTE:  # each 8x8 image, upscaled by an integer factor: all its pixels
        scale = pixels.shape[1] // (3 * 9 + 1)
        assert colour_count(pixels, colour) == (8 * scale) ** 2, colour
    grey = viz.save_grid(to_unit(PALETTE)[:, :1], tmp_path / "grey.png", nrow=3)
    assert is_grey(rgb(grey))  # one channel: drawn grey, as before


def test_labelled_and_trajectory_grids_draw_colour_cells(tmp_path):
    cells = to_unit(PALETTE).view(2, 3, 3, 8, 8)
    pixels = rgb(viz.save_labelled_grid(cells, tmp_path / "lab.png", ["a", "b", "c"], ["r1", "r2"]))
    frames = [(10, to_unit(PALETTE[:3])), (-1, to_unit(PALETTE[3:]))]
    trajectory = rgb(viz.save_trajectory_grid(frames, tmp_path / "traj.png"))
    scale = viz._scale_for(8, viz.CELL_MIN_PX)
    for colour in PALETTE:
        assert colour_count(pixels, colour) == (8 * scale) ** 2
        assert colour_count(trajectory, colour) == (8 * scale) ** 2


def test_forward_process_starts_in_the_data_colours_and_ends_in_colour_noise(tmp_path):
    schedule = make_schedule("linear", 1000)
    path = viz.save_forward_process_grid(
        to_unit(PALETTE[:2]), schedule, tmp_path / "fwd.png", timesteps=[0, 999],
        generator=np.random.default_rng(0),
    )  # fmt: skip
    pixels = rgb(path)
    for colour in PALETTE[:2]:  # t = 0 keeps sqrt(alpha_bar_0) = 0.99995 of the image
        assert colour_count(pixels, colour, tol=6) > 0.99 * 64**2
    noise = pixels[pixels.min(axis=2) < 250]  # not the white canvas
    assert not is_grey(noise)  # noise drawn per channel: coloured speckle


def test_gifs_have_three_channels_and_the_colours_of_their_frames(tmp_path):
    frames = [to_unit(PALETTE[:4]), to_unit(PALETTE[2:])]
    path = viz.save_gif(frames, tmp_path / "a.gif", nrow=2, min_width=64)
    read = gif_frames(path)
    assert read.ndim == 4 and read.shape[-1] in (3, 4)
    for k, batch in enumerate((PALETTE[:4], PALETTE[2:])):
        for colour in batch:
            assert colour_count(read[k], colour) > 0, (k, colour)
    final = to_unit(PALETTE[:4])
    both = [(5, to_unit(PALETTE[:4]), to_unit(PALETTE[2:])), (-1, final, final)]
    read = gif_frames(viz.save_denoising_gif(both, tmp_path / "d.gif", nrow=2))
    for colour in PALETTE:  # x_t on the left, predicted x0 on the right, both in colour
        assert colour_count(read[0], colour) > 0, colour


def test_flat_spread_sees_a_flat_colour_as_flat(tmp_path):
    """A collapsed colour model draws one flat non-grey colour: its channels differ, but each
    one is flat, so the training preview warns just as it does for flat grey."""
    beige = torch.empty(16, 3, 8, 8)
    beige[:, 0], beige[:, 1], beige[:, 2] = 0.6, 0.3, -0.2
    assert viz.flat_spread(viz.save_grid(beige, tmp_path / "beige.png")) == 0
    red = to_unit([(255, 0, 0)] * 16)  # a pure colour's zero channels are no "black" pixels
    assert viz.flat_spread(viz.save_grid(red, tmp_path / "red.png")) == 0
    assert viz.flat_spread(viz.save_grid(to_unit(PALETTE), tmp_path / "palette.png")) > 150


def test_image_pairs_are_drawn_in_colour_with_their_labels(tmp_path):
    path = viz.save_image_pairs(
        to_unit(PALETTE[:3]), to_unit(PALETTE[3:]), tmp_path / "pairs.png",
        labels=["a", "b", "c"], per_row=2, title="t " * 80, footer="attribution " * 30,
    )  # fmt: skip
    pixels = rgb(path)
    scale = viz._scale_for(8, viz.PAIR_CELL_MIN_PX)
    for colour in PALETTE:
        assert colour_count(pixels, colour) == (8 * scale) ** 2
    assert pixels.shape[1] < 800  # long text is wrapped, not drawn off the picture
    with pytest.raises(ValueError, match="two batches of one shape and a label per pair"):
        viz.save_image_pairs(to_unit(PALETTE[:3]), to_unit(PALETTE[:2]), tmp_path / "x.png",
                             labels=["a", "b", "c"])  # fmt: skip


def test_inspect_panels_show_the_noised_input_in_colour(tmp_path):
    from difflab.insides import Level

    x_t = to_unit([(255, 0, 0), (0, 0, 255)])
    levels = [Level("down 8x8", torch.rand(2, 4, 8, 8))]
    pixels = rgb(viz.plot_feature_maps(x_t, [0, 10], levels, tmp_path / "maps.png"))
    assert colour_count(pixels, (255, 0, 0), tol=8) > 500  # magma has no pure red or blue
    assert colour_count(pixels, (0, 0, 255), tol=8) > 500
    weights = torch.softmax(torch.rand(2, 16, 16), -1).numpy()
    pixels = rgb(viz.plot_attention(x_t, [0, 10], weights, [(4, 4)], [10], tmp_path / "att.png"))
    assert not is_grey(pixels[pixels.min(axis=2) < 250])


# --- a colour model, end to end ------------------------------------------------------------------


def test_the_colour_data_loads_with_the_colours_written(packages):
    data = load_dataset(EMOJI_DATASOURCE, data_dir=packages, image_size=16)
    assert data.images.shape[1:] == (3, 16, 16) and data.class_names == EMOJI_DATASOURCE_CLASSES
    corner = np.rint((data.images[:, :, 0, 0] + 1) * 127.5).astype(np.uint8)  # (N, 3)
    assert {tuple(c) for c in corner} == {tuple(c) for c in PALETTE}


def test_training_previews_and_report_are_in_colour(colour_run):
    for name in ("samples/epoch_001.png", "forward_process.png"):
        pixels = rgb(colour_run / name)
        assert not is_grey(pixels), name
    # The forward process starts at training images: their corner colours are the palette's.
    start = rgb(colour_run / "forward_process.png")
    assert sum(colour_count(start, c, tol=3) > 0 for c in PALETTE) >= 4
    report = (colour_run / "report.html").read_text()
    assert 'src="samples/epoch_001.png"' in report and "CC BY 4.0" in report


def test_sample_grid_gif_and_trajectory_of_a_colour_model_are_colour(colour_run, tmp_path):
    ckpt = colour_run / "model_final.safetensors"
    out, gif = tmp_path / "s.png", tmp_path / "s.gif"
    argv = ["sample", "--checkpoint", str(ckpt), "--num-images", "9", "--sampler", "ddim",
            "--steps", "3", "--gif", str(gif), "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert not is_grey(rgb(out))
    frames = gif_frames(gif)
    assert frames.shape[-1] in (3, 4) and len(frames) >= 2
    assert all(not is_grey(frame[frame[..., :3].min(axis=-1) < 250]) for frame in frames)
    argv[-4:] = ["--show-intermediate", "--device", "cpu", "--out", str(tmp_path / "t.png")]
    assert main(argv) == 0
    assert not is_grey(rgb(tmp_path / "t_intermediate.png"))


def test_visualize_draws_the_colour_data(packages, tmp_path, capsys):
    out = tmp_path / "vis"
    argv = ["visualize", "--data", EMOJI_DATASOURCE, "--data-dir", str(packages),
            "--image-size", "16", "--num-images", "6", "--vendors", "google", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    pixels = rgb(out / "forward_process.png")
    assert sum(colour_count(pixels, c, tol=3) > 100 for c in PALETTE) >= 4


def test_inspect_a_colour_model_on_a_test_image(colour_run, packages, tmp_path, capsys):
    test = load_dataset(EMOJI_DATASOURCE, data_dir=packages, split="test", image_size=16)
    corner = tuple(np.rint((test.images[0, :, 0, 0] + 1) * 127.5).astype(int))
    out = tmp_path / "insp"
    argv = ["inspect", "--checkpoint", str(colour_run / "model_final.safetensors"),
            "--from-data", "0", "--t", "0,1", "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    # the first column is x_t at t = 0 and 1: the test image's own colours, drawn by matplotlib
    assert colour_count(rgb(out / "feature_maps.png"), corner, tol=8) > 300


def test_the_web_page_offers_the_categories_and_draws_colour(colour_run, packages, tmp_path):
    m = DemoModel(colour_run / "model_final.safetensors", "cpu")
    assert m.class_choices == [EVERY_CLASS, *EMOJI_DATASOURCE_CLASSES]
    assert "9 classes" in m.describe() and "x3" in m.describe()
    # The forward-process tab shows the test images (the model's data dir) in their colours.
    test = load_dataset(EMOJI_DATASOURCE, data_dir=packages, split="test", image_size=16)
    view = m.forward_view(m.forward_image(0), t=0)
    expected = np.rint((test.images[0] + 1) * 127.5).astype(np.uint8).transpose(1, 2, 0)
    scale = view.x0.shape[0] // 18  # a one-image grid: 1 pixel of padding around 16
    inner = view.x0[scale:-scale, scale:-scale]
    assert np.array_equal(inner, expected.repeat(scale, 0).repeat(scale, 1))
    assert not is_grey(view.x0) and not is_grey(view.eps)
    # A generation of one class streams colour frames and a colour PNG.
    req = m.parse_request(sampler="ddim", steps=3, seed=1, num_images=4,
                          class_choice="Food & Drink")  # fmt: skip
    items = list(m.stream(req, tmp_path / "page"))
    frames, result = items[:-1], items[-1]
    assert all(isinstance(f, Frame) for f in frames) and isinstance(result, Result)
    assert all(f.x_t.shape[-1] == 3 and not is_grey(f.x_t) for f in frames)
    food = EMOJI_DATASOURCE_CLASSES.index("Food & Drink")
    assert req.plan.labels.tolist() == [food] * 4
    with Image.open(io.BytesIO(data_from_html(picture_html(result.grid, "colour")))) as png:
        shown = np.asarray(png)
    assert shown.shape[-1] == 3 and np.array_equal(shown, result.grid) and not is_grey(shown)
    # Every class: a row per category, labelled with its name.
    req = m.parse_request(sampler="ddim", steps=2, seed=1, num_images=9)
    assert len(req.plan.labels) == 9 and req.plan.labels.tolist() == list(range(9))
