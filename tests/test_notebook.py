"""The walk-through notebook runs top to bottom at the small preset, figures included."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "model_inversion_walkthrough.ipynb"


@pytest.mark.parametrize("use_shipped", [True, False])
def test_notebook_runs_top_to_bottom_at_the_small_preset(tmp_path, data_dir, use_shipped):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
    assert 'PRESET = "small"' in parameters.source and "USE_SHIPPED = True" in parameters.source  # the defaults
    parameters.source += (f"\nDATA_DIR = {os.path.abspath(data_dir)!r}\nWORK = {str(tmp_path / 'work')!r}\n"
                          f"USE_SHIPPED = {use_shipped}\n")
    client = NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError on the first cell that fails
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    # data samples, attacker curve, Part 1 grid, and a grid per DP level (shipped or trained: >= 2)
    assert len(figures) >= 5
    text = "".join(output.get("text", "") for output in outputs)
    assert "test MSE" in text and "top-1 re-identification" in text
    # each branch says which weights it used: the shipped files, or the DP targets it trained
    assert ("Using the shipped DP weights" in text) == use_shipped
    assert ("Trained the DP targets and their attackers" in text) == (not use_shipped)
