"""Flow trajectories: sample with Flow-GRPO's SDE step and keep every step's per-element log-probability.

The flow counterpart of :mod:`pxpo_lite.sampling`. :func:`sample_flow` runs a flow pipeline
(``FlowMatchEulerDiscreteScheduler``) from noise at t = 1 to the image at t = 0 with
:func:`pxpo_lite.flow.sde_step_logprob` at every step and returns a :class:`FlowTrajectory`: the
package's :class:`~pxpo_lite.trajectory.Trajectory` record (states, per-element log-probs,
timesteps, prompt embeddings, guidance) whose ``eta`` field holds the **noise level** a. Because
it is the same record, the rest of the package reads it unchanged; :func:`step_log_probs` and
:func:`steps_means` re-score stored steps under the current weights (with gradients), and
:func:`pxpo_lite.update.policy_gradient_step` calls them for a :class:`FlowTrajectory` — the one
update path serves DDIM and flow trajectories alike.

A diffusers ``StableDiffusion3Pipeline`` is taken as it is: every function here first swaps it for
its view with the same calls (:func:`pxpo_lite.sd3.as_flow_pipeline`: the transformer called as a
UNet, the pooled projections packed into the prompt embeddings, the VAE's shift factor).

The UNet is called through :func:`pxpo_lite.sampling.model_output` /
:func:`~pxpo_lite.sampling.stacked_model_output` (classifier-free guidance for every w ≠ 1, one
batched call), with x_t passed as it is: a flow scheduler has no ``scale_model_input``. x at t = 1
is N(0, I) (no ``init_noise_sigma``), drawn as the flow pipeline draws it.

Introduced in notebook 09, "Flow matching and GRPO".
"""
from __future__ import annotations

import types
from dataclasses import dataclass

import torch

from . import sampling
from .ddim import gaussian_log_prob
from .flow import _gaussian, check_flow_scheduler, check_noise_level, sde_step_logprob
from .keep import StepGaussian, adapters_disabled
from .trajectory import Trajectory

__all__ = ["FlowTrajectory", "sample_flow", "sync_flow_scheduler", "flow_step_inputs", "step_log_prob", "step_log_probs",
           "steps_means", "rescore"]


@dataclass
class FlowTrajectory(Trajectory):
    """A batch of SDE trajectories of a flow pipeline (:func:`sample_flow`): a :class:`Trajectory` whose
    ``eta`` is Flow-GRPO's noise level a, ``timesteps`` the float t·1000 of the schedule and
    ``latents[:, i]`` → ``latents[:, i+1]`` one SDE step from t = timesteps[i]/1000 to the next sigma."""

    @property
    def noise_level(self) -> float:
        return float(self.eta)


class _NoInputScaling:
    """A flow scheduler feeds x_t to the UNet unscaled (it has no ``scale_model_input``)."""

    @staticmethod
    def scale_model_input(x, t):
        return x


def _flow_pipe(pipe):
    """``pipe``, or for a diffusers SD3 pipeline its view with the same calls (:func:`pxpo_lite.sd3.as_flow_pipeline`)."""
    from .sd3 import as_flow_pipeline

    return as_flow_pipeline(pipe)


def _caller(unet) -> types.SimpleNamespace:
    """What :func:`sampling.model_output` reads: ``unet`` and ``scheduler.scale_model_input``."""
    return types.SimpleNamespace(unet=unet, scheduler=_NoInputScaling)


@torch.no_grad()
def sample_flow(
    pipe,
    prompts,
    *,
    num_steps: int = 10,
    noise_level: float = 0.7,
    guidance_scale: float | None = None,
    generator: torch.Generator | None = None,
    negative_prompt=None,
    latents: torch.Tensor | None = None,
    progress: bool = True,
    batch_size: int | None = None,
) -> FlowTrajectory:
    """Sample B = len(prompts) SDE trajectories and record per-element log-probs (Flow-GRPO's rollout).

    Args:
        pipe: a flow pipeline (``pipe.scheduler`` a ``FlowMatchEulerDiscreteScheduler``; the tiny one of
            :mod:`pxpo_lite.flow_models`).
        prompts: str or list of str (one sample each; repeat a prompt G times for a GRPO group).
        num_steps: T, SDE steps (flow_grpo trains with 10).
        noise_level: a > 0 in σ_t = a·√(t/(1−t)) (flow_grpo: 0.7).
        guidance_scale: w, finite and >= 0; None: the pipeline's default (:func:`sampling.resolve_guidance_scale`).
        generator: for x at t = 1 and every step's noise (the same seed gives the same trajectory).
        negative_prompt: optional, with guidance.
        latents: optional x at t = 1, (B, unet in_channels, sample_size, sample_size).
        progress: a tqdm bar over the steps.
        batch_size: at most this many prompts at a time, one chunk after the other with the same
            generator (the result equals sampling each chunk and :meth:`Trajectory.cat`).
    """
    pipe = _flow_pipe(pipe)
    check_flow_scheduler(pipe.scheduler, need_timesteps=False)
    a = check_noise_level(noise_level)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    prompts = sampling._check_prompts(pipe, prompts)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be None (all prompts at once) or an int >= 1, got {batch_size!r}")
    if batch_size is not None and batch_size < len(prompts):
        if latents is not None:
            sampling._check_latents(pipe, latents, len(prompts))
        return FlowTrajectory.cat([
            sample_flow(pipe, prompts[s : s + batch_size], num_steps=num_steps, noise_level=a, guidance_scale=guidance_scale,
                        generator=generator, negative_prompt=negative_prompt,
                        latents=None if latents is None else latents[s : s + batch_size], progress=progress)
            for s in range(0, len(prompts), batch_size)
        ])
    w = sampling.resolve_guidance_scale(pipe, guidance_scale)
    cond, uncond = sampling._encode(pipe, prompts, w, negative_prompt)
    device, dtype = sampling.pipeline_device(pipe), sampling.unet_dtype(pipe)
    if latents is None:
        from diffusers.utils.torch_utils import randn_tensor

        x = randn_tensor(sampling._sample_shape(pipe, len(prompts)), generator=generator, device=device, dtype=dtype)
    else:
        sampling._check_latents(pipe, latents, len(prompts))
        x = latents.to(device=device, dtype=dtype)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(num_steps, device=device)
    caller = _caller(pipe.unet)
    xs, lps = [x], []
    for t in sampling._progress(scheduler.timesteps, progress, "sampling (SDE)"):
        v = sampling.model_output(caller, x, t, cond, uncond, w)
        x, lp = sde_step_logprob(scheduler, v, t, x, a, generator=generator)
        xs.append(x)
        lps.append(lp)
    return FlowTrajectory(images=sampling.decode(pipe, x), latents=torch.stack(xs, dim=1), log_probs=torch.stack(lps, dim=1),
                          timesteps=scheduler.timesteps.clone(), prompts=prompts, prompt_embeds=cond,
                          negative_prompt_embeds=uncond, guidance_scale=w, eta=a)


def sync_flow_scheduler(pipe, traj: FlowTrajectory):
    """Make ``pipe.scheduler`` use the trajectory's schedule (``set_timesteps(T)`` if needed) and check it."""
    pipe = _flow_pipe(pipe)
    check_flow_scheduler(pipe.scheduler, need_timesteps=False)
    s, T = pipe.scheduler, traj.num_steps
    if getattr(s, "num_inference_steps", None) != T or not torch.equal(s.timesteps.cpu(), traj.timesteps.cpu()):
        s.set_timesteps(T, device=sampling.pipeline_device(pipe))
    if not torch.equal(s.timesteps.cpu(), traj.timesteps.cpu()):
        raise ValueError(f"the trajectory was sampled with timesteps {traj.timesteps.tolist()} but pipe.scheduler gives "
                         f"{s.timesteps.tolist()} for {T} steps: re-score with the scheduler (config) it was sampled with")
    return s


def flow_step_inputs(pipe, traj: FlowTrajectory, step_indices, sample_idx=None) -> sampling.StepInputs:
    """The stored inputs of some steps of some samples (:class:`sampling.StepInputs`; ``eta`` is the noise level)."""
    if not isinstance(traj, FlowTrajectory):
        raise TypeError(f"traj must be a FlowTrajectory (from pxpo_lite.flow.sample_flow), got {type(traj).__name__}; "
                        "a DDIM Trajectory is re-scored by pxpo_lite.sampling.step_log_probs")
    pipe = _flow_pipe(pipe)
    steps = [sampling._check_step_index(traj, i) for i in step_indices]
    if not steps:
        raise ValueError("step_indices is empty: give at least one stored step index")
    scheduler = sync_flow_scheduler(pipe, traj)
    sub = traj if sample_idx is None else traj.select(sample_idx)
    to = dict(device=sampling.pipeline_device(pipe), dtype=sampling.unet_dtype(pipe))
    uncond = None if sub.negative_prompt_embeds is None else sub.negative_prompt_embeds.to(**to)
    return sampling.StepInputs(scheduler, sub.eta, steps, [scheduler.timesteps[i] for i in steps],
                               [sub.latents[:, i].to(**to) for i in steps], [sub.latents[:, i + 1].to(**to) for i in steps],
                               sub.prompt_embeds.to(**to), uncond, sub.guidance_scale if uncond is not None else 1.0)


def _score(s: sampling.StepInputs, outs) -> list:
    """(μ, s, log-prob) per step from the model outputs; no NaN check here (the update's guard names the sample)."""
    out = []
    for v, i, x_t, x_prev in zip(outs, s.steps, s.xs, s.x_prevs):
        mean, std = _gaussian(s.scheduler, i, v, x_t, s.eta)
        out.append((mean, std, gaussian_log_prob(x_prev.detach(), mean, std)))
    return out


def step_log_probs(pipe, traj: FlowTrajectory, step_indices, sample_idx=None) -> list:
    """log p_θ(x_next | x_t, c) per element for several stored steps of the same samples, WITH gradients,
    from ONE UNet forward: one (b,C,h,w) float32 tensor per index (as :func:`sampling.step_log_probs`)."""
    pipe = _flow_pipe(pipe)
    s = flow_step_inputs(pipe, traj, step_indices, sample_idx)
    outs = sampling.stacked_model_output(_caller(pipe.unet), s.xs, s.ts, s.cond, s.uncond, s.guidance_scale)
    return [lp for _, _, lp in _score(s, outs)]


def step_log_prob(pipe, traj: FlowTrajectory, step_index: int, sample_idx=None) -> torch.Tensor:
    """:func:`step_log_probs` for one stored step: (b,C,h,w), WITH gradients."""
    return step_log_probs(pipe, traj, [step_index], sample_idx)[0]


def steps_means(pipe, traj: FlowTrajectory, step_indices, sample_idx=None, reference: bool = False,
                reference_unet: torch.nn.Module | None = None) -> list:
    """μ, s and the per-element log-prob of stored steps (:class:`pxpo_lite.keep.StepGaussian`), as
    :func:`pxpo_lite.keep.steps_means` for DDIM: the trained policy WITH gradients, or with
    ``reference=True`` μ_ref without gradients from ``reference_unet`` or from ``pipe.unet`` with its
    LoRA adapters off. Both policies share s, so the keep term is (μ_θ − μ_ref)²/(2 s²) per element."""
    if reference_unet is not None and not reference:
        raise ValueError("reference_unet is only used with reference=True (it gives μ_ref); drop it for the trained policy's μ_θ")
    pipe = _flow_pipe(pipe)
    s = flow_step_inputs(pipe, traj, step_indices, sample_idx)
    args = (s.xs, s.ts, s.cond, s.uncond, s.guidance_scale)
    if not reference:
        outs = sampling.stacked_model_output(_caller(pipe.unet), *args)
    elif reference_unet is not None:
        with torch.no_grad():
            outs = sampling.stacked_model_output(_caller(reference_unet), *args)
    else:
        with torch.no_grad(), adapters_disabled(pipe.unet):
            outs = sampling.stacked_model_output(_caller(pipe.unet), *args)
    return [StepGaussian(mean, std, lp) for mean, std, lp in _score(s, outs)]


@torch.no_grad()
def rescore(pipe, traj: FlowTrajectory, progress: bool = False, batch_size: int | None = None) -> torch.Tensor:
    """Per-element log-probs (B,T,C,h,w) of every stored step under the current weights, no grad; with
    unchanged weights they reproduce ``traj.log_probs`` (same batch composition as :func:`sample_flow`)."""
    B = len(traj)
    chunks = [None] if not batch_size else [slice(s, min(s + batch_size, B)) for s in range(0, B, batch_size)]
    out = []
    for i in sampling._progress(range(traj.num_steps), progress, "re-scoring"):
        out.append(torch.cat([step_log_prob(pipe, traj, i, c) for c in chunks]))
    return torch.stack(out, dim=1)
