"""Advantages: turn rewards (one per image, or one per pixel) into normalised, clipped learning signals.

A policy-gradient step pushes up the log-probability of every sampled trajectory in proportion
to its **advantage** A = (r − baseline) / scale: better than usual → more likely, worse → less.

* **Scalar rewards (DDPO)**, as in ddpo-pytorch: a buffer of the last ``buffer_size`` rewards
  *per prompt*; once a prompt has ``min_count`` rewards its own mean/std are used, before that
  the statistics of the whole batch::

      A_b = clip( (r_b − mean_{prompt(b)}) / (std_{prompt(b)} + ε), −A_max, A_max )

  Per-prompt statistics matter because some prompts are simply easier ("a grey background"
  has no blue to remove): without them the policy learns "draw easy prompts", not "do better
  on this prompt".

* **Reward maps (PXPO)** — our documented choice (the paper does not say): the same tracker,
  but the baseline is a *per-pixel mean map* and the scale one *scalar* std::

      A_b[i,j] = clip( (r_b[i,j] − m[i,j]) / (s + ε), −A_max, A_max )
      m[i,j] = mean of r[i,j] over the group (the prompt's buffer, or the batch)
      s      = std of all centred values r[i,j] − m[i,j] of the group (one number)

  A per-pixel baseline removes what every image of a prompt has in common at that pixel (a
  corner that is always background), so only *differences between samples* push. A single
  scalar std (not one per pixel) keeps pixels that barely vary (std ≈ 0) from exploding.
  With constant maps r_b[i,j] = r_b this reduces *exactly* to the scalar advantages above, so
  DDPO is PXPO with constant maps (tested).

* **Groups (GRPO, Flow-GRPO)**: G samples of each prompt, normalised by the statistics of their
  own group in the current batch, nothing carried over (:class:`GroupStatTracker`,
  :func:`group_advantages`, :func:`group_pixel_advantages` — maps by the same per-pixel-mean,
  one-std rule). A group of one sample is an error.

**No signal** (all kinds). Normalising by the std turns *any* difference into advantages of
size ~1, however small, so a group whose rewards differ only by noise would be trained on that
noise. The rule, relative to the rewards' own scale::

      no signal  ⇔  s ≤ ε + rel_tol · max |r|      (max over the group; rel_tol = REL_TOL = 1e-4)

Differences below 1e-4 of the rewards' magnitude are treated as none: float32 rounding is
≈ 6e-8 of the magnitude and a reward network's numerical noise ≈ 1e-6–1e-5. So maps of
magnitude 1000 that differ by float rounding, or maps of magnitude 1 where one pixel differs by
1e-3 (s ≈ 1e-5), give no signal, while a reward's real spread passes. If a reward
carries a large constant offset (say 1000 ± 0.05) subtract it in the reward function. Without
signal — e.g. all-zero hair maps on bald prompts — we warn (:class:`NoSignalWarning`) and
return zeros (never divide by zero).

**A control without feedback** (:func:`uninformed_map`, :func:`spread_advantages`): the image's
scalar advantage A_b spread over its pixels by a smooth random map m_b of mean 1 that knows nothing
about the reward, A_b[i,j] = A_b · m_b[i,j]. It trains with the PXPO loss, so it separates "per-pixel
credit helps because of the feedback" from "any spatial reweighting helps". m ≡ 1 gives DDPO.

Rewards are checked by :func:`pxpo_lite.rewards.check_reward`: an empty batch, a NaN/inf, or a
value too large for float32 raises a ValueError naming the samples and their prompts.

Introduced in ``notebooks/02_ddpo.ipynb`` (scalar) and ``notebooks/04_pxpo_colour_feedback.ipynb`` (maps).
"""
from __future__ import annotations

import warnings
from collections import deque
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .rewards import check_reward

EPS = 1e-6
"""ε added to every std (ddpo-pytorch uses 1e-6); the absolute part of the no-signal threshold."""

REL_TOL = 1e-4
"""The relative part of the no-signal threshold: a group's std ≤ EPS + REL_TOL · max|r| is no signal."""


class NoSignalWarning(UserWarning):
    """Every reward of a group is the same: its advantages are all zero and nothing is learned."""


def _as_float64(rewards, what: str = "rewards") -> torch.Tensor:
    """Rewards as a float64 CPU tensor (float64, so a too-large value is reported as such, not as inf)."""
    if isinstance(rewards, torch.Tensor):
        return rewards.detach().to(device="cpu", dtype=torch.float64)
    try:
        return torch.as_tensor(np.asarray(rewards, dtype=np.float64))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} must be a tensor/array of numbers, got {type(rewards).__name__} ({e})") from None


def _checked_rewards(prompts, rewards) -> tuple[torch.Tensor, torch.device | str]:
    """``rewards`` as float64 after the checks every tracker makes (one str prompt per reward; shape,
    empty, NaN/inf, too large), and the device to return advantages on."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of str (one per sample), got {type(prompts).__name__}")
    device = rewards.device if isinstance(rewards, torch.Tensor) else "cpu"
    r64 = _as_float64(rewards)
    if r64.ndim in (1, 3) and len(prompts) != len(r64):
        raise ValueError(f"got {len(r64)} rewards but {len(prompts)} prompts; pass one prompt per reward")
    check_reward(r64, None, name="rewards", prompts=list(prompts))
    return r64, device


def no_signal(std: float, scale: float, eps: float = EPS, rel_tol: float = REL_TOL) -> bool:
    """True when a group's std is noise: std ≤ eps + rel_tol · scale, scale = max |r| (module docstring)."""
    return std <= eps + rel_tol * scale


def clip_advantages(advantages: torch.Tensor, clip_max: float | None) -> torch.Tensor:
    """A ← clip(A, −clip_max, clip_max) (ddpo-pytorch: ``adv_clip_max = 5``); None: no clipping."""
    if clip_max is None:
        return advantages
    if isinstance(clip_max, bool) or not isinstance(clip_max, (int, float)) or not clip_max > 0:
        raise ValueError(f"clip_max must be a positive number (ddpo-pytorch: 5) or None (no clipping), got {clip_max!r}")
    return advantages.clamp(-clip_max, clip_max)


class PerPromptStatTracker:
    """Per-prompt running statistics of rewards (scalars or maps), as in ddpo-pytorch.

    ``update(prompts, rewards)`` stores the new rewards in each prompt's buffer (the last
    ``buffer_size``) and returns their advantages (not clipped; see :func:`clip_advantages`):
    normalised by the prompt's own buffer once it holds ``min_count`` rewards, by the current
    batch's statistics before that. ``rewards`` is (B,) for DDPO or (B,H,W) for PXPO (then
    the baseline is a per-pixel mean map and the scale one scalar std; module docstring).
    ``buffer_size=None`` keeps everything; ``min_count=0`` always uses the prompt's buffer.
    A group whose std is ≤ ``eps + rel_tol · max|r|`` has no signal (module docstring).
    """

    def __init__(self, buffer_size: int | None = 16, min_count: int = 16, eps: float = EPS, rel_tol: float = REL_TOL):
        if buffer_size is not None and (not isinstance(buffer_size, int) or buffer_size < 1):
            raise ValueError(f"buffer_size must be a positive int or None, got {buffer_size!r}")
        if not isinstance(min_count, int) or min_count < 0:
            raise ValueError(f"min_count must be an int >= 0, got {min_count!r}")
        if buffer_size is not None and min_count > buffer_size:
            raise ValueError(
                f"min_count={min_count} > buffer_size={buffer_size}: a prompt's buffer could never reach "
                "min_count, so per-prompt statistics would never be used; use min_count <= buffer_size"
            )
        for name, v in (("eps", eps), ("rel_tol", rel_tol)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        self.buffer_size, self.min_count, self.eps, self.rel_tol = buffer_size, min_count, eps, rel_tol
        self.buffers: dict[str, deque] = {}

    # -- statistics of a group: baseline (per-element mean over samples), one scalar std, scale --
    @staticmethod
    def _stats(group: np.ndarray) -> tuple[np.ndarray, float, float]:
        mean = group.mean(axis=0)  # () for scalars, (H,W) for maps
        std = float((group - mean).std())  # one number
        return mean, std, float(np.abs(group).max())

    def update(self, prompts: Sequence[str], rewards) -> torch.Tensor:
        r64, device = _checked_rewards(prompts, rewards)
        r = r64.numpy()
        first = next(iter(self.buffers.values()), None)
        if first and np.shape(first[0]) != r.shape[1:]:
            raise ValueError(
                f"this tracker holds rewards of shape {np.shape(first[0])} but got {r.shape[1:]}; "
                "use one tracker per reward type (scalar vs map)"
            )
        prompts = list(prompts)
        batch_stats = self._stats(r)
        adv = np.zeros_like(r)
        silent: list[str] = []
        for p in dict.fromkeys(prompts):  # unique, in order
            idx = np.array([i for i, q in enumerate(prompts) if q == p])
            buf = self.buffers.setdefault(p, deque(maxlen=self.buffer_size))
            buf.extend(r[idx])
            mean, std, scale = self._stats(np.stack(buf)) if len(buf) >= self.min_count and len(buf) > 1 else batch_stats
            if no_signal(std, scale, self.eps, self.rel_tol):
                silent.append(p)  # no signal: leave zeros
            else:
                adv[idx] = (r[idx] - mean) / (std + self.eps)
        if silent:
            warnings.warn(
                f"no reward signal for {len(silent)} prompt(s) (rewards equal up to noise: std <= "
                f"{self.eps:g} + {self.rel_tol:g} × max|reward|), "
                f"e.g. {silent[0]!r}: their advantages are 0 and they teach nothing. "
                "Check the reward function varies across samples (an all-zero reward map?).",
                NoSignalWarning,
                stacklevel=2,
            )
        return torch.as_tensor(adv, dtype=torch.float32, device=device)

    def stats(self) -> dict:
        """``{"prompts": n, "mean_count": ..., "ready": prompts with >= min_count rewards}``."""
        counts = [len(b) for b in self.buffers.values()]
        return {
            "prompts": len(counts),
            "mean_count": float(np.mean(counts)) if counts else 0.0,
            "ready": sum(c >= self.min_count for c in counts),
        }

    def clear(self) -> None:
        self.buffers.clear()

    # -- checkpointing: tensors for safetensors + plain JSON ---------------------------------
    def state_dict(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(json_meta, tensors): buffers as float64 tensors ``tracker.{i}``, prompts in the JSON."""
        prompts = list(self.buffers)
        meta = {"buffer_size": self.buffer_size, "min_count": self.min_count, "eps": self.eps, "rel_tol": self.rel_tol,
                "prompts": prompts}
        tensors = {f"tracker.{i}": torch.as_tensor(np.stack(self.buffers[p]), dtype=torch.float64) for i, p in enumerate(prompts)}
        return meta, tensors

    def load_state_dict(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        self.buffer_size, self.min_count, self.eps = meta["buffer_size"], meta["min_count"], meta["eps"]
        self.rel_tol = meta.get("rel_tol", REL_TOL)  # absent in states saved before the relative threshold
        self.buffers = {}
        for i, p in enumerate(meta["prompts"]):
            key = f"tracker.{i}"
            if key not in tensors:
                raise ValueError(f"stat-tracker state is missing {key!r} (prompt {p!r}); the checkpoint is incomplete")
            self.buffers[p] = deque(list(tensors[key].numpy()), maxlen=self.buffer_size)


def scalar_advantages(
    rewards,
    prompts: Sequence[str],
    tracker: PerPromptStatTracker | None = None,
    clip_max: float | None = 5.0,
) -> torch.Tensor:
    """DDPO advantages (B,): per-prompt normalised (batch statistics without a tracker), clipped."""
    r = rewards if isinstance(rewards, torch.Tensor) else _as_float64(rewards)
    if r.ndim != 1:
        raise ValueError(
            f"rewards must be (B,) for scalar advantages, got shape {tuple(r.shape)}; "
            "for a reward map use pixel_advantages, or reduce it with rewards.scalar(...)"
        )
    tracker = tracker if tracker is not None else PerPromptStatTracker(buffer_size=None, min_count=len(r) + 1)
    return clip_advantages(tracker.update(prompts, r), clip_max)


def pixel_advantages(
    reward_maps: torch.Tensor,
    prompts: Sequence[str],
    tracker: PerPromptStatTracker | None = None,
    clip_max: float | None = 5.0,
) -> torch.Tensor:
    """PXPO advantages (B,H,W): reward maps minus a per-pixel baseline map, over one scalar std, clipped.

    The baseline/std come from the prompt's buffer in ``tracker`` once it has ``min_count``
    maps, otherwise from the batch (module docstring). Same resolution as the maps.
    """
    if not isinstance(reward_maps, torch.Tensor):
        reward_maps = _as_float64(reward_maps, "reward_maps")
    if reward_maps.ndim != 3:
        raise ValueError(
            f"reward_maps must be (B,H,W), got shape {tuple(reward_maps.shape)}; "
            "for scalar rewards (B,) use scalar_advantages"
        )
    tracker = tracker if tracker is not None else PerPromptStatTracker(buffer_size=None, min_count=len(reward_maps) + 1)
    return clip_advantages(tracker.update(prompts, reward_maps), clip_max)


UNINFORMED_AMPLITUDE = 1.0
"""Relative spread of :func:`uninformed_map` (std of the map before clamping, its mean being 1):
of the order of a real reward map's, where pixels differ by their whole value."""


def uninformed_map(batch: int, size: tuple[int, int], generator: torch.Generator | None = None,
                   amplitude: float = UNINFORMED_AMPLITUDE, coarse: int = 4) -> torch.Tensor:
    """(batch, h, w) smooth random maps, ≥ 0 with mean exactly 1 per map, independent of any reward.

    Gaussian noise on a ``coarse`` × ``coarse`` grid, bilinearly upsampled to ``size``, standardised,
    then m = max(0, 1 + amplitude · u) / its mean. ``amplitude=0`` gives m ≡ 1 (then the spread
    advantages are DDPO's).
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f"size must be (h, w) with positive ints (the sample grid), got {size!r}")
    if isinstance(amplitude, bool) or not isinstance(amplitude, (int, float)) or not (np.isfinite(amplitude) and amplitude >= 0):
        raise ValueError(f"amplitude must be a finite number >= 0 (0: a constant map), got {amplitude!r}")
    u = torch.randn(batch, 1, coarse, coarse, generator=generator)
    u = F.interpolate(u, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    u = (u - u.mean(dim=(1, 2), keepdim=True)) / (u.std(dim=(1, 2), keepdim=True) + 1e-8)
    m = (1 + float(amplitude) * u).clamp_min(0)
    return m / m.mean(dim=(1, 2), keepdim=True)


def spread_advantages(advantages: torch.Tensor, weight_map: torch.Tensor) -> torch.Tensor:
    """A_b[i,j] = A_b · m_b[i,j]: scalar advantages (B,) spread by maps (B,h,w) of mean 1."""
    if not isinstance(advantages, torch.Tensor) or advantages.ndim != 1:
        raise ValueError(f"advantages must be (B,) scalar advantages, got {getattr(advantages, 'shape', type(advantages).__name__)}")
    if not isinstance(weight_map, torch.Tensor) or weight_map.ndim != 3 or len(weight_map) != len(advantages):
        raise ValueError(f"weight_map must be (B={len(advantages)}, h, w), got {getattr(weight_map, 'shape', type(weight_map).__name__)}")
    return advantages[:, None, None] * weight_map.to(device=advantages.device, dtype=advantages.dtype)


class GroupStatTracker:
    """GRPO's statistics (Shao et al. 2024; Flow-GRPO): each prompt's **group** in the current batch only.

    ``update(prompts, rewards)`` groups the samples by prompt (G ≥ 2 samples per prompt; a group of
    1 is a ValueError: it has no spread to normalise by) and returns (not clipped)::

        A_b = (r_b − mean_group) / (std_group + ε)           scalars (B,)
        A_b[i,j] = (r_b[i,j] − m[i,j]) / (s + ε)             maps (B,H,W): per-pixel group mean m,
                                                             one scalar std s of the group's centred values

    — the group's own statistics, nothing carried over from earlier batches (unlike
    :class:`PerPromptStatTracker`). Constant maps give exactly the scalar advantages. With
    ``global_std=True`` the std is that of all rewards of the batch (flow_grpo's ``sample.global_std``;
    verl-omni's ``algorithm.global_std``), the mean still the group's. A group whose rewards are
    equal up to noise (:func:`no_signal`) gets zeros and a :class:`NoSignalWarning`.
    """

    def __init__(self, global_std: bool = False, eps: float = EPS, rel_tol: float = REL_TOL):
        if not isinstance(global_std, bool):
            raise ValueError(f"global_std must be True or False, got {global_std!r}")
        PerPromptStatTracker(None, 0, eps, rel_tol)  # the same checks of eps and rel_tol
        self.global_std, self.eps, self.rel_tol = global_std, eps, rel_tol
        self.last_groups = 0

    def update(self, prompts: Sequence[str], rewards) -> torch.Tensor:
        r64, device = _checked_rewards(prompts, rewards)
        r, prompts = r64.numpy(), list(prompts)
        groups = {p: np.array([i for i, q in enumerate(prompts) if q == p]) for p in dict.fromkeys(prompts)}
        single = [p for p, idx in groups.items() if len(idx) < 2]
        if single:
            raise ValueError(
                f"GRPO normalises each prompt's rewards within its group, but {len(single)} prompt(s) have a group of 1 "
                f"sample (e.g. {single[0]!r}): one sample has no spread. Sample every prompt G >= 2 times "
                "(FlowTrainer(group_size=G); flow_grpo's sample.num_image_per_prompt, verl-omni's rollout.n)")
        adv = np.zeros_like(r)
        all_std, all_scale = float(r.std()), float(np.abs(r).max())
        silent = []
        for p, idx in groups.items():
            mean, std, scale = PerPromptStatTracker._stats(r[idx])
            if no_signal(std, scale, self.eps, self.rel_tol) or (
                    self.global_std and no_signal(all_std, all_scale, self.eps, self.rel_tol)):
                silent.append(p)
            else:
                adv[idx] = (r[idx] - mean) / ((all_std if self.global_std else std) + self.eps)
        self.last_groups = len(groups)
        if silent:
            warnings.warn(
                f"no reward signal in {len(silent)} of {len(groups)} group(s) (rewards equal up to noise: std <= "
                f"{self.eps:g} + {self.rel_tol:g} × max|reward|), e.g. {silent[0]!r}: their advantages are 0 and they "
                "teach nothing (flow_grpo logs this share as zero_std_ratio).", NoSignalWarning, stacklevel=2)
        return torch.as_tensor(adv, dtype=torch.float32, device=device)

    def stats(self) -> dict:
        return {"groups": self.last_groups}

    def clear(self) -> None:
        self.last_groups = 0

    def state_dict(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """Nothing is carried between batches: the settings only."""
        return {"kind": "group", "global_std": self.global_std, "eps": self.eps, "rel_tol": self.rel_tol}, {}

    def load_state_dict(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        if meta.get("kind") != "group":
            raise ValueError("the saved stat tracker is a per-prompt buffer, not GRPO's group statistics")
        self.global_std, self.eps, self.rel_tol = bool(meta["global_std"]), meta["eps"], meta["rel_tol"]


def group_advantages(rewards, prompts: Sequence[str], clip_max: float | None = 5.0, global_std: bool = False) -> torch.Tensor:
    """GRPO advantages (B,): each reward normalised within its prompt's group (:class:`GroupStatTracker`), clipped."""
    r = rewards if isinstance(rewards, torch.Tensor) else _as_float64(rewards)
    if r.ndim != 1:
        raise ValueError(f"rewards must be (B,) for group advantages, got shape {tuple(r.shape)}; "
                         "for reward maps use group_pixel_advantages")
    return clip_advantages(GroupStatTracker(global_std).update(prompts, r), clip_max)


def group_pixel_advantages(reward_maps, prompts: Sequence[str], clip_max: float | None = 5.0,
                           global_std: bool = False) -> torch.Tensor:
    """Per-pixel GRPO advantages (B,H,W): each map minus its group's per-pixel mean map, over the group's
    one scalar std (:class:`GroupStatTracker`), clipped. Constant maps give :func:`group_advantages`."""
    m = reward_maps if isinstance(reward_maps, torch.Tensor) else _as_float64(reward_maps, "reward_maps")
    if m.ndim != 3:
        raise ValueError(f"reward_maps must be (B,H,W), got shape {tuple(m.shape)}; for scalar rewards (B,) use group_advantages")
    return clip_advantages(GroupStatTracker(global_std).update(prompts, m), clip_max)
