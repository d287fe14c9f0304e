"""Stable Diffusion: the same RL code on VAE latents.

For Stable Diffusion the policy acts on **latent cells** (4×64×64 for a 512² image), not on
pixels (``docs/paper.md``, "Latent models"): ``pxpo_lite.sample`` stores latents x_T..x_0 and decodes
x_0 with the VAE, and ``pixelwise.to_sample_grid`` area-averages an image-resolution reward
map by the VAE factor (8) to the latent grid.

- :func:`build_tiny_sd_pipeline` builds a genuine diffusers ``StableDiffusionPipeline`` from
  tiny random components in code (nothing is downloaded): the tests use it to show that every
  function written for the tiny pixel model runs unchanged on SD latents.
- :func:`load_sd_pipeline` loads a real checkpoint from the Hugging Face hub (Colab, GPU) and
  swaps in a ``DDIMScheduler``.
- Stable Diffusion 3 (flow matching, notebook 09's Flow-GRPO on SD3.5-medium) lives in
  :mod:`pxpo_lite.sd3`; ``sd.load_sd3_pipeline``, ``sd.build_tiny_sd3_pipeline`` and
  ``sd.SD3_LORA_TARGETS`` are its names, imported on first use.

Introduced in ``notebooks/08_*`` (Stable Diffusion on a GPU).
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.utils import deprecation_utils

from .models import build_text_encoder, build_tokenizer

_SD3_NAMES = ("load_sd3_pipeline", "build_tiny_sd3_pipeline", "as_flow_pipeline", "SD3_LORA_TARGETS", "DEFAULT_SD3_MODEL")


def __getattr__(name):
    """The SD3 path (:mod:`pxpo_lite.sd3`) on first use."""
    if name in _SD3_NAMES:
        from . import sd3

        return getattr(sd3, name)
    raise AttributeError(f"module 'pxpo_lite.sd' has no attribute {name!r}")


#: ddpo-pytorch's model (the original "runwayml/stable-diffusion-v1-5" moved here).
DEFAULT_SD_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"

TINY_SD_UNET = dict(
    sample_size=8,  # latent 8×8 -> 64×64 images with the 8× VAE below
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    cross_attention_dim=32,
    attention_head_dim=8,
)

TINY_SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    # four blocks -> down-sampling factor 2**3 = 8, as in SD
    block_out_channels=(8, 8, 16, 16),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=64,
)

# SD v1's scheduler settings (scaled_linear betas, epsilon prediction), as DDIM.
TINY_SD_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)


def build_tiny_sd_pipeline(seed: int = 0):
    """A tiny random ``StableDiffusionPipeline`` (64×64 images, 4×8×8 latents), built offline in code.

    Components: ``UNet2DConditionModel`` (4 latent channels), ``AutoencoderKL`` (factor 8),
    ``CLIPTextModel`` + the project's offline ``CLIPTokenizer`` (``models.build_tokenizer``),
    ``DDIMScheduler`` with SD v1's schedule and ``steps_offset=1``; no safety checker.
    """
    # StableDiffusionPipeline pulls in transformers' image processors (and their torchvision warnings): only for SD
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(tokenizer, hidden=TINY_SD_UNET["cross_attention_dim"], layers=1, heads=2)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**TINY_SD_VAE),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**TINY_SD_UNET),
        scheduler=DDIMScheduler(**TINY_SD_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_sd_pipeline(
    model_id: str = DEFAULT_SD_MODEL,
    device: str | torch.device = "cuda",
    dtype: torch.dtype = torch.float16,
    local_files_only: bool = False,
    **kwargs,
):
    """Load a Stable Diffusion pipeline from the hub (or a local folder) with a ``DDIMScheduler``.

    Weights are downloaded on first use (~2 GB in float16 for SD v1.5); the safety checker is
    dropped (it is irrelevant for RL research and costs memory). Extra ``kwargs`` go to
    ``StableDiffusionPipeline.from_pretrained`` (e.g. ``variant="fp16"``).
    """
    from diffusers import StableDiffusionPipeline  # as in build_tiny_sd_pipeline: only when SD is used

    # diffusers >= 0.36-ish renamed `torch_dtype` to `dtype`; older versions (Colab) only know `torch_dtype`.
    dtype_kw = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            model_id, safety_checker=None, requires_safety_checker=False,
            local_files_only=local_files_only, **{dtype_kw: dtype}, **kwargs,
        )
    except Exception as e:  # offline, wrong id, no access, interrupted download ...
        raise RuntimeError(
            f"could not load the Stable Diffusion pipeline {model_id!r} ({type(e).__name__}: {e}). "
            "It needs internet access to the Hugging Face hub on first use (or a local folder with the "
            "weights); offline, use pxpo_lite.sd.build_tiny_sd_pipeline() to try the code on a tiny random SD."
        ) from e
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def float32_adapters(params) -> int:
    """Cast LoRA adapter parameters to float32 in place; returns how many were cast.

    peft creates adapters in the dtype of the layer they wrap, so on a float16 SD UNet they are
    float16 — and AdamW on float16 weights fails quietly: its ε = 1e-8 rounds to 0 in float16 and
    small updates round away (ddpo-pytorch and diffusers' LoRA scripts keep adapters in float32).
    peft casts each adapter's input to the adapter's dtype and adds the result back in the base
    layer's dtype, so the float16 UNet runs unchanged. Call it on ``Trainer.params`` or
    ``FeedbackSession.params`` before the first update: their AdamW state is created lazily, in
    the parameters' dtype. The parameter objects stay the same (optimisers keep them).
    """
    n = 0
    for p in params:
        if not isinstance(p, torch.nn.Parameter):
            raise TypeError(f"params must be torch.nn.Parameter objects (e.g. trainer.params), got {type(p).__name__}")
        if p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.float()
            n += 1
    return n
