"""A batch of sampled denoising trajectories: the data every RL update reads.

One :class:`Trajectory` holds B episodes of the denoising MDP (``docs/paper.md``, "Denoising as
a Markov decision process"): the states x_T .. x_0, the per-element log-probabilities
log π_θ(x_{t−1}|x_t,c) recorded at sampling time (PPO's "old" log-probs), the timesteps, and the
text embeddings, so an update re-scores a stored transition without running the text encoder
again. Made by :func:`pxpo_lite.sampling.sample` (which re-exports this class); introduced in
``notebooks/01_denoising_as_an_mdp.ipynb`` and used from ``notebooks/02_ddpo.ipynb`` on.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import torch

__all__ = ["Trajectory"]


@dataclass
class Trajectory:
    """A batch of sampled denoising trajectories (B samples, T steps).

    images: (B,3,H,W) float32 in [0,1], the decoded x_0.
    latents: (B,T+1,C,h,w) x_T .. x_0 in the model's sample space (pixels or VAE latents).
    log_probs: (B,T,C,h,w) float32, log p(x_{t−1}|x_t,c) per element at sampling time (no grad).
    timesteps: (T,) the scheduler's timesteps; step i goes latents[:, i] -> latents[:, i+1] at t = timesteps[i].
    prompts: the B prompts.
    prompt_embeds: (B,L,D) text-encoder states; negative_prompt_embeds: (B,L,D) or None (no guidance).
    guidance_scale, eta: as sampled (re-scoring uses the same).
    """

    images: torch.Tensor
    latents: torch.Tensor
    log_probs: torch.Tensor
    timesteps: torch.Tensor
    prompts: list
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None
    guidance_scale: float
    eta: float

    def __len__(self) -> int:
        return self.latents.shape[0]

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    def _index(self, idx) -> torch.Tensor:
        B = len(self)
        if isinstance(idx, slice):
            return torch.arange(B)[idx]
        if isinstance(idx, int) and not isinstance(idx, bool):
            idx = [idx]
        idx = torch.as_tensor(idx)
        if idx.dtype == torch.bool:
            if idx.shape != (B,):
                raise ValueError(f"a boolean idx must have shape ({B},), got {tuple(idx.shape)}")
            idx = idx.nonzero().flatten()
        if idx.ndim != 1 or idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise TypeError(f"idx must be a slice, an int, a list/LongTensor of sample indices or a bool mask, got {idx!r}")
        if len(idx) and (idx.min() < -B or idx.max() >= B):
            raise IndexError(f"idx {idx.tolist()} out of range for a trajectory of {B} samples")
        return idx.long() % B if len(idx) else idx.long()

    def select(self, idx) -> "Trajectory":
        """The sub-batch ``idx`` (slice, int, list, LongTensor, or bool mask) of samples."""
        i = self._index(idx)

        def take(t):
            return None if t is None else t[i.to(t.device)]

        return replace(
            self,
            images=take(self.images),
            latents=take(self.latents),
            log_probs=take(self.log_probs),
            prompts=[self.prompts[j] for j in i.tolist()],
            prompt_embeds=take(self.prompt_embeds),
            negative_prompt_embeds=take(self.negative_prompt_embeds),
        )

    def to(self, device) -> "Trajectory":
        """A copy with every tensor on ``device``."""
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v.to(device) for k, v in kw.items() if isinstance(v, torch.Tensor)})

    @classmethod
    def cat(cls, trajectories: Sequence["Trajectory"]) -> "Trajectory":
        """Concatenate batches sampled with the same schedule, η and guidance (e.g. several sampling rounds)."""
        trajectories = list(trajectories)
        if not trajectories:
            raise ValueError("trajectories must be a non-empty list of Trajectory")
        first = trajectories[0]
        for tr in trajectories[1:]:
            if not torch.equal(tr.timesteps.cpu(), first.timesteps.cpu()) or tr.eta != first.eta or tr.guidance_scale != first.guidance_scale:
                raise ValueError("all trajectories must share timesteps, eta and guidance_scale to be concatenated")

        def cat(name):
            ts = [getattr(t, name) for t in trajectories]
            return None if ts[0] is None else torch.cat(ts)

        return replace(
            first,
            images=cat("images"),
            latents=cat("latents"),
            log_probs=cat("log_probs"),
            prompts=[p for t in trajectories for p in t.prompts],
            prompt_embeds=cat("prompt_embeds"),
            negative_prompt_embeds=cat("negative_prompt_embeds"),
        )
