"""Figures of the experiments: reward-vs-samples per method, and images before / after training.

Used in ``notebooks/04_pxpo_colour_feedback.ipynb``, 05 and 07.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..plotting import curve_with_band, short_prompt, to_numpy_image, wrap_title
from .credit import CREDIT_LABELS
from .runs import METHOD_LABELS
from .stats import smooth


LABELS = {**METHOD_LABELS, **CREDIT_LABELS}
"""Method name -> label in figures and tables (runs' methods and the credit methods)."""


def plot_comparison(result: dict, window: int = 1, axes=None, title: str | None = None):
    """Reward vs samples, one panel per task, mean ± std band over seeds per method. Returns the figure."""
    import matplotlib.pyplot as plt  # matplotlib: only when plotting (import pxpo_lite does not load it)

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
    import matplotlib.pyplot as plt  # matplotlib: only when plotting (import pxpo_lite does not load it)

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
                t = wrap_title(short_prompt(res["prompts"][i]), 20) + "\n" + t
            ax.set_title(t, fontsize=6.5)
    if title:
        fig.suptitle(title + (f"  (overlay: {overlay_label})" if overlay_label else ""))
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# The credit-assignment benchmark (benchmarks/bench_credit_assignment.py; notebook 07)
# --------------------------------------------------------------------------------------------
def _fmt_ci(v: dict | None, fmt: str = "{:.3f}", scale: float = 1.0) -> str:
    if not v or v.get("mean") is None:
        return "—"
    m, lo, hi = (None if v[k] is None else v[k] * scale for k in ("mean", "lo", "hi"))
    return fmt.format(m) + (f" [{fmt.format(lo)}, {fmt.format(hi)}]" if lo is not None and hi is not None and lo != hi else "")


def _fmt_reach(st: dict | None, budget: int) -> str:
    if not st:
        return "—"
    if st["point"] is None:
        return "never"
    ends = ["never" if st[k] is None else str(st[k]) for k in ("lo", "hi")]
    return f"{st['point']} ({100 * st['point'] / budget:.0f} %) [{ends[0]}, {ends[1]}]"


def credit_table(result: dict, task: str) -> str:
    """Markdown table of one task of a credit-assignment result (the JSON of
    ``bench_credit_assignment.py`` or its shipped copy): lr, final reward, samples to reach the
    target, effect size, fidelity and, for region tasks, the change inside/outside the region.
    Brackets: bootstrap 95 % intervals over seeds."""
    s = result["summary"][task]
    lrs = result.get("config", {}).get("learning_rates", {}).get(task, {})
    region = any("change_ratio" in r for r in s["methods"].values())
    during = any("fidelity_min_during" in r for r in s["methods"].values())
    head = ["method", "lr", "final reward", f"samples to reach {s.get('target_method') or '—'}'s final (of {s['budget']})",
            "effect (std)", "fidelity"] + (["lowest fidelity during training"] if during else []) + (
            ["change inside / outside", "ratio"] if region else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, r in s["methods"].items():
        lr = lrs.get(m, {})
        lr_s = "—" if not lr else f"{lr['lr']:g}" + ("" if lr.get("passed") is not False else " (none passed)")
        cells = [LABELS.get(m, m), lr_s, _fmt_ci(r["final_reward"]), _fmt_reach(r.get("samples_to_target"), s["budget"]),
                 _fmt_ci(r["effect_std"], "{:+.2f}"), _fmt_ci(r["fidelity"], "{:.0f} %", 100)]
        if during:
            low = r.get("fidelity_min_during")
            cells.append("—" if low is None else f"{low * 100:.0f} %")
        if region:
            cells += [f"{r['change_inside']['mean']:.4f} / {r['change_outside']['mean']:.4f}" if "change_inside" in r else "—",
                      _fmt_ci(r.get("change_ratio"), "{:.1f}")]
        lines.append("| " + " | ".join(cells) + " |")
    if s.get("target_improved") is False:
        lines.append(f"\n(the target method did not improve beyond its epoch-to-epoch noise (gain {s['target_gain']:+.4f}): "
                     "reaching its final reward says little)")
    return "\n".join(lines)


def plot_credit_assignment(result: dict, axes=None, title: str | None = None):
    """Reward vs samples per method (seed mean ± std), one panel per task, the target (DDPO's
    final reward) dotted; from a credit-assignment result or its shipped copy. Returns the figure."""
    import matplotlib.pyplot as plt  # matplotlib: only when plotting (import pxpo_lite does not load it)

    summ = result["summary"]
    if axes is None:
        fig, axes = plt.subplots(1, len(summ), figsize=(5.0 * len(summ), 3.6), squeeze=False)
        axes = axes[0]
    else:
        fig = axes[0].figure
    styles = {"image": "C0", "region": "C2", "pixel": "C3"}
    for ax, (task, s) in zip(axes, summ.items()):
        for m, r in s["methods"].items():
            c = r["curve"]
            x, y, sd = np.asarray(c["x"]), np.asarray(c["mean"]), np.asarray(c["std"])
            credit, _, keep = m.partition("+")
            line, = ax.plot(x, y, ls="--" if keep else "-", color=styles.get(credit), label=f"{LABELS.get(m, m)} ({r['seeds']} seeds)")
            if r["seeds"] > 1:
                ax.fill_between(x, y - sd, y + sd, alpha=0.12, color=line.get_color())
        if s.get("target") is not None:
            ax.axhline(s["target"], color="grey", ls=":", lw=1, label="target: DDPO final")
        ax.set_title(f"{task}: reward vs samples")
        ax.set_xlabel("samples trained on")
        ax.set_ylabel("mean reward of the epoch's samples")
        ax.legend(fontsize=6)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
