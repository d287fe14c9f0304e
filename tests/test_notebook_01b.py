"""Notebook 01b (RL from zero) runs in smoke and in full mode and records sane, measured results."""
import math
from pathlib import Path

import pytest

from pxpo_lite.grade import kernel_name
from pxpo_lite.results import read_results

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.notebook

NB = "01b_rl_from_zero.ipynb"
EXACT_GRAD = 1.5  # ∇J at μ = −1 for r(a) = 10 − ¼(a − 2)²: −(μ − 2)/2


def check(results: dict, full: bool) -> None:
    assert results["reinforce_mc_abs_error"] < 0.05  # 200,000 actions: unbiased estimate of ∇J
    # both estimators are unbiased (the batch mean shrinks by (N−1)/N); the baseline lowers the variance
    assert abs(results["mean_no_baseline"] - EXACT_GRAD) < 0.4
    assert abs(results["mean_baseline"] - EXACT_GRAD) < 0.2
    assert results["var_ratio_no_over_with"] > (5 if full else 3)
    # PPO's clip bounds how far one batch moves μ; the unclipped ratio keeps going
    assert 0 < results["ppo_mu_moved"] < results["unclipped_mu_moved"]
    # your loss == the package's ddpo_loss on (B,1,1,1); at θ = θ_old PPO's gradient is REINFORCE's
    assert results["package_loss_abs_diff"] <= 1e-6 and results["package_grad_max_abs_diff"] <= 1e-6
    assert results["ddim_reinforce_vs_ppo_grad_rel_diff"] <= 1e-5
    for k in ("final_J_no_baseline", "final_J_baseline"):
        assert math.isfinite(results[k]) and results[k] > 7.5  # J(μ_start) = 7.5: learning happened
    if full:
        assert results["final_J_baseline"] > 9.6  # the optimum is 9.75


def test_notebook_01b_smoke(executed_notebook):
    _, results, _ = executed_notebook(NB)
    check(results, full=False)


@pytest.mark.slow
def test_notebook_01b_full(tmp_path):
    # run here, not via the shared fixture, so the smoke timings in test-artifacts stay smoke timings
    import papermill

    out = tmp_path / NB
    papermill.execute_notebook(str(ROOT / "notebooks" / NB), str(out), parameters={"SMOKE": False},
                               kernel_name=kernel_name(), cwd=str(ROOT / "notebooks"), progress_bar=False)
    check(read_results(out), full=True)
