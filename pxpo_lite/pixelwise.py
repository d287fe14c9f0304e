"""Pixel-wise log-probabilities and the PXPO credit assignment.

Because the DDIM step's covariance is diagonal, log p_θ(x_{t−1}|x_t,c) is a sum of per-element
terms. DDPO reduces them to one number per sample (mean over C,h,w, as ddpo-pytorch does) and
scales it by the image's reward; PXPO (Kordzanganeh et al., 2024) keeps one value per pixel and
scales each by *its own* reward — a Kronecker delta δ between the reward's pixel and the
log-prob's pixel (``docs/paper.md``, "Pixel-wise policy optimisation"):

    ∇J_DDPO = E[ r(x_0,c)            Σ_t ∇ log p_θ(x_{t−1}|x_t,c) ]
    ∇J_PXPO = E[ Σ_{i,j} r_{ij}(x_0,c) Σ_t ∇ log p_θ(x_{t−1}^{ij}|x_t,c) ]

Normalisation used here (and in ``pxpo_lite.losses``): both surrogates take a **mean over
(C,h,w)** of the reward-weighted per-element log-probs, sum over steps t, and mean over the
batch. With a constant map r_{ij} = r the PXPO surrogate equals the DDPO surrogate with scalar
reward r exactly (:func:`pxpo_surrogate` == :func:`ddpo_surrogate`, gradients too).

Reward maps live at *image* resolution (B,H,W); log-probs at the model's *sample* resolution
(B,C,h,w). :func:`to_sample_grid` area-averages a map to (h,w) (identity for the tiny
pixel-space model; 8× for Stable Diffusion latents) and the map is broadcast over C.

Introduced in ``notebooks/03_pixelwise_logprobs.ipynb``.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .devices import check_not_meta


def _check_log_probs(log_probs, name: str = "log_probs") -> torch.Tensor:
    if not isinstance(log_probs, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of per-element log-probs (...,C,h,w), got {type(log_probs).__name__}")
    if log_probs.ndim < 3:
        raise ValueError(f"{name} must have shape (...,C,h,w) (e.g. (B,C,h,w) or (B,T,C,h,w)), got {tuple(log_probs.shape)}")
    return log_probs


def per_pixel(log_probs: torch.Tensor) -> torch.Tensor:
    """Sum over the channel dim: (...,C,h,w) -> (...,h,w).

    log p(x^{ij}) = Σ_c log p(x^{c,ij}) — the log-prob of one pixel (all its channels).
    """
    return _check_log_probs(log_probs).sum(dim=-3)


def per_sample(log_probs: torch.Tensor) -> torch.Tensor:
    """DDPO's reduction: mean over (C,h,w): (...,C,h,w) -> (...)."""
    return _check_log_probs(log_probs).mean(dim=(-3, -2, -1))


def _size(size) -> tuple[int, int]:
    if isinstance(size, torch.Size) or isinstance(size, (tuple, list)):
        size = tuple(size)[-2:]
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"size must be the sample grid (h, w) of positive ints, got {size!r}")
    return size


def to_sample_grid(reward_map: torch.Tensor, size: Sequence[int], batch_size: int | None = None) -> torch.Tensor:
    """Map an image-resolution reward map (B,H,W) to the model's sample grid (B,h,w) by area average.

    Identity when (H,W) == (h,w) (pixel-space model). Otherwise each sample cell (i, j) covers the
    image rectangle [i·H/h, (i+1)·H/h) × [j·W/w, (j+1)·W/w) and gets the **area-weighted mean** of
    the image pixels it overlaps, a pixel cut by the cell's border counting with the fraction
    inside (:func:`area_weights`). For an integer factor (SD: H/h = W/w = 8) that is the plain
    mean of the 8×8 block; for any factor the map's mean is preserved (to float rounding), so the
    total credit a map gives is the same on both grids. The aspect ratio must match
    (H/h == W/w). ``size`` may also be a shape whose last two entries are (h, w), e.g.
    ``log_probs.shape``; ``batch_size`` checks B.
    """
    if not isinstance(reward_map, torch.Tensor):
        raise TypeError(f"reward_map must be a torch.Tensor (B,H,W), got {type(reward_map).__name__}")
    if reward_map.ndim != 3:
        raise ValueError(f"reward_map must have shape (B,H,W) (one value per image pixel), got {tuple(reward_map.shape)}")
    if batch_size is not None and reward_map.shape[0] != batch_size:
        raise ValueError(f"reward_map has batch {reward_map.shape[0]} but the log-probs have batch {batch_size}; they must match")
    h, w = _size(size)
    B, H, W = reward_map.shape
    if (H, W) == (h, w):
        return reward_map
    if H * w != W * h:
        raise ValueError(
            f"reward_map is {H}×{W} but the sample grid is {h}×{w}: the aspect ratios differ, so the map cannot be "
            "area-averaged onto the grid. Compute the reward map on the decoded images (same aspect ratio)."
        )
    x = reward_map.to(torch.float64)
    a_h = area_weights(H, h, device=x.device)  # (h, H)
    a_w = area_weights(W, w, device=x.device)  # (w, W)
    y = torch.einsum("ik,bkl,jl->bij", a_h, x, a_w)  # y[b,i,j] = Σ_k Σ_l a_h[i,k] x[b,k,l] a_w[j,l]
    return y.to(reward_map.dtype if reward_map.is_floating_point() else torch.float32)


def area_weights(n_in: int, n_out: int, device=None) -> torch.Tensor:
    """(n_out, n_in) float64 weights of a 1-d area average from n_in pixels onto n_out cells.

    Output cell i covers [i·n_in/n_out, (i+1)·n_in/n_out) in input-pixel units; ``w[i, k]`` is the
    length of its overlap with input pixel [k, k+1) divided by the cell's length n_in/n_out, so
    each row sums to 1 (a mean) and each column to n_out/n_in (every input pixel is counted once
    in total: the mean of the input is preserved). Computed in exact integer units (× n_out).
    """
    k = torch.arange(n_in, device=device, dtype=torch.int64)
    i = torch.arange(n_out, device=device, dtype=torch.int64)
    lo = torch.maximum(i[:, None] * n_in, k[None, :] * n_out)  # both scaled by n_out: integers
    hi = torch.minimum((i[:, None] + 1) * n_in, (k[None, :] + 1) * n_out)
    return (hi - lo).clamp(min=0).to(torch.float64) / n_in


def check_reward_map(reward_map: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Validate a reward map against the images it scores: (B,H,W) for images (B,3,H,W), finite, float.

    Returns it as float32. Raises ValueError/TypeError naming what is wrong (never broadcasts).
    """
    if not isinstance(reward_map, torch.Tensor):
        raise TypeError(f"reward_map must be a torch.Tensor (B,H,W), got {type(reward_map).__name__}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a tensor (B,3,H,W), got {getattr(images, 'shape', type(images).__name__)}")
    check_not_meta(reward_map=reward_map)
    B, _, H, W = images.shape
    if reward_map.ndim != 3 or tuple(reward_map.shape) != (B, H, W):
        raise ValueError(
            f"reward_map has shape {tuple(reward_map.shape)} but the images {tuple(images.shape)} need ({B}, {H}, {W}): "
            "one reward per image pixel, same batch. A per-image (scalar) reward is a map filled with that value."
        )
    if not (reward_map.is_floating_point() or reward_map.dtype in (torch.int32, torch.int64, torch.bool)):
        raise TypeError(f"reward_map must be a real-valued tensor, got dtype {reward_map.dtype}")
    reward_map = reward_map.float()
    bad = ~torch.isfinite(reward_map)
    if bad.any():
        idx = bad.nonzero()[0].tolist()
        raise ValueError(
            f"reward_map has {int(bad.sum())} NaN/inf values (first at (b, i, j) = {tuple(idx)}); "
            "rewards must be finite — fix the reward function (e.g. clamp, avoid log(0))."
        )
    return reward_map


# --------------------------------------------------------------------------------------------
# Score-function (REINFORCE) surrogates: their gradient is the policy-gradient estimate
# --------------------------------------------------------------------------------------------
def _as_steps(log_probs: torch.Tensor) -> torch.Tensor:
    """(B,C,h,w) -> (B,1,C,h,w); (B,T,C,h,w) unchanged."""
    _check_log_probs(log_probs)
    if log_probs.ndim == 4:
        return log_probs.unsqueeze(1)
    if log_probs.ndim == 5:
        return log_probs
    raise ValueError(f"log_probs must be (B,C,h,w) or (B,T,C,h,w), got {tuple(log_probs.shape)}")


def ddpo_surrogate(log_probs: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """DDPO_SF surrogate (to maximise): mean_b [ r_b Σ_t mean_{C,h,w} log p_θ(x_{t−1}|x_t,c) ].

    ``log_probs``: (B,C,h,w) for one step or (B,T,C,h,w); ``rewards`` (or advantages): (B,).
    Its gradient is the REINFORCE estimate of ∇J (with DDPO's mean-over-elements scaling);
    the loss to minimise is its negative.
    """
    lp = _as_steps(log_probs)
    if not isinstance(rewards, torch.Tensor) or rewards.shape != (lp.shape[0],):
        raise ValueError(f"rewards must be a tensor of shape ({lp.shape[0]},) (one per sample), got {getattr(rewards, 'shape', rewards)!r}")
    per_step = per_sample(lp)  # (B,T)
    check_not_meta(unless_on=("log_probs", lp), rewards=rewards)  # rewards on 'meta' cannot move to a real device
    return (rewards.to(device=per_step.device, dtype=per_step.dtype) * per_step.sum(dim=1)).mean()


def pxpo_surrogate(log_probs: torch.Tensor, reward_map: torch.Tensor) -> torch.Tensor:
    """PXPO surrogate (to maximise): mean_b [ Σ_t mean_{C,h,w} r_{b,ij} log p_θ(x_{t−1}^{c,ij}|x_t,c) ].

    ``log_probs``: (B,C,h,w) or (B,T,C,h,w); ``reward_map`` (or advantage map): (B,h,w) **on the
    sample grid** (use :func:`to_sample_grid` first), broadcast over C and t. Each element's
    log-likelihood is weighted by its own pixel's reward (the Kronecker delta). With a constant
    map r_{b,ij} = r_b it equals :func:`ddpo_surrogate` with rewards r.
    """
    lp = _as_steps(log_probs)
    B, _, _, h, w = lp.shape
    if not isinstance(reward_map, torch.Tensor) or reward_map.ndim != 3 or tuple(reward_map.shape) != (B, h, w):
        raise ValueError(
            f"reward_map must have shape ({B}, {h}, {w}) to match log_probs {tuple(log_probs.shape)}, got "
            f"{getattr(reward_map, 'shape', reward_map)!r}; map an image-resolution map with to_sample_grid(map, ({h}, {w}))."
        )
    check_not_meta(unless_on=("log_probs", lp), reward_map=reward_map)  # a map on 'meta' cannot move to a real device
    weighted = reward_map.to(device=lp.device, dtype=lp.dtype)[:, None, None] * lp  # (B,T,C,h,w): δ-matched pixel credit
    return weighted.mean(dim=(-3, -2, -1)).sum(dim=1).mean()
