"""Statistics of the experiments: smoothed curves, bootstrap confidence intervals over seeds,
samples-to-target per curve, and the one learning-rate rule every method is tuned by.

* :func:`smooth` — the moving average every reward curve is read through (trailing or centred).
* :func:`bootstrap_ci` — percentile bootstrap: resample the seeds with replacement
  ``n_boot`` times, recompute the statistic, take the (α/2, 1 − α/2) quantiles.
* :func:`samples_to_target` — the first x at which a (centred moving-average smoothed) curve
  reaches a target (None: never) — the rule of ``experiments.samples_to_reach``, on arrays.
* :func:`bootstrap_samples_to_target` — that number for the seed-mean curve, with a bootstrap
  interval over seeds; a resample that never reaches the target counts as +∞, so an upper
  bound of None means "may never reach it within the budget".
* :func:`select_lr` — the largest learning rate of a grid whose pilot run kept held-out prompt
  fidelity ≥ a threshold (90 %); if none did, the smallest of the grid, flagged.

Used by ``experiments.credit``, ``experiments.sweeps`` and ``benchmarks/bench_credit_assignment.py``; shown in
``notebooks/07_ddpo_vs_pxpo.ipynb``.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np


def smooth(y: Sequence[float], window: int = 3, centered: bool = False) -> np.ndarray:
    """Moving average over ``window`` points: trailing (default), or centred on each point.
    Near the ends it averages the points there are."""
    y = np.asarray(y, dtype=np.float64)
    if window <= 1 or len(y) == 0:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = np.empty_like(y)
    for i in range(len(y)):
        lo = max(0, i - window // 2) if centered else max(0, i + 1 - window)
        hi = min(len(y), i + (window - 1) // 2 + 1) if centered else i + 1
        out[i] = (c[hi] - c[lo]) / (hi - lo)
    return out


def _check_level(level) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level must be a number in (0, 1) (e.g. 0.95 for a 95 % interval), got {level!r}")
    return float(level)


def _check_n_boot(n_boot) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be an int >= 1 (bootstrap resamples, e.g. 2000), got {n_boot!r}")
    return int(n_boot)


def bootstrap_ci(values: Sequence[float], stat: Callable = np.mean, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``stat(values)`` (values: one number per seed).

    One value gives the degenerate interval (v, v): there is no spread to resample.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0 or not np.isfinite(v).all():
        raise ValueError(f"values must be a non-empty 1-D list of finite numbers (one per seed), got {values!r}")
    level, n_boot = _check_level(level), _check_n_boot(n_boot)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(v), size=(n_boot, len(v)))
    boots = np.array([stat(v[i]) for i in idx], dtype=np.float64)
    a = (1 - level) / 2
    return float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))


def samples_to_target(x: Sequence[float], y: Sequence[float], target: float, window: int = 3) -> int | None:
    """The first ``x`` at which ``y``, smoothed by a centred moving average of ``window``
    points, is ≥ ``target`` (None: never). ``x``: samples trained on, ``y``: reward per epoch."""
    x, y = np.asarray(x), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D and of the same length, got shapes {x.shape} and {y.shape}")
    if not isinstance(target, (int, float, np.floating)) or not math.isfinite(target):
        raise ValueError(f"target must be a finite number (e.g. DDPO's final reward), got {target!r}")
    ys = smooth(y, window, centered=True)
    hit = np.flatnonzero(ys >= target - 1e-12)
    return int(x[hit[0]]) if len(hit) else None


def bootstrap_samples_to_target(x: Sequence[float], curves, target: float, window: int = 3, n_boot: int = 2000,
                                level: float = 0.95, seed: int = 0) -> dict:
    """Samples-to-target of the seed-mean curve and its bootstrap interval over seeds.

    ``curves``: (seeds, epochs) rewards. Returns ``{"point", "lo", "hi", "never_fraction"}``;
    ``point`` from all seeds, ``lo``/``hi`` the interval's ends (None where the quantile is a
    resample that never reached the target), ``never_fraction`` the share of such resamples.
    Quantiles are order statistics (no interpolation), so an end is always an observed x or never.
    """
    c = np.asarray(curves, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] != len(x):
        raise ValueError(f"curves must be (seeds, epochs) with epochs = len(x) = {len(x)}, got shape {c.shape}")
    level, n_boot = _check_level(level), _check_n_boot(n_boot)
    point = samples_to_target(x, c.mean(0), target, window)
    rng = np.random.default_rng(seed)
    boots = []
    for idx in rng.integers(0, c.shape[0], size=(n_boot, c.shape[0])):
        n = samples_to_target(x, c[idx].mean(0), target, window)
        boots.append(math.inf if n is None else float(n))
    boots = np.array(boots)
    a = (1 - level) / 2
    lo, hi = np.quantile(boots, a, method="lower"), np.quantile(boots, 1 - a, method="higher")
    return {"point": point, "lo": None if math.isinf(lo) else int(lo), "hi": None if math.isinf(hi) else int(hi),
            "never_fraction": float(np.isinf(boots).mean())}


def select_lr(pilot: Mapping[float, float | None], threshold: float = 0.9) -> dict:
    """The learning-rate rule: the largest lr of the grid whose pilot kept fidelity ≥ ``threshold``.

    ``pilot``: ``{lr: held-out prompt fidelity at the end of the pilot run}`` (None/NaN: not
    measured, counts as failing). Returns ``{"lr", "passed", "rule"}``; when no lr passed, the
    smallest lr of the grid with ``passed=False`` (the gentlest step; the report must say so).
    """
    if not isinstance(pilot, Mapping) or not pilot:
        raise ValueError(f"pilot must be a non-empty dict {{learning rate: fidelity}}, got {pilot!r}")
    for lr, fid in pilot.items():
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"pilot learning rates must be finite numbers > 0, got {lr!r}")
        if fid is not None and (isinstance(fid, bool) or not isinstance(fid, (int, float)) or (math.isfinite(fid) and not 0 <= fid <= 1)):
            raise ValueError(f"pilot fidelity for lr={lr!r} must be in [0, 1] or None, got {fid!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a fidelity in [0, 1] (e.g. 0.9), got {threshold!r}")
    ok = [lr for lr, fid in pilot.items() if fid is not None and math.isfinite(fid) and fid >= threshold]
    rule = f"largest lr of {sorted(pilot)} with held-out prompt fidelity >= {threshold:g} at the end of the pilot"
    if ok:
        return {"lr": float(max(ok)), "passed": True, "rule": rule}
    return {"lr": float(min(pilot)), "passed": False, "rule": rule + " (none passed: the smallest lr of the grid)"}
