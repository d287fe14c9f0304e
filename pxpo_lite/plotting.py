"""Figures used across the notebooks: image grids with captions, heatmaps over images, curves.

Images follow the project convention (B,3,H,W) float32 in [0,1]; reward/advantage/log-prob
maps are (B,H,W). Small images are drawn with crisp pixels (no interpolation).

Introduced in ``notebooks/00_tour.ipynb``.
"""
from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np
import torch
from PIL import Image


def to_numpy_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(3,H,W) in [0,1] -> (H,W,3) float array for matplotlib."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3,H,W), got shape {image.shape}")
    return np.clip(image.transpose(1, 2, 0), 0.0, 1.0)


def to_pil(image: torch.Tensor | np.ndarray, scale: int = 1):
    """(3,H,W) in [0,1] -> PIL image, optionally enlarged ``scale``× with crisp pixels."""
    arr = (to_numpy_image(image) * 255).round().astype(np.uint8)
    im = Image.fromarray(arr)
    if scale != 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    return im


def wrap_title(title: str | None, width: int) -> str:
    return "\n".join(textwrap.wrap(title, width)) if title else ""


def short_prompt(prompt: str) -> str:
    """Drop the caption boiler-plate: 'a portrait with long red hair and a green shirt on a navy background'
    -> 'long red hair, green shirt, navy bg'."""
    s = prompt.replace("a portrait with ", "").replace("a bald portrait with a ", "bald, ")
    s = s.replace(" hair and a ", " hair, ").replace(" shirt on a ", " shirt, ").replace(" background", " bg")
    return s


def image_grid(
    images: torch.Tensor,
    titles: Sequence[str] | None = None,
    ncols: int = 8,
    size: float = 1.6,
    title_width: int = 22,
    suptitle: str | None = None,
    shorten: bool = True,
):
    """Show images (B,3,H,W) in a grid, each with an optional (prompt) title. Returns the figure."""
    import matplotlib.pyplot as plt  # matplotlib: only when plotting (import pxpo_lite does not load it)

    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows * (1.25 if titles else 1.0)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(to_numpy_image(images[i]), interpolation="nearest")
            if titles is not None:
                t = short_prompt(titles[i]) if shorten else titles[i]
                ax.set_title(wrap_title(t, title_width), fontsize=7)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def heatmap_grid(
    images: torch.Tensor,
    maps: torch.Tensor,
    titles: Sequence[str] | None = None,
    ncols: int = 8,
    size: float = 1.6,
    cmap: str = "RdBu",
    alpha: float = 0.6,
    symmetric: bool = True,
    suptitle: str | None = None,
    colorbar_label: str | None = None,
):
    """Images with a per-pixel map (B,H,W) drawn over them (e.g. reward, advantage, log-prob).

    ``symmetric=True`` centres the colour scale at 0 (red = negative, blue = positive with RdBu).
    """
    import matplotlib.pyplot as plt  # matplotlib: only when plotting (import pxpo_lite does not load it)

    maps = maps.detach().float().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or maps.shape[0] != len(images):
        raise ValueError(f"maps must be (B,H,W) with B={len(images)}, got shape {maps.shape}")
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    lim = float(np.abs(maps).max()) or 1.0
    vmin, vmax = (-lim, lim) if symmetric else (float(maps.min()), float(maps.max()))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols + 0.8, size * nrows * (1.25 if titles else 1.0)), squeeze=False)
    im = None
    H, W = maps.shape[1:]
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(to_numpy_image(images[i]), interpolation="nearest", extent=(0, W, H, 0))
            im = ax.imshow(maps[i], cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha, interpolation="nearest", extent=(0, W, H, 0))
            if titles is not None:
                ax.set_title(wrap_title(short_prompt(titles[i]), 22), fontsize=7)
    if im is not None:
        cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
        if colorbar_label:
            cb.set_label(colorbar_label)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def curve_with_band(ax, x, runs, label: str | None = None, color=None):
    """Plot the mean of ``runs`` (n_runs, len(x)) with a ±1 std band on ``ax``."""
    runs = np.asarray(runs, dtype=np.float64)
    if runs.ndim == 1:
        runs = runs[None]
    mean, std = runs.mean(0), runs.std(0)
    (line,) = ax.plot(x, mean, label=label, color=color)
    if runs.shape[0] > 1:
        ax.fill_between(x, mean - std, mean + std, alpha=0.2, color=line.get_color())
    return line


def plot_reward_curve(runs, ax=None, x: str = "n_samples", label: str | None = None, color=None):
    """Reward vs samples of :meth:`pxpo_lite.trainer.Trainer.train`'s metrics (notebook 02).

    ``runs``: one run's metrics (list of dicts) — band = ±1 std of the rewards *within* each
    epoch — or several runs (list of lists) — band = ±1 std *across* runs
    (:func:`curve_with_band`). Returns the axes.
    """
    import matplotlib.pyplot as plt  # matplotlib: only when plotting (import pxpo_lite does not load it)

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    if runs and isinstance(runs[0], dict):
        xs = [r[x] for r in runs]
        mean = np.array([r["reward_mean"] for r in runs])
        std = np.array([r["reward_std"] for r in runs])
        (line,) = ax.plot(xs, mean, label=label, color=color)
        ax.fill_between(xs, mean - std, mean + std, alpha=0.2, color=line.get_color())
        band = "±1 std within the batch"
    else:
        xs = [r[x] for r in runs[0]]
        curve_with_band(ax, xs, [[r["reward_mean"] for r in run] for run in runs], label=label, color=color)
        band = f"±1 std over {len(runs)} runs"
    ax.set_xlabel("samples" if x == "n_samples" else x)
    ax.set_ylabel(f"mean reward ({band})")
    if label:
        ax.legend()
    return ax
