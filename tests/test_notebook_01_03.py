"""Notebooks 01 (denoising as an MDP) and 03 (pixel-wise log-probs) run in smoke mode and record
sane results (papermill, via the ``executed_notebook`` fixture of conftest.py)."""
import math

import pytest

pytestmark = pytest.mark.notebook

NB01 = "01_denoising_as_an_mdp.ipynb"
NB03 = "03_pixelwise_logprobs.ipynb"


def check_01(results: dict) -> None:
    # one step's log-prob: by hand == package == torch.distributions == what sampling recorded
    assert results["logprob_hand_vs_package_max_abs"] <= 1e-4
    assert results["logprob_torch_vs_package_max_abs"] <= 1e-4
    assert results["logprob_sampling_vs_package_max_abs"] <= 1e-5
    assert abs(results["z_mean"]) < 0.1 and abs(results["z_std"] - 1) < 0.1  # the action is N(μ, σ²)
    assert results["last_step_logprob_finite"] is True
    assert results["logprob_theory_max_abs_dev"] < 0.1
    assert results["rescore_max_abs_diff"] <= 1e-5
    assert math.isfinite(results["own_prompt_logprob_gain_mean"])
    assert results["step_grad_norm"] > 0 and math.isfinite(results["step_grad_norm"])


def check_03(results: dict) -> None:
    # the DDPO identity on the real model
    assert results["identity_surrogate_abs_diff"] <= 1e-5
    assert results["identity_grad_rel_diff"] <= 1e-4
    # the variance comparison was measured and is finite
    for k in ("var_image", "var_pixel", "var_ratio_pixel_over_image", "cos_mean_grads"):
        assert isinstance(results[k], float) and math.isfinite(results[k]), (k, results[k])
    assert results["var_image"] > 0 and results["var_pixel"] > 0
    assert -1 <= results["cos_mean_grads"] <= 1
    assert 0 <= results["shirt_logratio_share"] <= 1 and 0 <= results["shirt_area_share"] <= 1


def test_notebook_01(executed_notebook):
    _, results, seconds = executed_notebook(NB01)
    check_01(results)


def test_notebook_03(executed_notebook):
    _, results, seconds = executed_notebook(NB03)
    check_03(results)
