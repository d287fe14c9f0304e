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
    assert results["canvas_change_map_matches_last_round"] is True  # the canvas overlays the last round's change map
    assert results["seconds_per_round"] > 0
    for k in ("change_inside_disliked", "change_liked", "change_outside_unpainted",
              "total_change_disliked", "total_change_liked", "total_change_unpainted"):
        v = results[k]
        assert isinstance(v, float) and math.isfinite(v) and 0 <= v <= 1, (k, v)
    assert results["change_inside_disliked"] > 0  # the update did something where it was asked to
    assert results["hair_pixels_before"] >= 0 and results["hair_pixels_after"] >= 0
    for k in ("new_seed_change_part", "new_seed_change_rest"):  # section 5c: what the model learned, on a new seed
        v = results[k]
        assert isinstance(v, float) and math.isfinite(v) and 0 <= v <= 1, (k, v)


def test_notebook_06_synthetic_smoke(executed_notebook):
    _, results, seconds = executed_notebook(NB06, FEEDBACK_SOURCE="synthetic")
    check_06(results)


def check_06_keep(results: dict) -> None:
    """Section 5b: the same refinement with and without the painted keep term."""
    assert results["keep_rounds"] >= 1
    assert results["keep_beta"] > 0
    assert results["keep_kl_fresh"] == 0.0  # fresh adapters: μ_θ = μ_ref exactly
    assert results["keep_kl_matches_torch"] is True
    for k in ("keep_ratio_with", "keep_ratio_without"):
        v = results[k]
        assert isinstance(v, float) and math.isfinite(v) and v > 0, (k, v)
    for tag in ("with", "without"):
        for part in ("disliked", "liked", "unpainted"):
            v = results[f"keep_{tag}_change_{part}"]
            assert isinstance(v, float) and math.isfinite(v) and 0 <= v <= 1, (tag, part, v)
        assert results[f"keep_{tag}_change_disliked"] > 0  # both sessions changed the disliked area
    # the keep term held the unpainted pixels: they changed less than without it
    assert results["keep_with_change_unpainted"] < results["keep_without_change_unpainted"]


def test_notebook_06_keep_term_section(executed_notebook):
    _, results, _ = executed_notebook(NB06, FEEDBACK_SOURCE="synthetic")  # the same cached run as above
    check_06_keep(results)


def test_nb06_session_is_saved_outside_the_source_tree(executed_notebook):
    """The smoke run's feedback session goes to test-artifacts/ (conftest passes SESSION_DIR), not notebooks/runs/."""
    from conftest import ARTIFACTS

    executed_notebook("06_human_feedback_canvas.ipynb")
    saved = list((ARTIFACTS / "sessions").glob("06_feedback_session*/session.json"))
    assert saved, "the notebook's session was not saved under test-artifacts/sessions/"
