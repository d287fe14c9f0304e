"""The painted map's pure maths: checking a map, the brush, and the trait's flat-list form.

Shared by the canvas widget (:mod:`pxpo_lite.canvas`, which needs anywidget) and the code that
turns a map into an update (:mod:`pxpo_lite.feedback`, :mod:`pxpo_lite.synthetic_feedback`), so
those import no widget library. Brush maths (the same in ``pxpo_lite/widget/canvas.js``): a stamp
of diameter ``size`` gives pixel (i, j) the weight w = clamp(size/2 + 0.5 − d, 0, 1), d the
distance from the pixel centre to the brush centre; within one stroke each pixel keeps its
largest weight m; like/dislike set map = clamp(before ± strength·m, −1, 1); the eraser sets
map = before·(1 − strength·m).

Introduced in ``notebooks/06_human_feedback_canvas.ipynb``.
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable, Sequence

import numpy as np


def check_heatmap(heatmap, shape: tuple[int, int], name: str = "heatmap") -> np.ndarray:
    """Validate a painted map: (H,W) at the image's size, finite, in [-1,1]. Returns float32 (H,W).

    Accepts a torch tensor or NumPy array, also (1,H,W).
    """
    if hasattr(heatmap, "detach"):  # a torch tensor, without importing torch
        if heatmap.device.type == "meta" or heatmap.is_complex():
            raise TypeError(f"{name} must hold real numbers in memory, got a {'meta-device' if heatmap.device.type == 'meta' else 'complex'} "
                            "tensor; pass the painted map itself (e.g. canvas.heatmap)")
        heatmap = heatmap.detach().float().cpu().numpy()
    if isinstance(heatmap, (list, tuple)):
        heatmap = _real_array(heatmap, name, shape)
    if not isinstance(heatmap, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array or torch tensor of shape {shape}, got {type(heatmap).__name__}")
    arr = _real_array(heatmap, name, shape)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != tuple(shape):
        raise ValueError(
            f"{name} must have the image's size {tuple(shape)} (H,W), got shape {tuple(np.shape(heatmap))}; "
            "paint at the image's resolution (resize the map, or set the right image first)"
        )
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf value(s); expected finite values in [-1,1]. Nothing was changed: "
                         "repaint the map, or replace them in the code that made it (e.g. np.nan_to_num(heatmap), "
                         "or avoid dividing by an all-zero map's maximum)")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1 - 1e-4 or hi > 1 + 1e-4:
        raise ValueError(f"{name} values must lie in [-1,1] (−1 dislike … +1 like), got min {lo:.3g}, max {hi:.3g}; clip or rescale it")
    return np.clip(arr, -1.0, 1.0)


def _real_array(heatmap, name: str, shape) -> np.ndarray:
    """``heatmap`` as a float32 array; TypeError naming ``name`` for complex, text or unreadable (ragged, None) input."""
    kind = np.dtype(getattr(heatmap, "dtype", np.float32)).kind
    if kind not in "biufO":
        raise TypeError(f"{name} must hold real numbers (a float array of shape {tuple(shape)}), got dtype {heatmap.dtype}; "
                        "pass the painted map as floats in [-1,1]")
    try:
        return np.asarray(heatmap, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a float array of shape {tuple(shape)} with values in [-1,1]; it could not be read "
                        f"as numbers ({e})") from None


def heatmap_to_list(heatmap: np.ndarray) -> list[float]:
    """(H,W) -> flat row-major list of Python floats (the ``heatmap_data`` trait), 4 decimals like the JS side."""
    return [round(float(v), 4) for v in np.asarray(heatmap, dtype=np.float32).ravel()]


def list_to_heatmap(data: Sequence[float], height: int, width: int) -> np.ndarray:
    """The ``heatmap_data`` trait -> (H,W) float32 array."""
    if len(data) != height * width:
        raise ValueError(f"heatmap_data has {len(data)} values, expected height*width = {height}*{width} = {height * width}; "
                         "it was painted on an image of another size: set that image again, or repaint")
    return np.asarray(data, dtype=np.float32).reshape(height, width)


def check_heatmap_list(data, height: int, width: int) -> list[float]:
    """The ``heatmap_data`` trait checked: a flat list of ``height*width`` finite numbers in [-1,1]
    (``[]`` while there is no image). Returns it as Python floats; ValueError naming the problem otherwise
    (a map of another image's size, NaN/None from the front end, values outside [-1,1])."""
    values = list(data)
    n = height * width
    if n == 0 and not values:
        return values
    if len(values) != n:
        raise ValueError(f"the painted map has {len(values)} values but the image is {height}×{width} = {n} pixels: it was painted "
                         "on an image of another size. The previous map is kept; paint again on the image shown")
    bad = [i for i, v in enumerate(values) if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or not math.isfinite(v)]
    if bad:
        raise ValueError(f"the painted map holds {len(bad)} value(s) that are not finite numbers (first at pixel {bad[0]}: "
                         f"{values[bad[0]]!r}; NaN reaches Python as None from the browser). The previous map is kept; "
                         "paint the stroke again (or Clear)")
    lo, hi = min(values), max(values)
    if lo < -1 - 1e-4 or hi > 1 + 1e-4:
        raise ValueError(f"the painted map's values must lie in [-1,1] (−1 dislike … +1 like), got min {lo:.3g}, max {hi:.3g}. "
                         "The previous map is kept; clip or rescale it (np.clip(m, -1, 1)) and set canvas.heatmap")
    return [float(min(1.0, max(-1.0, v))) for v in values]


def brush_weights(points: Iterable[tuple[float, float]], shape: tuple[int, int], size: float) -> np.ndarray:
    """Largest stamp weight per pixel along a stroke through ``points`` (continuous (row, col)
    coordinates, pixel (i, j) spanning [i, i+1) × [j, j+1)), stamping every ≤ 0.25 px like the JS.

    w = clamp(size/2 + 0.5 − d, 0, 1), d = distance from the pixel centre to the stamp centre.
    """
    H, W = shape
    pts = [tuple(map(float, p)) for p in points]
    if not pts:
        raise ValueError("points must hold at least one (row, col) position")
    stamps = [pts[0]]
    for a, b in zip(pts, pts[1:]):
        n = max(1, math.ceil(math.hypot(b[0] - a[0], b[1] - a[1]) / 0.25))
        stamps += [(a[0] + (b[0] - a[0]) * t / n, a[1] + (b[1] - a[1]) * t / n) for t in range(1, n + 1)]
    ys, xs = np.arange(H)[:, None] + 0.5, np.arange(W)[None, :] + 0.5
    mask = np.zeros((H, W), np.float32)
    r = size / 2
    for y, x in stamps:
        d = np.hypot(ys - y, xs - x)
        mask = np.maximum(mask, np.clip(r + 0.5 - d, 0, 1).astype(np.float32))
    return mask


def apply_stroke(before: np.ndarray, mask: np.ndarray, brush: str, strength: float) -> np.ndarray:
    """like/dislike: clamp(before ± strength·m, −1, 1); erase: before·(1 − strength·m)."""
    if brush == "erase":
        return (before * (1 - strength * mask)).astype(np.float32)
    sign = -1.0 if brush == "dislike" else 1.0
    return np.clip(before + sign * strength * mask, -1, 1).astype(np.float32)
