"""Figures of the experiments: reward-vs-samples per method, and images before / after training.

Used in ``notebooks/04_pxpo_colour_feedback.ipynb``, 05 and 07.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..plotting import curve_with_band, short_prompt, to_numpy_image, wrap_title
from .runs import METHOD_LABELS
from .sweeps import smooth


def plot_comparison(result: dict, window: int = 1, axes=None, title: str | None = None):
    """Reward vs samples, one panel per task, mean ± std band over seeds per method. Returns the figure."""
    import matplotlib.pyplot as plt

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
    import matplotlib.pyplot as plt

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
