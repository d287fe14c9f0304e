"""Exercises of notebooks 01 (the DDIM log-prob of one step) and 01b (REINFORCE, PPO's clipped loss)."""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from diffusers import DDIMScheduler

from .. import ddim, losses
from .engine import generator, run_check

# --------------------------------------------------------------------------------------------
# 01: the log-probability of one DDIM step
# --------------------------------------------------------------------------------------------
def _scheduler(prediction_type: str, steps: int):
    if prediction_type == "v_prediction":  # the tiny model's scheduler
        s = DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=False,
                          set_alpha_to_one=True, steps_offset=1, timestep_spacing="trailing")
    else:  # Stable Diffusion's
        s = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
    s.set_timesteps(steps)
    return s


def _density_sigma(scheduler, t, eta) -> float:
    """The σ the package scores a step with: σ_t where σ_t > 0, ``ddim.SIGMA_MIN`` only where σ_t = 0."""
    sigma = float(ddim.step_sigma(scheduler, t, eta))
    return sigma if sigma > 0 else ddim.SIGMA_MIN


def _ddim_reference(scheduler, model_output, t, x_t, x_prev, eta):
    return ddim.ddim_step_logprob(scheduler, model_output, t, x_t, eta=eta, prev_sample=x_prev)[1]


def check_ddim_step_log_prob(fn: Callable) -> Callable:
    """Check ``fn(scheduler, model_output, t, x_t, x_prev, eta)`` -> per-element log π(x_prev | x_t).

    Reference: :func:`pxpo_lite.ddim.ddim_step_logprob` scoring ``prev_sample`` (notebook 01).
    Cases: the tiny model's v-prediction scheduler (including its last step, σ_t = 0, whose
    density uses σ̃ = ``ddim.SIGMA_MIN``, the only place it is used) and an ε-prediction scheduler; gradients w.r.t.
    ``model_output`` (θ acts through it).
    """
    cases = []
    for seed, (pred, step, eta) in enumerate([("v_prediction", 4, 1.0), ("v_prediction", 0, 0.5),
                                              ("epsilon", 5, 1.0), ("v_prediction", 9, 1.0)]):
        s = _scheduler(pred, 10)
        t = int(s.timesteps[step])
        x_t, out = torch.randn(2, 3, 4, 5, generator=generator(seed)), torch.randn(2, 3, 4, 5, generator=generator(seed + 100))
        x_prev, _ = ddim.ddim_step_logprob(s, out, t, x_t, eta=eta, generator=generator(seed + 200))
        last = " (the last step: σ_t = 0)" if step == 9 else ""
        case = {"_what": f"a {pred} scheduler, step {step} (t = {t}){last}, η = {eta}", "scheduler": s,
                "model_output": out, "t": t, "x_t": x_t, "x_prev": x_prev, "eta": eta}
        if step == 9:  # x_prev − μ is 0 up to float32 rounding, divided by σ̃² = SIGMA_MIN²: the gradient of a
            # float64 answer differs from the float32 reference's by ~1e-4 there; allow 10 float32 ulps / σ̃² (0.012)
            case["_grad_atol"] = 10 * torch.finfo(torch.float32).eps / ddim.SIGMA_MIN ** 2
        cases.append(case)

    def variants(c):
        s, t, eta = c["scheduler"], c["t"], c["eta"]
        ref = _ddim_reference(**c)
        other = "epsilon" if s.config.prediction_type == "v_prediction" else "v_prediction"
        s2 = copy.deepcopy(s)
        s2.register_to_config(prediction_type=other)
        return {
            "the −log σ_t term is missing": ref + math.log(_density_sigma(s, t, eta)),
            "the −½ log 2π term is missing": ref + 0.5 * math.log(2 * math.pi),
            f"you read model_output as {other!r}, but this scheduler's prediction_type is "
            f"{s.config.prediction_type!r}: derive x̂_0 and ε̂ accordingly": _ddim_reference(**{**c, "scheduler": s2}),
        }

    return run_check("ddim_step_log_prob", fn, _ddim_reference, cases, grad=("model_output",), variants=variants,
                shape_hint="Return one log-probability per element (the shape of x_t): do not sum or average.",
                nonfinite_hint="Where σ_t = 0 (the last step) the density is infinite: evaluate it there with "
                               "σ̃ = pxpo_lite.ddim.SIGMA_MIN (σ_t itself wherever σ_t > 0), as the package "
                               "does; clamp 1 − ᾱ_{t−1} − σ_t² at 0 before its square root.")


# --------------------------------------------------------------------------------------------
# 01b: REINFORCE and PPO's clipped loss, on a one-step Gaussian policy N(μ, σ²)
# --------------------------------------------------------------------------------------------
def _reinforce_reference(actions, rewards, mu, sigma, baseline=0.0):
    mu_ = torch.as_tensor(mu, dtype=torch.float64).detach().clone().requires_grad_(True)
    lp = ddim.gaussian_log_prob(actions.double(), mu_, sigma).view(-1, 1, 1, 1)
    adv = torch.as_tensor(rewards, dtype=torch.float64) - baseline
    loss, _ = losses.ddpo_loss(lp, lp.detach(), adv)  # the score-function loss −mean_n A_n log π(a_n)
    return -torch.autograd.grad(loss, mu_)[0]


def check_reinforce_estimator(fn: Callable) -> Callable:
    """Check ``fn(actions, rewards, mu, sigma, baseline=0.0)`` -> the REINFORCE estimate of ∂E[r]/∂μ.

    Reference: minus the gradient of ``pxpo_lite.losses.ddpo_loss`` (the score-function loss) for
    the policy N(μ, σ²) and advantages r − baseline, by autograd (notebook 01b).
    """
    cases = []
    for seed, (n, mu, sigma, b) in enumerate([(64, 0.3, 1.0, 0.0), (200, -1.2, 0.5, 0.0), (50, 0.8, 2.0, 1.5)]):
        a = mu + sigma * torch.randn(n, generator=generator(seed), dtype=torch.float64)
        cases.append({"_what": f"N = {n} actions, μ = {mu}, σ = {sigma}, baseline = {b}", "actions": a,
                      "rewards": 3.0 - (a - 1.0) ** 2, "mu": torch.tensor(mu, dtype=torch.float64), "sigma": sigma,
                      "baseline": b})

    def variants(c):
        ref, s = _reinforce_reference(**c), c["sigma"]
        v = {"∇_μ log π(a) is (a − μ)/σ², not (a − μ)/σ": ref * s, "∇_μ log π(a) is (a − μ)/σ², not (a − μ)": ref * s**2,
             "that is a sum over the actions; the estimator is their mean": ref * len(c["actions"])}
        if c["baseline"] != 0:
            v["the baseline is ignored: weight by r − baseline"] = _reinforce_reference(**{**c, "baseline": 0.0})
            v["the baseline is added: weight by r − baseline"] = _reinforce_reference(**{**c, "baseline": -c["baseline"]})
        return v

    return run_check("reinforce_estimator", fn, _reinforce_reference, cases, variants=variants,
                shape_hint="Return one number as a 0-d tensor: the estimate of ∂E[r]/∂μ (the next cells call .item() on it).")


def _ppo_reference(log_prob, old_log_prob, advantages, clip_range):
    v = lambda x: x.view(-1, 1, 1, 1)  # one action per sample: ℓ_b is the log-prob itself
    return losses.ddpo_loss(v(log_prob), v(old_log_prob), advantages, clip_range)[0]


def check_ppo_clip_loss(fn: Callable) -> Callable:
    """Check ``fn(log_prob, old_log_prob, advantages, clip_range)`` -> PPO's clipped loss (to minimise).

    Shapes (B,). Reference: ``pxpo_lite.losses.ddpo_loss`` with ``clip_range``:
    mean_b max(−A ρ, −A clip(ρ, 1−ε, 1+ε)), ρ = exp(log π − log π_old); gradients w.r.t.
    ``log_prob`` (notebook 01b).
    """
    cases = []
    for seed, (b, spread, eps) in enumerate([(32, 0.05, 0.2), (64, 0.6, 0.2), (16, 0.4, 0.1)]):
        old = torch.randn(b, generator=generator(seed)) - 1.0
        cases.append({"_what": f"B = {b}, |log ratio| ~ {spread}, ε = {eps}",
                      "log_prob": old + spread * torch.randn(b, generator=generator(seed + 10)), "old_log_prob": old,
                      "advantages": torch.randn(b, generator=generator(seed + 20)), "clip_range": eps})

    def variants(c):
        lp, old, a, eps = c["log_prob"], c["old_log_prob"], c["advantages"], c["clip_range"]
        rho = (lp - old).exp()
        return {
            "nothing is clipped: clip the ratio ρ to [1 − ε, 1 + ε] and keep the pessimistic term": (-a * rho).mean(),
            "you keep the optimistic term; PPO keeps the pessimistic one (the larger of the two negated objectives)":
                torch.minimum(-a * rho, -a * rho.clamp(1 - eps, 1 + eps)).mean(),
            "you clip the log-ratio to [−ε, ε]: clip the ratio ρ itself to [1 − ε, 1 + ε]":
                torch.maximum(-a * rho, -a * (lp - old).clamp(-eps, eps).exp()).mean(),
            "the ratio is upside down: ρ = π_θ / π_old = exp(log_prob − old_log_prob)": _ppo_reference(old, lp, a, eps),
            "the ratio is not exponentiated: ρ = exp(log_prob − old_log_prob), not the difference of the log-probs":
                torch.maximum(-a * (lp - old), -a * (lp - old).clamp(1 - eps, 1 + eps)).mean(),
            "the ratio is not exponentiated and nothing is clipped: ρ = exp(log_prob − old_log_prob)": (-a * (lp - old)).mean(),
            "that is a sum over the batch; PPO's loss is the mean": _ppo_reference(lp, old, a, eps) * len(lp),
        }

    return run_check("ppo_clip_loss", fn, _ppo_reference, cases, grad=("log_prob",), variants=variants,
                shape_hint="Return one number: the loss averaged over the batch.")


