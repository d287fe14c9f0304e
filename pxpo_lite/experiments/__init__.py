"""The paper's experiments on the tiny model, and DDPO vs PXPO measured side by side.

Shared by notebooks 04 (colour feedback), 05 (segmentation feedback), 07 (DDPO vs PXPO) and
``benchmarks/bench_ddpo_vs_pxpo.py`` (``import pxpo_lite.experiments as E``). Five modules,
one idea each:

1. :mod:`~pxpo_lite.experiments.tasks` — :func:`get_task`: a per-pixel reward map, a fixed
   set of training prompts and the paper's published numbers (``"colour"``: "less blue";
   ``"hair"``: "remove hair").
2. :mod:`~pxpo_lite.experiments.runs` — :func:`run`: one method (:data:`METHODS`: ``"ddpo"``,
   ``"pxpo"``, ``"pxpo_clip"``) on one task for a sample budget with a seed, from a fresh copy
   of the same pretrained model, with prompts drawn in groups of :data:`GROUP_SIZE` (each
   prompt's group is its baseline); the shared hyper-parameters (:data:`DEFAULTS`,
   :data:`TASK_LR`, :data:`PXPO_CLIP_RANGE`) and how they were chosen.
3. :mod:`~pxpo_lite.experiments.evaluation` — :func:`measure_heldout`: mean ± std reward on
   fixed held-out noise seeds (:data:`HELDOUT_NOISE_SEED`) plus prompt fidelity;
   :class:`FidelityTracker` (a :func:`run` callback); :func:`effect_size` — (after − before) /
   std before, the paper's "effect in std"; :func:`paper_table`; :func:`evaluate` — one trained
   model's held-out numbers, with the change inside vs outside a region (:func:`region_change`).
4. :mod:`~pxpo_lite.experiments.sweeps` — :func:`compare`: every method × task × seed;
   :func:`samples_to_reach` — how many samples a method needs before its (smoothed,
   seed-averaged) reward curve reaches a target, e.g. DDPO's final reward.
5. :mod:`~pxpo_lite.experiments.figures` — reward curves per method, images before / after,
   and the credit-assignment result (:func:`plot_credit_assignment`, :func:`credit_table`).
6. :mod:`~pxpo_lite.experiments.credit` — the fair credit-assignment benchmark: per-image
   (DDPO), per-region and per-pixel (PXPO) credit, each with and without the keep term
   (:data:`CREDIT_METHODS`), a learning rate per method by one rule (:func:`pilot_lr`),
   held-out effect, fidelity and change inside vs outside a region (measured by ``evaluation``).
7. :mod:`~pxpo_lite.experiments.stats` — :func:`smooth`, bootstrap intervals over seeds
   (:func:`bootstrap_ci`, :func:`bootstrap_samples_to_target`) and :func:`select_lr`.
8. :mod:`~pxpo_lite.experiments.frontier` — the credit frontier: effect vs held-out fidelity over
   lr and β grids that bracket each method, settings chosen on selection seeds and reported on
   others (:func:`run_frontier`, :func:`frontier_goals`; drawn by :func:`plot_frontier`).

Tasks: ``"colour"``, ``"hair"`` and the region-focused ``"shirt_blue"`` ("less blue on the
shirt only") and ``"hair_red"`` ("hair colour towards red"), :data:`TASKS`.

Introduced in ``notebooks/04_pxpo_colour_feedback.ipynb``; used in 05 and 07.
"""
from .credit import (
    ALL_METHODS,
    CREDIT_LABELS,
    CREDIT_METHODS,
    CREDITS,
    CREDIT_KEEP_BETA,
    KEEP_BETA,
    LR_GRID,
    benchmark,
    credit_task,
    parse_method,
    credit_goals,
    pilot_lr,
    run_credit,
    summarise_credit,
    summarize_credit,
)
from .evaluation import (
    HELDOUT_NOISE_SEED,
    FidelityTracker,
    effect_size,
    eval_prompts,
    evaluate,
    fidelity_other,
    generate,
    measure_heldout,
    paper_effect,
    paper_table,
    region_change,
    table_row,
)
from .figures import LABELS, credit_table, pick_examples, plot_before_after, plot_comparison, plot_credit_assignment
from .frontier import FRONTIER_METHODS, RunCache, run_frontier
from .frontier_report import frontier_goals, frontier_setting, frontier_table, plot_frontier
from .parallel import map_jobs
from .runs import (
    DEFAULTS,
    GROUP_SIZE,
    METHOD_LABELS,
    METHODS,
    PXPO_CLIP_RANGE,
    TASK_LR,
    RunResult,
    check_budget,
    grouped_prompts,
    make_config,
    run,
)
from .sweeps import compare, final_reward, mean_curve, result_to_json, samples_to_reach, summarise, summarize
from .stats import bootstrap_ci, bootstrap_samples_to_target, samples_to_target, select_lr, smooth
from .tasks import PAPER, TASKS, Task, get_task, has_blue, task_prompts

__all__ = [
    "DEFAULTS", "GROUP_SIZE", "HELDOUT_NOISE_SEED", "METHODS", "METHOD_LABELS", "PAPER", "PXPO_CLIP_RANGE", "TASK_LR",
    "FidelityTracker", "RunResult", "Task", "check_budget", "compare", "effect_size", "eval_prompts", "fidelity_other",
    "final_reward", "generate", "get_task", "grouped_prompts", "has_blue", "make_config", "mean_curve",
    "measure_heldout", "paper_effect", "paper_table", "pick_examples", "plot_before_after", "plot_comparison",
    "result_to_json", "run", "samples_to_reach", "smooth", "summarise", "table_row", "task_prompts",
    # region tasks and the credit-assignment benchmark
    "CREDITS", "CREDIT_KEEP_BETA", "CREDIT_LABELS", "CREDIT_METHODS", "LABELS", "LR_GRID", "TASKS", "benchmark",
    "bootstrap_ci", "bootstrap_samples_to_target", "credit_table", "credit_task", "evaluate",
    "parse_method", "credit_goals", "map_jobs", "pilot_lr", "plot_credit_assignment", "region_change", "run_credit", "samples_to_target",
    "select_lr", "summarise_credit",
    # the credit frontier
    "ALL_METHODS", "FRONTIER_METHODS", "RunCache", "run_frontier", "frontier_goals", "frontier_setting", "frontier_table", "plot_frontier",
]
