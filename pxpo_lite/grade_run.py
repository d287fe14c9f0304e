"""Run one exercise of a submission in its own process, with a time limit (used by :mod:`pxpo_lite.grade`).

:func:`run_exercise` starts a child process (forked where the platform allows, so the package is
imported once), which executes the statements :func:`pxpo_lite.grade_source.extract` picked,
takes the learner's function by name and calls the exercise's check on it. The verdict comes
from the check's own return value and outcome in that process: nothing the notebook displayed
counts. A child that runs past ``timeout`` seconds is killed; one that dies is reported as such;
either way the other exercises are graded.

Where fork is missing or unsafe (Windows, macOS) the child is *spawned*: a fresh interpreter that
imports the package and torch again (seconds) before it can run anything. So the child says when
it is ready, and ``timeout`` counts from then, for the learner's code and the check only; starting
up has its own limit, ``STARTUP_S``. A process is not a sandbox: the learner's code runs with the
grader's permissions (see COURSE.md, Grading).
"""
from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import sys
import traceback

from .grade_source import Extracted

STARTUP_S = 300.0   # seconds a child may take to start and import the package (spawn: a fresh interpreter)
_READY = "ready"


def _result(status: str, message: str, **extra) -> dict:
    return {"status": status, "message": message, **extra}


def _child(conn, ex: Extracted, exercise) -> None:
    """In the child: build the learner's namespace, run the check, send back ``{status, message, …}``."""
    try:
        import torch

        torch.set_num_threads(1)
        from . import checks
        from .checks import course, engine, mdp, pixel

        conn.send(_READY)  # imports done: the exercise's time starts now
        modules = (checks, engine, course, mdp, pixel)
        saved = [dict(vars(m)) for m in modules]
        ns: dict = {"__name__": "__main__", "__builtins__": __builtins__}
        errors = []
        out = io.StringIO()
        import ast

        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            for filename, src, keep in ex.parts:
                tree = ast.parse(src)
                for k in keep:
                    stmt = tree.body[k]
                    try:
                        exec(compile(ast.Module([stmt], type_ignores=[]), filename, "exec"), ns)
                    except Exception as e:  # a failing import or definition: report it if the function is missing
                        errors.append(f"{filename[1:-1]}, line {stmt.lineno}: {type(e).__name__}: {e}")
        for m, d in zip(modules, saved):  # undo anything the executed cells changed in the checks
            vars(m).clear()
            vars(m).update(d)
        fn = ns.get(exercise.function)
        if not callable(fn):
            why = "; ".join(errors[-3:]) if errors else "it is not defined by the cells the grader runs"
            conn.send(_result("failed", f"no function `{exercise.function}` could be built ({why})."))
            return
        flags = []
        code = getattr(fn, "__code__", None)
        if code is None or not code.co_filename.startswith("<submission"):
            where = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
            flags.append(f"`{exercise.function}` is not a function written in the notebook (it is {where})")
        engine.OUTCOMES.pop(exercise.name, None)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            returned = exercise.check(fn)
        outcome = engine.OUTCOMES.get(exercise.name) or {"status": "failed", "message": "the check reported nothing"}
        status = outcome["status"]
        if status == engine.PASSED and returned is not fn:
            status, outcome = engine.FAILED, {"message": "the check did not return your function"}
        message = outcome["message"]
        if status == engine.FAILED and "raised NameError" in message:
            message += (" The grader runs only your cells' imports, definitions and assignments that call nothing "
                        "(no model load, no training): compute what the function needs inside it.")
        conn.send(_result(status, message, flags=flags))
    except BaseException as e:  # noqa: BLE001 - the child reports whatever happened
        tb = traceback.format_exception_only(type(e), e)[-1].strip()
        conn.send(_result("failed", f"the check could not run your function: {tb}"))
    finally:
        conn.close()


_PRELOAD = ("numpy", "matplotlib.pyplot", "torch.nn.functional", "diffusers", "pxpo_lite.plotting", "pxpo_lite.results")
_warm = False


def _preload() -> None:
    """Import, once in the grader, what every notebook's setup cell imports: each forked child then
    starts in half a second instead of re-importing matplotlib (seconds on a busy CPU)."""
    global _warm
    if _warm:
        return
    import importlib
    import os

    os.environ.setdefault("MPLBACKEND", "Agg")  # headless
    for name in _PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - an optional speed-up: the child imports what it needs
            pass
    _warm = True


def _context():
    return mp.get_context("fork") if "fork" in mp.get_all_start_methods() and sys.platform != "darwin" else mp.get_context("spawn")


def run_exercise(ex: Extracted, exercise, timeout: float = 60.0) -> dict:
    """``{"status": passed | failed | not done, "message": str, "flags": [...]}`` for one exercise."""
    ctx = _context()
    if ctx.get_start_method() == "fork":
        _preload()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, ex, exercise), daemon=True)
    proc.start()
    send.close()
    try:
        if not recv.poll(STARTUP_S):
            return _result("failed", f"the process grading exercise {exercise.label} ({exercise.name}) did not start "
                                     f"within {STARTUP_S:g} s (importing the package and torch)")
        try:
            first = recv.recv()
            if first != _READY:
                return first  # it failed before it was ready (an import)
            if not recv.poll(timeout):
                return _result("failed", f"exercise {exercise.label} ({exercise.name}) timed out after {timeout:g} s: "
                                         "an endless loop, or far too slow (the checks take a few seconds)")
            return recv.recv()
        except EOFError:  # the child died before it sent its verdict
            proc.join(5)
            return _result("failed", f"the process grading exercise {exercise.label} died (exit code {proc.exitcode}): "
                                     "your code crashed the interpreter")
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        recv.close()
