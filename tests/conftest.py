"""Shared test fixtures.

``executed_notebook("00_tour.ipynb")`` runs a notebook once per test session with papermill in
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

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ARTIFACTS = ROOT / "test-artifacts"
KERNEL = os.environ.get("PXPO_KERNEL", "pxpo-lite")

# `make test` runs two pytest-xdist workers on two cores: one thread each (kernels and subprocesses
# they start inherit OMP_NUM_THREADS); a plain `pytest` uses up to two threads.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1 if WORKER else min(2, os.cpu_count() or 1))


def pytest_configure(config):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TQDM_MININTERVAL", "5")


def pytest_collection_modifyitems(config, items):
    """Groups for `pytest -n 2 --dist loadgroup` (make test): every test that reads the per-process
    cache of executed notebooks runs on one worker, so each notebook is executed once; the wheel,
    install and Colab-versions venv tests (one wheel build per module, one cached venv) on one
    worker too. Everything else is spread over both. Without pytest-xdist the marks do nothing."""
    for item in items:
        if "executed_notebook" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("notebooks"))
        elif item.path.name == "test_install.py" or item.name == "test_paint_with_ipywidgets7_classic_notebook":
            item.add_marker(pytest.mark.xdist_group("venvs"))


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
    """Execute notebooks/<name> with papermill; returns (executed path, recorded results, seconds)."""
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
    out = out_dir / name
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
    timings = out_dir / "timings.json"
    import json

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
