"""scripts/export_nbgrader.py: nbgrader source notebooks from the instructor notebooks — the cell
metadata nbgrader needs (schema 3), points from pxpo_lite/checks/registry.py, and autograder test
cells that fail unless the check passes. (nbgrader itself is not a dependency: its own
`generate_assignment`/`validate` were run by hand, see the script's docstring.)"""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from pxpo_lite.checks import registry

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("export_nbgrader", ROOT / "scripts" / "export_nbgrader.py")
export = importlib.util.module_from_spec(spec)
spec.loader.exec_module(export)

KEYS = {"grade", "grade_id", "locked", "schema_version", "solution", "task"}


def _src(cell):
    s = cell["source"]
    return "".join(s) if isinstance(s, list) else s


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("nbgrader")
    run = subprocess.run([sys.executable, "-I", str(ROOT / "scripts" / "export_nbgrader.py"), "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return out


def test_every_course_notebook_is_exported_with_nbgrader_metadata(exported):
    total = 0
    for stem, exercises in registry.NOTEBOOKS.items():
        path = exported / "source" / stem / f"{stem}.ipynb"
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        marked = [c for c in nb.cells if "nbgrader" in c.metadata]
        ids = [c.metadata.nbgrader["grade_id"] for c in marked]
        assert len(ids) == len(set(ids)) and all(re.fullmatch(r"[A-Za-z0-9_-]+", i) for i in ids), ids
        for c in marked:
            m = c.metadata.nbgrader
            assert set(m) == KEYS | ({"points"} if m["grade"] else set()), (stem, m)
            assert m["schema_version"] == 3 and m["task"] is False
        tests = [(i, c) for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code"]
        assert [c.metadata.nbgrader["points"] for _, c in tests] == [e.points for e in exercises]
        for (i, test), ex in zip(tests, exercises):
            m = test.metadata.nbgrader
            assert m["locked"] and not m["solution"]                         # an autograder test cell
            answer = nb.cells[i - 1]
            assert answer.metadata.nbgrader["solution"] and not answer.metadata.nbgrader["grade"]
            assert f"def {ex.function}(" in answer.source and answer.source.rstrip().endswith("### END SOLUTION")
            assert f"check_{ex.name}({ex.function})" in test.source
            total += m["points"]
        answers = [c for c in nb.cells if "answer" in c.metadata.get("tags", [])]
        assert answers and all(c.metadata.nbgrader["grade"] and c.metadata.nbgrader["solution"]
                               and c.metadata.nbgrader["points"] == 0 and c.cell_type == "markdown" for c in answers)
    assert total == sum(e.points for e in registry.EXERCISES)
    assert "ExecutePreprocessor.timeout = 600" in (exported / "nbgrader_config.py").read_text()


def test_the_split_loses_nothing(exported):
    """The answer cell and the cell after the test hold exactly the instructor cell's lines."""
    stem = "03_pixelwise_logprobs"
    original = [_src(c) for c in json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())["cells"]
                if "solution" in c["metadata"].get("tags", [])]
    cells = json.loads((exported / "source" / stem / f"{stem}.ipynb").read_text())["cells"]
    rebuilt = []
    for i, c in enumerate(cells):
        if c["metadata"].get("nbgrader", {}).get("solution") and c["cell_type"] == "code":
            assert cells[i + 1]["metadata"]["nbgrader"]["grade"]
            rest = cells[i + 2]
            assert rest["id"].endswith("-rest") and "nbgrader" not in rest["metadata"]
            rebuilt.append(_src(c) + "\n" + _src(rest))
    assert [r.split() for r in rebuilt] == [o.split() for o in original]


def _autograder(stem, label):
    nb = json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())
    src, _ = export.to_source(nb, stem, export.load_registry())
    ex = next(e for e in registry.EXERCISES if e.label == label)
    return ex, next(_src(c) for c in src["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == export.grade_id(label, "check"))


def test_autograder_cell_passes_a_right_answer_and_fails_a_wrong_or_missing_one():
    ex, code = _autograder("01b_rl_from_zero", "01b.1")

    def right(actions, rewards, mu, sigma, baseline=0.0):
        return ((rewards - baseline) * (actions - mu) / sigma**2).mean()

    def wrong(actions, rewards, mu, sigma, baseline=0.0):
        return (rewards * (actions - mu) / sigma**2).mean()        # the baseline is ignored

    def stub(actions, rewards, mu, sigma, baseline=0.0):
        raise NotImplementedError()                                 # what nbgrader's release leaves

    exec(compile(code, "autograder", "exec"), {ex.function: right, "torch": torch})
    for fn, status in ((wrong, "failed"), (stub, "not done")):
        with pytest.raises(AssertionError, match=f"exercise 01b.1 {status}"):
            exec(compile(code, "autograder", "exec"), {ex.function: fn, "torch": torch})


def test_exercise_cells_the_registry_does_not_know_are_refused():
    nb = json.loads((ROOT / "notebooks" / "00_tour.ipynb").read_text())
    for c in nb["cells"]:
        if "solution" in c["metadata"].get("tags", []):
            c["source"] = [s.replace("# Exercise 00.1:", "# Exercise 00.9:") for s in c["source"]]
    with pytest.raises(ValueError, match="does not list"):
        export.to_source(nb, "00_tour", export.load_registry())
    with pytest.raises(ValueError, match="no ### BEGIN SOLUTION"):
        export.split_exercise("def f(x):\n    return x\n", "f")
