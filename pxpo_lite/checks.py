"""Self-checking exercises: compare a learner's function with the package's reference.

Each ``check_*`` runs the learner's function and the reference on several random cases (fixed
seeds), compares the values and, where the result is differentiable, the gradients, and shows

* ``✓ … passed`` — the learner's function is returned: the notebook goes on with it;
* ``✗ … failed`` with a hint that names *what* differs (shape, sign, a constant factor, a
  missing term, one of the classic mistakes of that exercise) and on which case, without
  showing the solution — the reference is returned;
* ``… not done yet`` when the function raises ``NotImplementedError`` (the stub of a student
  notebook, see ``scripts/make_student.py``) — the reference is returned, so "Run all" works.

Every outcome is kept in :data:`OUTCOMES` and displayed with the MIME type :data:`MIME`, which
``python -m pxpo_lite.grade`` reads back from an executed notebook. The exercises are introduced
in notebooks 01 (DDIM log-prob), 01b (REINFORCE, PPO clip) and 03 (per-pixel maps, Kronecker
credit); 04 (pixel advantages, PXPO loss), 06 (heatmap → advantages) and the LoRA explanation
use the last four checks.
"""
from __future__ import annotations

import copy
import html
import math
from typing import Callable

import numpy as np
import torch

from . import advantages as adv_lib
from . import ddim, feedback, losses, pixelwise
from . import lora as lora_lib

MIME = "application/vnd.pxpo-lite.exercise+json"
PASSED, FAILED, NOT_DONE = "passed", "failed", "not done"
OUTCOMES: dict[str, dict] = {}
"""exercise name -> {"status": passed | failed | not done, "message": str} (the last check wins)."""
RTOL, ATOL = 1e-4, 1e-4
_CONTINUES = "(the notebook continues with the reference implementation.)"


def _show(name: str, status: str, message: str) -> None:
    OUTCOMES[name] = {"status": status, "message": message}
    text = f"{ {PASSED: '✓', FAILED: '✗', NOT_DONE: '…'}[status]} {name}: {message}"
    colour = {PASSED: "#1a7f37", FAILED: "#cf222e", NOT_DONE: "#9a6700"}[status]
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is None:
            raise ImportError
        display({MIME: {"exercise": name, "status": status, "message": message}, "text/plain": text,
                 "text/html": f'<div style="color:{colour};font-weight:600">{html.escape(text)}</div>'}, raw=True)
    except ImportError:  # plain Python
        print(text)


def summary() -> dict[str, dict]:
    """Print one line per exercise checked in this session and return a copy of :data:`OUTCOMES`."""
    for name, o in OUTCOMES.items():
        print(f"{o['status']:>9}  {name}")
    return dict(OUTCOMES)


# --------------------------------------------------------------------------------------------
# The comparison engine
# --------------------------------------------------------------------------------------------
def _tensor(x) -> torch.Tensor | None:
    if isinstance(x, tuple) and x and isinstance(x[0], torch.Tensor):
        x = x[0]  # (loss, info), as the package's losses return
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (int, float, np.ndarray, np.generic)) and not isinstance(x, bool):
        return torch.as_tensor(np.asarray(x, dtype=np.float64))
    return None


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=RTOL, atol=ATOL))


def _fresh(case: dict, grad: tuple) -> dict:
    """A copy of a case's arguments; the ``grad`` ones become leaf tensors that require grad."""
    out = {}
    for k, v in case.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().clone().requires_grad_(k in grad)
        elif isinstance(v, (torch.nn.Module, np.ndarray)):
            v = copy.deepcopy(v)
        out[k] = v
    return out


def _diagnose(got, want, variants: dict, shape_hint: str, nonfinite_hint: str) -> str:
    if got is None:
        return "your function returned None or a non-number: did you forget `return`?"
    if got.shape != want.shape:
        return f"your result has shape {tuple(got.shape)} but should have {tuple(want.shape)}. {shape_hint}".strip()
    if not torch.isfinite(got).all():
        return f"your result contains NaN or inf where the reference is finite. {nonfinite_hint}".strip()
    for hint, v in variants.items():
        if _close(got.detach(), torch.as_tensor(v).detach().to(got.device)):
            return hint
    g, w = got.detach().double().flatten(), want.detach().double().flatten()
    if _close(g, -w):
        return "your result has the wrong sign (is it a loss to minimise or an objective to maximise?)."
    big = w.abs() > 1e-6
    if big.any():
        ratio = g[big] / w[big]
        if (ratio - ratio[0]).abs().max() < 1e-4 * max(1.0, abs(float(ratio[0]))) and abs(float(ratio[0]) - 1) > 1e-3:
            return (f"your result is the reference times a constant factor {float(ratio[0]):.4g}: "
                    "check sum vs mean, a missing or extra scale, or a factor of 2.")
    diff = g - w
    if g.numel() > 1 and (diff - diff[0]).abs().max() < 1e-4 * max(1.0, float(diff[0].abs())):
        return (f"your result is off by the constant {float(diff[0]):.4g} everywhere: a term that does not "
                "depend on the inputs is missing or extra (a normalising constant?).")
    k = int(diff.abs().argmax())
    return (f"values differ (largest |difference| {float(diff.abs().max()):.3g}; at flat index {k} the "
            f"reference gives {float(w[k]):.6g}, yours {float(g[k]):.6g}).")


def _run(name: str, fn: Callable, reference: Callable, cases: list[dict], *, grad: tuple = (),
         variants: Callable[[dict], dict] | None = None, shape_hint: str = "", nonfinite_hint: str = "") -> Callable:
    """Run ``fn`` and ``reference`` on every case (keyword arguments plus a description ``"_what"``)."""
    if not callable(fn):
        raise TypeError(f"check_{name} needs your function (a callable), got {type(fn).__name__}; pass the function itself")
    for i, case in enumerate(cases):
        what = case.get("_what", f"case {i}")
        args = {k: v for k, v in case.items() if k != "_what"}
        mine, ref = _fresh(args, grad), _fresh(args, grad)
        try:
            got = fn(*mine.values())  # positionally: the learner may name the arguments differently
        except NotImplementedError:
            _show(name, NOT_DONE, f"not done yet — {_CONTINUES[1:-2]}.")
            return reference
        except Exception as e:  # the learner's own error: say on which case
            _show(name, FAILED, f"your function raised {type(e).__name__} on {what}: {e} {_CONTINUES}")
            return reference
        want, got = _tensor(reference(*ref.values())), _tensor(got)
        if got is None or not _close(got.detach().to(want.device), want.detach()):
            got = None if got is None else got.to(want.device)
            hint = _diagnose(got, want, variants(args) if variants else {}, shape_hint, nonfinite_hint)
            _show(name, FAILED, f"on {what}: {hint} {_CONTINUES}")
            return reference
        if grad:
            if not got.requires_grad:
                _show(name, FAILED, f"on {what}: the values are right but your result is not differentiable w.r.t. "
                      f"{', '.join(grad)} (a .detach(), .item(), numpy or torch.no_grad() inside?). {_CONTINUES}")
                return reference
            w = torch.randn(want.shape, generator=torch.Generator().manual_seed(i), dtype=want.dtype)
            g_mine = torch.autograd.grad((got * w.to(got.dtype)).sum(), [mine[k] for k in grad], allow_unused=True)
            g_ref = torch.autograd.grad((want * w).sum(), [ref[k] for k in grad], allow_unused=True)
            for k, a, b in zip(grad, g_mine, g_ref):
                if not _close(torch.zeros_like(b) if a is None else a, b):
                    _show(name, FAILED, f"on {what}: the values match but the gradient w.r.t. {k} differs "
                          f"(a detached or in-place step?). {_CONTINUES}")
                    return reference
    _show(name, PASSED, f"passed on {len(cases)} random cases{' (values and gradients)' if grad else ''}. Well done!")
    return fn


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# 01: the log-probability of one DDIM step
# --------------------------------------------------------------------------------------------
def _scheduler(prediction_type: str, steps: int):
    from diffusers import DDIMScheduler  # heavy import, needed by this check only

    if prediction_type == "v_prediction":  # the tiny model's scheduler
        s = DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=False,
                          set_alpha_to_one=True, steps_offset=1, timestep_spacing="trailing")
    else:  # Stable Diffusion's
        s = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
    s.set_timesteps(steps)
    return s


def _ddim_reference(scheduler, model_output, t, x_t, x_prev, eta):
    return ddim.ddim_step_logprob(scheduler, model_output, t, x_t, eta=eta, prev_sample=x_prev)[1]


def check_ddim_step_log_prob(fn: Callable) -> Callable:
    """Check ``fn(scheduler, model_output, t, x_t, x_prev, eta)`` -> per-element log π(x_prev | x_t).

    Reference: :func:`pxpo_lite.ddim.ddim_step_logprob` scoring ``prev_sample`` (notebook 01).
    Cases: the tiny model's v-prediction scheduler (including its last step, σ_t = 0, whose
    density uses σ̃ = ``ddim.SIGMA_MIN``) and an ε-prediction scheduler; gradients w.r.t.
    ``model_output`` (θ acts through it).
    """
    cases = []
    for seed, (pred, step, eta) in enumerate([("v_prediction", 4, 1.0), ("v_prediction", 0, 0.5),
                                              ("epsilon", 5, 1.0), ("v_prediction", 9, 1.0)]):
        s = _scheduler(pred, 10)
        t = int(s.timesteps[step])
        x_t, out = torch.randn(2, 3, 4, 5, generator=_g(seed)), torch.randn(2, 3, 4, 5, generator=_g(seed + 100))
        x_prev, _ = ddim.ddim_step_logprob(s, out, t, x_t, eta=eta, generator=_g(seed + 200))
        last = " (the last step: σ_t = 0)" if step == 9 else ""
        cases.append({"_what": f"a {pred} scheduler, step {step} (t = {t}){last}, η = {eta}", "scheduler": s,
                      "model_output": out, "t": t, "x_t": x_t, "x_prev": x_prev, "eta": eta})

    def variants(c):
        s, t, eta = c["scheduler"], c["t"], c["eta"]
        ref = _ddim_reference(**c)
        other = "epsilon" if s.config.prediction_type == "v_prediction" else "v_prediction"
        s2 = copy.deepcopy(s)
        s2.register_to_config(prediction_type=other)
        return {
            "the −log σ_t term is missing": ref + math.log(max(float(ddim.step_sigma(s, t, eta)), ddim.SIGMA_MIN)),
            "the −½ log 2π term is missing": ref + 0.5 * math.log(2 * math.pi),
            f"you read model_output as {other!r}, but this scheduler's prediction_type is "
            f"{s.config.prediction_type!r}: derive x̂_0 and ε̂ accordingly": _ddim_reference(**{**c, "scheduler": s2}),
        }

    return _run("ddim_step_log_prob", fn, _ddim_reference, cases, grad=("model_output",), variants=variants,
                shape_hint="Return one log-probability per element (the shape of x_t): do not sum or average.",
                nonfinite_hint="Where σ_t = 0 (the last step) the density is infinite: evaluate it with "
                               "σ̃_t = max(σ_t, pxpo_lite.ddim.SIGMA_MIN), as the package does.")


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
        a = mu + sigma * torch.randn(n, generator=_g(seed), dtype=torch.float64)
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

    return _run("reinforce_estimator", fn, _reinforce_reference, cases, variants=variants,
                shape_hint="Return one number: the estimate of ∂E[r]/∂μ (a 0-d tensor or a float).")


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
        old = torch.randn(b, generator=_g(seed)) - 1.0
        cases.append({"_what": f"B = {b}, |log ratio| ~ {spread}, ε = {eps}",
                      "log_prob": old + spread * torch.randn(b, generator=_g(seed + 10)), "old_log_prob": old,
                      "advantages": torch.randn(b, generator=_g(seed + 20)), "clip_range": eps})

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
            "that is a sum over the batch; PPO's loss is the mean": _ppo_reference(lp, old, a, eps) * len(lp),
        }

    return _run("ppo_clip_loss", fn, _ppo_reference, cases, grad=("log_prob",), variants=variants,
                shape_hint="Return one number: the loss averaged over the batch.")


# --------------------------------------------------------------------------------------------
# 03: per-pixel log-prob maps and Kronecker-delta credit
# --------------------------------------------------------------------------------------------
def check_per_pixel_log_prob(fn: Callable) -> Callable:
    """Check ``fn(log_probs)``: (..., C, h, w) -> (..., h, w), each pixel's log-prob (all its channels).

    Reference: :func:`pxpo_lite.pixelwise.per_pixel`; cases with and without a step dim T, C = 3 and 4
    (notebook 03).
    """
    shapes = [(2, 3, 4, 5), (2, 6, 3, 4, 5), (3, 4, 5, 5)]
    cases = [{"_what": f"log_probs of shape {s}", "log_probs": torch.randn(*s, generator=_g(i)) - 2} for i, s in enumerate(shapes)]
    variants = lambda c: {"you average the channels: a pixel's log-prob is the log of the product of its channels' "
                          "densities (the covariance is diagonal)": c["log_probs"].mean(-3)}
    return _run("per_pixel_log_prob", fn, pixelwise.per_pixel, cases, grad=("log_probs",), variants=variants,
                shape_hint="Reduce the channel dim only; count it from the end, so it works with or without a T dim.")


def check_kronecker_credit(fn: Callable) -> Callable:
    """Check ``fn(log_probs, reward_map)`` -> the PXPO surrogate (to maximise).

    ``log_probs`` (B,C,h,w) or (B,T,C,h,w), ``reward_map`` (B,h,w). Reference:
    :func:`pxpo_lite.pixelwise.pxpo_surrogate` (mean over C,h,w, sum over t, mean over B);
    gradients w.r.t. ``log_probs`` (notebook 03).
    """
    cases = []
    for i, s in enumerate([(2, 3, 4, 6), (2, 5, 3, 4, 6), (3, 2, 3, 5, 5)]):
        cases.append({"_what": f"log_probs {s}, reward_map {(s[0], *s[-2:])}", "log_probs": torch.randn(*s, generator=_g(i)) - 2,
                      "reward_map": torch.randn(s[0], *s[-2:], generator=_g(i + 50))})

    def variants(c):
        lp, m = c["log_probs"], c["reward_map"]
        ref = pixelwise.pxpo_surrogate(lp, m)
        v = {"every pixel gets the image's mean reward: that is DDPO's whole-image credit, not the Kronecker delta "
             "(log-prob pixel (i,j) must be weighted by reward pixel (i,j))": pixelwise.ddpo_surrogate(lp, m.mean((-2, -1))),
             "the sign: this surrogate is maximised (its negative is the loss)": -ref}
        if m.shape[-1] == m.shape[-2]:
            v["the map is transposed: reward pixel (i,j) must weight log-prob pixel (i,j)"] = pixelwise.pxpo_surrogate(lp, m.transpose(-1, -2))
        if lp.ndim == 5:
            v["you average over the steps t; a trajectory's log-probs add up over its steps"] = ref / lp.shape[1]
        return v

    return _run("kronecker_credit", fn, pixelwise.pxpo_surrogate, cases, grad=("log_probs",), variants=variants,
                shape_hint="Return one number (the surrogate averaged over the batch).")


# --------------------------------------------------------------------------------------------
# 04 / 06 / LoRA
# --------------------------------------------------------------------------------------------
def _pixel_adv_reference(reward_maps, clip_max=5.0):
    return adv_lib.pixel_advantages(reward_maps, ["one prompt"] * len(reward_maps), clip_max=clip_max)


def check_pixel_advantages(fn: Callable) -> Callable:
    """Check ``fn(reward_maps, clip_max=5.0)`` -> PXPO advantages (B,H,W) of one batch of one prompt.

    Reference: :func:`pxpo_lite.advantages.pixel_advantages` without a tracker: a per-pixel
    baseline (the batch's mean map), one scalar std, clipping (notebook 04).
    """
    cases = []
    for i, (B, H, W, clip) in enumerate([(8, 4, 5, 5.0), (6, 3, 3, 1.0), (16, 2, 4, 5.0)]):
        maps = 2 * torch.randn(B, H, W, generator=_g(i)) * torch.rand(1, H, W, generator=_g(i + 9)) + torch.randn(1, H, W, generator=_g(i + 7))
        cases.append({"_what": f"{B} maps of {H}×{W}, clip_max = {clip}", "reward_maps": maps, "clip_max": clip})

    def variants(c):
        r, clip = c["reward_maps"], c["clip_max"]
        z = lambda x, s: (x / (s + adv_lib.EPS)).clamp(-clip, clip)
        centred = r - r.mean(0)
        return {"your baseline is one number per batch; PXPO's is a per-pixel mean map": z(r - r.mean(), centred.std(unbiased=False)),
                "you divide by a per-pixel std; use one scalar std of all centred values": z(centred, centred.std(0, unbiased=False)),
                "nothing is clipped: clip the advantages to [−clip_max, clip_max]": centred / (centred.std(unbiased=False) + adv_lib.EPS)}

    return _run("pixel_advantages", fn, _pixel_adv_reference, cases, variants=variants,
                shape_hint="Return one advantage per pixel of every map (B,H,W).")


def _pxpo_reference(log_prob, old_log_prob, advantage_map, clip_range=None):
    return losses.pxpo_loss(log_prob, old_log_prob, advantage_map, clip_range)[0]


def check_pxpo_loss(fn: Callable) -> Callable:
    """Check ``fn(log_prob, old_log_prob, advantage_map, clip_range)`` -> the PXPO loss of one step.

    Reference: :func:`pxpo_lite.losses.pxpo_loss` (score function without a clip range, element-wise
    clipped ratio with one); gradients w.r.t. ``log_prob`` (notebook 04).
    """
    cases = []
    for i, (s, eps) in enumerate([((2, 3, 4, 6), None), ((3, 3, 5, 5), 0.2), ((2, 4, 4, 4), 0.05)]):
        old = torch.randn(*s, generator=_g(i)) - 2
        cases.append({"_what": f"log_prob {s}, clip_range = {eps}", "log_prob": old + 0.3 * torch.randn(*s, generator=_g(i + 5)),
                      "old_log_prob": old, "advantage_map": torch.randn(s[0], *s[2:], generator=_g(i + 9)), "clip_range": eps})

    def variants(c):
        lp, old, m, eps = c["log_prob"], c["old_log_prob"], c["advantage_map"], c["clip_range"]
        v = {"the sign: the loss is minimised, so it is minus the advantage-weighted objective": -_pxpo_reference(**c),
             "each pixel must be weighted by its own advantage, not the image's mean (that is DDPO)":
                 losses.ddpo_loss(lp, old, m.mean((-2, -1)), eps)[0]}
        if eps is not None:
            v["nothing is clipped: clip each element's ratio to [1 − ε, 1 + ε]"] = (-m[:, None] * (lp - old).exp()).mean()
        return v

    return _run("pxpo_loss", fn, _pxpo_reference, cases, grad=("log_prob",), variants=variants,
                shape_hint="Return one number (the loss averaged over the batch).")


def check_heatmap_to_advantages(fn: Callable) -> Callable:
    """Check ``fn(heatmap, sample_size, scale=1.0)`` -> advantages (1,h,w) from a painted map (H,W).

    Reference: :func:`pxpo_lite.feedback.heatmap_to_advantages` (A = scale · h, area-averaged onto
    the sample grid); cases with the same grid and 2× / 4× smaller grids (notebook 06).
    """
    cases = []
    for i, (H, W, h, w, scale) in enumerate([(8, 8, 8, 8, 1.0), (16, 16, 4, 4, 2.0), (16, 8, 8, 4, 0.5)]):
        heat = np.clip(np.random.default_rng(i).normal(size=(H, W)), -1, 1).astype(np.float32)
        cases.append({"_what": f"a {H}×{W} heatmap onto a {h}×{w} grid, scale = {scale}", "heatmap": heat,
                      "sample_size": (h, w), "scale": scale})

    def variants(c):
        heat, (h, w), scale = torch.as_tensor(c["heatmap"]), c["sample_size"], c["scale"]
        kh, kw = heat.shape[0] // h, heat.shape[1] // w
        ref = feedback.heatmap_to_advantages(c["heatmap"], (h, w), scale)
        return {"you sum the pixels each cell covers: average them (area average)": ref * kh * kw,
                "you subsample the map: each cell gets the *mean* of the pixels it covers": scale * heat[None, ::kh, ::kw],
                "the scale is ignored": ref / scale}

    return _run("heatmap_to_advantages", fn, feedback.heatmap_to_advantages, cases, variants=variants,
                shape_hint="Return a batch of one map: shape (1, h, w).")


def _tiny_unet(width: int):
    """A very small diffusers UNet (attention at the lower resolution, ResNet convolutions)."""
    from diffusers import UNet2DConditionModel  # heavy import, needed by this check only

    return UNet2DConditionModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                block_out_channels=(width, 2 * width), norm_num_groups=4, cross_attention_dim=8,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=2)


def _lora_count_reference(model, rank, target_modules):
    m = copy.deepcopy(model)
    lora_lib.add_lora(m, rank=rank, target_modules=target_modules)
    return sum(p.numel() for p in lora_lib.lora_parameters(m))


def check_lora_param_count(fn: Callable) -> Callable:
    """Check ``fn(model, rank, target_modules)`` -> how many parameters LoRA of that rank trains.

    Reference: add adapters with :func:`pxpo_lite.lora.add_lora` to a copy and count
    ``lora_parameters`` (a Linear d_in→d_out gets r·(d_in + d_out); a k×k Conv2d c_in→c_out gets
    r·(c_in·k² + c_out)). Models: very small diffusers UNets.
    """
    cases = []
    for w, r, targets in [(8, 4, lora_lib.SD_TARGETS), (4, 2, ("to_q", "conv1", "conv2")), (8, 8, lora_lib.TINY_TARGETS)]:
        cases.append({"_what": f"a UNet of width {w}, rank {r}, targets {list(targets)}", "model": _tiny_unet(w),
                      "rank": r, "target_modules": tuple(targets)})

    def variants(c):
        mods = dict(c["model"].named_modules())
        full = sum(mods[n].weight.numel() for n in lora_lib.matching_modules(c["model"], c["target_modules"]))
        return {"you count the adapted layers' full weights: LoRA trains only the two low-rank factors": float(full)}

    return _run("lora_param_count", fn, _lora_count_reference, cases, variants=variants, shape_hint="Return one integer.")
