"""A reproducible stand-in for the person who paints feedback (notebook 06).

:func:`synthetic_heatmap` paints what a person following a rule such as
``"dislike hair, like background"`` would paint on an image: the parts are found by the shipped
segmenter (the same image gives the same map), ``blob`` targets come from a seed. It lets
:class:`pxpo_lite.feedback.FeedbackSession` run headless (tests, smoke runs) and makes a
session's rounds reproducible. :func:`next_heatmap` picks the painted canvas when it holds
something and falls back to the synthetic rule otherwise, so nothing ever waits for a person.

Introduced in ``notebooks/06_human_feedback_canvas.ipynb``.
"""
from __future__ import annotations

import numpy as np
import torch

from .brush import brush_weights
from .rewards import default_segmenter
from .world import PART_ID, PARTS

FEEDBACK_SOURCES = ("canvas", "synthetic")
DEFAULT_RULE = "dislike hair, like background"
#: free strokes, placed from the seed: blobs of three sizes, a thin line, a brush stroke across the parts
STROKES = ("blob", "small_blob", "large_blob", "line", "stroke")


def parse_rule(rule: str) -> list[tuple[float, str]]:
    """'dislike hair, like background' -> [(-1.0, 'hair'), (1.0, 'background')].

    Clauses are separated by ',' or ';'; each is ``like|dislike <target>`` where the target is a
    part of the world (``pxpo_lite.world.PARTS``: background, skin, hair, eyes, mouth, shirt) or a
    free stroke placed from the seed (:data:`STROKES`): ``blob`` (a disc of random size),
    ``small_blob``, ``large_blob``, ``line`` (2 px wide), ``stroke`` (a 5 px brush stroke from top
    to bottom through the middle, across hair, skin and shirt); "small blob" = "small_blob".
    Two blobs: "dislike blob, dislike blob" (each clause has its own place).
    """
    if not isinstance(rule, str) or not rule.strip():
        raise ValueError(f"rule must be a non-empty str like {DEFAULT_RULE!r}, got {rule!r}")
    out = []
    for clause in rule.replace(";", ",").split(","):
        words = clause.strip().lower().split()
        if not words:
            continue
        target = "_".join(words[1:])
        if len(words) < 2 or words[0] not in ("like", "dislike") or target not in PARTS + STROKES:
            raise ValueError(
                f"cannot read the clause {clause.strip()!r} of rule {rule!r}: write 'like <target>' or "
                f"'dislike <target>' with a target from {list(PARTS) + list(STROKES)}, e.g. {DEFAULT_RULE!r}"
            )
        out.append((1.0 if words[0] == "like" else -1.0, target))
    return out


def blob(shape: tuple[int, int], seed: int, radius: float | None = None) -> np.ndarray:
    """A soft disc in [0,1] (1 inside, a 1-px linear edge) at a place drawn from ``seed``."""
    H, W = shape
    rng = np.random.default_rng(seed)
    r = radius if radius is not None else rng.uniform(0.12, 0.22) * min(H, W)
    cy, cx = rng.uniform(r, H - r), rng.uniform(r, W - r)
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    return np.clip(r + 0.5 - np.hypot(yy - cy, xx - cx), 0, 1).astype(np.float32)


def free_stroke(kind: str, shape: tuple[int, int], seed: int) -> np.ndarray:
    """One free stroke of :data:`STROKES` in [0,1] (H,W), placed from ``seed`` (the canvas's brush maths)."""
    H, W = shape
    n = min(H, W)
    if kind in ("blob", "small_blob", "large_blob"):
        return blob(shape, seed, {"blob": None, "small_blob": 0.09 * n, "large_blob": 0.2 * n}[kind])
    rng = np.random.default_rng(seed)
    if kind == "line":  # a straight line at least half the image long, anywhere
        while True:
            a, b = rng.uniform(0.1, 0.9, 2) * (H, W), rng.uniform(0.1, 0.9, 2) * (H, W)
            if np.hypot(*(a - b)) >= 0.5 * n:
                return brush_weights([tuple(a), tuple(b)], shape, 2)
    if kind == "stroke":  # top to bottom through the middle third: crosses hair, skin and shirt
        cols = rng.uniform(0.35, 0.65, 2) * W
        return brush_weights([(0.1 * H, cols[0]), (0.5 * H, cols.mean() + rng.uniform(-0.05, 0.05) * W), (0.9 * H, cols[1])],
                             shape, max(2.0, 0.15 * n))
    raise ValueError(f"kind must be one of {STROKES}, got {kind!r}")


def part_masks(image: torch.Tensor, segmenter=None) -> np.ndarray:
    """(H,W) int part labels of a (3,H,W) image, by the shipped segmenter (``rewards.default_segmenter``)."""
    if segmenter is None:
        segmenter = default_segmenter()  # loaded once, shared (rewards.default_segmenter)
    dev = next(segmenter.parameters()).device
    with torch.no_grad():
        logits = segmenter(torch.as_tensor(image, dtype=torch.float32)[None].to(dev))
    return logits.argmax(1)[0].cpu().numpy()


def synthetic_heatmap(
    image,
    rule: str = DEFAULT_RULE,
    seed: int = 0,
    strength: float = 1.0,
    segmenter=None,
) -> np.ndarray:
    """A reproducible painted map for ``image`` (3,H,W): what a person following ``rule`` would paint.

    Parts are found by the segmenter (the same image gives the same map); ``blob`` targets come
    from ``seed``. Later clauses paint over earlier ones. Returns (H,W) float32 in [−1, 1].
    """
    clauses = parse_rule(rule)
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    img = torch.as_tensor(image.detach().cpu() if isinstance(image, torch.Tensor) else np.asarray(image), dtype=torch.float32)
    if img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"image must be (3,H,W) in [0,1], got shape {tuple(img.shape)}")
    H, W = img.shape[1:]
    heat = np.zeros((H, W), np.float32)
    labels = None
    for k, (sign, target) in enumerate(clauses):
        if target in STROKES:
            m = free_stroke(target, (H, W), seed + k)
        else:
            if labels is None:
                labels = part_masks(img, segmenter)
            m = (labels == PART_ID[target]).astype(np.float32)
        heat = np.where(m > 0, sign * strength * m, heat)
    return heat.astype(np.float32)


def next_heatmap(source: str, image, canvas=None, rule: str = DEFAULT_RULE, seed: int = 0, segmenter=None):
    """The map for this round: ``(heatmap, source_used, message)``. Never waits for a person.

    ``source="canvas"`` uses whatever ``canvas`` holds right now; if it holds nothing (no
    canvas, no image, or an empty map) it falls back to the synthetic rule and says so.
    """
    if source not in FEEDBACK_SOURCES:
        raise ValueError(f"FEEDBACK_SOURCE must be one of {FEEDBACK_SOURCES}, got {source!r}")
    if source == "canvas":
        if canvas is not None and canvas.has_image and not canvas.is_empty:
            return canvas.heatmap, "canvas", f"using the painted canvas ({canvas!r})"
        why = "no canvas" if canvas is None else ("the canvas has no image" if not canvas.has_image else "nothing is painted on the canvas")
        msg = f"{why}: falling back to synthetic feedback ({rule!r}) so nothing waits for a person"
        return synthetic_heatmap(image, rule, seed, segmenter=segmenter), "synthetic", msg
    return synthetic_heatmap(image, rule, seed, segmenter=segmenter), "synthetic", f"synthetic feedback: {rule!r}"
