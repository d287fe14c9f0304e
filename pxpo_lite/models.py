"""The project's own tiny text-to-image model and segmenter, built from diffusers/transformers parts.

The tiny model is a *pixel-space* latent-diffusion look-alike: a ``UNet2DConditionModel`` that
cross-attends to the output of a small ``CLIPTextModel``, a ``CLIPTokenizer`` trained offline on
the world's captions, and a ``DDIMScheduler``. It has no VAE: its "latents" are the 3×32×32
image itself scaled to [-1, 1] (``vae_scale_factor == 1``). Everything else is named as in a
diffusers ``StableDiffusionPipeline`` (``unet``, ``scheduler``, ``text_encoder``, ``tokenizer``,
``encode_prompt``, ``save_pretrained``/``from_pretrained``), so the RL code treats both alike.

Introduced in ``notebooks/00_tour.ipynb``.
"""
from __future__ import annotations

import inspect
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from . import world
from .ddim import ddim_step

ASSETS = Path(__file__).resolve().parent / "assets"
TINY_PIPELINE_DIR = ASSETS / "tiny-portraits"
SEGMENTER_DIR = ASSETS / "segmenter"
PRETRAIN_HINT = "rebuild it with `python -m pxpo_lite.pretrain` (see README, 'Shipped models')"

MAX_PROMPT_TOKENS = 24  # the longest caption is 18 tokens with <bos>/<eos>


# --------------------------------------------------------------------------------------------
# Tokenizer and text encoder (no download: trained on the world's own captions)
# --------------------------------------------------------------------------------------------
def build_tokenizer():
    """A CLIP BPE tokenizer whose vocabulary is exactly the world's words (plus characters).

    Trained in milliseconds with the ``tokenizers`` library on the world's captions, then
    wrapped as a transformers ``CLIPTokenizer`` so it behaves (and saves) like SD's.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    bpe = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator(world.all_prompts() * 2, trainer=trainer)
    with tempfile.TemporaryDirectory() as d:
        bpe.model.save(d)
        vocab_path, merges_path = os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt")
        params = inspect.signature(CLIPTokenizer.__init__).parameters
        if "vocab" in params:  # transformers >= 5: vocab dict + merges as tuples
            vocab = json.loads(Path(vocab_path).read_text())
            lines = Path(merges_path).read_text().splitlines()
            merges = [tuple(m.split()) for m in lines if m and not m.startswith("#version")]
            tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_PROMPT_TOKENS)
        else:  # transformers 4.x (e.g. Colab): file paths
            tok = CLIPTokenizer(vocab_file=vocab_path, merges_file=merges_path, model_max_length=MAX_PROMPT_TOKENS)
            tok.save_pretrained(os.path.join(d, "tok"))
            tok = CLIPTokenizer.from_pretrained(os.path.join(d, "tok"))
    return tok


def tiny_tokenizer():
    """The shipped tokenizer if the package has one (deterministic, matches the shipped weights),
    else a freshly trained one (:func:`build_tokenizer`)."""
    path = TINY_PIPELINE_DIR / "tokenizer"
    if path.is_dir():
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(str(path))
    return build_tokenizer()


def build_text_encoder(tokenizer, hidden: int = 64, layers: int = 2, heads: int = 4):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=MAX_PROMPT_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=hidden,
    )
    return CLIPTextModel(cfg)


# --------------------------------------------------------------------------------------------
# UNet and scheduler
# --------------------------------------------------------------------------------------------
UNET_CONFIG = dict(
    sample_size=world.SIZE,
    in_channels=3,
    out_channels=3,
    # Attention (self + cross to the prompt) only at the lowest resolution, 8×8, and in the
    # mid block: attention at 16×16 doubled the step time for no visible gain (measured).
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=64,
    attention_head_dim=16,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",
    prediction_type="v_prediction",
    clip_sample=False,
    set_alpha_to_one=True,
    steps_offset=1,
    timestep_spacing="trailing",
)


def build_unet(**overrides):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**{**UNET_CONFIG, **overrides})


def build_scheduler(**overrides):
    from diffusers import DDIMScheduler

    return DDIMScheduler(**{**SCHEDULER_CONFIG, **overrides})


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------
def _pipeline_base():
    from diffusers import DiffusionPipeline

    return DiffusionPipeline


@dataclass
class TinyPipelineOutput:
    """Like diffusers' ``ImagePipelineOutput``: ``images`` is (B,3,H,W) in [0,1] for ``output_type="pt"``."""

    images: object


class TinyPortraitPipeline(_pipeline_base()):
    """A text-to-image pipeline for 32×32 pixel portraits that looks like ``StableDiffusionPipeline``.

    ``pipe(prompts, num_inference_steps=20, guidance_scale=..., generator=g, output_type="pt")``
    samples with DDIM; ``pipe.encode_prompt(...)`` returns ``(prompt_embeds, negative_embeds)``
    like SD's. There is no VAE: the UNet denoises the image itself, scaled to [-1, 1].
    """

    model_cpu_offload_seq = "text_encoder->unet"
    default_guidance_scale = 1.0

    def __init__(self, unet, scheduler, text_encoder, tokenizer):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)
        self.vae = None
        self.vae_scale_factor = 1

    # -- prompts ----------------------------------------------------------------------------
    def check_prompts(self, prompt) -> list[str]:
        """Validate prompts: a str or a non-empty list of str, using only the world's words."""
        if isinstance(prompt, str):
            prompt = [prompt]
        if not isinstance(prompt, (list, tuple)) or len(prompt) == 0:
            raise ValueError(
                f"prompt must be a str or a non-empty list of str, got {prompt!r}; "
                "e.g. ['a portrait with long red hair and a green shirt on a navy background']"
            )
        known = set(world.vocabulary())
        for p in prompt:
            if not isinstance(p, str):
                raise TypeError(f"every prompt must be a str, got {type(p).__name__}: {p!r}")
            unknown = [w for w in p.lower().split() if w not in known]
            if unknown:
                raise ValueError(
                    f"prompt {p!r} uses words the tiny model never saw: {unknown}. "
                    f"It knows only the world's words: {sorted(known)}. "
                    "Use pxpo_lite.world.all_prompts() for valid prompts."
                )
        return list(prompt)

    def _embed(self, prompts: Sequence[str], device) -> torch.Tensor:
        ids = self.tokenizer(
            list(prompts), padding="max_length", max_length=MAX_PROMPT_TOKENS, truncation=True, return_tensors="pt"
        ).input_ids.to(device)
        return self.text_encoder(ids)[0]

    def encode_prompt(
        self,
        prompt,
        device=None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = False,
        negative_prompt=None,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        **_unused,
    ):
        """Same signature and return as ``StableDiffusionPipeline.encode_prompt``."""
        device = device or self.device
        if prompt_embeds is None:
            prompts = self.check_prompts(prompt)
            prompt_embeds = self._embed(prompts, device)
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            neg = negative_prompt if negative_prompt is not None else ""
            neg = [neg] * (prompt_embeds.shape[0] // num_images_per_prompt) if isinstance(neg, str) else neg
            negative_prompt_embeds = self._embed(neg, device).repeat_interleave(num_images_per_prompt, dim=0)
        return prompt_embeds, negative_prompt_embeds

    # -- images -----------------------------------------------------------------------------
    def decode_latents_to_images(self, latents: torch.Tensor) -> torch.Tensor:
        """Model sample in [-1, 1] -> images (B,3,H,W) float32 in [0, 1]."""
        return (latents.float() / 2 + 0.5).clamp(0, 1)

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
        """Plain DDIM sampling (η in [0, 1]; the step of :func:`pxpo_lite.ddim.ddim_step`: diffusers'
        ``scheduler.step`` without its float32 NaN). RL sampling with log-probs is :func:`pxpo_lite.sample`."""
        prompts = self.check_prompts(prompt)
        guidance_scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        device = self.device
        cfg = guidance_scale > 1.0
        cond, uncond = self.encode_prompt(prompts, device, num_images_per_prompt, cfg)
        latents = self._initial_noise(cond.shape[0], generator, latents)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for t in self.progress_bar(self.scheduler.timesteps):
            if cfg:
                out = self.unet(torch.cat([latents] * 2), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
                u, c = out.chunk(2)
                out = u + guidance_scale * (c - u)
            else:
                out = self.unet(latents, t, encoder_hidden_states=cond).sample
            latents = self._step(out, t, latents, eta, generator)
        return self._output(latents, output_type, return_dict)

    def _initial_noise(self, batch: int, generator, latents):
        """x_T: drawn as diffusers draws it, or the caller's ``latents`` (the sampler checks them)."""
        if latents is not None:
            return latents
        from .sampling import initial_latents

        return initial_latents(self, batch, generator)

    def _step(self, out, t, x, eta, generator):
        """One sampler step x_t -> x_{t-1} (here DDIM's; the flow pipeline takes an Euler step)."""
        return ddim_step(self.scheduler, out, t, x, eta=eta, generator=generator)

    def _output(self, latents: torch.Tensor, output_type: str, return_dict: bool):
        """The sample x_0 as ``output_type`` ('pt', 'np' or 'pil'), wrapped like diffusers' pipelines return it."""
        images = self.decode_latents_to_images(latents)
        if output_type == "pil":
            from .plotting import to_pil

            images = [to_pil(im) for im in images]
        elif output_type == "np":
            images = images.permute(0, 2, 3, 1).cpu().numpy()
        elif output_type != "pt":
            raise ValueError(f"output_type must be 'pt', 'np' or 'pil', got {output_type!r}")
        if not return_dict:
            return (images,)
        return TinyPipelineOutput(images=images)


def build_tiny_pipeline(seed: int = 0, **unet_overrides) -> TinyPortraitPipeline:
    """A freshly initialised (untrained) tiny pipeline: the starting point of pretraining, and a
    random model for fast tests."""
    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    pipe = TinyPortraitPipeline(
        unet=build_unet(**unet_overrides), scheduler=build_scheduler(), text_encoder=build_text_encoder(tok), tokenizer=tok
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _check_weights_dir(path: Path, what: str, must_have: Sequence[str]) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} weights folder {str(path)!r} does not exist; {PRETRAIN_HINT}")
    missing = [m for m in must_have if not (path / m).exists()]
    if missing:
        raise FileNotFoundError(f"{what} weights folder {str(path)!r} is incomplete (missing {missing}); {PRETRAIN_HINT}")
    return path


def load_tiny_pipeline(device: str | torch.device = "cpu", path: str | os.PathLike | None = None, progress: bool = False):
    """Load the shipped tiny text-to-image pipeline (offline, about a second)."""
    path = _check_weights_dir(
        Path(path) if path is not None else TINY_PIPELINE_DIR,
        "tiny pipeline",
        ["model_index.json", "unet/diffusion_pytorch_model.safetensors", "text_encoder", "tokenizer", "scheduler"],
    )
    try:
        pipe = TinyPortraitPipeline.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # corrupt file, wrong config, truncated safetensors ...
        raise RuntimeError(f"could not load the tiny pipeline from {str(path)!r} ({type(e).__name__}: {e}); {PRETRAIN_HINT}") from e
    pipe.set_progress_bar_config(disable=not progress)
    pipe.unet.eval()
    pipe.text_encoder.eval()
    return pipe.to(device)


# --------------------------------------------------------------------------------------------
# The segmenter ("AI feedback" and judge of prompt fidelity)
# --------------------------------------------------------------------------------------------
class Segmenter(nn.Module):
    """A small fully-convolutional part segmenter: images (B,3,H,W) in [0,1] -> logits (B,len(PARTS),H,W).

    Dilated 3×3 convolutions give a receptive field of ~40 px (the whole 32×32 image) at full
    resolution, so thin parts (eyes, mouth) are not blurred away by down-sampling.
    """

    def __init__(self, width: int = 32, dilations: Sequence[int] = (1, 1, 2, 4, 8, 2, 1), num_classes: int = len(world.PARTS)):
        super().__init__()
        self.config = {"width": width, "dilations": list(dilations), "num_classes": num_classes}
        layers: list[nn.Module] = []
        c = 3
        for d in dilations:
            layers += [nn.Conv2d(c, width, 3, padding=d, dilation=d), nn.GroupNorm(8, width), nn.SiLU()]
            c = width
        layers.append(nn.Conv2d(width, num_classes, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B,3,H,W) in [0,1], got shape {tuple(images.shape)}")
        return self.net(images * 2 - 1)

    def save_pretrained(self, path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(self.config, indent=2))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, path) -> "Segmenter":
        from safetensors.torch import load_file

        path = _check_weights_dir(Path(path), "segmenter", ["config.json", "model.safetensors"])
        try:
            model = cls(**json.loads((path / "config.json").read_text()))
            model.load_state_dict(load_file(str(path / "model.safetensors")))
        except Exception as e:
            raise RuntimeError(f"could not load the segmenter from {str(path)!r} ({type(e).__name__}: {e}); {PRETRAIN_HINT}") from e
        return model


def load_segmenter(device: str | torch.device = "cpu", path: str | os.PathLike | None = None) -> Segmenter:
    """Load the shipped segmenter (eval mode)."""
    return Segmenter.from_pretrained(path if path is not None else SEGMENTER_DIR).to(device).eval()
