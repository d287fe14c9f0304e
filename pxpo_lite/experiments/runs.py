"""One training run of a method on a task, and the hyper-parameters every run shares.

:func:`run` trains a fresh copy of the same pretrained model with ``"ddpo"`` (score function,
one advantage per image), ``"pxpo"`` (score function, one advantage per pixel — the paper's
form) or ``"pxpo_clip"`` (per-element PPO-clipped ratio — our extension, clip range
:data:`PXPO_CLIP_RANGE`) for a sample budget with a seed, and returns reward-vs-samples
records. Prompts are drawn in *groups*: each epoch picks ``samples_per_epoch / group_size``
prompts and samples each ``group_size`` times, and advantages are normalised within each
group (the per-prompt tracker with buffer = min count = group size): the baseline of a sample
(or of a pixel, for PXPO) is the mean of its own prompt's group.

Introduced in ``notebooks/04_pxpo_colour_feedback.ipynb``; used in 05 and 07.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..trainer import TrainConfig, Trainer
from .tasks import Task

# --------------------------------------------------------------------------------------------
# Hyper-parameters (chosen by measurement; see notebook 07 and the README for how)
# --------------------------------------------------------------------------------------------
PXPO_CLIP_RANGE = 0.02
"""ε of the element-wise clipped PXPO variant. Chosen like the learning rate: the largest of
{0.005, 0.02, 0.2} at which clipped PXPO (lr 3e-5, 128 samples, seed 0) kept held-out prompt
fidelity ≥ 90 % on both tasks. ε = 0.2 clipped ~0.1 % of elements (≈ no clip) and lost fidelity
like unclipped PXPO (colour 0 %, hair 84 %); ε = 0.005 barely learned. Measured in notebook 07's
sweep; numbers in the README."""

METHODS: dict[str, dict] = {
    "ddpo": dict(method="ddpo", clip_range=None),
    "pxpo": dict(method="pxpo", clip_range=None),
    "pxpo_clip": dict(method="pxpo", clip_range=PXPO_CLIP_RANGE),
    # the credit benchmark's two controls (experiments.credit): per-pixel credit without feedback, and
    # per-pixel advantages under one image-level ratio (DenseFlow-GRPO's form)
    "pxpo_uninformed": dict(method="pxpo", clip_range=None, advantage_map="uninformed"),
    "pxpo_imageratio": dict(method="pxpo_imageratio", clip_range=None),
}
"""Method name -> TrainConfig fields."""

METHOD_LABELS = {"ddpo": "DDPO (score function)", "pxpo": "PXPO (score function)", "pxpo_clip": "PXPO (clipped ratio)",
                 "pxpo_uninformed": "image advantage × random map (control)",
                 "pxpo_imageratio": "per-pixel advantages, image-level ratio (control)"}

DEFAULTS = dict(
    num_steps=10,  # DDIM steps per trajectory (DDPO used 50 on SD; 10 suffice on the tiny model)
    eta=1.0,
    samples_per_epoch=16,
    sample_batch_size=16,
    train_batch_size=4,  # 4 optimiser steps per epoch: the clip has something to do after the first
    grad_accum_steps=1,
    inner_epochs=1,
    timestep_fraction=0.5,  # train on half the stochastic steps of each micro-batch (random)
    max_grad_norm=1.0,
    adv_clip_max=5.0,
    use_lora=False,  # the tiny UNet is small: train all of it
)
"""TrainConfig fields shared by every run (per-task learning rates are in :data:`TASK_LR`)."""

GROUP_SIZE = 4
"""Samples per prompt in each epoch; advantages are normalised within each prompt's group."""

TASK_LR = {"colour": 3e-5, "hair": 3e-5, "shirt_blue": 3e-5, "hair_red": 3e-5}
"""AdamW learning rate per task, the same for every method. Chosen for DDPO (the baseline): the
largest of {3e-5, 1e-4, 3e-4} at which DDPO (128 samples, seed 0) kept held-out prompt fidelity
≥ 90 % — at 1e-4 it fell to 88 % (colour) and 25 % (hair), at 3e-4 to 25 % and 0 %. The region
tasks start from the same 3e-5; the credit-assignment benchmark instead picks a learning rate per
method and task by that rule (``experiments.credit.select_lr``)."""


# --------------------------------------------------------------------------------------------
# Configs and prompt groups
# --------------------------------------------------------------------------------------------
def grouped_prompts(prompts: Sequence[str], group_size: int = GROUP_SIZE) -> Callable:
    """A prompt picker for :class:`~pxpo_lite.trainer.Trainer`: ``n / group_size`` prompts drawn
    without replacement (with, if there are too few), each repeated ``group_size`` times."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts must be a non-empty list of str")

    def pick(n: int, generator: torch.Generator) -> list[str]:
        if n % group_size:
            raise ValueError(f"samples per epoch ({n}) must be a multiple of group_size={group_size}")
        k = n // group_size
        if k <= len(prompts):
            idx = torch.randperm(len(prompts), generator=generator)[:k].tolist()
        else:
            idx = torch.randint(len(prompts), (k,), generator=generator).tolist()
        return [prompts[i] for i in idx for _ in range(group_size)]

    return pick


def make_config(task: str, method: str, seed: int = 0, **overrides):
    """The TrainConfig for ``method`` on ``task`` (:data:`DEFAULTS` + :data:`TASK_LR` + overrides)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    if task not in TASK_LR:
        raise ValueError(f"task must be one of {sorted(TASK_LR)}, got {task!r}")
    group = overrides.pop("group_size", GROUP_SIZE)
    kw = dict(DEFAULTS)
    kw.update(METHODS[method])
    kw.update(
        learning_rate=TASK_LR[task],
        seed=seed,
        per_prompt_stats=True,
        stat_buffer_size=group,  # buffer = min count = group size: each prompt's group is its baseline
        stat_min_count=group,
        progress=False,
    )
    kw.update(overrides)
    return TrainConfig(**kw)


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What :func:`run` returns. ``records``: one dict per epoch (``n_samples``, ``reward_mean``, ...)."""

    task: str
    method: str
    seed: int
    budget: int
    records: list
    seconds: float
    pipe: object = field(default=None, repr=False)  # the trained pipeline

    @property
    def n_samples(self) -> np.ndarray:
        """Samples used up to and including each epoch (the trainer's ``n_samples``)."""
        return np.array([r["n_samples"] for r in self.records])

    @property
    def trained_on(self) -> np.ndarray:
        """Samples the policy had been trained on when it drew each epoch's batch (0 for the first):
        the x-axis of reward-vs-samples curves. Epoch k's reward is the reward of a policy updated
        on the k − 1 earlier batches."""
        spe = self.records[0]["n_samples"] if self.records else 0
        return self.n_samples - spe

    @property
    def rewards(self) -> np.ndarray:
        return np.array([r["reward_mean"] for r in self.records])

    def summary(self) -> dict:
        return {"task": self.task, "method": self.method, "seed": self.seed, "budget": self.budget,
                "seconds": round(self.seconds, 2), "records": self.records}


def check_budget(budget, samples_per_epoch: int) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < samples_per_epoch:
        raise ValueError(f"budget must be an int >= samples_per_epoch={samples_per_epoch} (samples to train on), got {budget!r}")
    if budget % samples_per_epoch:
        raise ValueError(f"budget={budget} is not a multiple of samples_per_epoch={samples_per_epoch}; use e.g. "
                         f"{(budget // samples_per_epoch + 1) * samples_per_epoch}")
    return int(budget) // samples_per_epoch


def run(base_pipe, task: Task, method: str, budget: int, seed: int = 0, progress: bool = True,
        keep_pipe: bool = False, callback: Callable | None = None, **overrides) -> RunResult:
    """Train a fresh copy of ``base_pipe`` with ``method`` on ``task`` for ``budget`` samples.

    ``base_pipe`` is never modified (a deep copy is trained). ``overrides`` go to the TrainConfig
    (e.g. ``learning_rate=3e-4``, ``clip_range=0.05``). ``callback(record, pipe)``, if given, is
    called after every epoch with the epoch's metrics and the pipeline being trained (e.g. a
    :class:`FidelityTracker`). Returns a :class:`RunResult` whose records hold the on-policy
    reward of every epoch's samples vs the samples used so far.
    """
    if not isinstance(task, Task):
        raise TypeError(f"task must be a Task (experiments.get_task('colour'|'hair')), got {type(task).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a function (record, pipe) -> None or None, got {type(callback).__name__}")
    group = overrides.get("group_size", GROUP_SIZE)
    config = make_config(task.name, method, seed, **{"progress": progress, **overrides})
    epochs = check_budget(budget, config.samples_per_epoch)
    pipe = copy.deepcopy(base_pipe)
    t0 = time.perf_counter()
    trainer = Trainer(pipe, task.reward_map, config, prompts=grouped_prompts(task.prompts, group))
    trainer.train(epochs, callback=None if callback is None else (lambda record, _trainer: callback(record, pipe)))
    pipe.unet.requires_grad_(False)
    keep = ("epoch", "n_samples", "reward_mean", "reward_std", "approx_kl", "clip_fraction", "grad_norm")
    records = [{k: r[k] for k in keep if k in r} for r in trainer.metrics]
    return RunResult(task.name, method, seed, int(budget), records, time.perf_counter() - t0, pipe if keep_pipe else None)
