"""Write the student versions of the notebooks: exercise solutions replaced by stubs, answers removed.

    python scripts/make_student.py                         # every notebook -> student/
    python scripts/make_student.py notebooks/01b_rl_from_zero.ipynb --out /tmp/student
    make student                                           # the same as the first line

The committed notebooks are the **instructor** versions. In a code cell tagged ``solution``
the lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (inside a function body) are
replaced by ``raise NotImplementedError("Exercise N: <title>")`` at the same indentation, so the
function keeps its signature and docstring; N and the title come from the cell's first line,
``# Exercise N: <title>``. Cells tagged ``answer`` (the answers to "Think!" questions) are removed,
and all outputs are stripped. The exercise's ``pxpo_lite.checks.check_*`` call then reports
"not done yet" and the notebook continues with the reference implementation, so a student
notebook runs top to bottom as it is. ``python -m pxpo_lite.grade student/*.ipynb`` grades the
filled-in versions.

``student/`` is generated output: it is not committed (add ``student/`` to ``.gitignore``),
rebuild it with this command. Notebooks are read from and written next to the same relative
layout (``notebooks/X.ipynb`` -> ``student/X.ipynb``); they find their data through the installed
package, not through relative paths, so they run from ``student/`` too.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
TITLE = re.compile(r"^#\s*Exercise\s+([0-9A-Za-z.]*[0-9A-Za-z])\s*[:—–-]?\s*(.*)$")


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


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


def make_student(nb: nbformat.NotebookNode, name: str = "notebook") -> tuple[nbformat.NotebookNode, dict]:
    """The student version of a notebook (a new object) and counts {"stubbed": n, "answers_removed": n}."""
    nb = nbformat.from_dict(nbformat.from_dict(nb))  # deep copy
    cells, stubbed, removed = [], 0, 0
    for i, cell in enumerate(nb.cells):
        tags = _tags(cell)
        if "answer" in tags:
            removed += 1
            continue
        if cell.cell_type == "code":
            if "solution" in tags:
                if BEGIN not in cell.source:
                    raise ValueError(f"{name} cell {i} is tagged 'solution' but has no {BEGIN} … {END} block")
                cell.source = stub_source(cell.source, f"{name} cell {i}")
                stubbed += 1
            elif BEGIN in cell.source:
                raise ValueError(f"{name} cell {i} has a {BEGIN} block but is not tagged 'solution'; tag it")
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
        cells.append(cell)
    nb.cells = cells
    return nb, {"stubbed": stubbed, "answers_removed": removed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    ap.add_argument("--out", type=Path, default=ROOT / "student", help="output folder (default: student/)")
    args = ap.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    if not paths:
        print("no notebooks given or found in notebooks/", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for p in paths:
        if p.suffix != ".ipynb" or not p.is_file():
            print(f"{p}: not a notebook file (.ipynb)", file=sys.stderr)
            return 1
        student, counts = make_student(nbformat.read(p, as_version=4), p.name)
        nbformat.write(student, args.out / p.name)
        print(f"{p.name}: {counts['stubbed']} exercise cell(s) stubbed, {counts['answers_removed']} answer cell(s) removed")
    print(f"student versions in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
