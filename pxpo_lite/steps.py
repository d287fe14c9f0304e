"""Which steps of a trajectory are trained: the DDIM steps with σ_t > 0, every SDE step of a flow pipeline.

A policy gradient can train a step only where the step is a Gaussian action, σ_t > 0.
:func:`trainable_steps` reads that from the pipeline's schedule — :func:`schedule`, a copy of
``pipe.scheduler`` set to the step count, through :func:`pxpo_lite.ddim.trainable_step_indices`,
the package's one threshold —, and Flow-GRPO's SDE (:mod:`pxpo_lite.flow`) has σ_t > 0 at every
step. It sits beside :mod:`pxpo_lite.sampling`, which samples and re-scores those steps; the
trainer, the feedback session and :mod:`pxpo_lite.update` (which re-exports both names) ask here.

Used in ``notebooks/06_human_feedback_canvas.ipynb`` (the keep term, step by step).
"""
from __future__ import annotations

import copy

from diffusers import FlowMatchEulerDiscreteScheduler

from .config_checks import check_positive_int
from .ddim import check_scheduler, trainable_step_indices

__all__ = ["schedule", "trainable_steps"]


def schedule(pipe, num_steps: int):
    """A copy of ``pipe.scheduler`` set to ``num_steps`` DDIM steps (the pipeline's own is left as it is)."""
    check_scheduler(pipe.scheduler, "pipe.scheduler", need_timesteps=False)
    s = copy.copy(pipe.scheduler)
    s.set_timesteps(num_steps)
    return s


def trainable_steps(pipe, num_steps: int, eta: float) -> list[int]:
    """Indices of the DDIM steps with σ_t > 0 (a Gaussian action) for ``num_steps`` steps at ``eta``.

    Raises ValueError when there is none (e.g. ``num_steps=1`` on a "trailing" schedule whose
    only step is deterministic): a policy gradient would then train nothing.
    """
    if isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler):  # Flow-GRPO's SDE: σ_t > 0 at every step
        return list(range(check_positive_int("num_steps", num_steps)))
    s = schedule(pipe, num_steps)
    steps = trainable_step_indices(s, s.timesteps, eta)
    if not steps:
        raise ValueError(
            f"num_steps={num_steps} at eta={eta} gives no stochastic DDIM step (σ_t = 0 at every step of the schedule "
            f"{[int(t) for t in s.timesteps]}): there is no policy to train. Use num_steps >= 2."
        )
    return steps
