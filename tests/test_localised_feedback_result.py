"""The shipped localisation result measured RefineConfig's current defaults (commit with the result JSON)."""
from __future__ import annotations

from pxpo_lite.feedback import RefineConfig


# ---------------------------------------------------------------------------- the shipped measurement
def test_shipped_localised_feedback_result_measured_the_current_defaults():
    """The README and notebook 06 quote this file: its 'default' rows must be RefineConfig's defaults
    (re-run benchmarks/bench_localised_feedback.py and scripts/ship_benchmark_results.py after changing them)."""
    from dataclasses import asdict

    from pxpo_lite.data import load_benchmark

    b = load_benchmark("localised_feedback_rules")
    assert b["config"]["command"].startswith("python benchmarks/bench_localised_feedback.py")
    defaults = [s for s in b["summary"] if s["variant"] == "default"]
    assert defaults, "no row measured with RefineConfig's defaults (variant 'default')"
    ours = asdict(RefineConfig())
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_lf", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_localised_feedback.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for s in defaults:  # every knob the benchmark can vary was recorded (a new RefineConfig knob cannot pass unrecorded)
        assert set(bench.KEYS.values()) <= set(s["config"]), (s["rule"], set(bench.KEYS.values()) - set(s["config"]))
        for key, value in s["config"].items():
            if key != "num_steps":  # the benchmark's DDIM steps are a setting of its own (recorded in config)
                assert ours[key] == value, (s["rule"], key, value, ours[key])
    assert any("blob" in s["rule"] for s in defaults), "at least one free-stroke (blob) rule"
    rules = {s["rule"] for s in defaults}
    for wanted in ("dislike hair", "dislike shirt", "dislike line", "dislike stroke", "dislike blob, dislike blob"):
        assert wanted in rules, f"no default row for {wanted!r}"
    assert sum("blob" in r and "," not in r for r in rules) >= 2, "blobs of at least two sizes"
    assert any("like" in r.replace("dislike", "") for r in rules), "a like + dislike rule"
    for s in defaults:
        assert s["images"] >= 24, (s["rule"], s["images"])  # >= 8 images x 3 seeds
    for s in b["summary"]:
        for key in ("rule", "variant", "disliked_over_unpainted", "liked_over_unpainted", "change_unpainted", "change_disliked"):
            assert key in s, key
        assert {"mean", "std", "min", "max"} <= set(s["change_disliked"])


def test_previous_defaults_are_labelled_as_such():
    from pxpo_lite.data import load_benchmark

    prev = load_benchmark("localised_feedback_previous")
    assert all(s["variant"] != "default" for s in prev["summary"]) and "note" in prev["config"]
    b = prev
    for s in b["summary"]:
        for key in ("rule", "variant", "disliked_over_unpainted", "liked_over_unpainted", "change_unpainted", "change_disliked"):
            assert key in s, key
        assert {"mean", "std", "min", "max"} <= set(s["change_disliked"])
