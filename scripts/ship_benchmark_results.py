"""Copy a benchmark's summary into the package, so notebooks read it from the installed package.

    python scripts/ship_benchmark_results.py                 # ddpo_vs_pxpo (notebook 07)
    python scripts/ship_benchmark_results.py --name ddpo_vs_pxpo

Reads ``benchmarks/results/<name>.json`` (written by ``benchmarks/bench_<name>.py``; its exact
command is in the file's ``config.command``) and writes ``pxpo_lite/assets/benchmarks/<name>.json``
with the keys a notebook shows (``summary``, ``eval``, ``config``, ``timing``) and a ``source`` block naming
the file it came from, its SHA-256 and this command. The per-epoch ``runs`` stay in
``benchmarks/results/`` (they are only needed to redraw the curves). Re-run it after re-running
the benchmark; ``tests/test_install.py`` fails when the two disagree.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("summary", "eval", "config", "timing")


def shipped_copy(result: dict, source: Path) -> dict:
    """The part of a benchmark result that ships with the package, plus where it came from."""
    missing = [k for k in ("summary", "config") if k not in result]
    if missing:
        raise ValueError(f"benchmark result {source} has no {missing}: expected the JSON written by benchmarks/bench_*.py")
    out = {k: result[k] for k in KEYS if k in result}
    out["source"] = {
        "file": source.relative_to(ROOT).as_posix() if source.is_relative_to(ROOT) else str(source),
        "sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "made_by": "python scripts/ship_benchmark_results.py --name " + source.stem,
    }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", default="ddpo_vs_pxpo", help="benchmark result name (benchmarks/results/<name>.json)")
    args = ap.parse_args(argv)
    source = ROOT / "benchmarks" / "results" / f"{args.name}.json"
    if not source.exists():
        print(f"{source} does not exist: run benchmarks/bench_{args.name}.py first", file=sys.stderr)
        return 1
    dest = ROOT / "pxpo_lite" / "assets" / "benchmarks" / f"{args.name}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(shipped_copy(json.loads(source.read_text()), source), indent=1) + "\n")
    print(f"wrote {dest.relative_to(ROOT)} ({dest.stat().st_size / 1024:.1f} KB) from {source.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
