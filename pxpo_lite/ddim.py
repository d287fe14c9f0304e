"""A DDIM step is a Gaussian policy: sample x_{t-1} and return its log-probability per element.

DDPO (Black et al., 2023) and PXPO (Kordzanganeh et al., 2024) treat one denoising step as an
action a_t = x_{t-1} drawn from the policy π_θ(x_{t-1} | x_t, c). With η > 0 the DDIM update
(Song et al., 2020, eq. 12/16) is a Gaussian with diagonal covariance (``docs/paper.md``,
"Denoising as a Markov decision process"):

    x̂_0 = (x_t − √(1−ᾱ_t) ε_θ) / √ᾱ_t                         (predicted clean sample)
    σ_t = η √((1−ᾱ_{t−1})/(1−ᾱ_t)) √(1−ᾱ_t/ᾱ_{t−1})            (DDIM eq. 16)
    μ_t = √ᾱ_{t−1} x̂_0 + √max(1−ᾱ_{t−1}−σ_t², 0) ε_θ           (DDIM eq. 12, no noise)
    x_{t−1} = μ_t + σ_t z,  z ~ N(0, I)
    log p(x_{t−1}|x_t,c) = −(x_{t−1}−μ_t)²/(2σ_t²) − log σ_t − ½ log 2π     (per element)

:func:`ddim_step_logprob` returns that log-density **per element** (same shape as the sample,
float32): DDPO later averages it over (C,h,w); PXPO keeps one value per pixel.

η must lie in (0, 1]: η = 0 is deterministic (no density), and for η > 1 σ_t² exceeds
1−ᾱ_{t−1} and eq. 12 takes the square root of a negative number. For η ≤ 1 the term
1−ᾱ_{t−1}−σ_t² is ≥ 0 in exact arithmetic but can round to about −6e-8 in float32 (the tiny
model at 5 steps); like the σ formula we clamp it at 0, where diffusers returns NaN.

The arithmetic mirrors ``diffusers.DDIMScheduler.step`` of diffusers **0.42.1** (prediction
types ``epsilon``/``v_prediction``/``sample``, ``clip_sample``/``clip_sample_range``,
``thresholding`` via dynamic thresholding, ``use_clipped_model_output``), reading only the
scheduler's public attributes (``config``, ``alphas_cumprod``, ``final_alpha_cumprod``,
``num_inference_steps``, ``timesteps``). ``tests/test_ddim.py`` checks it against the
*installed* ``DDIMScheduler.step`` with identical noise.

Introduced in ``notebooks/01_denoising_as_an_mdp.ipynb``.
"""
from __future__ import annotations

import math
import operator
from typing import NamedTuple

import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor

from .config_checks import as_real
from .devices import check_meta_mix, check_not_meta

#: The σ used in the log-density of a **deterministic** step (σ_t = 0 exactly), and only there.
#: With ``set_alpha_to_one=True`` (the tiny model, and "trailing" schedules generally) the last
#: step goes to ᾱ_{t−1} = 1, where σ_t = 0: x_{t−1} = μ_t is not an action, and the Gaussian
#: log-density would be +inf (NaN once x_{t−1} − μ_t is 0/0). There we evaluate the density with
#: σ̃ = SIGMA_MIN instead, so it stays finite: at sampling time the constant
#: −log σ̃ − ½ log 2π ≈ 3.69 per element, with REINFORCE gradient 0. Such a step is never trained
#: (:func:`trainable_step_indices` leaves it out). Every step with a real σ_t > 0 — however small,
#: e.g. SD's last step at η = 0.3 (σ ≈ 0.006) — is scored with its own σ_t, exactly. The *sample*
#: always uses the true σ_t, so ``prev_sample`` is exactly what diffusers returns.
SIGMA_MIN = 1e-2

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------
def check_scheduler(scheduler, name: str = "scheduler", need_timesteps: bool = True) -> None:
    """Raise unless ``scheduler`` is a diffusers ``DDIMScheduler`` whose timesteps are set (``need_timesteps``).

    The package's one scheduler-type check (sampling, re-scoring, :mod:`pxpo_lite.steps`); ``name`` is
    what the message calls it (``"pipe.scheduler"`` where a pipeline was given)."""
    if not isinstance(scheduler, DDIMScheduler):
        raise TypeError(
            f"{name} must be a diffusers DDIMScheduler, got {type(scheduler).__name__}. "
            "Only DDIM with eta > 0 gives a Gaussian step with a log-probability; "
            "replace it with `pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)`."
        )
    if need_timesteps and scheduler.num_inference_steps is None:
        raise ValueError(
            "scheduler has no timesteps yet (scheduler.num_inference_steps is None); "
            "call `scheduler.set_timesteps(num_steps)` before stepping."
        )


def check_eta(eta) -> float:
    """η as a float; raise ValueError unless it is a number in (0, 1] (module docstring)."""
    eta = eta if as_real(eta) is None else as_real(eta)  # np.float32(1.0) and a 0-d tensor are numbers
    if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not math.isfinite(eta) or eta <= 0:
        raise ValueError(
            f"eta must be a number in (0, 1], got {eta!r}. With eta = 0 the DDIM step is "
            "deterministic and has no log-probability; use eta=1.0 (DDPO's default) for RL."
        )
    if eta > 1:
        raise ValueError(
            f"eta must be a number in (0, 1], got {eta!r}: with eta > 1 the DDIM noise σ_t exceeds "
            "√(1−ᾱ_{t−1}) and the step's mean takes the square root of a negative number (NaN); "
            "use eta=1.0 (DDPO's default) for the most noise."
        )
    return float(eta)


def _timestep_int(scheduler, timestep) -> int:
    if isinstance(timestep, torch.Tensor):
        check_not_meta(timestep=timestep)
        if timestep.numel() != 1:
            raise ValueError(
                f"timestep must be a single step (int or 0-d tensor), got a tensor of shape {tuple(timestep.shape)}; "
                "step all samples of a batch at the same timestep."
            )
        timestep = timestep.item()
    if isinstance(timestep, float) and timestep.is_integer():
        timestep = int(timestep)
    try:
        if isinstance(timestep, bool):
            raise TypeError
        timestep = operator.index(timestep)  # int, numpy integer, ...
    except TypeError:
        raise TypeError(f"timestep must be an int from scheduler.timesteps, got {type(timestep).__name__}: {timestep!r}") from None
    schedule = [int(s) for s in scheduler.timesteps.tolist()]
    if timestep not in schedule:
        shown = schedule if len(schedule) <= 12 else schedule[:6] + ["..."] + schedule[-3:]
        raise ValueError(
            f"timestep {timestep} is not in the scheduler's schedule {shown} "
            f"(num_inference_steps={scheduler.num_inference_steps}); pass one of scheduler.timesteps, "
            "or call scheduler.set_timesteps(...) with the number of steps you sampled with."
        )
    return timestep


def _check_float(name: str, t: torch.Tensor) -> None:
    if not t.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float32, float16 or bfloat16), got dtype {t.dtype}; "
            f"an integer {name} would truncate x_{{t−1}}. Convert it with {name}.float()."
        )


def _check_like(name: str, t, sample: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor shaped like sample {tuple(sample.shape)}, got {type(t).__name__}")
    check_meta_mix(**{name: t, "sample": sample})  # all on 'meta' traces shapes; a mix would fail deep inside
    _check_float(name, t)
    if t.shape != sample.shape:
        raise ValueError(
            f"{name} has shape {tuple(t.shape)} but sample has shape {tuple(sample.shape)}; they must match "
            "(one value per element of x_t; with classifier-free guidance combine the two UNet halves first)."
        )


# --------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------
def _threshold(scheduler, x0: torch.Tensor) -> torch.Tensor:
    """Dynamic thresholding (Imagen), as ``DDIMScheduler._threshold_sample`` in diffusers 0.42.1."""
    b = x0.shape[0]
    flat = x0.reshape(b, -1)
    s = torch.quantile(flat.abs(), scheduler.config.dynamic_thresholding_ratio, dim=1)
    s = torch.clamp(s, min=1, max=scheduler.config.sample_max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape)


def _alphas(scheduler, timestep: int, device=None):
    """(ᾱ_t, ᾱ_{t−1}) of a DDIM step as float32 0-d tensors (``DDIMScheduler.step`` steps 1–2)."""
    prev_t = timestep - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    acp = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    a_prev = acp[prev_t] if prev_t >= 0 else scheduler.final_alpha_cumprod.to(device=device, dtype=torch.float32)
    return acp[timestep], a_prev


def step_sigma(scheduler, timestep: int, eta: float) -> torch.Tensor:
    """σ_t = η √((1−ᾱ_{t−1})/(1−ᾱ_t)) √(1−ᾱ_t/ᾱ_{t−1})  (DDIM eq. 16), a float32 0-d tensor."""
    a_t, a_prev = _alphas(scheduler, int(timestep))
    return eta * (((1 - a_prev) / (1 - a_t)) * (1 - a_t / a_prev)).clamp(min=0) ** 0.5


def step_sigmas(scheduler, timesteps, eta: float) -> list[float]:
    """σ_t of every step of a schedule (e.g. ``traj.timesteps``): 0 marks a deterministic step."""
    return [float(step_sigma(scheduler, int(t), eta)) for t in torch.as_tensor(timesteps).tolist()]


def trainable_step_indices(scheduler, timesteps, eta: float) -> list[int]:
    """Indices i of the steps of ``timesteps`` with σ_t > 0: the steps a policy gradient can train.

    This is the package's one threshold between "stochastic" and "deterministic" steps, and it is
    exact: σ_t = 0 (DDIM eq. 16) only where ᾱ_{t−1} = 1, i.e. the last step of a schedule with
    ``set_alpha_to_one=True`` (the tiny model's "trailing" schedule). There x_{t−1} = μ_t is
    not an action, its log-probability is evaluated with the floor ``SIGMA_MIN`` only to stay
    finite, and it carries no gradient signal, so it is never trained. Every step with a real
    σ_t > 0, however small, is a Gaussian action and is trained (its log-probability is exact).

    ``timesteps``: the schedule that was sampled (``traj.timesteps``); ``eta`` as sampled.
    Introduced in ``notebooks/01_denoising_as_an_mdp.ipynb``.
    """
    eta = check_eta(eta)
    return [i for i, sigma in enumerate(step_sigmas(scheduler, timesteps, eta)) if sigma > 0]


def ddim_gaussian(scheduler, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, *, eta: float,
                  use_clipped_model_output: bool = False):
    """Mean μ_t, true σ_t and x̂_0 of the DDIM step (no checks but a meta/real mix; float32; σ_t a 0-d tensor).

    Step numbers follow ``DDIMScheduler.step`` (diffusers 0.42.1).
    """
    check_meta_mix(model_output=model_output, sample=sample)
    cfg = scheduler.config
    # 1.–2. previous timestep and ᾱ_t, ᾱ_{t−1}, as diffusers computes them
    a_t, a_prev = _alphas(scheduler, timestep, sample.device)
    one_minus_a_t = 1 - a_t  # 1 − ᾱ_t (diffusers calls it beta_prod_t; it is not β_t)
    x, out = sample.float(), model_output.float()
    # 3. x̂_0 and ε̂ from the model output
    if cfg.prediction_type == "epsilon":
        x0, eps = (x - one_minus_a_t**0.5 * out) / a_t**0.5, out
    elif cfg.prediction_type == "sample":
        x0 = out
        eps = (x - a_t**0.5 * x0) / one_minus_a_t**0.5
    elif cfg.prediction_type == "v_prediction":
        x0 = a_t**0.5 * x - one_minus_a_t**0.5 * out     # x̂_0 = √ᾱ x_t − √(1−ᾱ) v
        eps = a_t**0.5 * out + one_minus_a_t**0.5 * x    # ε̂  = √ᾱ v + √(1−ᾱ) x_t
    else:
        raise ValueError(
            f"scheduler.config.prediction_type is {cfg.prediction_type!r}; expected 'epsilon', 'v_prediction' or 'sample'"
        )
    # 4. clip or threshold x̂_0
    if cfg.thresholding:
        x0 = _threshold(scheduler, x0)
    elif cfg.clip_sample:
        x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
    # 5. σ_t = η √((1−ᾱ_{t−1})/(1−ᾱ_t)) √(1−ᾱ_t/ᾱ_{t−1})          (DDIM eq. 16)
    variance = (((1 - a_prev) / one_minus_a_t) * (1 - a_t / a_prev)).clamp(min=0)
    sigma = eta * variance**0.5
    if use_clipped_model_output:
        eps = (x - a_t**0.5 * x0) / one_minus_a_t**0.5
    # 6.–7. μ_t = √ᾱ_{t−1} x̂_0 + √(1−ᾱ_{t−1}−σ_t²) ε̂            (DDIM eq. 12)
    # 1−ᾱ_{t−1}−σ_t² ≥ 0 for η ≤ 1 but rounds to ≈ −6e-8 on some schedules: clamp (diffusers: NaN)
    mean = a_prev**0.5 * x0 + (1 - a_prev - sigma**2).clamp(min=0) ** 0.5 * eps
    return mean, sigma, x0


def ddim_step(scheduler, model_output: torch.Tensor, timestep, sample: torch.Tensor, *, eta: float = 0.0,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """x_{t−1} of one DDIM step for η in [0, 1] (η = 0: deterministic): ``DDIMScheduler.step(...).prev_sample``
    without its NaN.

    The same mean and σ_t as :func:`ddim_step_logprob` (1−ᾱ_{t−1}−σ_t² clamped at 0, where
    diffusers takes the square root of a float32 −6e-8 and returns an all-NaN sample) and the same
    noise draw as diffusers (one ``randn_tensor`` per step, only when η > 0), so a generator gives
    what diffusers would give wherever diffusers gives a number. Used by the tiny pipeline's own
    ``__call__``; RL sampling with log-probs is :func:`ddim_step_logprob`.
    """
    check_scheduler(scheduler)
    if as_real(eta) == 0:
        eta = 0.0
    else:
        eta = check_eta(eta)
    t = _timestep_int(scheduler, timestep)
    mean, sigma, _ = ddim_gaussian(scheduler, model_output, t, sample, eta=eta)
    if eta > 0:
        noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype)
        mean = mean + sigma * noise.float()
    return mean.to(sample.dtype)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std) -> torch.Tensor:
    """log N(x; μ, σ²) per element: −(x−μ)²/(2σ²) − log σ − ½ log 2π (float32)."""
    check_meta_mix(x=x, mean=mean, std=std)
    std = torch.as_tensor(std, dtype=torch.float32, device=mean.device)
    return -((x.float() - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI


def ddim_step_logprob(
    scheduler,
    model_output: torch.Tensor,
    timestep,
    sample: torch.Tensor,
    *,
    eta: float,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    variance_noise: torch.Tensor | None = None,
    use_clipped_model_output: bool = False,
    sigma_min: float = SIGMA_MIN,
):
    """One DDIM step as a Gaussian policy: returns ``(prev_sample, log_prob)``.

    Args:
        scheduler: a diffusers ``DDIMScheduler`` after ``set_timesteps``.
        model_output: the UNet's prediction for ``sample`` (after classifier-free guidance), shaped
            like ``sample``; interpreted by ``scheduler.config.prediction_type``.
        timestep: the current t, one of ``scheduler.timesteps``.
        sample: x_t, (B,C,h,w) (any shape works).
        eta: η ∈ (0, 1], the weight of the DDIM noise (1.0 = DDPM-like, DDPO's default).
        prev_sample: if given, the transition x_t -> prev_sample is *scored* (nothing is sampled);
            otherwise x_{t−1} = μ_t + σ_t z is drawn with ``generator`` exactly as
            ``DDIMScheduler.step`` draws it (same ``randn_tensor`` call), so the same generator
            state gives the same x_{t−1} as diffusers.
        generator: ``torch.Generator`` for the noise z.
        variance_noise: z itself (like ``DDIMScheduler.step``'s argument); excludes ``generator``.
        use_clipped_model_output: as in ``DDIMScheduler.step``.
        sigma_min: the σ used in the *density* of a deterministic step (σ_t = 0) only (see
            ``SIGMA_MIN``); a step with σ_t > 0 is always scored with its own σ_t.

    Returns:
        prev_sample: x_{t−1}, shaped and typed like ``sample`` (differentiable w.r.t. the model
            output when sampled; the given tensor when scored).
        log_prob: log p(x_{t−1} | x_t, c) per element, float32, same shape as ``sample``;
            never reduced here (DDPO reduces with a mean over C,h,w, PXPO keeps pixels).

    Computation is done in float32 (half-precision inputs are upcast; for float32 inputs the
    result equals ``DDIMScheduler.step`` of diffusers 0.42.1 to float rounding).
    """
    prev_sample, step = ddim_step_gaussian(scheduler, model_output, timestep, sample, eta=eta, prev_sample=prev_sample,
                                           generator=generator, variance_noise=variance_noise,
                                           use_clipped_model_output=use_clipped_model_output, sigma_min=sigma_min)
    return prev_sample, step.log_prob


class StepGaussian(NamedTuple):
    """One transition x_t → x_{t−1} as the Gaussian policy scores it: ``mean`` μ_t (float32), ``sigma`` the
    true σ_t (0-d; 0 for a deterministic step), ``log_prob`` log p(x_{t−1}|x_t,c) per element (float32)."""

    mean: torch.Tensor
    sigma: torch.Tensor
    log_prob: torch.Tensor


def ddim_step_gaussian(scheduler, model_output: torch.Tensor, timestep, sample: torch.Tensor, *, eta: float,
                       prev_sample: torch.Tensor | None = None, generator: torch.Generator | None = None,
                       variance_noise: torch.Tensor | None = None, use_clipped_model_output: bool = False,
                       sigma_min: float = SIGMA_MIN) -> tuple[torch.Tensor, StepGaussian]:
    """:func:`ddim_step_logprob` (same arguments, checks and numbers) returning ``(prev_sample, StepGaussian)``:
    the step's mean and σ_t come with the log-prob from the one :func:`ddim_gaussian` they share."""
    check_scheduler(scheduler)
    eta = check_eta(eta)
    if not isinstance(sample, torch.Tensor):
        raise TypeError(f"sample must be a torch.Tensor (x_t), got {type(sample).__name__}")
    _check_float("sample", sample)
    _check_like("model_output", model_output, sample)
    t = _timestep_int(scheduler, timestep)
    sigma_min = sigma_min if as_real(sigma_min) is None else as_real(sigma_min)  # NumPy scalars are numbers
    if isinstance(sigma_min, bool) or not (isinstance(sigma_min, (int, float)) and math.isfinite(sigma_min) and sigma_min > 0):
        raise ValueError(f"sigma_min must be a finite number > 0 (the σ of a deterministic step's density), got {sigma_min!r}")

    mean, sigma, _ = ddim_gaussian(scheduler, model_output, t, sample, eta=eta,
                                   use_clipped_model_output=use_clipped_model_output)
    if prev_sample is None:
        if variance_noise is not None and generator is not None:
            raise ValueError("pass either generator or variance_noise, not both")
        if variance_noise is None:
            # Same call as DDIMScheduler.step, so the generator advances identically.
            variance_noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                          dtype=model_output.dtype)
        else:
            _check_like("variance_noise", variance_noise, sample)
        prev_sample = (mean + sigma * variance_noise.float()).to(sample.dtype)
    else:
        _check_like("prev_sample", prev_sample, sample)
    # Score the stored (dtype-rounded) x_{t−1}, so sampling and re-scoring compute the same thing.
    # Only a deterministic step (σ_t = 0) gets the floor; a real σ_t > 0 is used as it is.
    std = torch.where(sigma > 0, sigma, torch.full_like(sigma, sigma_min))
    log_prob = gaussian_log_prob(prev_sample, mean, std)
    return prev_sample, StepGaussian(mean, sigma, log_prob)
