"""Exercises of notebook 09 (flow matching and GRPO): Flow-GRPO's SDE step by hand, and GRPO's
group-relative advantages."""
from __future__ import annotations

import math
import warnings
from typing import Callable

import torch

from .. import advantages as adv_lib
from .. import flow, world
from ..flow_models import build_flow_scheduler
from .engine import ATOL, generator, run_check


# --------------------------------------------------------------------------------------------
# 09.1: the log-probability of one SDE step
# --------------------------------------------------------------------------------------------
def _scheduler(steps: int):
    s = build_flow_scheduler()  # the tiny flow model's FlowMatchEulerDiscreteScheduler (shift 1)
    s.set_timesteps(steps)
    return s


def _sde_reference(scheduler, v, i, x, x_next, a):
    return flow.sde_step_logprob(scheduler, v, scheduler.timesteps[i], x, a, prev_sample=x_next)[1]


def _by_hand(scheduler, v, i, x, x_next, a, *, root=True, dt_sign=1.0, score_sign=1.0, ode=False, std_dt=True,
             log_s=True, const=True):
    """The step written out, with one piece changed at a time (the named mistakes)."""
    sig = scheduler.sigmas.double()
    t, t_next = sig[i], sig[i + 1]
    dt = dt_sign * (t_next - t)
    ratio = t / (1 - (sig[1] if float(t) == 1.0 else t))
    sigma = a * (torch.sqrt(ratio) if root else ratio)
    x, v, x_next = x.double(), v.double(), x_next.double()
    drift = v if ode else v + score_sign * sigma**2 / (2 * t) * (x + (1 - t) * v)
    mean = x + drift * dt
    s = sigma * torch.sqrt((t - t_next).abs()) if std_dt else sigma * torch.ones(())
    out = -(x_next - mean) ** 2 / (2 * s**2)
    if log_s:
        out = out - torch.log(s)
    if const:
        out = out - 0.5 * math.log(2 * math.pi)
    return out


def check_flow_sde_log_prob(fn: Callable) -> Callable:
    """Check ``fn(scheduler, v, i, x, x_next, a)`` -> log p(x_next | x) per element (the shape of ``x``).

    One step of Flow-GRPO's SDE from t = ``scheduler.sigmas[i]`` to t_next = ``scheduler.sigmas[i + 1]``
    (dt = t_next − t < 0), velocity ``v``, noise level ``a``:
    σ_t = a·√(t/(1−t)) (1 − t taken at ``sigmas[1]`` when t = 1), μ = x + [v + σ_t²/(2t)·(x + (1−t)·v)]·dt,
    s = σ_t·√(−dt), log p = −(x_next − μ)²/(2s²) − log s − ½ log 2π.

    Reference: :func:`pxpo_lite.flow.sde_step_logprob` scoring ``prev_sample=x_next`` (notebook 09). Cases:
    the tiny flow model's scheduler, a middle step, the first step (t = 1) and the last (t_next = 0), noise
    levels 0.3–1.0; gradients w.r.t. ``v`` (θ acts through it).
    """
    cases = []
    for seed, (steps, i, a) in enumerate([(10, 3, 0.7), (10, 0, 0.7), (10, 9, 1.0), (4, 2, 0.3)]):
        s = _scheduler(steps)
        x = torch.randn(2, 3, 4, 5, generator=generator(seed))
        v = torch.randn(2, 3, 4, 5, generator=generator(seed + 100))
        x_next, _ = flow.sde_step_logprob(s, v, s.timesteps[i], x, a, generator=generator(seed + 200))
        t, t_next = float(s.sigmas[i]), float(s.sigmas[i + 1])
        where = " (the first step: t = 1)" if i == 0 else " (the last step: t_next = 0)" if t_next == 0 else ""
        # the last step's std is tiny (s ≈ 1e-3): x_next − μ carries float32 rounding of x (≈ ulp·|x|) divided by s²,
        # so a float64 answer's gradient differs from the float32 reference's by ~1e-4 there; allow 10 ulps of x
        sigma2 = a**2 * t / (1 - (float(s.sigmas[1]) if t == 1.0 else t))
        dmu_dv = (t - t_next) * (1 + sigma2 * (1 - t) / (2 * t))
        grad_atol = 10 * torch.finfo(torch.float32).eps * float(x.abs().max()) * dmu_dv / (sigma2 * (t - t_next))
        cases.append({"_what": f"a {steps}-step schedule, step i = {i}, t = {t:.3g} → {t_next:.3g}{where}, a = {a}",
                      "scheduler": s, "v": v, "i": i, "x": x, "x_next": x_next, "a": a, "_grad_atol": max(ATOL, grad_atol)})

    def variants(c):
        args = (c["scheduler"], c["v"], c["i"], c["x"], c["x_next"], c["a"])
        return {
            "σ_t has no square root: σ_t = a·√(t/(1−t)), not a·t/(1−t)": _by_hand(*args, root=False),
            "dt has the wrong sign: dt = t_next − t is negative (the sampler runs from t = 1 down to 0), "
            "so μ = x + drift·dt moves against the drift's sign": _by_hand(*args, dt_sign=-1.0),
            "the −½ log 2π term (the Gaussian's normalising constant) is missing": _by_hand(*args, const=False),
            "the −log s term is missing (s = σ_t·√(−dt), the step's std)": _by_hand(*args, log_s=False),
            "the std is σ_t: over a step of length |dt| the SDE's noise has std s = σ_t·√(−dt)": _by_hand(*args, std_dt=False),
            "that mean is the ODE step x + v·dt: the SDE's drift adds the score term σ_t²/(2t)·(x + (1 − t)·v), "
            "which keeps the marginals when noise is injected": _by_hand(*args, ode=True),
            "the score term has the wrong sign: the drift is v + σ_t²/(2t)·(x + (1 − t)·v) (dt < 0 does the rest)":
                _by_hand(*args, score_sign=-1.0),
        }

    return run_check("flow_sde_log_prob", fn, _sde_reference, cases, grad=("v",), variants=variants,
                     shape_hint="Return one log-probability per element (the shape of x): do not sum or average.",
                     nonfinite_hint="At t = 1 (step i = 0) σ_t = a·√(t/(1−t)) divides by zero: there take 1 − t at "
                                    "the schedule's second sigma, 1 − scheduler.sigmas[1], as flow_grpo does. "
                                    "The last step (t_next = 0) needs nothing special.")


# --------------------------------------------------------------------------------------------
# 09.2: GRPO's group-relative advantages
# --------------------------------------------------------------------------------------------
def _group_reference(rewards, prompts, clip_max=5.0):
    with warnings.catch_warnings():  # a flat group (std 0) gets zeros; the warning is for training runs
        warnings.simplefilter("ignore", adv_lib.NoSignalWarning)
        return adv_lib.group_advantages(rewards, list(prompts), clip_max=clip_max)


def _per_group(rewards, prompts, clip_max, unbiased=False):
    out = torch.zeros_like(rewards)
    for p in dict.fromkeys(prompts):
        idx = torch.tensor([k for k, q in enumerate(prompts) if q == p])
        r = rewards[idx]
        out[idx] = (r - r.mean()) / (r.std(unbiased=unbiased) + adv_lib.EPS)
    return out.clamp(-clip_max, clip_max)


def _group_means(rewards, prompts):
    out = torch.zeros_like(rewards)
    for p in dict.fromkeys(prompts):
        idx = torch.tensor([k for k, q in enumerate(prompts) if q == p])
        out[idx] = rewards[idx].mean()
    return out


def _consecutive(rewards, prompts, clip_max):
    g = rewards.view(-1, prompts.count(prompts[0]))
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, unbiased=False, keepdim=True) + adv_lib.EPS)).clamp(-clip_max, clip_max).flatten()


def check_group_advantages(fn: Callable) -> Callable:
    """Check ``fn(rewards, prompts, clip_max=5.0)`` -> GRPO's advantages (B,) of one batch.

    G samples per prompt; each reward minus its own group's mean, over that group's population std
    + ε (``advantages.EPS`` = 1e-6), clipped to ±``clip_max``. The samples of a group need not be next
    to each other. Reference: :func:`pxpo_lite.advantages.group_advantages` (notebook 09); one case has a
    group whose rewards are all equal (std 0: its advantages are 0).
    """
    cases = []
    for i, (n_prompts, per, clip, flat) in enumerate([(2, 4, 5.0, False), (3, 4, 1.0, False), (3, 6, 5.0, True)]):
        prompts = [p for p in world.all_prompts()[5 + i : 5 + i + n_prompts] for _ in range(per)]
        if i:
            order = torch.randperm(len(prompts), generator=generator(i + 40)).tolist()
            prompts = [prompts[k] for k in order]  # groups mixed in the batch
        level = {p: 3.0 * k - 2.0 for k, p in enumerate(dict.fromkeys(prompts))}  # each prompt its own level
        r = torch.randn(len(prompts), generator=generator(i + 50), dtype=torch.float64) + \
            torch.tensor([level[p] for p in prompts], dtype=torch.float64)
        what = f"{len(prompts)} rewards, {n_prompts} prompts × G = {per}{' (mixed in the batch)' if i else ''}, clip_max = {clip}"
        if flat:  # e.g. a bald prompt under a hair reward: every sample scores exactly 0
            p0 = prompts[0]
            r = torch.where(torch.tensor([p == p0 for p in prompts]), torch.zeros_like(r), r)
            what += ", one group's rewards all 0 (std 0)"
        cases.append({"_what": what, "rewards": r, "prompts": prompts, "clip_max": clip})

    def variants(c):
        r, p, clip = c["rewards"], c["prompts"], c["clip_max"]
        eps = adv_lib.EPS
        centred = r - _group_means(r, p)
        return {
            "you normalise with the whole batch's mean and std; GRPO uses each prompt's group: its G samples' "
            "own mean and std": ((r - r.mean()) / (r.std(unbiased=False) + eps)).clamp(-clip, clip),
            "you subtract the whole batch's mean; subtract each group's own mean":
                ((r - r.mean()) / (torch.stack([centred[[k for k, q in enumerate(p) if q == pk]].std(unbiased=False)
                                                for pk in p]) + eps)).clamp(-clip, clip),
            "you divide by the whole batch's std (flow_grpo's global_std option); the exercise asks for each "
            "group's own std": (centred / (r.std(unbiased=False) + eps)).clamp(-clip, clip),
            "you use the unbiased std (.std() divides by G − 1); GRPO divides by the group's population std: "
            ".std(unbiased=False)": _per_group(r, p, clip, unbiased=True),
            "nothing is clipped: clip the advantages to [−clip_max, clip_max]": _per_group(r, p, float("inf")),
            "you assume each group's samples are next to each other in the batch (a reshape to (B/G, G)); here the "
            "groups are mixed: collect each prompt's samples by comparing the prompts": _consecutive(r, p, clip),
        }

    return run_check("group_advantages", fn, _group_reference, cases, variants=variants,
                     shape_hint="Return one advantage per reward (B,), in the batch's order.",
                     nonfinite_hint="A group whose rewards are all equal has std 0, so (r − mean)/std is 0/0: add "
                                    "ε = 1e-6 to the std (advantages.EPS); such a group then gets advantages 0.")
