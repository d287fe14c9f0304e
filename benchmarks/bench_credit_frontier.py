"""The credit frontier: best effect at held-out fidelity ≥ 0.9 per credit type, chosen on selection
seeds and reported on other seeds (``pxpo_lite.experiments.frontier``).

Full run (both tasks; every run is cached in ``--cache`` as it ends, so a rerun resumes)::

    python benchmarks/bench_credit_frontier.py --tasks colour hair --budget colour=160 hair=320 --jobs 2

Tasks run with different grids or budgets are merged into one result (summaries side by side, each
task's own command and settings kept under ``config.tasks``)::

    python benchmarks/bench_credit_frontier.py --merge benchmarks/results/credit_frontier_colour.json \
        benchmarks/results/credit_frontier_hair.json --out benchmarks/results/credit_frontier.json

Reduced run (colour, small grids, one selection seed, two evaluation seeds; ≤ 10 min on 2 cores)::

    python benchmarks/bench_credit_frontier.py --reduced

Writes ``benchmarks/results/credit_frontier[_reduced].json`` (with the command) and a PNG of the
frontiers (same name), and prints which goals were met.
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

REDUCED = dict(tasks=["colour"], budget=["64"], selection_seeds=[0], eval_seeds=[1, 2], beta_grid=[1.0, 10.0],
               lr_grid=["image=3e-5,1e-4", "pixel=1e-5,3e-5", "keep=3e-4,1e-3"], per_prompt=4, track_every=2,
               n_boot=500, max_extend=0, jobs=2)
"""What ``--reduced`` sets (any option given explicitly wins)."""


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=None, help="of colour hair shirt_blue (default colour hair)")
    ap.add_argument("--methods", nargs="+", default=None, help="credit methods (default experiments.FRONTIER_METHODS)")
    ap.add_argument("--budget", nargs="+", default=None, help="samples per run: N, or TASK=N entries (default colour=160 hair=320)")
    ap.add_argument("--selection-seeds", type=int, nargs="+", default=None, help="seeds the settings are chosen on (default 0 1)")
    ap.add_argument("--eval-seeds", type=int, nargs="+", default=None, help="seeds the results are reported on (default 2 3 4 5 6)")
    ap.add_argument("--lr-grid", nargs="*", default=None,
                    help="starting grids: image=1e-5,3e-5 pixel=... keep=... or METHOD=... (default experiments.frontier.LR_GRIDS)")
    ap.add_argument("--beta-grid", type=float, nargs="+", default=None, help="keep βs (default 0.3 1 3 10)")
    ap.add_argument("--max-extend", type=int, default=None, help="lrs a ladder may add beyond its grid, each way (default 2)")
    ap.add_argument("--per-prompt", type=int, default=None, help="held-out images per prompt (default 8)")
    ap.add_argument("--track-every", type=int, default=None, help="held-out measurement every N epochs (default 2)")
    ap.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples (default 2000)")
    ap.add_argument("--jobs", type=int, default=None, help="processes (one torch thread each; default 1, --reduced 2)")
    ap.add_argument("--model", choices=["shipped", "random-tiny"], default="shipped",
                    help="'random-tiny': a tiny random model built in code (for the tests only)")
    ap.add_argument("--reduced", action="store_true", help=f"the reduced run: {REDUCED}")
    ap.add_argument("--cache", type=Path, default=None, help="JSON-lines run cache (default: OUT with .runs.jsonl)")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, help="merge these results (one task each) into --out")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/credit_frontier[_reduced].json)")
    args = ap.parse_args(argv)
    defaults = dict(tasks=["colour", "hair"], budget=["colour=160", "hair=320"], selection_seeds=[0, 1],
                    eval_seeds=[2, 3, 4, 5, 6], beta_grid=[0.3, 1.0, 3.0, 10.0], lr_grid=[], per_prompt=8, track_every=2,
                    n_boot=2000, max_extend=2, jobs=1)
    for k, v in {**defaults, **(REDUCED if args.reduced else {})}.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if set(args.selection_seeds) & set(args.eval_seeds):
        raise SystemExit(f"--selection-seeds {args.selection_seeds} and --eval-seeds {args.eval_seeds} overlap: "
                         "a setting chosen on the seeds it is reported on is not a result; use disjoint seeds")
    if args.out is None:
        args.out = ROOT / "benchmarks" / "results" / f"credit_frontier{'_reduced' if args.reduced else ''}.json"
    if args.cache is None:
        args.cache = args.out.with_suffix(".runs.jsonl")
    return args


def parse_budget(entries, tasks) -> dict:
    out = {}
    for e in entries:
        task, _, n = e.rpartition("=")
        for t in ([task] if task else tasks):
            out[t] = int(n)
    missing = [t for t in tasks if t not in out]
    if missing:
        raise SystemExit(f"--budget gives no sample budget for {missing}; use N or TASK=N")
    return {t: out[t] for t in tasks}


def parse_grids(entries) -> dict:
    """``NAME=LR,LR`` entries -> ``{NAME: (LR, ...)}``; NAME is a method or a family of LR_GRIDS."""
    grids = {}
    for e in entries or []:
        name, _, vals = e.partition("=")
        try:
            grids[name] = tuple(float(v) for v in vals.split(","))
        except ValueError:
            raise SystemExit(f"--lr-grid entry {e!r}: use NAME=LR,LR,... e.g. pixel=1e-5,3e-5") from None
    return grids


def merge(paths, out: Path, argv) -> dict:
    """One result from several (disjoint tasks): summaries, befores, runs side by side; each part's
    config kept under ``config.tasks[task]``; goals, table and figure made anew."""
    from pxpo_lite import experiments as E

    parts = [json.loads(Path(p).read_text()) for p in paths]
    res: dict = {"summary": {}, "before": {}, "runs": {}, "config": {"tasks": {}}, "timing": {"runs": 0, "run_cpu_s": 0.0}}
    for part in parts:
        clash = set(part["summary"]) & set(res["summary"])
        if clash:
            raise SystemExit(f"--merge: task(s) {sorted(clash)} appear in two results; merge results of disjoint tasks")
        for k in ("summary", "before", "runs"):
            res[k].update(part.get(k, {}))
        for t in part["summary"]:
            res["config"]["tasks"][t] = part["config"]
        res["timing"]["runs"] += part["timing"]["runs"]
        res["timing"]["run_cpu_s"] = round(res["timing"]["run_cpu_s"] + part["timing"]["run_cpu_s"], 1)
    first = parts[0]["config"]
    shared = ("selection_seeds", "eval_seeds", "fidelity_end", "fidelity_min", "min_effect", "paper_effect", "methods")
    for k in shared:
        if any(p["config"][k] != first[k] for p in parts):
            raise SystemExit(f"--merge: the results differ in {k}; they are not one benchmark")
    res["config"].update({k: first[k] for k in shared})
    res["config"]["budget"] = {t: c["budget"][t] for t, c in res["config"]["tasks"].items()}
    res["config"]["command"] = "python benchmarks/bench_credit_frontier.py " + " ".join(argv)
    res["config"]["commands"] = {t: c["command"] for t, c in res["config"]["tasks"].items()}
    res["timing"]["run_cpu_hours"] = round(res["timing"]["run_cpu_s"] / 3600, 2)
    res["goals"] = E.frontier_goals(res)
    out.write_text(json.dumps(res, indent=1))
    E.plot_frontier(res).savefig(out.with_suffix(".png"), dpi=90)
    print(E.frontier_table(res))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return res


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.merge:
        os.environ.setdefault("MPLBACKEND", "Agg")
        return merge(args.merge, args.out, argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    torch.set_num_threads(1)
    import pxpo_lite
    from pxpo_lite import experiments as E
    from pxpo_lite.experiments import frontier as F

    methods = args.methods or list(F.FRONTIER_METHODS)
    for m in methods:
        E.parse_method(m)
    budgets = parse_budget(args.budget, args.tasks)
    grids = parse_grids(args.lr_grid)
    lr_grids = {m: F.lr_grid(m, grids) for m in methods}
    seg = pxpo_lite.load_segmenter()
    if args.model == "random-tiny":
        from pxpo_lite.models import build_tiny_pipeline

        pipe = build_tiny_pipeline(seed=0, block_out_channels=(8, 16, 16))
        overrides = dict(num_steps=2, samples_per_epoch=8, sample_batch_size=8, train_batch_size=4, timestep_fraction=1.0)
    else:
        pipe = pxpo_lite.load_tiny_pipeline()
        overrides = {}
    tasks = [E.get_task(n, segmenter=seg) for n in args.tasks]
    context = {"model": args.model, "per_prompt": args.per_prompt, "track_every": args.track_every, **overrides}
    cache = F.RunCache(args.cache, context)
    cached = len(cache.records)
    t0, c0 = time.perf_counter(), time.process_time()
    out = F.run_frontier(pipe, tasks, methods, budgets, args.selection_seeds, args.eval_seeds, lr_grids, args.beta_grid,
                     args.per_prompt, args.track_every, args.n_boot, seg, cache,
                     map_fn=lambda fn, jobs: E.map_jobs(fn, jobs, processes=args.jobs), max_extend=args.max_extend,
                     **overrides)
    out["goals"] = E.frontier_goals(out)
    out["timing"].update(total_wall_s=round(time.perf_counter() - t0, 1), main_cpu_s=round(time.process_time() - c0, 1),
                         cached_runs_at_start=cached, jobs=args.jobs,
                         run_cpu_hours=round(out["timing"]["run_cpu_s"] / 3600, 2))
    out["config"] = {
        "command": "python benchmarks/bench_credit_frontier.py " + " ".join(argv),
        "selection_seeds": args.selection_seeds, "eval_seeds": args.eval_seeds, "budget": budgets, "tasks": args.tasks,
        "methods": methods, "lr_grids": {m: list(g) for m, g in lr_grids.items()}, "beta_grid": args.beta_grid,
        "max_extend": args.max_extend, "per_prompt": args.per_prompt, "track_every": args.track_every,
        "fidelity_end": F.FIDELITY_END, "fidelity_min": F.FIDELITY_MIN, "min_effect": F.MIN_EFFECT,
        "paper_effect": F.PAPER_EFFECT, "n_boot": args.n_boot, "defaults": {**E.DEFAULTS, **overrides},
        "group_size": E.GROUP_SIZE, "prompts": {t.name: list(t.prompts) for t in tasks}, "model": args.model,
        "fidelity_keys": {t.name: E.credit.fidelity_key(t) for t in tasks},
        "torch": torch.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    fig = E.plot_frontier(out)
    fig.savefig(args.out.with_suffix(".png"), dpi=90)
    print(E.frontier_table(out))
    print(f"\n{out['timing']['runs']} runs, {out['timing']['run_cpu_hours']} CPU-hours of training "
          f"(wall {out['timing']['total_wall_s']:.0f} s, {cached} runs from the cache)")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return out


if __name__ == "__main__":
    main()
