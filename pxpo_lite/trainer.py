"""The RL training engine: one loop for DDPO (a reward per image) and PXPO (a reward per pixel).

Each epoch (docs/paper.md; ddpo-pytorch's ``train.py``; laid out like CleanRL's ``ppo.py`` in
:meth:`Trainer.train_epoch`, whose comments carry these numbers):

1. **sample** ``samples_per_epoch`` trajectories with the current policy (η > 0), keeping every
   step's per-element log-prob — :func:`pxpo_lite.sample`;
2. **reward** the final images — a map (B,H,W) or a vector (B,) (checked by
   :func:`pxpo_lite.rewards.check_reward`);
3. **advantages** — DDPO: per-prompt normalised scalars (B,) (a map reward is reduced to its
   mean); PXPO: per-pixel normalised maps (a scalar reward becomes a constant map: PXPO ≡ DDPO
   then), mapped once to the sample grid (B,h,w) (:func:`pxpo_lite.pixelwise.to_sample_grid`),
   clipped;
4. **optimise** — for ``inner_epochs`` passes: shuffle the samples, cut them into micro-batches
   of ``train_batch_size``; ``grad_accum_steps`` micro-batches, each at a random
   ``timestep_fraction`` of the stochastic steps (σ_t > 0), make one optimiser step of
   :func:`pxpo_lite.update.policy_gradient_step` (re-score with gradients, ``ddpo_loss`` /
   ``pxpo_loss``, backward, average over processes, clip, step);
5. **log** one plain dict per epoch (``trainer.metrics``).

Steps whose σ_t = 0 (the last step of a "trailing" schedule, which is deterministic) carry no
policy and are never trained (:func:`pxpo_lite.ddim.trainable_step_indices`); a schedule with
no stochastic step at all (e.g. ``num_steps=1`` on the tiny model) is an error.

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
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from . import keep as keep_lib
from . import lora
from . import rewards as rewards_mod
from .advantages import PerPromptStatTracker, clip_advantages, spread_advantages, uninformed_map
from .checkpoint import check_save_target
from .config_checks import NOT_GIVEN, renamed_keyword
from .pixelwise import to_sample_grid
from .regions import MultiChannelReward
from .memory import sampling_batch_size
from .sampling import Trajectory, sample
from .speed import apply_speedups, resolve_cpu_default
from .steps import trainable_steps
from .train_config import TrainConfig, check_config
from .trainer_checkpoint import TRAINER_KIND as CHECKPOINT_KIND, load_trainer_checkpoint, save_trainer_checkpoint
from .update import TrainingError, policy_gradient_step, resolve_timestep_batch, summarise
from .world import all_prompts

__all__ = ["CHECKPOINT_KIND", "TrainConfig", "Trainer", "TrainingError", "check_config"]


def _seed_for(*parts) -> int:
    """A stable 63-bit seed from (seed, epoch, rank, purpose)."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def _gen(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(_seed_for(*parts))


class Trainer:
    """Trains ``pipe.unet`` (LoRA adapters or all weights) with DDPO or PXPO.

    Args:
        pipe: the tiny pipeline or a diffusers ``StableDiffusionPipeline`` (DDIM scheduler).
        reward_fn: ``fn(images (B,3,H,W) [0,1], prompts) -> (B,) or (B,H,W)``, or a name from
            ``pxpo_lite.rewards.REWARDS``.
        config: :class:`TrainConfig` (checked before anything is built).
        prompts: the prompts to train on (each sample draws one uniformly), or a function
            ``(n, generator) -> list of n prompts``. Default: every prompt of the world.
        accelerator: an ``accelerate.Accelerator`` (default: a new one from the config).
        keep_weights: with ``config.keep_beta`` > 0, ``fn(images, prompts) -> (B,H,W)`` keep maps
            (≥ 0; 1 = keep, 0 = free; ``keep.keep_weights_from_fn``) for each epoch's samples;
            None: w ≡ 1 (the global KL). The reference is the base model (LoRA adapters off, or a
            frozen copy of the full UNet made here).

    ``train(epochs, callback)`` returns ``self.metrics``, a list with one plain dict per epoch.

    LoRA or full UNet (``use_lora=None`` picks): Stable Diffusion gets rank-4 LoRA on the attention
    projections, as DDPO. The tiny model trains all its weights: on "less blue" (DDPO, 25 epochs × 16
    samples, same seeds) the full UNet at lr 1e-4 reached the reward ceiling in ~15 epochs, rank-4 LoRA
    (``lora.TINY_TARGETS``) needed ~25 at lr 1e-3, barely moved at 3e-4 and was not faster per step.
    """

    def __init__(self, pipe, reward_fn, config: TrainConfig | None = None, prompts=None, accelerator=None, keep_weights=None):
        self.config = config = config if config is not None else TrainConfig()
        check_config(config, 1 if accelerator is None else accelerator.num_processes)  # before anything is built
        if keep_weights is not None and (not callable(keep_weights) or config.keep_beta == 0):
            raise ValueError(f"keep_weights must be a function (images, prompts) -> (B,H,W) used with TrainConfig.keep_beta > 0; "
                             f"got {type(keep_weights).__name__} with keep_beta={config.keep_beta!r}")
        self.keep_weights = keep_weights
        self.steps = trainable_steps(pipe, config.num_steps, config.eta)  # indices with σ_t > 0 (ValueError if none)
        if accelerator is None:
            accelerator = Accelerator(mixed_precision=config.mixed_precision, **({"log_with": config.log_with} if config.log_with else {}))
            check_config(config, accelerator.num_processes)  # the process count is known now
            if config.log_with:
                accelerator.init_trackers("pxpo-lite", config=config.to_dict())
        self.accelerator = accelerator
        self.pipe = pipe
        self.reward_fn = rewards_mod.get_reward(reward_fn)
        if prompts is None:
            prompts = all_prompts()
        if not callable(prompts) and (isinstance(prompts, str) or len(prompts) == 0):
            raise ValueError("prompts must be a non-empty list of str or a function (n, generator) -> list of str")
        self.prompts = prompts

        pipe.to(accelerator.device)
        for m in (getattr(pipe, "text_encoder", None), getattr(pipe, "vae", None)):
            if m is not None:
                m.requires_grad_(False)
                m.eval()
        self.speedups = apply_speedups(pipe, channels_last=config.channels_last, gradient_checkpointing=config.gradient_checkpointing,
                                       prompt_cache=config.prompt_cache, compile=config.compile_unet)  # channels_last on a CPU; the rest off
        unet = pipe.unet
        unet.eval()  # no dropout: re-scoring at θ_old reproduces the sampling log-probs
        self.is_latent = getattr(pipe, "vae", None) is not None
        self.use_lora = config.use_lora if config.use_lora is not None else self.is_latent
        if self.use_lora:
            targets = config.lora_targets or (lora.SD_TARGETS if self.is_latent else lora.TINY_TARGETS)
            torch.manual_seed(_seed_for(config.seed, "lora-init"))  # identical adapters on every process
            self.lora_config = lora.add_lora(unet, config.lora_rank, config.lora_alpha, targets)
            self.params = lora.lora_parameters(unet)
        else:
            self.lora_config = None
            unet.requires_grad_(True)
            self.params = [p for p in unet.parameters() if p.requires_grad]
        # sampling with the adapters merged into copies of the weights (lora.merged_adapters): by default on a CPU
        self.merge_for_sampling = self.use_lora and not config.compile_unet and resolve_cpu_default(
            "lora_merged_sampling", config.lora_merged_sampling, accelerator.device)
        # the keep term's reference: LoRA -> the same UNet with adapters off; full UNet -> a frozen copy, made once, now
        self.reference_unet = keep_lib.frozen_copy(unet) if config.keep_beta > 0 and not self.use_lora else None
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
        """The reward function's output, checked (:func:`rewards.check_reward`): (B,) or (B,H,W), finite; its seconds: ``last_reward_s``."""
        t0 = time.perf_counter()
        r = self.reward_fn(images, prompts)
        self.last_reward_s = time.perf_counter() - t0
        try:
            rewards_mod.check_reward(r, images, name="the reward function's output")
        except ValueError as e:
            bad = []
            if isinstance(r, torch.Tensor) and r.shape[:1] == images.shape[:1]:
                bad = (~torch.isfinite(r.detach().reshape(len(r), -1)).all(dim=1)).nonzero().flatten().tolist()
            who = "".join(f"; sample {i} (prompt {prompts[i]!r})" for i in bad[:5])
            raise TrainingError(f"{e}{who}; training stopped before any update (weights untouched)") from e
        return r.detach().float()

    def sampling_batch_size(self, n: int, prompts: Sequence[str]) -> int:
        """Trajectories per sampling call: ``TrainConfig.sample_batch_size`` (a cap), or if None :func:`pxpo_lite.memory.sampling_batch_size`."""
        c = self.config
        return c.sample_batch_size if c.sample_batch_size is not None else sampling_batch_size(self.pipe, n, prompts, c.guidance_scale)

    def sample_and_score(self, prompts: Sequence[str] | None = None, n: int | None = None, generator=None):
        """Sample trajectories (``prompts``, or ``n`` drawn from the training prompts) and reward them.

        Returns ``(trajectory, rewards)``, rewards (B,) or (B,H,W) as the reward function gives.
        """
        c = self.config
        generator = generator if generator is not None else torch.Generator().manual_seed(c.seed)
        if prompts is None:
            prompts = self._draw_prompts(n or self.local_samples, generator)
        prompts = list(prompts)
        self.last_sampling_batch_size = bs = self.sampling_batch_size(len(prompts), prompts)
        with lora.merged_adapters(self.pipe.unet, self.merge_for_sampling):
            traj = sample(self.pipe, prompts, num_steps=c.num_steps, eta=c.eta, guidance_scale=c.guidance_scale,
                          generator=generator, progress=False, batch_size=bs)
        return traj, self._rewards(traj.images, traj.prompts)

    def compute_advantages(self, prompts: list[str], rewards: torch.Tensor, sample_grid: tuple[int, int]):
        """Advantages for this process's samples, in the shape the loss takes (converted here, once):
        (B,) for DDPO, (B,h,w) on the sample grid ``sample_grid`` = (h, w) for PXPO.

        Rewards and prompts of all processes are gathered first, so every process normalises
        with the same statistics (and the per-prompt buffers stay identical everywhere).
        """
        c = self.config
        acc = self.accelerator
        per_pixel = c.method != "ddpo"
        uninformed = c.advantage_map == "uninformed"
        if (not per_pixel or uninformed) and rewards.ndim == 3:
            rewards = rewards.mean(dim=(1, 2))  # (B,H,W) -> (B,): a scalar reward is the map's mean
        if per_pixel and not uninformed and rewards.ndim == 1:
            h, w = sample_grid
            rewards = rewards[:, None, None].expand(len(rewards), h, w).contiguous()  # (B,) -> (B,h,w): constant map ≡ DDPO
        all_r, all_p = rewards, list(prompts)
        if acc.num_processes > 1:
            all_r = acc.gather(rewards.to(acc.device).contiguous()).cpu()
            all_p = gather_object(list(prompts))
        tracker = self.tracker or PerPromptStatTracker(buffer_size=None, min_count=len(all_r) + 1)
        adv = clip_advantages(tracker.update(all_p, all_r.cpu()), c.adv_clip_max)
        start = acc.process_index * len(rewards)
        adv = adv[start : start + len(rewards)]
        if per_pixel and uninformed:  # a control: the image's advantage spread by a map that knows no reward
            g = _gen(c.seed, self.epoch, acc.process_index, "spread")
            adv = spread_advantages(adv, uninformed_map(len(adv), tuple(sample_grid), g))
        elif per_pixel:
            adv = to_sample_grid(adv, sample_grid)  # (B,H,W) image resolution -> (B,h,w) sample grid (identity if equal)
        return adv

    def _channel_means(self) -> dict:
        """``{"reward/<channel>": mean}`` over all processes' last batch when the reward is a
        :class:`~pxpo_lite.regions.MultiChannelReward` (each channel unweighted); else ``{}``."""
        if not isinstance(self.reward_fn, MultiChannelReward):
            return {}
        acc, out = self.accelerator, {}
        for name, m in self.reward_fn.last_means.items():
            m = acc.gather(m.to(acc.device).contiguous()).cpu() if acc.num_processes > 1 else m.cpu()
            out[f"reward/{name}"] = float(m.mean())
        return out

    def trainable_steps(self, traj: Trajectory) -> list[int]:
        """Indices of ``traj``'s steps with σ_t > 0 (the ones trained)."""
        return trainable_steps(self.pipe, traj.num_steps, traj.eta)

    # -- step 4: optimise on one batch of trajectories ------------------------------------------
    def optimise(self, traj: Trajectory, advantages: torch.Tensor, generator: torch.Generator | None = None,
                 keep_map: torch.Tensor | None = None, *, keep_weights=NOT_GIVEN) -> dict:
        """``inner_epochs`` passes of optimiser steps on ``traj`` with fixed ``advantages`` ((B,) DDPO,
        (B,h,w) PXPO) and, with ``keep_beta`` > 0, the keep term (``keep_map``: the keep weights (B,h,w) on the
        sample grid, or None; its old name ``keep_weights=`` warns: that is the Trainer's map function);
        returns the diagnostics averaged over every (micro-batch, timestep) pair."""
        c, acc = self.config, self.accelerator
        keep_map = renamed_keyword("Trainer.optimise", "keep_weights", keep_weights, "keep_map", keep_map)
        keep = keep_lib.Keep(c.keep_beta, keep_map, self.reference_unet) if c.keep_beta > 0 else None
        g = generator if generator is not None else _gen(c.seed, self.epoch, acc.process_index, "update")
        steps = self.trainable_steps(traj)
        n_t = max(1, round(len(steps) * c.timestep_fraction))
        tb = resolve_timestep_batch(c.timestep_batch, self.pipe, traj, c.train_batch_size)
        infos, norms = [], []
        for _inner in range(c.inner_epochs):
            micro_batches = torch.randperm(len(traj), generator=g).split(c.train_batch_size)
            for k in range(0, len(micro_batches), c.grad_accum_steps):
                # one optimiser step: grad_accum_steps micro-batches × n_t random stochastic timesteps each
                pairs = [(idx, steps[j]) for idx in micro_batches[k : k + c.grad_accum_steps]
                         for j in torch.randperm(len(steps), generator=g)[:n_t].tolist()]
                where = f" on process {acc.process_index}" if acc.num_processes > 1 else ""
                res = policy_gradient_step(self.pipe, traj, advantages.to(acc.device), pairs, self.optimizer, self.params,
                                           method=c.method, clip_range=c.clip_range, max_grad_norm=c.max_grad_norm,
                                           accelerator=acc, keep=keep, where=f"{where}, epoch {self.epoch}",
                                           timestep_batch=tb)
                infos += res.infos
                norms.append(res.grad_norm)
                self.global_step += 1
        return {**summarise(infos), "grad_norm": float(sum(norms) / len(norms)), "optimizer_steps": len(norms),
                "train_timesteps": n_t, "timestep_batch": tb}

    # -- the epoch loop --------------------------------------------------------------------------
    def train_epoch(self) -> dict:
        """One epoch, steps 1–5 of the module docstring; the metrics record is appended and returned."""
        c, acc = self.config, self.accelerator
        t0 = time.perf_counter()
        # 1. sample trajectories with the current policy (as few calls as memory allows); 2. reward them: (B,) or (B,H,W)
        self.last_reward_s = 0.0
        traj, rewards = self.sample_and_score(n=self.local_samples, generator=_gen(c.seed, self.epoch, acc.process_index, "sample"))
        t2 = time.perf_counter()
        t1 = t2 - self.last_reward_s  # sampling ends where the reward function starts
        # 3. advantages, normalised over all processes: (B,) DDPO | (B,h,w) PXPO on the sample grid
        adv = self.compute_advantages(traj.prompts, rewards, tuple(traj.latents.shape[-2:]))
        channels = self._channel_means()  # per-channel rewards of a MultiChannelReward, before anything else calls it
        keep_map = (keep_lib.keep_weights_from_fn(self.keep_weights, traj.images, traj.prompts, tuple(traj.latents.shape[-2:]))
                    if self.keep_weights is not None else None)
        t3 = time.perf_counter()
        # 4. optimise: inner epochs × micro-batches × random stochastic timesteps (+ the keep term)
        info = self.optimise(traj, adv, _gen(c.seed, self.epoch, acc.process_index, "update"), keep_map)
        t4 = time.perf_counter()
        # 5. log (rewards of all processes)
        image_r = rewards.mean(dim=(1, 2)) if rewards.ndim == 3 else rewards  # (B,)
        all_r = acc.gather(image_r.to(acc.device).contiguous()).cpu() if acc.num_processes > 1 else image_r.cpu()
        self.epoch += 1
        record = {
            "epoch": self.epoch,
            "n_samples": self.epoch * c.samples_per_epoch,
            "reward_mean": float(all_r.mean()),
            "reward_std": float(all_r.std(unbiased=False)),
            "reward_min": float(all_r.min()),
            "reward_max": float(all_r.max()),
            "advantage_abs_mean": float(adv.abs().mean()),
            **channels,
            **info,
            "sample_batch_size": getattr(self, "last_sampling_batch_size", c.sample_batch_size),
            "sample_s": t2 - t0,  # sampling + reward
            "train_s": t4 - t2,  # advantages (+ keep maps) + update
            "seconds": {"sampling": t1 - t0, "reward": t2 - t1, "advantages": t3 - t2, "update": t4 - t3},
        }
        self.metrics.append(record)
        if c.log_with:
            acc.log(record, step=self.epoch)
        return record

    def train(self, epochs: int, callback: Callable | None = None, checkpoint_dir=None, checkpoint_every: int = 0) -> list[dict]:
        """Run ``epochs`` more epochs; returns ``self.metrics``.

        ``callback(record, trainer)``, if given, runs after every epoch (after any checkpoint), e.g.
        to evaluate the model being trained. ``checkpoint_dir`` + ``checkpoint_every``: save a
        checkpoint every that many epochs.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be a function (record, trainer) -> None or None, got {type(callback).__name__}")
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be an int >= 0 (epochs between saves; 0: none), got {checkpoint_every!r}")
        if (checkpoint_dir is None) != (checkpoint_every == 0):
            raise ValueError(f"checkpoint_dir={checkpoint_dir!r} with checkpoint_every={checkpoint_every!r} would never save; "
                             "pass both (e.g. checkpoint_dir='checkpoints/run1', checkpoint_every=1) or neither")
        if checkpoint_dir is not None:
            check_save_target(checkpoint_dir)  # a refused folder fails now, not after an epoch of work
        bar = tqdm(range(epochs), desc=f"{self.config.method} epochs", disable=not (self.config.progress and self.accelerator.is_main_process))
        for _ in bar:
            rec = self.train_epoch()
            bar.set_postfix(reward=f"{rec['reward_mean']:.4f}", kl=f"{rec['approx_kl']:.2g}")
            if checkpoint_dir is not None and checkpoint_every and self.epoch % checkpoint_every == 0:
                self.save_checkpoint(checkpoint_dir)
            if callback is not None:
                callback(rec, self)
        return self.metrics

    # -- weights and checkpoints -----------------------------------------------------------------
    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained weights: LoRA adapters (clean keys) or the full UNet state dict."""
        unet = self.accelerator.unwrap_model(self.pipe.unet)
        if self.use_lora:
            return lora.lora_state_dict(unet)
        return {k: v.detach().clone() for k, v in unet.state_dict().items()}

    def load_model_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        unet = self.accelerator.unwrap_model(self.pipe.unet)
        if self.use_lora:
            lora.load_lora_state_dict(unet, state)
            return
        result = unet.load_state_dict({k: v.to(self.accelerator.device) for k, v in state.items()}, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"checkpoint weights do not match the UNet: missing {result.missing_keys[:3]}, unexpected "
                f"{result.unexpected_keys[:3]}; was it saved from the same model (and use_lora setting)?"
            )

    def save_checkpoint(self, path) -> Path:
        """Save model, optimiser, stat tracker, metrics, epoch, RNG, full config and base-model fingerprint
        to the folder ``path`` (main process writes; a folder of other files is refused) —
        :func:`pxpo_lite.trainer_checkpoint.save_trainer_checkpoint`."""
        return save_trainer_checkpoint(self, path)

    def load_checkpoint(self, path) -> "Trainer":
        """Restore everything :meth:`save_checkpoint` saved (to resume exactly); a config change that
        alters what the checkpoint means raises, a harmless one warns —
        :func:`pxpo_lite.trainer_checkpoint.load_trainer_checkpoint`."""
        return load_trainer_checkpoint(self, path)

    def save_lora(self, path) -> Path:
        """Save only the LoRA adapters (peft format) — load with :func:`pxpo_lite.lora.load_lora`."""
        if not self.use_lora:
            raise ValueError("this trainer trains the full UNet (use_lora=False); save with pipe.save_pretrained instead")
        path = Path(path)
        if self.accelerator.is_main_process:
            lora.save_lora(self.accelerator.unwrap_model(self.pipe.unet), path)
        self.accelerator.wait_for_everyone()
        return path
