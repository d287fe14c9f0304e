"""Speed options: applied to a pipeline before it is sampled from or trained, each measured on/off.

The policy core already runs at the UNet's own cost (sampling with log-probs ÷ the plain
DDIM loop ≈ 1.00; an RL update ÷ raw UNet forward+backward ≈ 0.99), so a faster epoch has to
come from doing less work or doing it faster. The largest saving is not here but in the update
itself: ``TrainConfig.timestep_batch`` re-scores a micro-batch's timesteps in one UNet call
(:func:`pxpo_lite.update.resolve_timestep_batch`; on by default; 1.65× per epoch on tiny SD, 1.07×
on the tiny model). :func:`apply_speedups` switches on, in place:

* ``channels_last`` — the UNet's convolution weights in NHWC memory layout (oneDNN's preferred
  layout on CPU). Same maths, other summation order: results agree to float32 rounding.
  ``None`` (``TrainConfig``'s default) turns it on for a CPU and leaves it off on a GPU
  (:func:`resolve_cpu_default`; unmeasured on a GPU).
* ``gradient_checkpointing`` — diffusers' ``unet.enable_gradient_checkpointing()``: the
  activations of each ResNet/attention block are recomputed in the backward pass instead of
  kept, trading one extra forward per block for memory. Exact (the tiny UNet has no dropout and
  is trained in ``eval()`` mode); works with LoRA adapters.
* ``prompt_cache`` — :class:`PromptEmbeddingCache`: each distinct prompt (and the empty
  negative prompt of classifier-free guidance) goes through the text encoder once; later
  sampling calls reuse its embedding. Valid while the text encoder is frozen (``Trainer`` and
  ``FeedbackSession`` freeze it). Training already reuses the embeddings stored in the
  :class:`~pxpo_lite.sampling.Trajectory`, so this only saves sampling-time encoder calls.
* ``compile`` — ``torch.compile`` of the UNet (in place, ``unet.compile()``). The first call of
  each new input shape compiles for minutes on a CPU, so it is off by default and pays off only
  in long runs (``benchmarks/bench_speedups.py --compile`` measures both).

Not here but in :mod:`pxpo_lite.lora`: ``TrainConfig.lora_merged_sampling`` (``None``: on for a CPU)
samples with the LoRA adapters merged into copies of their weights (:func:`pxpo_lite.lora.merged_adapters`),
~10 % faster sampling on the small SD model of ``benchmarks/bench_vs_trl.py``.

Reduced precision is not an option here: it is ``TrainConfig.mixed_precision`` (accelerate's
autocast); the benchmark measures bf16 autocast on the CPU it runs on.

Measured on a 2-core CPU, one thread, ratio of epoch CPU time off ÷ on (noise about ±5 %):
``channels_last`` 1.12 (tiny model) and 1.08 (tiny SD, peer config) on the quiet machine (2026-12-07;
earlier runs: 1.08 / 1.14 on a shared machine, 1.01 / 1.02 quiet; 0.99–1.08 per epoch beside TRL in
``bench_vs_trl.py``'s ``ddpo-nchw`` arm) — hence on for a CPU; ``prompt_cache`` 1.08 on tiny SD when
shared, 0.99 when quiet (4 prompts: 5 rows encoded, 155 served from the cache) and nothing measurable on the tiny model (its prompts
rarely repeat); bf16 autocast 0.78–0.79 on tiny SD (slower: this CPU has no bf16 instructions);
``compile``: first epoch 1,313 s instead of 40 s, then 1.10 (wall) — off.
Gradient checkpointing: 41 % less memory growth in training, 0.66–0.71× the epoch speed.

Measured by ``benchmarks/bench_speedups.py`` (and the cost of cheaper gradients —
``TrainConfig.timestep_fraction``, ``use_lora``, gradient checkpointing — by
``benchmarks/bench_cheaper_gradients.py``); the README's "Speed" section quotes both. Used
by the learner in ``notebooks/02_ddpo.ipynb`` (training loop) and later notebooks.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["PromptEmbeddingCache", "apply_speedups", "resolve_cpu_default", "enable_prompt_cache", "disable_prompt_cache"]


class PromptEmbeddingCache:
    """A drop-in ``encode_prompt`` that runs the text encoder once per distinct prompt.

    Called as ``pipe.encode_prompt(prompt, device, num_images_per_prompt, do_classifier_free_guidance,
    negative_prompt)`` (the signature of diffusers' ``StableDiffusionPipeline.encode_prompt`` and of the
    tiny pipeline); returns ``(prompt_embeds, negative_prompt_embeds)`` as the pipeline's own method
    does. Prompts not seen yet are encoded together in one batch and each row is kept (detached);
    calls with precomputed embeddings or extra keyword arguments (``clip_skip``, ``lora_scale``) go
    to the pipeline's own method unchanged. ``hits`` and ``misses`` count prompts served from the
    cache and encoded. The cache empties itself when the text encoder (or tokenizer) is swapped or its
    weights change (:meth:`encoder_version`: the modules' identity and each parameter's storage and
    in-place version), so a cached row is always what the current encoder gives.
    """

    def __init__(self, pipe):
        if not callable(getattr(type(pipe), "encode_prompt", None)):
            raise TypeError(f"pipe must be a pipeline with an encode_prompt method, got {type(pipe).__name__}")
        self.pipe = pipe
        self.store: dict[tuple[str, str], torch.Tensor] = {}
        self.hits = 0
        self.misses = 0
        self.version = self.encoder_version()

    def clear(self) -> None:
        self.store.clear()

    def encoder_version(self) -> tuple:
        """What the cached rows depend on: the text encoder and tokenizer objects, and every encoder
        parameter's storage and in-place version (an optimiser step or ``load_state_dict`` bumps it)."""
        enc = getattr(self.pipe, "text_encoder", None)
        params = tuple((id(p), p.data_ptr(), p._version) for p in enc.parameters()) if isinstance(enc, torch.nn.Module) else ()
        return id(enc), id(getattr(self.pipe, "tokenizer", None)), params

    def _encode_new(self, texts: Sequence[str], device) -> None:
        version = self.encoder_version()
        if version != self.version:  # another encoder, or new weights: the stored rows are stale
            self.store.clear()
            self.version = version
        key = str(torch.device(device) if device is not None else self.pipe.device)
        new = list(dict.fromkeys(t for t in texts if (t, key) not in self.store))  # unique, in order
        self.hits += len(texts) - len(new)
        self.misses += len(new)
        if new:
            with torch.no_grad():
                emb, _ = type(self.pipe).encode_prompt(self.pipe, new, device, 1, False)
            for t, e in zip(new, emb.detach()):
                self.store[(t, key)] = e

    def _stack(self, texts: Sequence[str], device, n: int) -> torch.Tensor:
        key = str(torch.device(device) if device is not None else self.pipe.device)
        return torch.stack([self.store[(t, key)] for t in texts]).repeat_interleave(n, dim=0)

    def __call__(self, prompt, device=None, num_images_per_prompt: int = 1, do_classifier_free_guidance: bool = False,
                 negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None, **kwargs):
        own = type(self.pipe).encode_prompt
        prompts = [prompt] if isinstance(prompt, str) else prompt
        neg = "" if negative_prompt is None else negative_prompt
        negs = [neg] * len(prompts) if isinstance(neg, str) and isinstance(prompts, (list, tuple)) else neg
        plain = (prompt_embeds is None and negative_prompt_embeds is None and not kwargs
                 and isinstance(prompts, (list, tuple)) and prompts and all(isinstance(p, str) for p in prompts)
                 and isinstance(negs, (list, tuple)) and len(negs) == len(prompts) and all(isinstance(p, str) for p in negs))
        if not plain:
            return own(self.pipe, prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt,
                       prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds, **kwargs)
        if hasattr(self.pipe, "check_prompts"):
            prompts = self.pipe.check_prompts(list(prompts))
        self._encode_new(list(prompts) + (list(negs) if do_classifier_free_guidance else []), device)
        cond = self._stack(prompts, device, num_images_per_prompt)
        uncond = self._stack(negs, device, num_images_per_prompt) if do_classifier_free_guidance else None
        return cond, uncond


def enable_prompt_cache(pipe) -> PromptEmbeddingCache:
    """Make ``pipe.encode_prompt`` a :class:`PromptEmbeddingCache` (returned; idempotent)."""
    current = pipe.__dict__.get("encode_prompt")
    if isinstance(current, PromptEmbeddingCache):
        return current
    cache = PromptEmbeddingCache(pipe)
    object.__setattr__(pipe, "encode_prompt", cache)  # an instance attribute shadows the class's method
    return cache


def disable_prompt_cache(pipe) -> None:
    """Give ``pipe`` its own ``encode_prompt`` back (no-op if no cache was enabled)."""
    if isinstance(pipe.__dict__.get("encode_prompt"), PromptEmbeddingCache):
        del pipe.__dict__["encode_prompt"]


def _check_flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def resolve_cpu_default(name: str, value: bool | None, device) -> bool:
    """A CPU speed option (``TrainConfig.channels_last``, ``TrainConfig.lora_merged_sampling``) as given, or
    for None the automatic rule: on when the UNet runs on a CPU (measured faster there:
    ``benchmarks/bench_speedups.py``, ``benchmarks/bench_vs_trl.py``, ``benchmarks/probe_small_model.py``),
    off elsewhere (on a GPU neither is measured here)."""
    if value is None:
        return torch.device(device).type == "cpu"
    return _check_flag(name, value)


def apply_speedups(pipe, *, channels_last: bool | None = False, gradient_checkpointing: bool = False,
                   prompt_cache: bool = False, compile: bool = False, compile_kwargs: dict | None = None) -> dict:
    """Switch speed options on for ``pipe`` in place (module docstring); returns what was applied.

    Call it before building a ``Trainer`` or ``FeedbackSession``. LoRA adapters the trainer adds
    later are covered by ``gradient_checkpointing`` and ``compile`` (they act on the UNet's blocks
    and its forward, compiled at the first call); ``channels_last`` converts the weights present
    now (adapter convolutions added later keep the default layout: correct, a little less gain).
    ``compile_kwargs`` go to ``torch.compile`` (e.g. ``{"dynamic": False}``). ``channels_last=None``
    chooses by the UNet's device (:func:`resolve_cpu_default`; ``TrainConfig``'s default).
    """
    unet = getattr(pipe, "unet", None)
    if not isinstance(unet, torch.nn.Module):
        raise TypeError(f"pipe must be a pipeline with a torch UNet at pipe.unet, got {type(pipe).__name__}")
    if channels_last is None:
        channels_last = resolve_cpu_default("channels_last", None, next(unet.parameters()).device)
    flags = {k: _check_flag(k, v) for k, v in dict(channels_last=channels_last, gradient_checkpointing=gradient_checkpointing,
                                                      prompt_cache=prompt_cache, compile=compile).items()}
    if compile_kwargs is not None and not isinstance(compile_kwargs, dict):
        raise TypeError(f"compile_kwargs must be a dict of torch.compile options or None, got {type(compile_kwargs).__name__}")
    if flags["channels_last"]:
        unet.to(memory_format=torch.channels_last)
    if flags["gradient_checkpointing"]:
        if not getattr(unet, "_supports_gradient_checkpointing", False):
            raise ValueError(f"gradient_checkpointing=True: {type(unet).__name__} does not support it; pass False")
        unet.enable_gradient_checkpointing()
    if flags["prompt_cache"]:
        enable_prompt_cache(pipe)
    if flags["compile"]:
        unet.compile(**(compile_kwargs or {}))
    return flags
