"""How many UNet rows fit in memory: the rule behind the automatic batch sizes.

Two defaults read it: the trainer's sampling chunk (``TrainConfig.sample_batch_size=None``: the
whole epoch in one call when it fits) and the timesteps scored per forward
(``TrainConfig.timestep_batch=None``, :func:`pxpo_lite.update.resolve_timestep_batch`).

What is **measured** and what is **estimated**:

* the activation bytes of one UNet row (one sample at one timestep) are *measured* on the model
  itself: one probe forward of a single row with autograd recording, summing the distinct tensors
  autograd saves for the backward pass (``torch.autograd.graph.saved_tensors_hooks``) — what a
  training forward keeps alive per row, on any device, for the parameters that train (LoRA or
  all). It is cached per UNet and input shape (one extra forward of batch 1 per run);
* the free memory is read from the device: ``torch.cuda.mem_get_info`` on a GPU, the OS's
  available memory (``psutil`` or ``/proc/meminfo``) on a CPU;
* the rule ``rows ≤ MEMORY_FRACTION × free / bytes per row`` is an **estimate**: it leaves the
  other half for weights' gradients, optimiser state, allocator slack and kernel workspaces. For
  sampling (no gradients) the training bytes per row over-estimate what a row keeps alive, so the
  cap is conservative. On a CPU (the only device this rule has run on so far) it never binds for
  the tiny models; on a GPU it is **unmeasured** until someone runs it there.
"""
from __future__ import annotations

import os
import types

import torch

__all__ = ["MEMORY_FRACTION", "PROBE_ERRORS", "available_bytes", "activation_bytes_per_row", "rows_that_fit", "sampling_batch_size"]

#: share of the free memory the automatic batch sizes may fill with activations (an estimate)
MEMORY_FRACTION = 0.5


def available_bytes(device) -> int | None:
    """Free memory on ``device`` in bytes (CUDA: ``mem_get_info``; CPU: the OS's available memory), or None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def activation_bytes_per_row(pipe, sample_shape, cond: torch.Tensor) -> int:
    """Bytes autograd saves for backward in a forward of ONE row (measured, cached on ``pipe.unet``).

    ``sample_shape``: (C,h,w) of the UNet input; ``cond``: prompt embeddings, any batch (row 0 is used).
    The probe touches no random state and changes no weights; with no parameter that requires grad
    it measures 0 (nothing would be saved in training either) and returns 1.
    """
    unet = pipe.unet
    param = next(unet.parameters())
    n_train = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    key = (tuple(int(s) for s in sample_shape), tuple(cond.shape[1:]), param.dtype, str(param.device), n_train)
    cache = unet.__dict__.setdefault("_pxpo_row_bytes", {})
    if key in cache:
        return cache[key]
    seen: dict[tuple, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.Parameter) and t.device.type != "meta":
            try:
                ptr = t.untyped_storage().data_ptr()
                seen[(t.device.type, ptr)] = max(seen.get((t.device.type, ptr), 0), t.untyped_storage().nbytes())
            except (RuntimeError, NotImplementedError):
                seen[(id(t), 0)] = t.numel() * t.element_size()
        return t

    x = torch.zeros((1, *sample_shape), device=param.device, dtype=param.dtype)
    t = torch.tensor([500], device=param.device)
    c = cond[:1].to(device=param.device, dtype=param.dtype)
    from .guidance import model_output

    caller = types.SimpleNamespace(unet=unet, scheduler=types.SimpleNamespace(scale_model_input=lambda s, _t: s))
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model_output(caller, x, t, c, None, 1.0)
    del out
    cache[key] = max(1, sum(seen.values()))
    return cache[key]


#: what a probe forward raises on a model it cannot run on (a stand-in UNet, weights on the meta device)
PROBE_ERRORS = (TypeError, AttributeError, RuntimeError, ValueError)


def rows_that_fit(pipe, sample_shape, cond: torch.Tensor, fraction: float = MEMORY_FRACTION) -> int | None:
    """How many UNet rows' activations fit in ``fraction`` of the free memory (≥ 1); None (no cap) when the
    free memory is unknown or the probe forward cannot run on this model (:data:`PROBE_ERRORS`, a meta device)."""
    if getattr(cond, "device", None) is not None and cond.device.type == "meta":
        return None
    try:
        free = available_bytes(next(pipe.unet.parameters()).device)
        if free is None:
            return None
        return max(1, int(fraction * free) // activation_bytes_per_row(pipe, sample_shape, cond))
    except PROBE_ERRORS:
        return None


def sampling_batch_size(pipe, n: int, prompts, guidance_scale=None) -> int:
    """Trajectories per sampling call for ``n`` samples (the trainer's ``sample_batch_size=None``): all ``n`` in one
    call when their rows fit (:func:`rows_that_fit`; rows per sample = 2 with guidance, the CFG batch
    [uncond; cond] being one forward, else 1), otherwise as few equal calls as fit. When the probe cannot run on
    a model or the free memory is unknown, the whole ``n`` is one call. Chunking does not change the
    distribution: every sample's x_T and step noise are fresh N(0, I) draws in either layout (other draws)."""
    from .guidance import resolve_guidance_scale, uses_guidance
    from .sampling import _encode, _sample_shape

    try:  # a stand-in pipeline may not encode prompts: no cap then, as when the probe cannot run
        rows = 2 if uses_guidance(resolve_guidance_scale(pipe, guidance_scale)) else 1
        fit = rows_that_fit(pipe, _sample_shape(pipe, 1)[1:], _encode(pipe, list(prompts[:1]), 1.0)[0])
    except PROBE_ERRORS:
        fit = None
    cap = n if fit is None else max(1, min(n, fit // rows))
    calls = -(-n // cap)
    return -(-n // calls)
