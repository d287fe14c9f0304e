"""The paper's experiments on the tiny model, and DDPO vs PXPO measured side by side.

Shared by notebooks 04 (colour feedback), 05 (segmentation feedback), 07 (DDPO vs PXPO) and
``benchmarks/bench_ddpo_vs_pxpo.py``. Three pieces:

1. **Tasks** (:func:`get_task`): a per-pixel reward map, a fixed set of training prompts and
   the paper's published numbers.

   * ``"colour"`` — "less blue": ``rewards.colour_reward_map``, −clip(B − max(R,G), 0, 1) per
     pixel, on prompts that contain blue (a blue, light-blue or navy background, a blue shirt
     or blue hair: there must be blue to remove). Paper: −0.39 ± 0.08 → −0.35 ± 0.08.
   * ``"hair"`` — "remove hair": ``rewards.hair_reward_map``, −P(hair) per pixel from the
     shipped segmenter, on prompts that *ask for hair* (the conflict between reward and prompt
     is the point). Paper: −0.06 ± 0.04 → −0.02 ± 0.02.

   A task's reward is a *map* (B,H,W): PXPO uses it per pixel, DDPO gets its image mean
   (``TrainConfig.method`` decides; the trainer reduces). The image's mean reward is what we
   report for both, so the numbers are comparable across methods.

2. **Runs** (:func:`run`): one method on one task for a sample budget with a seed, starting
   from a fresh copy of the same pretrained model, returning reward-vs-samples records.
   Methods (:data:`METHODS`): ``"ddpo"`` (score function, one advantage per image),
   ``"pxpo"`` (score function, one advantage per pixel — the paper's form) and ``"pxpo_clip"``
   (per-element PPO-clipped ratio — our extension, clip range :data:`PXPO_CLIP_RANGE`).
   Prompts are drawn in *groups*: each epoch picks ``samples_per_epoch / group_size`` prompts
   and samples each ``group_size`` times, and advantages are normalised within each group
   (the per-prompt tracker with buffer = min count = group size): the baseline of a sample
   (or of a pixel, for PXPO) is the mean of its own prompt's group.

3. **Measurements**: :func:`evaluate` — mean ± std reward on fixed held-out noise seeds plus
   prompt fidelity (``fidelity.prompt_fidelity``); :func:`effect_size` — (after − before) /
   std before, the paper's "effect in std"; :func:`samples_to_reach` — how many samples a
   method needs before its (smoothed, seed-averaged) reward curve reaches a target, e.g.
   DDPO's final reward.

Introduced in ``notebooks/04_pxpo_colour_feedback.ipynb``; used in 05 and 07.
"""
from __future__ import annotations

import copy
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from . import rewards as rewards_mod
from . import world

# --------------------------------------------------------------------------------------------
# Hyper-parameters (chosen by measurement; see notebook 07 and the README for how)
# --------------------------------------------------------------------------------------------
PXPO_CLIP_RANGE = 0.02
"""ε of the element-wise clipped PXPO variant. Chosen like the learning rate: the largest of
{0.005, 0.02, 0.2} at which clipped PXPO (lr 3e-5, 128 samples, seed 0) kept held-out prompt
fidelity ≥ 90 % on both tasks. ε = 0.2 clipped ~0.1 % of elements (≈ no clip) and lost fidelity
like unclipped PXPO (colour 0 %, hair 84 %); ε = 0.005 barely learned. Measured in notebook 07's
sweep; numbers in the README."""

METHODS: dict[str, dict] = {
    "ddpo": dict(method="ddpo", clip_range=None),
    "pxpo": dict(method="pxpo", clip_range=None),
    "pxpo_clip": dict(method="pxpo", clip_range=PXPO_CLIP_RANGE),
}
"""Method name -> TrainConfig fields."""

METHOD_LABELS = {"ddpo": "DDPO (score function)", "pxpo": "PXPO (score function)", "pxpo_clip": "PXPO (clipped ratio)"}

DEFAULTS = dict(
    num_steps=10,  # DDIM steps per trajectory (DDPO used 50 on SD; 10 suffice on the tiny model)
    eta=1.0,
    samples_per_epoch=16,
    sample_batch_size=16,
    train_batch_size=4,  # 4 optimiser steps per epoch: the clip has something to do after the first
    grad_accum_steps=1,
    inner_epochs=1,
    timestep_fraction=0.5,  # train on half the stochastic steps of each micro-batch (random)
    max_grad_norm=1.0,
    adv_clip_max=5.0,
    use_lora=False,  # the tiny UNet is small: train all of it
)
"""TrainConfig fields shared by every run (per-task learning rates are in :data:`TASK_LR`)."""

GROUP_SIZE = 4
"""Samples per prompt in each epoch; advantages are normalised within each prompt's group."""

TASK_LR = {"colour": 3e-5, "hair": 3e-5}
"""AdamW learning rate per task, the same for every method. Chosen for DDPO (the baseline): the
largest of {3e-5, 1e-4, 3e-4} at which DDPO (128 samples, seed 0) kept held-out prompt fidelity
≥ 90 % — at 1e-4 it fell to 88 % (colour) and 25 % (hair), at 3e-4 to 25 % and 0 %."""

EVAL_SEED = 10_000
"""Noise seeds of the held-out evaluation (never used for training samples)."""


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """One of the paper's experiments on the tiny world."""

    name: str
    title: str
    reward_map: Callable  # (images (B,3,H,W), prompts) -> (B,H,W), higher is better
    prompts: tuple  # the training (and evaluation) prompts
    paper: dict  # {"before": (mean, std), "after": (mean, std)} as published
    conflicts_with: str | None = None  # the fidelity attribute the reward fights (if any)
    description: str = ""

    def reward(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        """Checked reward map (B,H,W) of ``images``."""
        r = self.reward_map(images, prompts)
        return rewards_mod.check_reward(r, images, kind="map", name=f"{self.name} reward map")

    def scalar_reward(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        """The image mean of the map (B,): what DDPO sees and what we report."""
        return self.reward(images, prompts).mean(dim=(1, 2))


PAPER = {
    "colour": {"before": (-0.39, 0.08), "after": (-0.35, 0.08)},
    "hair": {"before": (-0.06, 0.04), "after": (-0.02, 0.02)},
}
"""The paper's published mean ± std reward before → after (Kordzanganeh et al. 2024)."""


def _has_blue(prompt: str) -> bool:
    a = world.parse_prompt(prompt)
    return a.background in ("blue", "light blue", "navy") or a.shirt == "blue" or a.hair_colour == "blue"


def task_prompts(task: str, n: int = 4, seed: int = 1234) -> tuple:
    """``n`` distinct prompts for ``task`` drawn from the world's distribution (deterministic).

    colour: prompts with some blue in them; hair: prompts asking for hair (not bald).
    """
    if task not in ("colour", "hair"):
        raise ValueError(f"task must be 'colour' or 'hair', got {task!r}")
    keep = _has_blue if task == "colour" else (lambda p: not world.parse_prompt(p).bald)
    out: list[str] = []
    for p in world.render(40 * n, seed=seed).prompts:
        if keep(p) and p not in out:
            out.append(p)
        if len(out) == n:
            return tuple(out)
    raise RuntimeError(f"could not find {n} prompts for task {task!r}")  # pragma: no cover


def get_task(name: str, segmenter=None, n_prompts: int = 4) -> Task:
    """The task ``"colour"`` or ``"hair"``. ``segmenter``: a loaded segmenter, a weights folder,
    or None for the shipped one (used by "hair" only)."""
    if name == "colour":
        return Task(
            name="colour",
            title='colour feedback: "less blue"',
            reward_map=rewards_mod.colour_reward_map,
            prompts=task_prompts("colour", n_prompts),
            paper=PAPER["colour"],
            conflicts_with=None,
            description="−clip(B − max(R,G), 0, 1) per pixel; prompts that contain blue",
        )
    if name == "hair":
        if segmenter is None or isinstance(segmenter, (str, os.PathLike)):
            from .models import load_segmenter

            segmenter = load_segmenter(path=segmenter)  # FileNotFoundError naming the folder if missing

        def hair_map(images, prompts=None):
            return rewards_mod.hair_reward_map(images, prompts, segmenter=segmenter)

        hair_map.is_map = True
        hair_map.__name__ = "hair_reward_map"
        return Task(
            name="hair",
            title='segmentation feedback: "remove hair"',
            reward_map=hair_map,
            prompts=task_prompts("hair", n_prompts),
            paper=PAPER["hair"],
            conflicts_with="hair_presence",
            description="−P(hair) per pixel from the segmenter; prompts that ask for hair",
        )
    raise ValueError(f"task must be 'colour' or 'hair', got {name!r}")


# --------------------------------------------------------------------------------------------
# Configs and prompt groups
# --------------------------------------------------------------------------------------------
def grouped_prompts(prompts: Sequence[str], group_size: int = GROUP_SIZE) -> Callable:
    """A prompt picker for :class:`~pxpo_lite.trainer.Trainer`: ``n / group_size`` prompts drawn
    without replacement (with, if there are too few), each repeated ``group_size`` times."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts must be a non-empty list of str")

    def pick(n: int, generator: torch.Generator) -> list[str]:
        if n % group_size:
            raise ValueError(f"samples per epoch ({n}) must be a multiple of group_size={group_size}")
        k = n // group_size
        if k <= len(prompts):
            idx = torch.randperm(len(prompts), generator=generator)[:k].tolist()
        else:
            idx = torch.randint(len(prompts), (k,), generator=generator).tolist()
        return [prompts[i] for i in idx for _ in range(group_size)]

    return pick


def make_config(task: str, method: str, seed: int = 0, **overrides):
    """The TrainConfig for ``method`` on ``task`` (:data:`DEFAULTS` + :data:`TASK_LR` + overrides)."""
    from .trainer import TrainConfig

    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    if task not in TASK_LR:
        raise ValueError(f"task must be one of {sorted(TASK_LR)}, got {task!r}")
    group = overrides.pop("group_size", GROUP_SIZE)
    kw = dict(DEFAULTS)
    kw.update(METHODS[method])
    kw.update(
        learning_rate=TASK_LR[task],
        seed=seed,
        per_prompt_stats=True,
        stat_buffer_size=group,  # buffer = min count = group size: each prompt's group is its baseline
        stat_min_count=group,
        progress=False,
    )
    kw.update(overrides)
    return TrainConfig(**kw)


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What :func:`run` returns. ``records``: one dict per epoch (``n_samples``, ``reward_mean``, ...)."""

    task: str
    method: str
    seed: int
    budget: int
    records: list
    seconds: float
    pipe: object = field(default=None, repr=False)  # the trained pipeline

    @property
    def n_samples(self) -> np.ndarray:
        """Samples used up to and including each epoch (the trainer's ``n_samples``)."""
        return np.array([r["n_samples"] for r in self.records])

    @property
    def trained_on(self) -> np.ndarray:
        """Samples the policy had been trained on when it drew each epoch's batch (0 for the first):
        the x-axis of reward-vs-samples curves. Epoch k's reward is the reward of a policy updated
        on the k − 1 earlier batches."""
        spe = self.records[0]["n_samples"] if self.records else 0
        return self.n_samples - spe

    @property
    def rewards(self) -> np.ndarray:
        return np.array([r["reward_mean"] for r in self.records])

    def summary(self) -> dict:
        return {"task": self.task, "method": self.method, "seed": self.seed, "budget": self.budget,
                "seconds": round(self.seconds, 2), "records": self.records}


def _check_budget(budget, samples_per_epoch: int) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < samples_per_epoch:
        raise ValueError(f"budget must be an int >= samples_per_epoch={samples_per_epoch} (samples to train on), got {budget!r}")
    if budget % samples_per_epoch:
        raise ValueError(f"budget={budget} is not a multiple of samples_per_epoch={samples_per_epoch}; use e.g. "
                         f"{(budget // samples_per_epoch + 1) * samples_per_epoch}")
    return int(budget) // samples_per_epoch


def run(base_pipe, task: Task, method: str, budget: int, seed: int = 0, progress: bool = True,
        keep_pipe: bool = False, callback: Callable | None = None, **overrides) -> RunResult:
    """Train a fresh copy of ``base_pipe`` with ``method`` on ``task`` for ``budget`` samples.

    ``base_pipe`` is never modified (a deep copy is trained). ``overrides`` go to the TrainConfig
    (e.g. ``learning_rate=3e-4``, ``clip_range=0.05``). ``callback(record, pipe)``, if given, is
    called after every epoch with the epoch's metrics and the pipeline being trained (e.g. a
    :class:`FidelityTracker`). Returns a :class:`RunResult` whose records hold the on-policy
    reward of every epoch's samples vs the samples used so far.
    """
    from tqdm.auto import tqdm

    from .trainer import Trainer

    if not isinstance(task, Task):
        raise TypeError(f"task must be a Task (experiments.get_task('colour'|'hair')), got {type(task).__name__}")
    group = overrides.get("group_size", GROUP_SIZE)
    config = make_config(task.name, method, seed, **overrides)
    epochs = _check_budget(budget, config.samples_per_epoch)
    pipe = copy.deepcopy(base_pipe)
    t0 = time.perf_counter()
    trainer = Trainer(pipe, task.reward_map, config, prompts=grouped_prompts(task.prompts, group))
    bar = tqdm(range(epochs), desc=f"{task.name}/{method}/seed {seed}", disable=not progress, leave=False)
    for _ in bar:
        rec = trainer.train_epoch()
        bar.set_postfix(reward=f"{rec['reward_mean']:.4f}")
        if callback is not None:
            pipe.unet.eval()
            callback(rec, pipe)
    pipe.unet.requires_grad_(False)
    keep = ("epoch", "n_samples", "reward_mean", "reward_std", "approx_kl", "clip_fraction", "grad_norm")
    records = [{k: r[k] for k in keep if k in r} for r in trainer.metrics]
    return RunResult(task.name, method, seed, int(budget), records, time.perf_counter() - t0, pipe if keep_pipe else None)


# --------------------------------------------------------------------------------------------
# Evaluation: mean ± std before → after, effect size, prompt fidelity
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def generate(pipe, prompts: Sequence[str], seed: int = EVAL_SEED, num_steps: int | None = None,
             eta: float | None = None, batch_size: int = 64) -> torch.Tensor:
    """Images (B,3,H,W) for ``prompts`` from the RL policy's sampler (DDIM, η as trained), seeded.

    The same seed gives the same noise, so "before" and "after" differ only by the weights.
    """
    from .sampling import sample

    num_steps = num_steps or DEFAULTS["num_steps"]
    eta = DEFAULTS["eta"] if eta is None else eta
    g = torch.Generator().manual_seed(int(seed))
    prompts = list(prompts)
    out = [sample(pipe, prompts[i : i + batch_size], num_steps=num_steps, eta=eta, generator=g, progress=False).images
           for i in range(0, len(prompts), batch_size)]
    return torch.cat(out)


def eval_prompts(task: Task, per_prompt: int = 8) -> list[str]:
    """The evaluation prompts: each of the task's prompts ``per_prompt`` times (prompt-major)."""
    return [p for p in task.prompts for _ in range(per_prompt)]


def fidelity_other(fid: dict, exclude: str | None) -> float | None:
    """Mean of the fidelity attributes other than ``exclude`` (the one the reward fights)."""
    from .fidelity import ATTRIBUTES

    vals = [fid[k] for k in ATTRIBUTES if k != exclude and isinstance(fid.get(k), float) and math.isfinite(fid[k])]
    return float(np.mean(vals)) if vals else None


def evaluate(pipe, task: Task, per_prompt: int = 8, seed: int = EVAL_SEED, segmenter=None, images: bool = True) -> dict:
    """Mean ± std of the task's image-mean reward on held-out noise seeds, and prompt fidelity.

    Returns ``{"mean", "std", "rewards" (list), "fidelity" (dict), "fidelity_other", "n",
    "images" (tensor, if images=True), "prompts"}``.
    """
    from .fidelity import prompt_fidelity

    if segmenter is None:
        from .models import load_segmenter

        segmenter = load_segmenter()
    prompts = eval_prompts(task, per_prompt)
    x = generate(pipe, prompts, seed=seed)
    r = task.scalar_reward(x, prompts)
    fid = prompt_fidelity(x, prompts, segmenter)
    out = {
        "mean": float(r.mean()),
        "std": float(r.std(unbiased=False)),
        "rewards": [float(v) for v in r],
        "fidelity": {k: float(v) for k, v in fid.items()},
        "fidelity_other": fidelity_other(fid, task.conflicts_with),
        "n": len(prompts),
        "prompts": prompts,
    }
    if images:
        out["images"] = x
    return out


class FidelityTracker:
    """A :func:`run` callback: every ``every`` epochs (and at 0 samples, via ``start``), evaluate
    the model on the held-out seeds and keep ``points`` — dicts with ``n_samples`` and the
    :func:`evaluate` result (images kept only if ``keep_images``)."""

    def __init__(self, task: Task, segmenter, per_prompt: int = 8, every: int = 2, keep_images: bool = True):
        self.task, self.segmenter, self.per_prompt, self.every, self.keep_images = task, segmenter, per_prompt, every, keep_images
        self.points: list[dict] = []

    def evaluate(self, pipe, n_samples: int) -> dict:
        res = evaluate(pipe, self.task, self.per_prompt, segmenter=self.segmenter, images=self.keep_images)
        res["n_samples"] = int(n_samples)
        self.points.append(res)
        return res

    def start(self, pipe) -> dict:
        return self.evaluate(pipe, 0)

    def __call__(self, record: dict, pipe) -> None:
        if record["epoch"] % self.every == 0:
            self.evaluate(pipe, record["n_samples"])

    def best_within(self, threshold: float = 0.9, key: str = "all") -> dict | None:
        """The point with the highest held-out reward among those whose fidelity ``key`` (an
        attribute, ``"all"``, or ``"other"`` = :func:`fidelity_other`) is ≥ ``threshold``."""
        def fid(p):
            return p["fidelity_other"] if key == "other" else p["fidelity"][key]

        ok = [p for p in self.points[1:] if fid(p) is not None and fid(p) >= threshold]
        return max(ok, key=lambda p: p["mean"]) if ok else None

    def plot(self, ax=None, key: str = "all", threshold: float | None = 0.9):
        """Held-out reward (left axis) and prompt fidelity (right axis) vs training samples."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.4))
        x = [p["n_samples"] for p in self.points]
        m = np.array([p["mean"] for p in self.points])
        sd = np.array([p["std"] for p in self.points])
        ax.plot(x, m, "o-", color="C0", label="held-out reward (mean ± std)")
        ax.fill_between(x, m - sd, m + sd, color="C0", alpha=0.15)
        ax.set_xlabel("training samples")
        ax.set_ylabel("held-out reward", color="C0")
        ax2 = ax.twinx()
        ax2.plot(x, [p["fidelity"]["all"] for p in self.points], "s-", color="C3", label="fidelity (all)")
        if self.task.conflicts_with:
            ax2.plot(x, [p["fidelity_other"] for p in self.points], "^--", color="C2", label=f"fidelity without {self.task.conflicts_with}")
        if threshold is not None:
            ax2.axhline(threshold, color="grey", ls=":", lw=1)
        ax2.set_ylim(-0.03, 1.03)
        ax2.set_ylabel("prompt fidelity", color="C3")
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="center right")
        return ax


def effect_size(before: dict, after: dict) -> float:
    """(mean after − mean before) / std before — the paper's change "in std" (0.5 and 1.0 there)."""
    std = before["std"]
    if not std > 0:
        warnings.warn("the reward has zero std before training: the effect size is undefined (nan)")
        return float("nan")
    return (after["mean"] - before["mean"]) / std


def paper_effect(task: str) -> float:
    p = PAPER[task]
    return (p["after"][0] - p["before"][0]) / p["before"][1]


def table_row(name: str, before: dict, after: dict) -> dict:
    """One row of the paper-format table (plain numbers)."""
    return {
        "name": name,
        "before": f"{before['mean']:.3f} ± {before['std']:.3f}",
        "after": f"{after['mean']:.3f} ± {after['std']:.3f}",
        "effect_std": round(effect_size(before, after), 2),
        "fidelity_before": round(before["fidelity"]["all"], 3),
        "fidelity_after": round(after["fidelity"]["all"], 3),
    }


def paper_table(task: Task, before: dict, after, label: str = "pxpo-lite (tiny model)") -> str:
    """Markdown: the paper's row next to ours, before → after, effect in std, fidelity.

    ``after``: one evaluation, or a dict ``{row label: evaluation}`` for several rows.
    """
    p = task.paper
    rows = after if "mean" not in after else {label: after}
    other = bool(task.conflicts_with)
    lines = [
        "| | mean reward ± std before → after | effect (std) | prompt fidelity (all) before → after |"
        + (f" fidelity without {task.conflicts_with} |" if other else ""),
        "|---|---|---|---|" + ("---|" if other else ""),
        f"| paper (SD, their reward) | {p['before'][0]:.2f} ± {p['before'][1]:.2f} → {p['after'][0]:.2f} ± {p['after'][1]:.2f} "
        f"| {paper_effect(task.name):.1f} | not reported |" + (" not reported |" if other else ""),
    ]
    for name, a in rows.items():
        lines.append(
            f"| {name} | {before['mean']:.3f} ± {before['std']:.3f} → {a['mean']:.3f} ± {a['std']:.3f} "
            f"| {effect_size(before, a):.2f} | {before['fidelity']['all'] * 100:.0f} % → {a['fidelity']['all'] * 100:.0f} % |"
            + (f" {before['fidelity_other'] * 100:.0f} % → {a['fidelity_other'] * 100:.0f} % |" if other else "")
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Curves and samples-to-reach
# --------------------------------------------------------------------------------------------
def smooth(y: Sequence[float], window: int = 3, centered: bool = False) -> np.ndarray:
    """Moving average over ``window`` points: trailing (default), or centred on each point.
    Near the ends it averages the points there are."""
    y = np.asarray(y, dtype=np.float64)
    if window <= 1 or len(y) == 0:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = np.empty_like(y)
    for i in range(len(y)):
        lo = max(0, i - window // 2) if centered else max(0, i + 1 - window)
        hi = min(len(y), i + (window - 1) // 2 + 1) if centered else i + 1
        out[i] = (c[hi] - c[lo]) / (hi - lo)
    return out


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
            eval_per_prompt: int = 0, segmenter=None, **overrides) -> dict:
    """Every method × task × seed from the same model, prompts, seeds and budget.

    Returns ``{"runs": {task: {method: [RunResult, ...]}}, "summary": {task: {...}}}``; the
    summary holds each method's final reward (smoothed, seed mean ± std of per-seed finals),
    and the samples each PXPO variant needs to reach DDPO's final reward. With
    ``eval_per_prompt > 0`` the final model of each method's *first* seed is also evaluated on
    the held-out seeds (``result["eval"][task][method]``: a :func:`table_row` plus fidelity
    without the fought attribute), next to the pretrained model.
    """
    from tqdm.auto import tqdm

    runs: dict = {}
    evals: dict = {}
    total = len(tasks) * len(methods) * len(seeds)
    bar = tqdm(total=total, desc="runs", disable=not progress)
    for task in tasks:
        runs[task.name] = {}
        before = evaluate(base_pipe, task, eval_per_prompt, segmenter=segmenter, images=False) if eval_per_prompt else None
        for m in methods:
            runs[task.name][m] = []
            for k, s in enumerate(seeds):
                r = run(base_pipe, task, m, budget, s, progress=False, keep_pipe=bool(before) and k == 0, **overrides)
                if before is not None and k == 0:
                    after = evaluate(r.pipe, task, eval_per_prompt, segmenter=segmenter, images=False)
                    evals.setdefault(task.name, {})[m] = {
                        **table_row(m, before, after), "seed": s,
                        "fidelity_other_before": before["fidelity_other"], "fidelity_other_after": after["fidelity_other"],
                    }
                    r.pipe = None
                runs[task.name][m].append(r)
                bar.update(1)
    bar.close()
    out = {"runs": runs, "summary": summarize(runs, window)}
    if evals:
        out["eval"] = evals
    return out


def summarize(runs: dict, window: int = 3) -> dict:
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


def plot_comparison(result: dict, window: int = 1, axes=None, title: str | None = None):
    """Reward vs samples, one panel per task, mean ± std band over seeds per method. Returns the figure."""
    import matplotlib.pyplot as plt

    from .plotting import curve_with_band

    runs = result["runs"]
    if axes is None:
        fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 3.6), squeeze=False)
        axes = axes[0]
    else:
        fig = axes[0].figure
    for ax, (task, by_method) in zip(axes, runs.items()):
        for m, res in by_method.items():
            x = res[0].trained_on
            ys = [smooth(r.rewards, window) for r in res]
            curve_with_band(ax, x, ys, label=f"{METHOD_LABELS.get(m, m)} ({len(res)} seeds)")
        summ = result.get("summary", {}).get(task, {})
        if "ddpo_final" in summ:
            ax.axhline(summ["ddpo_final"], color="grey", ls=":", lw=1, label="DDPO final")
        ax.set_title(f"{task}: reward vs samples")
        ax.set_xlabel("samples trained on")
        ax.set_ylabel("mean reward of the epoch's samples")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def result_to_json(result: dict) -> dict:
    """A JSON-serialisable copy of a :func:`compare` result (curves and summary)."""
    out = {
        "summary": result["summary"],
        "runs": {t: {m: [r.summary() for r in res] for m, res in bm.items()} for t, bm in result["runs"].items()},
    }
    if "eval" in result:
        out["eval"] = result["eval"]
    return out


# --------------------------------------------------------------------------------------------
# Figures for the notebooks
# --------------------------------------------------------------------------------------------
def pick_examples(prompts: Sequence[str], per_prompt: int = 2) -> list[int]:
    """Indices of the first ``per_prompt`` images of each distinct prompt (for compact grids)."""
    seen: dict = {}
    out = []
    for i, p in enumerate(prompts):
        if seen.get(p, 0) < per_prompt:
            seen[p] = seen.get(p, 0) + 1
            out.append(i)
    return out


def plot_before_after(before: dict, after: dict, idx: Sequence[int] | None = None, overlay: Callable | None = None,
                      overlay_label: str = "", size: float = 1.5, title: str | None = None):
    """Two rows — before and after training — of the same evaluation seeds and prompts.

    ``overlay``: optional ``fn(images) -> (B,H,W)`` in [0,1] drawn over the images (e.g. the
    segmenter's hair probability). Each panel shows its image's reward. Returns the figure.
    """
    import matplotlib.pyplot as plt

    from .plotting import _wrap, short_prompt, to_numpy_image

    idx = list(idx) if idx is not None else pick_examples(before["prompts"], 2)
    fig, axes = plt.subplots(2, len(idx), figsize=(size * len(idx), size * 2 * 1.45), squeeze=False)
    for row, (name, res) in enumerate((("before", before), ("after", after))):
        x = res["images"][idx]
        maps = overlay(x).detach().cpu().numpy() if overlay is not None else None
        for k, i in enumerate(idx):
            ax = axes[row, k]
            ax.axis("off")
            ax.imshow(to_numpy_image(x[k]), interpolation="nearest")
            if maps is not None:
                ax.imshow(np.ma.masked_less(maps[k], 0.5), cmap="autumn", alpha=0.55, vmin=0, vmax=1, interpolation="nearest")
            t = f"{name}: r={res['rewards'][i]:.3f}"
            if row == 0:
                t = _wrap(short_prompt(res["prompts"][i]), 20) + "\n" + t
            ax.set_title(t, fontsize=6.5)
    if title:
        fig.suptitle(title + (f"  (overlay: {overlay_label})" if overlay_label else ""))
    fig.tight_layout()
    return fig
