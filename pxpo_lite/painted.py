"""A painted map in numbers: per-pixel advantages, how much an image changed where it was painted, and a whole-image map's warning.

Used by :class:`pxpo_lite.feedback.FeedbackSession` (which re-exports the first two) and by
``benchmarks/bench_localised_feedback.py``. Introduced in ``notebooks/06_human_feedback_canvas.ipynb``.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from .config_checks import check_number
from .pixelwise import to_sample_grid


def heatmap_to_advantages(heatmap, sample_size: tuple[int, int], scale: float = 1.0, dislike_scale: float = 1.0,
                          dislike_area: float | None = None) -> torch.Tensor:
    """Per-pixel advantages (1,h,w): A = scale · h (× ``dislike_scale`` where h < 0), area-averaged
    onto the sample grid (identity for pixel-space models). Unpainted pixels (h = 0) get A = 0: no
    gradient at all.

    ``dislike_area`` (a fraction of the image, or None): the loss is a mean over pixels, so a small
    disliked stroke carries a small share of the gradient. When the disliked area (Σ|h| over h < 0,
    ÷ the pixel count) is below ``dislike_area``, the disliked advantages are also multiplied by
    ``dislike_area`` ÷ that area (at most :data:`MAX_AREA_GAIN`): every stroke up to that size pulls
    as hard as one of that size. Larger strokes are unchanged."""
    check_number("dislike_scale", dislike_scale, above=0)
    if dislike_area is not None:
        check_number("dislike_area", dislike_area, above=0, at_most=1)
    h = torch.as_tensor(np.asarray(heatmap, dtype=np.float32))[None]
    gain = dislike_scale * area_gain(h, dislike_area)
    if gain != 1.0:
        h = torch.where(h < 0, gain * h, h)
    return to_sample_grid(scale * h, sample_size)


#: the largest factor :func:`area_gain` applies (a one-pixel dot is not pushed 1000× harder)
MAX_AREA_GAIN = 10.0


def area_gain(heatmap, dislike_area: float | None) -> float:
    """max(1, ``dislike_area`` ÷ disliked area) capped at :data:`MAX_AREA_GAIN`; 1 when None or nothing is disliked."""
    h = torch.as_tensor(np.asarray(heatmap, dtype=np.float32)) if not torch.is_tensor(heatmap) else heatmap
    area = float((-h).clamp(min=0).sum()) / max(h.numel(), 1)
    if dislike_area is None or area <= 0:
        return 1.0
    return float(min(MAX_AREA_GAIN, max(1.0, dislike_area / area)))


def change_stats(before, after, heatmap) -> dict:
    """Mean |after − before| (averaged over RGB) inside the disliked, liked, painted and unpainted areas.

    ``change_ratio`` = change in the painted area ÷ change in the unpainted area (> 1: the
    update acted where the person painted); ``disliked_over_unpainted`` and ``liked_over_unpainted``
    likewise. NaN where an area is empty (e.g. nothing unpainted: a stroke over the whole image).
    """
    b = torch.as_tensor(before, dtype=torch.float32).cpu().numpy()
    a = torch.as_tensor(after, dtype=torch.float32).cpu().numpy()
    h = np.asarray(heatmap, dtype=np.float32)
    change = np.abs(a - b).mean(0)

    def mean(mask):
        return float(change[mask].mean()) if mask.any() else float("nan")

    out = {
        "change_disliked": mean(h < 0),
        "change_liked": mean(h > 0),
        "change_painted": mean(h != 0),
        "change_unpainted": mean(h == 0),
        "change_all": float(change.mean()),
    }
    unp = out["change_unpainted"]
    for key, num in (("change_ratio", "change_painted"), ("disliked_over_unpainted", "change_disliked"),
                     ("liked_over_unpainted", "change_liked")):
        out[key] = out[num] / unp if unp > 0 else float("nan")
    return out


def warn_if_whole_image(heatmap, kept_liked: bool = True) -> bool:
    """Warn (UserWarning) when ``heatmap`` paints every pixel, saying what a round does with it; True if it warned.

    Such a round is defined (:meth:`pxpo_lite.feedback.FeedbackSession.step` runs it), but nothing is
    left unpainted: the keep term has no outside pixel to hold (only liked ones, with ``kept_liked``),
    the whole image may change, and :func:`change_stats`' ratios over unpainted pixels are NaN.
    """
    h = np.asarray(heatmap, dtype=np.float32)
    if (h == 0).any():
        return False
    kept = "liked pixels are still held by the keep term" if kept_liked and (h > 0).any() else "the keep term holds nothing"
    warnings.warn(f"the map paints every pixel, nothing is left unpainted: the round runs, but {kept} (there is no "
                  "unpainted pixel to keep), the whole image may change, and the change ratios over unpainted pixels "
                  "are NaN. To keep part of the image as it is, leave it unpainted (erase it on the canvas)", stacklevel=3)
    return True
