"""The paper's two experiments on the tiny world: a per-pixel reward map, training prompts, published numbers.

* ``"colour"`` — "less blue": ``rewards.colour_reward_map``, −clip(B − max(R,G), 0, 1) per
  pixel, on prompts that contain blue (a blue, light-blue or navy background, a blue shirt
  or blue hair: there must be blue to remove). Paper: −0.39 ± 0.08 → −0.35 ± 0.08.
* ``"hair"`` — "remove hair": ``rewards.hair_reward_map``, −P(hair) per pixel from the
  shipped segmenter, on prompts that *ask for hair* (the conflict between reward and prompt
  is the point). Paper: −0.06 ± 0.04 → −0.02 ± 0.02.

Region-focused tasks (feedback about one part, everything else kept; ``pxpo_lite.regions``):

* ``"shirt_blue"`` — "less blue on the shirt only": ``restrict(colour_reward_map, "shirt")``,
  the colour reward on the pixels the segmenter calls shirt, 0 elsewhere; prompts with a blue
  shirt *and* a blue background, so a model that learns "less blue everywhere" loses the
  background the prompt asks for.
* ``"hair_red"`` — "hair colour towards red": ``restrict(towards_colour("red"), "hair")``;
  prompts asking for hair that is not red.

A task's ``region`` names the part its feedback is about (None: the whole image); the change
inside vs outside it is measured by ``experiments.evaluation.region_change``.

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

from .. import regions
from .. import rewards as rewards_mod
from .. import world
from ..models import load_segmenter

TASKS = ("colour", "hair", "shirt_blue", "hair_red")
"""Every task :func:`get_task` knows: the paper's two, then the region-focused ones."""

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
    region: str | None = None  # the part of the world the feedback is about (None: the whole image)

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
    "shirt_blue": None,  # region tasks are not in the paper (listed there as future work)
    "hair_red": None,
}
"""The paper's published mean ± std reward before → after (Kordzanganeh et al. 2024)."""


def has_blue(prompt: str) -> bool:
    a = world.parse_prompt(prompt)
    return a.background in ("blue", "light blue", "navy") or a.shirt == "blue" or a.hair_colour == "blue"


def _prompt_filter(task: str) -> Callable[[str], bool]:
    def attrs(p):
        return world.parse_prompt(p)

    return {
        "colour": has_blue,
        "hair": lambda p: not attrs(p).bald,
        "shirt_blue": lambda p: attrs(p).shirt == "blue" and attrs(p).background in ("blue", "light blue", "navy"),
        "hair_red": lambda p: not attrs(p).bald and attrs(p).hair_colour != "red",
    }[task]


def task_prompts(task: str, n: int = 4, seed: int = 1234) -> tuple:
    """``n`` distinct prompts for ``task`` drawn from the world's distribution (deterministic).

    colour: prompts with some blue in them; hair: prompts asking for hair (not bald);
    shirt_blue: a blue shirt on a blue, light-blue or navy background; hair_red: hair, not red.
    """
    if task not in TASKS:
        raise ValueError(f"task must be 'colour' or 'hair' (or a region task {TASKS[2:]}), got {task!r}")
    keep = _prompt_filter(task)
    out: list[str] = []
    for p in world.render(40 * n, seed=seed).prompts:
        if keep(p) and p not in out:
            out.append(p)
        if len(out) == n:
            return tuple(out)
    raise RuntimeError(f"could not find {n} prompts for task {task!r}")  # pragma: no cover


def _load_segmenter(segmenter):
    if segmenter is None:
        return rewards_mod.default_segmenter()  # the shipped one, loaded once and shared
    if isinstance(segmenter, (str, os.PathLike)):
        return load_segmenter(path=segmenter)  # FileNotFoundError naming the folder if missing
    return segmenter


def get_task(name: str, segmenter=None, n_prompts: int = 4) -> Task:
    """The task ``"colour"``, ``"hair"``, ``"shirt_blue"`` or ``"hair_red"`` (:data:`TASKS`).
    ``segmenter``: a loaded segmenter, a weights folder, or None for the shipped one (used by
    every task but "colour")."""
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
    if name not in TASKS:
        raise ValueError(f"task must be 'colour' or 'hair' (or a region task {TASKS[2:]}), got {name!r}")
    segmenter = _load_segmenter(segmenter)
    if name == "shirt_blue":
        return Task(
            name="shirt_blue",
            title='region feedback: "less blue on the shirt only"',
            reward_map=regions.restrict(rewards_mod.colour_reward_map, "shirt", segmenter=segmenter),
            prompts=task_prompts("shirt_blue", n_prompts),
            paper=PAPER["shirt_blue"],
            conflicts_with="shirt",
            description="−clip(B − max(R,G), 0, 1) on shirt pixels (segmenter), 0 elsewhere; blue shirt on a blue background",
            region="shirt",
        )
    if name == "hair_red":
        return Task(
            name="hair_red",
            title='region feedback: "hair colour towards red, everything else kept"',
            reward_map=regions.restrict(regions.towards_colour("red"), "hair", segmenter=segmenter),
            prompts=task_prompts("hair_red", n_prompts),
            paper=PAPER["hair_red"],
            conflicts_with="hair_colour",
            description="−‖rgb − red‖/√3 on hair pixels (segmenter), 0 elsewhere; prompts with hair that is not red",
            region="hair",
        )
    if name == "hair":
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
            region="hair",
        )
    raise AssertionError(name)  # pragma: no cover (every name of TASKS is handled above)
