"""Keep weights that grow with distance from a disliked stroke (``keep_weights_from_heatmap(..., ramp=)``).

The painted keep term (:mod:`pxpo_lite.keep`) holds unpainted pixels at the reference policy
with weight w = 1 and frees disliked pixels (w = 0). Because the LoRA weights are shared by all
pixels, a hard 0/1 edge holds back the disliked region too: every step that would change it is
also charged for whatever it changes next to it. With a **ramp** of ``ramp`` pixels the keep
weight of a pixel outside the stroke is

    w = min(1, d / ramp),    d = distance (pixel centre to pixel centre) to the nearest disliked pixel,

so it is 0 inside the stroke, small right next to it (the edge may blend) and 1 from ``ramp``
pixels away on. Liked pixels keep their own weight (1 with ``keep_liked``). A map with nothing
disliked gets no ramp (d = ∞: the plain weights); a stroke over the whole image gives w = 0
everywhere (nothing is kept: plain PXPO).

Introduced in ``notebooks/06_human_feedback_canvas.ipynb``.
"""
from __future__ import annotations

import math

import torch

from .config_checks import as_real


def check_ramp(ramp, name: str = "ramp") -> float | None:
    """``ramp`` as a float (pixels, > 0), or None (no ramp); ValueError naming ``name`` otherwise."""
    if ramp is None:
        return None
    x = as_real(ramp)  # np.float32(4.0), np.int64(4), a 0-d array or tensor are numbers; a bool or str is not
    if x is None or not math.isfinite(x) or x <= 0:
        raise ValueError(f"{name} must be None (a hard 0/1 keep edge) or a finite number of pixels > 0 "
                         f"(the distance over which the keep weight rises from 0 to 1 outside a disliked stroke), got {ramp!r}")
    return x


def distance_to_disliked(heatmap: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """(B,H,W) distance in pixels from each pixel to the nearest pixel with h < 0 (0 on those; inf
    where a map has none). ``heatmap`` (B,H,W). Exact (Euclidean): the nearest disliked pixel of an
    outside pixel is on the stroke's boundary, so only boundary pixels are compared, ``chunk`` rows at a time."""
    B, H, W = heatmap.shape
    out = torch.full((B, H, W), math.inf)
    grid = torch.stack(torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij"), -1).reshape(-1, 2).float()
    for b in range(B):
        dis = heatmap[b] < 0
        if not dis.any():
            continue
        pad = torch.nn.functional.pad(dis[None, None].float(), (1, 1, 1, 1), value=1.0)[0, 0] > 0
        inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
        edge = (dis & ~inner).reshape(-1)
        if not edge.any():  # the stroke covers the whole image
            out[b] = 0.0
            continue
        pts = grid[edge]
        d = torch.cat([torch.cdist(grid[i:i + chunk], pts).min(1).values for i in range(0, len(grid), chunk)])
        out[b] = d.reshape(H, W).masked_fill(dis, 0.0)
    return out


def ramp_weights(heatmap: torch.Tensor, weights: torch.Tensor, ramp: float) -> torch.Tensor:
    """``weights`` (B,H,W) at image resolution × min(1, d/ramp) on every pixel that is not liked (h ≤ 0)."""
    factor = (distance_to_disliked(heatmap) / check_ramp(ramp)).clamp(max=1.0)
    return torch.where(heatmap > 0, weights, weights * factor)
