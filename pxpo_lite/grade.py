"""Grade filled-in student notebooks: run each headless and report every exercise's check.

    python -m pxpo_lite.grade student/01b_rl_from_zero.ipynb student/03_pixelwise_logprobs.ipynb --json grades.json

Each notebook is executed with papermill in smoke mode (``SMOKE=True``; ``--full`` for full
mode) in its own folder; the executed copies go to ``--out`` (default: a temporary folder). The
exercises a notebook contains are the ``checks.check_*(...)`` calls in its source; each one's
outcome is read back from the executed notebook's outputs (MIME ``pxpo_lite.checks.MIME``):

* ``passed`` — the learner's function matched the reference (values and gradients);
* ``failed`` — it did not (the hint is reported), or it raised an error;
* ``not done`` — it still raises ``NotImplementedError``;
* ``not run`` — the notebook stopped (an error in another cell) before the check ran.

The score of a notebook is passed / exercises; the total is over all exercises. A table is
printed, and ``--json`` writes ``{"notebooks": {name: {"exercises": {...}, "score": ...,
"error": ...}}, "passed": n, "total": n, "score": ...}``. The exit status is 0 even when
exercises fail (it is a report), 2 when a notebook cannot be read.

The student versions come from ``scripts/make_student.py``; every notebook (00–08, 01b) has
exercises (the list is in ``pxpo_lite.checks``).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

from .checks import MIME, NOT_DONE, PASSED

NOT_RUN = "not run"
_CALL = re.compile(r"\bchecks\.check_([a-z0-9_]+)\s*\(")


def expected_exercises(notebook: str | Path) -> list[str]:
    """The exercises a notebook checks: names of ``checks.check_<name>(`` calls in its code cells, in order."""
    nb = json.loads(Path(notebook).read_text())
    names: list[str] = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            names += [n for n in _CALL.findall(src) if n not in names]
    return names


def read_outcomes(executed: str | Path) -> dict[str, dict]:
    """Exercise outcomes displayed by ``pxpo_lite.checks`` in an executed notebook (a later one wins)."""
    nb = json.loads(Path(executed).read_text())
    out: dict[str, dict] = {}
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []):
            item = o.get("data", {}).get(MIME)
            if item:
                out[item["exercise"]] = {"status": item["status"], "message": item["message"]}
    return out


def kernel_name(name: str | None = None) -> str:
    """``name``, else the project's kernel ``pxpo-lite`` when registered, else ``python3``."""
    if name:
        return name
    from jupyter_client.kernelspec import KernelSpecManager

    return "pxpo-lite" if "pxpo-lite" in KernelSpecManager().find_kernel_specs() else "python3"


def grade_notebook(path: str | Path, out_dir: str | Path, smoke: bool = True, kernel: str | None = None,
                   timeout: int = 600) -> dict:
    """Execute one notebook and return ``{"exercises": {name: {status, message}}, "passed", "total", "score", "error"}``."""
    import papermill  # heavy import, only when grading

    path, out_dir = Path(path), Path(out_dir)
    if path.suffix != ".ipynb" or not path.is_file():
        raise ValueError(f"notebook {str(path)!r} is not an .ipynb file; pass the path of a (student) notebook")
    expected = expected_exercises(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / path.name
    error = None
    try:
        papermill.execute_notebook(str(path), str(executed), parameters={"SMOKE": smoke}, kernel_name=kernel_name(kernel),
                                   cwd=str(path.parent.resolve()), progress_bar=False, execution_timeout=timeout)
    except Exception as e:  # the notebook stopped: grade what ran, report the error
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        error = f"{type(e).__name__}: {lines[-1] if lines else e}"
    seen = read_outcomes(executed) if executed.exists() else {}
    exercises = {n: seen.get(n, {"status": NOT_RUN, "message": "the notebook stopped before this check ran"}) for n in expected}
    exercises.update({n: o for n, o in seen.items() if n not in exercises})
    passed = sum(o["status"] == PASSED for o in exercises.values())
    total = len(exercises)
    return {"exercises": exercises, "passed": passed, "total": total,
            "score": passed / total if total else None, "error": error, "executed": str(executed)}


def format_table(report: dict) -> str:
    rows = [("notebook", "exercise", "status", "hint")]
    for nb, r in report["notebooks"].items():
        for ex, o in r["exercises"].items():
            hint = "" if o["status"] in (PASSED, NOT_DONE) else o["message"]
            rows.append((nb, ex, o["status"], hint[:90] + ("…" if len(hint) > 90 else "")))
        if not r["exercises"]:
            rows.append((nb, "(no exercises)", "", ""))
        if r["error"]:
            rows.append((nb, "(notebook error)", "error", r["error"][:90]))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + ("  " + row[3] if row[3] else "") for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    total = report["total"]
    lines.append(f"score: {report['passed']}/{total} exercises passed"
                 + (f" ({100 * report['score']:.0f} %)" if total else ""))
    return "\n".join(lines)


def grade(paths, out_dir=None, smoke: bool = True, kernel: str | None = None) -> dict:
    """Grade several notebooks; returns the JSON-able report (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="pxpo-grade-") as tmp:
        target = Path(out_dir) if out_dir is not None else Path(tmp)
        notebooks = {Path(p).name: grade_notebook(p, target, smoke=smoke, kernel=kernel) for p in paths}
    passed = sum(r["passed"] for r in notebooks.values())
    total = sum(r["total"] for r in notebooks.values())
    return {"notebooks": notebooks, "passed": passed, "total": total, "score": passed / total if total else None,
            "mode": "smoke" if smoke else "full"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pxpo_lite.grade", description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="+", type=Path, help="filled-in student notebooks (.ipynb)")
    ap.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    ap.add_argument("--out", type=Path, help="keep the executed notebooks in this folder (default: temporary)")
    ap.add_argument("--full", action="store_true", help="run in full mode (SMOKE=False); default smoke mode")
    ap.add_argument("--kernel", help="Jupyter kernel (default: pxpo-lite if registered, else python3)")
    args = ap.parse_args(argv)
    for p in args.notebooks:
        if p.suffix != ".ipynb" or not p.is_file():
            print(f"{p}: not a notebook file (.ipynb)", file=sys.stderr)
            return 2
    report = grade(args.notebooks, args.out, smoke=not args.full, kernel=args.kernel)
    print(format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False))
        print(f"report written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
