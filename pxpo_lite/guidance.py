"""Classifier-free guidance: the guidance scale w a pipeline samples with, and the (guided) UNet call.

ε̂ = ε_θ(x_t, ∅) + w (ε_θ(x_t, c) − ε_θ(x_t, ∅)) for every w ≠ 1 (w = 1 needs only the conditional
pass), one batched UNet call [uncond; cond] (:func:`model_output`), or k timesteps of the same samples
in one call (:func:`stacked_model_output`, how the update re-scores several steps at once). Used by
:mod:`pxpo_lite.sampling` (which re-exports these names), :mod:`pxpo_lite.flow_sampling` and
:mod:`pxpo_lite.composite`; the pipeline is the tiny one or a diffusers Stable Diffusion pipeline.
"""
from __future__ import annotations

import math

import torch

from .config_checks import as_real

__all__ = ["SD_DEFAULT_GUIDANCE", "resolve_guidance_scale", "uses_guidance", "model_output", "stacked_model_output"]

#: DDPO's classifier-free guidance for Stable Diffusion (ddpo-pytorch default), used when a
#: pipeline has no ``default_guidance_scale`` attribute of its own and ``guidance_scale=None``.
SD_DEFAULT_GUIDANCE = 5.0


def _is_latent_pipeline(pipe) -> bool:
    return getattr(pipe, "vae", None) is not None


def resolve_guidance_scale(pipe, guidance_scale: float | None) -> float:
    """``guidance_scale`` or the pipeline's default: ``pipe.default_guidance_scale`` if it has one (the
    tiny model: 1.0, no guidance), else 5.0 for a latent (Stable Diffusion) pipeline as in DDPO, else 1.0."""
    if guidance_scale is None:
        default = getattr(pipe, "default_guidance_scale", None)
        if isinstance(default, (int, float)):
            guidance_scale = float(default)
        else:
            guidance_scale = SD_DEFAULT_GUIDANCE if _is_latent_pipeline(pipe) else 1.0
    guidance_scale = guidance_scale if as_real(guidance_scale) is None else as_real(guidance_scale)
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
        raise ValueError(f"guidance_scale must be a finite number >= 0 (1.0 = no guidance), got {guidance_scale!r}")
    if not (math.isfinite(guidance_scale) and guidance_scale >= 0):
        raise ValueError(
            f"guidance_scale must be a finite number >= 0 (1.0 = no guidance; DDPO uses 5.0 with Stable Diffusion), "
            f"got {guidance_scale!r}"
        )
    return float(guidance_scale)


def uses_guidance(guidance_scale: float) -> bool:
    """Whether w needs the unconditional pass: every w ≠ 1 (w = 1 is the conditional model alone)."""
    return guidance_scale != 1.0


def model_output(pipe, x: torch.Tensor, t, cond: torch.Tensor, uncond: torch.Tensor | None, guidance_scale: float) -> torch.Tensor:
    """The (guided) UNet prediction for x_t: one batched call [uncond; cond] when ``uncond`` is given.

    ε̂ = ε_θ(x_t, ∅) + w (ε_θ(x_t, c) − ε_θ(x_t, ∅)) (classifier-free guidance); without ``uncond``
    the conditional prediction alone (w = 1)."""
    t = t if isinstance(t, torch.Tensor) else torch.tensor(t)
    if uncond is not None:
        x_in = pipe.scheduler.scale_model_input(torch.cat([x, x]), t)
        out = pipe.unet(x_in, t, encoder_hidden_states=torch.cat([uncond, cond])).sample
        out_u, out_c = out.chunk(2)
        return out_u + guidance_scale * (out_c - out_u)
    x_in = pipe.scheduler.scale_model_input(x, t)
    return pipe.unet(x_in, t, encoder_hidden_states=cond).sample


def stacked_model_output(pipe, xs: list, ts: list, cond: torch.Tensor, uncond: torch.Tensor | None,
                         guidance_scale: float) -> list:
    """:func:`model_output` for k timesteps of the same b samples in ONE UNet call.

    ``xs``: k tensors x_t (b,C,h,w), ``ts``: their k timesteps. The k·b rows (2·k·b with
    guidance: [uncond rows; cond rows]) go through the UNet together, each row with its own
    timestep, and the k guided predictions come back as a list. Every row is computed as in
    :func:`model_output` (the UNet treats rows independently: GroupNorm, no batch statistics), so
    the result equals k separate calls up to float rounding (``tests/test_update.py`` compares the
log-probs to 1e-5), for the cost
    of one call with k× the activation memory (``TrainConfig.timestep_batch``). k = 1 is exactly
    :func:`model_output`.
    """
    if len(xs) != len(ts) or not xs:
        raise ValueError(f"xs and ts must be two non-empty lists of the same length, got {len(xs)} and {len(ts)}")
    if len(xs) == 1:
        return [model_output(pipe, xs[0], ts[0], cond, uncond, guidance_scale)]
    k, b = len(xs), xs[0].shape[0]
    x = torch.cat([pipe.scheduler.scale_model_input(xi, ti) for xi, ti in zip(xs, ts)])
    tv = torch.cat([torch.as_tensor(ti, device=x.device).reshape(1).expand(b) for ti in ts])
    rep = (k,) + (1,) * (cond.ndim - 1)
    if uncond is not None:
        out = pipe.unet(torch.cat([x, x]), torch.cat([tv, tv]),
                        encoder_hidden_states=torch.cat([uncond.repeat(rep), cond.repeat(rep)])).sample
        out_u, out_c = out.chunk(2)
        out = out_u + guidance_scale * (out_c - out_u)
    else:
        out = pipe.unet(x, tv, encoder_hidden_states=cond.repeat(rep)).sample
    return list(out.split(b))

