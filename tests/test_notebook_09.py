"""Notebook 09 (flow matching and GRPO): its two checked exercises name the typical mistakes, and the
notebook runs in smoke mode with sane results (papermill, via the ``executed_notebook`` fixture)."""
import math

import pytest
import torch

from pxpo_lite import checks

NB09 = "09_flow_matching_grpo.ipynb"


# --------------------------------------------------------------------------------------------
# 09.1: one SDE step's log-probability, written out independently of the package
# --------------------------------------------------------------------------------------------
def sde_ok(scheduler, v, i, x, x_next, a, *, root=True, dt_sign=1.0, const=True, fix_t1=True):
    t, t_next = scheduler.sigmas[i], scheduler.sigmas[i + 1]
    dt = dt_sign * (t_next - t)
    one_minus = 1 - (scheduler.sigmas[1] if (t == 1 and fix_t1) else t)
    sigma = a * (torch.sqrt(t / one_minus) if root else t / one_minus)
    mean = x + (v + sigma**2 / (2 * t) * (x + (1 - t) * v)) * dt
    s = sigma * torch.sqrt((t_next - t).abs())
    out = -(x_next - mean) ** 2 / (2 * s**2) - torch.log(s)
    return out - 0.5 * math.log(2 * math.pi) if const else out


def sde_flow_grpo_form(scheduler, v, i, x, x_next, a):
    """flow_grpo's arrangement of the same mean, in float32 with Python-float times."""
    t, t_next = float(scheduler.sigmas[i]), float(scheduler.sigmas[i + 1])
    dt = t_next - t
    sigma = a * math.sqrt(t / (1 - (float(scheduler.sigmas[1]) if t == 1.0 else t)))
    mean = x * (1 + sigma**2 / (2 * t) * dt) + v * (1 + sigma**2 * (1 - t) / (2 * t)) * dt
    s = sigma * math.sqrt(-dt)
    return -((x_next.detach() - mean) ** 2) / (2 * s**2) - math.log(s) - math.log(math.sqrt(2 * math.pi))


def _outcome(check, fn):
    ref = check(fn)
    name = check.__name__[len("check_"):]
    return ref, checks.OUTCOMES[name]


@pytest.mark.parametrize("fn", [sde_ok, sde_flow_grpo_form,
                                lambda s, v, i, x, xn, a: sde_ok(s, v.double(), i, x.double(), xn.double(), a)],
                         ids=["by-hand", "flow_grpo-form", "float64"])
def test_correct_sde_log_probs_pass(fn):
    ref, outcome = _outcome(checks.check_flow_sde_log_prob, fn)
    assert ref is fn and outcome["status"] == checks.PASSED, outcome


@pytest.mark.parametrize("kw,words", [
    (dict(root=False), ("square root",)),
    (dict(dt_sign=-1.0), ("wrong sign", "dt = t_next − t")),
    (dict(const=False), ("½ log 2π",)),
    (dict(fix_t1=False), ("t = 1", "scheduler.sigmas[1]")),
], ids=["sigma-without-sqrt", "dt-sign", "missing-constant", "t-equals-1"])
def test_sde_mistakes_are_named(kw, words):
    wrong = lambda s, v, i, x, xn, a: sde_ok(s, v, i, x, xn, a, **kw)
    ref, outcome = _outcome(checks.check_flow_sde_log_prob, wrong)
    assert ref is not wrong and outcome["status"] == checks.FAILED, outcome
    for w in words:
        assert w in outcome["message"], (w, outcome["message"])


def test_sde_ode_mean_and_std_without_dt_are_named():
    def ode(s, v, i, x, xn, a):
        t, tn = s.sigmas[i], s.sigmas[i + 1]
        sigma = a * torch.sqrt(t / (1 - (s.sigmas[1] if t == 1 else t)))
        std = sigma * torch.sqrt(t - tn)
        return -(xn - (x + v * (tn - t))) ** 2 / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)

    def std_sigma(s, v, i, x, xn, a):
        t, tn = s.sigmas[i], s.sigmas[i + 1]
        sigma = a * torch.sqrt(t / (1 - (s.sigmas[1] if t == 1 else t)))
        mean = x + (v + sigma**2 / (2 * t) * (x + (1 - t) * v)) * (tn - t)
        return -(xn - mean) ** 2 / (2 * sigma**2) - torch.log(sigma) - 0.5 * math.log(2 * math.pi)

    assert "ODE step" in _outcome(checks.check_flow_sde_log_prob, ode)[1]["message"]
    assert "σ_t·√(−dt)" in _outcome(checks.check_flow_sde_log_prob, std_sigma)[1]["message"]


def test_a_stub_is_not_done_and_the_reference_works():
    def stub(*args):
        raise NotImplementedError("Exercise 09.1")

    for check in (checks.check_flow_sde_log_prob, checks.check_group_advantages):
        ref, outcome = _outcome(check, stub)
        assert outcome["status"] == checks.NOT_DONE and ref is not stub
        assert check(ref) is ref  # the returned reference takes the learner's signature


# --------------------------------------------------------------------------------------------
# 09.2: GRPO's group advantages
# --------------------------------------------------------------------------------------------
def group_ok(rewards, prompts, clip_max=5.0, *, unbiased=False, eps=1e-6):
    out = torch.zeros_like(rewards)
    for p in set(prompts):
        idx = torch.tensor([k for k, q in enumerate(prompts) if q == p])
        out[idx] = (rewards[idx] - rewards[idx].mean()) / (rewards[idx].std(unbiased=unbiased) + eps)
    return out.clamp(-clip_max, clip_max)


def test_correct_group_advantages_pass():
    ref, outcome = _outcome(checks.check_group_advantages, group_ok)
    assert ref is group_ok and outcome["status"] == checks.PASSED, outcome


@pytest.mark.parametrize("wrong,words", [
    (lambda r, p, c=5.0: ((r - r.mean()) / (r.std(unbiased=False) + 1e-6)).clamp(-c, c), ("whole batch's mean and std",)),
    (lambda r, p, c=5.0: group_ok(r, p, c, unbiased=True), ("unbiased std", "unbiased=False")),
    (lambda r, p, c=5.0: group_ok(r, p, c, eps=0.0), ("std 0", "ε = 1e-6")),
    (lambda r, p, c=5.0: group_ok(r, p, float("inf")), ("nothing is clipped",)),
], ids=["batch-wide", "unbiased-std", "no-eps", "no-clip"])
def test_group_advantage_mistakes_are_named(wrong, words):
    ref, outcome = _outcome(checks.check_group_advantages, wrong)
    assert ref is not wrong and outcome["status"] == checks.FAILED, outcome
    for w in words:
        assert w in outcome["message"], (w, outcome["message"])


# --------------------------------------------------------------------------------------------
# The notebook, smoke mode
# --------------------------------------------------------------------------------------------
def _finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@pytest.mark.notebook
def test_notebook_09_smoke(executed_notebook):
    _, results, _ = executed_notebook(NB09)
    # section 2: the same noise, DDIM's last step deterministic, every flow step stochastic
    assert results["same_start"] is True
    T = len(results["flow_step_std"])
    assert results["flow_trainable_steps"] == T and results["ddim_trainable_steps"] == T - 1
    assert results["ddim_step_std"][-1] == 0 and all(s > 0 for s in results["flow_step_std"])
    # section 3: the learner's log-prob (the instructor's) equals the recorded one and torch's Normal
    assert results["logprob_by_hand_max_abs"] < 1e-3 and results["logprob_normal_max_abs"] < 1e-3
    # section 4: group advantages
    assert results["group_adv_yours_max_abs"] < 1e-5 and results["group_adv_group_sum_max_abs"] < 1e-4
    # section 5: two flow runs, evaluated before and after (SDE policy and ODE), beside the shipped DDIM numbers
    for sampler in ("sde", "ode"):
        for key in ("flow_before", "grpo_after", "pixel_after"):
            m = results[f"{key}_{sampler}"]
            assert -1 <= m["mean"] <= 0 and m["std"] >= 0, (key, sampler, m)  # −blueness of an image: in [−1, 0]
            assert 0 <= m["fidelity"] <= 1, (key, sampler, m)
            if key != "flow_before":
                assert _finite(m["effect_std"]), (key, sampler, m)
    assert results["grpo_train_seconds"] > 0 and results["pixel_train_seconds"] > 0
    assert results["grpo_reward_curve"] and results["pixel_reward_curve"]
    assert set(results["ddim_frontier"]) == {"image", "pixel"}
    assert results["ddim_setting"]["effect_std"] > 0
    # section 6: a painted round on a flow trajectory
    assert results["fb_same_seed_same_image"] is True
    assert results["fb_timesteps_used"] == T  # pxpo_refine trains every SDE step of a flow trajectory
    assert results["fb_disliked_pixels"] > 0
    for k in ("fb_change_disliked", "fb_change_unpainted"):
        assert _finite(results[k]) and 0 <= results[k] <= 1, (k, results[k])
    assert results["fb_change_disliked"] > 0
