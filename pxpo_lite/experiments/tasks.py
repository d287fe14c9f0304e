"""The paper's two experiments on the tiny world: a per-pixel reward map, training prompts, published numbers.

* ``"colour"`` — "less blue": ``rewards.colour_reward_map``, −clip(B − max(R,G), 0, 1) per
  pixel, on prompts that contain blue (a blue, light-blue or navy background, a blue shirt
  or blue hair: there must be blue to remove). Paper: −0.39 ± 0.08 → −0.35 ± 0.08.
* ``"hair"`` — "remove hair": ``rewards.hair_reward_map``, −P(hair) per pixel from the
  shipped segmenter, on prompts that *ask for hair* (the conflict between reward and prompt
  is the point). Paper: −0.06 ± 0.04 → −0.02 ± 0.02.

A task's reward is a *map* (B,H,W): PXPO uses it per pixel, DDPO gets its image mean
(``TrainConfig.method`` decides; the trainer reduces). The image's mean reward is what we
report for both, so the numbers are comparable across methods.

Introduced in ``notebooks/04_pxpo_colour_feedback.ipynb``; used in 05 and 07.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .. import rewards as rewards_mod
from .. import world

@dataclass(frozen=True)
class Task:
    """One of the paper's experiments on the tiny world."""

    name: str
    title: str
    reward_map: Callable  # (images (B,3,H,W), prompts) -> (B,H,W), higher is better
    prompts: tuple  # the training (and evaluation) prompts
    paper: dict  # {"before": (mean, std), "after": (mean, std)} as published
    conflicts_with: str | None = None  # the fidelity attribute the reward fights (if any)
    description: str = ""

    def reward(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        """Checked reward map (B,H,W) of ``images``."""
        r = self.reward_map(images, prompts)
        return rewards_mod.check_reward(r, images, kind="map", name=f"{self.name} reward map")

    def scalar_reward(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        """The image mean of the map (B,): what DDPO sees and what we report."""
        return self.reward(images, prompts).mean(dim=(1, 2))


PAPER = {
    "colour": {"before": (-0.39, 0.08), "after": (-0.35, 0.08)},
    "hair": {"before": (-0.06, 0.04), "after": (-0.02, 0.02)},
}
"""The paper's published mean ± std reward before → after (Kordzanganeh et al. 2024)."""


def has_blue(prompt: str) -> bool:
    a = world.parse_prompt(prompt)
    return a.background in ("blue", "light blue", "navy") or a.shirt == "blue" or a.hair_colour == "blue"


def task_prompts(task: str, n: int = 4, seed: int = 1234) -> tuple:
    """``n`` distinct prompts for ``task`` drawn from the world's distribution (deterministic).

    colour: prompts with some blue in them; hair: prompts asking for hair (not bald).
    """
    if task not in ("colour", "hair"):
        raise ValueError(f"task must be 'colour' or 'hair', got {task!r}")
    keep = has_blue if task == "colour" else (lambda p: not world.parse_prompt(p).bald)
    out: list[str] = []
    for p in world.render(40 * n, seed=seed).prompts:
        if keep(p) and p not in out:
            out.append(p)
        if len(out) == n:
            return tuple(out)
    raise RuntimeError(f"could not find {n} prompts for task {task!r}")  # pragma: no cover


def get_task(name: str, segmenter=None, n_prompts: int = 4) -> Task:
    """The task ``"colour"`` or ``"hair"``. ``segmenter``: a loaded segmenter, a weights folder,
    or None for the shipped one (used by "hair" only)."""
    if name == "colour":
        return Task(
            name="colour",
            title='colour feedback: "less blue"',
            reward_map=rewards_mod.colour_reward_map,
            prompts=task_prompts("colour", n_prompts),
            paper=PAPER["colour"],
            conflicts_with=None,
            description="−clip(B − max(R,G), 0, 1) per pixel; prompts that contain blue",
        )
    if name == "hair":
        if segmenter is None or isinstance(segmenter, (str, os.PathLike)):
            from ..models import load_segmenter  # heavy (diffusers, weights): only for the hair task

            segmenter = load_segmenter(path=segmenter)  # FileNotFoundError naming the folder if missing

        def hair_map(images, prompts=None):
            return rewards_mod.hair_reward_map(images, prompts, segmenter=segmenter)

        hair_map.is_map = True
        hair_map.__name__ = "hair_reward_map"
        return Task(
            name="hair",
            title='segmentation feedback: "remove hair"',
            reward_map=hair_map,
            prompts=task_prompts("hair", n_prompts),
            paper=PAPER["hair"],
            conflicts_with="hair_presence",
            description="−P(hair) per pixel from the segmenter; prompts that ask for hair",
        )
    raise ValueError(f"task must be 'colour' or 'hair', got {name!r}")
