"""Shared test fixtures.

``executed_notebook("00_tour.ipynb")`` runs a notebook once per test session (shared by the
pytest-xdist workers of ``make test``) with papermill in
smoke mode (SMOKE=True) on the project's kernel and returns ``(path, results)``: the executed
copy (kept under ``test-artifacts/notebooks/`` so its figures can be looked at) and the values
it recorded with ``pxpo_lite.results.record``. Wall times go to ``test-artifacts/notebooks/timings.json``
keyed ``"<notebook>|smoke"`` or ``"<notebook>|full"`` (the notebook headers quote the smoke ones). A failing cell fails the test with the cell's
error.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from pxpo_lite.devices import cpu_threads

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ARTIFACTS = ROOT / "test-artifacts"
KERNEL = os.environ.get("PXPO_KERNEL", "pxpo-lite")

# `make test` runs two pytest-xdist workers on two cores: one thread each (kernels and subprocesses
# they start inherit OMP_NUM_THREADS); a plain `pytest` uses up to two threads.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(cpu_threads())  # 1 in a worker (OMP_NUM_THREADS above), else up to 2


# The slowest test files, slowest first (`make test PYTEST_ARGS=--durations=30`, two workers): the Colab-versions
# and wheel-install venvs (~305 s), the browser tests (~120 s), then the two files that run every notebook in
# smoke mode. make test hands files to the workers in this order (--no-loadscope-reorder), so the longest
# ones start at once instead of last. Only the order changes, never what runs.
SLOW_FIRST = ("test_install.py", "test_browser.py", "test_course.py", "test_notebook_conventions.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: the rest keep their order


def pytest_configure(config):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TQDM_MININTERVAL", "5")


_CACHE: dict = {}


def _kernel_name() -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    if KERNEL in specs:
        return KERNEL
    if os.environ.get("CI"):
        raise RuntimeError(f"Jupyter kernel {KERNEL!r} is not registered; run `make setup` (it registers it)")
    return "python3"


def run_notebook(name: str, parameters: dict | None = None, timeout: int = 600):
    """Execute notebooks/<name> with papermill; returns (executed path, recorded results, seconds).

    Once per test session and parameter set: cached in this process, and under pytest-xdist (make
    test runs two workers) shared between the workers through test-artifacts/notebooks/: a lock per
    notebook (one kernel runs it at a time, so its saved session folder is not written twice at
    once) and a ``.done`` file naming this test run, so the second worker reads the executed copy
    instead of running the notebook again."""
    import fcntl
    import hashlib
    import json

    import papermill
    from pxpo_lite.results import read_results

    params = {"SMOKE": True, **(parameters or {})}
    if name.startswith("06_") and "SESSION_DIR" not in params:
        # the feedback session is saved under test-artifacts/, not in the source tree (notebooks/runs/)
        params["SESSION_DIR"] = str(ARTIFACTS / "sessions" / "06_feedback_session")
    key = (name, tuple(sorted(params.items())))
    if key in _CACHE:
        return _CACHE[key]
    out_dir = ARTIFACTS / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha1(repr(key[1]).encode()).hexdigest()[:8]
    smoke_only = set(params) - {"SESSION_DIR"} == {"SMOKE"} and params["SMOKE"] is True
    out = out_dir / (name if smoke_only else f"{Path(name).stem}-{tag}.ipynb")  # other parameters: another copy
    done = out_dir / f".{out.stem}.done"
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    with open(out_dir / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if run_id and done.exists() and json.loads(done.read_text()).get("run") == run_id:  # the other worker ran it
            _CACHE[key] = (out, read_results(out), json.loads(done.read_text())["seconds"])
            return _CACHE[key]
        t = time.perf_counter()
        papermill.execute_notebook(
            str(NOTEBOOKS / name),
            str(out),
            parameters=params,
            kernel_name=_kernel_name(),
            cwd=str(NOTEBOOKS),
            progress_bar=False,
            execution_timeout=timeout,
        )
        seconds = time.perf_counter() - t
        done.write_text(json.dumps({"run": run_id, "seconds": seconds}))
    with open(out_dir / ".timings.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        timings = out_dir / "timings.json"
        data = json.loads(timings.read_text()) if timings.exists() else {}
        mode = "smoke" if params.get("SMOKE") else "full"
        data.pop(name, None)  # the old key (notebook name only) mixed smoke and full runs
        data[f"{name}|{mode}"] = round(seconds, 1)
        timings.write_text(json.dumps(data, indent=2))
    _CACHE[key] = (out, read_results(out), seconds)
    return _CACHE[key]


@pytest.fixture
def executed_notebook():
    """``executed_notebook(name, **parameters) -> (path, results, seconds)``; cached per session."""

    def _run(name: str, **parameters):
        return run_notebook(name, parameters)

    return _run
