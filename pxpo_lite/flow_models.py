"""The tiny *flow-matching* text-to-image model: the same world, UNet and text encoder as the
DDIM model of :mod:`pxpo_lite.models`, trained to predict a velocity instead of a v-prediction.

Flow matching in diffusers' convention (SD3, FLUX, the schedulers Flow-GRPO samples with): a
point on the straight line from the image ``x0`` (at t = 0) to pure noise (at t = 1) is

    x_t = (1 − t)·x0 + t·noise,        the UNet predicts v = dx_t/dt = noise − x0,

and the UNet is called with ``timestep = t · 1000`` (the scheduler's ``timesteps``). Sampling
integrates the ODE dx/dt = v from t = 1 to t = 0 with diffusers' ``FlowMatchEulerDiscreteScheduler``
(Euler steps, deterministic). The pipeline, its prompts, its 3×32×32 pixel space in [-1, 1],
``encode_prompt`` and classifier-free guidance are those of :class:`~pxpo_lite.models.TinyPortraitPipeline`.

Scheduler config: ``shift=1.0`` (no shift, the diffusers default). SD3's shift moves the
sampling grid toward high noise for large images, where more pixels share the same
low-frequency content; its rule √(m/n) grows with the number of values m per sample. Our
samples have 3·32·32 = 3,072 values, far fewer than SD3's 16×128×128 latents (shift 3), so no
shift is needed. The shift only changes the sampling grid: training draws t from [0, 1].

Rebuilt by ``python -m pxpo_lite.pretrain flow``; loaded with :func:`load_tiny_flow_pipeline`.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from . import models
from .models import TinyPortraitPipeline

TINY_FLOW_DIR = models.ASSETS / "tiny_flow"
FLOW_PRETRAIN_HINT = "rebuild it with `python -m pxpo_lite.pretrain flow` (see README, 'Shipped models')"

FLOW_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=1.0)


def build_flow_scheduler(**overrides):
    """diffusers' ``FlowMatchEulerDiscreteScheduler`` with this model's config (see the module docstring)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**{**FLOW_SCHEDULER_CONFIG, **overrides})


def check_flow_scheduler(scheduler) -> None:
    """Raise ValueError unless ``scheduler`` is a flow-matching scheduler (a ``FlowMatchEulerDiscreteScheduler``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        raise ValueError(
            f"the flow pipeline needs a flow-matching scheduler, got {type(scheduler).__name__}: its UNet predicts "
            "the velocity noise − x0 and samples along x_t = (1 − t)·x0 + t·noise. Use diffusers' "
            "FlowMatchEulerDiscreteScheduler (pxpo_lite.flow_models.build_flow_scheduler()); a DDIM model is "
            "pxpo_lite.load_tiny_pipeline()"
        )


class TinyFlowPipeline(TinyPortraitPipeline):
    """A text-to-image pipeline for 32×32 pixel portraits whose UNet predicts a flow-matching velocity.

    ``pipe(prompts, num_inference_steps=20, guidance_scale=..., generator=g, output_type="pt")``
    integrates the flow ODE with Euler steps (``scheduler.step``), from noise at t = 1 to the image
    at t = 0. Everything else (prompts, ``encode_prompt``, guidance, outputs) is the DDIM pipeline's.

    Its default guidance is 1.5 (the DDIM model's is 1): on 512 held-out prompts it draws every
    prompt right at 1.5 (100.0 %) and 98.0 % without guidance, where the DDIM model is at 99.8 %
    (``docs/flow_model_eval.json``; the misses are stray hair on bald prompts). Guidance costs a
    second (unconditional) row in every UNet forward; ``guidance_scale=1.0`` turns it off.
    """

    #: the flow model's default classifier-free guidance (``guidance_scale=None``), measured above
    default_guidance_scale = 1.5

    def __init__(self, unet, scheduler, text_encoder, tokenizer):
        check_flow_scheduler(scheduler)
        super().__init__(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)

    def _initial_noise(self, batch: int, generator, latents):
        from diffusers.utils.torch_utils import randn_tensor

        cfg = self.unet.config
        shape = (batch, cfg.in_channels, cfg.sample_size, cfg.sample_size)
        if latents is None:  # x at t = 1 is N(0, I): the scheduler has no init_noise_sigma to scale by
            return randn_tensor(shape, generator=generator, device=self.device, dtype=self.unet.dtype)
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape} (one noise image per prompt and image), "
                             f"got {tuple(latents.shape)}")
        return latents.to(device=self.device, dtype=self.unet.dtype)

    @torch.no_grad()
    def __call__(
        self,
        prompt,
        num_inference_steps: int = 20,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pt",
        eta: float = 0.0,
        latents: torch.Tensor | None = None,
        num_images_per_prompt: int = 1,
        return_dict: bool = True,
    ):
        """Deterministic Euler sampling of the flow ODE (diffusers' ``scheduler.step``).

        ``eta`` is accepted for the DDIM pipeline's signature and must be 0: the flow ODE has no
        noise to add. Stochastic sampling with log-probabilities is Flow-GRPO's SDE step.
        """
        if eta != 0:
            raise ValueError(f"eta={eta!r}: the flow pipeline samples the deterministic ODE, so eta must be 0. "
                             "Stochastic flow sampling is Flow-GRPO's SDE step (pxpo_lite.flow)")
        if not isinstance(num_inference_steps, int) or isinstance(num_inference_steps, bool) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
        check_flow_scheduler(self.scheduler)
        return super().__call__(prompt, num_inference_steps, guidance_scale, generator, output_type, 0.0, latents,
                                num_images_per_prompt, return_dict)

    def _step(self, out, t, x, eta, generator):
        """One Euler step of the flow ODE (diffusers' ``scheduler.step``; ``out`` is the velocity)."""
        return self.scheduler.step(out, t, x).prev_sample


def build_tiny_flow_pipeline(seed: int = 0, **unet_overrides) -> TinyFlowPipeline:
    """A freshly initialised (untrained) tiny flow pipeline: the starting point of ``pretrain flow``,
    and a random model for fast tests. Same UNet, text encoder and tokenizer as the DDIM model."""
    torch.manual_seed(seed)
    tok = models.tiny_tokenizer()
    pipe = TinyFlowPipeline(unet=models.build_unet(**unet_overrides), scheduler=build_flow_scheduler(),
                            text_encoder=models.build_text_encoder(tok), tokenizer=tok)
    pipe.set_progress_bar_config(disable=True)
    return pipe


MUST_HAVE = ("model_index.json", "unet/diffusion_pytorch_model.safetensors", "text_encoder", "tokenizer", "scheduler")


def load_tiny_flow_pipeline(device: str | torch.device = "cpu", path: str | os.PathLike | None = None,
                            progress: bool = False) -> TinyFlowPipeline:
    """Load the shipped tiny flow-matching pipeline (offline, about a second)."""
    path = Path(path) if path is not None else TINY_FLOW_DIR
    if not path.is_dir():
        raise FileNotFoundError(f"tiny flow pipeline weights folder {str(path)!r} does not exist; {FLOW_PRETRAIN_HINT}")
    missing = [m for m in MUST_HAVE if not (path / m).exists()]
    if missing:
        raise FileNotFoundError(f"tiny flow pipeline weights folder {str(path)!r} is incomplete (missing {missing}); "
                                f"{FLOW_PRETRAIN_HINT}")
    try:
        pipe = TinyFlowPipeline.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # a DDIM folder, a corrupt file, a truncated safetensors ...
        raise RuntimeError(f"could not load the tiny flow pipeline from {str(path)!r} ({type(e).__name__}: {e}); "
                           f"{FLOW_PRETRAIN_HINT}") from e
    pipe.set_progress_bar_config(disable=not progress)
    pipe.unet.eval()
    pipe.text_encoder.eval()
    return pipe.to(device)
