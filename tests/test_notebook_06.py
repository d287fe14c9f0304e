"""Notebook 06 (human feedback canvas) runs headless in smoke mode with synthetic feedback and
records sane results (papermill, via the ``executed_notebook`` fixture of conftest.py)."""
import math

import pytest

pytestmark = pytest.mark.notebook

NB06 = "06_human_feedback_canvas.ipynb"


def check_06(results: dict) -> None:
    assert results["rounds"] >= 2
    assert results["feedback_source"] == "synthetic"
    assert results["session_reload_matches"] is True
    assert results["seconds_per_round"] > 0
    for k in ("change_inside_disliked", "change_liked", "change_outside_unpainted",
              "total_change_disliked", "total_change_liked", "total_change_unpainted"):
        v = results[k]
        assert isinstance(v, float) and math.isfinite(v) and 0 <= v <= 1, (k, v)
    assert results["change_inside_disliked"] > 0  # the update did something where it was asked to
    assert results["hair_pixels_before"] >= 0 and results["hair_pixels_after"] >= 0


def test_notebook_06_synthetic_smoke(executed_notebook):
    _, results, seconds = executed_notebook(NB06, FEEDBACK_SOURCE="synthetic")
    check_06(results)
