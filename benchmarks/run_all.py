"""Run the benchmarks (benchmarks/bench_*.py), each writing benchmarks/results/<name>.json.

    python benchmarks/run_all.py            # all that run on their own (see SKIPPED)
    python benchmarks/run_all.py sampling   # those whose name contains 'sampling'

The peer benchmark against TRL needs a Python with trl==0.23.1: set TRL_PYTHON to it (see
benchmarks/bench_vs_trl.py). The credit-assignment benchmark runs its reduced version here
(about 7 CPU-minutes); its full run (≈ 2.6 CPU-hours) is started by hand. Notebook 07 reads the
shipped copies of the DDPO-vs-PXPO and credit-assignment results, refreshed after their runs
by scripts/ship_benchmark_results.py.
"""
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
out = HERE / "results"
out.mkdir(exist_ok=True)
wanted = sys.argv[1:]
EXTRA = {"credit_assignment": ["--reduced"]}  # name -> extra arguments
OUTPUT = {"credit_assignment": "credit_assignment_reduced"}  # name -> result file stem
STEM_ONLY = {"localised_feedback"}  # scripts whose --out is a stem (they write STEM.json and STEM.png)
SHIPPED = {"ddpo_vs_pxpo", "credit_assignment_reduced"}  # results notebooks read from the package
failed = []
for script in sorted(HERE.glob("bench_*.py")):
    name = script.stem.removeprefix("bench_")
    if wanted and not any(w in name for w in wanted):
        continue
    stem = OUTPUT.get(name, name)
    target = out / (stem if name in STEM_ONLY else f"{stem}.json")
    cmd = [sys.executable, str(script), "--out", str(target), *EXTRA.get(name, [])]
    if name == "vs_trl":
        if not os.environ.get("TRL_PYTHON"):
            print("== skipping bench_vs_trl.py: set TRL_PYTHON to a Python with trl==0.23.1", flush=True)
            continue
        cmd += ["--trl-python", os.environ["TRL_PYTHON"]]
    print("==", " ".join(cmd), flush=True)
    if subprocess.call(cmd) != 0:
        failed.append(name)
    elif stem in SHIPPED:
        subprocess.call([sys.executable, str(ROOT / "scripts" / "ship_benchmark_results.py"), "--name", stem])
sys.exit(1 if failed else 0)
