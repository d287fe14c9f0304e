"""LoRA adapters on a diffusers UNet via peft: add, save, load, merge (``merge_and_unload``).

Low-rank adaptation (Hu et al., 2021) freezes a weight W and learns ΔW = (α/r)·B·A with
A ∈ R^{r×k}, B ∈ R^{d×r} (B starts at 0, so the adapted model starts equal to the base
model). DDPO fine-tunes Stable Diffusion this way (rank 4 on the attention projections
``to_q, to_k, to_v, to_out.0``); it saves memory and keeps the base weights intact.

Files are peft's adapter format: ``adapter_model.safetensors`` (keys as
``get_peft_model_state_dict`` returns them, e.g. ``...attn1.to_q.lora_A.weight``, never with a
``module.`` prefix — a known way for DDPO adapters to fail to load silently) and
``adapter_config.json``. Loading checks every key matches and fails loudly otherwise.

Nothing here re-implements peft: adapters are injected with diffusers' ``model.add_adapter``
(peft's ``inject_adapter_in_model``), merged with ``model.fuse_lora()`` (peft's per-layer
``merge``) and removed with ``model.unload_lora()``; DDP/accelerate wrappers are taken off
with accelerate's ``extract_model_from_parallel`` (what ``accelerator.unwrap_model`` calls).

Introduced in ``notebooks/02_ddpo.ipynb`` (trainer option) and ``notebooks/08_*`` (Stable Diffusion).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Sequence

import torch
from accelerate.utils import extract_model_from_parallel
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_NAME = "default"

SD_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
"""ddpo-pytorch's (and diffusers' SD LoRA training) targets: the attention projections."""
TINY_TARGETS = SD_TARGETS + ("proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2", "time_emb_proj")
"""For the tiny UNet, whose attention sits only at 8×8: also its ResNet convolutions."""

_PREFIXES = ("module.", "base_model.model.", "unet.")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP/accelerate/``torch.compile`` wrappers (accelerate's ``extract_model_from_parallel``),
    so adapter keys never get a ``module.`` prefix."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (e.g. pipe.unet), got {type(model).__name__}")
    return extract_model_from_parallel(model)




def matching_modules(model: torch.nn.Module, target_modules: Sequence[str]) -> list[str]:
    """Names of modules peft would adapt: name == target or name ends with '.' + target."""
    targets = list(target_modules)
    return [n for n, _ in unwrap(model).named_modules() if any(n == t or n.endswith("." + t) for t in targets)]


def has_lora(model: torch.nn.Module) -> bool:
    return any("lora_A" in n for n, _ in unwrap(model).named_parameters())


def add_lora(
    model: torch.nn.Module,
    rank: int = 4,
    alpha: float | None = None,
    target_modules: Sequence[str] = SD_TARGETS,
    init: str | bool = True,
):
    """Inject LoRA adapters (in place) and freeze everything else. Returns the peft ``LoraConfig``.

    ``alpha`` defaults to ``rank`` (scale 1). ``init=True`` is peft's default (B = 0: the model
    is unchanged until trained); "gaussian" as diffusers' SD LoRA training.
    """
    model = unwrap(model)
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    if has_lora(model):
        raise ValueError("the model already has LoRA adapters; merge (merge_and_unload) or rebuild it before adding new ones")
    found = matching_modules(model, target_modules)
    if not found:
        kinds = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))})
        raise ValueError(
            f"LoRA target_modules {list(target_modules)} match no module of {type(model).__name__}; "
            f"its Linear/Conv2d layers end in {kinds[:20]}{' ...' if len(kinds) > 20 else ''}. "
            "Pass target_modules naming some of them (e.g. pxpo_lite.lora.TINY_TARGETS for the tiny UNet)."
        )
    if not callable(getattr(model, "add_adapter", None)):
        raise TypeError(
            f"add_lora needs a diffusers model with adapter support (e.g. UNet2DConditionModel), got "
            f"{type(model).__name__}; pass pipe.unet"
        )
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, target_modules=list(target_modules), init_lora_weights=init)
    model.add_adapter(config, adapter_name=ADAPTER_NAME)  # peft injects in place, marks only adapters trainable
    for p in lora_parameters(model):  # a float16 UNet gets float16 adapters: AdamW's ε underflows there
        if p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.float()  # peft casts activations to the adapter's dtype and back
    return config


def lora_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for n, p in unwrap(model).named_parameters() if "lora_" in n]


def _clean(key: str) -> str:
    for p in _PREFIXES:
        while key.startswith(p):
            key = key[len(p):]
    return key


def lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights with clean keys (no adapter name, no ``module.`` prefix), detached, contiguous."""
    model = unwrap(model)
    if not has_lora(model):
        raise ValueError(f"{type(model).__name__} has no LoRA adapters to save; add them with add_lora first")
    sd = get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)
    return {_clean(k): v.detach().contiguous().clone() for k, v in sd.items()}


def load_lora_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy adapter weights into a model that already has adapters; every key must match."""
    model = unwrap(model)
    state = {_clean(k): v for k, v in state.items()}
    expected = set(lora_state_dict(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"LoRA weights do not match the model's adapters: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); were they saved from a model with the same "
            "rank, target_modules and architecture?"
        )
    set_peft_model_state_dict(model, state, adapter_name=ADAPTER_NAME)


def save_lora(model: torch.nn.Module, path, config=None) -> Path:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` into the folder ``path``."""
    model = unwrap(model)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = config if config is not None else model.peft_config[ADAPTER_NAME]
    save_file(lora_state_dict(model), str(path / ADAPTER_WEIGHTS))
    cfg = config.to_dict()
    cfg["target_modules"] = sorted(cfg["target_modules"]) if cfg.get("target_modules") is not None else None
    (path / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2, default=str))
    return path


def load_lora(model: torch.nn.Module, path):
    """Add adapters as saved in ``path`` to a fresh (adapter-free) model and load their weights."""
    path = Path(path)
    for f in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        if not (path / f).is_file():
            raise FileNotFoundError(f"LoRA folder {str(path)!r} has no {f}; save it with pxpo_lite.lora.save_lora")
    try:
        cfg = json.loads((path / ADAPTER_CONFIG).read_text())
        state = load_file(str(path / ADAPTER_WEIGHTS))
    except Exception as e:
        raise ValueError(f"LoRA files in {str(path)!r} are corrupt ({type(e).__name__}: {e})") from e
    config = add_lora(model, rank=cfg["r"], alpha=cfg["lora_alpha"], target_modules=cfg["target_modules"])
    load_lora_state_dict(model, state)
    return config


def merge_and_unload(model: torch.nn.Module) -> torch.nn.Module:
    """Fold ΔW = (α/r)·B·A into W and remove the adapter layers, in place; returns the model.

    diffusers' ``fuse_lora()`` (peft's ``merge`` on every LoRA layer) then ``unload_lora()``. The
    result is a plain model with the base architecture (the same parameter names as before
    ``add_lora``, no ``peft_config``); its outputs equal the adapted model's up to float rounding.
    """
    model = unwrap(model)
    if not has_lora(model):
        raise ValueError(f"{type(model).__name__} has no LoRA adapters to merge; add_lora or load_lora first")
    model.fuse_lora()
    model.unload_lora()
    return model


@contextlib.contextmanager
def merged_adapters(model: torch.nn.Module, enabled: bool = True):
    """For the ``with`` block, run every LoRA layer of ``model`` with ΔW merged into a copy of its base
    weights (peft's ``merge``), for no-grad sampling; afterwards the layers get their original weight
    tensors back, untouched bit for bit, and run the adapters again (trainable as before).

    A merged layer is one matrix product instead of three and saves peft's per-layer work: sampling
    on a CPU is ~10 % faster on the small model of ``benchmarks/bench_vs_trl.py``
    (``benchmarks/probe_small_model.py``). Outputs equal the unmerged ones to float rounding.
    ``TrainConfig.lora_merged_sampling`` switches it for the Trainer's sampling; ``enabled=False``
    (or a model without adapters) does nothing.
    """
    model = unwrap(model)
    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and not m.merged] if enabled else []
    saved = []
    try:
        with torch.no_grad():
            for m in layers:
                base = m.get_base_layer()
                saved.append((base, base.weight, base.bias))
                base.weight = torch.nn.Parameter(base.weight.detach().clone(), requires_grad=False)
                if base.bias is not None:  # peft merges a LoRA bias (lora_bias=True) into it
                    base.bias = torch.nn.Parameter(base.bias.detach().clone(), requires_grad=False)
                m.merge()
        yield model
    finally:
        for m in layers:
            if m.merged:
                m.unmerge()  # clears peft's bookkeeping; the arithmetic lands on the copies
        for base, weight, bias in saved:
            base.weight, base.bias = weight, bias


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
