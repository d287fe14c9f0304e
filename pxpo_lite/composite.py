"""Regenerate only what was disliked: a masked composite at sampling time (``RefineConfig(composite=True)``).

After a feedback round, :class:`pxpo_lite.feedback.FeedbackSession` normally regenerates the
whole image from the updated policy. The LoRA weights are shared by every pixel, so the update
that changes a disliked stroke also moves the rest a little; the keep term holds that drift
down, and with it the change inside the stroke.

With ``composite=True`` the image is regenerated the way inpainting samplers work: every DDIM
step x_t → x_{t−1} is sampled from the updated policy (same seed, same noise) and then blended
with the **base model's own trajectory** of that seed,

    x_{t−1} = m · x_{t−1}^{updated} + (1 − m) · x_{t−1}^{base},

where m is 1 inside every stroke disliked so far (the union over rounds), falls to 0 over
``redraw_ramp`` pixels outside it (so the edge blends), and is 0 everywhere else; with
``redraw_liked=False`` it is 0 on liked pixels too, even inside that band. Pixels that were
never disliked therefore stay exactly as in the first image, whatever the update did to the
model; the disliked region is drawn by the updated model, which sees the kept surroundings at
every step (as RePaint-style inpainting does), so it fits them.

**What learned and what was edited.** The *model* learned only what its adapters carry: the
update is the same PXPO step as without the composite. The composite edits *this image*: a new
seed sampled with the adapters is not composited, and the benchmark reports how much of the
change carries over there (``transfer_ratio`` in ``benchmarks/bench_localised_feedback.py``).

The recorded trajectory holds the blended samples x_{t−1} and their log-probabilities under the
updated policy (``ddim_step_logprob(..., prev_sample=)``), so the next round's update scores
exactly the image the person sees. Introduced in ``notebooks/06_human_feedback_canvas.ipynb``.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from .ddim import ddim_step_logprob
from .keep import adapters_disabled, keep_weights_from_heatmap
from .lora import has_lora
from .pixelwise import to_sample_grid
from .sampling import _check_prompts, _encode, decode, initial_latents, model_output, resolve_guidance_scale, sample
from .trajectory import Trajectory


def regenerate_mask(heatmaps, sample_size, ramp: float | None, redraw_liked: bool = True) -> torch.Tensor | None:
    """(1,h,w) in [0,1]: where the composite takes the updated policy's sample (1) or the base
    trajectory's (0). The union (max) over ``heatmaps`` of each map's disliked part, widened by
    ``ramp`` pixels (1 − the keep ramp's weight); None when nothing was ever disliked.
    ``redraw_liked=False``: 0 on the pixels the last map likes and no map ever disliked (what the
    person likes in the first image stays exactly as it was, even right next to a disliked stroke)."""
    masks = []
    for h in heatmaps:
        dis = np.minimum(np.asarray(h, dtype=np.float32), 0.0)
        if np.any(dis < 0):
            masks.append(1.0 - keep_weights_from_heatmap(dis, sample_size, keep_liked=True, ramp=ramp))
    if not masks:
        return None
    mask = torch.stack(masks).amax(0).clamp(0.0, 1.0)
    if not redraw_liked:
        ever_disliked = np.any([np.asarray(h, dtype=np.float32) < 0 for h in heatmaps], axis=0)
        liked = np.clip(np.asarray(heatmaps[-1], dtype=np.float32), 0.0, 1.0) * ~ever_disliked
        mask = mask * (1.0 - to_sample_grid(torch.from_numpy(liked)[None], sample_size))
    return mask


@torch.no_grad()
def base_trajectory(pipe, prompt: str, *, num_steps: int, eta: float, guidance_scale, generator) -> Trajectory:
    """The base model's trajectory of ``prompt`` (every LoRA adapter off): what the composite keeps."""
    with adapters_disabled(pipe.unet) if has_lora(pipe.unet) else contextlib.nullcontext():
        return sample(pipe, [prompt], num_steps=num_steps, eta=eta, guidance_scale=guidance_scale,
                      generator=generator, progress=False)


@torch.no_grad()
def sample_composite(pipe, base: Trajectory, mask: torch.Tensor, generator: torch.Generator) -> Trajectory:
    """Sample ``base``'s prompt again from the current policy, blending every step with ``base``
    (module docstring). ``generator`` must be seeded as ``base``'s was: the same x_T and step noise.
    ``mask`` (1,h,w) in [0,1] on the sample grid. Returns a :class:`Trajectory` like :func:`sample`."""
    prompts = _check_prompts(pipe, base.prompts)
    if len(prompts) != 1:
        raise ValueError(f"sample_composite edits one image; base holds {len(prompts)}")
    ref = base.latents
    m = mask.to(device=ref.device, dtype=ref.dtype)
    if m.ndim != 3 or m.shape[0] != 1 or tuple(m.shape[-2:]) != tuple(ref.shape[-2:]):
        raise ValueError(f"mask must be (1,{ref.shape[-2]},{ref.shape[-1]}) on the sample grid, got {tuple(m.shape)}")
    m = m[:, None]  # broadcast over channels
    w = resolve_guidance_scale(pipe, base.guidance_scale)
    cond, uncond = _encode(pipe, prompts, w, None)
    x = initial_latents(pipe, 1, generator)
    if not torch.equal(x, ref[:, 0]):
        raise ValueError("the generator does not reproduce base's x_T: seed it as base was seeded")
    scheduler = pipe.scheduler
    scheduler.set_timesteps(base.num_steps, device=x.device)
    xs, lps = [x], []
    for i, t in enumerate(scheduler.timesteps):
        out = model_output(pipe, x, t, cond, uncond, w)
        new, _ = ddim_step_logprob(scheduler, out, t, x, eta=base.eta, generator=generator)
        blended = m * new + (1 - m) * ref[:, i + 1]
        _, lp = ddim_step_logprob(scheduler, out, t, x, eta=base.eta, prev_sample=blended)
        x = blended
        xs.append(x)
        lps.append(lp)
    return Trajectory(images=decode(pipe, x), latents=torch.stack(xs, dim=1), log_probs=torch.stack(lps, dim=1),
                      timesteps=scheduler.timesteps.clone(), prompts=prompts, prompt_embeds=cond,
                      negative_prompt_embeds=uncond, guidance_scale=w, eta=base.eta)
