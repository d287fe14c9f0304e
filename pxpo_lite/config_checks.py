"""Checks of configuration fields shared by :class:`~pxpo_lite.trainer.TrainConfig` and
:class:`~pxpo_lite.feedback.RefineConfig`: each error names the field, what was given and the
allowed range. A bool is not a number here (``clip_range=True`` is an error, not 1.0).

Introduced with the trainer in ``notebooks/02_ddpo.ipynb``.
"""
from __future__ import annotations

import math
import numbers


def check_number(name: str, value, *, above: float | None = None, at_least: float | None = None,
                 at_most: float | None = None, below: float | None = None, optional: bool = False) -> None:
    """Raise ValueError unless ``value`` is a finite real number (not a bool) in the given range
    (``above``/``below`` exclusive, ``at_least``/``at_most`` inclusive); None passes if ``optional``."""
    if value is None and optional:
        return
    bounds = [f"> {above}" if above is not None else "", f">= {at_least}" if at_least is not None else "",
              f"<= {at_most}" if at_most is not None else "", f"< {below}" if below is not None else ""]
    want = "a finite number" + (" " + " and ".join(b for b in bounds if b) if any(bounds) else "")
    if optional:
        want = f"None or {want}"
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (above is None or value > above) and (at_least is None or value >= at_least)
    ok = ok and (at_most is None or value <= at_most) and (below is None or value < below)
    if not ok:
        raise ValueError(f"{name} must be {want}, got {value!r}")


def check_positive_int(name: str, value, optional: bool = False) -> None:
    """Raise ValueError unless ``value`` is an int >= 1 (not a bool), or None when ``optional``."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def check_bool(name: str, value) -> None:
    """Raise ValueError unless ``value`` is True or False (not 0/1, not a str)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
