"""Run every benchmark (benchmarks/bench_*.py), each writing benchmarks/results/<name>.json.

    python benchmarks/run_all.py            # all
    python benchmarks/run_all.py sampling   # those whose name contains 'sampling'
"""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
out = HERE / "results"
out.mkdir(exist_ok=True)
wanted = sys.argv[1:]
failed = []
for script in sorted(HERE.glob("bench_*.py")):
    name = script.stem.removeprefix("bench_")
    if wanted and not any(w in name for w in wanted):
        continue
    cmd = [sys.executable, str(script), "--out", str(out / f"{name}.json")]
    print("==", " ".join(cmd), flush=True)
    if subprocess.call(cmd) != 0:
        failed.append(name)
sys.exit(1 if failed else 0)
