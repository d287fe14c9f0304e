"""One policy-gradient optimiser step on stored trajectories: the only code that changes weights by RL.

Both :class:`pxpo_lite.trainer.Trainer` (DDPO/PXPO on batches of images, ``notebooks/02_ddpo.ipynb``)
and :class:`pxpo_lite.feedback.FeedbackSession` (PXPO on one image, ``notebooks/06_human_feedback_canvas.ipynb``)
call :func:`policy_gradient_step`. One call is one optimiser step (docs/paper.md, "DDPO's estimators" and
"Pixel-wise policy optimisation"):

1. for every (samples, timestep index) pair: **re-score** the stored transition x_t → x_{t−1}
   under the current weights, with gradients (:func:`pxpo_lite.sampling.step_log_probs`:
   ``timestep_batch`` timesteps of one micro-batch share one UNet forward; for a flow trajectory
   :func:`pxpo_lite.flow_sampling.step_log_probs`, Flow-GRPO's SDE step);
2. the **per-step loss** (:func:`step_loss`): ``ddpo_loss`` (one advantage per sample, (b,)) or
   ``pxpo_loss`` (one advantage per element of the sample grid, (b,h,w)), plus the optional
   per-pixel **keep term** β·mean(w·(μ_θ − μ_ref)²/(2σ_t²)) (:class:`Keep`, :mod:`pxpo_lite.keep`:
   a closed-form KL to the reference policy; μ_θ comes from the same forward as the log-prob,
   μ_ref from one extra no-grad forward) and an optional ``extra_loss`` (extension point);
3. **backward** of loss / (number of pairs): the gradients of all pairs — micro-batches ×
   timesteps — accumulate into their mean (gradient accumulation);
4. **average** the gradients over processes (``average_gradients``; default: one flat
   all-reduce when there are several), **clip** the gradient norm;
5. **optimiser step**.

**NaN guard**: a NaN/inf log-prob, loss (keep term included) or gradient norm raises :class:`TrainingError` naming
the sample, its prompt and the timestep; the gradients are cleared and the optimiser step is
skipped, so the weights are untouched.

Which timesteps can be trained: those with σ_t > 0 (:func:`pxpo_lite.steps.trainable_steps`, from
:func:`pxpo_lite.ddim.trainable_step_indices`, the package's one threshold). ``update.Keep``,
``update.trainable_steps`` and ``update.schedule`` are re-exports of :mod:`pxpo_lite.keep` and
:mod:`pxpo_lite.steps`, their homes.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from . import keep as keep_lib
from .config_checks import check_positive_int
from .keep import Keep
from .losses import NonFiniteError, ddpo_loss, imageratio_loss, pxpo_loss
from .memory import rows_that_fit
from .sampling import step_log_probs
from .steps import schedule, trainable_steps  # noqa: F401 (re-exported: their home is steps.py)

LOSSES = {"ddpo": ddpo_loss, "pxpo": pxpo_loss, "pxpo_imageratio": imageratio_loss}
"""Method name -> per-timestep loss ``(log_prob, old_log_prob, advantages, clip_range) -> (loss, info)``."""


class TrainingError(ValueError):
    """A training step was stopped (NaN/inf) before it could change the weights."""


@dataclass
class StepResult:
    """What one optimiser step returns: the per-pair loss diagnostics and the gradient norm (before clipping)."""

    infos: list
    grad_norm: float


def _scorers(traj):
    """(step_log_probs, steps_means) for ``traj``: the SDE step's for a flow trajectory, DDIM's otherwise."""
    from . import flow_sampling  # imports pxpo_lite.flow, which imports the trainer: not at module level

    if isinstance(traj, flow_sampling.FlowTrajectory):
        return flow_sampling.step_log_probs, flow_sampling.steps_means
    return step_log_probs, keep_lib.steps_means


# --------------------------------------------------------------------------------------------
# The loss of one (samples, timestep) pair
# --------------------------------------------------------------------------------------------
def step_loss(method: str, log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
              clip_range: float | None, keep: "keep_lib.KeepTerm | None" = None) -> tuple[torch.Tensor, dict]:
    """The loss of one timestep for one micro-batch (all loss terms are assembled here).

    log_prob, old_log_prob: (b,C,h,w); advantages: (b,) for "ddpo", (b,h,w) for "pxpo" and "pxpo_imageratio";
    ``keep``: the pair's keep term (:func:`pxpo_lite.keep.keep_term`), added to the loss; its
    diagnostics go into the info as ``keep_kl`` (mean KL per element), ``keep_kl_kept``
    (w-weighted, where w > 0), ``keep_kl_free`` (where w = 0; NaN if none), ``keep_term``.
    """
    if method not in LOSSES:
        raise ValueError(f"method must be one of {sorted(LOSSES)}, got {method!r}")
    loss, info = LOSSES[method](log_prob, old_log_prob, advantages, clip_range)
    if keep is not None:
        loss = loss + keep.term
        info = {**info, "loss": float(loss.detach()), **{f"keep_{k}": v for k, v in keep.stats.items() if k != "keep_fraction"}}
    return loss, info


def check_advantages(method: str, advantages: torch.Tensor, traj) -> None:
    """(B,) for DDPO, (B,h,w) on the trajectory's sample grid for the per-pixel losses; otherwise a ValueError naming the shapes."""
    B, h, w = len(traj), *traj.latents.shape[-2:]
    want = (B,) if method == "ddpo" else (B, h, w)
    if not isinstance(advantages, torch.Tensor) or tuple(advantages.shape) != want:
        got = tuple(advantages.shape) if isinstance(advantages, torch.Tensor) else type(advantages).__name__
        raise ValueError(
            f"advantages for method={method!r} must have shape {want} (one per sample" +
            (")" if method == "ddpo" else " and element of the sample grid; map image-resolution maps with "
             "pixelwise.to_sample_grid)") + f", got {got}"
        )


def average_gradients(params: Sequence[torch.nn.Parameter], accelerator) -> None:
    """Average ``params``' gradients over processes with one flat all-reduce (no-op for one process)."""
    if accelerator is None or accelerator.num_processes == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
    off = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[off : off + n].view_as(p).clone()
        off += n


def clip_gradients(params: Sequence[torch.nn.Parameter], max_grad_norm: float | None, accelerator=None) -> float:
    """Clip the gradients of ``params`` to a total 2-norm of ``max_grad_norm`` (None: leave them) and return
    their norm before clipping: ``clip_grad_norm_`` (the accelerator's, which unscales mixed-precision gradients
    first), with max_norm = ∞ for None. No gradients: 0.0; a NaN/inf gradient: a NaN/inf norm (the caller stops)."""
    clip = accelerator.clip_grad_norm_ if accelerator is not None else torch.nn.utils.clip_grad_norm_
    return float(clip(list(params), math.inf if max_grad_norm is None else max_grad_norm))


def _not_finite(what: str, t: torch.Tensor, traj, idx: torch.Tensor, step: int, where: str) -> None:
    bad = ~torch.isfinite(t.detach().reshape(len(idx), -1)).all(dim=1)
    if bad.any():
        who = ", ".join(f"sample {int(idx[b])} (prompt {traj.prompts[int(idx[b])]!r})" for b in bad.nonzero().flatten().tolist()[:5])
        raise TrainingError(
            f"{what} is NaN/inf for {who} at timestep index {step} (t = {int(traj.timesteps[step])}){where}; "
            "the optimiser step was skipped (weights untouched). Lower the learning rate, check the reward scale, "
            "or use mixed_precision='no'."
        )


#: :func:`resolve_timestep_batch`'s speed budget on a CPU: UNet input elements per forward (rows × C·h·w);
#: the tiny model at micro-batch 8 gets 5 timesteps per forward, one painted image (batch 1) all 20,
#: the tiny SD of the TRL benchmark (batch 4, guided) all 20. Measured on CPU
#: (``benchmarks/bench_speedups.py``): several timesteps per forward pay where the per-call overhead
#: dominates (small batches, small latents) and not for large ones.
TIMESTEP_BATCH_ELEMENTS = 2**17


def resolve_timestep_batch(timestep_batch: int | None, pipe, traj, micro_batch: int) -> int:
    """``timestep_batch`` as given, or for None the automatic rule: as many of the trajectory's steps as

    * fit in memory: k × rows ≤ :func:`pxpo_lite.memory.rows_that_fit` (the activation bytes of one
      row measured on this UNet by a probe forward, against ``MEMORY_FRACTION`` of the free memory
      of its device — the GPU's free memory on CUDA; the fraction is an estimate, unmeasured on a GPU);
    * and, on a CPU, keep one forward within ``TIMESTEP_BATCH_ELEMENTS`` input elements (measured:
      beyond it a bigger forward is no faster per row, only larger);

    at least 1, at most the trajectory's steps. rows = micro-batch × 2 with guidance. No
    parameter-count cut-off: a Stable Diffusion UNet gets k > 1 when its memory allows it.
    """
    if timestep_batch is not None:
        check_positive_int("timestep_batch (timesteps per UNet forward; None: automatic)", timestep_batch)
        return timestep_batch
    rows = micro_batch * (2 if traj.negative_prompt_embeds is not None else 1)
    k = traj.num_steps
    device = next(pipe.unet.parameters()).device
    if device.type != "cuda":
        per_step = rows * math.prod(traj.latents.shape[2:])
        k = min(k, TIMESTEP_BATCH_ELEMENTS // max(1, per_step))
    if k > 1:
        fit = rows_that_fit(pipe, tuple(traj.latents.shape[2:]), traj.prompt_embeds)
        if fit is not None:
            k = min(k, fit // rows)
    return max(1, k)


def group_pairs(pairs: Sequence[tuple[torch.Tensor, int]], timestep_batch: int) -> list[list[tuple[torch.Tensor, int]]]:
    """Consecutive pairs of the same micro-batch, ``timestep_batch`` at a time: each group is one UNet
    forward (:func:`pxpo_lite.sampling.step_log_probs`). The pairs' order is kept."""
    check_positive_int("timestep_batch (timesteps per UNet forward)", timestep_batch)
    groups: list[list] = []
    for idx, i in pairs:
        last = groups[-1] if groups else None
        if last is not None and len(last) < timestep_batch and (last[0][0] is idx or torch.equal(last[0][0], idx)):
            last.append((idx, i))
        else:
            groups.append([(idx, i)])
    return groups


# --------------------------------------------------------------------------------------------
# One optimiser step
# --------------------------------------------------------------------------------------------
def policy_gradient_step(
    pipe,
    traj,
    advantages: torch.Tensor,
    pairs: Sequence[tuple[torch.Tensor, int]],
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.nn.Parameter],
    *,
    method: str,
    clip_range: float | None = None,
    max_grad_norm: float | None = None,
    accelerator=None,
    average: Callable | None = None,
    extra_loss: Callable | None = None,
    keep: Keep | None = None,
    where: str = "",
    timestep_batch: int = 1,
) -> StepResult:
    """One optimiser step from the (sample indices, timestep index) ``pairs`` of ``traj`` (module docstring).

    Args:
        advantages: (B,) for ``method="ddpo"``, (B,h,w) on the sample grid for ``"pxpo"`` (fixed).
        pairs: ``[(idx, i), ...]``: the micro-batch ``idx`` (a LongTensor of sample indices) at
            timestep index ``i``; their gradients are averaged into this one step.
        optimizer, params: the optimiser and the parameters it trains.
        clip_range: None (score-function loss) or ε (PPO-clipped ratio).
        max_grad_norm: clip the gradient norm to this (None: measure it, do not clip).
        accelerator: an ``accelerate.Accelerator`` (autocast, loss scaling, clipping) or None.
        average: ``average(params)`` after the backward passes; default :func:`average_gradients`
            over the accelerator's processes.
        extra_loss: the extension point for a further loss term per pair:
            ``extra_loss(pipe, traj, idx, i, log_prob) -> (term, info)``; ``term`` is added to the
            policy loss of that pair, ``info`` to its diagnostics.
        keep: the per-pixel keep term (:class:`Keep`); None or β = 0: off (no reference forward).
        where: appended to error messages (e.g. ``", epoch 3"``).
        timestep_batch: how many timesteps of one micro-batch go through the UNet in one forward
            (:func:`group_pairs`; 1: one forward per pair). The gradient is the same up to float
            rounding; larger is faster where the UNet's per-call overhead dominates (small models,
            small batches) and needs that many times the activation memory.
    """
    check_advantages(method, advantages, traj)
    if keep is not None and not isinstance(keep, Keep):
        raise TypeError(f"keep must be a keep.Keep(beta, weights, reference_unet) or None, got {type(keep).__name__}")
    use_keep = keep is not None and keep.active
    if use_keep and keep.weights is not None and keep.weights.shape[0] not in (1, len(traj)):
        raise ValueError(f"Keep.weights has {keep.weights.shape[0]} maps but the trajectory has {len(traj)} samples; give one per sample or one for all")
    if use_keep:
        keep.check_reference(pipe, params)
    if not pairs:
        raise ValueError("pairs is empty: an optimiser step needs at least one (sample indices, timestep index) pair")
    autocast = accelerator.autocast if accelerator is not None else contextlib.nullcontext
    backward = accelerator.backward if accelerator is not None else torch.Tensor.backward
    params = list(params)
    infos = []
    score, means = _scorers(traj)
    optimizer.zero_grad(set_to_none=True)
    try:
        for group in group_pairs(pairs, timestep_batch):
            # 1. re-score x_t -> x_{t-1} with gradients: (b,C,h,w) per pair, the group's timesteps of one
            #    micro-batch in one UNet forward; with the keep term the same forward also gives μ_θ, and
            #    one no-grad forward of the reference gives μ_ref
            idx, steps = group[0][0], [i for _, i in group]
            with autocast():
                if use_keep:
                    pols = means(pipe, traj, steps, idx)
                    refs = means(pipe, traj, steps, idx, reference=True, reference_unet=keep.reference_unet)
                    lps = [pol.log_prob.float() for pol in pols]
                else:
                    lps = [lp.float() for lp in score(pipe, traj, steps, idx)]
            adv = advantages[idx.to(advantages.device)].to(lps[0].device)  # the micro-batch's advantages, once per group
            group_loss = 0.0
            for k, (lp, i) in enumerate(zip(lps, steps)):
                _not_finite("log-prob", lp, traj, idx, i, where)
                kt = keep.term(pols[k], refs[k], idx) if use_keep else None
                # 2. the loss of this pair (+ the keep term, + the optional extra term)
                old = traj.log_probs[idx, i].to(lp.device)
                loss, info = step_loss(method, lp, old, adv, clip_range, kt)
                if extra_loss is not None:
                    term, extra_info = extra_loss(pipe, traj, idx, i, lp)
                    loss = loss + term
                    info = {**info, **extra_info, "loss": float(loss.detach())}
                if not torch.isfinite(loss):
                    _not_finite("loss", loss.detach().expand(len(idx)), traj, idx, i, where)
                group_loss = group_loss + loss
                infos.append(info)
            # 3. accumulate the mean gradient over the pairs
            backward(group_loss / len(pairs))
        # 4. average over processes, clip
        (average or (lambda ps: average_gradients(ps, accelerator)))(params)
        norm = clip_gradients(params, max_grad_norm, accelerator)
        if not math.isfinite(norm):
            raise TrainingError(f"the gradient norm is {norm}{where}; the optimiser step was skipped (weights untouched)")
    except (TrainingError, NonFiniteError) as e:
        optimizer.zero_grad(set_to_none=True)
        if isinstance(e, TrainingError):
            raise
        raise TrainingError(f"{e}{where}; the optimiser step was skipped (weights untouched)") from e
    # 5. step
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(infos, norm)


def _finite_mean(values) -> float:
    vals = [float(v) for v in values if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def summarise(infos: Sequence[dict]) -> dict:
    """Mean of each loss diagnostic over pairs; ``ratio_min``/``ratio_max`` are the min/max.

    ``keep_kl_free`` is NaN for a pair without free (w = 0) pixels: those pairs are left out of its mean.
    """
    if not infos:
        raise ValueError("infos is empty: nothing to summarise")
    out = {k: float(sum(d[k] for d in infos) / len(infos)) for k in infos[0] if k not in ("ratio_min", "ratio_max")}
    if "keep_kl_free" in out:
        out["keep_kl_free"] = _finite_mean(d["keep_kl_free"] for d in infos)
    out["ratio_min"] = min(d["ratio_min"] for d in infos)
    out["ratio_max"] = max(d["ratio_max"] for d in infos)
    return out
