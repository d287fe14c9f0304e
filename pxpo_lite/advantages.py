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
  If every map of a group is constant across samples — e.g. all zeros, as the hair reward on
  bald prompts — there is no signal: we warn and return zeros (never divide by zero).
  With constant maps r_b[i,j] = r_b this reduces *exactly* to the scalar advantages above, so
  DDPO is PXPO with constant maps (tested).

Non-finite rewards (NaN/inf) raise a ValueError naming the sample and its prompt.

Introduced in ``notebooks/02_ddpo.ipynb`` (scalar) and ``notebooks/04_pxpo_colour_feedback.ipynb`` (maps).
"""
from __future__ import annotations

import warnings
from collections import deque
from typing import Sequence

import numpy as np
import torch

EPS = 1e-6
"""ε added to every std (ddpo-pytorch uses 1e-6); a group whose std is below it has no signal."""


class NoSignalWarning(UserWarning):
    """Every reward of a group is the same: its advantages are all zero and nothing is learned."""


def _as_numpy(rewards, what: str = "rewards") -> np.ndarray:
    if isinstance(rewards, torch.Tensor):
        rewards = rewards.detach().to(torch.float64).cpu().numpy()
    try:
        arr = np.asarray(rewards, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} must be a tensor/array of numbers, got {type(rewards).__name__} ({e})") from None
    return arr


def check_finite_rewards(rewards, prompts: Sequence[str] | None = None, what: str = "rewards") -> None:
    """Raise ValueError naming every sample (and its prompt) whose reward (or any pixel of it) is NaN/inf."""
    arr = _as_numpy(rewards, what)
    if arr.ndim == 0:
        arr = arr[None]
    bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
    if bad.any():
        idx = np.flatnonzero(bad).tolist()
        who = "; ".join(
            f"sample {i}" + (f" (prompt {prompts[i]!r})" if prompts is not None and i < len(prompts) else "") for i in idx[:5]
        )
        more = f" and {len(idx) - 5} more" if len(idx) > 5 else ""
        raise ValueError(
            f"{what} contain NaN or inf at {who}{more}; a reward must be finite for every sample "
            "(check the reward function on these images, e.g. a division by zero or log of 0)"
        )


def clip_advantages(advantages: torch.Tensor, clip_max: float | None) -> torch.Tensor:
    """A ← clip(A, −clip_max, clip_max) (ddpo-pytorch: ``adv_clip_max = 5``); None: no clipping."""
    if clip_max is None:
        return advantages
    if not clip_max > 0:
        raise ValueError(f"clip_max must be a positive number or None, got {clip_max!r}")
    return advantages.clamp(-clip_max, clip_max)


class PerPromptStatTracker:
    """Per-prompt running statistics of rewards (scalars or maps), as in ddpo-pytorch.

    ``update(prompts, rewards)`` stores the new rewards in each prompt's buffer (the last
    ``buffer_size``) and returns their advantages (not clipped; see :func:`clip_advantages`):
    normalised by the prompt's own buffer once it holds ``min_count`` rewards, by the current
    batch's statistics before that. ``rewards`` is (B,) for DDPO or (B,H,W) for PXPO (then
    the baseline is a per-pixel mean map and the scale one scalar std; module docstring).
    ``buffer_size=None`` keeps everything; ``min_count=0`` always uses the prompt's buffer.
    """

    def __init__(self, buffer_size: int | None = 16, min_count: int = 16, eps: float = EPS):
        if buffer_size is not None and (not isinstance(buffer_size, int) or buffer_size < 1):
            raise ValueError(f"buffer_size must be a positive int or None, got {buffer_size!r}")
        if not isinstance(min_count, int) or min_count < 0:
            raise ValueError(f"min_count must be an int >= 0, got {min_count!r}")
        if buffer_size is not None and min_count > buffer_size:
            raise ValueError(
                f"min_count={min_count} > buffer_size={buffer_size}: a prompt's buffer could never reach "
                "min_count, so per-prompt statistics would never be used; use min_count <= buffer_size"
            )
        self.buffer_size, self.min_count, self.eps = buffer_size, min_count, eps
        self.buffers: dict[str, deque] = {}

    # -- statistics of a group: baseline (per-element mean over samples) and one scalar std --
    def _stats(self, group: np.ndarray) -> tuple[np.ndarray, float]:
        mean = group.mean(axis=0)  # () for scalars, (H,W) for maps
        std = float((group - mean).std())  # one number
        return mean, std

    def update(self, prompts: Sequence[str], rewards) -> torch.Tensor:
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise TypeError(f"prompts must be a list of str (one per sample), got {type(prompts).__name__}")
        device = rewards.device if isinstance(rewards, torch.Tensor) else "cpu"
        r = _as_numpy(rewards)
        if r.ndim not in (1, 3):
            raise ValueError(
                f"rewards must be (B,) scalars or (B,H,W) reward maps, got shape {r.shape}; "
                "pass one reward (or one map) per sample"
            )
        if len(prompts) != len(r):
            raise ValueError(f"got {len(r)} rewards but {len(prompts)} prompts; pass one prompt per reward")
        check_finite_rewards(r, prompts)
        first = next(iter(self.buffers.values()), None)
        if first and np.shape(first[0]) != r.shape[1:]:
            raise ValueError(
                f"this tracker holds rewards of shape {np.shape(first[0])} but got {r.shape[1:]}; "
                "use one tracker per reward type (scalar vs map)"
            )
        prompts = list(prompts)
        batch_mean, batch_std = self._stats(r)
        adv = np.zeros_like(r)
        silent: list[str] = []
        for p in dict.fromkeys(prompts):  # unique, in order
            idx = np.array([i for i, q in enumerate(prompts) if q == p])
            buf = self.buffers.setdefault(p, deque(maxlen=self.buffer_size))
            buf.extend(r[idx])
            if len(buf) >= self.min_count and len(buf) > 1:
                mean, std = self._stats(np.stack(buf))
            else:
                mean, std = batch_mean, batch_std
            if std < self.eps:
                silent.append(p)  # no signal: leave zeros
            else:
                adv[idx] = (r[idx] - mean) / (std + self.eps)
        if silent:
            warnings.warn(
                f"no reward signal for {len(silent)} prompt(s) (every reward equal, std < {self.eps:g}), "
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
        meta = {"buffer_size": self.buffer_size, "min_count": self.min_count, "eps": self.eps, "prompts": prompts}
        tensors = {f"tracker.{i}": torch.as_tensor(np.stack(self.buffers[p]), dtype=torch.float64) for i, p in enumerate(prompts)}
        return meta, tensors

    def load_state_dict(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        self.buffer_size, self.min_count, self.eps = meta["buffer_size"], meta["min_count"], meta["eps"]
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
    r = rewards if isinstance(rewards, torch.Tensor) else torch.as_tensor(np.asarray(rewards, dtype=np.float32))
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
        reward_maps = torch.as_tensor(np.asarray(reward_maps, dtype=np.float32))
    if reward_maps.ndim != 3:
        raise ValueError(
            f"reward_maps must be (B,H,W), got shape {tuple(reward_maps.shape)}; "
            "for scalar rewards (B,) use scalar_advantages"
        )
    tracker = tracker if tracker is not None else PerPromptStatTracker(buffer_size=None, min_count=len(reward_maps) + 1)
    return clip_advantages(tracker.update(prompts, reward_maps), clip_max)
