"""docs/tutorial.ipynb runs, top to bottom, in a real Jupyter kernel (nbclient): it never rots."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tutorial.ipynb"


def test_the_tutorial_notebook_runs(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = ["".join(o.get("text", "") for o in cell.get("outputs", [])) for cell in nb.cells
               if cell.cell_type == "code"]
    text = "\n".join(outputs)
    assert "Hamiltonians match" in text and "peak at" in text and "epoch 4: mean squared error" in text
    errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    assert (tmp_path / "tutorial" / "sweepcat.db").exists()  # it wrote beside itself, nowhere else
