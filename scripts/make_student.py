"""Write the student versions of the notebooks: exercise solutions replaced by stubs, answers removed.

    python3 scripts/make_student.py                        # every notebook -> student/ (what `make student` runs)
    python3 scripts/make_student.py notebooks/01b_rl_from_zero.ipynb --out /tmp/student
    python3 scripts/make_student.py --check                # exit 1 when student/ is out of date

Plain Python: no package, no torch, no nbformat (a notebook is JSON), so it runs anywhere in seconds.

The committed notebooks in ``notebooks/`` are the **instructor** versions. In a code cell tagged
``solution`` the lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (inside a function
body) are replaced by ``raise NotImplementedError("Exercise N: <title>")`` at the same
indentation, so the function keeps its signature and docstring; N and the title come from the
cell's first line, ``# Exercise N: <title>``. Cells tagged ``answer`` (the answers to "Think!"
questions) are removed, all outputs are stripped, and the Colab badge opens the student version
(``…/student/<name>`` instead of ``…/notebooks/<name>``). The exercise's ``pxpo_lite.checks.check_*``
call then reports "not done yet" and the notebook continues with the reference implementation,
so a student notebook runs top to bottom as it is. ``python -m pxpo_lite.grade`` grades the
filled-in versions.

``student/`` is generated and committed (learners open it from the repository and from Colab);
``tests/test_course.py`` fails when it is out of date with ``notebooks/``: after editing a notebook,
run ``make student`` (or this script) and commit ``student/`` with it. The notebooks find their
data through the installed package, not through relative paths, so they run from ``student/`` too.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
TITLE = re.compile(r"^#\s*Exercise\s+([0-9A-Za-z.]*[0-9A-Za-z])\s*[:—–-]?\s*(.*)$")
BADGE = re.compile(r"(https://colab\.research\.google\.com/github/[^)\s]*?/)notebooks/([^)\s/]+\.ipynb)")


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _source(cell) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def _lines(text: str) -> list[str]:
    """A cell's source as Jupyter saves it: a list of lines, each with its newline but the last."""
    return text.splitlines(keepends=True)


def read_notebook(path: Path) -> dict:
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ValueError(f"{path}: not a notebook (JSON without a 'cells' list)")
    return nb


def dumps(nb: dict) -> str:
    """The notebook as Jupyter and nbformat write it (sorted keys, indent 1, UTF-8, final newline)."""
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def stub_source(source: str, where: str = "cell") -> str:
    """Replace every BEGIN/END SOLUTION block of a cell's source by a ``raise NotImplementedError``."""
    lines = source.splitlines()
    m = TITLE.match(lines[0].strip()) if lines else None
    label = f"Exercise {m.group(1)}: {m.group(2).strip()}" if m else "Exercise"
    label = label.rstrip(": ")
    out, inside, begin_at = [], False, 0
    for n, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"{where}: line {n}: {BEGIN} inside another solution block; close it with {END} first")
            indent = line[: len(line) - len(line.lstrip())]
            if not indent:
                raise ValueError(
                    f"{where}: line {n}: {BEGIN} is not indented. Put solutions inside a function body, so the stub "
                    "raises only when the function is called (the check then reports 'not done')."
                )
            out.append(f"{indent}raise NotImplementedError({label + ' — write your code here'!r})")
            inside, begin_at = True, n
        elif stripped == END:
            if not inside:
                raise ValueError(f"{where}: line {n}: {END} without a {BEGIN} before it")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: the {BEGIN} of line {begin_at} is never closed with {END}")
    return "\n".join(out) + ("\n" if source.endswith("\n") else "")


def make_student(nb: dict, name: str = "notebook") -> tuple[dict, dict]:
    """The student version of a notebook (a new dict; the input is left as it is) and counts
    ``{"stubbed": n, "answers_removed": n}``."""
    nb = copy.deepcopy(dict(nb))
    cells, stubbed, removed = [], 0, 0
    for i, cell in enumerate(nb["cells"]):
        cell = copy.deepcopy(dict(cell))
        tags, source = _tags(cell), _source(cell)
        if "answer" in tags:
            removed += 1
            continue
        if cell.get("cell_type") == "code":
            if "solution" in tags:
                if BEGIN not in source:
                    raise ValueError(f"{name} cell {i} is tagged 'solution' but has no {BEGIN} … {END} block")
                cell["source"] = _lines(stub_source(source, f"{name} cell {i}"))
                stubbed += 1
            elif BEGIN in source:
                raise ValueError(f"{name} cell {i} has a {BEGIN} block but is not tagged 'solution'; tag it")
            cell["outputs"], cell["execution_count"] = [], None
            cell.get("metadata", {}).pop("execution", None)
        elif cell.get("cell_type") == "markdown" and BADGE.search(source):
            cell["source"] = _lines(BADGE.sub(r"\1student/\2", source))  # the badge opens the student version
        cells.append(cell)
    nb["cells"] = cells
    return nb, {"stubbed": stubbed, "answers_removed": removed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    ap.add_argument("--out", type=Path, default=ROOT / "student", help="output folder (default: student/)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when the output folder is out of date")
    args = ap.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    if not paths:
        print("no notebooks given or found in notebooks/", file=sys.stderr)
        return 1
    for p in paths:
        if p.suffix != ".ipynb" or not p.is_file():
            print(f"{p}: not a notebook file (.ipynb); pass notebooks from notebooks/", file=sys.stderr)
            return 1
        if p.resolve().parent == args.out.resolve():
            print(f"{p}: is in the output folder {args.out}; pass the instructor notebook (notebooks/…)", file=sys.stderr)
            return 1
    stale = []
    if not args.check:
        args.out.mkdir(parents=True, exist_ok=True)
    for p in paths:
        try:
            student, counts = make_student(read_notebook(p), p.name)
        except ValueError as e:
            print(str(e), file=sys.stderr)
            return 1
        target, text = args.out / p.name, dumps(student)
        if args.check:
            if not target.is_file() or target.read_text(encoding="utf-8") != text:
                stale.append(target)
            continue
        target.write_text(text, encoding="utf-8")
        print(f"{p.name}: {counts['stubbed']} exercise cell(s) stubbed, {counts['answers_removed']} answer cell(s) removed")
    if args.check:
        extra = sorted(set(args.out.glob("*.ipynb")) - {args.out / p.name for p in paths}) if not args.notebooks else []
        for t in stale + extra:
            print(f"{t}: out of date" if t in stale else f"{t}: has no instructor notebook", file=sys.stderr)
        if stale or extra:
            print("run `make student` (python3 scripts/make_student.py) and commit student/", file=sys.stderr)
            return 1
        print(f"{args.out}/ is up to date")
        return 0
    print(f"student versions in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
