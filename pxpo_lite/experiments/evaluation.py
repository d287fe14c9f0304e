"""Held-out measurements of a trained model: mean ± std reward on fixed noise seeds, prompt
fidelity, the paper's effect size ("change in std") and its table.

Introduced in ``notebooks/04_pxpo_colour_feedback.ipynb``; used in 05 and 07.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch

from .. import regions
from ..fidelity import ATTRIBUTES, prompt_fidelity
from ..sampling import sample
from .runs import DEFAULTS
from .tasks import PAPER, Task

HELDOUT_NOISE_SEED = 10_000
"""Seeds the sampling noise of the held-out evaluation (never used for training samples)."""

# --------------------------------------------------------------------------------------------
# Evaluation: mean ± std before → after, effect size, prompt fidelity
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def generate(pipe, prompts: Sequence[str], seed: int = HELDOUT_NOISE_SEED, num_steps: int | None = None,
             eta: float | None = None, batch_size: int = 64) -> torch.Tensor:
    """Images (B,3,H,W) for ``prompts`` from the RL policy's sampler (DDIM, η as trained), seeded.

    The same seed gives the same noise, so "before" and "after" differ only by the weights.
    """
    num_steps = num_steps or DEFAULTS["num_steps"]
    eta = DEFAULTS["eta"] if eta is None else eta
    g = torch.Generator().manual_seed(int(seed))
    return sample(pipe, list(prompts), num_steps=num_steps, eta=eta, generator=g, progress=False, batch_size=batch_size).images


def eval_prompts(task: Task, per_prompt: int = 8) -> list[str]:
    """The evaluation prompts: each of the task's prompts ``per_prompt`` times (prompt-major)."""
    return [p for p in task.prompts for _ in range(per_prompt)]


def fidelity_other(fid: dict, exclude: str | None) -> float | None:
    """Mean of the fidelity attributes other than ``exclude`` (the one the reward fights)."""
    vals = [fid[k] for k in ATTRIBUTES if k != exclude and isinstance(fid.get(k), float) and math.isfinite(fid[k])]
    return float(np.mean(vals)) if vals else None


def measure_heldout(pipe, task: Task, per_prompt: int = 8, seed: int = HELDOUT_NOISE_SEED, segmenter=None, images: bool = True) -> dict:
    """Mean ± std of the task's image-mean reward on held-out noise seeds, and prompt fidelity.

    Returns ``{"mean", "std", "rewards" (list), "fidelity" (dict), "fidelity_other", "n",
    "images" (tensor, if images=True), "prompts"}``.
    """
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
    :func:`measure_heldout` result (images kept only if ``keep_images``)."""

    def __init__(self, task: Task, segmenter, per_prompt: int = 8, every: int = 2, keep_images: bool = True):
        self.task, self.segmenter, self.per_prompt, self.every, self.keep_images = task, segmenter, per_prompt, every, keep_images
        self.points: list[dict] = []

    def measure(self, pipe, n_samples: int) -> dict:
        """Measure the model now (:func:`measure_heldout`) and keep the point for ``n_samples``."""
        res = measure_heldout(pipe, self.task, self.per_prompt, segmenter=self.segmenter, images=self.keep_images)
        res["n_samples"] = int(n_samples)
        self.points.append(res)
        return res

    def start(self, pipe) -> dict:
        return self.measure(pipe, 0)

    def __call__(self, record: dict, pipe) -> None:
        if record["epoch"] % self.every == 0:
            self.measure(pipe, record["n_samples"])

    def best_within(self, threshold: float = 0.9, key: str = "all") -> dict | None:
        """The point with the highest held-out reward among those whose fidelity ``key`` (an
        attribute, ``"all"``, or ``"other"`` = :func:`fidelity_other`) is ≥ ``threshold``."""
        def fid(p):
            return p["fidelity_other"] if key == "other" else p["fidelity"][key]

        ok = [p for p in self.points[1:] if fid(p) is not None and fid(p) >= threshold]
        return max(ok, key=lambda p: p["mean"]) if ok else None

    def plot(self, ax=None, key: str = "all", threshold: float | None = 0.9):
        """Held-out reward (left axis) and prompt fidelity (right axis) vs training samples."""
        import matplotlib.pyplot as plt  # matplotlib: only when plotting (import pxpo_lite does not load it)

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
    ]
    if p:  # the region tasks are not in the paper
        lines.append(f"| paper (SD, their reward) | {p['before'][0]:.2f} ± {p['before'][1]:.2f} → {p['after'][0]:.2f} ± {p['after'][1]:.2f} "
                     f"| {paper_effect(task.name):.1f} | not reported |" + (" not reported |" if other else ""))
    for name, a in rows.items():
        lines.append(
            f"| {name} | {before['mean']:.3f} ± {before['std']:.3f} → {a['mean']:.3f} ± {a['std']:.3f} "
            f"| {effect_size(before, a):.2f} | {before['fidelity']['all'] * 100:.0f} % → {a['fidelity']['all'] * 100:.0f} % |"
            + (f" {before['fidelity_other'] * 100:.0f} % → {a['fidelity_other'] * 100:.0f} % |" if other else "")
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Held-out measurements of one trained model, as the credit benchmark (experiments.credit) takes them
# --------------------------------------------------------------------------------------------
def region_change(before: torch.Tensor, after: torch.Tensor, mask: torch.Tensor) -> dict:
    """Mean |after − before| per pixel (channel mean) inside and outside ``mask``, and their ratio.

    ``before``/``after``: (B,3,H,W) images from the same noise seeds; ``mask``: (B,H,W) in [0,1]
    (the region on the *before* images). ``inside``/``outside`` are NaN where the region is
    empty / everything; ``ratio`` = inside / outside (NaN if outside is 0).
    """
    if not isinstance(before, torch.Tensor) or not isinstance(after, torch.Tensor) or before.shape != after.shape or before.ndim != 4:
        raise ValueError(f"before and after must be image tensors (B,3,H,W) of the same shape, got "
                         f"{getattr(before, 'shape', type(before).__name__)} and {getattr(after, 'shape', type(after).__name__)}")
    B, _, H, W = before.shape
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (B, H, W):
        raise ValueError(f"mask must be a tensor ({B}, {H}, {W}) in [0, 1], got {getattr(mask, 'shape', type(mask).__name__)}")
    d = (after.float() - before.float()).abs().mean(dim=1)
    m = mask.float().to(d.device)
    win, wout = float(m.sum()), float((1 - m).sum())
    inside = float((d * m).sum()) / win if win > 0 else math.nan
    outside = float((d * (1 - m)).sum()) / wout if wout > 0 else math.nan
    ratio = inside / outside if outside and math.isfinite(outside) and outside > 0 else math.nan
    return {"inside": inside, "outside": outside, "ratio": ratio}


def fidelity_key(task: Task, key: str = "auto") -> str:
    """Which fidelity the rule checks: ``"auto"`` is ``"other"`` (attributes the reward does not
    fight) for a task that fights one, else ``"all"``."""
    if key not in ("auto", "all", "other"):
        raise ValueError(f"fidelity key must be 'auto', 'all' or 'other', got {key!r}")
    return ("other" if task.conflicts_with else "all") if key == "auto" else key


def key_fidelity(ev: dict, key: str) -> float | None:
    """The fidelity :func:`fidelity_key` names from one held-out measurement (None: not measured or NaN)."""
    v = ev["fidelity_other"] if key == "other" else ev["fidelity"]["all"]
    return None if v is None or not math.isfinite(v) else float(v)


def evaluate(pipe, task: Task, before: dict, per_prompt: int, segmenter, key: str = "auto") -> dict:
    """One trained model on the held-out seeds, as plain numbers: reward mean/std, effect size
    (after − before)/std before, fidelity (all, other, the rule's key), and for a task with a
    region, the change inside vs outside it (:func:`region_change`)."""
    after = measure_heldout(pipe, task, per_prompt, segmenter=segmenter, images=True)
    k = fidelity_key(task, key)
    out = {"mean": after["mean"], "std": after["std"], "effect_std": effect_size(before, after),
           "fidelity_all": after["fidelity"]["all"], "fidelity_other": after["fidelity_other"],
           "fidelity_key": k, "fidelity": key_fidelity(after, k), "fidelity_by_attribute": after["fidelity"]}
    if task.region and "images" in before:
        mask = regions.region_mask(task.region, before["images"], segmenter)
        out.update({f"change_{k}": v for k, v in region_change(before["images"], after["images"], mask).items()})
    return out
