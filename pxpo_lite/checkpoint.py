"""Training checkpoints as a folder of safetensors + JSON (no pickle): resume exactly where a run stopped.

Layout of a checkpoint folder::

    model.safetensors      trainable weights (LoRA adapters or the full UNet), clean keys
    optimizer.safetensors  the optimiser's per-parameter state (AdamW: step, exp_avg, exp_avg_sq)
    extra.safetensors      stat-tracker buffers (``tracker.{i}``), RNG states (``rng.*``)
    state.json             format, epoch, config, base-model fingerprint, metrics, stat-tracker
                           meta, optimiser param_groups, and the SHA-256 of every .safetensors file

**Nothing lost on a kill.** A save writes the new checkpoint into ``<path>.tmp`` (``state.json``
last, every file fsynced), then swaps it in with two renames: ``<path> → <path>.old``,
``<path>.tmp → <path>``, and deletes ``<path>.old``. A kill between those steps leaves a complete,
hash-verified copy at ``.tmp`` or ``.old``: :func:`load_checkpoint` then reads the first verified
of ``<path>``, ``<path>.tmp``, ``<path>.old`` (with a warning), and the next save first puts that
copy back at ``<path>`` (:func:`recover_checkpoint`) — a verified copy is never deleted while
``<path>`` is not itself a verified checkpoint. Loading never renames anything (every process of
a distributed run reads; only the main process writes).

**Nothing of yours overwritten.** A save refuses (:class:`CheckpointError`) a ``<path>`` that holds
anything other than a checkpoint's own files (``notes.txt``, ``figs/``), and refuses the current
folder or one of its parents (``save_checkpoint('.')``).

Loading checks the format, that ``state.json`` is a JSON object with a hash for every file, and
every hash (a truncated or altered file is reported as corrupt, by name). The optimiser state
is stored as tensors (``state.{param_index}.{key}``) plus its JSON param_groups, so no
``torch.save`` pickle is needed. :mod:`pxpo_lite.trainer_checkpoint` saves and restores a
:class:`pxpo_lite.trainer.Trainer` with this format (its full config and the fingerprint of its
base model; what a config change on resume does).

Introduced in ``notebooks/02_ddpo.ipynb``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .files import fsync_dir, sha256_file

FORMAT = "pxpo-lite-checkpoint/1"
FILES = ("model.safetensors", "optimizer.safetensors", "extra.safetensors")
STATE = "state.json"
OWN_NAMES = frozenset(FILES + (STATE,))
FIX = "restore the folder from a backup, or delete it and start training again"


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete, corrupt, of another format, or does not fit the trainer."""


@dataclass
class Checkpoint:
    model: dict[str, torch.Tensor]
    optimizer: dict | None  # ready for ``optimizer.load_state_dict``
    extra: dict[str, torch.Tensor]
    state: dict
    path: Path | None = None  # the folder actually read (``<path>.tmp``/``.old`` after an interrupted save)


# -- optimiser state <-> tensors + JSON -----------------------------------------------------
def optimizer_to_tensors(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """``optimizer.state_dict()`` -> (tensors ``state.{i}.{key}``, JSON meta with param_groups and non-tensor state)."""
    tensors, scalars = {}, {}
    for i, s in state_dict["state"].items():
        for k, v in s.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{i}.{k}"] = v.detach().contiguous().clone()
            else:
                scalars[f"{i}.{k}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def tensors_to_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, i, k = key.split(".", 2)
        state.setdefault(int(i), {})[k] = v
    for key, v in meta.get("scalars", {}).items():
        i, k = key.split(".", 1)
        state.setdefault(int(i), {})[k] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# -- what is at a path ----------------------------------------------------------------------------
def sibling(path, suffix: str) -> Path:
    """``<path>.tmp`` / ``<path>.old`` (``path`` resolved, so that '.' has a name)."""
    p = Path(path).resolve()
    return p.with_name(p.name + suffix)


def verify_checkpoint(path) -> dict:
    """Check a folder is a complete checkpoint (format, state.json a JSON object, every file's hash).

    Returns its state dict; raises CheckpointError (FileNotFoundError when there is no folder)
    naming the file that is wrong and what to do.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} does not exist (or is not a folder); pass a folder written by "
            "Trainer.save_checkpoint / pxpo_lite.checkpoint.save_checkpoint"
        )
    sj = path / STATE
    if not sj.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} has no {STATE}: it is incomplete (an interrupted save?); {FIX}")
    try:
        state = json.loads(sj.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: {STATE} is not valid JSON ({e}); {FIX}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r}: {STATE} holds a JSON {type(state).__name__}, not an object; {FIX}")
    if state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} has format {state.get('format')!r}, expected {FORMAT!r}")
    hashes = state.get("sha256")
    if not isinstance(hashes, dict):
        raise CheckpointError(f"checkpoint {str(path)!r}: {STATE} has no 'sha256' table of the files; {FIX}")
    for name in FILES:
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {str(path)!r} is incomplete: {name} is missing; {FIX}")
        if hashes.get(name) != sha256_file(f):
            raise CheckpointError(
                f"checkpoint {str(path)!r}: {name} is corrupt (its SHA-256 does not match {STATE}; truncated or altered); {FIX}"
            )
    return state


def _is_verified(path: Path) -> bool:
    try:
        verify_checkpoint(path)
        return True
    except (CheckpointError, FileNotFoundError):
        return False


def check_save_target(path) -> None:
    """Raise CheckpointError unless a save may replace ``path``: it is missing, an empty folder, or a
    folder holding only a checkpoint's own files (and, if its state.json is a JSON object, of this
    format). The current folder and its parents are always refused."""
    p = Path(path).resolve()
    cwd = Path.cwd().resolve()
    if p == cwd or p in cwd.parents:
        raise CheckpointError(
            f"refusing to save a checkpoint to {str(path)!r} = {str(p)!r}: that is the current folder or one of its "
            "parents, and a save replaces the whole folder; pass a new sub-folder such as 'checkpoints/run1'"
        )
    if not p.exists():
        return
    if not p.is_dir():
        raise CheckpointError(f"cannot save a checkpoint to {str(path)!r}: it is a file, not a folder; pass a folder path")
    entries = sorted(p.iterdir())
    foreign = [e.name + ("/" if e.is_dir() else "") for e in entries if e.name not in OWN_NAMES or not e.is_file()]
    own_format = True
    if (p / STATE).is_file():
        try:
            st = json.loads((p / STATE).read_text())
            own_format = not isinstance(st, dict) or st.get("format") == FORMAT
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass  # a damaged state.json of a checkpoint
    if foreign or not own_format:
        what = foreign[:8] + ([f"... {len(foreign) - 8} more"] if len(foreign) > 8 else [])
        raise CheckpointError(
            f"refusing to save a checkpoint to {str(path)!r}: the folder is not empty and is not a checkpoint "
            f"(it holds {what or [STATE + ' of another format']}); a save would delete it. Pass a new or empty "
            "folder, or move those files away"
        )


def recover_checkpoint(path) -> Path | None:
    """Finish a save that a kill interrupted: when ``<path>`` is not a verified checkpoint, move the
    verified ``<path>.tmp`` (else ``<path>.old``) there. Then remove leftovers (only while ``<path>``
    is verified). Returns the folder that was recovered, or None. Main process only."""
    p = Path(path).resolve()
    tmp, old = sibling(p, ".tmp"), sibling(p, ".old")
    recovered = None
    if not _is_verified(p):
        for cand in (tmp, old):
            if _is_verified(cand):
                if p.exists():
                    check_save_target(p)  # only a damaged checkpoint of ours is removed
                    shutil.rmtree(p)
                os.replace(cand, p)
                fsync_dir(p.parent)
                warnings.warn(f"checkpoint {str(p)!r}: recovered the complete copy {cand.name} left by an interrupted save",
                              stacklevel=3)
                recovered = cand
                break
    if _is_verified(p):
        for left in (tmp, old):
            if left.exists():
                shutil.rmtree(left) if left.is_dir() else left.unlink()
    return recovered


# -- save / load ------------------------------------------------------------------------------
def _write_fsynced(path: Path, write) -> None:
    write(path)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def save_checkpoint(
    path,
    model: dict[str, torch.Tensor],
    state: dict,
    optimizer_state: dict | None = None,
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint folder (into ``<path>.tmp``, then two renames). Returns ``Path(path)``.

    Refuses a ``path`` holding anything but a checkpoint (:func:`check_save_target`); first
    recovers a checkpoint left by an interrupted save (:func:`recover_checkpoint`).
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict (it becomes {STATE}), got {type(state).__name__}")
    reserved = sorted({"format", "optimizer", "sha256"} & set(state))
    if reserved:
        raise ValueError(f"state must not use the reserved keys {reserved}; rename them")
    check_save_target(path)
    recover_checkpoint(path)
    p = Path(path).resolve()
    tmp, old = sibling(p, ".tmp"), sibling(p, ".old")
    if tmp.exists():  # <path> is verified (recover_checkpoint would have used a verified .tmp): a stale partial save
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    opt_tensors, opt_meta = optimizer_to_tensors(optimizer_state) if optimizer_state is not None else ({}, None)
    blobs = {
        "model.safetensors": {k.removeprefix("module."): v.detach().contiguous().cpu() for k, v in model.items()},
        "optimizer.safetensors": {k: v.cpu() for k, v in opt_tensors.items()},
        "extra.safetensors": {k: v.detach().contiguous().cpu() for k, v in (extra or {}).items()},
    }
    hashes = {}
    for name, tensors in blobs.items():
        _write_fsynced(tmp / name, lambda f: save_file(tensors, str(f)))
        hashes[name] = sha256_file(tmp / name)
    full = {"format": FORMAT, **state, "optimizer": opt_meta, "sha256": hashes}
    text = json.dumps(full, indent=1, default=_json_default)
    _write_fsynced(tmp / STATE, lambda f: f.write_text(text))  # last: without it the folder is not a checkpoint
    fsync_dir(tmp)
    if p.exists():
        if old.exists():  # <path> is verified here, so .old is an obsolete copy
            shutil.rmtree(old)
        os.replace(p, old)
        os.replace(tmp, p)
        fsync_dir(p.parent)
        shutil.rmtree(old)
    else:
        os.replace(tmp, p)
        fsync_dir(p.parent)
    return Path(path)


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot store {type(o).__name__} in {STATE}")


def load_checkpoint(path, map_location: str | torch.device = "cpu", validate=None) -> Checkpoint:
    """Read and verify a checkpoint folder; raises CheckpointError (or FileNotFoundError) naming the problem.

    When ``<path>`` is missing or damaged, the verified copy an interrupted save left at
    ``<path>.tmp`` (else ``<path>.old``) is read instead, with a warning; nothing is renamed.
    ``validate(state, folder)`` (optional) raises CheckpointError for a state its caller cannot use;
    it is part of the verification (a copy that fails it is not used).
    """
    path = Path(path)
    errors = []
    for cand in (path, sibling(path, ".tmp"), sibling(path, ".old")):
        try:
            state = verify_checkpoint(cand)
            if validate is not None:
                validate(state, cand)
        except (CheckpointError, FileNotFoundError) as e:
            errors.append(e)
            continue
        if cand is not path:
            warnings.warn(f"checkpoint {str(path)!r} is missing or damaged ({errors[0]}); reading the complete copy "
                          f"{str(cand)!r} left by an interrupted save (the next save puts it back in place)", stacklevel=2)
        return _read(cand, state, map_location)
    raise errors[0]


def _read(path: Path, state: dict, map_location) -> Checkpoint:
    loaded = {}
    for name in FILES:
        try:
            loaded[name] = load_file(str(path / name), device=str(map_location))
        except Exception as e:
            raise CheckpointError(f"checkpoint {str(path)!r}: {name} is corrupt ({type(e).__name__}: {e}); {FIX}") from e
    opt_meta = state.pop("optimizer", None)
    try:
        optimizer = tensors_to_optimizer(loaded["optimizer.safetensors"], opt_meta) if opt_meta is not None else None
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: the optimiser entry of {STATE} is damaged ({e!r}); {FIX}") from e
    return Checkpoint(model=loaded["model.safetensors"], optimizer=optimizer, extra=loaded["extra.safetensors"],
                      state=state, path=path)


def base_fingerprint(unet: torch.nn.Module) -> str:
    """sha256 (first 16 hex) of a UNet's base weights: names (``.base_layer.`` removed) and values,
    LoRA adapters left out, so a model with and without adapters has the same fingerprint."""
    while hasattr(unet, "module") and isinstance(unet.module, torch.nn.Module):
        unet = unet.module  # DDP / accelerate wrappers
    h = hashlib.sha256()
    for name, p in sorted(unet.state_dict().items()):
        if "lora_" in name:
            continue
        name = name.replace(".base_layer.", ".")
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


__all__ = [
    "FORMAT", "FILES", "STATE", "FIX", "CheckpointError", "Checkpoint", "save_checkpoint", "load_checkpoint",
    "verify_checkpoint", "check_save_target", "recover_checkpoint", "base_fingerprint", "sibling",
    "optimizer_to_tensors", "tensors_to_optimizer",
]
