"""notebooks/learning_path.py runs top to bottom as a notebook: converted by jupytext to an
.ipynb and executed cell by cell in a Jupyter kernel (nbclient), with small settings and real
MNIST. Needs the ``notebook`` extra (jupytext, nbclient, ipykernel); `make test-slow` has it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "learning_path.py"
MNIST = ROOT.parent / "shared" / "data" / "mnist"


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.is_dir(), reason="real MNIST not present")
def test_the_notebook_executes_top_to_bottom(tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = jupytext.read(NOTEBOOK)
    assert sum(cell.cell_type == "code" for cell in notebook.cells) >= 8
    for name, value in {"DIFFLAB_NOTEBOOK_SMALL": "1", "DATA": str(MNIST),
                        "DIFFLAB_NOTEBOOK_OUT": str(tmp_path / "out"),
                        "OMP_NUM_THREADS": "2"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)  # the kernel inherits the environment
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on a failure
    print(f"notebook executed in {time.perf_counter() - start:.0f} s")
    # Every picture it shows was written and is shown in the executed notebook.
    written = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert {"forward_process.png", "feature_maps.png", "samples.png", "one_step.png"} <= set(
        written
    )
    shown = [o for cell in notebook.cells if cell.cell_type == "code"
             for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]  # fmt: skip
    assert len(shown) >= len(written) - 1
    assert os.path.getsize(tmp_path / "out" / "one_step.png") > 1000
