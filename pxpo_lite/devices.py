"""Leaving the device: one way for tensors to reach NumPy/matplotlib, one device for maps and log-probs.

On a GPU runtime (e.g. Colab) the sampled images, latents, per-element log-probs and reward
maps all live in GPU memory. Two things then go wrong that never show on a CPU:

* ``t.numpy()`` raises ``TypeError: can't convert cuda:0 device type tensor to numpy`` and
  matplotlib (which calls ``np.asarray``) raises the same on a CUDA tensor; a float16 tensor
  (Stable Diffusion samples in half precision) becomes a float16 array that matplotlib and
  several NumPy routines handle poorly. :func:`to_numpy` is the single exit: detach → CPU →
  float32 if half/bfloat16 → NumPy. Every notebook and module hands tensors to NumPy with it
  (or with an explicit ``.cpu()``); ``tests/test_devices.py`` checks that statically.
* A map made on the CPU (a painted heatmap, an advantage map from NumPy statistics) multiplied
  by a log-prob map on the GPU raises ``Expected all tensors to be on the same device``.
  :func:`on_device_of` moves the one onto the other's device before they meet.

:func:`peak_memory_gb` / :func:`reset_peak_memory` report the GPU memory a step needed
(``torch.cuda.max_memory_allocated``) and, on a CPU, the process's peak resident memory.
:func:`cpu_threads` is the number of threads the notebooks give torch on a CPU.

Introduced in ``notebooks/08_stable_diffusion.ipynb``; used by every notebook that plots tensors.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def cpu_threads(default: int = 2) -> int:
    """Threads for torch on a CPU: ``OMP_NUM_THREADS`` when it is set to a whole number > 0 (a busy
    machine, or ``make test``'s two workers, set 1: extra OpenMP threads there wait on each other),
    else min(``default``, the CPU's cores) — two are faster than one on a quiet 2-core CPU."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return max(1, min(default, os.cpu_count() or 1))


def to_numpy(x) -> np.ndarray:
    """A NumPy array of ``x`` wherever it lives: detach → CPU → float32 if half/bfloat16 → NumPy.

    ``x`` may be a tensor on any device (CPU, CUDA, MPS), a NumPy array, or a (nested) list or
    number (passed through ``np.asarray``). Integer and bool tensors keep their dtype; float16 and
    bfloat16 become float32 (NumPy has no bfloat16; matplotlib mishandles float16).
    """
    if isinstance(x, torch.Tensor):
        if x.device.type == "meta":
            raise ValueError(
                f"x is a tensor on the 'meta' device (shape {tuple(x.shape)}): it has no values to convert. "
                "Materialise it on a real device first (e.g. run the model on 'cpu' or 'cuda')."
            )
        x = x.detach()
        if x.dtype in _LOW_PRECISION:
            x = x.float()
        return x.cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    if x is None or isinstance(x, (str, bytes, dict)):
        raise TypeError(
            f"x must be a torch.Tensor, a NumPy array, or a list/number, got {type(x).__name__}; "
            "pass the tensor itself (e.g. images, a reward map or log-probs)"
        )
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"x must be a tensor, an array or a list of numbers, got {type(x).__name__} ({e})") from None


def on_device_of(x, reference: torch.Tensor) -> torch.Tensor:
    """``x`` as a tensor on ``reference``'s device (dtype kept), so the two can meet in one expression.

    ``x`` may be a tensor (any device), a NumPy array or a list. Used where a map made on the CPU
    (a painted heatmap, advantages from NumPy statistics) meets log-probs on the GPU.
    """
    if not isinstance(reference, torch.Tensor):
        raise TypeError(
            f"reference must be the torch.Tensor whose device x should move to, got {type(reference).__name__}"
        )
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as e:
            raise TypeError(f"x must be a tensor, an array or a list of numbers, got {type(x).__name__} ({e})") from None
    return x.to(reference.device)


_NO_VALUES = ("it has a shape but no values. Make it on a real device ('cpu' or 'cuda'); if it came from a model built "
              "on 'meta', load that model's weights first (.to('cpu') cannot give a meta tensor values)")


def check_not_meta(*, unless_on=None, **tensors) -> None:
    """ValueError naming the first of ``tensors`` (``name=value``; non-tensors are skipped) on the 'meta'
    device, where torch's own errors deep inside ("Cannot copy out of meta tensor", "Tensor.item() cannot
    be called on meta tensors") name no argument. ``unless_on`` ``(name, tensor)``: nothing is checked when that
    tensor is on 'meta' too, so a pure tensor function still traces shapes on 'meta' (its result stays there)."""
    if unless_on is not None and unless_on[1].device.type == "meta":
        return
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.device.type == "meta":
            beside = f" but {unless_on[0]} is on {unless_on[1].device}" if unless_on is not None else ""
            raise ValueError(f"{name} is a tensor on the 'meta' device (shape {tuple(t.shape)}){beside}: {_NO_VALUES}")


def check_meta_mix(**tensors) -> None:
    """ValueError unless ``tensors`` are all on 'meta' (shape-only tracing) or none is: a meta tensor in an
    operation with a real one fails with torch's "Tensor on device cpu is not on the expected device meta"."""
    given = [(n, t) for n, t in tensors.items() if isinstance(t, torch.Tensor)]
    metas = [(n, t) for n, t in given if t.device.type == "meta"]
    reals = [(n, t) for n, t in given if t.device.type != "meta"]
    if metas and reals:
        (name, t), (other, r) = metas[0], reals[0]
        raise ValueError(f"{name} is a tensor on the 'meta' device (shape {tuple(t.shape)}) but {other} is on {r.device}: {_NO_VALUES}")


def _is_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def reset_peak_memory(device) -> None:
    """Start a new peak-memory measurement on ``device`` (a no-op on a CPU; see :func:`peak_memory_gb`)."""
    if _is_cuda(device):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device) -> tuple[float | None, str]:
    """``(GiB, what)``: the peak memory since :func:`reset_peak_memory`, and what that number is.

    On CUDA: ``torch.cuda.max_memory_allocated`` (tensors only; the caching allocator reserves a
    little more). On a CPU: the process's peak resident set size since it started (not resettable;
    Linux/macOS), or ``None`` where the platform does not report it.
    """
    if _is_cuda(device):
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**30, "GPU max_memory_allocated"
    try:
        import resource  # POSIX only (absent on Windows)
    except ImportError:
        return None, "not available on this platform"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024  # macOS reports bytes, Linux KiB
    return rss_bytes / 2**30, "CPU process peak RSS (whole process, since start)"
