"""Every notebook follows the suite's anatomy and runs in smoke mode.

Anatomy: a first markdown cell with the Colab badge, intro (what you will learn, prerequisites,
runtime), a set-up cell that installs the package on Colab, one ``parameters`` cell with
``SMOKE``/``SEED``, results recorded with ``pxpo_lite.results.record``, exercises at the end.
Badges, install lines and kernelspecs agree with pyproject's ``[project.urls] Repository`` and
``pxpo_lite.__version__`` (``make sync`` writes them: ``scripts/sync_notebooks.py``).
"""
from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

import pytest

import pxpo_lite

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REPO_URL = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
OWNER_REPO = REPO_URL.removeprefix("https://github.com/")
BADGE = f"https://colab.research.google.com/github/{OWNER_REPO}/blob/v{pxpo_lite.__version__}/notebooks/"
INSTALL = f'%pip install -q "pxpo-lite @ git+{REPO_URL}@v{pxpo_lite.__version__}"'
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


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


def test_repository_is_a_github_url():
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", REPO_URL), REPO_URL


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_first_cell_is_badge_to_itself(path):
    first = _cells(path)[0]
    assert first["cell_type"] == "markdown", f"{path.name}: the first cell must be markdown with the Colab badge"
    links = re.findall(r"https://colab\.research\.google\.com/github/[^)\s]+", _src(first))
    assert links == [BADGE + path.name], (
        f"{path.name}: the Colab badge must point at {BADGE + path.name} (pyproject's Repository, "
        f"tag v{pxpo_lite.__version__}), found {links}; run `make sync`"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_colab_install_is_pinned_to_this_version(path):
    lines = [l.strip() for c in _cells(path) if c["cell_type"] == "code" for l in _src(c).splitlines() if "pip install" in l]
    assert INSTALL in lines, f"{path.name}: the set-up cell must install `{INSTALL}`; run `make sync`"
    others = [l for l in lines if re.search(r"pxpo[-_]lite", l) and l != INSTALL]
    assert not others, f"{path.name}: other installs of the package {others}; keep one, `{INSTALL}`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_standard_python3_kernelspec(path):
    spec = json.loads(path.read_text())["metadata"].get("kernelspec")
    assert spec == KERNELSPEC, f"{path.name}: kernelspec {spec}, should be {KERNELSPEC}; run `make sync`"


def test_sync_check_lists_every_disagreement(tmp_path):
    """`sync_notebooks.py --check` exits 1 naming each disagreement; without --check it repairs them."""
    nb = json.loads(NOTEBOOKS[0].read_text())
    nb["cells"][0]["source"] = [s.replace(f"/blob/v{pxpo_lite.__version__}/", "/blob/main/") for s in nb["cells"][0]["source"]]
    for c in nb["cells"]:
        c["source"] = [s.replace(INSTALL, "%pip install -q git+https://github.com/someone/pxpo-lite") for s in c["source"]]
    nb["metadata"]["kernelspec"] = {"display_name": "Python (x)", "language": "python", "name": "x"}
    bad = tmp_path / NOTEBOOKS[0].name
    bad.write_text(json.dumps(nb, indent=1))
    good = tmp_path / NOTEBOOKS[1].name
    shutil.copy(NOTEBOOKS[1], good)
    script = [sys.executable, str(ROOT / "scripts" / "sync_notebooks.py")]
    run = subprocess.run(script + ["--check", str(bad), str(good)], capture_output=True, text=True)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "badge should be" in run.stdout and "install line is" in run.stdout and "kernelspec is" in run.stdout
    assert good.name not in run.stdout
    assert subprocess.run(script + [str(bad)], capture_output=True, text=True).returncode == 0
    assert subprocess.run(script + ["--check", str(bad), str(good)], capture_output=True, text=True).returncode == 0
    repaired = json.loads(bad.read_text())
    assert repaired["metadata"]["kernelspec"] == KERNELSPEC
    assert [c["source"] for c in repaired["cells"]] == [c["source"] for c in json.loads(NOTEBOOKS[0].read_text())["cells"]]


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
@pytest.mark.parametrize("path", NOTEBOOKS[::-1], ids=[p.name for p in NOTEBOOKS[::-1]])  # last first: test_course.py
def test_runs_in_smoke_mode(path, executed_notebook):  # runs the same notebooks first first, so two workers rarely wait on one
    out, results, seconds = executed_notebook(path.name)
    assert results, f"{path.name} recorded no results"


# --------------------------------------------------------------------------------------------
# The closing order: ## Summary -> ### Think! (questions, each followed by its `answer` cell)
# -> ## Exercises -> ## Next (optional) -> the results cell, the notebook's last cell.
# --------------------------------------------------------------------------------------------
# Enforced for every notebook.


def _headings(cell):
    """The markdown headings of a cell, in order (lines in ``` fences are not headings)."""
    out, fenced = [], False
    for line in _src(cell).splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            out.append(line.strip())
    return out


def closing_order_problems(cells) -> list[str]:
    """What breaks the closing order; [] when the notebook follows it.

    From the '## Summary' heading to the end of the notebook the headings are exactly
    '## Summary', '### Think!', '## Exercises' (sub-headings '### …' allowed after it) and an
    optional '## Next' last; each of these appears once in the notebook; at least one cell tagged
    `answer` lies between Think! and Exercises and none after Exercises; the only code cell from the
    Summary on is the last cell, the results cell ('# Results of this notebook …')."""
    heads = [(i, h) for i, c in enumerate(cells) if c["cell_type"] == "markdown" for h in _headings(c)]
    names = [h for _, h in heads]
    problems = []
    for h, allowed in (("## Summary", (1,)), ("### Think!", (1,)), ("## Exercises", (1,)), ("## Next", (0, 1))):
        if names.count(h) not in allowed:
            problems.append(f"'{h}' appears {names.count(h)} times (expected {' or '.join(map(str, allowed))})")
    if problems:
        return problems
    k = names.index("## Summary")
    closing = names[k:]
    top = [h for h in closing if not h.startswith("### ") or h == "### Think!"]
    want = ["## Summary", "### Think!", "## Exercises"] + (["## Next"] if "## Next" in names else [])
    if top != want:
        problems.append(f"from '## Summary' on, the headings are {top}; expected {want}")
    think = names.index("### Think!")
    if think > k and names.index("## Exercises") > think:
        between = closing[1 : closing.index("### Think!")] + closing[closing.index("### Think!") + 1 : closing.index("## Exercises")]
        if between:
            problems.append(f"headings {between} between Summary, Think! and Exercises")
    if "## Next" in names and names.index("## Next") != len(names) - 1:
        problems.append(f"headings after '## Next': {names[names.index('## Next') + 1:]}")
    first = heads[k][0]
    cell_of = {h: i for i, h in heads}
    is_answer = lambda c: "answer" in c.get("metadata", {}).get("tags", [])
    answers = [i for i, c in enumerate(cells) if is_answer(c)]
    if not any(cell_of["### Think!"] < i < cell_of["## Exercises"] for i in answers):
        problems.append("no cell tagged 'answer' between '### Think!' and '## Exercises'")
    late = [i for i in answers if i > cell_of["## Exercises"]]
    if late:
        problems.append(f"cells tagged 'answer' after '## Exercises': {late}")
    code = [i for i in range(first, len(cells)) if cells[i]["cell_type"] == "code"]
    if code != [len(cells) - 1] or not _src(cells[-1]).startswith("# Results of this notebook"):
        problems.append(f"code cells from '## Summary' on: {code}; expected only the results cell, last")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_closing_order(path):
    problems = closing_order_problems(_cells(path))
    assert not problems, f"{path.name}: " + "; ".join(problems) + (
        " — close every notebook with Summary -> Think! (answers) -> Exercises -> Next -> results cell")


def _md(text, tags=()):
    return {"cell_type": "markdown", "metadata": {"tags": list(tags)} if tags else {}, "source": text}


def _code(text):
    return {"cell_type": "code", "metadata": {}, "source": text, "outputs": [], "execution_count": None}


def test_closing_order_check_accepts_the_order_and_names_each_break():
    good = [_md("# NB\n## 1. Section"), _code("x = 1"), _md("## Summary\n- a\n\n### Think!\n1. Why?"),
            _md("**Answer.** Because.", ["answer"]), _md("## Exercises\n1. Try.\n### Harder\n2. Try more."),
            _md("## Next\nNotebook 02."), _code("# Results of this notebook (read back by the tests)\nrecord()")]
    assert closing_order_problems(good) == []
    assert closing_order_problems(good[:5] + good[6:]) == []                      # no Next: allowed
    assert closing_order_problems(good[:1] + [_md("```\n## Summary\n```")] + good[1:]) == []  # a fenced line is no heading
    swapped = good[:2] + good[4:6] + good[2:4] + good[6:]                          # Exercises/Next before Summary
    assert any("expected ['## Summary', '### Think!', '## Exercises', '## Next']" in p for p in closing_order_problems(swapped))
    section_after = good[:6] + [_md("## 7. One more section")] + good[6:]
    assert any("from '## Summary' on" in p for p in closing_order_problems(section_after))
    code_inside = good[:4] + [_code("print(1)")] + good[4:]
    assert any("code cells from '## Summary' on" in p for p in closing_order_problems(code_inside))
    no_answers = good[:3] + good[4:]
    assert any("no cell tagged 'answer'" in p for p in closing_order_problems(no_answers))
    answer_late = good[:5] + [_md("**Answer.**", ["answer"])] + good[5:]
    assert any("after '## Exercises'" in p for p in closing_order_problems(answer_late))
    next_first = good[:4] + [good[5], good[4]] + good[6:]
    assert closing_order_problems(next_first)
    results_not_last = good[:-1] + [good[-1], _md("more")]
    assert any("code cells" in p for p in closing_order_problems(results_not_last))
    no_summary = [c for c in good if "## Summary" not in c["source"]] + [_md("### Think!")]
    assert any("'## Summary' appears 0 times" in p for p in closing_order_problems(no_summary))
