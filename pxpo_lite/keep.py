"""The per-pixel keep term: a closed-form KL to the reference policy, weighted pixel by pixel.

Feedback says what to change; everything it says nothing about should stay as it was. A DDIM
step is a Gaussian policy π_θ(x_{t−1}|x_t,c) = N(μ_θ, σ_t² I) whose σ_t depends only on the
schedule (``pxpo_lite.ddim``), so the trained policy and the reference one (the model before
training) share σ_t and their KL divergence is closed-form, element by element:

    KL(N(μ, σ²) ‖ N(μ', σ'²)) = log(σ'/σ) + (σ² + (μ − μ')²) / (2σ'²) − ½
    with σ = σ' = σ_t:   KL_{c,ij} = (μ_θ − μ_ref)²_{c,ij} / (2σ_t²)          (:func:`gaussian_kl`)

Because the covariance is diagonal the step's KL is the sum of these per-element terms, so it
can be weighted **per pixel**, exactly like PXPO weights per-pixel log-probabilities. The keep
term added to the loss (to minimise) of one stored transition is

    L_keep = β · mean_{b,c,i,j} [ w_{b,ij} · (μ_θ − μ_ref)²_{b,c,ij} / (2σ_t²) ]     (:func:`keep_term`)

with a weight map w on the sample grid: 1 where the feedback says nothing (unpainted pixels,
pixels outside a region; :func:`keep_weights_from_heatmap`, :func:`keep_weights_from_mask`), 0
where change is asked for. w ≡ 1 is the usual global KL regulariser (notebooks 03/04); a
painted w is the localised one (notebook 06). The term is exactly 0 at θ = θ_ref and so is its
gradient; it grows only where the mean of the step moves.

μ_ref costs one extra UNet forward per trained step, without gradients (:func:`step_means`
with ``reference=True``): with LoRA, the same UNet with its adapters switched off
(:func:`adapters_disabled`); for full-UNet training, a frozen copy made before training
(:func:`frozen_copy`). ``python benchmarks/bench_keep_cost.py`` measures that cost.

Use in an update (one stored transition: step ``i``, samples ``idx``)::

    pol = keep.step_means(pipe, traj, i, idx)                     # with grad; pol.log_prob for PXPO
    ref = keep.step_means(pipe, traj, i, idx, reference=True)     # no grad, adapters off
    kt = keep.keep_term(pol.mean, ref.mean, pol.sigma, weights[idx], beta)
    loss = pg_loss(pol.log_prob, ...) + kt.term

:func:`pxpo_lite.update.policy_gradient_step` does this for every pair it trains, given a
:class:`Keep` (β, the weight maps, the reference) — defined here, re-exported by ``update``.

Introduced in ``notebooks/06_human_feedback_canvas.ipynb`` (painted keep map) and
``notebooks/04_pxpo_colour_feedback.ipynb`` (global β).
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from .config_checks import as_real
from .ddim import StepGaussian  # the record of a re-scored step (flow_sampling imports it from here)
from .devices import check_not_meta
from .keep_ramp import ramp_weights
from .lora import unwrap
from .pixelwise import to_sample_grid
from .sampling import Trajectory, step_gaussians


# --------------------------------------------------------------------------------------------
# The KL and its weights
# --------------------------------------------------------------------------------------------
def _check_sigma(sigma, like: torch.Tensor) -> torch.Tensor:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, torch.Tensor)):
        raise TypeError(f"sigma must be a number or a tensor (σ_t of the step), got {type(sigma).__name__}")
    s = torch.as_tensor(sigma, dtype=torch.float32, device=like.device)
    try:
        torch.broadcast_shapes(s.shape, like.shape)
    except RuntimeError:
        raise ValueError(f"sigma of shape {tuple(s.shape)} does not broadcast to the means' shape {tuple(like.shape)}") from None
    if not torch.isfinite(s).all() or not (s > 0).all():
        raise ValueError(
            f"sigma must be finite and > 0, got min {float(s.min()):.3g}; σ_t = 0 is a deterministic step "
            "(no policy, the KL is undefined): train only ddim.trainable_step_indices(...)."
        )
    return s


def gaussian_kl(mu: torch.Tensor, mu_ref: torch.Tensor, sigma) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(μ_ref, σ²)) per element = (μ − μ_ref)² / (2σ²), float32, shaped like ``mu``.

    Equal-σ Gaussians (both DDIM policies share σ_t): the log-ratio and variance terms of the
    general formula cancel. ``sigma``: a number or a tensor broadcastable to ``mu`` (> 0).
    """
    for name, t in (("mu", mu), ("mu_ref", mu_ref)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (the step's mean, e.g. (B,C,h,w)), got {type(t).__name__}")
    check_not_meta(mu=mu, mu_ref=mu_ref, sigma=sigma)
    if mu.shape != mu_ref.shape:
        raise ValueError(f"mu has shape {tuple(mu.shape)} but mu_ref has {tuple(mu_ref.shape)}; both are the same step's means")
    s = _check_sigma(sigma, mu)
    return (mu.float() - mu_ref.float()) ** 2 / (2 * s**2)


def _heatmap_tensor(heatmap, name: str = "heatmap", low: float = -1.0) -> torch.Tensor:
    if isinstance(heatmap, np.ndarray):
        heatmap = torch.from_numpy(np.asarray(heatmap, dtype=np.float32))
    if not isinstance(heatmap, torch.Tensor):
        raise TypeError(f"{name} must be a NumPy array or torch tensor (H,W) or (B,H,W), got {type(heatmap).__name__}")
    check_not_meta(**{name: heatmap})
    h = heatmap.detach().float()
    if h.ndim == 2:
        h = h[None]
    if h.ndim != 3:
        raise ValueError(f"{name} must be (H,W) or (B,H,W) at image resolution, got shape {tuple(heatmap.shape)}")
    span = "[-1, 1] (−1 dislike … +1 like)" if low < 0 else "[0, 1] (1 = inside the region, 0 outside)"
    if not torch.isfinite(h).all():
        raise ValueError(f"{name} contains NaN/inf; expected finite values in {span}")
    if h.numel() and (h.min() < low - 1e-4 or h.max() > 1 + 1e-4):
        hint = "; it looks like a 0/255 image: divide it by 255" if h.min() >= 0 and 1 < h.max() <= 255 else ""
        raise ValueError(f"{name} values must lie in {span}, got [{float(h.min()):.3g}, {float(h.max()):.3g}]{hint}")
    return h.clamp(low, 1)


def _check_outside(outside) -> float:
    x = as_real(outside)  # NumPy scalars and 0-d arrays/tensors are numbers; a bool is not
    if x is None or not math.isfinite(x) or x < 0:
        raise ValueError(f"outside must be a finite number >= 0 (the keep weight where feedback says nothing), got {outside!r}")
    return x


def keep_weights_from_heatmap(heatmap, sample_size, keep_liked: bool = True, outside: float = 1.0,
                              ramp: float | None = None) -> torch.Tensor:
    """Keep weights (1 or B, h, w) on the sample grid from a painted map h ∈ [−1, 1] (H,W) or (B,H,W).

    Per image pixel: ``outside`` where nothing was painted (h = 0), 0 where disliked (h = −1),
    on liked pixels (h = +1) ``outside`` if ``keep_liked`` else 0; soft strokes interpolate,
    w = outside·(1 − max(−h, 0)) with ``keep_liked``, outside·(1 − |h|) without. ``ramp`` (pixels,
    None: off) multiplies every pixel that is not liked by min(1, d/ramp), d its distance to the
    nearest disliked pixel (:mod:`pxpo_lite.keep_ramp`). The map is then
    area-averaged to ``sample_size`` (h, w) (``pixelwise.to_sample_grid``; identity for the tiny
    model, 64×64 → 8×8 for Stable Diffusion latents). Example::

        w = keep_weights_from_heatmap(synthetic_heatmap(img, "dislike hair, like background"), (32, 32))
    """
    h = _heatmap_tensor(heatmap)
    out = _check_outside(outside)
    free = (-h).clamp(min=0) if keep_liked else h.abs()
    w = out * (1 - free)
    return to_sample_grid(w if ramp is None else ramp_weights(h, w, ramp), sample_size)


def keep_weights_from_mask(mask, sample_size, outside: float = 1.0) -> torch.Tensor:
    """Keep weights (1 or B, h, w) for region-focused feedback: 0 inside the region, ``outside`` elsewhere.

    ``mask``: (H,W) or (B,H,W) in [0, 1], 1 = the region the reward is about (e.g.
    ``regions.region_mask("shirt", images)``); area-averaged to ``sample_size``.
    """
    m = _heatmap_tensor(mask, "mask", low=0.0)
    return to_sample_grid(_check_outside(outside) * (1 - m), sample_size)


def keep_weights_from_fn(fn, images: torch.Tensor, prompts, sample_size) -> torch.Tensor:
    """Per-sample keep weights (B,h,w) from ``fn(images, prompts) -> (B,H,W)`` (≥ 0, at image
    resolution; e.g. ``lambda im, p: 1 - regions.region_mask("shirt", im)``), area-averaged to ``sample_size``."""
    w = fn(images, prompts)
    if not isinstance(w, torch.Tensor) or w.ndim != 3 or w.shape[0] != len(images) or w.shape[1:] != images.shape[-2:]:
        got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"keep_weights returned {got}; it must return a tensor "
                         f"({len(images)}, {images.shape[-2]}, {images.shape[-1]}): one keep map per image, at image resolution")
    check_not_meta(**{"the keep_weights function's map": w})
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError("keep_weights returned values that are NaN/inf or < 0; keep weights are >= 0 (1 = keep, 0 = free)")
    return to_sample_grid(w.detach().float(), sample_size)


class KeepTerm(NamedTuple):
    """``term``: β·mean(w·KL), 0-d with grad; ``kl``: (B,C,h,w) per-element KL (detached);
    ``stats``: floats — ``kl`` (plain mean), ``kl_kept`` (w-weighted mean where w > 0),
    ``kl_free`` (mean where w = 0, NaN if none), ``keep_fraction`` (mean w), ``term``."""

    term: torch.Tensor
    kl: torch.Tensor
    stats: dict


def check_beta(beta) -> float:
    """β as a float; ValueError unless it is a finite number >= 0: an int/float, a NumPy scalar, a 0-d
    array or a 1-element tensor (not a bool, not a str, not on the meta device)."""
    x = as_real(beta.reshape(()) if isinstance(beta, torch.Tensor) and beta.numel() == 1 else beta)
    if x is None or not math.isfinite(x) or x < 0:
        raise ValueError(f"beta must be a finite number >= 0 (the keep term's weight; 0 switches it off), got {beta!r}")
    return x


def keep_term(mu: torch.Tensor, mu_ref: torch.Tensor, sigma, weights: torch.Tensor | None = None, beta: float = 1.0) -> KeepTerm:
    """β · mean_{b,c,i,j}[w_{b,ij} (μ − μ_ref)² / (2σ²)] for one step: the keep term to ADD to the loss.

    ``mu`` (B,C,h,w) with grad (trained policy), ``mu_ref`` the reference mean (treated as a
    constant: detached), ``sigma`` σ_t > 0, ``weights`` (B,h,w), (1,h,w) or (h,w) on the sample
    grid, ≥ 0, broadcast over C (None: 1 everywhere, the global KL), ``beta`` ≥ 0.
    """
    beta = check_beta(beta)
    if not isinstance(mu, torch.Tensor) or mu.ndim != 4:
        raise ValueError(f"mu must be the step's mean (B,C,h,w), got {getattr(mu, 'shape', type(mu).__name__)}")
    kl = gaussian_kl(mu, mu_ref.detach() if isinstance(mu_ref, torch.Tensor) else mu_ref, sigma)
    B, _, h, w = mu.shape
    if weights is None:
        wt = kl.new_ones(1, h, w)
    else:
        if not isinstance(weights, torch.Tensor):
            raise TypeError(f"weights must be a torch.Tensor (B,h,w) on the sample grid, got {type(weights).__name__}")
        check_not_meta(weights=weights)
        wt = weights.detach().to(device=kl.device, dtype=torch.float32)
        wt = wt[None] if wt.ndim == 2 else wt
        if wt.ndim != 3 or wt.shape[0] not in (1, B) or tuple(wt.shape[1:]) != (h, w):
            raise ValueError(
                f"weights have shape {tuple(weights.shape)} but the means {tuple(mu.shape)} need ({B}, {h}, {w}) or (1, {h}, {w}); "
                f"make them with keep_weights_from_heatmap(map, sample_size=({h}, {w})) or pixelwise.to_sample_grid"
            )
        if not torch.isfinite(wt).all() or (wt < 0).any():
            raise ValueError("weights must be finite and >= 0 (1 = keep, 0 = free to change)")
    wk = wt[:, None] * kl  # (B,C,h,w)
    term = beta * wk.mean()
    with torch.no_grad():
        wb = wt.expand(B, h, w)[:, None].expand_as(kl)
        free = wb == 0
        stats = {
            "kl": float(kl.mean()),
            "kl_kept": float(wk.sum() / wb.sum()) if float(wb.sum()) > 0 else float("nan"),
            "kl_free": float(kl[free].mean()) if bool(free.any()) else float("nan"),
            "keep_fraction": float(wb.mean()),
            "term": float(term),
        }
    return KeepTerm(term, kl.detach(), stats)


# --------------------------------------------------------------------------------------------
# μ_θ and μ_ref of a stored transition
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def adapters_disabled(unet: torch.nn.Module):
    """Run ``unet`` as its base model: every LoRA (peft) adapter off inside the block, restored after.

    diffusers' ``unet.disable_adapters()`` only works for adapters loaded through diffusers
    (it checks ``_hf_peft_config_loaded``); this works for any peft tuner layers, including
    those added by ``pxpo_lite.lora.add_lora``. peft's ``enable_adapters`` also flips
    ``requires_grad``; every parameter's flag and each layer's on/off state are restored on
    exit, also when the block raises.
    """
    model = unwrap(unet)
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no LoRA adapters to disable; for full-UNet training pass "
            "reference_unet=keep.frozen_copy(pipe.unet) (made before training) instead"
        )
    if any(m.merged for m in layers):
        raise ValueError("the UNet's adapters are merged into its weights; disabling them would unmerge in place. Keep them unmerged while training")
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_disabled = [bool(m.disable_adapters) for m in layers]
    try:
        for m in layers:
            m.enable_adapters(False)
        yield unet
    finally:
        for m, off in zip(layers, was_disabled):
            m.enable_adapters(not off)
        for p, flag in flags:
            p.requires_grad_(flag)


def frozen_copy(unet: torch.nn.Module) -> torch.nn.Module:
    """A frozen reference UNet for full-UNet training: a deep copy in eval mode, no gradients.

    Make it **before** the first update (it costs one UNet of memory).
    """
    ref = copy.deepcopy(unwrap(unet)).eval()
    ref.requires_grad_(False)
    return ref


def step_means(pipe, traj: Trajectory, step_index: int, sample_idx=None, reference: bool = False,
               reference_unet: torch.nn.Module | None = None) -> StepGaussian:
    """μ, σ_t and per-element log-prob of stored step ``step_index`` for samples ``sample_idx``.

    ``reference=False``: the trained policy, WITH gradients (one UNet forward gives both μ_θ
    for the keep term and the log-prob for the policy gradient; the log-prob equals
    ``sampling.step_log_prob`` bit for bit). ``reference=True``: μ_ref under ``torch.no_grad``,
    from ``reference_unet`` if given, else from ``pipe.unet`` with its LoRA adapters disabled.
    Guidance, η and the schedule are the trajectory's. Keep the UNet in eval mode (no dropout).
    """
    return steps_means(pipe, traj, [step_index], sample_idx, reference, reference_unet)[0]


def steps_means(pipe, traj: Trajectory, step_indices, sample_idx=None, reference: bool = False,
                reference_unet: torch.nn.Module | None = None) -> list:
    """:func:`step_means` for several stored steps of the same samples from ONE UNet forward: a list of
    :class:`StepGaussian`, one per step index, from ``sampling.step_gaussians`` — the path
    ``sampling.step_log_probs`` reads too."""
    if reference_unet is not None and not reference:
        raise ValueError("reference_unet is only used with reference=True (it gives μ_ref); drop it for the trained policy's μ_θ")
    if not reference:
        return step_gaussians(pipe, traj, step_indices, sample_idx)
    with torch.no_grad(), (contextlib.nullcontext() if reference_unet is not None else adapters_disabled(pipe.unet)):
        return step_gaussians(pipe, traj, step_indices, sample_idx, unet=reference_unet)


# --------------------------------------------------------------------------------------------
# The keep term of one update (``update.policy_gradient_step(..., keep=Keep(...))``)
# --------------------------------------------------------------------------------------------
@dataclass
class Keep:
    """The per-pixel keep term of an update: β·mean(w·KL(π_θ ‖ π_ref)) per (samples, step) pair.

    ``beta`` ≥ 0 (0: off — no extra forward, the update is the plain one); ``weights``: None
    (w ≡ 1, the global KL of notebooks 03/04) or per-sample maps (B,h,w) / (1,h,w) on the sample
    grid, ≥ 0, 1 = keep, 0 = free to change (:func:`keep_weights_from_heatmap` /
    :func:`keep_weights_from_mask`; notebook 06); ``reference_unet``: the frozen reference for
    full-UNet training (:func:`frozen_copy`), None for LoRA (adapters disabled give μ_ref).
    """

    beta: float = 0.0
    weights: torch.Tensor | None = None
    reference_unet: torch.nn.Module | None = None

    def __post_init__(self):
        self.beta = check_beta(self.beta)
        if self.weights is not None:
            if not isinstance(self.weights, torch.Tensor) or self.weights.ndim != 3:
                raise ValueError(f"Keep.weights must be None or a tensor (B,h,w) on the sample grid, got "
                                 f"{getattr(self.weights, 'shape', type(self.weights).__name__)}; make it with keep.keep_weights_from_heatmap")
            if not torch.isfinite(self.weights).all() or (self.weights < 0).any():
                raise ValueError("Keep.weights must be finite and >= 0 (1 = keep, 0 = free to change)")

    @property
    def active(self) -> bool:
        return self.beta > 0

    def term(self, pol: StepGaussian, ref: StepGaussian, idx: torch.Tensor) -> KeepTerm:
        """The keep term of one pair from the trained (``pol``) and reference (``ref``) step means."""
        w = self.weights
        if w is not None and w.shape[0] > 1:
            w = w[idx.to(w.device)]
        return keep_term(pol.mean, ref.mean, pol.sigma, w, self.beta)

    def check_reference(self, pipe, params) -> None:
        """Refuse a reference that shares weights with the trained model: μ_ref would move with μ_θ
        and the keep term would stay exactly 0 without a word (e.g. ``Keep(beta, None, pipe.unet)``)."""
        if self.reference_unet is None:
            return
        ptrs = lambda ps: {p.data_ptr() for p in ps if p.numel()}  # noqa: E731
        shared = ptrs(unwrap(self.reference_unet).parameters()) & (ptrs(params) | ptrs(unwrap(pipe.unet).parameters()))
        if shared:
            raise ValueError(
                f"Keep.reference_unet shares {len(shared)} weight tensor(s) with the trained pipe.unet, so the reference "
                "moves with the policy and the keep term is always 0; pass reference_unet=keep.frozen_copy(pipe.unet) "
                "made before training (full UNet), or None with LoRA (the adapters switched off give the reference)")
