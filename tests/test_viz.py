"""Tests for difflab.viz: pixel values, grid geometry, files written whole, the report."""

from __future__ import annotations

import imageio.v3 as iio
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from difflab import viz
from difflab.schedules import make_schedule


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- to_uint8 -------------------------------------------------------------------------------


def test_to_uint8_exact_values_and_clipping():
    x = np.array([-1.0, 1.0, 0.0, -3.0, 2.5, np.nan], dtype=np.float32).reshape(1, 1, 1, 6)
    out = viz.to_uint8(x)
    assert out.dtype == np.uint8
    assert out.shape == (1, 1, 6, 3)
    np.testing.assert_array_equal(out[0, 0, :, 0], [0, 255, 128, 0, 255, 128])


def test_to_uint8_grey_repeated_rgb_kept():
    grey = _rng().uniform(-1, 1, size=(2, 1, 4, 5))
    out = viz.to_uint8(grey)
    assert out.shape == (2, 4, 5, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])

    rgb = -np.ones((1, 3, 2, 2), dtype=np.float32)
    rgb[:, 0] = 1.0  # pure red
    np.testing.assert_array_equal(viz.to_uint8(rgb)[0, 0, 0], [255, 0, 0])


def test_to_uint8_torch_and_numpy_agree():
    x = torch.rand(3, 3, 6, 7, generator=torch.Generator().manual_seed(0)) * 2 - 1
    np.testing.assert_array_equal(viz.to_uint8(x), viz.to_uint8(x.numpy()))
    np.testing.assert_array_equal(
        viz.to_uint8(x.requires_grad_()), viz.to_uint8(x.detach().numpy())
    )


def test_to_uint8_rejects_bad_shapes():
    with pytest.raises(ValueError, match="C = 1 or 3"):
        viz.to_uint8(np.zeros((2, 2, 4, 4)))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        viz.to_uint8(np.zeros((3, 4, 4)))


# --- make_grid / save_grid ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "nrow", "padding", "expected"),
    [
        (10, 4, 1, (3 * 6 + 1, 4 * 8 + 1, 3)),  # 3 rows of 4, H=5, W=7
        (9, None, 2, (3 * 7 + 2, 3 * 9 + 2, 3)),  # default nrow = ceil(sqrt(9)) = 3
        (2, 8, 0, (5, 2 * 7, 3)),  # fewer images than nrow: one row of 2
        (1, None, 1, (7, 9, 3)),
    ],
)
def test_make_grid_shape(n, nrow, padding, expected):
    grid = viz.make_grid(np.zeros((n, 1, 5, 7)), nrow=nrow, padding=padding)
    assert grid.shape == expected
    assert grid.dtype == np.uint8


def test_make_grid_places_image_at_offset():
    images = -np.ones((6, 3, 4, 5), dtype=np.float32)
    images[4] = 1.0  # the 5th image: row 1, column 1 with nrow=3
    grid = viz.make_grid(images, nrow=3, padding=2, pad_value=77)
    top, left = 2 + 1 * (4 + 2), 2 + 1 * (5 + 2)
    assert (grid[top : top + 4, left : left + 5] == 255).all()
    assert (grid == 255).sum() == 4 * 5 * 3
    assert (grid[:2] == 77).all() and (grid[:, :2] == 77).all()
    assert (grid[2:6, 2:7] == 0).all()  # first image, black


def test_save_grid_png_at_least_min_width(tmp_path):
    path = viz.save_grid(np.zeros((4, 3, 8, 8)), tmp_path / "g.png", nrow=2, min_width=384)
    assert path == tmp_path / "g.png"
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.width >= 384
        # nearest upscaling by an integer factor: exact multiple of the raw grid
        assert img.width % 19 == 0 and img.height % 19 == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        viz.save_grid(np.zeros((4, 1, 8, 8)), tmp_path / "g.png")
    assert list(tmp_path.iterdir()) == []


def test_failed_plot_leaves_old_file_untouched(tmp_path, monkeypatch):
    target = tmp_path / "loss.png"
    target.write_bytes(b"old")

    def broken_savefig(self, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(viz.Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError):
        viz.plot_loss([1, 2, 3], [1.0, 0.5, 0.25], target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]


# --- forward process and trajectories -------------------------------------------------------


def test_forward_process_cells_math():
    schedule = make_schedule("linear", 1000)
    x0 = _rng(1).uniform(-1, 1, size=(3, 1, 6, 6)).astype(np.float32)
    cells = viz.forward_process_cells(x0, schedule, [0, 500, 999], _rng(2))
    assert cells.shape == (3, 3, 1, 6, 6)
    # t = 0 is the paper's x_1: std sqrt(1e-4) = 0.01 around x0
    assert np.abs(cells[:, 0] - x0).max() < 0.06
    # the same eps for a whole row: recover it from two columns and compare
    eps = [
        (cells[:, k] - schedule.sqrt_alpha_bar[t] * x0) / schedule.sqrt_one_minus_alpha_bar[t]
        for k, t in enumerate([0, 500, 999])
    ]
    np.testing.assert_allclose(eps[0], eps[1], atol=1e-9)
    np.testing.assert_allclose(eps[0], eps[2], atol=1e-9)
    # t = 999 is almost pure noise
    assert schedule.sqrt_alpha_bar[999] < 0.01
    with pytest.raises(ValueError, match="outside"):
        viz.forward_process_cells(x0, schedule, [1000], _rng())


def test_forward_process_grid_png(tmp_path):
    schedule = make_schedule("cosine", 200)
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    path = viz.save_forward_process_grid(x0, schedule, tmp_path / "fwd.png", generator=_rng())
    with Image.open(path) as img:
        img.load()
        # 4 rows, 8 default columns of 64 px cells plus a header: wider than tall
        assert img.width > 8 * 64 and img.height > 4 * 64
        assert img.width > img.height
    # reproducible: same generator seed, same bytes
    again = viz.save_forward_process_grid(x0, schedule, tmp_path / "fwd2.png", generator=_rng())
    assert path.read_bytes() == again.read_bytes()


def test_trajectory_grid_png(tmp_path):
    x = np.linspace(-1, 1, 10 * 28 * 28).reshape(10, 1, 28, 28)
    frames = [(999, x), (500, x * 0.5), (0, x * 0.1), (-1, x * 0.0)]
    path = viz.save_trajectory_grid(frames, tmp_path / "traj.png", num_images=3)
    with Image.open(path) as img:
        img.load()
        assert img.width > 4 * 28 * 3  # 4 columns of upscaled 28 px cells
        assert 3 * 28 * 3 < img.height < 4 * 28 * 3  # 3 rows plus a header


# --- GIF ------------------------------------------------------------------------------------


def test_save_gif_frames(tmp_path):
    frames = [np.full((4, 1, 8, 8), v) for v in np.linspace(-1, 1, 5)]
    path = viz.save_gif(frames, tmp_path / "a.gif", nrow=2, duration=0.05, final_hold=10)
    stack = iio.imread(path, index=None)
    assert stack.shape[0] == len(frames)  # the hold is a longer last frame, not copies
    assert stack.shape[2] >= 384
    durations = [iio.immeta(path, index=i)["duration"] for i in range(len(frames))]
    assert durations == [50, 50, 50, 50, 500]


# --- plots ----------------------------------------------------------------------------------


def _decodes(path):
    with Image.open(path) as img:
        img.load()
        return img.format, img.size


def test_plots_write_pngs_and_leave_no_figures(tmp_path):
    schedules = [make_schedule("linear", 1000), make_schedule("cosine", 250)]
    assert _decodes(viz.plot_alpha_bar(schedules, tmp_path / "ab.png"))[0] == "PNG"
    steps = list(range(0, 3000, 10))
    losses = list(0.1 + 0.9 * np.exp(-np.arange(300) / 50) + _rng().uniform(0, 0.05, 300))
    assert _decodes(viz.plot_loss(steps, losses, tmp_path / "loss.png", window=50))[0] == "PNG"
    # fewer points than the window
    assert _decodes(viz.plot_loss([1, 2, 3], [0.5, 0.4, 0.3], tmp_path / "short.png"))[0] == "PNG"
    assert plt.get_fignums() == []
    with pytest.raises(ValueError, match="equal length"):
        viz.plot_loss([1, 2], [0.5], tmp_path / "bad.png")


# --- report ---------------------------------------------------------------------------------


def test_write_report(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "samples").mkdir(parents=True)
    path = viz.write_report(
        run_dir,
        title="<script>alert(1)</script> run",
        summary={"dataset": "mnist", "final loss": 0.0312345678, "steps": 1000},
        images=[
            ("Training loss", "training_loss.png"),
            ("Samples & more", str(run_dir / "samples" / "epoch_001.png")),
        ],
        config={"model": {"channels": 32}, "note": "a < b"},
    )
    assert path == run_dir / "report.html"
    text = path.read_text(encoding="utf-8")
    assert "<script>" not in text
    assert "&lt;script&gt;" in text
    assert "Training loss" in text and "Samples &amp; more" in text
    assert 'src="training_loss.png"' in text
    assert 'src="samples/epoch_001.png"' in text  # absolute path made relative
    assert "image-rendering: pixelated" in text
    assert "mnist" in text and "0.03123" in text
    assert "&quot;channels&quot;: 32" in text and "a &lt; b" in text
    assert [p.name for p in run_dir.iterdir() if p.is_file()] == ["report.html"]


def test_smooth_curve_follows_a_falling_loss_instead_of_lagging_it():
    # A loss that falls exponentially is a straight line on the log axis: a local linear fit of
    # its logs gives it back exactly, ends included.
    steps = np.arange(1000)
    clean = 2.0 * np.exp(-steps / 150)
    np.testing.assert_allclose(viz.smooth_curve(clean, 100), clean, rtol=1e-9)
    # A trailing mean over the same window sits far above it after the first drop: the lag the
    # report used to draw. The local fit stays within the noise.
    noisy = clean * _rng().lognormal(0.0, 0.3, steps.size)
    trailing = np.array([noisy[max(0, i - 99) : i + 1].mean() for i in steps])
    smooth = viz.smooth_curve(noisy, 100)
    assert np.median(np.abs(np.log(trailing[100:] / clean[100:]))) > 0.25
    assert np.median(np.abs(np.log(smooth[100:] / clean[100:]))) < 0.06
    # The window averages: the wiggle of the smoothed curve is a fraction of the raw noise.
    assert np.std(np.log(smooth / clean)) < 0.3 * np.std(np.log(noisy / clean))
    # Non-finite points are skipped; a curve with values <= 0 is averaged as it is.
    with_nan = clean.copy()
    with_nan[500] = np.nan
    assert np.isfinite(viz.smooth_curve(with_nan, 10)).all()
    np.testing.assert_allclose(viz.smooth_curve([-1.0, 0.0, 1.0, 2.0, 3.0], 2), [-1, 0, 1, 2, 3])


def test_flat_spread_tells_blank_grids_from_drawn_ones(tmp_path):
    rng = _rng()
    flat = torch.full((16, 1, 28, 28), 0.1)  # one grey: 140 of 255 everywhere
    assert viz.flat_spread(viz.save_grid(flat, tmp_path / "grey.png")) <= 1
    assert viz.flat_spread(viz.save_grid(-torch.ones(16, 1, 28, 28), tmp_path / "black.png")) == 0
    # Digit-like: black background, strokes of many greys. Black pixels (padding, background)
    # are left out, so the strokes decide.
    digits = -torch.ones(16, 1, 28, 28)
    digits[:, :, 10:18, 12:15] = torch.from_numpy(rng.uniform(-0.8, 1.0, (16, 1, 8, 3))).float()
    assert viz.flat_spread(viz.save_grid(digits, tmp_path / "digits.png")) > 150
    # Near-white everywhere is blank too.
    assert viz.flat_spread(viz.save_grid(flat * 0 + 0.9, tmp_path / "white.png")) <= 1
