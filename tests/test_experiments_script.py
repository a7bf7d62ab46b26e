"""benchmarks/experiments.py's bookkeeping: shared arms, skipping finished work, its doc section.

The experiments themselves are budgeted training runs (docs/experiments.md holds one run of each);
these tests check the parts that decide what runs and what the page says, without training."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from conftest import load_benchmark_script


@pytest.fixture(scope="module")
def experiments():
    return load_benchmark_script("experiments")


def test_the_default_arm_is_one_run_shared_by_every_experiment(experiments, tmp_path):
    args = argparse.Namespace(runs=str(tmp_path), minutes=2.0)
    defaults, others = set(), []
    for experiment in experiments.EXPERIMENTS.values():
        if experiment.resumed:
            continue
        for arm in experiment.arms:
            path = experiments.arm_dir(args, arm)
            if not arm.flags and arm.data == "mnist":
                defaults.add(path)
            else:
                others.append(path)
    assert len(defaults) == 1  # batch-size, learning-rate, timesteps, schedule, dataset, backend
    assert len(others) == len(set(others)) == 9  # every changed arm has its own run
    assert defaults.isdisjoint(others)
    # the budget is part of the name: a longer run is another run
    longer = experiments.arm_dir(argparse.Namespace(runs=str(tmp_path), minutes=5.0),
                                 experiments.Arm("x"))  # fmt: skip
    assert longer not in defaults


def test_a_finished_command_is_logged_but_not_run_again(experiments, tmp_path):
    done = tmp_path / "model_final.safetensors"
    done.write_bytes(b"")
    log: list[str] = []
    # this command would fail if it ran (no such subcommand): reusing must not run it
    experiments.run(["no-such-command"], log, reuse=done)
    assert log == ["difflab no-such-command"]
    with pytest.raises(subprocess.CalledProcessError):
        experiments.run(["no-such-command"], log, reuse=tmp_path / "missing")


def test_unknown_experiment_is_one_clear_error(experiments, capsys):
    with pytest.raises(SystemExit) as stop:
        experiments.main(["learning-rate", "bogus"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'bogus'" in err and "training-time" in err


def test_the_doc_section_is_replaced_in_place(experiments, tmp_path):
    picture = tmp_path / "elsewhere" / "schedule.png"
    picture.parent.mkdir()
    picture.write_bytes(b"png")
    doc = tmp_path / "docs" / "experiments.md"
    doc.parent.mkdir()
    doc.write_text("# The seed experiments\n\nintro\n")
    row = {"arm": "linear", "steps": 10, "final_loss": 0.1, "fid": 9.5, "kid": 0.01, "sample_s": 3}
    results = {"experiment": "schedule", "question": "Linear or cosine?", "minutes": 2.0,
               "matmul_gflops": 150.0, "num_samples": 1000, "rows": [row]}  # fmt: skip
    experiments.write_doc(doc, results, picture)
    results["rows"] = [{**row, "fid": 4.25}]
    experiments.write_doc(doc, results, picture)
    text = doc.read_text()
    assert text.startswith("# The seed experiments\n\nintro\n")
    assert text.count("experiment:schedule:begin") == 1 and text.count("### schedule") == 1
    assert "| linear | 10 | 0.1000 | 4.25 |" in text and "9.50" not in text
    # the figure is copied beside the page and linked relatively
    assert "![schedule](experiments/schedule.png)" in text
    assert (doc.parent / "experiments" / "schedule.png").read_bytes() == b"png"


def test_run_experiment_trains_the_shared_arm_once_and_writes_its_results(
    experiments, tmp_path, monkeypatch
):
    """The orchestration with difflab's commands replaced by a recorder: what is trained, in
    which folders, and what lands on disk (results.json, the figure, the doc section)."""
    trained: list[str] = []

    def fake_run(argv, log, reuse=None):
        log.append(" ".join(argv))
        if reuse is not None and reuse.exists():
            return
        if argv[0] == "train":
            out = Path(argv[argv.index("--out") + 1])
            out.mkdir(parents=True, exist_ok=True)
            (out / "model_final.safetensors").write_bytes(b"")
            trained.append(out.name)

    def fake_row(args, arm, run_dir, log):
        return {"arm": arm.label, "steps": 5, "final_loss": 0.1, "fid": 3.0, "kid": 0.1,
                "sample_s": 1.0, "steps_curve": [1, 2, 3], "loss_curve": [0.3, 0.2, 0.1]}  # fmt: skip

    monkeypatch.setattr(experiments, "run", fake_run)
    monkeypatch.setattr(experiments, "arm_row", fake_row)
    monkeypatch.setattr(experiments, "evaluator_ready", lambda args, data, log: None)
    monkeypatch.setattr(experiments, "matmul_gflops", lambda: 100.0)
    doc = tmp_path / "docs" / "experiments.md"
    doc.parent.mkdir()
    doc.write_text("# The seed experiments\n")
    args = argparse.Namespace(runs=str(tmp_path / "runs"), minutes=2.0, num_samples=1000,
                              fresh=False, data_dir="mnist-dir", fashion_dir=None, doc=str(doc))  # fmt: skip
    for name in ("learning-rate", "schedule"):
        results = experiments.run_experiment(args, name)
        assert (tmp_path / "runs" / name / "results.json").is_file()
        assert (tmp_path / "runs" / name / f"{name}.png").stat().st_size > 1000
        assert [r["arm"] for r in results["rows"]] == [a.label for a in
                                                        experiments.EXPERIMENTS[name].arms]  # fmt: skip
    # the default arm trained once, for learning-rate; schedule reused it
    assert trained == ["mnist_lr_3e-4_2min", "mnist_2min", "mnist_lr_3e-3_2min",
                       "mnist_schedule_linear_2min"]  # fmt: skip
    text = doc.read_text()
    assert "### learning-rate" in text and "### schedule" in text
    assert (doc.parent / "experiments" / "schedule.png").is_file()
