"""Results that ship with the package, so a notebook never reads files outside it (notebook 07).

``load_benchmark("ddpo_vs_pxpo")`` returns the summary of ``benchmarks/bench_ddpo_vs_pxpo.py``'s
larger run (reward-vs-samples summary per task and method, held-out evaluation, and the
``config`` with the exact command and wall time), as copied into
``pxpo_lite/assets/benchmarks/`` by ``python scripts/ship_benchmark_results.py``; its ``source``
block names the file it was copied from and that file's SHA-256. Notebook 07 shows it next to
its own smaller run, on a laptop or on Colab alike (the repository's ``benchmarks/`` folder is
not installed with the package).
"""
from __future__ import annotations

import json
from pathlib import Path

BENCHMARKS_DIR = Path(__file__).resolve().parents[1] / "assets" / "benchmarks"


def benchmark_names() -> list[str]:
    """Names of the benchmark results shipped with the package (``load_benchmark`` accepts these)."""
    return sorted(p.stem for p in BENCHMARKS_DIR.glob("*.json"))


def load_benchmark(name: str = "ddpo_vs_pxpo") -> dict:
    """The shipped result of benchmark ``name``: a dict with ``summary``, ``config``, ``source``
    (and ``eval`` when the benchmark ran it)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str such as 'ddpo_vs_pxpo', got {type(name).__name__} {name!r}")
    path = BENCHMARKS_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"name={name!r} is not a shipped benchmark result; choose one of {benchmark_names()} "
                         "(python scripts/ship_benchmark_results.py --name NAME adds one)")
    return json.loads(path.read_text())
