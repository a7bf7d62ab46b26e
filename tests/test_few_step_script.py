"""benchmarks/few_step.py's bookkeeping: the verdict on the issue's targets, and DDPM-1000's
images kept in chunks so that its hours can be spread over several runs.

The benchmark itself is hours of distillation and sampling (docs/few_step.md and docs/lab/few_step.md hold its runs);
these tests check the parts that decide what it reports and what it draws again, on a tiny
checkpoint."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from conftest import load_benchmark_script


@pytest.fixture(scope="module")
def few_step():
    return load_benchmark_script("few_step")


def _row(model: str, steps: int, fid: float, budget: float | None = None) -> dict:
    row = {"model": model, "steps": steps, "fid": fid}
    return row if budget is None else {**row, "budget_min": budget}


def test_the_verdict_judges_the_longest_budget_runs_against_the_best_teacher(few_step):
    rows = [
        _row("teacher", 20, 4.2),
        _row("teacher", 1000, 4.0),  # the best teacher FID: bounds 5.0, 6.0, 12.0
        _row("teacher", 6, 4.6),
        _row("teacher", 6, 4.5),  # the best 6-step solver
        *(_row("progressive 10 min", s, f, 10) for s, f in ((4, 4.4), (2, 5.0), (1, 9.0))),
        *(_row("progressive 20 min", s, f, 20) for s, f in ((4, 5.0), (2, 6.01), (1, 12.0))),
        _row("progressive 20 min, stop at 4", 4, 4.49, 20),
    ]
    assert few_step.verdict(rows) == {
        "best_teacher_fid": 4.0,
        "progressive 20 min": {  # the 10-minute run's better numbers do not count
            "4_steps_within_25%": True,  # 5.0 <= 1.25 x 4.0, on the bound
            "2_steps_within_50%": False,  # 6.01 > 6.0
            "1_step_within_3x": True,
            "4_steps_beat_every_6_step_solver": False,  # 5.0 >= 4.5
        },
        "progressive 20 min, stop at 4": {
            "4_steps_within_25%": True,
            "4_steps_beat_every_6_step_solver": True,  # 4.49 < 4.5
        },
    }


def test_ddpm_images_are_kept_in_chunks_and_a_later_run_draws_only_the_missing_ones(
    few_step, tiny_checkpoint, tmp_path, one_torch_thread
):
    from difflab.kinds import load_model
    from difflab.sampling import generate

    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors", 0)  # an 8 px U-Net, T = 30
    args = argparse.Namespace(runs=str(tmp_path / "runs"), num_samples=5, ddpm_device="cpu")
    path, seconds, steps = few_step.ddpm_images(args, ckpt, chunk=2, compile=False)
    folder = tmp_path / "runs" / "ddpm_30"
    assert steps == 30 and path == folder / "images.npz" and seconds > 0
    assert sorted(p.name for p in folder.glob("chunk_*")) == [
        "chunk_000.npz", "chunk_001.npz", "chunk_002.npz"
    ]  # fmt: skip
    with np.load(path) as f:
        images = f["images"]
    with np.load(folder / "chunk_000.npz") as f:  # each chunk says where it was drawn
        assert str(f["device"]) == "cpu" and f["gflops"] > 0 and f["seconds"] > 0
    assert images.shape == (5, 3, 8, 8) and images.min() >= -1 and images.max() <= 1
    loaded = load_model(ckpt, "cpu")  # chunk i: DDPM in all T steps with seed 1000 + i
    second = generate(loaded.model, loaded.config, loaded.schedule, num_images=2, seed=1001,
                      sampler="ddpm", steps=30)  # fmt: skip
    np.testing.assert_array_equal(images[2:4], second.numpy())
    assert not np.array_equal(images[:2], images[2:4])  # another seed, other images

    kept = (folder / "chunk_000.npz").stat().st_mtime_ns
    (folder / "chunk_001.npz").unlink()  # as if a run had stopped before drawing it
    path, _, _ = few_step.ddpm_images(args, ckpt, chunk=2, compile=False)
    assert (folder / "chunk_000.npz").stat().st_mtime_ns == kept  # not drawn again
    with np.load(path) as f:
        np.testing.assert_array_equal(f["images"], images)  # the missing chunk, redrawn the same


def test_the_rounds_fill_what_the_dmd_stage_leaves_of_the_budget(few_step):
    # 97% of 10 minutes is 582 s: 1164 round steps of 0.5 s alone, 1044 after a 60-s stage.
    assert few_step.round_steps_for(10, 0.5, 0.0) == 1164
    assert few_step.round_steps_for(10, 0.5, 60.0) == 1044
    with pytest.raises(SystemExit, match="no time is left for the rounds in a 10-min budget"):
        few_step.round_steps_for(10, 0.5, 600.0)


def test_the_dmd_stage_keeps_its_share_of_a_smaller_budget(few_step):
    assert few_step.dmd_steps_for(300, 20, [10, 20]) == 300
    assert few_step.dmd_steps_for(300, 10, [10, 20]) == 150
    assert few_step.dmd_steps_for(300, 5, [5]) == 300


def test_dmd_weights_are_one_for_all_or_one_per_stop(few_step):
    assert few_step.dmd_weights("0.2", [1, 2, 4]) == {2: 0.2, 4: 0.2}
    assert few_step.dmd_weights("4:0.2,2:0.3", [1, 2, 4]) == {4: 0.2, 2: 0.3}
    assert few_step.dmd_weights("0.2", [1]) == {}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pd-dmd-steps", "-1"], "--pd-dmd-steps -1: expected steps >= 0"),
        (["--pd-steps", "1,4", "--pd-dmd-weight", "0"], "--pd-dmd-weight 0: expected a weight > 0"),
        (["--pd-steps", "1,2,4", "--pd-dmd-weight", "4:0.2"],
         "--pd-dmd-weight 4:0.2: expected a weight > 0, or STEPS:WEIGHT for each of the stops 2,4"),
        (["--pd-steps", "1,4", "--pd-dmd-weight", "4:heavy"], "--pd-dmd-weight 4:heavy: expected"),
        (["--pd-dmd-steps", "300", "--pd-dmd-average", "400"],
         "--pd-dmd-average 400: expected steps in 0..300 (--pd-dmd-steps)"),
    ],
)  # fmt: skip
def test_bad_dmd_settings_are_one_line(few_step, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        few_step.main(["--data-dir", str(tmp_path), *argv])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err


def test_probe_rates_come_from_the_logged_steps(few_step):
    log = [{"step": 10, "elapsed_s": 4.0}, {"step": 50, "elapsed_s": 20.0},
           {"step": 60, "elapsed_s": 35.0}, {"step": 64, "elapsed_s": 41.0}]  # fmt: skip
    assert few_step.rate_between(log, 0) == 64 / 41.0  # from the start: step 0 at 0 s
    assert few_step.rate_between(log, 10, 50) == 40 / 16.0  # the warm-up's steps
    assert few_step.rate_between(log, 60) == 4 / 6.0  # the DMD steps, to the last row
