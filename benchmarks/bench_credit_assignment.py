"""Credit assignment, fairly: per-image (DDPO), per-region and per-pixel (PXPO) credit, each with and
without the keep term, each at its own learning rate chosen by one rule.

Full run (pilot over the lr grid with seed 0, then 5 seeds per method and task)::

    python benchmarks/bench_credit_assignment.py --seeds 0 1 2 3 4 --budget 160 \
        --lr-grid 1e-5 3e-5 1e-4 3e-4 --pilot-seed 0 --track-every 3 --jobs 2

Reduced run (one seed, a given lr for every method, 64 samples, 2 processes; ≤ 10 min on 2 CPU cores)::

    python benchmarks/bench_credit_assignment.py --reduced

The rule: for every method × task, one pilot run (``--pilot-seed``, ``--pilot-budget``) per lr of
``--lr-grid``; the chosen lr is the largest whose held-out prompt fidelity at the pilot's end is
≥ ``--threshold`` (90 %; fidelity of the attributes the reward does not fight, for a task that
fights one); none passing: the smallest, flagged. ``--lr`` entries override it (``3e-5`` for
all, ``pixel=1e-4`` for a method, ``hair:pixel=1e-4`` for one task); ``--lr-from FILE`` reuses
the lrs a previous run chose. Every method trains a fresh copy of the shipped tiny model on the
same prompts, seeds and budget. Reported per method: samples to reach DDPO's final reward (seed
mean) with bootstrap 95 % intervals over seeds, final reward, effect size on held-out seeds
((after − before) / std before, the paper's format), prompt fidelity, and for tasks about a
region the change inside vs outside it. Writes JSON (with the command) and a PNG (same name).
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

REDUCED = dict(seeds=[0], budget=64, lr=["3e-5"], eval_per_prompt=4, n_boot=500, jobs=2)
"""What ``--reduced`` sets (any of them given explicitly wins)."""

FULL = dict(methods=6, tasks=3, lr_grid=4, seeds=5, budget=160)
"""The full benchmark whose CPU cost is extrapolated from the measured runs."""


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1 2 3 4)")
    ap.add_argument("--budget", type=int, default=None, help="training samples per run (multiple of 16; default 160)")
    ap.add_argument("--tasks", nargs="+", default=["colour", "hair", "shirt_blue"], help="of colour hair shirt_blue hair_red")
    ap.add_argument("--methods", nargs="+", default=None, help="of image region pixel image+keep region+keep pixel+keep (default all)")
    ap.add_argument("--lr-grid", type=float, nargs="*", default=None, help="pilot learning rates (default 1e-5 3e-5 1e-4 3e-4)")
    ap.add_argument("--lr", nargs="*", default=None, help="given lrs: 3e-5 | METHOD=LR | TASK:METHOD=LR (skip the pilot there)")
    ap.add_argument("--lr-from", type=Path, default=None, help="reuse the lrs chosen in a previous result JSON")
    ap.add_argument("--pilot-seed", type=int, default=0)
    ap.add_argument("--pilot-budget", type=int, default=None, help="samples per pilot run (default: --budget)")
    ap.add_argument("--threshold", type=float, default=0.9, help="held-out prompt fidelity the lr rule requires")
    ap.add_argument("--fidelity-key", choices=["auto", "all", "other"], default="auto")
    ap.add_argument("--keep-beta", type=float, default=None, help="global β of the keep term for '+keep' methods")
    ap.add_argument("--track-every", type=int, default=0, help="also measure fidelity every N epochs (0: only at the end)")
    ap.add_argument("--eval-per-prompt", type=int, default=None, help="held-out images per prompt (default 8)")
    ap.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples (default 2000)")
    ap.add_argument("--window", type=int, default=3)
    ap.add_argument("--num-steps", type=int, default=None, help="DDIM steps (default: experiments.DEFAULTS)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--reduced", action="store_true", help=f"the reduced run: {REDUCED}")
    ap.add_argument("--jobs", type=int, default=None, help="processes (methods shared out round-robin, one thread each; default 1, --reduced 2)")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/credit_assignment[_reduced].json)")
    args = ap.parse_args(argv)
    defaults = dict(seeds=[0, 1, 2, 3, 4], budget=160, eval_per_prompt=8, n_boot=2000, jobs=1)
    for k, v in {**defaults, **(REDUCED if args.reduced else {})}.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.out is None:
        args.out = ROOT / "benchmarks" / "results" / f"credit_assignment{'_reduced' if args.reduced else ''}.json"
    return args


def lr_table(entries, tasks, methods, previous: Path | None = None) -> dict:
    """``{task: {method: lr}}`` from ``--lr-from`` then ``--lr`` entries (later ones win)."""
    table: dict = {t: {} for t in tasks}
    if previous is not None:
        chosen = json.loads(Path(previous).read_text())["config"]["learning_rates"]
        for t in tasks:
            for m in methods:
                if chosen.get(t, {}).get(m) is not None:
                    table[t][m] = chosen[t][m]["lr"]
    for e in entries or []:
        key, _, val = e.rpartition("=")
        try:
            lr = float(val)
        except ValueError:
            raise SystemExit(f"--lr entry {e!r}: {val!r} is not a number; use 3e-5, pixel=1e-4 or hair:pixel=1e-4") from None
        task, _, method = key.rpartition(":") if ":" in key else ("", "", key)
        for t in ([task] if task else tasks):
            for m in ([method] if method else methods):
                if t not in tasks or m not in methods:
                    raise SystemExit(f"--lr entry {e!r}: task must be one of {tasks} and method one of {methods}")
                table[t][m] = lr
    return table


def merge_parts(parts: list[dict], methods: list[str]) -> dict:
    """One result from ``E.benchmark`` results over disjoint method groups (the same tasks and seeds):
    runs and lrs united in the usual method order, pilot/run counts and CPU time summed."""
    out = parts[0]
    for other in parts[1:]:
        for t, by in other["runs"].items():
            out["runs"][t].update(by)
            out["lr"][t].update(other["lr"][t])
        for k in ("pilot_runs", "runs", "cpu_s"):
            out["timing"][k] = round(out["timing"][k] + other["timing"][k], 1)
    for t in out["runs"]:
        out["runs"][t] = {m: out["runs"][t][m] for m in methods}
        out["lr"][t] = {m: out["lr"][t][m] for m in methods}
    out["timing"]["jobs"] = len(parts)
    return out


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    torch.set_num_threads(args.threads)
    import pxpo_lite
    from pxpo_lite import experiments as E

    methods = args.methods or list(E.CREDIT_METHODS)
    for m in methods:
        E.parse_method(m)  # ValueError naming the known methods
    skipped = []
    bad = [t for t in args.tasks if t not in E.TASKS]
    if bad:
        raise SystemExit(f"unknown task(s) {bad}; choose from {list(E.TASKS)}")
    table = lr_table(args.lr, args.tasks, methods, args.lr_from)
    t0, c0 = time.perf_counter(), time.process_time()
    seg = pxpo_lite.load_segmenter()
    tasks = [E.get_task(n, segmenter=seg) for n in args.tasks]
    overrides = {"num_steps": args.num_steps} if args.num_steps else {}
    keep_beta = E.KEEP_BETA if args.keep_beta is None else args.keep_beta
    pipe = pxpo_lite.load_tiny_pipeline()

    def bench(group):
        return E.benchmark(pipe, tasks, group, args.seeds, args.budget,
                           lr_grid=args.lr_grid if args.lr_grid is not None else E.LR_GRID,
                           lr_table=table, pilot_seed=args.pilot_seed, pilot_budget=args.pilot_budget, threshold=args.threshold,
                           key=args.fidelity_key, per_prompt=args.eval_per_prompt, window=args.window, n_boot=args.n_boot,
                           keep_beta=keep_beta, track_every=args.track_every, segmenter=seg, **overrides)

    # --jobs N: the methods shared out round-robin over N forked processes (experiments.parallel), then merged
    groups = [methods[i::args.jobs] for i in range(args.jobs) if methods[i::args.jobs]]
    out = merge_parts(E.map_jobs(bench, groups, processes=len(groups)), methods)
    out["summary"] = E.summarize_credit(out["runs"], args.budget, args.window, args.n_boot, args.threshold)
    wall, cpu = time.perf_counter() - t0, out["timing"]["cpu_s"]
    info = json.loads((Path(pxpo_lite.models.TINY_PIPELINE_DIR) / "TRAINING.json").read_text())
    n_runs = out["timing"]["runs"] + out["timing"]["pilot_runs"]
    per_run = cpu / max(n_runs, 1)
    full_runs = FULL["methods"] * FULL["tasks"] * (FULL["lr_grid"] + FULL["seeds"])
    full_cpu = per_run * (FULL["budget"] / args.budget) * full_runs
    out["timing"].update(total_wall_s=round(wall, 1), total_cpu_s=round(cpu, 1), cpu_s_per_run=round(per_run, 1),
                         full_benchmark_estimate={"runs": full_runs, "budget": FULL["budget"], "cpu_s": round(full_cpu),
                                                  "how": "measured CPU per run (incl. held-out evaluation) × budget ratio × runs"
                                                         + ("; keep methods not measured (slower: one extra UNet forward per trained step)" if skipped else "")})
    out["config"] = {
        "command": "python benchmarks/bench_credit_assignment.py " + " ".join(argv),
        "seeds": args.seeds, "budget": args.budget, "tasks": args.tasks, "methods": methods, "skipped_methods": skipped,
        "lr_grid": args.lr_grid if args.lr_grid is not None else list(E.LR_GRID), "pilot_seed": args.pilot_seed,
        "pilot_budget": args.pilot_budget or args.budget, "threshold": args.threshold, "fidelity_key": args.fidelity_key,
        "learning_rates": out.pop("lr"), "jobs": args.jobs, "keep_beta": keep_beta, "eval_per_prompt": args.eval_per_prompt,
        "n_boot": args.n_boot, "window": args.window, "defaults": {**E.DEFAULTS, **overrides}, "group_size": E.GROUP_SIZE,
        "prompts": {t.name: list(t.prompts) for t in tasks}, "model": {"steps_done": info.get("steps_done")},
        "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    fig = E.plot_credit_assignment(out, title=f"seeds {args.seeds}, budget {args.budget} samples/run")
    fig.savefig(args.out.with_suffix(".png"), dpi=90)
    for t in args.tasks:
        b = out["before"][t]
        print(f"\n[{t}] before {b['mean']:.4f} ± {b['std']:.4f}, target (DDPO final) {out['summary'][t]['target']}")
        print(E.credit_table(out, t))
    est = out["timing"]["full_benchmark_estimate"]
    print(f"\n{n_runs} runs ({out['timing']['pilot_runs']} pilot): wall {wall:.0f} s, CPU {cpu:.0f} s "
          f"({per_run:.1f} s CPU per run at budget {args.budget}); full benchmark ({est['runs']} runs at budget "
          f"{est['budget']}): ≈ {est['cpu_s']} s CPU ≈ {est['cpu_s'] / 3600:.1f} CPU-hours")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return out


if __name__ == "__main__":
    main()
