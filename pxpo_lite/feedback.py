"""Human feedback on one image: painted heatmaps → per-pixel advantages → PXPO → regenerate.

The paper's third experiment (docs/paper.md, "Single-image human feedback"): a person marks what
they like and dislike on one generated image; PXPO is applied to that image repeatedly until it
matches their intent. Each **round** here is

1. the person paints a signed map h (H,W) in [−1, 1] on the current image
   (:class:`pxpo_lite.canvas.HeatmapCanvas`, or :func:`pxpo_lite.synthetic_feedback.synthetic_heatmap` headless);
2. the map becomes per-pixel advantages, A[i,j] = advantage_scale · h[i,j], × dislike_scale
   where h < 0, and × dislike_area ÷ (disliked area) more (≤ 10) when the disliked strokes cover
   less than ``dislike_area`` of the image, so a small stroke pulls as hard as a large one
   (:func:`pxpo_lite.painted.area_gain`) (area-averaged onto the sample grid for latent models). One image has no baseline to subtract (a batch mean of
   one map is the map itself), and none is needed: 0 already means "fine as it is", so an
   unpainted pixel gets no push at all — the Kronecker credit of PXPO;
3. PXPO updates LoRA adapters on that image's stored trajectory (docs/paper.md):
   ∇J = Σ_{i,j} A[i,j] Σ_t ∇ log p_θ(x_{t−1}^{ij} | x_t, c)   (``pxpo_lite.pxpo_loss``):
   liked pixels' sampled transitions become more likely (they stay), disliked ones less likely
   (they change); the keep term (``keep_beta``) holds everything else near the base model, with
   a weight that is 0 in a disliked stroke and rises to 1 over ``keep_ramp`` pixels outside it;
4. the image is regenerated with the same seed (same x_T and the same noise at every step) —
   by default only inside the strokes disliked so far and a ``redraw_ramp``-pixel band around
   them (never on liked pixels: ``redraw_liked``), blended step by step with the first image's
   trajectory everywhere else (``composite``, :mod:`pxpo_lite.composite`) — and the
   change |after − before| is measured inside and outside the painted area;
5. with ``target_change`` (default 0.15): while the disliked pixels' mean change from the image
   painted on is below it, steps 3–4 repeat on the same trajectory (the map still holds), up to
   ``max_updates_per_round`` optimiser steps in the round — so a round ends with a change the person
   can see, or says (``diagnostics["updates"]``) that it spent its budget.

A :class:`FeedbackSession` keeps the prompt, the seed, every painted map, the adapters after
each round, each round's image and its measurements, and **saves them to a folder after every
round** (PNG + NumPy + JSON + safetensors), so a kernel restart loses nothing:
:meth:`FeedbackSession.load` reloads it and the session continues exactly where it stopped.
Files are written atomically (temp name + rename) and the manifest ``session.json`` last.
Introduced in ``notebooks/06_human_feedback_canvas.ipynb``.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import lora as lora_lib
from .brush import check_heatmap
from .checkpoint import base_fingerprint
from .composite import base_trajectory, regenerate_mask, sample_composite
from .config_checks import NOT_GIVEN, as_int, renamed_keyword
from .keep import Keep, keep_weights_from_heatmap
from .painted import change_stats, heatmap_to_advantages, warn_if_whole_image  # noqa: F401 (re-exported: notebooks import them from here)
from .refine_config import DISLIKE_AREA, DISLIKE_SCALE, KEEP_BETA, KEEP_RAMP, REDRAW_RAMP, TARGET_CHANGE, RefineConfig  # noqa: F401 (re-exported: its home is refine_config.py)
from .sampling import sample
from .session_store import SessionError, SessionStore
from .steps import trainable_steps
from .update import policy_gradient_step, resolve_timestep_batch, summarise


# --------------------------------------------------------------------------------------------
# From a painted map to an update
# --------------------------------------------------------------------------------------------
def pxpo_refine(pipe, traj, advantages: torch.Tensor, params: Sequence[torch.nn.Parameter], config: RefineConfig,
                progress: bool = False, keep_map: torch.Tensor | None = None, *, keep_weights=NOT_GIVEN) -> dict:
    """``config.updates_per_round`` AdamW steps of the PXPO loss on one stored trajectory.

    Each step is one :func:`pxpo_lite.update.policy_gradient_step` over the trajectory's
    stochastic timesteps (σ_t > 0): L = (1/T') Σ_t pxpo_loss(log p_θ(x_{t−1}|x_t), log p_old, A),
    with ``advantages`` A (1,h,w) on the sample grid, plus the keep term β·mean(w·KL(π_θ‖π_base))
    when ``config.keep_beta`` > 0 (``keep_map``: the keep weights w (1,h,w); None: w ≡ 1; its old name
    ``keep_weights=`` warns; the reference is the base model: LoRA adapters off). A NaN/inf stops with
    :class:`~pxpo_lite.update.TrainingError` before the step (weights untouched). Returns diagnostics
    (``keep_kl*_last`` with the keep term).
    """
    keep_map = renamed_keyword("pxpo_refine", "keep_weights", keep_weights, "keep_map", keep_map)
    params = list(params)
    opt = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    steps = trainable_steps(pipe, traj.num_steps, traj.eta)
    pairs = [(torch.arange(len(traj)), i) for i in steps]  # every sample (one image) at every stochastic step
    A = advantages.to(traj.log_probs.device)
    keep = Keep(config.keep_beta, None if keep_map is None else keep_map.to(A.device)) if config.keep_beta > 0 else None
    tb = resolve_timestep_batch(config.timestep_batch, pipe, traj, len(traj))
    was_training = pipe.unet.training
    pipe.unet.eval()  # no dropout: the ratio is exactly 1 before the first step
    infos = []
    try:
        for k in tqdm(range(config.updates_per_round), disable=not progress, desc="PXPO refinement", leave=False):
            res = policy_gradient_step(pipe, traj, A, pairs, opt, params, method="pxpo", clip_range=config.clip_range,
                                       max_grad_norm=config.max_grad_norm, keep=keep, where=f", refinement step {k + 1}", timestep_batch=tb)
            infos.append({**summarise(res.infos), "grad_norm": res.grad_norm})
    finally:
        pipe.unet.train(was_training)
    kept = {f"{k}_last": (v if math.isfinite(v) else None) for k, v in infos[-1].items() if k.startswith("keep_kl")}
    return {
        **kept,
        "loss_first": infos[0]["loss"],
        "loss_last": infos[-1]["loss"],
        "approx_kl_last": infos[-1]["approx_kl"],
        "ratio_max_last": infos[-1]["ratio_max"],
        "grad_norm_first": infos[0]["grad_norm"],
        "updates": len(infos),
        "timesteps_used": len(steps),
    }


def _finite_or_none(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


# --------------------------------------------------------------------------------------------
# The session
# --------------------------------------------------------------------------------------------
@dataclass
class FeedbackRound:
    """One round: the map painted on ``image_before``, the update made, the regenerated image."""

    index: int
    heatmap: np.ndarray          # (H,W) float32 in [-1,1]
    image_before: np.ndarray     # (3,H,W) float32 in [0,1]
    image_after: np.ndarray      # (3,H,W)
    source: str                  # "canvas" | "synthetic" | free text
    note: str = ""
    stats: dict = field(default_factory=dict)    # change_* (see change_stats), painted pixel counts
    diagnostics: dict = field(default_factory=dict)  # of the round's update: loss, approx_kl, grad norm ... (pxpo_refine)
    seconds: float = 0.0         # wall time of the round (update + regenerate)

    @property
    def update(self) -> dict:
        """The old name of :attr:`diagnostics` (read-only): ``update`` is what a round does, not what it measured."""
        return self.diagnostics

    @property
    def change_map(self) -> np.ndarray:
        """(H,W) mean |after − before| over RGB."""
        return np.abs(self.image_after - self.image_before).mean(0)


class FeedbackSession:
    """Refine one image of ``prompt`` (sampled with ``seed``) from painted feedback, round by round.

    Args:
        pipe: the base pipeline (``load_tiny_pipeline()`` or a diffusers SD pipeline with DDIM).
            It is not modified: the session adapts a private copy of its UNet with LoRA.
        prompt: the image's prompt; seed: its seed (x_T and every step's noise).
        folder: where to save after every round (None: keep in memory only).
        config: :class:`RefineConfig`.
        overwrite: allow starting a new session in a folder that already holds one.
    """

    def __init__(self, pipe, prompt: str, seed: int = 0, folder=None, config: RefineConfig | None = None,
                 progress: bool = False, overwrite: bool = False, _restore: dict | None = None):
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be one str (one image), got {type(prompt).__name__}")
        if as_int(seed) is None:  # np.int64(3) is an int; a bool, 3.0 or "3" is not
            raise TypeError(f"seed must be an int, got {seed!r}")
        seed = as_int(seed)
        self.prompt, self.seed = prompt, seed
        self.config = config if config is not None else RefineConfig()
        if not isinstance(self.config, RefineConfig):
            raise TypeError(f"config must be a RefineConfig, got {type(self.config).__name__}")
        trainable_steps(pipe, self.config.num_steps, self.config.eta)  # ValueError now if no step could be trained
        self.progress = progress
        self.folder = Path(folder) if folder is not None else None
        self.store = SessionStore(self.folder) if self.folder is not None else None
        if self.store is not None and _restore is None and self.store.exists() and not overwrite:
            raise SessionError(
                f"{str(self.folder)!r} already holds a feedback session; continue it with "
                f"FeedbackSession.load({str(self.folder)!r}, pipe), or pass overwrite=True / another folder"
            )
        self.base_fingerprint = base_fingerprint(pipe.unet)
        self.pipe = self._private_pipe(pipe)
        targets = self.config.lora_targets or (lora_lib.TINY_TARGETS if getattr(pipe, "vae", None) is None else lora_lib.SD_TARGETS)
        dev = next(self.pipe.unet.parameters()).device
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)  # LoRA's A matrices start random: the same (prompt, seed) -> the same session
            self.lora_config = lora_lib.add_lora(self.pipe.unet, rank=self.config.lora_rank, target_modules=targets)
        self.rounds: list[FeedbackRound] = []
        if _restore is not None:
            if _restore["adapter"] is not None:  # None: no round yet, the fresh adapters (B = 0) are right
                lora_lib.load_lora_state_dict(self.pipe.unet, _restore["adapter"])
            self.rounds = _restore["rounds"]
            self.initial_image = _restore["initial_image"]
        self.params = lora_lib.lora_parameters(self.pipe.unet)  # after loading: peft may replace the tensors
        self.trajectory = self._generate()
        if _restore is None:
            self.initial_image = self.trajectory.images[0].cpu().numpy()
            if self.store is not None:  # overwrite deletes only the files a valid manifest lists
                self.store.start(self._meta(), {"image": self.initial_image}, overwrite=overwrite)
        else:
            self.store = _restore["store"]

    # -- model -----------------------------------------------------------------------------------
    @staticmethod
    def _private_pipe(pipe):
        """A shallow copy of ``pipe`` with its own UNet and scheduler (the caller's stays untouched)."""
        if lora_lib.has_lora(pipe.unet):
            raise ValueError("pipe.unet already has LoRA adapters; pass the base pipeline (e.g. a fresh load_tiny_pipeline())")
        private = copy.copy(pipe)
        object.__setattr__(private, "unet", copy.deepcopy(pipe.unet))
        object.__setattr__(private, "scheduler", copy.deepcopy(pipe.scheduler))
        return private

    def _generator(self) -> torch.Generator:
        return torch.Generator(device=next(self.pipe.unet.parameters()).device).manual_seed(self.seed)

    def _generate(self, new_heatmap=None):
        """The current image's trajectory (same seed); with ``config.composite``, only the strokes disliked so far are redrawn."""
        c = self.config
        self.pipe.unet.eval()
        if c.composite:
            if getattr(self, "_base", None) is None:
                self._base = base_trajectory(self.pipe, self.prompt, num_steps=c.num_steps, eta=c.eta,
                                             guidance_scale=c.guidance_scale, generator=self._generator())
            maps = [r.heatmap for r in self.rounds] + ([] if new_heatmap is None else [new_heatmap])
            mask = regenerate_mask(maps, tuple(self._base.latents.shape[-2:]), c.redraw_ramp, c.redraw_liked)
            if mask is not None:
                return sample_composite(self.pipe, self._base, mask, self._generator())
        return sample(self.pipe, [self.prompt], num_steps=c.num_steps, eta=c.eta, guidance_scale=c.guidance_scale,
                      generator=self._generator(), progress=False)

    @property
    def image(self) -> torch.Tensor:
        """The current image (3,H,W) in [0,1]: the one to give feedback on next."""
        return self.trajectory.images[0].detach().cpu()

    @property
    def images(self) -> list[np.ndarray]:
        """The initial image and the image after each round."""
        return [self.initial_image] + [r.image_after for r in self.rounds]

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The LoRA weights now (everything the updates changed)."""
        return lora_lib.lora_state_dict(self.pipe.unet)

    # -- one round -------------------------------------------------------------------------------
    def step(self, heatmap, source: str = "canvas", note: str = "") -> FeedbackRound | None:
        """One round: PXPO on the current image's trajectory with advantages from ``heatmap``,
        regenerate with the same seed, measure, save. Returns the round, or None (and makes no
        update) when nothing was painted."""
        image = self.image
        H, W = image.shape[1:]
        heat = check_heatmap(heatmap, (H, W))
        if not np.any(heat):
            print("Nothing was painted (the heatmap is all zeros): no update made. Paint some pixels "
                  "(or use synthetic feedback) and run the round again.")
            return None
        t0 = time.perf_counter()
        c = self.config
        warn_if_whole_image(heat, kept_liked=c.keep_beta > 0 and c.keep_liked)  # the round runs, but says what it means
        sample_size = tuple(self.trajectory.log_probs.shape[-2:])
        A = heatmap_to_advantages(heat, sample_size, c.advantage_scale, c.dislike_scale, c.dislike_area)
        w = keep_weights_from_heatmap(heat, sample_size, keep_liked=c.keep_liked, ramp=c.keep_ramp) if c.keep_beta > 0 else None
        before = image.numpy()
        diagnostics, updates = None, 0
        while True:  # one chunk of updates_per_round steps; with target_change more on the same trajectory
            d = pxpo_refine(self.pipe, self.trajectory, A, self.params, c, progress=self.progress, keep_map=w)
            updates += d["updates"]
            diagnostics = d if diagnostics is None else {**diagnostics, **{k: v for k, v in d.items() if k.endswith("_last")}}
            trajectory = self._generate(new_heatmap=heat)
            stats = change_stats(before, trajectory.images[0].detach().cpu().numpy(), heat)
            # until the disliked pixels visibly change (NaN, nothing disliked: one chunk) or the budget is spent
            if not (c.target_change is not None and stats["change_disliked"] < c.target_change
                    and updates + c.updates_per_round <= c.max_updates_per_round):
                break
        diagnostics["updates"] = updates
        self.trajectory = trajectory
        after = self.image.numpy()
        seconds = time.perf_counter() - t0
        stats.update(liked_pixels=int((heat > 0).sum()), disliked_pixels=int((heat < 0).sum()))
        rnd = FeedbackRound(index=len(self.rounds) + 1, heatmap=heat, image_before=before, image_after=after,
                            source=source, note=note, stats=stats, diagnostics=diagnostics, seconds=seconds)
        self.rounds.append(rnd)
        if self.folder is not None:
            self._save_round(rnd)
        return rnd

    def summary(self) -> list[dict]:
        """One row per round: source, painted pixels, change inside/outside, optimiser steps, seconds."""
        return [{"round": r.index, "source": r.source, **r.stats, "updates": r.diagnostics.get("updates"), "seconds": r.seconds,
                 "loss": r.diagnostics.get("loss_first")}
                for r in self.rounds]

    # -- saving ----------------------------------------------------------------------------------
    def _meta(self) -> dict:
        """What the session folder records besides its files: prompt, seed, config, LoRA, base model."""
        cfg = asdict(self.config)
        cfg["lora_targets"] = list(cfg["lora_targets"]) if cfg["lora_targets"] else None
        return {
            "prompt": self.prompt,
            "seed": self.seed,
            "config": cfg,
            "lora": {"rank": self.lora_config.r, "alpha": self.lora_config.lora_alpha,
                     "target_modules": sorted(self.lora_config.target_modules)},
            "base_fingerprint": self.base_fingerprint,
        }

    def _save_round(self, r: FeedbackRound) -> None:
        self.store.save_round(
            r.index, {"heatmap": r.heatmap, "image_before": r.image_before, "image": r.image_after}, self.adapter_state(),
            {"source": r.source, "note": r.note, "stats": _finite_or_none(r.stats), "diagnostics": _finite_or_none(r.diagnostics),
             "seconds": r.seconds},
        )

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, folder, pipe, progress: bool = False, check_image: bool = True) -> "FeedbackSession":
        """Reload a saved session onto ``pipe`` (the same base pipeline it was made with) and continue.

        Every file is checked against the SHA-256 the manifest holds (:mod:`pxpo_lite.session_store`);
        raises :class:`SessionError` (a ValueError) naming the file, or FileNotFoundError, when the
        folder is missing, half-written, altered, or belongs to another model.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"feedback session folder {str(folder)!r} does not exist; start one with FeedbackSession(pipe, prompt, seed, folder=...)")
        store = SessionStore(folder)
        saved = store.load()
        m = saved.meta
        try:
            fp = base_fingerprint(pipe.unet)
            if fp != m["base_fingerprint"]:
                raise SessionError(
                    f"session {str(folder)!r} was made with another base model (fingerprint {m['base_fingerprint']}, this pipe "
                    f"has {fp}); load it with the pipeline it was made with"
                )
            config = RefineConfig.from_dict({**m["config"], "lora_targets": tuple(m["lora"]["target_modules"])})
            config.lora_rank = m["lora"]["rank"]
            rounds = [
                FeedbackRound(index=r.index, heatmap=r.arrays["heatmap"], image_before=r.arrays["image_before"],
                              image_after=r.arrays["image"], source=r.info["source"], note=r.info.get("note", ""),
                              stats={k: (float("nan") if v is None else v) for k, v in r.info["stats"].items()},
                              diagnostics=r.info["diagnostics" if "diagnostics" in r.info else "update"],  # "update": saved before
                              seconds=r.info["seconds"])
                for r in saved.rounds
            ]
            prompt, seed = m["prompt"], m["seed"]
            if isinstance(seed, bool) or not isinstance(seed, int) or not isinstance(prompt, str):
                raise TypeError(f"'seed' must be an int and 'prompt' a str, got seed={seed!r}, prompt={prompt!r}")
        except (KeyError, TypeError, IndexError, AttributeError) as e:
            raise SessionError(f"{str(store.manifest_path)!r} is incomplete or malformed ({type(e).__name__}: {e}); "
                               "the session cannot be read") from e
        restore = {"rounds": rounds, "initial_image": saved.initial["image"], "adapter": saved.adapter, "store": store}
        s = cls(pipe, prompt, seed, folder, config, progress, _restore=restore)
        if check_image:
            want = rounds[-1].image_after if rounds else saved.initial["image"]
            got = s.image.numpy()
            if np.abs(got - want).max() > 1e-3:
                raise SessionError(
                    f"the reloaded model regenerates a different image than the one saved (max |Δ| = "
                    f"{np.abs(got - want).max():.3g}): the base model or library version differs from the session's, or "
                    f"{str(store.manifest_path)!r} was edited (its prompt, seed or config.num_steps)"
                )
        return s

    def __repr__(self) -> str:
        return f"FeedbackSession({self.prompt!r}, seed={self.seed}, rounds={len(self.rounds)}, folder={str(self.folder) if self.folder else None!r})"
