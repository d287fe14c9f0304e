"""One home per concept (issue 20, the structure review): each idea is defined in one module, the old
import paths still work, and a name means one thing."""
import importlib.util

import pytest


def _home(obj) -> str:
    return obj.__module__


def test_keep_lives_in_keep_py_and_update_re_exports_it():
    from pxpo_lite import keep, update
    from pxpo_lite.update import Keep  # the old import path

    assert _home(keep.Keep) == "pxpo_lite.keep" and update.Keep is Keep is keep.Keep
    assert "class Keep" not in importlib.util.find_spec("pxpo_lite.update").loader.get_source("pxpo_lite.update")


def test_which_steps_are_trained_lives_beside_sampling():
    from pxpo_lite import steps, trainer, update

    assert _home(steps.trainable_steps) == _home(steps.schedule) == "pxpo_lite.steps"
    assert update.trainable_steps is steps.trainable_steps and update.schedule is steps.schedule  # the old import path
    assert trainer.trainable_steps is steps.trainable_steps


def test_step_gaussians_is_the_one_rescoring_function():
    from pxpo_lite import ddim, keep, sampling

    assert keep.StepGaussian is sampling.StepGaussian is ddim.StepGaussian
    assert _home(sampling.step_gaussians) == "pxpo_lite.sampling"
    for name in ("model_output", "stacked_model_output", "resolve_guidance_scale", "uses_guidance"):  # moved, re-exported
        assert _home(getattr(sampling, name)) == "pxpo_lite.guidance"
    assert sampling.SD_DEFAULT_GUIDANCE == 5.0


@pytest.mark.parametrize("module", ["update", "keep", "steps", "sampling", "guidance", "ddim"])
def test_modules_stay_under_400_lines(module):
    src = importlib.util.find_spec(f"pxpo_lite.{module}").loader.get_source(f"pxpo_lite.{module}")
    assert len(src.splitlines()) <= 400
