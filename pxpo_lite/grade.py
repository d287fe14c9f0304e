"""Grade submitted notebooks: the grader runs every exercise's check itself, in its own process.

    python -m pxpo_lite.grade alice/01b_rl_from_zero.ipynb bob/01b_rl_from_zero.ipynb --json grades.json
    python -m pxpo_lite.grade submissions/*/0*.ipynb --timeout 60 --json grades.json
    python -m pxpo_lite.grade mine.ipynb --student alice --as 01b      # another file name

* **The exercises and their points come from the package** (:mod:`pxpo_lite.checks.registry`),
  chosen by the file name (``01b_rl_from_zero.ipynb``, or any name starting ``01b_``; ``--as``
  otherwise), never from the submission: a deleted check call still counts, as not passed.
* **The grader calls the checks.** For each exercise it executes, in a fresh process, the
  submission's imports, function and class definitions and call-free assignments of the code
  cells up to the one that defines the learner's function (``def reinforce_estimate(…)``; no
  model load, no training), takes that function by name and runs ``pxpo_lite.checks.check_*``
  on it. The outputs saved in the notebook are ignored: a displayed "passed" counts for nothing.
* **Each exercise is isolated**: ``--timeout`` seconds (default 60) each, counted once its process
  has started; a crash or a time-out fails that exercise only, and its message names the exercise
  and the reason. Isolated from the other exercises, not from your machine: the submission's code
  runs unsandboxed, with the grader's permissions (grade in a throwaway container or VM).
* **A source scan flags** a learner function that uses a ``pxpo_lite`` function (the references
  live there) or the checks: status ``flagged``, no points until the instructor decides.

Statuses: ``passed`` (full points), ``failed`` (with the check's hint, or why it could not run),
``not done`` (the stub still raises ``NotImplementedError``), ``flagged``. Reports are keyed
``<student>/<file name>``; the student is the notebook's folder name, or ``--student``. The JSON
report (``--json``) carries the points per exercise, notebook and student, the grader's version
and a timestamp. ``--execute`` also runs each notebook top to bottom (papermill, smoke mode)
and keeps the executed copy under ``--out/<student>/``; a notebook that stops is reported
(``ran``), and its outputs are still not read. The grader never writes over a submission.

Exit status: 0 when every notebook was graded (whatever the marks), 2 when one could not be
(missing, not JSON, not a notebook, not a course notebook) — the message names the file.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import tempfile
from pathlib import Path

from . import __version__
from .checks import registry
from .grade_run import run_exercise
from .grade_source import NotebookError, extract, read_notebook, scan

GRADER_VERSION = f"{__version__}+grader.2"
NOT_RUN, FLAGGED = "not run", "flagged"
__all__ = ["GRADER_VERSION", "FLAGGED", "NotebookError", "expected_exercises", "grade", "grade_notebook", "main",
           "read_outcomes", "student_of"]


def expected_exercises(notebook: str | Path) -> list[str]:
    """The exercise names of a course notebook, from the registry (by its file name)."""
    return [e.name for e in registry.exercises_of(Path(notebook).name)]


def student_of(path: str | Path, student: str | None = None) -> str:
    """``student`` when given, else the name of the folder that holds the notebook."""
    return student or Path(path).resolve().parent.name or "unknown"


def read_outcomes(executed: str | Path) -> dict[str, dict]:
    """The outcomes a notebook *displayed* (MIME ``pxpo_lite.checks.MIME``). For the tests of the
    instructor notebooks only: the grader never reads them (a displayed outcome can be forged)."""
    from .checks import MIME

    out: dict[str, dict] = {}
    for cell in read_notebook(executed)["cells"]:
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


def _execute(path: Path, executed: Path, smoke: bool, kernel: str | None, timeout: float) -> str | None:
    """Run the whole notebook with papermill into ``executed``; the error that stopped it, or None."""
    import papermill  # heavy import, only with --execute

    executed.parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(str(path), str(executed), parameters={"SMOKE": smoke}, kernel_name=kernel_name(kernel),
                                   cwd=str(path.parent.resolve()), progress_bar=False, execution_timeout=int(timeout))
    except Exception as e:  # the notebook stopped: say where and why
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        return f"{type(e).__name__}: {lines[-1] if lines else e}"
    return None


def grade_notebook(path: str | Path, out_dir: str | Path | None = None, *, student: str | None = None,
                   as_notebook: str | None = None, timeout: float = 60.0, execute: bool = False, smoke: bool = True,
                   kernel: str | None = None, _inputs: set | None = None, _copies: set | None = None) -> dict:
    """Grade one submission; raises :class:`NotebookError` when it cannot be graded.

    Returns ``{"student", "path", "notebook", "exercises": {name: {label, status, message, points,
    max_points, flags}}, "points", "max_points", "passed", "total", "score", "problems", "ran", "executed"}``.
    ``out_dir`` is needed with ``execute`` only (the executed copy goes to ``out_dir/<student>/``).
    """
    path = Path(path)
    nb = read_notebook(path)
    key = registry.course_notebook(as_notebook or path.name)
    if key is None:
        known = ", ".join(f"{k}.ipynb" for k in registry.NOTEBOOKS)
        raise NotebookError(f"{path}: its name matches no course notebook ({known}); keep the course's file name "
                            "or pass --as <number>, e.g. --as 01b")
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}; pass e.g. --timeout 60")
    who = student_of(path, student)
    exercises, problems = {}, []
    for ex in registry.NOTEBOOKS[key]:
        part = extract(nb, ex.function)
        problems += [p for p in part.problems if p not in problems]
        if part.cell is None:
            o = {"status": "failed", "flags": [],
                 "message": f"no function `{ex.function}` in the notebook (exercise {ex.label}: its cell deleted or "
                            "the function renamed?)"}
        else:
            o = run_exercise(part, ex, timeout=timeout)
            o["flags"] = list(o.get("flags", [])) + scan(part, ex.allowed)
            if o["status"] == "passed" and o["flags"]:
                o["status"] = FLAGGED
        points = ex.points if o["status"] == "passed" else 0
        exercises[ex.name] = {"label": ex.label, "status": o["status"], "message": o["message"], "points": points,
                              "max_points": ex.points, "flags": o["flags"]}
    report = {"student": who, "path": str(path), "notebook": key, "exercises": exercises, "problems": problems,
              "points": sum(e["points"] for e in exercises.values()),
              "max_points": sum(e["max_points"] for e in exercises.values()),
              "passed": sum(e["status"] == "passed" for e in exercises.values()), "total": len(exercises),
              "ran": None, "executed": None}
    report["score"] = report["points"] / report["max_points"] if report["max_points"] else None
    if execute:
        if out_dir is None:
            raise ValueError("execute=True needs out_dir, the folder for the executed copies; pass --out DIR")
        inputs, copies = {path.resolve(), *(_inputs or ())}, (_copies if _copies is not None else set())
        executed, k = Path(out_dir) / who / path.name, 1
        while executed.resolve() in copies:  # two same-named files of one student: keep both copies
            k += 1
            executed = Path(out_dir) / who / f"{k}-{path.name}"
        if executed.resolve() in inputs:
            raise ValueError(f"out_dir {str(out_dir)!r} would write the executed copy of {path} over the submission "
                             f"{executed}; pass another folder (--out)")
        copies.add(executed.resolve())
        error = _execute(path, executed, smoke, kernel, timeout)
        report.update(ran="top to bottom" if error is None else f"stopped: {error}", executed=str(executed))
    return report


def _unique_key(path: Path, who: str, taken: dict) -> str:
    key = f"{who}/{path.name}"
    return key if key not in taken else str(path)


def grade(paths, out_dir=None, *, student: str | None = None, as_notebook: str | None = None, timeout: float = 60.0,
          execute: bool = False, smoke: bool = True, kernel: str | None = None) -> dict:
    """Grade several submissions; the JSON-able report (see the module docstring). Unreadable files
    are listed under ``"errors"`` (file -> why) and do not stop the others."""
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    submissions, errors = {}, {}
    inputs, copies = {Path(p).resolve() for p in paths}, set()  # never written over: the submissions
    with tempfile.TemporaryDirectory(prefix="pxpo-grade-") as tmp:
        target = Path(out_dir) if out_dir is not None else Path(tmp)
        for p in map(Path, paths):
            try:
                r = grade_notebook(p, target, student=student, as_notebook=as_notebook, timeout=timeout,
                                   execute=execute, smoke=smoke, kernel=kernel, _inputs=inputs, _copies=copies)
            except NotebookError as e:
                errors[str(p)] = str(e)
                continue
            submissions[_unique_key(p, r["student"], submissions)] = r
            if out_dir is None:
                r["executed"] = None  # the temporary copy is gone
    students: dict[str, dict] = {}
    for r in submissions.values():
        s = students.setdefault(r["student"], {"points": 0, "max_points": 0, "notebooks": []})
        s["points"] += r["points"]
        s["max_points"] += r["max_points"]
        s["notebooks"].append(r["notebook"])
    return {"grader": {"version": GRADER_VERSION, "timestamp": now, "timeout_s": timeout,
                       "mode": ("smoke" if smoke else "full") if execute else "checks only"},
            "submissions": submissions, "students": students, "errors": errors,
            "points": sum(r["points"] for r in submissions.values()),
            "max_points": sum(r["max_points"] for r in submissions.values()),
            "passed": sum(r["passed"] for r in submissions.values()),
            "total": sum(r["total"] for r in submissions.values())}


def format_table(report: dict) -> str:
    rows = [("submission", "exercise", "status", "points", "hint")]
    for key, r in report["submissions"].items():
        for name, o in r["exercises"].items():
            hint = "" if o["status"] in ("passed", "not done") else o["message"]
            if o["flags"]:
                hint = "flagged: " + "; ".join(o["flags"]) + (" | " + hint if hint and o["status"] != FLAGGED else "")
            rows.append((key, f"{o['label']} {name}", o["status"], f"{o['points']}/{o['max_points']}",
                         hint[:100] + ("…" if len(hint) > 100 else "")))
        if r.get("ran") and r["ran"] != "top to bottom":
            rows.append((key, "(run top to bottom)", "stopped", "", r["ran"][:100]))
    for path, why in report["errors"].items():
        rows.append((path, "(not graded)", "error", "", why[:100]))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + ("  " + row[4] if row[4] else "") for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for who, s in report["students"].items():
        lines.append(f"{who}: {s['points']}/{s['max_points']} points")
    lines.append(f"grader {report['grader']['version']}, {report['grader']['timestamp']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pxpo_lite.grade", description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="+", type=Path, help="submitted notebooks (.ipynb)")
    ap.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    ap.add_argument("--student", help="the student id for every notebook given (default: each notebook's folder name)")
    ap.add_argument("--as", dest="as_notebook", help="grade as this course notebook (e.g. 01b) whatever the file name")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per exercise (default 60)")
    ap.add_argument("--execute", action="store_true", help="also run each notebook top to bottom (papermill)")
    ap.add_argument("--out", type=Path, help="with --execute: keep the executed copies in OUT/<student>/")
    ap.add_argument("--full", action="store_true", help="with --execute: full mode (SMOKE=False); default smoke mode")
    ap.add_argument("--kernel", help="with --execute: Jupyter kernel (default: pxpo-lite if registered, else python3)")
    args = ap.parse_args(argv)
    inputs = {p.resolve() for p in args.notebooks}
    if args.json is not None and args.json.resolve() in inputs:
        print(f"--json {args.json} is one of the submissions; write the report elsewhere", file=sys.stderr)
        return 2
    try:
        report = grade(args.notebooks, args.out, student=args.student, as_notebook=args.as_notebook,
                       timeout=args.timeout, execute=args.execute, smoke=not args.full, kernel=args.kernel)
    except ValueError as e:
        print(str(e), file=sys.stderr)
        return 2
    print(format_table(report))
    for why in report["errors"].values():
        print(why, file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False))
        print(f"report written to {args.json}")
    return 2 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
