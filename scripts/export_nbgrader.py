"""Export the instructor notebooks as nbgrader *source* notebooks, ready for
``nbgrader generate_assignment``.

    python3 scripts/export_nbgrader.py                       # notebooks/*.ipynb -> build/nbgrader/source/<stem>/<stem>.ipynb
    python3 scripts/export_nbgrader.py --assignment week1 notebooks/00_tour.ipynb notebooks/01_denoising_as_an_mdp.ipynb

Layout: ``<out>/source/<assignment>/<notebook>.ipynb``, one assignment per notebook unless
``--assignment`` names one for all. What each cell becomes (nbgrader cell metadata, schema 3):

* an exercise cell (tagged ``solution``, ``# Exercise <label>: …``) is split in three:
  1. its head up to the end of the learner's function — an **autograded answer** (solution; the
     ``### BEGIN SOLUTION``/``### END SOLUTION`` markers are nbgrader's own, so
     ``generate_assignment`` replaces the solution with its stub);
  2. a new **autograder test** cell (graded, locked), worth the exercise's points from
     ``pxpo_lite/checks/registry.py``: it runs the exercise's check on the learner's function and
     fails unless the check printed ✓;
  3. the rest of the cell (the notebook's own check call and what uses its result), unchanged;
* a "Think!" answer (tagged ``answer``) becomes a **manually graded answer** worth 0 points
  (``--think-points`` to change): the learner writes an answer, a TA can read and comment on it;
  the course's grade counts the exercises only (COURSE.md, *Grading*);
* every other cell is left as it is (not locked: learners change parameters and experiment).

Checked with nbgrader 0.9.6 itself (in a throwaway venv, on 01b): ``nbgrader generate_assignment``
accepts the exported notebook and writes the release version (each solution replaced by nbgrader's
stub, each Think! answer by "YOUR ANSWER HERE"); ``nbgrader validate
--Execute.kernel_name=pxpo-lite`` passes the source version and fails the release version on
exactly its two autograder cells ("exercise 01b.1 not done", "exercise 01b.2 not done"). The
exported ``nbgrader_config.py`` raises nbgrader's 30 s cell timeout to 600 s (training cells).

Not covered by nbgrader: the package's grader also flags a function that wraps a ``pxpo_lite``
reference (``python -m pxpo_lite.grade``); nbgrader gives such a function its points.
Plain python3, standard library only (the registry is read from its file, without torch).
"""
from __future__ import annotations

import argparse
import ast
import copy
import importlib.util
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = 3


def load_registry(path: Path = ROOT / "pxpo_lite" / "checks" / "registry.py"):
    """pxpo_lite.checks.registry, loaded from its file (the package's __init__ would import torch)."""
    spec = importlib.util.spec_from_file_location("_pxpo_registry", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses looks the module up while building the class
    spec.loader.exec_module(mod)
    return mod


def _source(cell) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def _lines(text: str) -> list[str]:
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def grade_id(label: str, part: str) -> str:
    """nbgrader grade ids allow letters, digits, '_' and '-': '03.1' -> 'ex03_1-check'."""
    return f"ex{re.sub(r'[^A-Za-z0-9]', '_', label)}-{part}"


def nbgrader_meta(*, solution: bool, grade: bool, locked: bool, gid: str, points: float | None = None) -> dict:
    meta = {"grade": grade, "grade_id": gid, "locked": locked, "schema_version": SCHEMA, "solution": solution, "task": False}
    if grade:
        meta["points"] = points
    return meta


def split_exercise(src: str, function: str) -> tuple[str, str]:
    """(head, rest): head ends with the learner's function (and its ### END SOLUTION line)."""
    tree = ast.parse(src)
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function]
    if len(defs) != 1:
        raise ValueError(f"expected one `def {function}(...)` at the top level of the exercise cell, found {len(defs)}")
    lines = src.split("\n")
    start, end = defs[0].lineno, defs[0].end_lineno        # 1-based, inclusive
    marks = [i + 1 for i, line in enumerate(lines) if "### END SOLUTION" in line and i + 1 >= start]
    if not marks or not any("### BEGIN SOLUTION" in line for line in lines[start - 1 : marks[0]]):
        raise ValueError(f"`def {function}` holds no ### BEGIN SOLUTION ... ### END SOLUTION block")
    cut = max(end, marks[0])                                # the END marker is a comment: not in the def's span
    head, rest = "\n".join(lines[:cut]).rstrip("\n"), "\n".join(lines[cut:]).strip("\n")
    return head, rest


def autograder_source(ex) -> str:
    """The autograder test: run the check on the learner's function; pass only on ✓."""
    return (f"# Autograder test, exercise {ex.label} ({ex.points} point{'s' if ex.points != 1 else ''}): "
            f"passes only when the check prints ✓\n"
            f"from pxpo_lite import checks as _checks\n"
            f"_checks.OUTCOMES.pop({ex.name!r}, None)\n"
            f"_checks.check_{ex.name}({ex.function})\n"
            f"_outcome = _checks.OUTCOMES.get({ex.name!r}, {{'status': 'failed', 'message': 'the check reported nothing'}})\n"
            f"assert _outcome['status'] == _checks.PASSED, f\"exercise {ex.label} {{_outcome['status']}}: {{_outcome['message']}}\"")


def to_source(nb: dict, stem: str, registry, think_points: float = 0) -> tuple[dict, dict]:
    """An nbgrader source notebook from an instructor notebook; also counts what was marked."""
    by_label = {e.label: e for e in registry.EXERCISES if e.notebook == stem}
    out = copy.deepcopy(nb)
    cells, counts, seen, n_answer = [], {"exercises": 0, "points": 0, "answers": 0}, set(), 0
    for cell in out["cells"]:
        src = _source(cell)
        if "solution" in _tags(cell):
            m = re.match(r"# Exercise (\S+?):", src)
            if not m or m.group(1) not in by_label:
                raise ValueError(f"{stem}: an exercise cell that the registry does not list: {src.splitlines()[0]!r}")
            ex = by_label[m.group(1)]
            head, rest = split_exercise(src, ex.function)
            cid = cell.get("id", grade_id(ex.label, "cell"))
            cell["source"] = _lines(head)
            cell["metadata"]["nbgrader"] = nbgrader_meta(solution=True, grade=False, locked=False,
                                                         gid=grade_id(ex.label, "solution"))
            test = {"cell_type": "code", "execution_count": None, "id": f"{cid}-check", "outputs": [],
                    "metadata": {"nbgrader": nbgrader_meta(solution=False, grade=True, locked=True,
                                                           gid=grade_id(ex.label, "check"), points=ex.points)},
                    "source": _lines(autograder_source(ex))}
            cells += [cell, test]
            if rest:
                cells.append({"cell_type": "code", "execution_count": None, "id": f"{cid}-rest", "metadata": {},
                              "outputs": [], "source": _lines(rest)})
            seen.add(ex.label)
            counts["exercises"] += 1
            counts["points"] += ex.points
        elif "answer" in _tags(cell):
            n_answer += 1
            cell["metadata"]["nbgrader"] = nbgrader_meta(solution=True, grade=True, locked=False,
                                                         gid=f"think{n_answer}-answer", points=think_points)
            cells.append(cell)
            counts["answers"] += 1
        else:
            cells.append(cell)
    missing = sorted(set(by_label) - seen)
    if missing:
        raise ValueError(f"{stem}: the registry lists exercise(s) {missing} that the notebook does not have")
    out["cells"] = cells
    return out, counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="instructor notebooks (default: notebooks/*.ipynb)")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "nbgrader", help="the nbgrader course folder")
    ap.add_argument("--assignment", default=None, help="one assignment for all notebooks (default: one per notebook)")
    ap.add_argument("--think-points", type=float, default=0, help="points of each Think! answer (default 0)")
    args = ap.parse_args(argv)
    registry = load_registry()
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in paths:
        stem = path.stem
        if stem not in registry.NOTEBOOKS:
            print(f"{path}: not a course notebook (pxpo_lite/checks/registry.py), skipped", file=sys.stderr)
            continue
        nb, counts = to_source(json.loads(path.read_text()), stem, registry, args.think_points)
        dest = args.out / "source" / (args.assignment or stem) / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        print(f"{dest}: {counts['exercises']} autograded exercise(s), {counts['points']} point(s); "
              f"{counts['answers']} Think! answer(s) at {args.think_points:g} point(s)")
    config = args.out / "nbgrader_config.py"
    if not config.exists():  # nbgrader's default cell timeout (30 s) is shorter than some full-mode cells
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text("c = get_config()  # noqa: F821 (nbgrader's config loader defines it)\n"
                          "c.ExecutePreprocessor.timeout = 600  # full-mode training cells take minutes on a CPU\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
