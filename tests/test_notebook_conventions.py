"""Every notebook follows the suite's anatomy (DESIGN.md §6) and runs in smoke mode."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BADGE = "https://colab.research.google.com/github/pxpo-lite/pxpo-lite/blob/main/notebooks/"


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _src(cell):
    s = cell["source"]
    return "".join(s) if isinstance(s, list) else s


def test_there_are_notebooks():
    assert any(p.name.startswith("00_") for p in NOTEBOOKS), "notebooks/00_*.ipynb (the tour) is missing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_outputs_are_stripped(path):
    for i, cell in enumerate(_cells(path)):
        if cell["cell_type"] == "code":
            assert cell.get("outputs", []) == [], f"{path.name} cell {i} has outputs: strip them (make strip)"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count: strip it"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_first_cell_is_badge_to_itself(path):
    first = _cells(path)[0]
    assert first["cell_type"] == "markdown", f"{path.name}: the first cell must be markdown with the Colab badge"
    assert BADGE + path.name in _src(first), f"{path.name}: the Colab badge must point at notebooks/{path.name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_one_parameters_cell_of_plain_literals_with_smoke(path):
    cells = [c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{path.name}: expected exactly one cell tagged 'parameters', found {len(cells)}"
    tree = ast.parse(_src(cells[0]))
    names = {}
    for node in tree.body:
        assert isinstance(node, (ast.Assign, ast.AnnAssign)), f"{path.name}: parameters cell may hold only assignments"
        target = node.targets[0] if isinstance(node, ast.Assign) else node.target
        names[target.id] = ast.literal_eval(node.value)  # plain literals only
    assert names.get("SMOKE") is False, f"{path.name}: the parameters cell must set SMOKE = False"
    assert "SEED" in names, f"{path.name}: the parameters cell must set SEED"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_anatomy(path):
    text = "\n".join(_src(c) for c in _cells(path))
    code = "\n".join(_src(c) for c in _cells(path) if c["cell_type"] == "code")
    assert "google.colab" in code and "enable_custom_widget_manager" in code, f"{path.name}: setup must handle Colab"
    assert "%pip install" in code, f"{path.name}: setup must install the package on Colab"
    assert "record(" in code, f"{path.name}: record results with pxpo_lite.results.record"
    assert "## Exercises" in text, f"{path.name}: end with an '## Exercises' section"
    for word in ("you will learn", "Prerequisites", "runtime"):
        assert word.lower() in text.lower(), f"{path.name}: the intro must state '{word}'"
    assert "input(" not in code, f"{path.name}: never wait for a human"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_runs_in_smoke_mode(path, executed_notebook):
    out, results, seconds = executed_notebook(path.name)
    assert results, f"{path.name} recorded no results"
