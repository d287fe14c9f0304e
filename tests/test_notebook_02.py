"""Notebook 02 (DDPO) runs in smoke mode and records sane results."""
import math

import pytest


@pytest.mark.notebook
def test_notebook_02_smoke(executed_notebook):
    _, res, seconds = executed_notebook("02_ddpo.ipynb")
    for key in ("reward_before", "reward_after"):
        v = res[key]
        assert -1.0 <= v["mean"] <= 0.0 and 0.0 <= v["std"] <= 1.0, (key, v)
    assert math.isfinite(res["reward_gain"])
    for key in ("fidelity_before", "fidelity_after"):
        f = res[key]
        assert 0.0 <= f["all"] <= 1.0 and f["n"] == 8, (key, f)
    assert res["train"]["epochs"] == 2 and res["train"]["samples"] == 32
    assert len(res["curve"]) == 2 and all(math.isfinite(c["reward_mean"]) for c in res["curve"])
    speed = res["reward_ms_vs_sampling_ms"]
    assert speed["blue"] < speed["sampling"]  # the reward is cheap next to sampling
