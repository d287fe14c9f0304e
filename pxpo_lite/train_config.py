"""Every knob of the RL trainer in one dataclass, and the check that a config can work.

:class:`TrainConfig` lists one field per line with its default and meaning (CleanRL style);
:func:`check_config` raises a ValueError naming the field and the numbers before anything is
built. :func:`pxpo_lite.trl_compat.train_config_from_trl` maps a TRL ``DDPOConfig`` onto it.

Introduced in ``notebooks/02_ddpo.ipynb``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .config_checks import as_int, as_real, check_bool, check_number, check_positive_int

__all__ = ["REMOVED_FIELDS", "TrainConfig", "check_config"]


#: Fields that older versions of TrainConfig had; ``from_dict`` ignores them (old checkpoints load).
REMOVED_FIELDS = ("skip_deterministic_steps",)


@dataclass
class TrainConfig:
    """Every knob of :class:`Trainer`, one line each (defaults: ddpo-pytorch's where they apply)."""

    method: str = "ddpo"  # "ddpo": one advantage per image; "pxpo": one advantage per pixel; "pxpo_imageratio": per-pixel advantages under one image-level ratio (losses.imageratio_loss; a control)
    advantage_map: str = "reward"  # per-pixel methods: "reward" (each pixel's advantage from its own reward) or "uninformed" (a control: the image's scalar advantage × a smooth random map of mean 1, advantages.uninformed_map)
    clip_range: float | None = None  # None: score-function (REINFORCE) loss; a number ε: PPO-clipped ratio (DDPO: 1e-4)
    num_steps: int = 20  # DDIM steps T per trajectory
    eta: float = 1.0  # DDIM noise weight in (0, 1]; > 0 so that each step is a Gaussian policy with a log-prob (flow.FlowTrainer: Flow-GRPO's noise level a)
    guidance_scale: float | None = None  # classifier-free guidance w; None: the pipeline's default (tiny 1.0, SD 5.0)
    samples_per_epoch: int = 32  # trajectories sampled per epoch, summed over all processes
    sample_batch_size: int | None = None  # trajectories per sampling call, per process (a cap); None: the whole epoch in one call when it fits in memory, else as few equal calls as fit (Trainer.sampling_batch_size; memory.rows_that_fit — measured activation bytes per row, the memory share an estimate)
    train_batch_size: int = 8  # samples per forward/backward micro-batch, per process
    grad_accum_steps: int = 1  # micro-batches (each over its timesteps) accumulated into one optimiser step
    inner_epochs: int = 1  # passes over each epoch's samples (DDPO's num_inner_epochs)
    timestep_batch: int | None = None  # timesteps of a micro-batch scored in one UNet forward (same gradient to float rounding, k× activation memory); None: update.resolve_timestep_batch (as many as fit in memory; on a CPU also within a measured input-size budget)
    timestep_fraction: float = 1.0  # share of each micro-batch's stochastic steps (σ_t > 0) trained on (random subset)
    learning_rate: float | None = None  # AdamW lr; None: 3e-4 with LoRA (DDPO), 1e-4 for the full UNet
    adam_betas: tuple = (0.9, 0.999)  # AdamW betas
    adam_weight_decay: float = 1e-4  # AdamW weight decay
    adam_eps: float = 1e-8  # AdamW epsilon
    max_grad_norm: float | None = 1.0  # clip the gradient norm to this (None: no clipping)
    adv_clip_max: float | None = 5.0  # clip advantages to ±this (None: no clipping)
    keep_beta: float = 0.0  # β of the per-pixel keep term β·mean(w·KL(π_θ‖π_ref)) (keep.Keep); 0: off (no extra forward)
    per_prompt_stats: bool = True  # per-prompt reward statistics (False: batch statistics every epoch)
    stat_buffer_size: int = 16  # rewards (or maps) kept per prompt
    stat_min_count: int = 16  # rewards a prompt needs before its own statistics are used
    use_lora: bool | None = None  # True: LoRA adapters; False: full UNet; None: LoRA for SD (has a VAE), full for the tiny model (learns faster there; measured, see Trainer)
    lora_rank: int = 4  # LoRA rank r
    lora_alpha: float | None = None  # LoRA α (None: = rank)
    lora_targets: tuple | None = None  # module names to adapt; None: lora.SD_TARGETS for SD, lora.TINY_TARGETS for the tiny UNet
    mixed_precision: str = "no"  # accelerate: "no" | "fp16" | "bf16"
    seed: int = 0  # seeds prompts, sampling noise and shuffles (per epoch and process: resumable)
    log_with: str | None = None  # optional accelerate tracker ("tensorboard", "wandb") if installed; never required
    progress: bool = True  # tqdm progress bar over epochs
    channels_last: bool | None = None  # UNet weights in NHWC layout (speed.apply_speedups): equal to float rounding; None: on for a CPU (measured faster there), off on a GPU (not measured)
    lora_merged_sampling: bool | None = None  # sample with the LoRA merged into copies of the weights (lora.merged_adapters): equal to float rounding, base weights untouched; None: on for a CPU (measured faster), off on a GPU (not measured)
    gradient_checkpointing: bool = False  # recompute block activations in backward: exact, less memory, slower (benchmarks/bench_cheaper_gradients.py)
    prompt_cache: bool = False  # encode each distinct prompt once (exact); pays off when prompts repeat
    compile_unet: bool = False  # torch.compile the UNet: minutes of compiling on a CPU before it pays off

    def to_dict(self) -> dict:
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        d["lora_targets"] = list(self.lora_targets) if self.lora_targets is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k not in REMOVED_FIELDS}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known fields: {sorted(known)}")
        if d.get("adam_betas") is not None:
            d["adam_betas"] = tuple(d["adam_betas"])
        if d.get("lora_targets") is not None:
            d["lora_targets"] = tuple(d["lora_targets"])
        return cls(**d)


def check_config(config: TrainConfig, num_processes: int = 1) -> None:
    """Raise ValueError naming the field and the numbers when the config cannot work."""
    c = config
    if not isinstance(c, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(c).__name__}")
    if c.method not in ("ddpo", "pxpo", "pxpo_imageratio"):
        raise ValueError(f"method must be 'ddpo', 'pxpo' or 'pxpo_imageratio', got {c.method!r}")
    if c.advantage_map not in ("reward", "uninformed"):
        raise ValueError(f"advantage_map must be 'reward' or 'uninformed' (a control without feedback), got {c.advantage_map!r}")
    if c.advantage_map == "uninformed" and c.method == "ddpo":
        raise ValueError("advantage_map='uninformed' spreads the image's advantage over pixels: it needs a per-pixel "
                         "method ('pxpo'), not 'ddpo'")
    if c.mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {c.mixed_precision!r}")
    # numbers are checked and stored back as Python int/float: np.float32(0.2) or a 0-d tensor is a number
    c.sample_batch_size = check_positive_int("sample_batch_size", c.sample_batch_size, optional=True)  # None: automatic
    for name in ("num_steps", "samples_per_epoch", "train_batch_size", "grad_accum_steps",
                 "inner_epochs", "stat_buffer_size", "stat_min_count", "lora_rank"):
        setattr(c, name, check_positive_int(name, getattr(c, name)))
    seed = as_int(c.seed)
    if seed is None or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {c.seed!r}")
    c.seed = seed
    c.clip_range = check_number("clip_range", c.clip_range, above=0, optional=True)  # None: score-function loss
    eta = as_real(c.eta)
    if eta is None or not 0 < eta <= 1:
        raise ValueError(f"eta must be a number in (0, 1] (η = 0 makes the step deterministic: no log-prob), got {c.eta!r}")
    c.eta = eta
    c.timestep_batch = check_positive_int("timestep_batch", c.timestep_batch, optional=True)
    for name, bounds in (("guidance_scale", dict(at_least=0, optional=True)), ("timestep_fraction", dict(above=0, at_most=1)),
                         ("learning_rate", dict(above=0, optional=True)), ("max_grad_norm", dict(above=0, optional=True)),
                         ("adv_clip_max", dict(above=0, optional=True)), ("keep_beta", dict(at_least=0)),
                         ("adam_weight_decay", dict(at_least=0)), ("adam_eps", dict(above=0)),
                         ("lora_alpha", dict(above=0, optional=True))):
        setattr(c, name, check_number(name, getattr(c, name), **bounds))
    if not isinstance(c.adam_betas, (tuple, list)) or len(c.adam_betas) != 2:
        raise ValueError(f"adam_betas must be two numbers in [0, 1), got {c.adam_betas!r}")
    c.adam_betas = tuple(check_number(f"adam_betas[{k}]", b, at_least=0, below=1) for k, b in enumerate(c.adam_betas))
    if c.samples_per_epoch % num_processes:
        raise ValueError(
            f"samples_per_epoch={c.samples_per_epoch} is not divisible by the number of processes {num_processes}; "
            f"use a multiple of {num_processes}"
        )
    local = c.samples_per_epoch // num_processes
    if c.sample_batch_size is not None and local % c.sample_batch_size:
        raise ValueError(
            f"each process samples samples_per_epoch / processes = {c.samples_per_epoch} / {num_processes} = {local} "
            f"trajectories, not divisible by sample_batch_size={c.sample_batch_size}; make it a divisor of {local}"
        )
    per_step = c.train_batch_size * c.grad_accum_steps
    if local % per_step:
        raise ValueError(
            f"each process trains on {local} samples per epoch, not divisible by train_batch_size × grad_accum_steps "
            f"= {c.train_batch_size} × {c.grad_accum_steps} = {per_step}; choose them so their product divides {local}"
        )
    for name in ("per_prompt_stats", "gradient_checkpointing", "prompt_cache", "compile_unet", "progress"):
        check_bool(name, getattr(c, name))
    for name in ("channels_last", "lora_merged_sampling"):
        if getattr(c, name) is not None:
            check_bool(f"{name} (None: automatic, on for a CPU)", getattr(c, name))
    if c.use_lora is not None and not isinstance(c.use_lora, bool):  # "no" is truthy: it would train LoRA
        raise ValueError(f"use_lora must be True, False or None (LoRA for SD, the full UNet for the tiny model), "
                         f"got {c.use_lora!r}")
    if c.per_prompt_stats and c.stat_min_count > c.stat_buffer_size:
        raise ValueError(f"stat_min_count={c.stat_min_count} > stat_buffer_size={c.stat_buffer_size}; it would never be reached")
