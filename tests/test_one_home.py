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


@pytest.mark.parametrize("module", ["update", "keep", "steps", "sampling", "guidance", "ddim", "feedback", "refine_config", "trainer"])
def test_modules_stay_under_400_lines(module):
    src = importlib.util.find_spec(f"pxpo_lite.{module}").loader.get_source(f"pxpo_lite.{module}")
    assert len(src.splitlines()) <= 400


# ---------------------------------------------------------------------------- one meaning per name
def test_keep_weights_is_the_trainers_map_function_and_keep_map_the_tensor(monkeypatch):
    import copy
    import inspect

    import torch

    from pxpo_lite import trainer as trainer_mod, update
    from pxpo_lite.models import build_tiny_pipeline

    assert "keep_weights" in inspect.signature(trainer_mod.Trainer).parameters  # fn(images, prompts) -> (B,H,W)
    assert inspect.signature(trainer_mod.Trainer.optimise).parameters["keep_weights"].kind is inspect.Parameter.KEYWORD_ONLY
    cfg = trainer_mod.TrainConfig(num_steps=3, samples_per_epoch=2, sample_batch_size=2, train_batch_size=2, keep_beta=1.0,
                                  progress=False)
    tr = trainer_mod.Trainer(copy.deepcopy(build_tiny_pipeline(0)), "blue", cfg, prompts=["a bald portrait"])
    seen = []
    info = {"loss": 0.0, "ratio_min": 1.0, "ratio_max": 1.0}
    monkeypatch.setattr(trainer_mod, "policy_gradient_step", lambda *a, keep=None, **k: seen.append(keep) or update.StepResult([info], 0.0))
    traj, _ = tr.sample_and_score(n=2, generator=torch.Generator().manual_seed(0))
    w = torch.rand(2, 32, 32)
    tr.optimise(traj, torch.zeros(2), keep_map=w)
    with pytest.warns(DeprecationWarning, match=r"Trainer\.optimise\(keep_weights=\.\.\.\) is renamed keep_map="):
        tr.optimise(traj, torch.zeros(2), keep_weights=w)  # the old keyword still works
    assert len(seen) == 2 and all(k.weights is w for k in seen)
    with pytest.raises(TypeError, match="give keep_map= only"):
        tr.optimise(traj, torch.zeros(2), keep_map=w, keep_weights=w)


def test_keep_beta_names_one_beta():
    import pxpo_lite.experiments as E
    from pxpo_lite import feedback
    from pxpo_lite.experiments import credit

    assert feedback.KEEP_BETA == 10.0 and credit.CREDIT_KEEP_BETA == 1.0  # two defaults, two names
    assert E.KEEP_BETA == credit.KEEP_BETA == E.CREDIT_KEEP_BETA  # the old name still works
    assert "CREDIT_KEEP_BETA" in E.__all__ and "KEEP_BETA" not in E.__all__
    import inspect

    for fn in (credit.run_credit, credit.pilot_lr, credit.benchmark):
        assert inspect.signature(fn).parameters["keep_beta"].default == credit.CREDIT_KEEP_BETA


def test_one_spelling_of_summarise():
    import ast
    from pathlib import Path

    import pxpo_lite
    import pxpo_lite.experiments as E

    defined = [(p.name, n.name) for p in Path(pxpo_lite.__file__).parent.rglob("*.py")
               for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
               if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and "summariz" in n.name.lower()]
    assert not defined, defined
    assert E.summarize is E.summarise and E.summarize_credit is E.summarise_credit  # old spellings: aliases
    assert {"summarise", "summarise_credit"} <= set(E.__all__) and not any("summariz" in n for n in E.__all__)


# ---------------------------------------------------------------------------- one home per check
def test_one_scheduler_type_check():
    """ddim.check_scheduler is the one DDIM-scheduler check: sampling, re-scoring and steps.schedule call it."""
    import ast
    from pathlib import Path

    from diffusers import EulerDiscreteScheduler

    import pxpo_lite
    from pxpo_lite import ddim, models, sampling, steps

    checks = [(p.name, n.lineno) for p in Path(pxpo_lite.__file__).parent.rglob("*.py")
              for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
              if isinstance(n, ast.Call) and ast.unparse(n.func) == "isinstance" and ast.unparse(n.args[1]) == "DDIMScheduler"]
    assert checks == [("ddim.py", checks[0][1])], checks
    assert not hasattr(sampling, "_check_scheduler_type")
    pipe = models.build_tiny_pipeline(0)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    for call in (lambda: sampling.sample(pipe, ["a portrait"], num_steps=2, progress=False), lambda: steps.schedule(pipe, 2),
                 lambda: steps.trainable_steps(pipe, 2, 1.0), lambda: ddim.check_scheduler(pipe.scheduler, "pipe.scheduler")):
        with pytest.raises(TypeError, match=r"^pipe\.scheduler must be a diffusers DDIMScheduler, got EulerDiscreteScheduler\. "
                                            r"Only DDIM with eta > 0.*DDIMScheduler\.from_config"):
            call()


def test_held_out_measures_live_in_evaluation_and_smooth_in_stats():
    import ast

    import pxpo_lite.experiments as E
    from pxpo_lite.experiments import credit, evaluation, stats, sweeps

    for name in ("region_change", "fidelity_key", "key_fidelity", "evaluate"):
        assert _home(getattr(evaluation, name)) == "pxpo_lite.experiments.evaluation", name
        assert getattr(credit, name) is getattr(evaluation, name), name  # the old import path still works
    assert E.region_change is evaluation.region_change and E.evaluate is evaluation.evaluate
    assert _home(stats.smooth) == "pxpo_lite.experiments.stats" and sweeps.smooth is E.smooth is stats.smooth
    src = importlib.util.find_spec("pxpo_lite.experiments.stats").loader.get_source("pxpo_lite.experiments.stats")
    imported = {n.module for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)}
    assert "sweeps" not in imported  # the statistics import no runs


def test_a_round_has_diagnostics_and_pxpo_refine_a_keep_map(tmp_path, monkeypatch):
    """FeedbackSession.step makes a round; the round's measurements are FeedbackRound.diagnostics (``update``:
    a read-only alias); a session saved with the old key loads; pxpo_refine's tensor is keep_map."""
    import json
    import warnings

    import numpy as np
    import torch

    from pxpo_lite import build_tiny_pipeline, feedback, update, world

    torch.manual_seed(0)
    pipe = build_tiny_pipeline(seed=0)
    cfg = feedback.RefineConfig(num_steps=4, updates_per_round=1, learning_rate=1e-2, lora_rank=2, target_change=None)  # one step
    s = feedback.FeedbackSession(pipe, world.all_prompts()[0], seed=3, folder=tmp_path / "s", config=cfg)
    heat = np.zeros((32, 32), np.float32)
    heat[4:12, 4:12] = -1
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the session itself uses the new names
        r = s.step(heat, source="synthetic")
    assert r.diagnostics["updates"] == 1 and r.update is r.diagnostics
    with pytest.raises(AttributeError):
        r.update = {}
    manifest = tmp_path / "s" / "session.json"
    m = json.loads(manifest.read_text())
    assert "diagnostics" in m["rounds"][0] and "update" not in m["rounds"][0]
    m["rounds"][0]["update"] = m["rounds"][0].pop("diagnostics")  # a session saved before the rename
    manifest.write_text(json.dumps(m))
    old = feedback.FeedbackSession.load(tmp_path / "s", pipe)
    assert old.rounds[0].diagnostics == m["rounds"][0]["update"] and old.rounds[0].diagnostics["updates"] == 1

    seen, info = [], {"loss": 0.0, "approx_kl": 0.0, "ratio_min": 1.0, "ratio_max": 1.0}
    monkeypatch.setattr(feedback, "policy_gradient_step", lambda *a, keep=None, **k: seen.append(keep) or update.StepResult([info], 0.0))
    w, A = torch.rand(1, 32, 32), torch.zeros(1, 32, 32)
    feedback.pxpo_refine(s.pipe, s.trajectory, A, s.params, cfg, keep_map=w)
    with pytest.warns(DeprecationWarning, match=r"pxpo_refine\(keep_weights=\.\.\.\) is renamed keep_map="):
        feedback.pxpo_refine(s.pipe, s.trajectory, A, s.params, cfg, keep_weights=w)  # the old keyword still works
    assert len(seen) == 2 and all(torch.equal(k.weights, w) for k in seen)


def test_refine_config_lives_in_refine_config_py():
    from pxpo_lite import feedback, refine_config

    assert _home(feedback.RefineConfig) == "pxpo_lite.refine_config" and feedback.RefineConfig is refine_config.RefineConfig
    assert (feedback.KEEP_BETA, feedback.KEEP_RAMP, feedback.DISLIKE_SCALE) == (10.0, 4.0, 3.0)
