"""Flow-GRPO's SDE step: a flow-matching Euler step made stochastic, with an exact per-element log-probability.

A flow-matching model (SD3, FLUX, :mod:`pxpo_lite.flow_models`) predicts a velocity
v_θ(x_t, t) ≈ noise − x0 on the straight path x_t = (1 − t)·x0 + t·noise, and samples with the
deterministic ODE dx = v dt from t = 1 to t = 0 (``FlowMatchEulerDiscreteScheduler.step``:
x_{t+dt} = x_t + v·dt, dt = t_next − t < 0). A deterministic step has no density, so there is
nothing for a policy gradient to differentiate. Flow-GRPO (Liu et al. 2025,
https://arxiv.org/abs/2505.05470, code https://github.com/yifan123/flow_grpo) replaces the ODE by
the reverse-time SDE with the **same marginals** p_t at every t:

    dx = [v + σ_t²/(2t) · (x + (1 − t)·v)] dt + σ_t dw,        σ_t = a·√(t / (1 − t))

The drift is v − (σ_t²/2)·∇log p_t(x): for this path E[noise | x_t] = x_t + (1 − t)·v (put
x0 = x_t − t·noise in v = noise − x0), so the score is −(x + (1 − t)·v)/t; with dt < 0 the score
term enters with a plus. One Euler–Maruyama step from t to t_next is a Gaussian policy with a
diagonal covariance (:func:`sde_gaussian`):

    μ = x + [v + σ_t²/(2t) · (x + (1 − t)·v)] · dt          s = σ_t · √(−dt)
    x_next = μ + s·z,  z ~ N(0, I)
    log p(x_next | x_t, c) = −(x_next − μ)²/(2 s²) − log s − ½ log 2π          (per element)

``a`` is the **noise level** (flow_grpo's ``sample.noise_level``, default 0.7). As a → 0 the mean
is the ODE step x + v·dt and s → 0 (tested against ``scheduler.step``). σ_t diverges at t = 1, the
first step of every schedule; there flow_grpo evaluates 1 − t with the schedule's *second* sigma
(``sigma_max = sigmas[1]``: σ_1 = a·√(1/(1 − sigmas[1])); a one-step schedule has sigmas[1] = 0, so
σ_1 = a), and so do we: every step of a schedule, the first and the last included, has a finite
s > 0 (tested for 1, 2, 10 and 50 steps). t is the scheduler's sigma (after any shift); the UNet
sees ``timestep`` = t·1000.

:func:`sde_step_logprob` returns the log-density **per element** (the sample's shape), like
:func:`pxpo_lite.ddim.ddim_step_logprob`: GRPO averages it over (C,h,w) (flow_grpo's per-image
``log_prob.mean(dim=(1,2,3))``, :func:`per_image_log_prob`); PXPO keeps one value per pixel. The
closed-form KL between the trained and the reference policy of one step (both share s) is the
keep term of :mod:`pxpo_lite.keep`, (μ_θ − μ_ref)²/(2 s²) per element. flow_grpo's ``kl_loss``
divides by 2σ_t² instead of 2s² = 2σ_t²·(−dt), i.e. it is (−dt) × this KL.

:class:`FlowTrainer` trains a flow pipeline with GRPO's group-relative advantages through the
package's one training loop (:class:`pxpo_lite.trainer.Trainer`) and its one optimiser step
(:func:`pxpo_lite.update.policy_gradient_step`). The sampler and the re-scoring live in
:mod:`pxpo_lite.flow_sampling` and are re-exported here (``flow.sample_flow``, ``flow.FlowTrajectory``,
``flow.step_log_probs``, ``flow.rescore``).

Introduced in notebook 09, "Flow matching and GRPO"; ``docs/to_flow_grpo.md`` maps the config to flow_grpo's and verl-omni's.
"""
from __future__ import annotations

import math

import torch

from .advantages import GroupStatTracker
from .config_checks import as_int, as_real
from .ddim import gaussian_log_prob
from .devices import check_meta_mix, check_not_meta
from .losses import NonFiniteError
from .trainer import Trainer

__all__ = ["FlowTrainer", "check_flow_scheduler", "check_noise_level", "per_image_log_prob", "sde_gaussian", "sde_sigma",
           "sde_step_logprob", "step_index", "step_stds", "FlowTrajectory", "sample_flow", "step_log_prob", "step_log_probs",
           "steps_means", "rescore"]

_SAMPLING_NAMES = ("FlowTrajectory", "sample_flow", "step_log_prob", "step_log_probs", "steps_means", "rescore",
                   "sync_flow_scheduler", "flow_step_inputs")


def __getattr__(name):
    """The sampler and the re-scoring (:mod:`pxpo_lite.flow_sampling`, which imports this module) on first use."""
    if name in _SAMPLING_NAMES:
        from . import flow_sampling

        return getattr(flow_sampling, name)
    raise AttributeError(f"module 'pxpo_lite.flow' has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------
def is_flow_scheduler(scheduler) -> bool:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return isinstance(scheduler, FlowMatchEulerDiscreteScheduler)


def check_flow_scheduler(scheduler, need_timesteps: bool = True) -> None:
    """Raise ValueError unless ``scheduler`` is a diffusers ``FlowMatchEulerDiscreteScheduler`` that
    denoises from t = 1 towards 0 (``invert_sigmas=False``) and, with ``need_timesteps``, has its timesteps set."""
    if not is_flow_scheduler(scheduler):
        raise ValueError(
            f"scheduler must be a flow-matching scheduler (diffusers' FlowMatchEulerDiscreteScheduler), got "
            f"{type(scheduler).__name__}: Flow-GRPO's SDE step needs a velocity model on x_t = (1 − t)·x0 + t·noise. "
            "Use a flow pipeline (pxpo_lite.flow_models); a DDIM pipeline is trained with pxpo_lite.sample / ddim_step_logprob."
        )
    if scheduler.config.invert_sigmas:
        raise ValueError("scheduler.config.invert_sigmas=True (Mochi's convention, t from 0 to 1) is not supported: "
                         "the SDE step needs sigmas that fall from 1 to 0; build the scheduler with invert_sigmas=False")
    if need_timesteps and getattr(scheduler, "num_inference_steps", None) is None:
        raise ValueError("the scheduler has no timesteps yet (num_inference_steps is None); "
                         "call scheduler.set_timesteps(num_steps) before stepping")


def check_noise_level(noise_level) -> float:
    """a as a float; ValueError unless it is a finite number > 0 (0 is the deterministic ODE: no log-prob)."""
    a = as_real(noise_level)
    if a is None or not math.isfinite(a) or a <= 0:
        raise ValueError(
            f"noise_level must be a finite number > 0 (Flow-GRPO's a in σ_t = a·√(t/(1−t)); flow_grpo uses 0.7), "
            f"got {noise_level!r}. With 0 the step is the deterministic ODE and has no log-probability."
        )
    return a


def step_index(scheduler, timestep) -> int:
    """The index i of ``timestep`` in ``scheduler.timesteps`` (a value t·1000 from the schedule, not an index)."""
    if isinstance(timestep, torch.Tensor):
        check_not_meta(timestep=timestep)
        if timestep.numel() != 1:
            raise ValueError(f"timestep must be a single step (a float or 0-d tensor), got a tensor of shape "
                             f"{tuple(timestep.shape)}; step all samples of a batch at the same timestep")
        timestep = timestep.reshape(()).item() if timestep.is_floating_point() else int(timestep.reshape(()).item())
    if isinstance(timestep, bool) or as_int(timestep) is not None or as_real(timestep) is None:
        raise ValueError(f"timestep must be one of scheduler.timesteps (a float, t·1000), got {type(timestep).__name__} "
                         f"{timestep!r}; pass scheduler.timesteps[i], not the index i (as diffusers' scheduler.step)")
    timestep = as_real(timestep)
    ts = scheduler.timesteps.detach().to("cpu", torch.float64)
    hit = (ts - timestep).abs() <= 1e-3
    if not bool(hit.any()):
        shown = [round(v, 3) for v in ts.tolist()]
        shown = shown if len(shown) <= 12 else shown[:6] + ["..."] + shown[-3:]
        raise ValueError(f"timestep {timestep!r} is not in the scheduler's schedule {shown} "
                         f"(num_inference_steps={scheduler.num_inference_steps}); pass one of scheduler.timesteps, or "
                         "call scheduler.set_timesteps(...) with the number of steps you sampled with")
    return int(hit.nonzero()[0, 0])


def _check_tensor(name: str, t, like: torch.Tensor | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if like is not None:
        check_meta_mix(**{name: t, "sample": like})  # all on 'meta' traces shapes; a mix would fail deep inside
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}; convert it with {name}.float()")
    if like is not None and t.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)} but sample has shape {tuple(like.shape)}; they must match "
                         "(one value per element of x_t; with classifier-free guidance combine the two UNet halves first)")
    if t.ndim == 0 or t.shape[0] == 0:
        raise ValueError(f"{name} must be a batch (B, ...) with B >= 1, got shape {tuple(t.shape)}")
    if t.device.type == "meta":
        return  # shapes only: a meta tensor has no values to check
    bad = ~torch.isfinite(t.detach().reshape(t.shape[0], -1)).all(dim=1)
    if bad.any():
        idx = bad.nonzero().flatten().tolist()
        raise NonFiniteError(f"{name} has NaN/inf for sample(s) {idx[:10]}: the step needs finite inputs "
                             "(a diverged model? lower the learning rate or check the weights)", idx)


# --------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------
def sde_sigma(scheduler, index: int, noise_level: float, device=None):
    """(t, dt, σ_t) of step ``index`` as float32 0-d tensors: σ_t = a·√(t/(1−t)), with 1 − t evaluated at
    the schedule's second sigma when t = 1 (flow_grpo's ``sigma_max``; module docstring). Computed where the
    scheduler's sigmas are, then moved to ``device`` (on 'meta' only their shape would be left to check)."""
    sig = scheduler.sigmas.to(dtype=torch.float32)
    t, t_next = sig[index], sig[index + 1]
    dt = t_next - t
    one_minus = 1 - (sig[1] if float(t) == 1.0 else t)
    if not (float(t) > 0 and float(dt) < 0 and float(one_minus) > 0):
        raise ValueError(f"step {index} goes from t = {float(t):.6g} to {float(t_next):.6g}: the SDE step needs "
                         "1 >= t > t_next >= 0 and sigmas[1] < 1 (a falling flow-matching schedule)")
    return t.to(device), dt.to(device), (noise_level * torch.sqrt(t / one_minus)).to(device)


def step_stds(scheduler, noise_level: float) -> list[float]:
    """The policy's standard deviation s = σ_t·√(−dt) of every step of the scheduler's schedule."""
    check_flow_scheduler(scheduler)
    a = check_noise_level(noise_level)
    out = []
    for i in range(len(scheduler.timesteps)):
        _, dt, sigma = sde_sigma(scheduler, i, a)
        out.append(float(sigma * torch.sqrt(-dt)))
    return out


def _gaussian(scheduler, index: int, model_output: torch.Tensor, sample: torch.Tensor, a: float):
    """μ and s of step ``index`` (no checks; float32; s a 0-d tensor)."""
    t, dt, sigma = sde_sigma(scheduler, index, a, sample.device)
    x, v = sample.float(), model_output.float()
    mean = x + (v + sigma**2 / (2 * t) * (x + (1 - t) * v)) * dt
    return mean, sigma * torch.sqrt(-dt)


def sde_gaussian(scheduler, model_output: torch.Tensor, timestep, sample: torch.Tensor, noise_level: float = 0.7):
    """(μ, s): the mean (float32, shaped like ``sample``) and the standard deviation (a 0-d tensor) of the step."""
    check_flow_scheduler(scheduler)
    a = check_noise_level(noise_level)
    _check_tensor("sample", sample)
    _check_tensor("model_output", model_output, sample)
    return _gaussian(scheduler, step_index(scheduler, timestep), model_output, sample, a)


def sde_step_logprob(scheduler, model_output: torch.Tensor, timestep, sample: torch.Tensor, noise_level: float = 0.7,
                     prev_sample: torch.Tensor | None = None, generator: torch.Generator | None = None):
    """One Flow-GRPO SDE step as a Gaussian policy: returns ``(prev_sample, log_prob)``.

    Args:
        scheduler: diffusers' ``FlowMatchEulerDiscreteScheduler`` after ``set_timesteps``.
        model_output: the velocity v for ``sample`` (after classifier-free guidance), shaped like it.
        timestep: the current t·1000, one of ``scheduler.timesteps``.
        sample: x_t, (B, ...).
        noise_level: a > 0 in σ_t = a·√(t/(1−t)) (flow_grpo: 0.7).
        prev_sample: if given, the transition x_t → prev_sample is scored (nothing is drawn);
            otherwise x_next = μ + s·z is drawn with ``generator`` (one ``randn_tensor`` like diffusers).
        generator: ``torch.Generator`` for z.

    Returns:
        prev_sample: x_next, shaped and typed like ``sample``.
        log_prob: log p(x_next | x_t, c) per element, float32, the sample's shape (exact Gaussian,
            constants included; x_next is treated as data: no gradient through it).

    Bad inputs raise ValueError naming the fix: a non-flow scheduler, a noise level that is not a
    finite number > 0, a timestep not in the schedule, shapes that differ, a tensor on the 'meta' device
    beside real ones (all on 'meta' traces shapes); NaN/inf inputs raise
    :class:`pxpo_lite.losses.NonFiniteError` (a ValueError) naming the samples.
    """
    check_flow_scheduler(scheduler)
    a = check_noise_level(noise_level)
    _check_tensor("sample", sample)
    _check_tensor("model_output", model_output, sample)
    mean, std = _gaussian(scheduler, step_index(scheduler, timestep), model_output, sample, a)
    if prev_sample is None:
        from diffusers.utils.torch_utils import randn_tensor

        z = randn_tensor(model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype)
        prev_sample = (mean + std * z.float()).to(sample.dtype)
    else:
        _check_tensor("prev_sample", prev_sample, sample)
    # score the stored (dtype-rounded) x_next, so sampling and re-scoring compute the same thing
    return prev_sample, gaussian_log_prob(prev_sample.detach(), mean, std)


def per_image_log_prob(log_prob: torch.Tensor) -> torch.Tensor:
    """flow_grpo's per-image log-prob: the mean of the per-element log-prob over every non-batch dim, (B,)."""
    return log_prob.mean(dim=tuple(range(1, log_prob.ndim)))


# --------------------------------------------------------------------------------------------
# GRPO through the package's training loop
# --------------------------------------------------------------------------------------------
class FlowTrainer(Trainer):
    """Flow-GRPO and its per-pixel forms on a flow pipeline, through :class:`~pxpo_lite.trainer.Trainer`.

    What changes against the DDIM trainer (everything else — micro-batches, timestep subsets,
    LoRA, the keep term, accelerate, checkpoints — is the Trainer's):

    * **sampling**: each epoch draws ``samples_per_epoch / group_size`` prompts and samples each
      ``group_size`` times with the SDE step (:func:`pxpo_lite.flow_sampling.sample_flow`);
      ``config.eta`` is the **noise level** a (in (0, 1], as ``TrainConfig`` checks it);
    * **advantages**: group-relative (:class:`~pxpo_lite.advantages.GroupStatTracker`): each
      prompt's rewards (or reward maps, per pixel) are normalised within its group of the current
      epoch; ``global_std=True`` divides by the std of the whole batch instead (flow_grpo's
      ``sample.global_std``). ``per_prompt_stats``/``stat_*`` are not used;
    * **the update**: :func:`pxpo_lite.update.policy_gradient_step` re-scores the stored SDE steps
      (every step is stochastic, so every step is trainable).

    ``config.method``: ``"ddpo"`` is **GRPO**'s loss (one image-level ratio, scalar advantages —
    the same clipped surrogate as DDPO), ``"pxpo"`` the per-pixel ratio with per-pixel advantages,
    ``"pxpo_imageratio"`` **DenseFlow-GRPO** (image-level ratio, per-pixel advantages).
    """

    def __init__(self, pipe, reward_fn, config=None, prompts=None, accelerator=None, keep_weights=None, *,
                 group_size: int = 4, global_std: bool = False):
        from .sd3 import as_flow_pipeline  # lazy: the SD3 view is only needed for a diffusers SD3 pipeline

        pipe = as_flow_pipeline(pipe)  # a StableDiffusion3Pipeline gets the package's calls; anything else is unchanged
        check_flow_scheduler(pipe.scheduler, need_timesteps=False)
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
            raise ValueError(f"group_size must be an int >= 2 (GRPO normalises each prompt's rewards within its group of "
                             f"G samples; a group of 1 has no spread), got {group_size!r}")
        if not isinstance(global_std, bool):
            raise ValueError(f"global_std must be True or False, got {global_std!r}")
        super().__init__(pipe, reward_fn, config, prompts, accelerator, keep_weights)
        if self.local_samples % group_size:
            raise ValueError(f"each process samples {self.local_samples} trajectories per epoch, not divisible by "
                             f"group_size={group_size}; make samples_per_epoch / processes a multiple of it")
        self.group_size, self.global_std = group_size, global_std
        self.tracker = GroupStatTracker(global_std=global_std)

    @property
    def noise_level(self) -> float:
        return float(self.config.eta)

    def sample_and_score(self, prompts=None, n: int | None = None, generator=None):
        """Sample SDE trajectories (``prompts`` as given, or ``n`` = groups × ``group_size`` drawn) and reward them."""
        from .flow_sampling import sample_flow

        c = self.config
        generator = generator if generator is not None else torch.Generator().manual_seed(c.seed)
        if prompts is None:
            n = n or self.local_samples
            if n % self.group_size:
                raise ValueError(f"n={n} samples do not make whole groups of group_size={self.group_size}")
            prompts = [p for p in self._draw_prompts(n // self.group_size, generator) for _ in range(self.group_size)]
        traj = sample_flow(self.pipe, list(prompts), num_steps=c.num_steps, noise_level=self.noise_level,
                           guidance_scale=c.guidance_scale, generator=generator, progress=False, batch_size=c.sample_batch_size)
        return traj, self._rewards(traj.images, traj.prompts)
