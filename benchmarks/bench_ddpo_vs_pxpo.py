"""DDPO vs PXPO, headless: reward vs samples on the paper's two tasks, several seeds, one command.

    python benchmarks/bench_ddpo_vs_pxpo.py --seeds 0 1 2 --budget 192 --task both \
        --out benchmarks/results/ddpo_vs_pxpo.json

Every method (DDPO, PXPO score-function, PXPO clipped) trains a fresh copy of the shipped tiny
model on the same prompts, seeds and sample budget (``pxpo_lite.experiments.compare``). Writes a
JSON (config, per-epoch curves, the summary: final rewards and the samples each PXPO variant
needs to reach DDPO's final reward) and a PNG plot next to it (same name, ``.png``).
``--eval`` also measures mean ± std reward before → after on held-out seeds with prompt
fidelity (the paper's table) for the final model of each method's first seed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    ap.add_argument("--budget", type=int, default=192, help="training samples per run (multiple of 16; default 192)")
    ap.add_argument("--task", choices=["colour", "hair", "both"], default="both")
    ap.add_argument("--methods", nargs="+", default=["ddpo", "pxpo", "pxpo_clip"], help="subset of ddpo pxpo pxpo_clip")
    ap.add_argument("--window", type=int, default=3, help="epochs in the moving average used for 'final' and 'reached'")
    ap.add_argument("--eval", action="store_true", help="also evaluate before/after on held-out seeds (first seed only)")
    ap.add_argument("--eval-per-prompt", type=int, default=16)
    ap.add_argument("--num-steps", type=int, default=None, help="DDIM steps per trajectory (default: experiments.DEFAULTS)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ddpo_vs_pxpo.json")
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    if args.threads:
        torch.set_num_threads(args.threads)
    import pxpo_lite
    from pxpo_lite import experiments as E

    bad = [m for m in args.methods if m not in E.METHODS]
    if bad:
        raise SystemExit(f"unknown method(s) {bad}; choose from {sorted(E.METHODS)}")
    t0 = time.perf_counter()
    pipe = pxpo_lite.load_tiny_pipeline()
    seg = pxpo_lite.load_segmenter()
    names = ["colour", "hair"] if args.task == "both" else [args.task]
    tasks = [E.get_task(n, segmenter=seg) for n in names]
    overrides = {"num_steps": args.num_steps} if args.num_steps else {}
    result = E.compare(pipe, tasks, args.methods, args.seeds, args.budget, window=args.window, progress=not args.quiet,
                       eval_per_prompt=args.eval_per_prompt if args.eval else 0, segmenter=seg, **overrides)
    out = E.result_to_json(result)
    wall = time.perf_counter() - t0
    info = json.loads((Path(pxpo_lite.models.TINY_PIPELINE_DIR) / "TRAINING.json").read_text())
    out["config"] = {
        "command": "python benchmarks/bench_ddpo_vs_pxpo.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "seeds": args.seeds, "budget": args.budget, "tasks": names, "methods": args.methods, "window": args.window,
        "learning_rates": E.TASK_LR, "pxpo_clip_range": E.PXPO_CLIP_RANGE, "defaults": {**E.DEFAULTS, **overrides},
        "group_size": E.GROUP_SIZE, "prompts": {t.name: list(t.prompts) for t in tasks},
        "model": {"steps_done": info.get("steps_done"), "steps": info.get("steps")},
        "wall_s": round(wall, 1), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.machine(), "cpus": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    fig = E.plot_comparison(result, window=1, title=f"seeds {args.seeds}, budget {args.budget} samples/run")
    fig.savefig(args.out.with_suffix(".png"), dpi=90)
    for t, s in out["summary"].items():
        print(f"[{t}] DDPO final {s.get('ddpo_final', float('nan')):.4f} (budget {s.get('budget')})")
        for m, v in s["methods"].items():
            n = v.get("samples_to_reach_ddpo_final")
            print(f"  {m:10s} start {v['start_reward']:.4f} final {v['final_reward']:.4f} ± {v['final_reward_seed_std']:.4f} "
                  f"reach-DDPO-final: {'never' if n is None else n}  ({v['seconds']:.0f} s)")
    if "eval" in out:
        for t, rows in out["eval"].items():
            for m, row in rows.items():
                print(f"  eval {t} {m}: {row['before']} -> {row['after']} ({row['effect_std']:+.2f} std), "
                      f"fidelity {row['fidelity_before']:.2f} -> {row['fidelity_after']:.2f}")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} in {wall:.0f} s")
    return out


if __name__ == "__main__":
    main()
