"""Training checkpoints as a folder of safetensors + JSON (no pickle): resume exactly where a run stopped.

Layout of a checkpoint folder::

    model.safetensors      trainable weights (LoRA adapters or the full UNet), clean keys
    optimizer.safetensors  the optimiser's per-parameter state (AdamW: step, exp_avg, exp_avg_sq)
    extra.safetensors      stat-tracker buffers (``tracker.{i}``), RNG states (``rng.*``)
    state.json             format, epoch, config, metrics, stat-tracker meta, optimiser
                           param_groups, and the SHA-256 of every .safetensors file

``state.json`` is written last and the folder is written under a temporary name and renamed,
so an interrupted save never leaves a half-written checkpoint under the real name. Loading
checks the format, that every file is there and that every hash matches (a truncated or
altered file is reported as corrupt, by name). The optimiser state is stored as tensors
(``state.{param_index}.{key}``) plus its JSON param_groups, so no ``torch.save`` pickle is
needed.

Introduced in ``notebooks/02_ddpo.ipynb``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

FORMAT = "pxpo-lite-checkpoint/1"
FILES = ("model.safetensors", "optimizer.safetensors", "extra.safetensors")


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete, corrupt or of another format."""


@dataclass
class Checkpoint:
    model: dict[str, torch.Tensor]
    optimizer: dict | None  # ready for ``optimizer.load_state_dict``
    extra: dict[str, torch.Tensor]
    state: dict


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


# -- save / load ------------------------------------------------------------------------------
def save_checkpoint(
    path,
    model: dict[str, torch.Tensor],
    state: dict,
    optimizer_state: dict | None = None,
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint folder atomically (temporary folder, then rename). Returns its path."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
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
        save_file(tensors, str(tmp / name))
        hashes[name] = _sha256(tmp / name)
    full = {"format": FORMAT, **state, "optimizer": opt_meta, "sha256": hashes}
    (tmp / "state.json").write_text(json.dumps(full, indent=1, default=_json_default))
    if path.exists():
        old = path.with_name(path.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)
    return path


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot store {type(o).__name__} in state.json")


def load_checkpoint(path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read and verify a checkpoint folder; raises CheckpointError (or FileNotFoundError) naming the problem."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} does not exist (or is not a folder); pass a folder written by "
            "Trainer.save_checkpoint / pxpo_lite.checkpoint.save_checkpoint"
        )
    sj = path / "state.json"
    if not sj.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} has no state.json: it is incomplete (an interrupted save?)")
    try:
        state = json.loads(sj.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: state.json is corrupt ({e})") from e
    if state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} has format {state.get('format')!r}, expected {FORMAT!r}")
    loaded = {}
    for name in FILES:
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {str(path)!r} is incomplete: {name} is missing")
        want = state.get("sha256", {}).get(name)
        if want is not None and _sha256(f) != want:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: {name} is corrupt (its SHA-256 does not match state.json; truncated or altered)"
            )
        try:
            loaded[name] = load_file(str(f), device=str(map_location))
        except Exception as e:
            raise CheckpointError(f"checkpoint {str(path)!r}: {name} is corrupt ({type(e).__name__}: {e})") from e
    opt_meta = state.pop("optimizer", None)
    optimizer = tensors_to_optimizer(loaded["optimizer.safetensors"], opt_meta) if opt_meta is not None else None
    return Checkpoint(model=loaded["model.safetensors"], optimizer=optimizer, extra=loaded["extra.safetensors"], state=state)
