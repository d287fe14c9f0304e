"""Reward functions on images: per-pixel reward maps (PXPO) and scalar rewards (DDPO).

Every reward function takes ``images`` (B,3,H,W) float in [0,1] and ``prompts`` (a list of B
str, or None when the reward ignores them) and returns either a **map** (B,H,W) — one reward
per pixel, higher is better — or a **vector** (B,). A scalar reward is a map's mean
(:func:`scalar`), which is the bridge between the two methods: DDPO sees the mean, PXPO the map.

* :func:`colour_reward_map` — "less blue" (the paper's colour experiment). What counts as blue:
  the amount by which a pixel's blue channel exceeds the brighter of its red and green channels,

      blueness = clip(B − max(R, G), 0, 1),   reward = −blueness ∈ [−1, 0].

  Greys, white and black (R = G = B) are not blue (0); warm colours, greens, skin are not blue
  (0); a saturated blue (45, 85, 215) scores −0.51, light blue (140, 195, 240) −0.18, navy
  (25, 35, 100) −0.25, pure (0, 0, 255) −1. It is bounded, piecewise linear in the pixel's
  colour and depends on that pixel only — exactly the local feedback PXPO exploits.
* :func:`blue_reward` — its image mean, the scalar DDPO gets.
* :func:`jpeg_compressibility` — as DDPO: −(size of the image as JPEG quality 95, in kB).
* :func:`hair_reward_map` — "remove hair" (the paper's segmentation experiment): −P(hair) per
  pixel from the shipped segmenter (softmax over its parts), run under ``torch.no_grad``,
  batched. Range [−1, 0].

All are fast next to sampling (measured in ``benchmarks/bench_train_step.py``).

Introduced in ``notebooks/02_ddpo.ipynb``; the maps are the stars of notebooks 04 and 05.
"""
from __future__ import annotations

import functools
import io
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .devices import check_not_meta
from .models import load_segmenter
from .world import PART_ID

RewardFn = Callable[..., torch.Tensor]


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------
#: The largest finite float32: a reward above it (in magnitude) becomes inf once training casts it.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def check_images(images) -> torch.Tensor:
    """Images must be a finite float tensor (B,3,H,W) in [0,1] (a tolerance of 1e-3 for rounding)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor (B,3,H,W) in [0,1], got {type(images).__name__}")
    check_not_meta(images=images)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B,3,H,W) in [0,1], got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be float in [0,1], got dtype {images.dtype}; use images.float() / 255")
    bad = ~torch.isfinite(images.detach()).flatten(1).all(dim=1)
    if bad.any():
        raise ValueError(
            f"images has NaN/inf values in image(s) {bad.nonzero().flatten().tolist()}; a reward of such an image "
            "means nothing. Images must be finite in [0,1]: check the sampler (e.g. eta <= 1) or the decoder."
        )
    if images.numel() and (images.min() < -1e-3 or images.max() > 1 + 1e-3):
        raise ValueError(
            f"images must be in [0,1], got values in [{float(images.min()):.3f}, {float(images.max()):.3f}]; "
            "model samples in [-1,1] convert with x / 2 + 0.5"
        )
    return images


def check_reward(reward, images, kind: str | None = None, name: str = "reward", prompts=None) -> torch.Tensor:
    """The one reward validator: ``reward`` for ``images`` must be (B,) or (B,H,W), real and finite.

    ``kind`` "scalar" or "map" insists on one of the two shapes. ``images`` (B,3,H,W) fixes B, H, W;
    ``images=None`` checks only the ranks (used on rewards without their images, e.g. by the
    advantages). Never broadcasts: a wrong batch or size is an error naming both shapes. A
    NaN/inf, or a value too large for float32 (|r| > 3.4e38, which training would turn into
    inf), is a ValueError naming the sample indices (and their prompts when ``prompts`` is given).
    Returns ``reward`` unchanged.
    """
    if not isinstance(reward, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (B,) or (B,H,W), got {type(reward).__name__}")
    check_not_meta(**{name: reward})
    if kind not in (None, "scalar", "map"):
        raise ValueError(f"kind must be None, 'scalar' or 'map', got {kind!r}")
    if images is None:
        ranks = {"scalar": (1,), "map": (3,), None: (1, 3)}[kind]
        if reward.ndim not in ranks:
            raise ValueError(
                f"{name} must be " + " or ".join({1: "(B,) scalars", 3: "(B,H,W) maps"}[r] for r in ranks)
                + f", got shape {tuple(reward.shape)}; pass one reward (or one map) per sample"
            )
        B = reward.shape[0]
    else:
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(f"images must be a tensor (B,3,H,W), got {getattr(images, 'shape', type(images).__name__)}")
        B, _, H, W = images.shape
        shapes = {"scalar": [(B,)], "map": [(B, H, W)], None: [(B,), (B, H, W)]}[kind]
        if tuple(reward.shape) not in shapes:
            raise ValueError(
                f"{name} has shape {tuple(reward.shape)} but images are {tuple(images.shape)}; expected "
                + " or ".join(str(s) for s in shapes)
                + " (one reward per image, or one per pixel at image resolution)"
            )
    if B == 0:
        raise ValueError(f"{name} is empty (0 samples); sample at least one image before computing rewards")
    if reward.is_complex() or reward.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got dtype {reward.dtype}")
    flat = reward.detach().reshape(B, -1)
    if not flat.is_floating_point():
        return reward  # integers are finite and fit in float32 up to ±2^63 (< 3.4e38)
    bad = ~torch.isfinite(flat).all(dim=1)
    if bad.any():
        raise ValueError(
            f"{name} has NaN/inf for {_who(bad, prompts)}; rewards must be finite (check the reward "
            "function on these images, e.g. a division by zero or log of 0; inf also comes from a float32 "
            "overflow, |r| > 3.4e38)"
        )
    big = (flat.abs() > FLOAT32_MAX).any(dim=1)
    if big.any():
        raise ValueError(
            f"{name} is too large for {_who(big, prompts)}: |r| up to {float(flat.abs().max()):.3g} "
            f"overflows float32 (max {FLOAT32_MAX:.3g}), which training uses; rescale the reward function "
            "(e.g. divide by a constant or take a log)"
        )
    return reward


def _who(mask: torch.Tensor, prompts=None, limit: int = 5) -> str:
    """"sample(s) [0, 3]" or "sample 0 (prompt 'a'), sample 3 (prompt 'b')": flagged indices, for messages."""
    idx = mask.nonzero().flatten().tolist()
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    if prompts is None:
        return f"sample(s) {idx[:limit]}{more}"
    return ", ".join(f"sample {i} (prompt {prompts[i]!r})" for i in idx[:limit]) + more


def _check_prompts(prompts, images) -> None:
    if prompts is not None and len(prompts) != len(images):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts; pass one prompt per image or None")


# --------------------------------------------------------------------------------------------
# Colour: "less blue"
# --------------------------------------------------------------------------------------------
def blueness(images: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) -> (B,H,W) in [0,1]: clip(B − max(R, G), 0, 1)."""
    r, g, b = images.unbind(dim=1)
    return (b - torch.maximum(r, g)).clamp(0.0, 1.0)


def colour_reward_map(images: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
    """"Less blue" per pixel: −blueness ∈ [−1, 0], (B,H,W). Prompts are ignored."""
    images = check_images(images)
    _check_prompts(prompts, images)
    return -blueness(images.float())


def scalar(reward_fn: RewardFn) -> RewardFn:
    """Turn a map reward (B,H,W) into a scalar one (B,): the mean over pixels. Scalars pass through."""

    @functools.wraps(reward_fn)
    def fn(images, prompts=None, **kwargs):
        r = reward_fn(images, prompts, **kwargs)
        check_reward(r, images, name=f"{getattr(reward_fn, '__name__', 'reward')} output")
        return r.mean(dim=(1, 2)) if r.ndim == 3 else r

    fn.__name__ = f"scalar({getattr(reward_fn, '__name__', 'reward')})"
    fn.is_map = False
    return fn


def blue_reward(images: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
    """The image mean of :func:`colour_reward_map` (B,): DDPO's "less blue" reward."""
    return colour_reward_map(images, prompts).mean(dim=(1, 2))


# --------------------------------------------------------------------------------------------
# JPEG compressibility (DDPO's first task)
# --------------------------------------------------------------------------------------------
def jpeg_size_kb(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """(B,) size in kB (1000 bytes) of each image saved as JPEG at ``quality`` (as ddpo-pytorch)."""
    images = check_images(images)
    arr = (images.detach().float().cpu() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    sizes = []
    for im in arr:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000)
    return torch.tensor(sizes, dtype=torch.float32, device=images.device)


def jpeg_compressibility(images: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
    """−JPEG size in kB (B,): higher = more compressible (flat colours, no noise). As DDPO."""
    _check_prompts(prompts, images)
    return -jpeg_size_kb(images)


# --------------------------------------------------------------------------------------------
# Segmentation: "remove hair"
# --------------------------------------------------------------------------------------------
_SEGMENTERS: dict[str, torch.nn.Module] = {}


def default_segmenter(device="cpu") -> torch.nn.Module:
    """The shipped segmenter (:func:`pxpo_lite.models.load_segmenter`) on ``device``, loaded once per
    device and shared by every function that takes ``segmenter=None`` (rewards, regions, synthetic
    feedback, prompt fidelity, the experiments' tasks). It is in eval mode and used without gradients;
    to train or modify one, load your own copy with ``models.load_segmenter()``."""
    key = str(torch.device(device))
    if key not in _SEGMENTERS:
        _SEGMENTERS[key] = load_segmenter(device)
    return _SEGMENTERS[key]


_default_segmenter = default_segmenter  # the older private name (benchmarks/bench_train_step.py uses it)


@torch.no_grad()
def hair_probability(images: torch.Tensor, segmenter=None, batch_size: int = 256) -> torch.Tensor:
    """(B,H,W) P(hair) per pixel from the segmenter (softmax over its parts), batched, no grad."""
    images = check_images(images)
    seg = segmenter if segmenter is not None else _default_segmenter(images.device)
    dev = next(seg.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        logits = seg(images[i : i + batch_size].to(dev).float())
        out.append(logits.softmax(dim=1)[:, PART_ID["hair"]].to(images.device))
    return torch.cat(out) if out else images.new_zeros((0,) + images.shape[2:])


def hair_reward_map(images: torch.Tensor, prompts: Sequence[str] | None = None, segmenter=None) -> torch.Tensor:
    """"Remove hair" per pixel: −P(hair) ∈ [−1, 0], (B,H,W). Loads the shipped segmenter if none given."""
    _check_prompts(prompts, images)
    return -hair_probability(images, segmenter)


colour_reward_map.is_map = True
hair_reward_map.is_map = True
blue_reward.is_map = False
jpeg_compressibility.is_map = False

REWARDS: dict[str, RewardFn] = {
    "blue": blue_reward,
    "colour_map": colour_reward_map,
    "jpeg": jpeg_compressibility,
    "hair_map": hair_reward_map,
    "hair": scalar(hair_reward_map),
}
"""Rewards by name (``Trainer`` accepts a name or a function)."""


def get_reward(name_or_fn) -> RewardFn:
    """A reward function by name (see ``REWARDS``) or the function itself."""
    if callable(name_or_fn):
        return name_or_fn
    if name_or_fn not in REWARDS:
        raise ValueError(f"unknown reward {name_or_fn!r}; choose one of {sorted(REWARDS)} or pass a function")
    return REWARDS[name_or_fn]


def is_map_reward(reward_fn) -> bool | None:
    """True/False when the function declares ``is_map``; None when unknown (decided from its output)."""
    return getattr(reward_fn, "is_map", None)
