"""Stable Diffusion 3: Flow-GRPO on SD3's latents with the same calls as the tiny flow model.

SD3 (and SD3.5) is a flow-matching model: ``StableDiffusion3Pipeline`` has a
``FlowMatchEulerDiscreteScheduler``, a ``SD3Transformer2DModel`` at ``pipe.transformer`` (not a
UNet), two CLIP text encoders with projection (+ an optional T5), and a 16-channel VAE with a
scaling *and* a shift factor. :func:`as_flow_pipeline` wraps it in :class:`SD3FlowPipeline`, a view
that looks like the package's flow pipelines, so :func:`pxpo_lite.flow_sampling.sample_flow`, its
re-scoring and :class:`pxpo_lite.flow.FlowTrainer` run on it unchanged (they call it themselves:
pass the diffusers pipeline as it is):

- ``view.unet`` is :class:`SD3Denoiser`, a module around the transformer called as a UNet,
  ``unet(x_t, t, encoder_hidden_states=e).sample``;
- SD3 needs two prompt tensors, the token embeddings (B, L, D) and the pooled projections (B, P).
  ``view.encode_prompt`` packs them into one (B, L + 1, D) tensor, the pooled vector zero-padded to D
  as an extra last token (P <= D, as in SD3: P = 2048, D = 4096), so a trajectory stores one
  ``prompt_embeds`` tensor as for every other pipeline; :class:`SD3Denoiser` unpacks it;
- ``view.decode_latents_to_images`` decodes x_0 / scaling_factor + shift_factor.

:func:`build_tiny_sd3_pipeline` builds a genuine tiny ``StableDiffusion3Pipeline`` offline (tests,
smoke mode); :func:`load_sd3_pipeline` loads SD3.5-medium from the hub for a GPU runtime. LoRA goes
on the transformer's attention projections (:data:`SD3_LORA_TARGETS`, flow_grpo's list), e.g.
``TrainConfig(lora_targets=SD3_LORA_TARGETS)``; adapter keys then start with ``transformer.``.

**Full mode (SD3.5-medium on a GPU) has not been measured**: no time or peak memory is quoted for it;
only the tiny pipeline is tested (``tests/test_sd3.py``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from diffusers.utils import deprecation_utils

from .models import MAX_PROMPT_TOKENS, tiny_tokenizer

__all__ = ["DEFAULT_SD3_MODEL", "SD3_LORA_TARGETS", "SD3Denoiser", "SD3FlowPipeline", "as_flow_pipeline",
           "build_tiny_sd3_pipeline", "load_sd3_pipeline", "is_sd3_pipeline"]

DEFAULT_SD3_MODEL = "stabilityai/stable-diffusion-3.5-medium"

#: flow_grpo's LoRA targets on SD3: the joint attention's image and text projections.
SD3_LORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")

#: flow_grpo's classifier-free guidance for SD3.5 (``config/grpo.py``: 4.5).
SD3_DEFAULT_GUIDANCE = 4.5

TINY_SD3_TRANSFORMER = dict(
    sample_size=8,  # latent 8×8 -> 64×64 images with the 8× VAE below
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=2,
    attention_head_dim=8,
    num_attention_heads=2,
    joint_attention_dim=32,  # D: the CLIP token embeddings (16 + 16) padded to it
    caption_projection_dim=16,
    pooled_projection_dim=32,  # P: the two CLIP projections (16 + 16)
    pos_embed_max_size=16,
)

TINY_SD3_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=16,
    block_out_channels=(8, 8, 16, 16),  # factor 2**3 = 8, as in SD3
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=64,
    scaling_factor=1.5305,  # SD3's
    shift_factor=0.0609,
    use_quant_conv=False,
    use_post_quant_conv=False,
)

TINY_SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)  # SD3's shift


class SD3Denoiser(torch.nn.Module):
    """``SD3Transformer2DModel`` called as a UNet: ``(x_t, t, encoder_hidden_states=packed)`` -> ``.sample``.

    ``packed`` is (B, L + 1, D): the token embeddings, then the pooled projections zero-padded to D
    (:meth:`SD3FlowPipeline.encode_prompt`). ``t`` is the scheduler's timestep t·1000, a 0-d tensor
    or one per row. Parameters, ``config``, LoRA (``add_adapter``, ``peft_config``) are the transformer's."""

    def __init__(self, transformer: torch.nn.Module):
        super().__init__()
        self.transformer = transformer

    def __getattr__(self, name):  # config, dtype, add_adapter, peft_config, ...: the transformer's
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "transformer":
                raise
            return getattr(self.transformer, name)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, **_):
        P = self.transformer.config.pooled_projection_dim
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[1] < 2:
            raise ValueError(f"encoder_hidden_states must be SD3's packed prompt (B, L + 1, D) from SD3FlowPipeline.encode_prompt, "
                             f"got shape {tuple(encoder_hidden_states.shape)}")
        tokens, pooled = encoder_hidden_states[:, :-1], encoder_hidden_states[:, -1, :P]
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(1).expand(sample.shape[0]) if t.ndim == 0 or t.numel() == 1 else t
        return self.transformer(hidden_states=sample, timestep=t, encoder_hidden_states=tokens,
                                pooled_projections=pooled, return_dict=True)


class SD3FlowPipeline:
    """A view of a diffusers ``StableDiffusion3Pipeline`` with the package's flow-pipeline calls (module
    docstring). Every other attribute is the pipeline's (``view.transformer``, ``view.vae``, ...)."""

    def __init__(self, pipe, max_sequence_length: int = 256):
        self.__dict__.update(pipe=pipe, unet=SD3Denoiser(pipe.transformer), max_sequence_length=max_sequence_length)
        D, P = pipe.transformer.config.joint_attention_dim, pipe.transformer.config.pooled_projection_dim
        if P > D:
            raise ValueError(f"pooled_projection_dim {P} > joint_attention_dim {D}: the pooled projections cannot be packed "
                             "as an extra prompt token")
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "vae"):
            m = getattr(pipe, name, None)
            if m is not None:
                m.requires_grad_(False)

    def __getattr__(self, name):
        if name.startswith("__") or "pipe" not in self.__dict__:  # copy/pickle probes, half-built objects
            raise AttributeError(name)
        return getattr(self.__dict__["pipe"], name)

    default_guidance_scale = SD3_DEFAULT_GUIDANCE

    def to(self, *args, **kwargs):
        self.pipe.to(*args, **kwargs)
        return self

    def encode_prompt(self, prompts, device, num_images_per_prompt: int = 1, do_classifier_free_guidance: bool = True,
                      negative_prompt=None):
        """(cond, uncond or None), each packed (B, L + 1, D): SD3's token embeddings + pooled projections."""
        e, ne, p, npool = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=device, num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=do_classifier_free_guidance, negative_prompt=negative_prompt,
            max_sequence_length=self.max_sequence_length)
        return pack(e, p), (pack(ne, npool) if do_classifier_free_guidance else None)

    def decode_latents_to_images(self, latents: torch.Tensor) -> torch.Tensor:
        """x_0 (B,16,h,w) -> images (B,3,H,W) in [0,1]: SD3's VAE with its scaling and shift factors."""
        vae = self.pipe.vae
        x = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        return (vae.decode(x).sample.float() / 2 + 0.5).clamp(0, 1)


def pack(embeds: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """(B, L, D) token embeddings and (B, P) pooled projections -> (B, L + 1, D) (pooled zero-padded to D)."""
    D, P = embeds.shape[-1], pooled.shape[-1]
    return torch.cat([embeds, F.pad(pooled, (0, D - P)).to(embeds.dtype)[:, None]], dim=1)


def is_sd3_pipeline(pipe) -> bool:
    from diffusers import StableDiffusion3Pipeline

    return isinstance(pipe, StableDiffusion3Pipeline)


def as_flow_pipeline(pipe):
    """``pipe`` itself, or for a diffusers ``StableDiffusion3Pipeline`` its :class:`SD3FlowPipeline` view
    (made once and kept on the pipeline, so every call sees the same ``view.unet``)."""
    if isinstance(pipe, SD3FlowPipeline) or getattr(pipe, "transformer", None) is None or not is_sd3_pipeline(pipe):
        return pipe
    view = pipe.__dict__.get("_pxpo_flow_view")
    if view is None or view.pipe is not pipe or view.unet.transformer is not pipe.transformer:
        view = SD3FlowPipeline(pipe)
        object.__setattr__(pipe, "_pxpo_flow_view", view)
    return view


def _clip_with_projection(tokenizer, hidden: int, layers: int = 2, heads: int = 2):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                         num_attention_heads=heads, max_position_embeddings=MAX_PROMPT_TOKENS, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, projection_dim=hidden)
    return CLIPTextModelWithProjection(cfg)


def build_tiny_sd3_pipeline(seed: int = 0):
    """A tiny random ``StableDiffusion3Pipeline`` (64×64 images, 16×8×8 latents), built offline in code.

    ``SD3Transformer2DModel`` (2 joint blocks), ``AutoencoderKL`` (16 latent channels, factor 8, SD3's
    scaling/shift factors), two ``CLIPTextModelWithProjection`` (hidden 16) with the project's offline
    tokenizer (``models.tiny_tokenizer``), no T5 (``text_encoder_3=None``: its embeddings are zeros),
    ``FlowMatchEulerDiscreteScheduler`` with SD3's shift 3. Sample it with ``pxpo_lite.flow.sample_flow``.
    """
    from diffusers import StableDiffusion3Pipeline

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    pipe = StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(**TINY_SD3_TRANSFORMER),
        scheduler=FlowMatchEulerDiscreteScheduler(**TINY_SD3_SCHEDULER),
        vae=AutoencoderKL(**TINY_SD3_VAE),
        text_encoder=_clip_with_projection(tokenizer, 16),
        tokenizer=tokenizer,
        text_encoder_2=_clip_with_projection(tokenizer, 16),
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    for m in (pipe.text_encoder, pipe.text_encoder_2, pipe.vae):
        m.requires_grad_(False).eval()
    return pipe


def load_sd3_pipeline(
    model_id: str = DEFAULT_SD3_MODEL,
    device: str | torch.device = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    local_files_only: bool = False,
    **kwargs,
):
    """Load SD3.5-medium (or another SD3 checkpoint) from the hub or a local folder, for a GPU runtime.

    The weights are downloaded on first use (SD3.5-medium: ~2.5 B parameters with T5-XXL, about
    16 GB in bf16; the model is gated: accept its licence on the hub and log in). ``dtype`` bf16 (as
    flow_grpo) or fp16. Extra ``kwargs`` go to ``StableDiffusion3Pipeline.from_pretrained`` (e.g.
    ``text_encoder_3=None, tokenizer_3=None`` to drop T5 and save ~9 GB). Train LoRA on the
    transformer with ``TrainConfig(lora_targets=SD3_LORA_TARGETS)`` and ``FlowTrainer(pipe, ...)``;
    ``lora.add_lora(pipe.transformer, target_modules=SD3_LORA_TARGETS)`` adds adapters by hand.
    Not measured: this path has not been run on a GPU here (no time or memory is quoted).
    """
    from diffusers import StableDiffusion3Pipeline

    dtype_kw = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    try:
        pipe = StableDiffusion3Pipeline.from_pretrained(model_id, local_files_only=local_files_only, **{dtype_kw: dtype}, **kwargs)
    except Exception as e:  # offline, gated model without a login, wrong id, interrupted download ...
        raise RuntimeError(
            f"could not load the Stable Diffusion 3 pipeline {model_id!r} ({type(e).__name__}: {e}). It needs internet access "
            "to the Hugging Face hub on first use and, for stabilityai's gated models, an accepted licence and a login "
            "(huggingface-cli login), or a local folder with the weights; offline, use "
            "pxpo_lite.sd3.build_tiny_sd3_pipeline() to try the code on a tiny random SD3."
        ) from e
    if not isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler):
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
