"""The course's exercises, as the grader sees them: which notebook, which function, how many points.

``python -m pxpo_lite.grade`` takes the list of exercises of a submitted notebook from here,
never from the submission, so deleting a check call does not shrink it. Each entry names the
learner's function as the instructor notebook defines it (``def <function>(…)`` in the cell
``# Exercise <label>: …``) and the check that grades it (``pxpo_lite.checks.check_<name>``);
``tests/test_grade.py`` keeps this table in step with the notebooks.

``allowed`` lists the package functions an answer may call (the instructor solution's own
helpers); a learner function that calls any other ``pxpo_lite`` function is flagged by the
grader's source scan (it may just wrap the reference).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Exercise:
    notebook: str          # the course notebook's file stem, e.g. "01b_rl_from_zero"
    label: str             # as printed in the notebook, e.g. "01b.1"
    name: str              # the check: pxpo_lite.checks.check_<name>; the key in reports
    function: str          # the learner's function, by name
    points: int            # its weight in the grade
    title: str = ""
    allowed: tuple[str, ...] = ()   # pxpo_lite functions the answer may call

    @property
    def check(self):
        import importlib  # the checks import torch: only when a check is run

        return getattr(importlib.import_module("pxpo_lite.checks"), f"check_{self.name}")


EXERCISES: tuple[Exercise, ...] = (
    Exercise("00_tour", "00.1", "blueness", "blueness", 1, "how blue is a pixel?"),
    Exercise("01_denoising_as_an_mdp", "01.1", "ddim_step_log_prob", "ddim_log_prob", 3,
             "one DDIM step's log-probability, for any step"),
    Exercise("01b_rl_from_zero", "01b.1", "reinforce_estimator", "reinforce_estimate", 2, "the REINFORCE estimator"),
    Exercise("01b_rl_from_zero", "01b.2", "ppo_clip_loss", "ppo_clip_loss", 2, "PPO's clipped loss"),
    Exercise("02_ddpo", "02.1", "prompt_advantages", "prompt_advantages", 2, "per-prompt advantages"),
    Exercise("03_pixelwise_logprobs", "03.1", "per_pixel_log_prob", "per_pixel_log_prob", 1,
             "per-pixel log-probability maps"),
    Exercise("03_pixelwise_logprobs", "03.2", "kronecker_credit", "kronecker_surrogate", 2, "Kronecker-delta credit"),
    Exercise("04_pxpo_colour_feedback", "04.1", "pixel_advantages", "pixel_advantages_of", 2, "per-pixel advantages"),
    Exercise("04_pxpo_colour_feedback", "04.2", "pxpo_loss", "pxpo_loss", 2, "the PXPO loss"),
    Exercise("04_pxpo_colour_feedback", "04.3", "gaussian_kl", "gaussian_kl", 1,
             "the per-element KL of two DDIM Gaussians with the same σ"),
    Exercise("05_pxpo_segmentation_feedback", "05.1", "hair_reward_map", "hair_reward", 1, "the hair reward map"),
    Exercise("06_human_feedback_canvas", "06.1", "heatmap_to_advantages", "painted_advantages", 1,
             "painted map -> advantages"),
    Exercise("06_human_feedback_canvas", "06.2", "lora_param_count", "lora_param_count", 2,
             "LoRA's trainable parameters", allowed=("pxpo_lite.lora.matching_modules",)),
    Exercise("07_ddpo_vs_pxpo", "07.1", "effect_size", "effect_size", 1, "effect size"),
    Exercise("08_stable_diffusion", "08.1", "latent_grid", "to_latent_grid", 1, "the latent grid"),
    Exercise("09_flow_matching_grpo", "09.1", "flow_sde_log_prob", "sde_log_prob", 3,
             "one Flow-GRPO SDE step: mean, std and log-probability"),
    Exercise("09_flow_matching_grpo", "09.2", "group_advantages", "group_advantages_of", 2, "GRPO's group advantages"),
)

NOTEBOOKS: dict[str, tuple[Exercise, ...]] = {"00a_environment_check": ()}  # a course notebook without exercises
for _e in EXERCISES:
    NOTEBOOKS[_e.notebook] = NOTEBOOKS.get(_e.notebook, ()) + (_e,)
del _e


def course_notebook(filename: str) -> str | None:
    """The course notebook a file name stands for: its stem exactly, else the number before the
    first ``_`` (``01b_mine.ipynb`` -> ``01b_rl_from_zero``); ``None`` when neither matches."""
    stem = filename.rsplit("/", 1)[-1].removesuffix(".ipynb")
    if stem in NOTEBOOKS:
        return stem
    number = stem.split("_", 1)[0]
    found = [k for k in NOTEBOOKS if k.split("_", 1)[0] == number]
    return found[0] if len(found) == 1 else None


def exercises_of(notebook: str) -> tuple[Exercise, ...]:
    """The exercises of a course notebook (a stem or file name); ``()`` for an unknown one."""
    key = course_notebook(notebook)
    return NOTEBOOKS[key] if key else ()
