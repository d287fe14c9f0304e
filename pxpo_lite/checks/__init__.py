"""Self-checking exercises: compare a learner's function with the package's reference.

Each ``check_*`` runs the learner's function and the reference on several random cases (fixed
seeds), compares the values and, where the result is differentiable, the gradients, and shows

* ``✓ … passed`` — the learner's function is returned: the notebook goes on with it (its result
  keeps the documented return type — a float32/float64 torch tensor of the reference's shape, or
  one number where the exercise asks for one — so the cells after the check run with it);
* ``✗ … failed`` with a hint that names *what* differs (shape, sign, a constant factor, a
  missing term, one of the classic mistakes of that exercise) and on which case, without
  showing the solution — the reference is returned;
* ``… not done yet`` when the function raises ``NotImplementedError`` (the stub of a student
  notebook, see ``scripts/make_student.py``) — the reference is returned, so "Run all" works.

Every outcome is kept in :data:`OUTCOMES` and displayed with the MIME type :data:`MIME`. The
grader (``python -m pxpo_lite.grade``) does not read displayed outcomes: it runs each check itself
on the learner's function, from the list in :mod:`pxpo_lite.checks.registry` (exercises, points).

Exercises by notebook: 00 ``check_blueness``; 01 ``check_ddim_step_log_prob``; 01b
``check_reinforce_estimator``, ``check_ppo_clip_loss``; 02 ``check_prompt_advantages``; 03
``check_per_pixel_log_prob``, ``check_kronecker_credit``; 04 ``check_pixel_advantages``,
``check_pxpo_loss``, ``check_gaussian_kl`` (the keep term); 05 ``check_hair_reward_map``; 06
``check_heatmap_to_advantages``, ``check_lora_param_count``; 07 ``check_effect_size``; 08
``check_latent_grid``; 09 ``check_flow_sde_log_prob``, ``check_group_advantages``. The engine is
:mod:`pxpo_lite.checks.engine`.
"""
from .course import (check_blueness, check_effect_size, check_gaussian_kl, check_hair_reward_map, check_latent_grid,
                     check_prompt_advantages)
from .flow import check_flow_sde_log_prob, check_group_advantages
from .engine import ATOL, FAILED, MIME, NOT_DONE, OUTCOMES, PASSED, RTOL, summary
from .mdp import check_ddim_step_log_prob, check_ppo_clip_loss, check_reinforce_estimator
from .pixel import (check_heatmap_to_advantages, check_kronecker_credit, check_lora_param_count, check_per_pixel_log_prob,
                    check_pixel_advantages, check_pxpo_loss)

__all__ = [
    "ATOL", "FAILED", "MIME", "NOT_DONE", "OUTCOMES", "PASSED", "RTOL", "summary",
    "check_blueness", "check_ddim_step_log_prob", "check_effect_size", "check_flow_sde_log_prob", "check_gaussian_kl",
    "check_group_advantages", "check_hair_reward_map",
    "check_heatmap_to_advantages", "check_kronecker_credit", "check_latent_grid", "check_lora_param_count",
    "check_per_pixel_log_prob", "check_pixel_advantages", "check_ppo_clip_loss", "check_prompt_advantages",
    "check_pxpo_loss", "check_reinforce_estimator",
]
