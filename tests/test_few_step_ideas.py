"""benchmarks/few_step_ideas.py (the measured attempts of docs/few_step.md that did not help):
its refusal of bad input. Its runs themselves are minutes of training on MNIST (docs/few_step.md
has them); the distillation target they share with progressive distillation is tested in
test_progressive.py."""

from __future__ import annotations

import pytest

from conftest import load_benchmark_script


@pytest.fixture(scope="module")
def ideas():
    return load_benchmark_script("few_step_ideas")


@pytest.mark.parametrize("mode", ["etax", "eta2", "ancestral"])
def test_a_bad_sampler_mode_is_one_line_and_writes_nothing(ideas, mode, tmp_path, capsys):
    out = tmp_path / "images.npz"
    with pytest.raises(SystemExit) as stop:
        ideas.main(
            ["stochastic", "--checkpoint", "x.safetensors", "--mode", mode, "--out", str(out)]
        )
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--mode {mode}: expected ddim, meng or eta<X> with X in [0, 1]" in err
    assert not out.exists()
