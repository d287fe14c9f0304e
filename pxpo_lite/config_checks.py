"""Checks of configuration fields shared by :class:`~pxpo_lite.trainer.TrainConfig` and
:class:`~pxpo_lite.feedback.RefineConfig`: each error names the field, what was given and the
allowed range. A bool is not a number here (``clip_range=True`` is an error, not 1.0); a NumPy
scalar or a 0-d tensor is (``np.float32(0.2)``, ``torch.tensor(1e-3)``), and the checks return it
as a Python float/int, so it is validated and converted up front, not refused after an epoch.

Introduced with the trainer in ``notebooks/02_ddpo.ipynb``.
"""
from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import torch


def as_real(value) -> float | None:
    """``value`` as a Python float if it is a real number — int/float, NumPy scalar, 0-d array or 0-d
    tensor (not a bool, not on the meta device) — else None."""
    if isinstance(value, torch.Tensor):
        ok = value.ndim == 0 and value.dtype != torch.bool and not value.is_complex() and value.device.type != "meta"
        return float(value) if ok else None
    if isinstance(value, np.ndarray):
        if value.ndim != 0:
            return None
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def as_int(value) -> int | None:
    """``value`` as a Python int if it is an integer (int, NumPy integer, 0-d integer tensor/array; not a bool), else None."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if value.ndim != 0 or value.dtype in (torch.bool, np.bool_) or (value.is_floating_point() if isinstance(value, torch.Tensor)
                                                                          else not np.issubdtype(value.dtype, np.integer)):
            return None
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def check_number(name: str, value, *, above: float | None = None, at_least: float | None = None,
                 at_most: float | None = None, below: float | None = None, optional: bool = False) -> float | None:
    """``value`` as a float; raise ValueError unless it is a finite real number (:func:`as_real`) in the
    given range (``above``/``below`` exclusive, ``at_least``/``at_most`` inclusive); None passes if ``optional``."""
    if value is None and optional:
        return None
    bounds = [f"> {above}" if above is not None else "", f">= {at_least}" if at_least is not None else "",
              f"<= {at_most}" if at_most is not None else "", f"< {below}" if below is not None else ""]
    want = "a finite number" + (" " + " and ".join(b for b in bounds if b) if any(bounds) else "")
    if optional:
        want = f"None or {want}"
    x = as_real(value)
    ok = x is not None and math.isfinite(x)
    ok = ok and (above is None or x > above) and (at_least is None or x >= at_least)
    ok = ok and (at_most is None or x <= at_most) and (below is None or x < below)
    if not ok:
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return x


def check_positive_int(name: str, value, optional: bool = False) -> int | None:
    """``value`` as an int; raise ValueError unless it is an integer >= 1 (:func:`as_int`), or None when ``optional``."""
    if optional and value is None:
        return None
    n = as_int(value)
    if n is None or n < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return n


def check_bool(name: str, value) -> None:
    """Raise ValueError unless ``value`` is True or False (not 0/1, not a str)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


#: The default of a renamed keyword's old name: tells "not given" from an explicit None.
NOT_GIVEN = object()


def renamed_keyword(where: str, old: str, old_value, new: str, new_value, default=None, stacklevel: int = 3):
    """The value of keyword ``new``, also when given by its old name ``old`` (issue 20, one meaning per
    name): that works and warns (DeprecationWarning, naming the new keyword); both given is a TypeError.
    ``old_value`` is :data:`NOT_GIVEN` when the caller did not use the old name."""
    if old_value is NOT_GIVEN:
        return new_value
    if new_value is not default:
        raise TypeError(f"{where}: give {new}= only ({old}= is its old name)")
    warnings.warn(f"{where}({old}=...) is renamed {new}=...; {old}= still works for now", DeprecationWarning, stacklevel=stacklevel)
    return old_value
