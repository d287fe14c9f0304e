"""Save and resume a :class:`pxpo_lite.trainer.Trainer` with :mod:`pxpo_lite.checkpoint`'s format.

:func:`save_trainer_checkpoint` stores everything needed to continue a run exactly as if it had
never stopped: trainable weights, AdamW moments, the per-prompt stat tracker, the torch RNG,
epoch / global step / metrics, the **full** :class:`~pxpo_lite.trainer.TrainConfig`, and, for
LoRA training, a **fingerprint of the frozen base UNet** (:func:`pxpo_lite.checkpoint.base_fingerprint`),
so adapters are never loaded onto another model. :func:`load_trainer_checkpoint` checks the saved
config against the trainer's and raises or warns by the rule in its docstring.

Example::

    tr = Trainer(pipe, "blue", TrainConfig(...))
    tr.train(5)
    save_trainer_checkpoint(tr, "checkpoints/run1")         # = tr.save_checkpoint(...)
    tr2 = load_trainer_checkpoint(Trainer(pipe2, "blue", TrainConfig(...)), "checkpoints/run1")

Introduced in ``notebooks/02_ddpo.ipynb``.
"""
from __future__ import annotations

import warnings
import weakref
from pathlib import Path

import torch

from .checkpoint import (
    FIX, STATE, Checkpoint, CheckpointError, base_fingerprint, check_save_target, load_checkpoint, save_checkpoint,
)

# -- a Trainer's checkpoint ----------------------------------------------------------------------
TRAINER_KIND = "pxpo-lite-trainer"
# Changing one of these on resume makes the checkpoint mean something else: CheckpointError.
BREAKING_FIELDS = ("method", "num_steps", "eta", "guidance_scale", "per_prompt_stats", "stat_buffer_size", "stat_min_count",
                   "keep_beta")
# Compared through what the trainer resolved (use_lora=None -> True/False; lora_targets=None -> the defaults).
RESOLVED_FIELDS = ("use_lora", "lora_rank", "lora_alpha", "lora_targets", "learning_rate")
# No effect on the numbers: not compared.
IGNORED_FIELDS = ("progress", "log_with")
_REQUIRED = {"epoch": int, "global_step": int, "config": dict, "use_lora": bool, "metrics": list}
_FINGERPRINTS: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()


def _trainer_base_fingerprint(trainer) -> str | None:
    """The LoRA base model's fingerprint (cached per UNet: with LoRA the base weights are frozen);
    None when the full UNet is trained (its weights are all in the checkpoint)."""
    if not trainer.use_lora:
        return None
    unet = trainer.accelerator.unwrap_model(trainer.pipe.unet)
    if unet not in _FINGERPRINTS:
        _FINGERPRINTS[unet] = base_fingerprint(unet)
    return _FINGERPRINTS[unet]


def _lora_summary(lora_config) -> dict | None:
    if lora_config is None:
        return None
    d = {k: v for k, v in lora_config.to_dict().items() if k in ("r", "lora_alpha", "target_modules")}
    if d.get("target_modules") is not None:
        d["target_modules"] = sorted(d["target_modules"])
    return d


def save_trainer_checkpoint(trainer, path) -> Path:
    """Save a Trainer's model, optimiser, stat tracker, metrics, epoch, RNG, full config and base-model
    fingerprint to the folder ``path`` (the main process writes; every process checks ``path`` first,
    so a refused folder raises everywhere instead of leaving the others waiting)."""
    acc = trainer.accelerator
    path = Path(path)
    check_save_target(path)
    acc.wait_for_everyone()  # every process arrives; no collective inside the main-only branch
    if acc.is_main_process:
        meta, tracker_tensors = trainer.tracker.state_dict() if trainer.tracker is not None else (None, {})
        extra = {**tracker_tensors, "rng.torch_cpu": torch.get_rng_state()}
        state = {
            "kind": TRAINER_KIND,
            "epoch": trainer.epoch,
            "global_step": trainer.global_step,
            "config": trainer.config.to_dict(),
            "use_lora": trainer.use_lora,
            "lora_config": _lora_summary(trainer.lora_config),
            "base_fingerprint": _trainer_base_fingerprint(trainer),
            "tracker": meta,
            "metrics": trainer.metrics,
            "num_processes": acc.num_processes,
        }
        save_checkpoint(path, trainer.model_state_dict(), state, trainer.optimizer.state_dict(), extra)
    acc.wait_for_everyone()
    return path


def _validate_trainer_state(state: dict, folder: Path) -> None:
    where = f"checkpoint {str(folder)!r}: {STATE}"
    if state.get("kind") != TRAINER_KIND:
        raise CheckpointError(f"checkpoint {str(folder)!r} was not written by Trainer (kind {state.get('kind')!r})")
    for key, typ in _REQUIRED.items():
        v = state.get(key)
        if not isinstance(v, typ) or (typ is int and (isinstance(v, bool) or v < 0)):
            got = "missing" if key not in state else f"{v!r}"[:60]
            raise CheckpointError(f"{where} is damaged: {key!r} is {got}, expected a {typ.__name__}"
                                  f"{' >= 0' if typ is int else ''}; {FIX}")
    for key in ("tracker", "lora_config"):
        if state.get(key) is not None and not isinstance(state[key], dict):
            raise CheckpointError(f"{where} is damaged: {key!r} is {state[key]!r:.60}, expected an object or null; {FIX}")


def _compare_config(trainer, st: dict, ck: Checkpoint, path) -> None:
    """Raise for a breaking change, warn (old → new) for the others; see load_trainer_checkpoint."""
    # a field the saved config lacks (a checkpoint from before it existed) had its default's meaning
    old = {**type(trainer.config)().to_dict(), **st["config"]}
    new = trainer.config.to_dict()
    if st["use_lora"] != trainer.use_lora or old.get("method") != new["method"]:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is for method={old.get('method')!r}, use_lora={st['use_lora']}, "
            f"but this trainer has method={new['method']!r}, use_lora={trainer.use_lora}; use the same config"
        )
    lora_now = _lora_summary(trainer.lora_config)
    if st.get("lora_config") != lora_now:
        raise CheckpointError(f"checkpoint {str(path)!r} holds LoRA adapters {st.get('lora_config')}, but this trainer "
                              f"has {lora_now}; set lora_rank / lora_alpha / lora_targets as when it was saved")
    fp_old, fp_now = st.get("base_fingerprint"), _trainer_base_fingerprint(trainer)
    if fp_old is not None and fp_old != fp_now:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds LoRA adapters trained on another base model (fingerprint {fp_old}); this "
            f"trainer's base UNet has fingerprint {fp_now}; load it with the pipeline it was trained from"
        )
    breaking = [f"{k}: {old.get(k)!r} → {new[k]!r}" for k in BREAKING_FIELDS if old.get(k) != new[k]]
    if breaking:
        raise CheckpointError(f"checkpoint {str(path)!r} was trained with another {', '.join(breaking)}; these change "
                              "what the checkpoint means (policy, objective or stored statistics). Resume with the "
                              "saved values (TrainConfig.from_dict(state['config'])) or start a new run")
    skip = set(BREAKING_FIELDS) | set(RESOLVED_FIELDS) | set(IGNORED_FIELDS) | {"method"}
    changed = [f"{k}: {old.get(k)!r} → {new[k]!r}" for k in new if k not in skip and old.get(k) != new[k]]
    lr_old = ck.optimizer["param_groups"][0].get("lr") if ck.optimizer and ck.optimizer.get("param_groups") else None
    lr_new = trainer.optimizer.param_groups[0]["lr"]
    if lr_old is not None and lr_old != lr_new:
        changed.insert(0, f"learning_rate: {lr_old!r} → {lr_new!r}")
    if st.get("num_processes") not in (None, trainer.accelerator.num_processes):
        changed.append(f"num_processes: {st['num_processes']} → {trainer.accelerator.num_processes} (other random draws)")
    if changed:
        warnings.warn(f"resuming {str(path)!r} with a changed config, the new values are used: {'; '.join(changed)}",
                      stacklevel=3)


def load_trainer_checkpoint(trainer, path):
    """Restore a Trainer's model, optimiser, stat tracker, metrics, epoch and RNG from ``path`` (to resume).

    The rule for a config that differs from the saved one (every process checks, nothing is loaded
    before the checks pass):

    * **CheckpointError** when the change alters what the checkpoint *means*: ``method``, LoRA or
      not (``use_lora`` as resolved), the adapters' rank / alpha / target modules, the base model
      under LoRA adapters (its fingerprint), the policy being optimised (``num_steps``, ``eta``,
      ``guidance_scale`` define the per-step Gaussian policy), or the stored statistics
      (``per_prompt_stats``, ``stat_buffer_size``, ``stat_min_count``);
    * **a warning naming each field (old → new), and the new value is used** for everything else:
      the optimiser (``learning_rate`` — compared as the effective AdamW lr —, ``adam_*``: the
      restored AdamW moments are kept, its hyper-parameters come from the new config), clipping,
      batch sizes, ``samples_per_epoch``, ``timestep_fraction``, ``seed``, ``mixed_precision``, and
      the number of processes;
    * ``progress`` and ``log_with`` are not compared.

    Returns ``trainer``.
    """
    ck = load_checkpoint(path, map_location="cpu", validate=_validate_trainer_state)
    st = ck.state
    _compare_config(trainer, st, ck, path)
    try:
        trainer.load_model_state_dict(ck.model)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: model.safetensors does not fit this model ({e})") from e
    if ck.optimizer is not None:
        hyper = [{k: g[k] for k in ("lr", "betas", "weight_decay", "eps") if k in g} for g in trainer.optimizer.param_groups]
        try:
            trainer.optimizer.load_state_dict(ck.optimizer)
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {str(path)!r}: optimiser state does not fit this model ({e})") from e
        for g, h in zip(trainer.optimizer.param_groups, hyper):
            g.update(h)  # the new config's hyper-parameters (see the rule above)
    if trainer.tracker is not None and st.get("tracker") is not None:
        try:
            trainer.tracker.load_state_dict(st["tracker"], ck.extra)
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"checkpoint {str(path)!r}: the stat-tracker state is damaged ({e!r}); {FIX}") from e
    if "rng.torch_cpu" in ck.extra:
        torch.set_rng_state(ck.extra["rng.torch_cpu"])
    trainer.epoch, trainer.global_step, trainer.metrics = st["epoch"], st["global_step"], list(st["metrics"])
    return trainer



__all__ = ["TRAINER_KIND", "BREAKING_FIELDS", "save_trainer_checkpoint", "load_trainer_checkpoint"]
