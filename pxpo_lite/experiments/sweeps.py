"""Several runs compared: every method × task × seed on the same budget, seed-averaged reward
curves, final rewards and the samples each method needs to reach DDPO's final reward.

Shared by ``notebooks/07_ddpo_vs_pxpo.ipynb`` and ``benchmarks/bench_ddpo_vs_pxpo.py``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from .evaluation import measure_heldout, table_row
from .parallel import map_jobs
from .runs import RunResult, run
from .stats import smooth  # re-exported: its home is stats.py
from .tasks import Task

# --------------------------------------------------------------------------------------------
# Curves and samples-to-reach
# --------------------------------------------------------------------------------------------
def mean_curve(results: Sequence[RunResult]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(samples trained on, mean over seeds, std over seeds) of several runs of one method."""
    if not results:
        raise ValueError("results must be a non-empty list of RunResult")
    x = results[0].trained_on
    ys = np.stack([r.rewards for r in results])
    return x, ys.mean(0), ys.std(0)


def final_reward(results: Sequence[RunResult], window: int = 3) -> float:
    """The mean of the last ``window`` epochs of the seed-averaged curve."""
    _, y, _ = mean_curve(results)
    return float(smooth(y, window)[-1])


def samples_to_reach(results: Sequence[RunResult], target: float, window: int = 3) -> int | None:
    """Samples trained on before the seed-averaged reward curve, smoothed by a *centred* moving
    average of ``window`` epochs, first reaches ``target`` (None: never within the budget)."""
    x, y, _ = mean_curve(results)
    ys = smooth(y, window, centered=True)
    hit = np.flatnonzero(ys >= target - 1e-12)
    return int(x[hit[0]]) if len(hit) else None


def compare(base_pipe, tasks: Sequence[Task], methods: Sequence[str] = ("ddpo", "pxpo", "pxpo_clip"),
            seeds: Sequence[int] = (0, 1, 2), budget: int = 192, window: int = 3, progress: bool = True,
            eval_per_prompt: int = 0, segmenter=None, jobs: int | None = None, **overrides) -> dict:
    """Every method × task × seed from the same model, prompts, seeds and budget.

    Returns ``{"runs": {task: {method: [RunResult, ...]}}, "summary": {task: {...}}}``; the
    summary holds each method's final reward (smoothed, seed mean ± std of per-seed finals),
    and the samples each PXPO variant needs to reach DDPO's final reward. With
    ``eval_per_prompt > 0`` the final model of each method's *first* seed is also evaluated on
    the held-out seeds (``result["eval"][task][method]``: a :func:`table_row` plus fidelity
    without the fought attribute), next to the pretrained model.

    ``jobs``: runs trained at once in forked processes (:mod:`.parallel`; None: one per CPU core
    on a CPU, 1 on a GPU). The results do not depend on it.
    """
    befores = {t.name: measure_heldout(base_pipe, t, eval_per_prompt, segmenter=segmenter, images=False)
               for t in tasks} if eval_per_prompt else {}
    todo = [(t, m, k, s) for t in tasks for m in methods for k, s in enumerate(seeds)]

    def one(job):
        task, m, k, s = job
        before = befores.get(task.name)
        r = run(base_pipe, task, m, budget, s, progress=False, keep_pipe=bool(before) and k == 0, **overrides)
        ev = None
        if before is not None and k == 0:
            after = measure_heldout(r.pipe, task, eval_per_prompt, segmenter=segmenter, images=False)
            ev = {**table_row(m, before, after), "seed": s,
                  "fidelity_other_before": before["fidelity_other"], "fidelity_other_after": after["fidelity_other"]}
            r.pipe = None
        return r, ev

    device = next(base_pipe.unet.parameters()).device
    bar = tqdm(total=len(todo), desc="runs", disable=not progress)
    results = map_jobs(one, todo, jobs, device=device, on_result=lambda k, _: bar.update(1))
    bar.close()
    runs: dict = {t.name: {m: [] for m in methods} for t in tasks}
    evals: dict = {}
    for (task, m, _, _), (r, ev) in zip(todo, results):
        runs[task.name][m].append(r)
        if ev is not None:
            evals.setdefault(task.name, {})[m] = ev
    out = {"runs": runs, "summary": summarise(runs, window)}
    if evals:
        out["eval"] = evals
    return out


def summarise(runs: dict, window: int = 3) -> dict:
    """Final rewards and samples-to-reach-DDPO's-final for a ``compare`` result's runs."""
    out: dict = {}
    for task, by_method in runs.items():
        s: dict = {"methods": {}}
        for m, res in by_method.items():
            finals = [float(smooth(r.rewards, window)[-1]) for r in res]
            first = [float(r.rewards[0]) for r in res]
            s["methods"][m] = {
                "start_reward": float(np.mean(first)),
                "final_reward": final_reward(res, window),
                "final_reward_seed_std": float(np.std(finals)),
                "gain": final_reward(res, window) - float(np.mean(first)),
                "seconds": float(sum(r.seconds for r in res)),
            }
        if "ddpo" in by_method:
            target = s["methods"]["ddpo"]["final_reward"]
            budget = by_method["ddpo"][0].budget
            s["ddpo_final"] = target
            s["budget"] = budget
            # DDPO "improved" if its gain exceeds twice the epoch-to-epoch noise of its seed-averaged
            # curve (std of successive differences / √2); otherwise "samples to reach DDPO's final
            # reward" only says that DDPO did not learn.
            _, y, _ = mean_curve(by_method["ddpo"])
            noise = float(np.std(np.diff(y)) / np.sqrt(2)) if len(y) > 1 else 0.0
            s["ddpo_noise"] = noise
            s["ddpo_improved"] = bool(s["methods"]["ddpo"]["gain"] > 2 * noise)
            for m, res in by_method.items():
                n = samples_to_reach(res, target, window)
                s["methods"][m]["samples_to_reach_ddpo_final"] = n
                s["methods"][m]["fraction_of_ddpo_budget"] = None if n is None else n / budget
        out[task] = s
    return out


summarize = summarise  # the old spelling (one spelling in the package: summarise), kept for old code


def result_to_json(result: dict) -> dict:
    """A JSON-serialisable copy of a :func:`compare` result (curves and summary)."""
    out = {
        "summary": result["summary"],
        "runs": {t: {m: [r.summary() for r in res] for m, res in bm.items()} for t, bm in result["runs"].items()},
    }
    if "eval" in result:
        out["eval"] = result["eval"]
    return out
