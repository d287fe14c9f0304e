"""The shipped localisation result measured RefineConfig's current defaults (commit with the result JSON)."""
from __future__ import annotations

from pxpo_lite.feedback import RefineConfig


# ---------------------------------------------------------------------------- the shipped measurement
def test_shipped_localised_feedback_result_measured_the_current_defaults():
    """The README and notebook 06 quote this file: its 'default' rows must be RefineConfig's defaults
    (re-run benchmarks/bench_localised_feedback.py and scripts/ship_benchmark_results.py after changing them)."""
    from dataclasses import asdict

    from pxpo_lite.data import load_benchmark

    b = load_benchmark("localised_feedback")
    assert b["config"]["command"].startswith("python benchmarks/bench_localised_feedback.py")
    defaults = [s for s in b["summary"] if s["variant"] == "default"]
    assert defaults, "no row measured with RefineConfig's defaults (variant 'default')"
    ours = asdict(RefineConfig())
    for s in defaults:
        for key, value in s["config"].items():
            if key != "num_steps":  # the benchmark's DDIM steps are a setting of its own (recorded in config)
                assert ours[key] == value, (s["rule"], key, value, ours[key])
    assert any("blob" in s["rule"] for s in defaults), "at least one free-stroke (blob) rule"
    for s in b["summary"]:
        for key in ("rule", "variant", "disliked_over_unpainted", "liked_over_unpainted", "change_unpainted", "change_disliked"):
            assert key in s, key
        assert {"mean", "std", "min", "max"} <= set(s["change_disliked"])
