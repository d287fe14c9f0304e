"""Region-focused and multi-channel feedback: a small composable API over per-pixel reward maps.

A reward function here is what ``pxpo_lite.rewards`` uses: ``fn(images, prompts=None)`` with
images (B,3,H,W) in [0,1], returning a map (B,H,W) (higher is better) or a vector (B,). PXPO
turns a map into per-pixel credit, so feedback can be *about a region*:

* :func:`restrict` — the reward inside a region, 0 outside::

      shirt_less_blue = restrict(rewards.colour_reward_map, "shirt")       # "less blue on the shirt only"
      red_hair = restrict(towards_colour("red"), "hair")                    # "hair colour towards red"

  A region is a part name of the world (``world.PARTS``; found by the shipped segmenter on the
  images being scored), several names, a painted mask (H,W) / (B,H,W) in [0,1], or a callable
  ``images -> mask``. Pixels outside get no reward and so no policy-gradient push; to also
  *keep* them, add the keep term there: ``keep.keep_weights_from_mask(region_mask(...), ...)``.
* :func:`towards_colour` — per pixel, −‖rgb − target‖ / √3 ∈ [−1, 0] (0 at the target colour).
* :func:`painted` — a fixed painted map (the canvas's) as a reward channel.
* :func:`per_part_average` — per-region credit: each pixel gets the mean reward of its segmented
  part (between DDPO's one number per image and PXPO's one per pixel).
* :class:`MultiChannelReward` — several named rewards, weighted into one map
  r = Σ_k w_k r_k; each channel's per-image mean reward of the last call is kept in
  ``last_means`` so a trainer can report every channel separately::

      reward = MultiChannelReward({"colour": (rewards.colour_reward_map, 1.0),
                                   "hair": (rewards.hair_reward_map, 0.5),
                                   "painted": (painted(heatmap), 2.0)})
      r = reward(images, prompts)          # (B,H,W)
      reward.channel_means()               # {"colour": -0.12, "hair": -0.30, "painted": 0.05}

Introduced in ``notebooks/05_pxpo_segmentation_feedback.ipynb`` (regions) and
``notebooks/06_human_feedback_canvas.ipynb`` (painted and multi-channel feedback).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from .config_checks import as_real
from .rewards import check_images, check_reward, default_segmenter
from .world import BACKGROUNDS, HAIR_COLOURS, PART_ID, PARTS, SHIRTS

RewardFn = Callable[..., torch.Tensor]

#: Named colours (RGB 0..255) accepted by :func:`towards_colour`: the world's palettes. A name in
#: several palettes ("red", "blue", ...) means the hair colour, then the shirt's, then the background's.
COLOURS: dict[str, tuple[int, int, int]] = {**BACKGROUNDS, **SHIRTS, **HAIR_COLOURS}

def _segmenter(device, segmenter=None) -> torch.nn.Module:
    return segmenter if segmenter is not None else default_segmenter(device)  # the one cached loader (rewards.py)


@torch.no_grad()
def part_labels(images: torch.Tensor, segmenter=None, region_hint: str = "") -> torch.Tensor:
    """(B,H,W) int64 part ids (``world.PART_ID``) of images (B,3,H,W), by the segmenter's argmax.

    Raises ValueError unless the segmenter gives one logit per part of ``world.PARTS``: with fewer
    classes a part would never be found (an all-zero region, a silent zero reward)."""
    images = check_images(images)
    seg = _segmenter(images.device, segmenter)
    dev = next(seg.parameters()).device
    logits = seg(images.to(dev).float())
    if logits.ndim != 4 or logits.shape[1] != len(PARTS):
        raise ValueError(
            f"the segmenter gives {logits.shape[1] if logits.ndim == 4 else '?'} classes (logits of shape "
            f"{tuple(logits.shape)}), but part ids are the world's {len(PARTS)} parts {dict(PART_ID)}; "
            f"{region_hint}pass a segmenter trained on world.PARTS (models.load_segmenter()) or a mask instead")
    return logits.argmax(dim=1).to(images.device)


def _part_ids(region) -> list[int]:
    names = [region] if isinstance(region, str) else list(region)
    bad = [n for n in names if not isinstance(n, str) or n not in PART_ID]
    if bad or not names:
        raise ValueError(f"region names must be parts of the world {list(PARTS)}, got {region!r}")
    return [PART_ID[n] for n in names]


def region_mask(region, images: torch.Tensor, segmenter=None) -> torch.Tensor:
    """The region as a float mask (B,H,W) in [0,1] for ``images`` (B,3,H,W).

    ``region``: a part name (``"shirt"``) or a list/tuple of names (their union), found by the
    segmenter on these images; a painted mask (H,W) or (B,H,W) in [0,1] (tensor or NumPy); or a
    callable ``images -> mask``.
    """
    images = check_images(images)
    B, _, H, W = images.shape
    if isinstance(region, str) or (isinstance(region, (list, tuple)) and region and all(isinstance(r, str) for r in region)):
        labels = part_labels(images, segmenter, f"region {region!r} is part id(s) {_part_ids(region)}: ")
        ids = torch.tensor(_part_ids(region), device=labels.device)
        return torch.isin(labels, ids).float()
    if callable(region):
        mask = region(images)
        what = f"the region callable {getattr(region, '__name__', region)!r} returned"
    elif isinstance(region, (torch.Tensor, np.ndarray)):
        mask, what = region, "the region mask has"
    else:
        raise TypeError(f"region must be a part name from {list(PARTS)}, a list of them, a mask (H,W)/(B,H,W) or a callable, "
                        f"got {type(region).__name__}")
    mask = torch.as_tensor(mask).to(device=images.device, dtype=torch.float32)
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or mask.shape[0] not in (1, B) or tuple(mask.shape[1:]) != (H, W):
        raise ValueError(f"{what} shape {tuple(mask.shape)}; the images {tuple(images.shape)} need ({H}, {W}) or ({B}, {H}, {W})")
    if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise ValueError(f"{what} values outside [0, 1]; a region mask is 1 inside, 0 outside (soft edges in between)")
    return mask.expand(B, H, W)


def _map(fn: RewardFn, images, prompts, name: str) -> torch.Tensor:
    """Call a reward and return it as a map (B,H,W): a scalar reward (B,) fills its image."""
    r = check_reward(fn(images, prompts), images, name=name).float()
    B, _, H, W = images.shape
    return r[:, None, None].expand(B, H, W) if r.ndim == 1 else r


def _name(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def restrict(reward_fn: RewardFn, region, segmenter=None) -> RewardFn:
    """``reward_fn`` inside ``region`` (see :func:`region_mask`), 0 outside: r'(x) = r(x) · m(x).

    Example — "less blue on the shirt only"::

        fn = restrict(rewards.colour_reward_map, "shirt")
        fn(images)   # (B,H,W): −blueness on shirt pixels, exactly 0 elsewhere

    A scalar (B,) reward is spread over the region. The mask of a part name is recomputed on
    every call, on the images being scored.
    """
    if not callable(reward_fn):
        raise TypeError(f"reward_fn must be a reward function images, prompts -> (B,H,W), got {type(reward_fn).__name__}")
    if isinstance(region, (str, list, tuple)):
        _part_ids(region)  # fail now, not at the first call

    def fn(images, prompts=None):
        images = check_images(images)
        return _map(reward_fn, images, prompts, _name(reward_fn)) * region_mask(region, images, segmenter)

    label = region if isinstance(region, (str, list, tuple)) else _name(region) if callable(region) else "mask"
    fn.__name__ = f"restrict({_name(reward_fn)}, {label!r})"
    fn.is_map = True
    return fn


def _target_rgb(colour) -> torch.Tensor:
    if isinstance(colour, str):
        if colour not in COLOURS:
            raise ValueError(f"unknown colour {colour!r}; use one of {sorted(COLOURS)} or an (r, g, b) tuple")
        return torch.tensor(COLOURS[colour], dtype=torch.float32) / 255
    vals = list(colour) if isinstance(colour, (list, tuple, np.ndarray, torch.Tensor)) else None
    if vals is None or len(vals) != 3:
        raise ValueError(f"colour must be a name or 3 values (r, g, b): ints 0..255 or floats in [0, 1], got {colour!r}")
    vals = [v.item() if hasattr(v, "item") else v for v in vals]
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
        if not all(0 <= v <= 255 for v in vals):
            raise ValueError(f"integer colour values must be in 0..255, got {colour!r}")
        return torch.tensor(vals, dtype=torch.float32) / 255
    if all(isinstance(v, (float, np.floating)) and math.isfinite(v) and 0 <= v <= 1 for v in vals):
        return torch.tensor(vals, dtype=torch.float32)
    raise ValueError(f"colour must be 3 ints in 0..255 or 3 floats in [0, 1] (not mixed), got {colour!r}")


def towards_colour(colour) -> RewardFn:
    """A map reward pulling each pixel towards ``colour``: −‖rgb − target‖₂ / √3 ∈ [−1, 0].

    ``colour``: a name (``COLOURS``: the world's palettes, e.g. ``"red"``), 3 ints 0..255 or 3
    floats in [0, 1]. Example — "hair colour towards red": ``restrict(towards_colour("red"), "hair")``.
    """
    target = _target_rgb(colour)

    def fn(images, prompts=None):
        images = check_images(images).float()
        t = target.to(images.device)[None, :, None, None]
        return -((images - t) ** 2).sum(dim=1).sqrt() / math.sqrt(3)

    fn.__name__ = f"towards_colour({colour!r})"
    fn.is_map = True
    return fn


def painted(heatmap) -> RewardFn:
    """A painted map h ∈ [−1, 1] ((H,W) for every image, or (B,H,W)) as a reward channel.

    Example: ``painted(canvas.heatmap)``; the map does not depend on the images.
    """
    h = torch.as_tensor(np.asarray(heatmap, dtype=np.float32) if not isinstance(heatmap, torch.Tensor) else heatmap).float()
    if h.ndim == 2:
        h = h[None]
    if h.ndim != 3 or not torch.isfinite(h).all() or h.min() < -1 - 1e-4 or h.max() > 1 + 1e-4:
        raise ValueError(f"heatmap must be (H,W) or (B,H,W) with finite values in [-1, 1], got shape {tuple(h.shape)}")
    h = h.clamp(-1, 1)

    def fn(images, prompts=None):
        images = check_images(images)
        B, _, H, W = images.shape
        if h.shape[0] not in (1, B) or tuple(h.shape[1:]) != (H, W):
            raise ValueError(f"the painted map is {tuple(h.shape)} but the images are {tuple(images.shape)}; paint at the image's size")
        return h.to(images.device).expand(B, H, W)

    fn.__name__ = "painted"
    fn.is_map = True
    return fn


def per_part_average(reward_fn: RewardFn, segmenter=None) -> RewardFn:
    """Per-region credit: each pixel gets the mean of ``reward_fn``'s map over its segmented part.

    r'_{b,ij} = mean{ r_{b,kl} : part(k,l) = part(i,j) } in image b. Its image mean equals the
    original's, so DDPO sees the same reward; PXPO gets one credit per part instead of per pixel.
    """
    if not callable(reward_fn):
        raise TypeError(f"reward_fn must be a reward function, got {type(reward_fn).__name__}")

    def fn(images, prompts=None):
        images = check_images(images)
        r = _map(reward_fn, images, prompts, _name(reward_fn))
        labels = part_labels(images, segmenter)
        onehot = torch.nn.functional.one_hot(labels, len(PARTS)).float()  # (B,H,W,P)
        mean = (onehot * r[..., None]).sum(dim=(1, 2)) / onehot.sum(dim=(1, 2)).clamp(min=1)  # (B,P)
        return torch.gather(mean, 1, labels.flatten(1)).view_as(r)

    fn.__name__ = f"per_part_average({_name(reward_fn)})"
    fn.is_map = True
    return fn


class MultiChannelReward:
    """Several named reward channels weighted into one map: r = Σ_k w_k r_k, (B,H,W).

    ``channels``: ``{name: (reward_fn, weight)}``; a scalar (B,) channel fills its image. After
    each call ``last_means[name]`` is that channel's per-image mean reward (B,), unweighted,
    ``last_maps[name]`` its map; :meth:`channel_means` gives batch means as floats for logs.
    """

    is_map = True

    def __init__(self, channels: Mapping[str, tuple]):
        if not isinstance(channels, Mapping) or not channels:
            raise ValueError(f"channels must be a non-empty dict {{name: (reward_fn, weight)}}, got {channels!r}")
        self.channels: dict[str, tuple[RewardFn, float]] = {}
        for name, spec in channels.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"channel names must be non-empty str, got {name!r}")
            if not isinstance(spec, (tuple, list)) or len(spec) != 2 or not callable(spec[0]):
                raise ValueError(f"channel {name!r} must be (reward_fn, weight), got {spec!r}")
            fn, weight = spec
            w = as_real(weight)  # NumPy scalars and 0-d arrays/tensors are numbers; a bool or str is not
            if w is None or not math.isfinite(w):
                raise ValueError(f"channel {name!r} has weight {weight!r}; it must be a finite number")
            self.channels[name] = (fn, w)
        self.last_means: dict[str, torch.Tensor] = {}
        self.last_maps: dict[str, torch.Tensor] = {}
        self.__name__ = "multi(" + ", ".join(f"{w:g}·{n}" for n, (_, w) in self.channels.items()) + ")"

    def __call__(self, images, prompts: Sequence[str] | None = None) -> torch.Tensor:
        images = check_images(images)
        total, means, maps = None, {}, {}
        for name, (fn, weight) in self.channels.items():
            r = _map(fn, images, prompts, f"channel {name!r}")
            maps[name], means[name] = r.detach(), r.detach().mean(dim=(1, 2))
            total = weight * r if total is None else total + weight * r
        self.last_means, self.last_maps = means, maps
        return total

    def channel_means(self) -> dict[str, float]:
        """Each channel's mean reward over the last batch (unweighted), e.g. for a training log."""
        if not self.last_means:
            raise RuntimeError("no reward computed yet: call the MultiChannelReward on a batch of images first")
        return {name: float(m.mean()) for name, m in self.last_means.items()}
