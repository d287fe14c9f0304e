"""The RL training engine: one loop for DDPO (a reward per image) and PXPO (a reward per pixel).

Each epoch (PAPER.md; ddpo-pytorch's ``train.py``, CleanRL-style in one place):

1. **sample** ``samples_per_epoch`` trajectories with the current policy (η > 0), keeping every
   step's per-element log-prob — :func:`pxpo_lite.sample`;
2. **reward** the final images — a map (B,H,W) or a vector (B,);
3. **advantages** — DDPO: per-prompt normalised scalars (a map reward is reduced to its mean);
   PXPO: per-pixel normalised maps (a scalar reward becomes a constant map: PXPO ≡ DDPO then),
   mapped to the sample grid (:func:`pxpo_lite.pixelwise.to_sample_grid`), clipped;
4. **inner updates** — for ``inner_epochs`` passes: shuffle the samples, cut them into
   micro-batches of ``train_batch_size``, and for each micro-batch a random
   ``timestep_fraction`` of its stochastic steps (in random order): re-score the stored
   transition with gradients (:func:`pxpo_lite.step_log_prob`), compute the loss
   (:func:`~pxpo_lite.losses.ddpo_loss` / :func:`~pxpo_lite.losses.pxpo_loss`), backward. Gradients
   of ``grad_accum_steps`` micro-batches × their timesteps are averaged into one optimiser
   step, after grad-norm clipping;
5. **log** one plain dict per epoch (``trainer.metrics``).

Steps whose σ_t = 0 (the last step of a "trailing" schedule, which is deterministic) carry no
policy and are skipped by default (``skip_deterministic_steps``).

**Distributed** (accelerate, any number of processes): every process samples its share, the
rewards and prompts are gathered so every process computes the same advantages, and gradients
are averaged across processes once per optimiser step (an explicit all-reduce of the
trainable parameters' gradients — no DDP wrapper, so LoRA adapters cannot be left
unsynchronised and ``pipe.unet`` stays the plain model). Checkpoints are written by the main
process only, between two barriers that *every* process reaches (no hang at save time).

**Safety**: a NaN/inf reward, log-prob, loss or gradient aborts the step with an error naming
the sample (and prompt) and the timestep; the optimiser step is skipped, so the weights are
untouched.

Introduced in ``notebooks/02_ddpo.ipynb``; used by notebooks 04–08.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import rewards as rewards_mod
from .advantages import PerPromptStatTracker, clip_advantages
from .losses import NonFiniteError, ddpo_loss, pxpo_loss

CHECKPOINT_KIND = "pxpo-lite-trainer"


class TrainingError(ValueError):
    """A training step was stopped (NaN/inf) before it could change the weights."""


@dataclass
class TrainConfig:
    """Every knob of :class:`Trainer`, one line each (defaults: ddpo-pytorch's where they apply)."""

    method: str = "ddpo"  # "ddpo": one advantage per image; "pxpo": one advantage per pixel
    clip_range: float | None = None  # None: score-function (REINFORCE) loss; a number ε: PPO-clipped ratio (DDPO: 1e-4)
    num_steps: int = 20  # DDIM steps T per trajectory
    eta: float = 1.0  # DDIM noise weight; > 0 so that each step is a Gaussian policy with a log-prob
    guidance_scale: float | None = None  # classifier-free guidance w; None: the pipeline's default (tiny 1.0, SD 5.0)
    samples_per_epoch: int = 32  # trajectories sampled per epoch, summed over all processes
    sample_batch_size: int = 16  # trajectories per sampling call, per process
    train_batch_size: int = 8  # samples per forward/backward micro-batch, per process
    grad_accum_steps: int = 1  # micro-batches (each over its timesteps) accumulated into one optimiser step
    inner_epochs: int = 1  # passes over each epoch's samples (DDPO's num_inner_epochs)
    timestep_fraction: float = 1.0  # share of each micro-batch's stochastic steps trained on (random subset)
    skip_deterministic_steps: bool = True  # do not train on steps with σ_t = 0 (no policy there)
    learning_rate: float | None = None  # AdamW lr; None: 3e-4 with LoRA (DDPO), 1e-4 for the full UNet
    adam_betas: tuple = (0.9, 0.999)  # AdamW betas
    adam_weight_decay: float = 1e-4  # AdamW weight decay
    adam_eps: float = 1e-8  # AdamW epsilon
    max_grad_norm: float | None = 1.0  # clip the gradient norm to this (None: no clipping)
    adv_clip_max: float | None = 5.0  # clip advantages to ±this (None: no clipping)
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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        d["lora_targets"] = list(self.lora_targets) if self.lora_targets is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known fields: {sorted(known)}")
        d = dict(d)
        if d.get("adam_betas") is not None:
            d["adam_betas"] = tuple(d["adam_betas"])
        if d.get("lora_targets") is not None:
            d["lora_targets"] = tuple(d["lora_targets"])
        return cls(**d)


def check_config(config: TrainConfig, num_processes: int = 1) -> None:
    """Raise ValueError naming the numbers when the config cannot work."""
    c = config
    if c.method not in ("ddpo", "pxpo"):
        raise ValueError(f"method must be 'ddpo' or 'pxpo', got {c.method!r}")
    if c.clip_range is not None and not (isinstance(c.clip_range, (int, float)) and c.clip_range > 0):
        raise ValueError(f"clip_range must be None (score-function loss) or a positive number, got {c.clip_range!r}")
    for name in ("num_steps", "samples_per_epoch", "sample_batch_size", "train_batch_size", "grad_accum_steps", "inner_epochs"):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not (isinstance(c.eta, (int, float)) and c.eta > 0):
        raise ValueError(f"eta must be > 0 (η = 0 makes the step deterministic: no log-prob), got {c.eta!r}")
    if not (0 < c.timestep_fraction <= 1):
        raise ValueError(f"timestep_fraction must be in (0, 1], got {c.timestep_fraction!r}")
    if c.mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {c.mixed_precision!r}")
    if c.samples_per_epoch % num_processes:
        raise ValueError(
            f"samples_per_epoch={c.samples_per_epoch} is not divisible by the number of processes {num_processes}; "
            f"use a multiple of {num_processes}"
        )
    local = c.samples_per_epoch // num_processes
    if local % c.sample_batch_size:
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
    if c.per_prompt_stats and c.stat_min_count > c.stat_buffer_size:
        raise ValueError(f"stat_min_count={c.stat_min_count} > stat_buffer_size={c.stat_buffer_size}; it would never be reached")


def _seed_for(*parts) -> int:
    """A stable 63-bit seed from (seed, epoch, rank, purpose)."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def _gen(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(_seed_for(*parts))


def deterministic_steps(scheduler, timesteps: torch.Tensor, eta: float, sigma_min: float | None = None) -> list[int]:
    """Indices of steps whose σ_t ≤ sigma_min (no noise: nothing for the policy to learn there)."""
    from .ddim import SIGMA_MIN, step_sigmas

    sigma_min = SIGMA_MIN if sigma_min is None else sigma_min
    return [i for i, sigma in enumerate(step_sigmas(scheduler, timesteps, eta)) if sigma <= sigma_min]


class Trainer:
    """Trains ``pipe.unet`` (LoRA adapters or all weights) with DDPO or PXPO.

    Args:
        pipe: the tiny pipeline or a diffusers ``StableDiffusionPipeline`` (DDIM scheduler).
        reward_fn: ``fn(images (B,3,H,W) [0,1], prompts) -> (B,) or (B,H,W)``, or a name from
            ``pxpo_lite.rewards.REWARDS``.
        config: :class:`TrainConfig`.
        prompts: the prompts to train on (each sample draws one uniformly), or a function
            ``(n, generator) -> list of n prompts``. Default: every prompt of the world.
        accelerator: an ``accelerate.Accelerator`` (default: a new one from the config).

    ``train(epochs)`` returns ``self.metrics``, a list with one plain dict per epoch.

    LoRA or full UNet (``use_lora=None`` picks): Stable Diffusion gets rank-4 LoRA on the
    attention projections, as DDPO. The tiny model trains all its weights: on "less blue"
    (DDPO, 25 epochs × 16 samples, same seeds) the full UNet at lr 1e-4 reached the reward
    ceiling in ~15 epochs, rank-4 LoRA (``lora.TINY_TARGETS``) needed ~25 at lr 1e-3 and barely
    moved at DDPO's 3e-4, and was not faster per step (at 1.4 M parameters LoRA saves memory,
    not time).
    """

    def __init__(self, pipe, reward_fn, config: TrainConfig | None = None, prompts=None, accelerator=None):
        from accelerate import Accelerator

        self.config = config = config if config is not None else TrainConfig()
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if accelerator is None:
            kwargs = {"mixed_precision": config.mixed_precision}
            if config.log_with:
                kwargs["log_with"] = config.log_with
            accelerator = Accelerator(**kwargs)
            if config.log_with:
                accelerator.init_trackers("pxpo-lite", config=config.to_dict())
        self.accelerator = accelerator
        check_config(config, accelerator.num_processes)
        self.pipe = pipe
        self.reward_fn = rewards_mod.get_reward(reward_fn)
        if prompts is None:
            from .world import all_prompts

            prompts = all_prompts()
        if not callable(prompts) and (isinstance(prompts, str) or len(prompts) == 0):
            raise ValueError("prompts must be a non-empty list of str or a function (n, generator) -> list of str")
        self.prompts = prompts

        pipe.to(accelerator.device)
        for m in (getattr(pipe, "text_encoder", None), getattr(pipe, "vae", None)):
            if m is not None:
                m.requires_grad_(False)
                m.eval()
        unet = pipe.unet
        unet.eval()  # no dropout: re-scoring at θ_old reproduces the sampling log-probs
        self.is_latent = getattr(pipe, "vae", None) is not None
        self.use_lora = config.use_lora if config.use_lora is not None else self.is_latent
        if self.use_lora:
            from . import lora

            targets = config.lora_targets or (lora.SD_TARGETS if self.is_latent else lora.TINY_TARGETS)
            torch.manual_seed(_seed_for(config.seed, "lora-init"))  # identical adapters on every process
            self.lora_config = lora.add_lora(unet, config.lora_rank, config.lora_alpha, targets)
            self.params = lora.lora_parameters(unet)
        else:
            self.lora_config = None
            unet.requires_grad_(True)
            self.params = [p for p in unet.parameters() if p.requires_grad]
        lr = config.learning_rate if config.learning_rate is not None else (3e-4 if self.use_lora else 1e-4)
        optimizer = torch.optim.AdamW(
            self.params, lr=lr, betas=tuple(config.adam_betas), weight_decay=config.adam_weight_decay, eps=config.adam_eps
        )
        self.optimizer = accelerator.prepare(optimizer)
        self.tracker = PerPromptStatTracker(config.stat_buffer_size, config.stat_min_count) if config.per_prompt_stats else None
        self.epoch = 0
        self.global_step = 0
        self.metrics: list[dict] = []

    # -- helpers -------------------------------------------------------------------------------
    @property
    def local_samples(self) -> int:
        return self.config.samples_per_epoch // self.accelerator.num_processes

    def _draw_prompts(self, n: int, generator: torch.Generator) -> list[str]:
        if callable(self.prompts):
            out = list(self.prompts(n, generator))
            if len(out) != n:
                raise ValueError(f"the prompts function returned {len(out)} prompts, expected {n}")
            return out
        idx = torch.randint(len(self.prompts), (n,), generator=generator).tolist()
        return [self.prompts[i] for i in idx]

    def _rewards(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        r = self.reward_fn(images, prompts)
        if not isinstance(r, torch.Tensor):
            raise TypeError(f"the reward function must return a torch.Tensor, got {type(r).__name__}")
        B, _, H, W = images.shape
        if tuple(r.shape) not in ((B,), (B, H, W)):
            raise ValueError(
                f"the reward function returned shape {tuple(r.shape)} for {B} images of {H}×{W}; "
                f"expected ({B},) (one per image) or ({B}, {H}, {W}) (one per pixel)"
            )
        bad = ~torch.isfinite(r.detach().reshape(B, -1)).all(dim=1)
        if bad.any():
            who = ", ".join(f"sample {i} (prompt {prompts[i]!r})" for i in bad.nonzero().flatten().tolist()[:5])
            raise TrainingError(f"the reward is NaN/inf for {who}; training stopped before any update (weights untouched)")
        return r.detach().float()

    def sample_and_score(self, prompts: Sequence[str] | None = None, n: int | None = None, generator=None):
        """Sample trajectories (``prompts``, or ``n`` drawn from the training prompts) and reward them.

        Returns ``(trajectory, rewards)``, rewards (B,) or (B,H,W) as the reward function gives.
        """
        from .sampling import Trajectory, sample

        c = self.config
        generator = generator if generator is not None else torch.Generator().manual_seed(c.seed)
        if prompts is None:
            prompts = self._draw_prompts(n or self.local_samples, generator)
        prompts = list(prompts)
        trajs = []
        for s in range(0, len(prompts), c.sample_batch_size):
            trajs.append(
                sample(
                    self.pipe,
                    prompts[s : s + c.sample_batch_size],
                    num_steps=c.num_steps,
                    eta=c.eta,
                    guidance_scale=c.guidance_scale,
                    generator=generator,
                    progress=False,
                )
            )
        traj = Trajectory.cat(trajs) if len(trajs) > 1 else trajs[0]
        return traj, self._rewards(traj.images, traj.prompts)

    def compute_advantages(self, prompts: list[str], rewards: torch.Tensor, sample_grid: tuple[int, int] | None = None):
        """Advantages for this process's samples: (B,) for DDPO, (B,h,w) on the sample grid for PXPO.

        Rewards and prompts of all processes are gathered first, so every process normalises
        with the same statistics (and the per-prompt buffers stay identical everywhere).
        """
        c = self.config
        acc = self.accelerator
        if c.method == "ddpo" and rewards.ndim == 3:
            rewards = rewards.mean(dim=(1, 2))  # a scalar reward is the map's mean
        if c.method == "pxpo" and rewards.ndim == 1:
            H, W = sample_grid if sample_grid is not None else (1, 1)
            rewards = rewards[:, None, None].expand(len(rewards), H, W).contiguous()  # constant map ≡ DDPO
        all_r, all_p = rewards, list(prompts)
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            all_r = acc.gather(rewards.to(acc.device).contiguous()).cpu()
            all_p = gather_object(list(prompts))
        tracker = self.tracker or PerPromptStatTracker(buffer_size=None, min_count=len(all_r) + 1)
        adv = clip_advantages(tracker.update(all_p, all_r.cpu()), c.adv_clip_max)
        start = acc.process_index * len(rewards)
        adv = adv[start : start + len(rewards)]
        if c.method == "pxpo" and sample_grid is not None:
            from .pixelwise import to_sample_grid

            adv = to_sample_grid(adv, sample_grid)
        return adv

    # -- one optimisation pass over a batch of trajectories -------------------------------------
    def trainable_steps(self, traj) -> list[int]:
        steps = list(range(traj.num_steps))
        if self.config.skip_deterministic_steps:
            from .sampling import _sync_scheduler

            skip = set(deterministic_steps(_sync_scheduler(self.pipe, traj), traj.timesteps.cpu(), traj.eta))
            steps = [i for i in steps if i not in skip] or steps
        return steps

    def _log_prob(self, traj, step: int, idx: torch.Tensor) -> torch.Tensor:
        from .sampling import step_log_prob

        with self.accelerator.autocast():
            return step_log_prob(self.pipe, traj, step, idx).float()

    def _sync_gradients(self) -> None:
        """Average the trainable parameters' gradients over processes (one flat all-reduce)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = acc.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
        off = 0
        for p, g in zip(self.params, grads):
            n = g.numel()
            p.grad = flat[off : off + n].view_as(p).clone()
            off += n

    def update(self, traj, advantages: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """Inner updates on one batch of trajectories with fixed advantages; returns averaged diagnostics."""
        c = self.config
        acc = self.accelerator
        g = generator if generator is not None else _gen(c.seed, self.epoch, acc.process_index, "update")
        B = len(traj)
        if advantages.ndim == 0 or advantages.shape[0] != B:
            raise ValueError(f"advantages have shape {tuple(advantages.shape)} but the trajectory has {B} samples")
        if c.method == "pxpo":
            h, w = traj.latents.shape[-2:]
            if advantages.ndim == 1:  # one advantage per sample: a constant map (PXPO ≡ DDPO)
                advantages = advantages[:, None, None].expand(B, h, w)
            elif advantages.ndim == 3 and tuple(advantages.shape[1:]) != (h, w):
                from .pixelwise import to_sample_grid

                advantages = to_sample_grid(advantages, (h, w))  # image resolution -> sample grid
        loss_fn = ddpo_loss if c.method == "ddpo" else pxpo_loss
        steps = torch.tensor(self.trainable_steps(traj))
        n_t = max(1, round(len(steps) * c.timestep_fraction))
        advantages = advantages.to(acc.device)
        old_all = traj.log_probs
        infos: list[dict] = []
        norms: list[float] = []
        for _inner in range(c.inner_epochs):
            perm = torch.randperm(B, generator=g)
            batches = list(perm.split(c.train_batch_size))
            for k in range(0, len(batches), c.grad_accum_steps):
                group = batches[k : k + c.grad_accum_steps]
                micro = [(idx, int(steps[j])) for idx in group for j in torch.randperm(len(steps), generator=g)[:n_t]]
                try:
                    for idx, i in micro:
                        lp = self._log_prob(traj, i, idx)
                        self._check_finite(lp, "log-prob", traj, idx, i)
                        loss, info = loss_fn(lp, old_all[idx, i].to(lp.device), advantages[idx], c.clip_range)
                        if not torch.isfinite(loss):
                            self._check_finite(loss.expand(len(idx)), "loss", traj, idx, i)
                        acc.backward(loss / len(micro))
                        infos.append(info)
                    self._sync_gradients()
                    norm = self._clip_and_check()
                except (TrainingError, NonFiniteError) as e:
                    self.optimizer.zero_grad(set_to_none=True)
                    if isinstance(e, TrainingError):
                        raise
                    raise TrainingError(f"{e}; the optimiser step was skipped (weights untouched)") from e
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.global_step += 1
                norms.append(norm)
        out = {k: float(sum(d[k] for d in infos) / len(infos)) for k in infos[0] if k not in ("ratio_min", "ratio_max")}
        out["ratio_min"] = min(d["ratio_min"] for d in infos)
        out["ratio_max"] = max(d["ratio_max"] for d in infos)
        out["grad_norm"] = float(sum(norms) / len(norms))
        out["optimizer_steps"] = len(norms)
        out["train_timesteps"] = n_t
        return out

    def _check_finite(self, t: torch.Tensor, what: str, traj, idx: torch.Tensor, step: int) -> None:
        bad = ~torch.isfinite(t.detach().reshape(len(idx), -1)).all(dim=1)
        if bad.any():
            rank = f" on process {self.accelerator.process_index}" if self.accelerator.num_processes > 1 else ""
            who = ", ".join(f"sample {int(idx[b])} (prompt {traj.prompts[int(idx[b])]!r})" for b in bad.nonzero().flatten().tolist()[:5])
            raise TrainingError(
                f"{what} is NaN/inf for {who} at timestep index {step} (t = {int(traj.timesteps[step])}){rank}, "
                f"epoch {self.epoch}; the optimiser step was skipped (weights untouched). Lower the learning rate, "
                "check the reward scale, or use mixed_precision='no'."
            )

    def _clip_and_check(self) -> float:
        c = self.config
        if c.max_grad_norm is not None:
            norm = self.accelerator.clip_grad_norm_(self.params, c.max_grad_norm)
        else:
            grads = [p.grad.detach().reshape(-1) for p in self.params if p.grad is not None]
            norm = torch.cat(grads).norm() if grads else torch.tensor(0.0)
        norm = float(norm)
        if not math.isfinite(norm):
            raise TrainingError(
                f"the gradient norm is {norm} at epoch {self.epoch}; the optimiser step was skipped (weights untouched)"
            )
        return norm

    # -- the epoch loop --------------------------------------------------------------------------
    def train_epoch(self) -> dict:
        """Sample → reward → advantages → inner updates → one metrics record (appended and returned)."""
        c = self.config
        acc = self.accelerator
        g = _gen(c.seed, self.epoch, acc.process_index, "sample")
        t0 = time.perf_counter()
        traj, rewards = self.sample_and_score(n=self.local_samples, generator=g)
        t1 = time.perf_counter()
        adv = self.compute_advantages(traj.prompts, rewards, tuple(traj.latents.shape[-2:]))
        scalar_r = rewards.mean(dim=(1, 2)) if rewards.ndim == 3 else rewards
        all_r = acc.gather(scalar_r.to(acc.device).contiguous()).cpu() if acc.num_processes > 1 else scalar_r.cpu()
        info = self.update(traj, adv, _gen(c.seed, self.epoch, acc.process_index, "update"))
        t2 = time.perf_counter()
        self.epoch += 1
        record = {
            "epoch": self.epoch,
            "n_samples": self.epoch * c.samples_per_epoch,
            "reward_mean": float(all_r.mean()),
            "reward_std": float(all_r.std(unbiased=False)),
            "reward_min": float(all_r.min()),
            "reward_max": float(all_r.max()),
            "advantage_abs_mean": float(adv.abs().mean()),
            **info,
            "sample_s": t1 - t0,
            "train_s": t2 - t1,
        }
        self.metrics.append(record)
        if self.config.log_with:
            acc.log(record, step=self.epoch)
        return record

    def train(self, epochs: int, checkpoint_dir=None, checkpoint_every: int = 0) -> list[dict]:
        """Run ``epochs`` more epochs (optionally checkpointing every ``checkpoint_every``); returns ``self.metrics``."""
        from tqdm.auto import tqdm

        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
        bar = tqdm(range(epochs), desc=f"{self.config.method} epochs", disable=not (self.config.progress and self.accelerator.is_main_process))
        for _ in bar:
            rec = self.train_epoch()
            bar.set_postfix(reward=f"{rec['reward_mean']:.4f}", kl=f"{rec['approx_kl']:.2g}")
            if checkpoint_dir is not None and checkpoint_every and self.epoch % checkpoint_every == 0:
                self.save_checkpoint(checkpoint_dir)
        return self.metrics

    # -- weights and checkpoints -----------------------------------------------------------------
    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained weights: LoRA adapters (clean keys) or the full UNet state dict."""
        unet = self.accelerator.unwrap_model(self.pipe.unet)
        if self.use_lora:
            from .lora import lora_state_dict

            return lora_state_dict(unet)
        return {k: v.detach().clone() for k, v in unet.state_dict().items()}

    def load_model_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        unet = self.accelerator.unwrap_model(self.pipe.unet)
        if self.use_lora:
            from .lora import load_lora_state_dict

            load_lora_state_dict(unet, state)
            return
        result = unet.load_state_dict({k: v.to(self.accelerator.device) for k, v in state.items()}, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"checkpoint weights do not match the UNet: missing {result.missing_keys[:3]}, unexpected "
                f"{result.unexpected_keys[:3]}; was it saved from the same model (and use_lora setting)?"
            )

    def save_checkpoint(self, path) -> Path:
        """Save model, optimiser, stat tracker, metrics, epoch and RNG to the folder ``path`` (main process writes)."""
        from .checkpoint import save_checkpoint

        acc = self.accelerator
        path = Path(path)
        acc.wait_for_everyone()  # every process arrives; no collective inside the main-only branch
        if acc.is_main_process:
            meta, tracker_tensors = self.tracker.state_dict() if self.tracker is not None else (None, {})
            extra = {**tracker_tensors, "rng.torch_cpu": torch.get_rng_state()}
            state = {
                "kind": CHECKPOINT_KIND,
                "epoch": self.epoch,
                "global_step": self.global_step,
                "config": self.config.to_dict(),
                "use_lora": self.use_lora,
                "lora_config": None if self.lora_config is None else {k: v for k, v in self.lora_config.to_dict().items() if k in ("r", "lora_alpha", "target_modules")},
                "tracker": meta,
                "metrics": self.metrics,
                "num_processes": acc.num_processes,
            }
            if state["lora_config"] is not None and state["lora_config"].get("target_modules") is not None:
                state["lora_config"]["target_modules"] = sorted(state["lora_config"]["target_modules"])
            save_checkpoint(path, self.model_state_dict(), state, self.optimizer.state_dict(), extra)
        acc.wait_for_everyone()
        return path

    def load_checkpoint(self, path) -> "Trainer":
        """Restore model, optimiser, stat tracker, metrics, epoch and RNG from ``path`` (to resume)."""
        from .checkpoint import CheckpointError, load_checkpoint

        ck = load_checkpoint(path, map_location="cpu")
        st = ck.state
        if st.get("kind") != CHECKPOINT_KIND:
            raise CheckpointError(f"checkpoint {str(path)!r} was not written by Trainer (kind {st.get('kind')!r})")
        if st["use_lora"] != self.use_lora or st["config"]["method"] != self.config.method:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is for method={st['config']['method']!r}, use_lora={st['use_lora']}, "
                f"but this trainer has method={self.config.method!r}, use_lora={self.use_lora}; use the same config"
            )
        self.load_model_state_dict(ck.model)
        if ck.optimizer is not None:
            try:
                self.optimizer.load_state_dict(ck.optimizer)
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"checkpoint {str(path)!r}: optimiser state does not fit this model ({e})") from e
        if self.tracker is not None and st.get("tracker") is not None:
            self.tracker.load_state_dict(st["tracker"], ck.extra)
        if "rng.torch_cpu" in ck.extra:
            torch.set_rng_state(ck.extra["rng.torch_cpu"])
        self.epoch, self.global_step, self.metrics = st["epoch"], st["global_step"], list(st["metrics"])
        return self

    def save_lora(self, path) -> Path:
        """Save only the LoRA adapters (peft format) — load with :func:`pxpo_lite.lora.load_lora`."""
        from .lora import save_lora

        if not self.use_lora:
            raise ValueError("this trainer trains the full UNet (use_lora=False); save with pipe.save_pretrained instead")
        path = Path(path)
        if self.accelerator.is_main_process:
            save_lora(self.accelerator.unwrap_model(self.pipe.unet), path)
        self.accelerator.wait_for_everyone()
        return path


# --------------------------------------------------------------------------------------------
# Plotting
# --------------------------------------------------------------------------------------------
def plot_reward_curve(runs, ax=None, x: str = "n_samples", label: str | None = None, color=None):
    """Reward vs samples. ``runs``: one run's metrics (list of dicts) — band = ±1 std of the
    rewards *within* each epoch — or several runs (list of lists) — band = ±1 std *across* runs
    (``plotting.curve_with_band``). Returns the axes."""
    import matplotlib.pyplot as plt
    import numpy as np

    from .plotting import curve_with_band

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    if runs and isinstance(runs[0], dict):
        xs = [r[x] for r in runs]
        mean = np.array([r["reward_mean"] for r in runs])
        std = np.array([r["reward_std"] for r in runs])
        (line,) = ax.plot(xs, mean, label=label, color=color)
        ax.fill_between(xs, mean - std, mean + std, alpha=0.2, color=line.get_color())
        band = "±1 std within the batch"
    else:
        xs = [r[x] for r in runs[0]]
        curve_with_band(ax, xs, [[r["reward_mean"] for r in run] for run in runs], label=label, color=color)
        band = f"±1 std over {len(runs)} runs"
    ax.set_xlabel("samples" if x == "n_samples" else x)
    ax.set_ylabel(f"mean reward ({band})")
    if label:
        ax.legend()
    return ax
