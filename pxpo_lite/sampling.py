"""Trajectories: sample with the DDIM policy and keep every step's per-element log-probability.

A trajectory is one episode of the denoising MDP (``docs/paper.md``, "Denoising as a
Markov decision process"): states x_T .. x_0, actions x_{t−1}, and log π_θ(x_{t−1}|x_t,c) for every step and
every element. RL needs these twice: at sampling time (the "old" log-probs of PPO, the baseline
of the importance ratio ρ_t = p_θ/p_θold) and again under the current weights, with gradients,
for the loss. :func:`sample` produces a :class:`Trajectory`; :func:`step_log_prob` re-scores one
stored transition with gradients through ``pipe.unet`` (and any LoRA adapters on it);
:func:`rescore` re-scores all of them without gradients.

Works with the tiny pixel-space pipeline (``pxpo_lite.load_tiny_pipeline``) and any diffusers
``StableDiffusionPipeline`` (the "sample" is then the VAE latent, decoded with ``pipe.vae``),
with classifier-free guidance whenever ``guidance_scale`` w ≠ 1:
ε̂ = ε_θ(x_t, ∅) + w (ε_θ(x_t, c) − ε_θ(x_t, ∅)) (w = 0: unconditional; 0 < w < 1: between the
two; w = 1 needs only the conditional pass). Unlike diffusers' pipelines, which skip guidance for
every w ≤ 1, w < 1 is applied as written, and the trajectory records the w that was used.

Introduced in ``notebooks/01_denoising_as_an_mdp.ipynb`` (one step) and used from
``notebooks/02_*`` on.
"""
from __future__ import annotations

import types
from typing import NamedTuple

import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from .config_checks import as_int
from .ddim import StepGaussian, check_eta, check_scheduler, ddim_step_gaussian, ddim_step_logprob
from .devices import check_not_meta
from .guidance import (SD_DEFAULT_GUIDANCE, _is_latent_pipeline, model_output, resolve_guidance_scale, stacked_model_output,
                       uses_guidance)
from .trajectory import Trajectory

__all__ = ["Trajectory", "sample", "step_log_prob", "step_log_probs", "step_gaussians", "StepGaussian", "step_inputs", "StepInputs",
           "rescore", "model_output", "stacked_model_output", "initial_latents", "decode", "resolve_guidance_scale",
           "uses_guidance", "unet_dtype", "pipeline_device", "sync_scheduler", "SD_DEFAULT_GUIDANCE"]


# --------------------------------------------------------------------------------------------
# Pipeline adapters (tiny pixel-space pipeline and diffusers Stable Diffusion look alike here;
# the guidance scale and the guided UNet call: pxpo_lite.guidance)
# --------------------------------------------------------------------------------------------
def _check_prompts(pipe, prompts) -> list[str]:
    if hasattr(pipe, "check_prompts"):
        return pipe.check_prompts(prompts)
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a str or a non-empty list of str, got {prompts!r}")
    return list(prompts)


def unet_dtype(pipe) -> torch.dtype:
    return next(pipe.unet.parameters()).dtype


def pipeline_device(pipe) -> torch.device:
    """The UNet's device; ValueError for the meta device (weights never loaded), where torch's own errors name no cause."""
    device = next(pipe.unet.parameters()).device
    if device.type == "meta":
        raise ValueError(
            f"pipe.unet's weights are on the meta device: {type(pipe.unet).__name__} was built without loading its "
            "weights (e.g. from_pretrained with low_cpu_mem_usage/device_map, or torch.device('meta')); load real weights "
            "(pxpo_lite.load_tiny_pipeline(), or from_pretrained(...)) before sampling; .to('cpu') cannot give them values")
    return device


def initial_latents(pipe, batch_size: int, generator=None) -> torch.Tensor:
    """x_T ~ N(0, σ_init² I) in the UNet's sample space, drawn as the diffusers pipelines draw it."""
    x = randn_tensor(_sample_shape(pipe, batch_size), generator=generator, device=pipeline_device(pipe), dtype=unet_dtype(pipe))
    return x * pipe.scheduler.init_noise_sigma


def decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    """x_0 in the sample space -> images (B,3,H,W) float32 in [0,1] (VAE decode for SD)."""
    if hasattr(pipe, "decode_latents_to_images"):
        return pipe.decode_latents_to_images(latents).float()
    if _is_latent_pipeline(pipe):
        vae = pipe.vae
        x = latents.to(vae.dtype) / vae.config.scaling_factor
        return (vae.decode(x).sample.float() / 2 + 0.5).clamp(0, 1)
    raise TypeError(f"don't know how to decode samples of {type(pipe).__name__}: it has neither a VAE nor decode_latents_to_images")


def _encode(pipe, prompts: list[str], guidance_scale: float, negative_prompt=None):
    device = pipeline_device(pipe)
    guided = uses_guidance(guidance_scale)
    cond, uncond = pipe.encode_prompt(prompts, device, 1, guided, negative_prompt)
    dtype = unet_dtype(pipe)
    cond = cond.to(dtype)
    uncond = uncond.to(dtype) if guided else None
    return cond, uncond



def _progress(iterable, progress: bool, desc: str):
    return tqdm(iterable, disable=not progress, desc=desc, leave=False)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def sample(
    pipe,
    prompts,
    *,
    num_steps: int = 20,
    eta: float = 1.0,
    guidance_scale: float | None = None,
    generator: torch.Generator | None = None,
    negative_prompt=None,
    latents: torch.Tensor | None = None,
    progress: bool = True,
    batch_size: int | None = None,
) -> Trajectory:
    """Sample B = len(prompts) trajectories with DDIM (η > 0) and record per-element log-probs.

    The noise is drawn exactly as the pipeline's own ``__call__`` draws it (x_T first, then one
    ``randn_tensor`` per step), so ``sample(pipe, p, eta=1, generator=g)`` ends where
    ``pipe(p, eta=1, generator=g)`` ends; the same seed gives the same trajectory.

    Args:
        pipe: the tiny pipeline or a diffusers StableDiffusionPipeline with a ``DDIMScheduler``.
        prompts: str or list of str (one sample each; repeat a prompt for several samples).
        num_steps: T, DDIM steps.
        eta: η in (0, 1] (1.0 as in DDPO).
        guidance_scale: w, finite and >= 0; None means the pipeline's default (see
            :func:`resolve_guidance_scale`). Every w ≠ 1 runs classifier-free guidance (module docstring).
        generator: ``torch.Generator`` for x_T and every step's noise.
        negative_prompt: optional, with guidance.
        latents: optional x_T instead of drawing it: float, shape (B, unet in_channels, sample_size, sample_size).
        progress: show a tqdm bar over the steps.
        batch_size: sample at most this many prompts at a time (None: all at once). The chunks
            are sampled one after the other with the same ``generator`` (x_T and the step noise of
            the first chunk, then of the second, ...), so the result equals calling ``sample`` on
            each chunk in order and concatenating with :meth:`Trajectory.cat`.
    """
    check_scheduler(pipe.scheduler, "pipe.scheduler", need_timesteps=False)
    eta = check_eta(eta)
    if as_int(num_steps) is None or as_int(num_steps) < 1:  # np.int64(4) is an int; a bool or 2.5 is not
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    num_steps = as_int(num_steps)
    prompts = _check_prompts(pipe, prompts)
    if batch_size is not None and (as_int(batch_size) is None or as_int(batch_size) < 1):
        raise ValueError(f"batch_size must be None (all prompts at once) or an int >= 1, got {batch_size!r}")
    batch_size = None if batch_size is None else as_int(batch_size)
    if batch_size is not None and batch_size < len(prompts):
        if latents is not None:
            _check_latents(pipe, latents, len(prompts))
        chunks = range(0, len(prompts), batch_size)
        return Trajectory.cat([
            sample(pipe, prompts[s : s + batch_size], num_steps=num_steps, eta=eta, guidance_scale=guidance_scale,
                   generator=generator, negative_prompt=negative_prompt,
                   latents=None if latents is None else latents[s : s + batch_size], progress=progress)
            for s in chunks
        ])
    w = resolve_guidance_scale(pipe, guidance_scale)
    cond, uncond = _encode(pipe, prompts, w, negative_prompt)
    B = len(prompts)
    if latents is None:
        x = initial_latents(pipe, B, generator)
    else:
        _check_latents(pipe, latents, B)
        x = latents.to(device=pipeline_device(pipe), dtype=unet_dtype(pipe))
    scheduler = pipe.scheduler
    scheduler.set_timesteps(num_steps, device=pipeline_device(pipe))
    timesteps = scheduler.timesteps
    xs, lps = [x], []
    for t in _progress(timesteps, progress, "sampling"):
        out = model_output(pipe, x, t, cond, uncond, w)
        x, lp = ddim_step_logprob(scheduler, out, t, x, eta=eta, generator=generator)
        xs.append(x)
        lps.append(lp)
    latents_all = torch.stack(xs, dim=1)
    return Trajectory(
        images=decode(pipe, x),
        latents=latents_all,
        log_probs=torch.stack(lps, dim=1),
        timesteps=timesteps.clone(),
        prompts=prompts,
        prompt_embeds=cond,
        negative_prompt_embeds=uncond,
        guidance_scale=w,
        eta=eta,
    )


def _sample_shape(pipe, batch_size: int) -> tuple[int, ...]:
    """(B, C, h, w) of x_T in the UNet's sample space (its ``in_channels`` and ``sample_size``)."""
    c, s = pipe.unet.config.in_channels, pipe.unet.config.sample_size
    size = (s, s) if isinstance(s, int) else tuple(s)
    return (batch_size, c, *size)


def _check_latents(pipe, latents, batch_size: int) -> None:
    expected = _sample_shape(pipe, batch_size)
    if not isinstance(latents, torch.Tensor):
        raise TypeError(f"latents must be x_T, a torch.Tensor of shape {expected}, got {type(latents).__name__}")
    check_not_meta(latents=latents)
    if tuple(latents.shape) != expected:
        raise ValueError(
            f"latents must be x_T of shape {expected} (B=len(prompts), C=unet.config.in_channels, "
            f"h, w=unet.config.sample_size), got {tuple(latents.shape)}; draw it with "
            "sampling.initial_latents(pipe, B, generator) or leave latents=None"
        )
    if not latents.is_floating_point():
        raise TypeError(f"latents must be a floating-point tensor (x_T ~ N(0, I)), got dtype {latents.dtype}")


def sync_scheduler(pipe, traj: Trajectory):
    """Make pipe.scheduler use the trajectory's schedule (set_timesteps(T) if needed) and check it."""
    check_scheduler(pipe.scheduler, "pipe.scheduler", need_timesteps=False)
    s = pipe.scheduler
    T = traj.num_steps
    if s.num_inference_steps != T or s.timesteps.shape[0] != T or not torch.equal(s.timesteps.cpu(), traj.timesteps.cpu()):
        s.set_timesteps(T, device=pipeline_device(pipe))
    if not torch.equal(s.timesteps.cpu(), traj.timesteps.cpu()):
        raise ValueError(
            f"the trajectory was sampled with timesteps {traj.timesteps.tolist()} but pipe.scheduler gives "
            f"{s.timesteps.tolist()} for {T} steps: re-score with the scheduler (config) it was sampled with."
        )
    return s


def _check_step_index(traj: Trajectory, step_index) -> int:
    T = traj.num_steps
    check_not_meta(step_index=step_index)
    if isinstance(step_index, torch.Tensor) and step_index.numel() == 1:
        step_index = int(step_index)
    if hasattr(step_index, "__index__") and not isinstance(step_index, bool):
        step_index = step_index.__index__()  # numpy integers
    if isinstance(step_index, bool) or not isinstance(step_index, int) or not -T <= step_index < T:
        raise ValueError(f"step_index must be an int in [0, {T}) (the trajectory has T={T} steps), got {step_index!r}")
    return step_index % T


def step_log_prob(pipe, traj: Trajectory, step_index: int, sample_idx=None) -> torch.Tensor:
    """log p_θ(x_{t−1} | x_t, c) per element for stored step ``step_index``, WITH gradients.

    Re-runs ``pipe.unet`` on the stored x_t = ``traj.latents[:, step_index]`` (guided as at
    sampling time) and scores the stored x_{t−1} = ``traj.latents[:, step_index + 1]`` under the
    current weights. Gradients flow to the UNet's parameters (and LoRA adapters). Returns
    (b,C,h,w) float32 for the samples ``sample_idx`` (default: all). Put the UNet in ``eval()``
    mode (no dropout) if you expect the sampling-time log-probs back.
    """
    return step_log_probs(pipe, traj, [step_index], sample_idx)[0]


class StepInputs(NamedTuple):
    """The stored inputs of some steps of some samples, on the UNet's device and dtype
    (:func:`step_inputs`): x_t and x_{t−1} per step, their timesteps, the prompt embeddings."""

    scheduler: object
    eta: float
    steps: list  # step indices, in [0, T)
    ts: list  # their timesteps
    xs: list  # x_t per step, (b,C,h,w)
    x_prevs: list  # the stored x_{t−1} per step, (b,C,h,w)
    cond: torch.Tensor
    uncond: torch.Tensor | None
    guidance_scale: float


def step_inputs(pipe, traj: Trajectory, step_indices, sample_idx=None) -> StepInputs:
    """Check ``step_indices`` and ``pipe.scheduler`` against ``traj`` and gather those steps'
    stored inputs for the samples ``sample_idx`` (default: all) — what re-scoring needs."""
    if not isinstance(traj, Trajectory):
        raise TypeError(f"traj must be a pxpo_lite.Trajectory (from pxpo_lite.sample), got {type(traj).__name__}")
    check_not_meta(sample_idx=sample_idx, **{f"traj.{k}": getattr(traj, k) for k in ("latents", "timesteps", "prompt_embeds")})
    steps = [_check_step_index(traj, i) for i in step_indices]
    if not steps:
        raise ValueError("step_indices is empty: give at least one stored step index")
    scheduler = sync_scheduler(pipe, traj)
    sub = traj if sample_idx is None else traj.select(sample_idx)
    device, dtype = pipeline_device(pipe), unet_dtype(pipe)
    to = dict(device=device, dtype=dtype)
    uncond = None if sub.negative_prompt_embeds is None else sub.negative_prompt_embeds.to(**to)
    return StepInputs(scheduler, sub.eta, steps, [scheduler.timesteps[i] for i in steps],
                      [sub.latents[:, i].to(**to) for i in steps], [sub.latents[:, i + 1].to(**to) for i in steps],
                      sub.prompt_embeds.to(**to), uncond, sub.guidance_scale if uncond is not None else 1.0)


def step_gaussians(pipe, traj: Trajectory, step_indices, sample_idx=None, unet: torch.nn.Module | None = None) -> list:
    """The one re-scoring path: mean μ_t, σ_t and per-element log-prob (:class:`~pxpo_lite.ddim.StepGaussian`)
    of several stored steps of the same samples, WITH gradients, from ONE forward of ``unet`` (default
    ``pipe.unet``; :func:`stacked_model_output`) and one DDIM Gaussian per step (``ddim.ddim_step_gaussian``).
    :func:`step_log_probs` (the policy gradient) and ``keep.steps_means`` (μ_θ and μ_ref of the keep term) read it."""
    s = step_inputs(pipe, traj, step_indices, sample_idx)
    caller = pipe if unet is None else types.SimpleNamespace(unet=unet, scheduler=s.scheduler)  # all stacked_model_output reads
    outs = stacked_model_output(caller, s.xs, s.ts, s.cond, s.uncond, s.guidance_scale)
    return [ddim_step_gaussian(s.scheduler, out, t, x_t, eta=s.eta, prev_sample=x_prev)[1]
            for out, t, x_t, x_prev in zip(outs, s.ts, s.xs, s.x_prevs)]


def step_log_probs(pipe, traj: Trajectory, step_indices, sample_idx=None) -> list:
    """:func:`step_log_prob` for several stored steps of the same samples from ONE UNet forward
    (:func:`step_gaussians`): one (b,C,h,w) float32 log-prob per index, WITH gradients, equal to separate
    :func:`step_log_prob` calls up to float rounding. The trainer scores ``TrainConfig.timestep_batch`` at a time."""
    return [g.log_prob for g in step_gaussians(pipe, traj, step_indices, sample_idx)]


@torch.no_grad()
def rescore(pipe, traj: Trajectory, progress: bool = False, batch_size: int | None = None) -> torch.Tensor:
    """Per-element log-probs (B,T,C,h,w) of every stored transition under the current weights, no grad.

    Uses the same batch composition as :func:`sample` (the whole batch, [uncond; cond] when
    guided), so with unchanged weights it reproduces ``traj.log_probs`` (to ≤ 1e-5 on CPU
    float32; usually bit for bit). ``batch_size`` splits a large batch (results may then differ
    by float rounding).
    """
    B = len(traj)
    chunks = [slice(0, B)] if not batch_size else [slice(s, min(s + batch_size, B)) for s in range(0, B, batch_size)]
    out = []
    for i in _progress(range(traj.num_steps), progress, "re-scoring"):
        parts = [step_log_prob(pipe, traj, i, None if (c.start == 0 and c.stop == B) else c) for c in chunks]
        out.append(torch.cat(parts))
    return torch.stack(out, dim=1)
