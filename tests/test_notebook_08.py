"""Notebook 08 (Stable Diffusion) runs headless in smoke mode on the tiny SD pipeline built in code,
and in full mode without a GPU it says so and skips instead of crashing (papermill, via the
``executed_notebook`` fixture of conftest.py)."""
import json
import math
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.notebook

NB08 = "08_stable_diffusion.ipynb"
PATH = Path(__file__).resolve().parents[1] / "notebooks" / NB08


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def test_notebook_08_smoke_runs_the_latent_code_path(executed_notebook):
    _, results, _ = executed_notebook(NB08, FEEDBACK_SOURCE="synthetic")
    assert results["mode"] == "smoke"
    # tiny SD: 64×64 images from 4×8×8 latents; log-probs (B, T, 4, 8, 8) with T = 4 in smoke mode
    assert results["image_size"] == [64, 64]
    assert results["latent_shape"] == [4, 8, 8]
    assert results["log_probs_shape"] == [2, 4, 4, 8, 8]
    # the 8× area-average: stripes finer than a cell vanish exactly, coarser ones survive intact
    assert results["pool_factor"] == 8
    kept = results["stripes_kept"]
    assert kept["4"] == pytest.approx(0.0, abs=1e-6) and kept["8"] == pytest.approx(0.0, abs=1e-6)
    assert kept["16"] == pytest.approx(1.0) and kept["32"] == pytest.approx(1.0)
    assert 0.0 <= results["reward_variance_kept"] <= 1.0 + 1e-6
    for method in ("ddpo", "pxpo"):
        rewards = results[f"{method}_rewards"]
        assert len(rewards) == 1 and all(_finite(r) and -1.0 <= r <= 0.0 for r in rewards), rewards
        assert results[f"{method}_seconds_per_epoch"] > 0
        assert _finite(results[f"{method}_peak_memory_gib"]) and results[f"{method}_peak_memory_gib"] > 0
    # the painted round ran at image resolution and changed the disliked region
    assert results["feedback_source"] == "synthetic"
    assert results["feedback_image_size"] == [64, 64]
    assert results["feedback_change_disliked"] > 0
    assert 0 <= results["feedback_change_unpainted"] <= 1
    assert results["feedback_seconds"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path of full mode")
def test_notebook_08_full_mode_without_gpu_skips_and_says_so(executed_notebook):
    out, results, _ = executed_notebook(NB08, SMOKE=False, FEEDBACK_SOURCE="synthetic")
    assert results["mode"] == "skipped: no GPU"
    assert "unet_params_m" not in results and "ddpo_rewards" not in results  # nothing was loaded or trained
    text = json.dumps(json.loads(Path(out).read_text())["cells"])
    assert "No GPU found" in text and "skipped: full mode needs a GPU" in text


def test_notebook_08_states_full_mode_is_unmeasured_and_gives_an_estimate():
    cells = json.loads(PATH.read_text())["cells"]
    intro = "".join(cells[0]["source"])
    assert "not measured on a GPU" in intro
    assert "an estimate, not a measurement" in intro and "16 GB T4" in intro and "1.7 GB" in intro
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    for name in ("load_sd_pipeline", "to_sample_grid", "Trainer", "FeedbackSession", "HeatmapCanvas",
                 "float32_adapters", "peak_memory_gb"):
        assert name in code, f"notebook 08 should use {name}"
