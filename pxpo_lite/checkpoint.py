"""Training checkpoints as a folder of safetensors + JSON (no pickle): resume exactly where a run stopped.

Layout of a checkpoint folder::

    model.safetensors      trainable weights (LoRA adapters or the full UNet), clean keys
    optimizer.safetensors  the optimiser's per-parameter state (AdamW: step, exp_avg, exp_avg_sq)
    extra.safetensors      stat-tracker buffers (``tracker.{i}``), RNG states (``rng.*``)
    state.json             format, epoch, config, base-model fingerprint, metrics, stat-tracker
                           meta, optimiser param_groups, and the SHA-256 of every .safetensors file

**Nothing lost on a kill.** A save writes the new checkpoint into the hidden staging folder
``.<name>.pxpo-tmp`` beside ``<path>`` (first the marker ``pxpo-save.json`` naming its target, then
the files, ``state.json`` last, every file fsynced), then swaps it in file by file: each file is
hard-linked (copied where links are not possible) to ``<path>/<file>.pxpo-new`` and renamed over
``<path>/<file>``, ``state.json`` last; then the staging folder is removed. So once a checkpoint
has been saved, ``<path>`` **always exists**, and at every moment either ``<path>`` or the staging
folder is a complete, hash-verified checkpoint: a caller's ``if os.path.exists(ck):
trainer.load_checkpoint(ck)`` finds it, and :func:`load_checkpoint` reads the staging copy (with a
warning) when a kill left ``<path>`` half-swapped. The next save first finishes that swap
(:func:`recover_checkpoint`). Loading never renames anything (every process of a distributed run
reads; only the main process writes).

**Nothing of yours touched.** Only what this package made and recorded is created or replaced:
``<path>`` must be missing, empty, or a checkpoint of ours (a checkpoint's own files only, with a
``state.json`` of this format, or none while our staging folder for it exists); the staging
folder must be missing or ours (its marker names ``<path>``, and it holds nothing else). Anything
else is refused (:class:`CheckpointError`) with its name and what to do: a ``notes.txt`` or
``figs/`` inside, a ``model.safetensors`` of your own, the current folder or one of its parents
(``save_checkpoint('.')``). Your own ``run1.old/`` or ``run1.tmp/`` beside ``run1`` is never
read, moved or deleted (versions before 0.3 used those names; they are now ignored).

Loading checks the format, that ``state.json`` is a JSON object with a hash for every file, and
every hash (a truncated or altered file is reported as corrupt, by name). The optimiser state
is stored as tensors (``state.{param_index}.{key}``) plus its JSON param_groups, so no
``torch.save`` pickle is needed. :mod:`pxpo_lite.trainer_checkpoint` saves and restores a
:class:`pxpo_lite.trainer.Trainer` with this format (its full config and the fingerprint of its
base model; what a config change on resume does).

Introduced in ``notebooks/02_ddpo.ipynb``.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .files import fsync_dir, sha256_file
from .lora import base_fingerprint  # noqa: F401 (re-exported: sessions and trainer checkpoints use it)

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
    path: Path | None = None  # the folder actually read (the staging folder after an interrupted save)


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
STAGING_SUFFIX = ".pxpo-tmp"
MARKER = "pxpo-save.json"  # in a staging folder only: {"format": FORMAT, "target": <path's name>}
NEW = ".pxpo-new"  # <path>/<file>.pxpo-new: a file being swapped in


def staging(path) -> Path:
    """The hidden staging folder of a save to ``path``: ``.<name>.pxpo-tmp`` beside it (``path``
    resolved, so that '.' has a name)."""
    p = Path(path).resolve()
    return p.with_name(f".{p.name}{STAGING_SUFFIX}")


def _own_file(e: Path) -> bool:
    return e.is_file() and not e.is_symlink() and (e.name in OWN_NAMES or (e.name.endswith(NEW) and e.name[:-len(NEW)] in OWN_NAMES))


def _staging_problem(path) -> str | None:
    """None when the staging folder of ``path`` is missing or ours; else why it is not ours."""
    t = staging(path)
    if not t.exists() and not t.is_symlink():
        return None
    if t.is_symlink() or not t.is_dir():
        return "it is not a folder"
    try:
        mark = json.loads((t / MARKER).read_text())
    except (OSError, ValueError):
        mark = None
    if mark != {"format": FORMAT, "target": Path(path).resolve().name}:
        return f"it has no {MARKER} of this package naming {Path(path).resolve().name!r}"
    foreign = [e.name for e in t.iterdir() if e.name != MARKER and not _own_file(e)]
    return f"it holds files a save does not write ({foreign[:8]})" if foreign else None


def _check_staging(path) -> None:
    why = _staging_problem(path)
    if why:
        raise CheckpointError(f"refusing to save a checkpoint to {str(path)!r}: {str(staging(path))!r}, the name its saves "
                              f"stage in, is not a save of this package ({why}); move it away or rename it")


def _remove_staging(t: Path) -> None:
    """Delete a staging folder already checked to be ours: its files, the marker last, then the folder."""
    for e in t.iterdir():
        if e.name != MARKER:
            e.unlink()
    (t / MARKER).unlink(missing_ok=True)
    t.rmdir()
    fsync_dir(t.parent)


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


def check_save_target(path) -> None:
    """Raise CheckpointError unless a save may replace ``path``: it is missing, an empty folder, or a
    checkpoint of ours (only a checkpoint's own files, with a ``state.json`` of this format — or a
    damaged one —, or none while our staging folder for it exists); and its staging folder is
    missing or ours. The current folder and its parents are always refused."""
    p = Path(path).resolve()
    cwd = Path.cwd().resolve()
    if p == cwd or p in cwd.parents:
        raise CheckpointError(
            f"refusing to save a checkpoint to {str(path)!r} = {str(p)!r}: that is the current folder or one of its "
            "parents, and a save replaces the whole folder; pass a new sub-folder such as 'checkpoints/run1'"
        )
    _check_staging(path)
    if not p.exists() and not p.is_symlink():
        return
    if p.is_symlink() or not p.is_dir():
        raise CheckpointError(f"cannot save a checkpoint to {str(path)!r}: it is a file or a link, not a folder; pass a folder path")
    entries = sorted(p.iterdir())
    foreign = [e.name + ("/" if e.is_dir() else "") for e in entries if not _own_file(e)]
    problem = None
    if (p / STATE).is_file():
        try:
            st = json.loads((p / STATE).read_text())
            if isinstance(st, dict) and st.get("format") != FORMAT:
                problem = f"{STATE} of another format"
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass  # a damaged state.json of a checkpoint
    elif entries and not foreign and not staging(path).exists():
        problem = f"{[e.name for e in entries][:8]} without a {STATE}, so not recorded as a checkpoint of this package"
    if foreign or problem:
        what = foreign[:8] + ([f"... {len(foreign) - 8} more"] if len(foreign) > 8 else [])
        raise CheckpointError(
            f"refusing to save a checkpoint to {str(path)!r}: the folder is not empty and is not a checkpoint "
            f"(it holds {what or problem}); a save would delete it. Pass a new or empty "
            "folder, or move those files away"
        )


def _swap_in(t: Path, p: Path) -> None:
    """Make ``p`` hold the verified checkpoint in the staging folder ``t``, file by file (``state.json``
    last): at every moment ``p`` exists and ``t`` stays complete. ``t`` is removed by the caller."""
    p.mkdir(exist_ok=True)
    for name in FILES + (STATE,):
        new = p / (name + NEW)
        new.unlink(missing_ok=True)
        try:
            os.link(t / name, new)
        except OSError:  # a file system without hard links
            _write_fsynced(new, lambda f: shutil.copyfile(t / name, f))
        os.replace(new, p / name)
    for e in p.iterdir():
        if e.name.endswith(NEW):
            e.unlink()
    fsync_dir(p)
    fsync_dir(p.parent)


def recover_checkpoint(path) -> Path | None:
    """Finish a save that a kill interrupted: when ``<path>`` is not a verified checkpoint and our
    staging folder is, swap the staging copy in. Then remove our staging folder (only while
    ``<path>`` is verified). Returns the staging folder that was recovered, or None. Main process only."""
    p = Path(path).resolve()
    t = staging(p)
    recovered = None
    if t.exists() and not _is_verified(p):
        check_save_target(p)  # only a damaged checkpoint of ours is replaced, only from our staging folder
        if _is_verified(t):
            _swap_in(t, p)
            warnings.warn(f"checkpoint {str(p)!r}: recovered the complete copy {t.name} left by an interrupted save",
                          stacklevel=3)
            recovered = t
    if t.exists() and _is_verified(p):
        _check_staging(p)
        _remove_staging(t)
    return recovered


def _is_verified(path: Path) -> bool:
    try:
        verify_checkpoint(path)
        return True
    except (CheckpointError, FileNotFoundError):
        return False


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
    """Write a checkpoint folder (into the staging folder, then swapped in file by file; see the module
    docstring). Returns ``Path(path)``.

    Refuses a ``path`` (or staging folder) holding anything this package did not write
    (:func:`check_save_target`); first recovers a checkpoint left by an interrupted save
    (:func:`recover_checkpoint`).
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict (it becomes {STATE}), got {type(state).__name__}")
    reserved = sorted({"format", "optimizer", "sha256"} & set(state))
    if reserved:
        raise ValueError(f"state must not use the reserved keys {reserved}; rename them")
    check_save_target(path)
    recover_checkpoint(path)
    p = Path(path).resolve()
    t = staging(p)
    if t.exists():  # ours (checked), not verified or <path> is: a partial or stale save
        _remove_staging(t)
    t.mkdir(parents=True)
    _write_fsynced(t / MARKER, lambda f: f.write_text(json.dumps({"format": FORMAT, "target": p.name})))
    opt_tensors, opt_meta = optimizer_to_tensors(optimizer_state) if optimizer_state is not None else ({}, None)
    blobs = {
        "model.safetensors": {k.removeprefix("module."): v.detach().contiguous().cpu() for k, v in model.items()},
        "optimizer.safetensors": {k: v.cpu() for k, v in opt_tensors.items()},
        "extra.safetensors": {k: v.detach().contiguous().cpu() for k, v in (extra or {}).items()},
    }
    hashes = {}
    for name, tensors in blobs.items():
        _write_fsynced(t / name, lambda f: save_file(tensors, str(f)))
        hashes[name] = sha256_file(t / name)
    full = {"format": FORMAT, **state, "optimizer": opt_meta, "sha256": hashes}
    text = json.dumps(full, indent=1, default=_json_default)
    _write_fsynced(t / STATE, lambda f: f.write_text(text))  # last: without it the folder is not a checkpoint
    fsync_dir(t)
    _swap_in(t, p)
    _remove_staging(t)
    return Path(path)


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot store {type(o).__name__} in {STATE}")


def load_checkpoint(path, map_location: str | torch.device = "cpu", validate=None) -> Checkpoint:
    """Read and verify a checkpoint folder; raises CheckpointError (or FileNotFoundError) naming the problem.

    When ``<path>`` is missing or damaged, the verified copy an interrupted save left in its staging
    folder (``.<name>.pxpo-tmp``, with this package's marker) is read instead, with a warning;
    nothing is renamed. A ``<path>.old`` or ``<path>.tmp`` of yours is never read.
    ``validate(state, folder)`` (optional) raises CheckpointError for a state its caller cannot use;
    it is part of the verification (a copy that fails it is not used).
    """
    path = Path(path)
    errors = []
    for cand in (path, staging(path)):
        try:
            if cand is not path and _staging_problem(path):
                raise CheckpointError(f"{str(cand)!r} is not a staging folder of this package")
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
    bad = [f"{n}: {k}" for n in FILES[:2] for k, v in loaded[n].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:  # else the NaN surfaces later, blamed on the sampler
        raise CheckpointError(f"checkpoint {str(path)!r} holds NaN/inf values in {bad[:4]}: the run had diverged when it was "
                              "saved, or the file was altered; resume from an earlier checkpoint or start again")
    opt_meta = state.pop("optimizer", None)
    try:
        optimizer = tensors_to_optimizer(loaded["optimizer.safetensors"], opt_meta) if opt_meta is not None else None
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: the optimiser entry of {STATE} is damaged ({e!r}); {FIX}") from e
    return Checkpoint(model=loaded["model.safetensors"], optimizer=optimizer, extra=loaded["extra.safetensors"],
                      state=state, path=path)


__all__ = [
    "FORMAT", "FILES", "STATE", "FIX", "CheckpointError", "Checkpoint", "save_checkpoint", "load_checkpoint",
    "verify_checkpoint", "check_save_target", "recover_checkpoint", "base_fingerprint", "staging", "MARKER",
    "optimizer_to_tensors", "tensors_to_optimizer",
]
