"""The walk-through notebook runs top to bottom at the small preset, figures included, with the
shipped DP weights and, in the same kernel, again from its DP branch on at ``USE_SHIPPED = False``
(the cells before that branch do not read the flag, so the kernel trains Part 1 once for both)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "model_inversion_walkthrough.ipynb"
DP_BRANCH = "shipped = USE_SHIPPED and manifest_path.exists()"


def _execute(client: NotebookClient, notebook, cells: list) -> list:
    """Run ``cells`` (appended to ``notebook`` when they are not in it) in the client's kernel; their outputs."""
    for cell in cells:
        if cell not in notebook.cells:
            notebook.cells.append(cell)
        client.execute_cell(cell, notebook.cells.index(cell))  # raises CellExecutionError if the cell fails
    return [output for cell in cells if cell.cell_type == "code" for output in cell.outputs]


def _text(outputs: list) -> str:
    return "".join(output.get("text", "") for output in outputs)


def _figures(outputs: list) -> list:
    return [output for output in outputs if "image/png" in output.get("data", {})]


def test_notebook_runs_top_to_bottom_at_the_small_preset_with_either_dp_branch(tmp_path, data_dir):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
    assert 'PRESET = "small"' in parameters.source and "USE_SHIPPED = True" in parameters.source  # the defaults
    parameters.source += f"\nDATA_DIR = {os.path.abspath(data_dir)!r}\nWORK = {str(tmp_path / 'work')!r}\n"
    branch = next(index for index, cell in enumerate(notebook.cells) if DP_BRANCH in cell.source)
    client = NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    with client.setup_kernel():
        shipped = _execute(client, notebook, list(notebook.cells))
        flag = nbformat.v4.new_code_cell("USE_SHIPPED = False")
        trained = _execute(client, notebook, [flag, *(copy.deepcopy(cell) for cell in notebook.cells[branch:])])
    for outputs in (shipped, trained):
        assert not [output for output in outputs if output.output_type == "error"]
        assert "top-1 re-identification" in _text(outputs)
    assert "test MSE" in _text(shipped)
    # data samples, attacker curve, Part 1 grid, and a grid per shipped DP level (>= 2)
    assert len(_figures(shipped)) >= 5
    # each branch says which weights it used: the shipped files, or the DP targets it trained
    assert "Using the shipped DP weights" in _text(shipped) and "Trained the DP" not in _text(shipped)
    assert "Trained the DP targets and their attackers" in _text(trained) and "shipped DP" not in _text(trained)
    assert len(_figures(trained)) == 3  # a grid per DP level it trained
