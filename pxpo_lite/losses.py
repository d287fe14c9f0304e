"""Policy-gradient losses for one denoising step: DDPO (one advantage per image) and PXPO (one per pixel).

Inputs are one timestep's **per-element** log-probs ``log_prob`` (B,C,h,w) of the stored
transitions x_t → x_{t−1} under the current weights θ (with grad) and ``old_log_prob`` (same
shape, no grad) under the weights θ_old that sampled them. Minimising the loss ascends J.

DDPO (Black et al. 2023), on the mean-reduced log-prob ℓ_b = mean_{c,i,j} log p[b,c,i,j]
(ddpo-pytorch's reduction):

* score function (REINFORCE, ``clip_range=None``):   L = − mean_b A_b ℓ_b
* importance-sampled + PPO clip (``clip_range=ε``):  ρ_b = exp(ℓ_b − ℓ_b^old),
  L = mean_b max(−A_b ρ_b, −A_b clip(ρ_b, 1−ε, 1+ε))

PXPO (Kordzanganeh et al. 2024), each pixel's log-prob weighted by *its own* advantage
A[b,i,j] (broadcast over the C channels):

* score function (the paper's form):  L = − mean_b mean_{c,i,j} A[b,i,j] log p[b,c,i,j]
* element-wise clipped ratio (our extension, ``docs/paper.md``): ρ[b,c,i,j] = exp(log p − log p^old),
  L = mean_b mean_{c,i,j} max(−A ρ, −A clip(ρ, 1−ε, 1+ε))

Per-pixel advantages under an **image-level** ratio (``imageratio_loss``; DenseFlow-GRPO's form, a
control in the credit benchmark): the ratio and its clip are DDPO's, ρ_b = exp(ℓ_b − ℓ_b^old), and
each pixel's advantage multiplies that one ratio:

* score function:  L = − mean_b (mean_{i,j} A[b,i,j]) ℓ_b
* clipped:         L = mean_b mean_{i,j} max(−A[b,i,j] ρ_b, −A[b,i,j] clip(ρ_b, 1−ε, 1+ε))

Without the clip this is DDPO with the map's mean as the image's advantage: the pixels share one
log-likelihood, so their advantages cannot steer pixels apart. With the clip, a pixel stops
pushing once the *image's* ratio leaves the trust region in its direction. A constant map gives
DDPO exactly (tested).

**Reduction**: a *mean* over C,h,w (not a sum) then a mean over B. With that choice a constant
map A[b,i,j] = A_b gives exactly DDPO's score-function loss, and at θ = θ_old (ρ = 1, inside
the clip) both clipped losses have DDPO's gradient too (tested). A sum over pixels would only
rescale the learning rate by C·h·w; the mean keeps DDPO's hyper-parameters meaningful.

Diagnostics (plain floats, no grad): ``approx_kl`` = ½·mean((log p − log p^old)²) (as
ddpo-pytorch; on ℓ for DDPO, per element for PXPO), ``clip_fraction`` (share of ratios outside
[1−ε, 1+ε]; 0 without clipping), ``ratio_mean/min/max``, ``advantage_mean``, ``loss``.

Introduced in ``notebooks/02_ddpo.ipynb`` (DDPO) and ``notebooks/03_pixelwise_logprobs.ipynb`` (PXPO).
"""
from __future__ import annotations

import math

import torch


class NonFiniteError(ValueError):
    """A NaN or inf appeared in a loss input; ``samples`` are the offending batch indices."""

    def __init__(self, message: str, samples: list[int]):
        super().__init__(message)
        self.samples = samples


def _check(log_prob: torch.Tensor, old_log_prob: torch.Tensor, adv: torch.Tensor, adv_name: str, adv_dims: int) -> None:
    if not isinstance(log_prob, torch.Tensor) or log_prob.ndim != 4:
        raise ValueError(
            f"log_prob must be per-element log-probs (B,C,h,w) of one timestep, got "
            f"{tuple(log_prob.shape) if isinstance(log_prob, torch.Tensor) else type(log_prob).__name__}"
        )
    if not isinstance(old_log_prob, torch.Tensor) or old_log_prob.shape != log_prob.shape:
        raise ValueError(
            f"old_log_prob must have log_prob's shape {tuple(log_prob.shape)}, got "
            f"{tuple(old_log_prob.shape) if isinstance(old_log_prob, torch.Tensor) else type(old_log_prob).__name__}; "
            "use the trajectory's stored log_probs[:, step] for the same samples"
        )
    B, _, h, w = log_prob.shape
    if B == 0:
        raise ValueError(
            f"log_prob is an empty batch (shape {tuple(log_prob.shape)}): there is nothing to train on; "
            "pass at least one sample (check the micro-batch slicing)"
        )
    if not log_prob.is_floating_point():
        raise TypeError(f"log_prob must be a floating-point tensor, got dtype {log_prob.dtype}")
    want = (B,) if adv_dims == 1 else (B, h, w)
    if not isinstance(adv, torch.Tensor) or tuple(adv.shape) != want:
        got = tuple(adv.shape) if isinstance(adv, torch.Tensor) else type(adv).__name__
        hint = (
            "one advantage per sample" if adv_dims == 1
            else "one advantage per pixel at the sample resolution; map an image-resolution map with pixelwise.to_sample_grid"
        )
        raise ValueError(f"{adv_name} must have shape {want} ({hint}), got {got}")
    for name, t in (("log_prob", log_prob), ("old_log_prob", old_log_prob), (adv_name, adv)):
        bad = ~torch.isfinite(t.detach().reshape(B, -1)).all(dim=1)
        if bad.any():
            idx = bad.nonzero().flatten().tolist()
            raise NonFiniteError(f"{name} has NaN/inf for sample(s) {idx} of this batch", idx)


@torch.no_grad()
def _diagnostics(log_ratio: torch.Tensor, adv: torch.Tensor, clip_range: float | None, loss: torch.Tensor) -> dict:
    ratio = log_ratio.exp()
    clipped = (ratio - 1).abs() > clip_range if clip_range is not None else torch.zeros_like(ratio, dtype=torch.bool)
    return {
        "loss": float(loss.detach()),
        "approx_kl": float(0.5 * (log_ratio**2).mean()),
        "clip_fraction": float(clipped.float().mean()),
        "ratio_mean": float(ratio.mean()),
        "ratio_min": float(ratio.min()),
        "ratio_max": float(ratio.max()),
        "advantage_mean": float(adv.float().mean()),
    }


def _ppo_term(ratio: torch.Tensor, adv: torch.Tensor, clip_range: float) -> torch.Tensor:
    """max(−A ρ, −A clip(ρ, 1−ε, 1+ε)) element-wise (the PPO clipped surrogate, negated)."""
    return torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range))


def _check_clip(clip_range) -> None:
    if clip_range is None:
        return
    if isinstance(clip_range, bool) or not isinstance(clip_range, (int, float)) or not (math.isfinite(clip_range) and clip_range > 0):
        raise ValueError(
            f"clip_range must be None (score-function loss) or a finite number > 0 (the PPO ε, e.g. 1e-4 as in "
            f"ddpo-pytorch or 0.2), got {clip_range!r}"
        )


def ddpo_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float | None = None):
    """DDPO loss of one timestep: log-probs (B,C,h,w) mean-reduced to ℓ_b, advantages (B,). Returns (loss, info)."""
    _check_clip(clip_range)
    _check(log_prob, old_log_prob, advantages, "advantages", 1)
    adv = advantages.to(device=log_prob.device, dtype=log_prob.dtype)
    lp = log_prob.mean(dim=(1, 2, 3))  # ℓ_b = mean_{c,i,j} log p   (B,)
    log_ratio = lp - old_log_prob.mean(dim=(1, 2, 3)).to(device=lp.device, dtype=lp.dtype)  # log ρ_b
    if clip_range is None:
        loss = -(adv * lp).mean()  # L = −mean_b A_b ℓ_b
    else:
        loss = _ppo_term(log_ratio.exp(), adv, clip_range).mean()  # L = mean_b max(−Aρ, −A clip ρ)
    return loss, _diagnostics(log_ratio, adv, clip_range, loss)


def pxpo_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantage_map: torch.Tensor, clip_range: float | None = None):
    """PXPO loss of one timestep: log-probs (B,C,h,w), advantage_map (B,h,w) broadcast over C. Returns (loss, info)."""
    _check_clip(clip_range)
    _check(log_prob, old_log_prob, advantage_map, "advantage_map", 3)
    adv = advantage_map.to(device=log_prob.device, dtype=log_prob.dtype).unsqueeze(1)  # (B,1,h,w): each pixel's own advantage, all channels
    log_ratio = log_prob - old_log_prob.to(device=log_prob.device, dtype=log_prob.dtype)  # log ρ[b,c,i,j]
    if clip_range is None:
        loss = -(adv * log_prob).mean(dim=(1, 2, 3)).mean()  # L = −mean_b mean_{c,i,j} A[b,i,j] log p[b,c,i,j]
    else:
        loss = _ppo_term(log_ratio.exp(), adv, clip_range).mean(dim=(1, 2, 3)).mean()  # element-wise PPO
    return loss, _diagnostics(log_ratio, adv.expand_as(log_ratio), clip_range, loss)


def imageratio_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantage_map: torch.Tensor, clip_range: float | None = None):
    """Per-pixel advantages (B,h,w) under DDPO's image-level ratio (module docstring). Returns (loss, info)."""
    _check_clip(clip_range)
    _check(log_prob, old_log_prob, advantage_map, "advantage_map", 3)
    adv = advantage_map.to(device=log_prob.device, dtype=log_prob.dtype)  # (B,h,w)
    lp = log_prob.mean(dim=(1, 2, 3))  # ℓ_b (B,)
    log_ratio = lp - old_log_prob.mean(dim=(1, 2, 3)).to(device=lp.device, dtype=lp.dtype)  # log ρ_b
    if clip_range is None:
        loss = -(adv.mean(dim=(1, 2)) * lp).mean()  # L = −mean_b (mean_ij A) ℓ_b
    else:
        ratio = log_ratio.exp()[:, None, None]  # ρ_b, one per image, shared by its pixels
        loss = _ppo_term(ratio, adv, clip_range).mean(dim=(1, 2)).mean()
    return loss, _diagnostics(log_ratio, adv.mean(dim=(1, 2)), clip_range, loss)
