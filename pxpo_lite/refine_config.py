"""Every knob of single-image refinement from painted feedback in one dataclass, and its defaults.

:class:`RefineConfig` lists one field per line with its default and meaning, each number checked
and stored as a Python int/float when it is made (a bool or a str is refused, naming the field);
:meth:`RefineConfig.from_dict` reads the config of a saved session, older ones included.
:data:`KEEP_BETA`, :data:`KEEP_RAMP`, :data:`DISLIKE_SCALE`, :data:`REDRAW_RAMP`, :data:`DISLIKE_AREA` and :data:`TARGET_CHANGE`
are the measured defaults. :mod:`pxpo_lite.feedback` (the session) re-exports all six; :mod:`pxpo_lite.train_config` is
the trainer's counterpart.

Introduced in ``notebooks/06_human_feedback_canvas.ipynb``.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config_checks import check_bool, check_number, check_positive_int
from .keep_ramp import check_ramp

__all__ = ["DISLIKE_AREA", "DISLIKE_SCALE", "KEEP_BETA", "KEEP_RAMP", "REDRAW_RAMP", "RefineConfig", "TARGET_CHANGE"]

#: RefineConfig's default β of the keep term, chosen by benchmarks/bench_localised_feedback.py (the credit
#: benchmark's global β is another: experiments.CREDIT_KEEP_BETA)
KEEP_BETA = 10.0
#: RefineConfig's default keep ramp (pixels) and disliked-advantage scale, chosen by the same benchmark
KEEP_RAMP: float | None = 4.0
DISLIKE_SCALE = 3.0
#: RefineConfig's default band of the composite (pixels outside a disliked stroke that are redrawn, blending) and
#: redraw_liked=False: chosen on the selection seeds 20-21 over the keep ramp's 4 px and redrawing liked pixels
#: (benchmarks/results/localised_feedback_redraw_select.json)
REDRAW_RAMP: float | None = 2.0
#: RefineConfig's default dislike_area: strokes under 30 % of the image are pulled as hard as one of 30 %
#: (chosen on the selection seeds 20-21 over 0.15 and off; benchmarks/results/localised_feedback_area_select.json;
#: with target_change, 0.15 had lower seams on the same seeds, localised_feedback_area_target_select.json, but a mixed
#: report on seeds 0-2, localised_feedback_rules_area015.json; not re-measured with the 2-pixel band)
DISLIKE_AREA: float | None = 0.3
#: RefineConfig's default target_change: a round updates (up to max_updates_per_round steps) until the disliked
#: pixels' mean |Δ| from the image painted on reaches 0.15 (chosen on the selection seeds 20-21 over 0.2 and off;
#: benchmarks/results/localised_feedback_target_select.json)
TARGET_CHANGE: float | None = 0.15


@dataclass
class RefineConfig:
    """Hyper-parameters of single-image refinement (one line each; defaults measured on the tiny model)."""

    num_steps: int = 20            # T, DDIM steps of the image's trajectory
    eta: float = 1.0               # DDIM η in (0, 1] (> 0: a stochastic policy with log-probs)
    guidance_scale: float | None = None  # None: the pipeline's default
    learning_rate: float = 4e-3    # AdamW on the LoRA adapters (a fresh optimiser each round); chosen with the composite below
    updates_per_round: int = 4     # optimiser steps on the one trajectory per round
    clip_range: float | None = None  # None: score-function PXPO (the paper); a float: element-wise PPO clip
    advantage_scale: float = 1.0   # A = advantage_scale · painted value
    max_grad_norm: float | None = 1.0  # gradient-norm clip (None: no clipping)
    lora_rank: int = 4
    lora_targets: tuple[str, ...] | None = None  # None: lora.TINY_TARGETS for pixel models, SD_TARGETS for SD
    keep_beta: float = KEEP_BETA   # β of the per-pixel keep term (keep.Keep): unpainted pixels stay as they were; 0: off
    keep_liked: bool = True        # True: liked pixels are kept too (w = 1 there); False: only unpainted pixels are kept
    keep_ramp: float | None = KEEP_RAMP  # pixels: keep weight 0 in a disliked stroke, rising to 1 this far outside it (keep_ramp.py); None: a hard edge
    dislike_scale: float = DISLIKE_SCALE  # disliked pixels' advantages × this (liked ones × 1)
    dislike_area: float | None = DISLIKE_AREA  # a fraction: strokes smaller than this get disliked advantages × (this ÷ their area), ≤ 10 (painted.area_gain); None: off
    composite: bool = True         # True: redraw only the strokes disliked so far (+ ramp), every other pixel stays the first image's (composite.py)
    redraw_ramp: float | None = REDRAW_RAMP  # with composite: the redrawn region blends over this many pixels outside a disliked stroke; None: a hard edge
    redraw_liked: bool = False     # with composite: False: liked pixels stay the first image's, even in that band; True: the band may redraw them
    target_change: float | None = TARGET_CHANGE  # a round keeps updating until the disliked pixels' mean |Δ| from the image painted on reaches this (None: a fixed round)
    max_updates_per_round: int = 12  # with target_change: at most this many optimiser steps in one round (in chunks of updates_per_round)
    timestep_batch: int | None = None  # timesteps scored per UNet forward (same result to float rounding); None: update.resolve_timestep_batch

    #: names used by sessions saved before the rename; :meth:`from_dict` maps/ignores them
    LEGACY = {"lr": "learning_rate", "min_sigma": None}

    def __post_init__(self):
        if self.lora_targets is not None:
            self.lora_targets = tuple(self.lora_targets)
        # each number is stored as a Python int/float: np.float32(1e-3), np.int64(4) or a 0-d tensor is accepted
        # (and the saved manifest stays plain JSON); a bool or a str is refused, naming the field
        for name in ("num_steps", "updates_per_round", "lora_rank"):
            setattr(self, name, check_positive_int(f"RefineConfig.{name}", getattr(self, name)))
        for name, bounds in (("eta", dict(above=0, at_most=1)), ("guidance_scale", dict(at_least=0, optional=True)),
                             ("learning_rate", dict(above=0)), ("clip_range", dict(above=0, optional=True)),
                             ("advantage_scale", dict(above=0)), ("max_grad_norm", dict(above=0, optional=True)),
                             ("keep_beta", dict(at_least=0)), ("dislike_scale", dict(above=0))):
            setattr(self, name, check_number(f"RefineConfig.{name}", getattr(self, name), **bounds))
        check_bool("RefineConfig.keep_liked", self.keep_liked)
        check_bool("RefineConfig.composite", self.composite)
        check_bool("RefineConfig.redraw_liked", self.redraw_liked)
        self.redraw_ramp = check_ramp(self.redraw_ramp, "RefineConfig.redraw_ramp")
        self.dislike_area = check_number("RefineConfig.dislike_area", self.dislike_area, above=0, at_most=1, optional=True)
        self.keep_ramp = check_ramp(self.keep_ramp, "RefineConfig.keep_ramp")
        self.timestep_batch = check_positive_int("RefineConfig.timestep_batch", self.timestep_batch, optional=True)
        self.target_change = check_number("RefineConfig.target_change", self.target_change, above=0, at_most=1, optional=True)
        self.max_updates_per_round = check_positive_int("RefineConfig.max_updates_per_round", self.max_updates_per_round)
        if self.max_updates_per_round < self.updates_per_round:
            raise ValueError(f"RefineConfig.max_updates_per_round ({self.max_updates_per_round}) is below updates_per_round "
                             f"({self.updates_per_round}): a round always makes updates_per_round steps; raise it or lower updates_per_round")

    @classmethod
    def from_dict(cls, d: dict) -> "RefineConfig":
        """A config from a saved manifest's dict (older names: ``lr`` -> ``learning_rate``; ``min_sigma`` dropped;
        a session saved before the keep term existed continues without it: ``keep_beta`` 0)."""
        d = dict(d)
        d.setdefault("keep_beta", 0.0)
        d.setdefault("keep_ramp", None)  # sessions saved before the ramp continue as they were made
        d.setdefault("dislike_scale", 1.0)
        d.setdefault("composite", False)
        d.setdefault("redraw_ramp", d.get("keep_ramp"))  # sessions saved before: the composite's band was the keep ramp
        d.setdefault("redraw_liked", True)
        d.setdefault("dislike_area", None)
        d.setdefault("target_change", None)  # sessions saved before the adaptive round continue with fixed rounds
        for old, new in cls.LEGACY.items():
            if old in d:
                value = d.pop(old)
                if new is not None:
                    d.setdefault(new, value)
        return cls(**d)
