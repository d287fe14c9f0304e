"""The credit frontier: how much effect each kind of credit buys at each level of prompt fidelity,
with settings chosen on one set of seeds and reported on another.

One learning rate per method (``experiments.credit``) answers "which method is best at *this*
step size?". A frontier answers the fairer question: over every step size (and keep weight β),
what is the largest effect a method reaches while the model still draws what the prompt asks
for? The procedure, per task and method:

1. **Bracket the learning rate** on the *selection seeds* (:data:`SELECTION_SEEDS`): run the
   method's lr grid from the smallest up and stop at the first lr whose seed-mean held-out
   fidelity at the end falls below :data:`FIDELITY_END`; extend the grid downwards while the
   smallest lr still moves the reward by ≥ :data:`MIN_EFFECT` std, and upwards while the largest
   still keeps fidelity (:func:`ladder`). ``+keep`` methods do this for every β of :data:`BETA_GRID`.
2. **Every tracked point is a frontier point.** A run measures held-out reward and fidelity every
   ``track_every`` epochs, so it traces a path in (fidelity, effect); a *setting* is
   (lr, β, samples n). Its numbers are seed means at n; its lowest fidelity is the minimum of the
   seed-mean fidelity over the points up to n (:func:`setting_points`).
3. **Select** the setting with the largest effect whose fidelity is ≥ :data:`FIDELITY_END` at n and
   ≥ :data:`FIDELITY_MIN` all the way (:func:`select_setting`).
4. **Report on other seeds**: the chosen (lr, β) is run on the *evaluation seeds* for the same
   budget and read at n: effect with a bootstrap 95 % interval over seeds, fidelity at n and its
   lowest value on the way, and the samples needed to reach the paper's effect
   (:data:`PAPER_EFFECT`) under the same fidelity condition (:func:`samples_to_effect`).

Every run's record is appended to a JSON-lines cache as it finishes (:class:`RunCache`): a killed
benchmark resumes without redoing a run, and a run shared by two settings is made once.

Used by ``benchmarks/bench_credit_frontier.py``; shown in ``notebooks/07_ddpo_vs_pxpo.ipynb``.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .credit import CREDIT_KEEP_BETA, parse_method, run_credit
from .evaluation import FidelityTracker, fidelity_key, measure_heldout
from .stats import bootstrap_ci
from .tasks import Task

FRONTIER_METHODS = ("image", "pixel", "pixel+keep", "pixel-uninformed", "pixel-imageratio")
"""The methods the frontier needs: per-image and per-pixel credit, per-pixel with the keep term, and
the two controls (``experiments.credit``)."""

LR_GRIDS = {"image": (1e-5, 3e-5, 1e-4, 3e-4), "pixel": (3e-6, 1e-5, 3e-5, 1e-4),
            "keep": (1e-4, 3e-4, 1e-3, 3e-3)}
"""Starting lr grids (:func:`lr_grid`); :func:`ladder` extends them until they bracket the method."""

BETA_GRID = (0.3, 1.0, 3.0, 10.0)
"""The keep weights β swept for ``+keep`` methods."""

SELECTION_SEEDS = (0, 1)
EVAL_SEEDS = (2, 3, 4, 5, 6)
FIDELITY_END = 0.9
FIDELITY_MIN = 0.85
MIN_EFFECT = 0.2
"""The smallest lr of a bracketing grid moves the reward by less than this (std)."""

PAPER_EFFECT = {"colour": 0.5, "hair": 1.0}
"""The paper's effect sizes in std (colour −0.39 → −0.35 ± 0.08; hair −0.06 → −0.02 ± 0.04)."""


def lr_grid(method: str, grids: dict | None = None) -> tuple:
    """The starting lr grid of ``method``: ``grids[method]`` if given, else its family's in
    ``{**LR_GRIDS, **grids}``: keep methods start higher (the keep term holds them back); the
    image-level credits (``image``, the two controls) share DDPO's grid."""
    g = {**LR_GRIDS, **(grids or {})}
    if method in g:
        return tuple(g[method])
    credit, keep = parse_method(method)
    if keep:
        return tuple(g["keep"])
    return tuple(g["pixel"] if credit in ("pixel", "region", "pixel-clipped") else g["image"])


# --------------------------------------------------------------------------------------------
# Runs and their cache
# --------------------------------------------------------------------------------------------
def run_key(task: str, method: str, lr: float, beta: float | None, seed: int, budget: int) -> str:
    return json.dumps([task, method, float(f"{lr:.6g}"), None if beta is None else float(beta), int(seed), int(budget)])


class RunCache:
    """Run records by :func:`run_key`, kept in a JSON-lines file (appended as each run ends, so several
    forked workers can share it; a torn last line from a kill is skipped on reading)."""

    def __init__(self, path: str | os.PathLike | None, context: dict | None = None):
        self.path = None if path is None else Path(path)
        self.context = context or {}
        self.records: dict[str, dict] = {}
        if self.path is not None and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                if rec.get("context") == self.context:
                    self.records[rec["key"]] = rec

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def put(self, key: str, rec: dict) -> None:
        rec = {"key": key, "context": self.context, **rec}
        self.records[key] = rec
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:  # one write of one line: appends from several processes do not interleave
                f.write(json.dumps(rec) + "\n")


def run_point(base_pipe, task: Task, method: str, lr: float, beta: float | None, seed: int, budget: int, before: dict,
              segmenter, per_prompt: int, track_every: int, cache: RunCache | None = None, **overrides) -> dict:
    """One training run, measured on the held-out seeds every ``track_every`` epochs and at the end.

    Returns ``{"task", "method", "lr", "beta", "seed", "budget", "path": [{"n", "fidelity", "effect_std",
    "mean"}], "reward", "cpu_s"}`` (from ``cache`` if it holds the run)."""
    key = run_key(task.name, method, lr, beta, seed, budget)
    if cache is not None and cache.get(key) is not None:
        return cache.get(key)
    _, keep = parse_method(method)
    track = FidelityTracker(task, segmenter, per_prompt, every=track_every, keep_images=False)
    epochs = budget // 16 if "samples_per_epoch" not in overrides else budget // overrides["samples_per_epoch"]

    def callback(record, pipe):  # every track_every epochs, and always after the last one
        if record["epoch"] % track_every == 0 or record["epoch"] == epochs:
            track.measure(pipe, record["n_samples"])

    r = run_credit(base_pipe, task, method, budget, seed, lr, beta if keep else CREDIT_KEEP_BETA, segmenter, callback=callback,
                   **overrides)
    k = fidelity_key(task)
    path = []
    for p in track.points:
        fid = p["fidelity_other"] if k == "other" else p["fidelity"]["all"]
        path.append({"n": p["n_samples"], "fidelity": None if fid is None or not math.isfinite(fid) else float(fid),
                     "effect_std": (p["mean"] - before["mean"]) / before["std"], "mean": p["mean"]})
    rec = {"task": task.name, "method": method, "lr": float(lr), "beta": beta if keep else None, "seed": int(seed),
           "budget": int(budget), "path": path, "reward": [float(v) for v in r.rewards], "cpu_s": round(r.cpu_seconds, 1)}
    if cache is not None:
        cache.put(key, rec)
    return rec


# --------------------------------------------------------------------------------------------
# Settings from runs: frontier points, the selection rule, samples to the paper's effect
# --------------------------------------------------------------------------------------------
def _fid_ok(f) -> float:
    return -math.inf if f is None else f


def setting_points(runs: Sequence[dict], n_boot: int = 2000) -> list[dict]:
    """The frontier points of one (method, lr, β) from its runs on several seeds: one per tracked n
    that every run has. ``fidelity_end`` = seed-mean fidelity at n; ``fidelity_min`` = the lowest
    seed-mean fidelity at any tracked point up to n; ``effect_std`` = seed mean with a bootstrap interval."""
    if not runs:
        return []
    ns = sorted(set.intersection(*[{p["n"] for p in r["path"]} for r in runs]))
    by_n = [{p["n"]: p for p in r["path"]} for r in runs]
    out, low = [], math.inf
    for n in ns:
        fids = [_fid_ok(b[n]["fidelity"]) for b in by_n]
        f_end = float(np.mean(fids)) if all(math.isfinite(f) for f in fids) else None
        low = min(low, f_end if f_end is not None else -math.inf)
        eff = [b[n]["effect_std"] for b in by_n]
        lo, hi = bootstrap_ci(eff, n_boot=n_boot)
        out.append({"lr": runs[0]["lr"], "beta": runs[0]["beta"], "n_samples": int(n), "fidelity_end": f_end,
                    "fidelity_min": None if not math.isfinite(low) else float(low),
                    "effect_std": {"mean": float(np.mean(eff)), "lo": lo, "hi": hi}, "seeds": len(runs)})
    return out


def meets(point: dict, fid_end: float = FIDELITY_END, fid_min: float = FIDELITY_MIN) -> bool:
    """The fidelity condition: ≥ ``fid_end`` at the point and ≥ ``fid_min`` all the way to it."""
    return (point["fidelity_end"] is not None and point["fidelity_end"] >= fid_end
            and point["fidelity_min"] is not None and point["fidelity_min"] >= fid_min)


def select_setting(points: Sequence[dict], fid_end: float = FIDELITY_END, fid_min: float = FIDELITY_MIN) -> dict | None:
    """The point with the largest mean effect that :func:`meets` the fidelity condition (ties: fewer
    samples); None when no point does."""
    ok = [p for p in points if meets(p, fid_end, fid_min)]
    return max(ok, key=lambda p: (p["effect_std"]["mean"], -p["n_samples"])) if ok else None


def pareto(points: Sequence[dict]) -> list[dict]:
    """The points no other point beats on both fidelity at the end and mean effect."""
    pts = [p for p in points if p["fidelity_end"] is not None]
    return [p for p in pts if not any(q is not p and q["fidelity_end"] >= p["fidelity_end"]
                                      and q["effect_std"]["mean"] > p["effect_std"]["mean"] for q in pts)]


def samples_to_effect(runs: Sequence[dict], target: float, max_n: int | None = None, n_boot: int = 2000,
                      fid_end: float = FIDELITY_END, fid_min: float = FIDELITY_MIN, seed: int = 0) -> dict:
    """The first tracked n (≤ ``max_n``) at which the seed-mean effect is ≥ ``target`` and the fidelity
    condition holds, with a bootstrap interval over seeds (a resample that never gets there counts as
    ∞: ``lo``/``hi`` None then means "not within the budget")."""
    def first(sel):
        for p in setting_points([runs[i] for i in sel], n_boot=1):
            if (max_n is None or p["n_samples"] <= max_n) and p["effect_std"]["mean"] >= target and meets(p, fid_end, fid_min):
                return p["n_samples"]
        return None

    if not runs:
        return {"point": None, "lo": None, "hi": None, "never_fraction": 1.0}
    point = first(range(len(runs)))
    rng = np.random.default_rng(seed)
    boots = [first(idx) for idx in rng.integers(0, len(runs), size=(n_boot, len(runs)))]
    vals = np.array([math.inf if b is None else float(b) for b in boots])
    lo, hi = np.quantile(vals, 0.025, method="lower"), np.quantile(vals, 0.975, method="higher")
    return {"point": point, "lo": None if math.isinf(lo) else int(lo), "hi": None if math.isinf(hi) else int(hi),
            "never_fraction": float(np.isinf(vals).mean())}


# --------------------------------------------------------------------------------------------
# The procedure
# --------------------------------------------------------------------------------------------
def ladder(run_at: Callable[[float], list], grid: Sequence[float], min_effect: float = MIN_EFFECT,
           fid_end: float = FIDELITY_END, max_extend: int = 2) -> list[float]:
    """Learning rates run for one (method, β), smallest first, until the grid brackets it.

    ``run_at(lr)`` runs the selection seeds at ``lr`` and returns their runs. Going up stops at the
    first lr whose seed-mean fidelity at the end is < ``fid_end``; if none fails, up to ``max_extend``
    lrs (×3 each) are added above. If the smallest lr already moves the reward by ≥ ``min_effect``
    std, up to ``max_extend`` lrs (÷3) are added below. Returns the lrs run.
    """
    def end(lr):
        pts = setting_points(run_at(lr), n_boot=1)
        return pts[-1] if pts else None

    grid = sorted(float(x) for x in grid)
    done: list[float] = []
    for lr in grid + [grid[-1] * 3 ** k for k in range(1, max_extend + 1)]:
        p = end(lr)
        done.append(lr)
        if p is None or not meets(p, fid_end, -math.inf):
            break
    low = grid[0]
    for _ in range(max_extend):
        p = end(low)
        if p is None or p["effect_std"]["mean"] < min_effect:
            break
        low /= 3
        end(low)
        done.insert(0, low)
    return done


def method_settings(method: str, beta_grid: Sequence[float] = BETA_GRID) -> list[float | None]:
    """The βs a method is swept over: :data:`BETA_GRID` for ``+keep`` methods, [None] otherwise."""
    return list(beta_grid) if parse_method(method)[1] else [None]


def run_frontier(base_pipe, tasks: Sequence[Task], methods: Sequence[str] = FRONTIER_METHODS, budget: dict | int = 160,
             selection_seeds: Sequence[int] = SELECTION_SEEDS, eval_seeds: Sequence[int] = EVAL_SEEDS,
             lr_grids: dict | None = None, beta_grid: Sequence[float] = BETA_GRID, per_prompt: int = 8,
             track_every: int = 2, n_boot: int = 2000, segmenter=None, cache: RunCache | None = None,
             map_fn: Callable | None = None, max_extend: int = 2, log=print, **overrides) -> dict:
    """The whole procedure of the module docstring for every task × method. ``budget``: one number or
    ``{task: samples}``; ``lr_grids``: ``{method or family: grid}`` (:func:`lr_grid`); ``map_fn(fn, jobs)``
    runs independent jobs (default: one after another; ``experiments.map_jobs`` for processes).
    Returns the JSON-ready ``{"summary", "before", "runs" (the evaluation seeds' runs), "timing"}``."""
    for m in methods:
        parse_method(m)
    cache = cache if cache is not None else RunCache(None)
    map_fn = map_fn or (lambda fn, jobs: [fn(j) for j in jobs])
    budgets = budget if isinstance(budget, dict) else {t.name: int(budget) for t in tasks}
    t0 = time.perf_counter()
    befores = {t.name: measure_heldout(base_pipe, t, per_prompt, segmenter=segmenter, images=False) for t in tasks}
    by_name = {t.name: t for t in tasks}

    def one(task, method, lr, beta, seed):
        return run_point(base_pipe, by_name[task], method, lr, beta, seed, budgets[task], befores[task], segmenter,
                         per_prompt, track_every, cache, **overrides)

    # 1.-2. selection: one job per (task, method, β) ladder; the runs land in the cache
    def ladder_job(job):
        task, method, beta = job
        grid = lr_grid(method, lr_grids)
        lrs = ladder(lambda lr: [one(task, method, lr, beta, s) for s in selection_seeds], grid, max_extend=max_extend)
        runs = {lr: [one(task, method, lr, beta, s) for s in selection_seeds] for lr in lrs}
        log(f"[{task}] {method} β={beta}: lrs {[f'{x:g}' for x in lrs]}")
        return {"task": task, "method": method, "beta": beta, "lrs": lrs, "runs": runs}

    jobs = [(t.name, m, b) for t in tasks for m in methods for b in method_settings(m, beta_grid)]
    ladders = map_fn(ladder_job, jobs)
    for lad in ladders:  # results of forked workers: fold their runs into this process's cache
        for lr, rs in lad["runs"].items():
            for r in rs:
                cache.records.setdefault(run_key(r["task"], r["method"], r["lr"], r["beta"], r["seed"], r["budget"]), r)
    points: dict = {}
    for lad in ladders:
        for lr, rs in lad["runs"].items():
            points.setdefault(lad["task"], {}).setdefault(lad["method"], []).extend(setting_points(rs, n_boot))
    chosen = {t: {m: select_setting(points[t][m]) for m in points[t]} for t in points}

    # 3.-4. evaluation seeds at the chosen settings (the largest lr that passed, if none met the condition)
    eval_jobs = []
    for t in points:
        for m, c in chosen[t].items():
            if c is not None:
                eval_jobs += [(t, m, c["lr"], c["beta"], s) for s in eval_seeds]
    evals = map_fn(lambda j: one(*j), eval_jobs)
    summary, runs_out = {}, {}
    for t in points:
        summary[t] = {}
        for m in points[t]:
            c = chosen[t][m]
            row = {"seeds": len(eval_seeds), "selection_seeds": list(selection_seeds),
                   "lr_grid": sorted({p["lr"] for p in points[t][m]}),
                   "beta_grid": sorted({p["beta"] for p in points[t][m] if p["beta"] is not None}),
                   "frontier": sorted(points[t][m], key=lambda p: (p["beta"] or 0, p["lr"], p["n_samples"])),
                   "pareto": pareto(points[t][m]), "best_at_fidelity": None, "samples_to_paper_effect": None}
            if c is not None:
                rs = [e for e in evals if e["task"] == t and e["method"] == m]
                at = {p["n_samples"]: p for p in setting_points(rs, n_boot)}.get(c["n_samples"])
                row["best_at_fidelity"] = {"threshold": FIDELITY_END, "threshold_min": FIDELITY_MIN, "lr": c["lr"],
                                           "beta": c["beta"], "n_samples": c["n_samples"], "selection": c,
                                           **({k: at[k] for k in ("fidelity_end", "fidelity_min", "effect_std")} if at else {}),
                                           "meets_on_eval_seeds": bool(at and meets(at))}
                row["eval_path"] = setting_points(rs, n_boot)
                runs_out.setdefault(t, {})[m] = rs
                target = PAPER_EFFECT.get(t)
                if target is not None:
                    row["samples_to_paper_effect"] = {"target_std": target, **samples_to_effect(rs, target, c["n_samples"], n_boot)}
            summary[t][m] = row
    before = {t: {"mean": b["mean"], "std": b["std"], "n": b["n"], "fidelity_all": b["fidelity"]["all"],
                  "fidelity_other": b["fidelity_other"]} for t, b in befores.items()}
    n_runs = sum(len(rs) for lad in ladders for rs in lad["runs"].values()) + len(evals)
    cpu = sum(r["cpu_s"] for r in cache.records.values())
    return {"summary": summary, "before": before, "runs": runs_out,
            "timing": {"wall_s": round(time.perf_counter() - t0, 1), "runs": n_runs, "run_cpu_s": round(cpu, 1)}}
