"""The comparison engine of the self-checking exercises (package docstring: :mod:`pxpo_lite.checks`).

:func:`run_check` runs a learner's function and a reference on fixed random cases, compares values
and gradients, and :func:`show` displays ✓ / ✗ with a hint / "not done yet" with the MIME type
:data:`MIME` that ``python -m pxpo_lite.grade`` reads back. Introduced in notebook 01.
"""
from __future__ import annotations

import copy
import html
from typing import Callable

import numpy as np
import torch

MIME = "application/vnd.pxpo-lite.exercise+json"
PASSED, FAILED, NOT_DONE = "passed", "failed", "not done"
OUTCOMES: dict[str, dict] = {}
"""exercise name -> {"status": passed | failed | not done, "message": str} (the last check wins)."""
RTOL, ATOL = 1e-4, 1e-4
CONTINUES = "(the notebook continues with the reference implementation.)"


def show(name: str, status: str, message: str) -> None:
    OUTCOMES[name] = {"status": status, "message": message}
    text = f"{ {PASSED: '✓', FAILED: '✗', NOT_DONE: '…'}[status]} {name}: {message}"
    colour = {PASSED: "#1a7f37", FAILED: "#cf222e", NOT_DONE: "#9a6700"}[status]
    try:
        from IPython import get_ipython  # IPython: not a dependency; only inside a notebook
        from IPython.display import display

        if get_ipython() is None:
            raise ImportError
        display({MIME: {"exercise": name, "status": status, "message": message}, "text/plain": text,
                 "text/html": f'<div style="color:{colour};font-weight:600">{html.escape(text)}</div>'}, raw=True)
    except ImportError:  # plain Python
        print(text)


def summary() -> dict[str, dict]:
    """Print one line per exercise checked in this session and return a copy of :data:`OUTCOMES`."""
    for name, o in OUTCOMES.items():
        print(f"{o['status']:>9}  {name}")
    return dict(OUTCOMES)


# --------------------------------------------------------------------------------------------
# The comparison engine
# --------------------------------------------------------------------------------------------
def as_tensor_result(x) -> torch.Tensor | None:
    if isinstance(x, tuple) and x and isinstance(x[0], torch.Tensor):
        x = x[0]  # (loss, info), as the package's losses return
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (int, float, np.ndarray, np.generic)) and not isinstance(x, bool):
        try:
            return torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError):
            return None
    return None


FLOATS = (torch.float32, torch.float64)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor"
    if isinstance(x, np.ndarray):
        return f"a NumPy array ({x.dtype})"
    if isinstance(x, np.generic):
        return f"a NumPy {type(x).__name__}"
    return f"a {type(x).__name__}"


def contract_problem(raw, want: torch.Tensor, returns: str) -> str | None:
    """Why a result breaks the documented return type (``None`` when it keeps it).

    ``returns="tensor"``: a torch tensor of dtype float32 or float64 (the cells after the check call
    tensor methods on it); ``"number"``: a Python/NumPy number or a 0-d tensor or array.
    """
    if returns == "number":
        ok = isinstance(raw, (int, float, np.generic)) and not isinstance(raw, bool)
        ok = ok or (isinstance(raw, (torch.Tensor, np.ndarray)) and raw.ndim == 0)
        return None if ok else f"your function returned {_describe(raw)}; return one number (an int, a float or a 0-d tensor)."
    shape = f" of shape {tuple(want.shape)}" if want.ndim else " (0-d: one number)"
    if isinstance(raw, tuple):
        return f"your function returned a tuple; return the tensor itself{shape}, as the docstring says."
    if not isinstance(raw, torch.Tensor):
        return (f"your function returned {_describe(raw)}, but the cells after this one use it as a torch tensor{shape} "
                "(they call .mean(dim=…), .cpu(), .item()): return a tensor, e.g. torch.as_tensor(result).")
    if raw.dtype not in FLOATS:
        return f"your function returned a {raw.dtype} tensor; return a floating-point one (float32 or float64)."
    return None


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=RTOL, atol=atol))


def _fresh(case: dict, grad: tuple) -> dict:
    """A copy of a case's arguments (nothing is shared with the case or another copy); the ``grad``
    ones become leaf tensors that require grad."""
    out = {}
    for k, v in case.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().clone().requires_grad_(k in grad)
        elif not isinstance(v, (int, float, str, bool, type(None))):
            v = copy.deepcopy(v)  # lists of prompts, arrays, schedulers, models
        out[k] = v
    return out


def _as_arrays(args: dict) -> dict:
    return {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in args.items()}


SIMPLE_RATIOS = {f"{k}": float(k) for k in range(2, 17)} | {f"1/{k}": 1 / k for k in range(2, 17)}


def _diagnose(got, want, variants: dict, shape_hint: str, nonfinite_hint: str) -> str:
    if got is None:
        return "your function returned None or a non-number: did you forget `return`?"
    if got.shape != want.shape:
        return f"your result has shape {tuple(got.shape)} but should have {tuple(want.shape)}. {shape_hint}".strip()
    if not torch.isfinite(got).all():
        return f"your result contains NaN or inf where the reference is finite. {nonfinite_hint}".strip()
    for hint, v in variants.items():
        if _close(got.detach(), torch.as_tensor(v).detach().to(got.device)):
            return hint
    g, w = got.detach().double().flatten(), want.detach().double().flatten()
    if _close(g, -w):
        return "your result has the wrong sign (is it a loss to minimise or an objective to maximise?)."
    if g.numel() == 1:  # one number: a ratio or an offset says little, unless the ratio is a small simple one
        if abs(float(w[0])) > 1e-6:
            r = float(g[0] / w[0])
            for name, v in SIMPLE_RATIOS.items():
                if abs(r - v) < 1e-4 * v:
                    return (f"your result is {name} × the reference ({float(g[0]):.6g} instead of {float(w[0]):.6g}): "
                            f"a factor {name} too many or too few (a sum instead of a mean, a missing ½?).")
        return f"your result is {float(g[0]):.6g}, the reference gives {float(w[0]):.6g}."
    big = w.abs() > 1e-6
    if big.any():
        ratio = g[big] / w[big]
        if (ratio - ratio[0]).abs().max() < 1e-4 * max(1.0, abs(float(ratio[0]))) and abs(float(ratio[0]) - 1) > 1e-3:
            return (f"your result is the reference times a constant factor {float(ratio[0]):.4g}: "
                    "check sum vs mean, a missing or extra scale, or a factor of 2.")
    diff = g - w
    if (diff - diff[0]).abs().max() < 1e-4 * max(1.0, float(diff[0].abs())):
        return (f"your result is off by the constant {float(diff[0]):.4g} everywhere: a term that does not "
                "depend on the inputs is missing or extra (a normalising constant?).")
    k = int(diff.abs().argmax())
    return (f"values differ (largest |difference| {float(diff.abs().max()):.3g}; at flat index {k} the "
            f"reference gives {float(w[k]):.6g}, yours {float(g[k]):.6g}).")


def _call(fn, args: dict, arrays: bool):
    """The learner's result on ``args``; with ``arrays``, a function written for NumPy arrays that
    fails on tensors is called again with arrays (the exercise's text says "arrays")."""
    try:
        return fn(*args.values())  # positionally: the learner may name the arguments differently
    except NotImplementedError:
        raise
    except Exception:
        if not arrays:
            raise
        try:
            return fn(*_as_arrays(args).values())
        except Exception:
            pass
        raise


def run_check(name: str, fn: Callable, reference: Callable, cases: list[dict], *, grad: tuple = (),
              variants: Callable[[dict], dict] | None = None, shape_hint: str = "", nonfinite_hint: str = "",
              returns: str = "tensor", arrays: bool = False) -> Callable:
    """Run ``fn`` and ``reference`` on every case (keyword arguments plus a description ``"_what"``
    and, optionally, ``"_grad_atol"``, an absolute tolerance for that case's gradients).

    Each side gets its own copy of the inputs (the reference runs first), so a function that
    changes its inputs changes neither the reference nor the verdict. ``returns``: the documented
    return type, "tensor" (float32/float64 torch tensor) or "number"; ``arrays``: the inputs may
    be taken as NumPy arrays (see :func:`_call`).
    """
    if not callable(fn):
        raise TypeError(f"check_{name} needs your function (a callable), got {type(fn).__name__}; pass the function itself")
    for i, case in enumerate(cases):
        what = case.get("_what", f"case {i}")
        grad_atol = case.get("_grad_atol", ATOL)
        args = {k: v for k, v in case.items() if not k.startswith("_")}
        ref, mine = _fresh(args, grad), _fresh(args, grad)
        want = as_tensor_result(reference(*ref.values()))
        try:
            raw = _call(fn, mine, arrays)
        except NotImplementedError:
            show(name, NOT_DONE, f"not done yet — {CONTINUES[1:-2]}.")
            return reference
        except Exception as e:  # the learner's own error: say on which case
            show(name, FAILED, f"your function raised {type(e).__name__} on {what}: {e} {CONTINUES}")
            return reference
        got = as_tensor_result(raw)
        if got is not None:
            got = got.to(want.device)
        values_ok = got is not None and _close(got.detach(), want.detach())
        problem = contract_problem(raw, want, returns) if raw is not None else None
        if problem:
            right = " (Its values are right.)" if values_ok else ""
            show(name, FAILED, f"on {what}: {problem}{right} {CONTINUES}")
            return reference
        if not values_ok:
            hint = _diagnose(got, want, variants(args) if variants else {}, shape_hint, nonfinite_hint)
            show(name, FAILED, f"on {what}: {hint} {CONTINUES}")
            return reference
        if grad:
            if not got.requires_grad:
                show(name, FAILED, f"on {what}: the values are right but your result is not differentiable w.r.t. "
                      f"{', '.join(grad)} (a .detach(), .item(), numpy or torch.no_grad() inside?). {CONTINUES}")
                return reference
            w = torch.randn(want.shape, generator=torch.Generator().manual_seed(i), dtype=want.dtype)
            g_mine = torch.autograd.grad((got * w.to(got.dtype)).sum(), [mine[k] for k in grad], allow_unused=True)
            g_ref = torch.autograd.grad((want * w).sum(), [ref[k] for k in grad], allow_unused=True)
            for k, a, b in zip(grad, g_mine, g_ref):
                if not _close(torch.zeros_like(b) if a is None else a, b, atol=grad_atol):
                    show(name, FAILED, f"on {what}: the values match but the gradient w.r.t. {k} differs "
                          f"(a detached or in-place step?). {CONTINUES}")
                    return reference
    show(name, PASSED, f"passed on {len(cases)} random cases{' (values and gradients)' if grad else ''}. Well done!")
    return fn


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


