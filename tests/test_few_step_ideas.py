"""benchmarks/few_step_ideas.py (the measured attempts of docs/few_step.md that did not help):
the distillation target it shares with progressive distillation, and its refusal of bad input.
Its runs themselves are minutes of training on MNIST (docs/few_step.md has them)."""

from __future__ import annotations

import pytest
import torch

from conftest import load_benchmark_script
from difflab.schedules import make_schedule


@pytest.fixture(scope="module")
def ideas():
    return load_benchmark_script("few_step_ideas")


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_x_tilde_makes_one_ddim_step_land_where_the_teacher_did(ideas, schedule):
    sched = make_schedule(schedule, 1000)
    q, grid = ideas.Quarter(sched), ideas.grid(sched, 4)
    assert grid.tolist()[-1] == 1000 and len(grid) == 5  # four code times, then the data
    gen = torch.Generator().manual_seed(0)
    k = torch.tensor([0, 1, 2, 3])
    t, t_end = grid[k], grid[k + 1]
    z_t, z_end = torch.randn((4, 1, 3, 3), generator=gen), torch.randn((4, 1, 3, 3), generator=gen)
    x0 = ideas.x_tilde(z_t, z_end, t, t_end, q).double()
    (a_t, s_t), (a_e, s_e) = q.at(t), q.at(t_end)
    eps = (z_t.double() - a_t.double() * x0) / s_t.double()  # DDIM's eps for that x0
    landed = a_e.double() * x0 + s_e.double() * eps  # Song et al. 2021, Eq. 12, eta = 0
    torch.testing.assert_close(landed, z_end.double(), rtol=0, atol=1e-4)
    torch.testing.assert_close(x0[3], z_end[3].double())  # the last step's target is its end


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
