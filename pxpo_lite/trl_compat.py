"""A way in for TRL users: read a TRL ``DDPOConfig`` (or its dict) as a :class:`~pxpo_lite.trainer.TrainConfig`.

TRL shipped a ``DDPOTrainer`` from v0.6 to v0.23.1 and removed it in v0.24. Its config names
every DDPO knob with a ``sample_`` / ``train_`` prefix; pxpo-lite's :class:`TrainConfig` names
the same knobs without them. :func:`train_config_from_trl` maps one onto the other and
:func:`trl_run_settings` returns the few run-level fields (epochs, checkpoint folder and
frequency) that belong to ``Trainer.train`` rather than to the config::

    cfg = {"sample_num_steps": 20, "sample_batch_size": 4, "sample_num_batches_per_epoch": 4,
           "train_batch_size": 4, "train_learning_rate": 3e-4, "per_prompt_stat_tracking": True}
    config = train_config_from_trl(cfg)            # TrainConfig(num_steps=20, samples_per_epoch=16, ...)
    run = trl_run_settings(cfg)                    # {"epochs": 100, "checkpoint_dir": None, ...}
    Trainer(pipe, reward_fn, config).train(run["epochs"])

Differences worth knowing (the table in ``docs/from_trl.md`` lists every field):

* ``sample_batch_size`` × ``sample_num_batches_per_epoch`` × processes is TRL's samples per
  epoch; pxpo-lite asks for that total (``samples_per_epoch``) and leaves the per-call layout to its
  automatic rule (``sample_batch_size=None``: the whole epoch in one call when it fits in memory,
  :meth:`Trainer.sampling_batch_size`). TRL's split into calls is a memory setting, not part of the
  algorithm: the samples have the same distribution either way. Pass ``sample_batch_size=k`` as an
  override to cap the calls at k as TRL did.
* TRL's ``per_prompt_stat_tracking`` defaults to False; pxpo-lite's ``per_prompt_stats`` to True.
  An explicit TRL value is kept; a missing one takes TRL's default, so a TRL config means what it
  meant there.
* TRL trains with LoRA by default (``use_lora=True`` on its pipeline): the mapped config asks for
  LoRA unless ``use_lora=False`` is passed.
* Settings that would change the algorithm and that pxpo-lite does not implement raise
  :class:`UnsupportedTRLSetting` (``train_cfg=False``, ``negative_prompts``, 8-bit Adam,
  ``push_to_hub``); logging and bookkeeping settings are accepted and reported as ignored.

Introduced in the README ("Coming from TRL").
"""
from __future__ import annotations

import dataclasses
import numbers
import warnings
from typing import Any, Mapping

from .train_config import TrainConfig

__all__ = ["UnsupportedTRLSetting", "TRL_FIELD_MAP", "TRL_DEFAULTS", "train_config_from_trl", "trl_run_settings"]


class UnsupportedTRLSetting(ValueError):
    """A TRL DDPOConfig value that pxpo-lite cannot honour (it would change what is trained)."""


# TRL 0.23.1 DDPOConfig defaults (trl/trainer/ddpo_config.py), for the fields this module reads.
TRL_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "log_with": None,
    "num_epochs": 100,
    "save_freq": 1,
    "mixed_precision": "fp16",
    "resume_from": "",
    "sample_num_steps": 50,
    "sample_eta": 1.0,
    "sample_guidance_scale": 5.0,
    "sample_batch_size": 1,
    "sample_num_batches_per_epoch": 2,
    "train_batch_size": 1,
    "train_use_8bit_adam": False,
    "train_learning_rate": 3e-4,
    "train_adam_beta1": 0.9,
    "train_adam_beta2": 0.999,
    "train_adam_weight_decay": 1e-4,
    "train_adam_epsilon": 1e-8,
    "train_gradient_accumulation_steps": 1,
    "train_max_grad_norm": 1.0,
    "train_num_inner_epochs": 1,
    "train_cfg": True,
    "train_adv_clip_max": 5.0,
    "train_clip_range": 1e-4,
    "train_timestep_fraction": 1.0,
    "per_prompt_stat_tracking": False,
    "per_prompt_stat_tracking_buffer_size": 16,
    "per_prompt_stat_tracking_min_count": 16,
    "negative_prompts": "",
    "push_to_hub": False,
    "async_reward_computation": False,
}

# TRL field -> TrainConfig field (one to one).
TRL_FIELD_MAP: dict[str, str] = {
    "seed": "seed",
    "log_with": "log_with",
    "mixed_precision": "mixed_precision",
    "sample_num_steps": "num_steps",
    "sample_eta": "eta",
    "sample_guidance_scale": "guidance_scale",
    "train_batch_size": "train_batch_size",
    "train_learning_rate": "learning_rate",
    "train_adam_weight_decay": "adam_weight_decay",
    "train_adam_epsilon": "adam_eps",
    "train_gradient_accumulation_steps": "grad_accum_steps",
    "train_max_grad_norm": "max_grad_norm",
    "train_num_inner_epochs": "inner_epochs",
    "train_adv_clip_max": "adv_clip_max",
    "train_clip_range": "clip_range",
    "train_timestep_fraction": "timestep_fraction",
    "per_prompt_stat_tracking": "per_prompt_stats",
    "per_prompt_stat_tracking_buffer_size": "stat_buffer_size",
    "per_prompt_stat_tracking_min_count": "stat_min_count",
}
# Read but mapped in a combined way.
_COMBINED = {"train_adam_beta1", "train_adam_beta2", "sample_batch_size", "sample_num_batches_per_epoch"}
# Run-level settings: see trl_run_settings.
_RUN = {"num_epochs", "save_freq", "resume_from", "logdir", "num_checkpoint_limit"}
# Accepted and ignored: logging, tracking, hub and performance bookkeeping with no effect on what is trained.
IGNORED = {
    "exp_name", "run_name", "tracker_kwargs", "accelerator_kwargs", "project_kwargs", "tracker_project_name",
    "allow_tf32", "async_reward_computation", "max_workers", "logdir", "num_checkpoint_limit",
}
# Values pxpo-lite cannot honour, with what to do instead.
_UNSUPPORTED = {
    "train_cfg": (lambda v: v is not True, "pxpo-lite re-scores every transition with the guidance it was sampled with "
                  "(train_cfg=True); training without guidance on guided samples is off-policy. Drop train_cfg or set it True"),
    "negative_prompts": (lambda v: bool(v), "negative prompts are not supported; remove negative_prompts"),
    "train_use_8bit_adam": (lambda v: bool(v), "8-bit Adam (bitsandbytes) is not supported; pxpo-lite uses torch AdamW"),
    "push_to_hub": (lambda v: bool(v), "pxpo-lite never uploads; save with Trainer.save_lora and push it yourself"),
}


def _as_dict(cfg) -> dict:
    if isinstance(cfg, Mapping):
        return dict(cfg)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    raise TypeError(f"cfg must be a dict of TRL DDPOConfig fields or a DDPOConfig, got {type(cfg).__name__}")


def _check_known(d: dict) -> None:
    known = set(TRL_DEFAULTS) | set(IGNORED) | _RUN
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(
            f"unknown TRL DDPOConfig fields {unknown}; fields of TRL 0.23.1's DDPOConfig are "
            f"{sorted(known)} (is this a DDPOConfig of another TRL version?)"
        )


def train_config_from_trl(cfg, num_processes: int = 1, use_lora: bool = True, method: str = "ddpo", **overrides) -> TrainConfig:
    """The :class:`TrainConfig` that trains what a TRL ``DDPOConfig`` (or dict of its fields) trains.

    Args:
        cfg: a ``trl.DDPOConfig`` or a dict of its fields (missing fields take TRL 0.23.1's defaults).
        num_processes: processes the TRL run used (its samples per epoch scale with it).
        use_lora: TRL's pipeline trains LoRA by default; pass False for a full-UNet run.
        method: ``"ddpo"`` (what TRL implements) or ``"pxpo"`` (per-pixel credit on the same config).
        **overrides: any :class:`TrainConfig` field, applied last.

    Raises :class:`UnsupportedTRLSetting` for a value that would change the algorithm and
    ``ValueError`` for an unknown field.
    """
    d = _as_dict(cfg)
    _check_known(d)
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"num_processes must be an int >= 1, got {num_processes!r}")
    for name, (bad, why) in _UNSUPPORTED.items():
        if name in d and bad(d[name]):
            raise UnsupportedTRLSetting(f"TRL setting {name}={d[name]!r} is not supported: {why}")
    full = {**TRL_DEFAULTS, **{k: v for k, v in d.items() if k in TRL_DEFAULTS}}
    kwargs = {ours: full[theirs] for theirs, ours in TRL_FIELD_MAP.items()}
    kwargs["adam_betas"] = (full["train_adam_beta1"], full["train_adam_beta2"])
    kwargs["samples_per_epoch"] = full["sample_batch_size"] * full["sample_num_batches_per_epoch"] * num_processes
    kwargs["use_lora"] = use_lora
    kwargs["method"] = method
    ignored = sorted(k for k in d if k in IGNORED and k in d)
    if ignored:
        warnings.warn(f"TRL settings with no effect on what pxpo-lite trains were ignored: {ignored}", stacklevel=2)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"unknown TrainConfig fields in overrides: {bad}; known fields: {sorted(known)}")
    kwargs.update(overrides)
    return TrainConfig(**kwargs)


def trl_run_settings(cfg) -> dict:
    """The run-level part of a TRL config: ``{"epochs", "checkpoint_every", "checkpoint_dir"}``.

    ``epochs`` is TRL's ``num_epochs``; ``checkpoint_every`` its ``save_freq``; ``checkpoint_dir``
    its ``resume_from`` when set (pxpo-lite resumes from and saves to one folder:
    ``trainer.load_checkpoint(dir)`` then ``trainer.train(epochs, checkpoint_dir=dir, checkpoint_every=k)``).
    """
    d = _as_dict(cfg)
    _check_known(d)
    full = {**TRL_DEFAULTS, **d}
    for name, what in (("num_epochs", "epochs to train"), ("save_freq", "epochs between checkpoints")):
        v = full[name]  # an int, not 2.7 (would train 2) nor 0 (a run that never saves)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"TRL setting {name} ({what}) must be an int >= 1, got {v!r}")
    return {
        "epochs": int(full["num_epochs"]),
        "checkpoint_every": int(full["save_freq"]),
        "checkpoint_dir": full["resume_from"] or None,
    }
