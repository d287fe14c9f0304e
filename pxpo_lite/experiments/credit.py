"""Credit assignment compared fairly: one reward per image, per segmented part, or per pixel,
each with and without the keep term, and two controls that separate "the feedback helps" from
"any spatial reweighting helps".

The ways to hand a reward map r (B,H,W) to the policy gradient (:data:`CREDITS`):

* ``"image"`` — DDPO: one advantage per image, from the image mean of r;
* ``"region"`` — one advantage per segmented part: every pixel gets the mean of r over its
  part (``regions.per_part_average``: a piecewise-constant map), then the PXPO loss;
* ``"pixel"`` — PXPO: one advantage per pixel, r itself;
* ``"pixel-clipped"`` — PXPO with the element-wise PPO clip (``runs.PXPO_CLIP_RANGE``);
* ``"pixel-uninformed"`` — a control: the image's scalar advantage spread over its pixels by a
  smooth random map of mean 1 (``advantages.uninformed_map``): per-pixel weights, no feedback;
* ``"pixel-imageratio"`` — a control: per-pixel advantages under one image-level ratio
  (``losses.imageratio_loss``, DenseFlow-GRPO's form).

Every credit reduces to DDPO under a constant map (tested). A method name is a credit,
optionally with ``"+keep"``: the keep term β·KL(π_θ ‖ π_ref) (``TrainConfig.keep_beta``, global β;
``pxpo_lite.keep``) added to the loss. The image mean of the region map equals r's, so every
method reports the same reward and the curves compare.

Each method × task gets its learning rate from :func:`pilot_lr`: one pilot run per lr of a
grid (one seed), and ``stats.select_lr`` keeps the largest whose held-out prompt fidelity at
the end stays ≥ 90 %. :func:`benchmark` then runs every method on the same model, prompts,
seeds and sample budget, measures each final model on held-out noise seeds (reward, the
paper's effect size, fidelity, and for region tasks the change inside vs outside the region:
:func:`.evaluation.region_change`), and :func:`summarise_credit` reports samples-to-target (target:
DDPO's final reward) with bootstrap intervals over seeds. The effect-vs-fidelity frontier over
lr and β grids, with settings chosen on other seeds than those reported, is
:mod:`pxpo_lite.experiments.frontier`.

Used by ``benchmarks/bench_credit_assignment.py``; the result is shown in
``notebooks/07_ddpo_vs_pxpo.ipynb`` (``experiments.plot_credit_assignment``).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Sequence

import numpy as np

from .. import regions
from ..trainer import TrainConfig
from .evaluation import FidelityTracker, evaluate, fidelity_key, key_fidelity, measure_heldout, region_change  # noqa: F401 (region_change: re-exported)
from .runs import RunResult, run
from .stats import bootstrap_ci, bootstrap_samples_to_target, select_lr, smooth
from .tasks import Task

CREDITS = {"image": "ddpo", "region": "pxpo", "pixel": "pxpo", "pixel-clipped": "pxpo_clip",
           "pixel-uninformed": "pxpo_uninformed", "pixel-imageratio": "pxpo_imageratio"}
"""Credit -> the run method it trains with (``experiments.METHODS``: loss, clip, advantage map)."""

CREDIT_METHODS = ("image", "region", "pixel", "image+keep", "region+keep", "pixel+keep")
"""The methods of the credit-assignment benchmark (its default); any credit of :data:`CREDITS`, with or
without ``"+keep"``, is a valid method (:func:`parse_method`)."""
ALL_METHODS = tuple(c + k for k in ("", "+keep") for c in CREDITS)
CREDIT_LABELS = {"image": "per-image credit (DDPO)", "region": "per-region credit", "pixel": "per-pixel credit (PXPO)",
                 "pixel-clipped": "per-pixel credit, clipped ratio", "pixel-uninformed": "random map × image advantage (control)",
                 "pixel-imageratio": "per-pixel advantages, image ratio (control)"}
CREDIT_LABELS.update({f"{k}+keep": f"{v} + keep" for k, v in list(CREDIT_LABELS.items())})

CREDIT_KEEP_BETA = 1.0
"""Default global β of the keep term for the ``+keep`` methods (not tuned; the CLI's ``--keep-beta``); not
``feedback.KEEP_BETA`` (10.0, the painted-feedback session's β)."""
KEEP_BETA = CREDIT_KEEP_BETA  # its old name, kept so that E.KEEP_BETA (notebooks 04, 05) still works

LR_GRID = (1e-5, 3e-5, 1e-4, 3e-4)
"""The learning rates the pilot tries for every method × task."""

FIDELITY_THRESHOLD = 0.9


def parse_method(method: str) -> tuple[str, bool]:
    """``"pixel+keep"`` -> ``("pixel", True)``; raises ValueError naming the known methods."""
    if not isinstance(method, str):
        raise TypeError(f"method must be a str such as 'pixel' or 'pixel+keep', got {type(method).__name__}")
    if method not in ALL_METHODS:
        raise ValueError(f"method must be one of {list(ALL_METHODS)}, got {method!r}")
    credit, _, keep = method.partition("+")
    return credit, keep == "keep"


def credit_task(task: Task, credit: str, segmenter=None) -> Task:
    """``task`` with its reward map as ``credit`` sees it: per-part averages for ``"region"``."""
    if credit not in CREDITS:
        raise ValueError(f"credit must be one of {list(CREDITS)}, got {credit!r}")
    if credit != "region":
        return task
    return dataclasses.replace(task, reward_map=regions.per_part_average(task.reward_map, segmenter=segmenter))


def run_credit(base_pipe, task: Task, method: str, budget: int, seed: int = 0, learning_rate: float | None = None,
               keep_beta: float = CREDIT_KEEP_BETA, segmenter=None, keep_pipe: bool = False, callback=None, **overrides) -> RunResult:
    """:func:`~pxpo_lite.experiments.run` with a credit method (see :data:`CREDIT_METHODS`).

    The result's ``method`` is the credit method's name and ``cpu_seconds`` (an added
    attribute) the process CPU time the run took.
    """
    credit, keep = parse_method(method)
    kw = dict(overrides)
    if learning_rate is not None:
        kw["learning_rate"] = float(learning_rate)
    if keep:
        kw["keep_beta"] = float(keep_beta)
    c0 = time.process_time()
    r = run(base_pipe, credit_task(task, credit, segmenter), CREDITS[credit], budget, seed, progress=False,
            keep_pipe=keep_pipe, callback=callback, **kw)
    r.method = method
    r.cpu_seconds = time.process_time() - c0
    return r


def pilot_lr(base_pipe, task: Task, method: str, lr_grid: Sequence[float] = LR_GRID, budget: int = 64, seed: int = 0,
             before: dict | None = None, per_prompt: int = 4, segmenter=None, threshold: float = FIDELITY_THRESHOLD,
             key: str = "auto", keep_beta: float = CREDIT_KEEP_BETA, stop_after_fail: bool = True, track_every: int = 0,
             **overrides) -> dict:
    """One pilot run per learning rate (seed ``seed``), fidelity at its end, then ``stats.select_lr``.

    The grid is run from the smallest lr up; with ``stop_after_fail`` the pilot stops at the first
    lr whose fidelity falls below ``threshold`` (a larger step is not expected to keep more of
    the prompt; the larger lrs are listed as not run). Returns ``{"lr", "passed", "rule",
    "pilot": {lr: {"fidelity", "effect_std", "final_reward", "cpu_s"}}, "records": {lr: run
    record}}`` — the records let :func:`benchmark` reuse the pilot as that seed's run.
    """
    if not lr_grid:
        raise ValueError("lr_grid must be a non-empty list of learning rates, e.g. [1e-5, 3e-5, 1e-4, 3e-4]")
    before = before or measure_heldout(base_pipe, task, per_prompt, segmenter=segmenter, images=True)
    pilot, records, skipped = {}, {}, []
    k = fidelity_key(task, key)
    for lr in sorted(float(x) for x in lr_grid):
        if stop_after_fail and any(p["fidelity"] is None or p["fidelity"] < threshold for p in pilot.values()):
            skipped.append(lr)
            continue
        track = FidelityTracker(task, segmenter, per_prompt, every=track_every, keep_images=False) if track_every else None
        r = run_credit(base_pipe, task, method, budget, seed, lr, keep_beta, segmenter, keep_pipe=True, callback=track,
                       **overrides)
        ev = evaluate(r.pipe, task, before, per_prompt, segmenter, key)
        r.pipe = None
        records[lr] = _run_record(r, ev, track, k)
        pilot[lr] = {"fidelity": ev["fidelity"], "effect_std": ev["effect_std"],
                     "final_reward": float(smooth(r.rewards, 3)[-1]), "cpu_s": round(r.cpu_seconds, 1)}
    choice = select_lr({lr: p["fidelity"] for lr, p in pilot.items()}, threshold)
    if skipped:
        choice["rule"] += f"; grid run from the smallest lr up, stopping at the first that failed (not run: {skipped})"
    return {**choice, "pilot": pilot, "not_run": skipped, "seed": seed, "budget": budget, "records": records}


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------
def _run_record(r: RunResult, ev: dict, track: FidelityTracker | None, key: str) -> dict:
    rec = {"seed": r.seed, "trained_on": [int(v) for v in r.trained_on], "reward": [float(v) for v in r.rewards],
           "seconds": round(r.seconds, 1), "cpu_s": round(r.cpu_seconds, 1), "eval": ev}
    if track is not None:
        fids = [key_fidelity(p, key) for p in track.points] + [ev["fidelity"]]
        rec["fidelity_track"] = [{"n_samples": p["n_samples"], "fidelity": key_fidelity(p, key), "mean": p["mean"]} for p in track.points]
        rec["fidelity_min"] = min((f for f in fids if f is not None), default=None)
    return rec


def benchmark(base_pipe, tasks: Sequence[Task], methods: Sequence[str] = CREDIT_METHODS, seeds: Sequence[int] = (0, 1, 2, 3, 4),
              budget: int = 160, lr_grid: Sequence[float] | None = LR_GRID, lr_table: dict | None = None, pilot_seed: int = 0,
              pilot_budget: int | None = None, threshold: float = FIDELITY_THRESHOLD, key: str = "auto", per_prompt: int = 4,
              window: int = 3, n_boot: int = 2000, keep_beta: float = CREDIT_KEEP_BETA, track_every: int = 0, segmenter=None,
              log=print, **overrides) -> dict:
    """Every method × task × seed from the same model, prompts, seeds and budget, each method at
    its own learning rate: from ``lr_table[task][method]`` if given there, else by :func:`pilot_lr`
    over ``lr_grid``. Returns a JSON-ready dict: ``lr``, ``before``, ``runs``, ``summary``, ``timing``."""
    for m in methods:
        parse_method(m)
    lr_table = lr_table or {}
    t0, c0 = time.perf_counter(), time.process_time()
    out: dict = {"lr": {}, "before": {}, "runs": {}, "timing": {"pilot_runs": 0, "runs": 0}}
    for task in tasks:
        before = measure_heldout(base_pipe, task, per_prompt, segmenter=segmenter, images=True)
        out["before"][task.name] = {"mean": before["mean"], "std": before["std"], "fidelity_all": before["fidelity"]["all"],
                                    "fidelity_other": before["fidelity_other"], "n": before["n"]}
        out["lr"][task.name], out["runs"][task.name] = {}, {}
        k = fidelity_key(task, key)
        for m in methods:
            given = lr_table.get(task.name, {}).get(m)
            if given is not None:
                choice = {"lr": float(given), "passed": None, "rule": "given (--lr table)"}
            elif lr_grid:
                choice = pilot_lr(base_pipe, task, m, lr_grid, pilot_budget or budget, pilot_seed, before, per_prompt,
                                  segmenter, threshold, key, keep_beta, track_every=track_every, **overrides)
                out["timing"]["pilot_runs"] += len(choice["pilot"])
                log(f"[{task.name}] {m}: lr {choice['lr']:g} ({'passed' if choice['passed'] else 'none passed'}; "
                    + ", ".join(f"{lr:g}: fid {p['fidelity']}" for lr, p in choice["pilot"].items()) + ")")
            else:
                raise ValueError(f"no learning rate for {task.name}/{m}: give lr_grid or lr_table[{task.name!r}][{m!r}]")
            reusable = choice.pop("records", {})
            out["lr"][task.name][m] = choice
            out["runs"][task.name][m] = []
            for s in seeds:
                if s == pilot_seed and (pilot_budget or budget) == budget and choice["lr"] in reusable:
                    # the pilot at the chosen lr is this seed's run: same model, seed, budget and lr
                    out["runs"][task.name][m].append({**reusable[choice["lr"]], "from_pilot": True})
                    log(f"[{task.name}] {m} seed {s}: the pilot run at lr {choice['lr']:g} (reused)")
                    continue
                track = FidelityTracker(task, segmenter, per_prompt, every=track_every, keep_images=False) if track_every else None
                r = run_credit(base_pipe, task, m, budget, s, choice["lr"], keep_beta, segmenter, keep_pipe=True,
                               callback=track, **overrides)
                ev = evaluate(r.pipe, task, before, per_prompt, segmenter, key)
                r.pipe = None
                out["runs"][task.name][m].append(_run_record(r, ev, track, k))
                out["timing"]["runs"] += 1
                log(f"[{task.name}] {m} seed {s}: final {out['runs'][task.name][m][-1]['reward'][-1]:.4f}, effect "
                    f"{ev['effect_std']:+.2f} std, fidelity ({k}) {ev['fidelity']}, {r.cpu_seconds:.0f} s CPU")
    out["timing"].update(wall_s=round(time.perf_counter() - t0, 1), cpu_s=round(time.process_time() - c0, 1))
    out["summary"] = summarise_credit(out["runs"], budget, window, n_boot, threshold)
    return out


def _mean_ci(values, n_boot) -> dict:
    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    if not v:
        return {"mean": None, "lo": None, "hi": None}
    lo, hi = bootstrap_ci(v, n_boot=n_boot)
    return {"mean": float(np.mean(v)), "lo": lo, "hi": hi}


def summarise_credit(runs: dict, budget: int, window: int = 3, n_boot: int = 2000, threshold: float = FIDELITY_THRESHOLD,
                     target_method: str = "image") -> dict:
    """Per task and method: final reward, effect, fidelity (means with bootstrap 95 % intervals over
    seeds), samples-to-target with its interval (target: ``target_method``'s seed-mean final
    reward), and the change inside/outside the region where measured."""
    out: dict = {}
    for task, by_method in runs.items():
        s: dict = {"methods": {}, "budget": budget, "target_method": target_method if target_method in by_method else None}
        finals = {m: [float(smooth(r["reward"], window)[-1]) for r in res] for m, res in by_method.items()}
        target = float(np.mean(finals[target_method])) if target_method in by_method else None
        s["target"] = target
        if target_method in by_method:
            y = np.mean([r["reward"] for r in by_method[target_method]], axis=0)
            noise = float(np.std(np.diff(y)) / np.sqrt(2)) if len(y) > 1 else 0.0
            s["target_gain"] = float(smooth(y, window)[-1] - y[0])
            s["target_improved"] = bool(s["target_gain"] > 2 * noise)
        for m, res in by_method.items():
            ev = [r["eval"] for r in res]
            row = {"seeds": len(res), "start_reward": float(np.mean([r["reward"][0] for r in res])),
                   "final_reward": _mean_ci(finals[m], n_boot),
                   "effect_std": _mean_ci([e["effect_std"] for e in ev], n_boot),
                   "fidelity": _mean_ci([e["fidelity"] for e in ev], n_boot),
                   "fidelity_all": float(np.mean([e["fidelity_all"] for e in ev])),
                   "fidelity_ok_all_seeds": all(e["fidelity"] is not None and e["fidelity"] >= threshold for e in ev),
                   "cpu_s_per_run": float(np.mean([r["cpu_s"] for r in res])),
                   "curve": {"x": list(res[0]["trained_on"]), "mean": np.mean([r["reward"] for r in res], 0).tolist(),
                             "std": np.std([r["reward"] for r in res], 0).tolist()}}
            if all("fidelity_min" in r for r in res):
                mins = [r["fidelity_min"] for r in res if r["fidelity_min"] is not None]
                row["fidelity_min_during"] = min(mins) if mins else None
            if all("change_inside" in e for e in ev):
                for part in ("inside", "outside", "ratio"):
                    row[f"change_{part}"] = _mean_ci([e[f"change_{part}"] for e in ev], n_boot)
            if target is not None:
                st = bootstrap_samples_to_target(res[0]["trained_on"], [r["reward"] for r in res], target, window, n_boot)
                st["fraction_of_budget"] = None if st["point"] is None else st["point"] / budget
                row["samples_to_target"] = st
            s["methods"][m] = row
        out[task] = s
    return out


summarize_credit = summarise_credit  # the old spelling (one spelling in the package: summarise), kept for old code


GOALS = {"fraction_of_target_samples": 0.25, "effect_std": {"colour": 1.0, "hair": 2.0}, "fidelity": FIDELITY_THRESHOLD}
"""The benchmark's goals for per-pixel credit with the keep term (``pixel+keep``)."""


def credit_goals(result: dict, method: str = "pixel+keep") -> dict:
    """Whether ``method`` met :data:`GOALS` in a benchmark result (its JSON or shipped copy), per task:
    reaching the target (DDPO's final reward) within 25 % of the budget, fidelity ≥ 90 % at the end
    on every seed and — where tracked — all the way, and the effect size (1.0 std colour, 2.0 hair).
    Returns ``{task: {"reach": {...}, "fidelity": {...}, "effect": {...}}}`` with values and ``met``
    (``None`` for "reach" when DDPO did not improve beyond noise: then its final reward is no target)."""
    out: dict = {}
    for task, s in result["summary"].items():
        r = s["methods"].get(method)
        if r is None:
            continue
        st = r.get("samples_to_target") or {}
        frac = st.get("fraction_of_budget")
        low = r.get("fidelity_min_during")
        fid_ok = bool(r["fidelity_ok_all_seeds"]) and (low is None or low >= GOALS["fidelity"])
        reached = frac is not None and frac <= GOALS["fraction_of_target_samples"]
        g = {"reach": {"fraction_of_budget": frac, "target_improved": s.get("target_improved"),
                       # a target DDPO did not move away from says nothing: neither met nor missed
                       "met": None if s.get("target_improved") is False else reached},
             "fidelity": {"end_mean": r["fidelity"]["mean"], "lowest_during": low, "met": fid_ok}}
        want = GOALS["effect_std"].get(task)
        if want is not None:
            g["effect"] = {"mean": r["effect_std"]["mean"], "goal": want, "met": fid_ok and r["effect_std"]["mean"] >= want}
        out[task] = g
    return out

