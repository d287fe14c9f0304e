"""The bad-input table: every kind of bad input we tried, the exception it raises and its message.

Each entry of ``BAD_INPUTS`` is ``BadInput(module, name, call, exc, match)``: ``call()`` must raise
``exc`` (or a subclass) with a message matching the regex ``match`` (``re.search``). A good
message names the argument, what was given, and what to do.

**Adding a case**: append one ``BadInput(...)`` to ``BAD_INPUTS`` (near its module's others); use
the cached ``_pipe()`` / ``_scheduler()`` / ``_lp()`` helpers so the table stays fast (no UNet
call, no sampling). Only add a case for behaviour that already raises a clear error.

**The documentation table** ``docs/bad_inputs.md`` (input → exception → message, with the
*actual* messages) is written from this same list::

    .venv/bin/python scripts/bad_inputs_table.py            # writes docs/bad_inputs.md

Re-run it after adding cases or changing a message; ``test_doc_lists_every_case`` fails while a
case is missing from the doc.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest
import torch

from pxpo_lite import advantages, ddim, losses, pixelwise, rewards, sampling, world

torch.set_num_threads(1)

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md"


class BadInput(NamedTuple):
    module: str  # where the check lives (pxpo_lite.<module>)
    name: str  # the bad input, in words (unique)
    call: Callable[[], object]  # raises
    exc: type  # expected exception type
    match: str  # regex the message must match


# --------------------------------------------------------------------------------------------
# Cheap shared objects (built once, on first use)
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _pipe():
    """A randomly initialised tiny pipeline (no weights read): bad inputs fail before any UNet call."""
    import pxpo_lite

    return pxpo_lite.build_tiny_pipeline(seed=0)


@functools.lru_cache(maxsize=None)
def _scheduler(steps: int = 10):
    from pxpo_lite.models import build_scheduler

    s = build_scheduler()
    s.set_timesteps(steps)
    return s


def _x(shape=(1, 3, 4, 4)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def _lp(B=2, C=3, h=4, w=4):
    return torch.zeros(B, C, h, w)


def _step(**kw):
    s = _scheduler()
    args = dict(scheduler=s, model_output=_x(), timestep=s.timesteps[0], sample=_x(), eta=1.0)
    args.update(kw)
    return ddim.ddim_step_logprob(args.pop("scheduler"), args.pop("model_output"), args.pop("timestep"),
                                  args.pop("sample"), **args)


def _sample(**kw):
    args = dict(prompts=["a portrait"], num_steps=2, progress=False)
    args.update(kw)
    return sampling.sample(_pipe(), args.pop("prompts"), **args)


@functools.lru_cache(maxsize=None)
def _traj():
    return _sample(prompts=["a portrait", "a bald portrait"], generator=torch.Generator().manual_seed(0))


def _images(B=2, H=8):
    return torch.rand(B, 3, H, H, generator=torch.Generator().manual_seed(0))


def _with(t: torch.Tensor, index, value) -> torch.Tensor:
    t = t.clone()
    t[index] = value
    return t


def _ddpm_scheduler():
    from diffusers import DDPMScheduler

    s = DDPMScheduler()
    s.set_timesteps(10)
    return s


def _unset_scheduler():
    from pxpo_lite.models import build_scheduler

    return build_scheduler()


def _non_ddim_pipe():
    from diffusers import EulerDiscreteScheduler

    import pxpo_lite

    p = pxpo_lite.build_tiny_pipeline(seed=0)
    p.scheduler = EulerDiscreteScheduler.from_config(p.scheduler.config)
    return p


NAN, INF = float("nan"), float("inf")

# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------
BAD_INPUTS: list[BadInput] = [
    # ---- ddim: one DDIM step as a Gaussian policy ----
    BadInput("ddim", "eta = 0 (deterministic DDIM)", lambda: _step(eta=0.0), ValueError, r"eta must be a number in \(0, 1\], got 0\.0"),
    BadInput("ddim", "eta > 1", lambda: _step(eta=1.2), ValueError, r"eta must be a number in \(0, 1\], got 1\.2.*square root of a negative"),
    BadInput("ddim", "eta = NaN", lambda: _step(eta=NAN), ValueError, r"eta must be a number in \(0, 1\], got nan"),
    BadInput("ddim", "eta = True (bool)", lambda: _step(eta=True), ValueError, r"eta must be a number in \(0, 1\], got True"),
    BadInput("ddim", "integer sample x_t", lambda: _step(sample=torch.zeros(1, 3, 4, 4, dtype=torch.int64)), TypeError,
             r"sample must be a floating-point tensor .*int64.*truncate"),
    BadInput("ddim", "integer prev_sample", lambda: _step(prev_sample=torch.zeros(1, 3, 4, 4, dtype=torch.int32)), TypeError,
             r"prev_sample must be a floating-point tensor"),
    BadInput("ddim", "model_output of another shape", lambda: _step(model_output=_x((1, 3, 8, 8))), ValueError,
             r"model_output has shape \(1, 3, 8, 8\) but sample has shape \(1, 3, 4, 4\)"),
    BadInput("ddim", "prev_sample of another shape", lambda: _step(prev_sample=_x((2, 3, 4, 4))), ValueError,
             r"prev_sample has shape \(2, 3, 4, 4\) but sample has shape"),
    BadInput("ddim", "timestep not in the schedule", lambda: _step(timestep=5), ValueError,
             r"timestep 5 is not in the scheduler's schedule"),
    BadInput("ddim", "timestep 2.5 (not an int)", lambda: _step(timestep=2.5), TypeError, r"timestep must be an int"),
    BadInput("ddim", "timestep tensor of several steps", lambda: _step(timestep=torch.tensor([1, 2])), ValueError,
             r"timestep must be a single step"),
    BadInput("ddim", "a DDPMScheduler instead of DDIM", lambda: _step(scheduler=_ddpm_scheduler(), timestep=900), TypeError,
             r"scheduler must be a diffusers DDIMScheduler, got DDPMScheduler"),
    BadInput("ddim", "scheduler before set_timesteps", lambda: _step(scheduler=_unset_scheduler()), ValueError,
             r"scheduler has no timesteps yet.*set_timesteps"),
    BadInput("ddim", "both generator and variance_noise", lambda: _step(generator=torch.Generator(), variance_noise=_x()),
             ValueError, r"pass either generator or variance_noise, not both"),
    BadInput("ddim", "sigma_min = 0", lambda: _step(sigma_min=0.0), ValueError, r"sigma_min must be a finite number > 0"),
    BadInput("ddim", "trainable_step_indices with eta = 0",
             lambda: ddim.trainable_step_indices(_scheduler(), _scheduler().timesteps, 0.0), ValueError, r"eta must be a number in \(0, 1\]"),
    # ---- sampling: trajectories ----
    BadInput("sampling", "sample with eta > 1", lambda: _sample(eta=1.5), ValueError, r"eta must be a number in \(0, 1\], got 1\.5"),
    BadInput("sampling", "num_steps = 0", lambda: _sample(num_steps=0), ValueError, r"num_steps must be an int >= 1, got 0"),
    BadInput("sampling", "num_steps = 2.5", lambda: _sample(num_steps=2.5), ValueError, r"num_steps must be an int >= 1, got 2\.5"),
    BadInput("sampling", "guidance_scale = inf", lambda: _sample(guidance_scale=INF), ValueError,
             r"guidance_scale must be a finite number >= 0.*got inf"),
    BadInput("sampling", "guidance_scale < 0", lambda: _sample(guidance_scale=-1.0), ValueError,
             r"guidance_scale must be a finite number >= 0.*got -1\.0"),
    BadInput("sampling", "guidance_scale = True (bool)", lambda: _sample(guidance_scale=True), ValueError,
             r"guidance_scale must be a finite number >= 0.*got True"),
    BadInput("sampling", "latents of the wrong spatial size", lambda: _sample(latents=torch.zeros(1, 3, 16, 16)), ValueError,
             r"latents must be x_T of shape \(1, 3, 32, 32\).*got \(1, 3, 16, 16\)"),
    BadInput("sampling", "latents with the wrong channels", lambda: _sample(latents=torch.zeros(1, 4, 32, 32)), ValueError,
             r"latents must be x_T of shape \(1, 3, 32, 32\).*got \(1, 4, 32, 32\)"),
    BadInput("sampling", "latents for another batch size", lambda: _sample(latents=torch.zeros(2, 3, 32, 32)), ValueError,
             r"latents must be x_T of shape \(1, 3, 32, 32\) \(B=len\(prompts\)"),
    BadInput("sampling", "integer latents", lambda: _sample(latents=torch.zeros(1, 3, 32, 32, dtype=torch.int64)), TypeError,
             r"latents must be a floating-point tensor.*int64"),
    BadInput("sampling", "empty prompt list", lambda: _sample(prompts=[]), ValueError, r"prompt must be a str or a non-empty list of str, got \[\]"),
    BadInput("sampling", "batch_size = 0", lambda: _sample(batch_size=0), ValueError,
             r"batch_size must be None \(all prompts at once\) or an int >= 1, got 0"),
    BadInput("sampling", "pipe.scheduler is not DDIM", lambda: sampling.sample(_non_ddim_pipe(), ["a portrait"], progress=False),
             TypeError, r"pipe.scheduler must be a diffusers DDIMScheduler, got EulerDiscreteScheduler"),
    BadInput("sampling", "step_index past the last step", lambda: sampling.step_log_prob(_pipe(), _traj(), 2), ValueError,
             r"step_index must be an int in \[0, 2\) \(the trajectory has T=2 steps\), got 2"),
    BadInput("sampling", "sample index out of range", lambda: _traj().select([5]), IndexError,
             r"idx \[5\] out of range for a trajectory of 2 samples"),
    BadInput("sampling", "Trajectory.cat of nothing", lambda: sampling.Trajectory.cat([]), ValueError,
             r"trajectories must be a non-empty list"),
    # ---- rewards ----
    BadInput("rewards", "images with a NaN", lambda: rewards.colour_reward_map(_with(_images(), (1, 0, 0, 0), NAN)), ValueError,
             r"images has NaN/inf values in image\(s\) \[1\]"),
    BadInput("rewards", "all-NaN image to jpeg_compressibility", lambda: rewards.jpeg_compressibility(torch.full((1, 3, 8, 8), NAN)),
             ValueError, r"images has NaN/inf values in image\(s\) \[0\]"),
    BadInput("rewards", "images (B,H,W) without channels", lambda: rewards.blue_reward(torch.rand(2, 8, 8)), ValueError,
             r"images must be \(B,3,H,W\) in \[0,1\], got shape \(2, 8, 8\)"),
    BadInput("rewards", "uint8 images", lambda: rewards.blue_reward(torch.zeros(1, 3, 8, 8, dtype=torch.uint8)), TypeError,
             r"images must be float in \[0,1\], got dtype torch.uint8.*float\(\) / 255"),
    BadInput("rewards", "images in [-1,1]", lambda: rewards.blue_reward(_images() * 2 - 1), ValueError,
             r"images must be in \[0,1\].*x / 2 \+ 0\.5"),
    BadInput("rewards", "fewer prompts than images", lambda: rewards.blue_reward(_images(3), ["a", "b"]), ValueError,
             r"got 3 images but 2 prompts"),
    BadInput("rewards", "reward of the wrong shape", lambda: rewards.check_reward(torch.zeros(2, 4, 4), _images(), kind="map"),
             ValueError, r"reward has shape \(2, 4, 4\) but images are \(2, 3, 8, 8\); expected \(2, 8, 8\)"),
    BadInput("rewards", "reward with a NaN", lambda: rewards.check_reward(torch.tensor([0.0, NAN]), _images()), ValueError,
             r"reward has NaN/inf for sample\(s\) \[1\]"),
    BadInput("rewards", "reward 1e39 (too large for float32)",
             lambda: rewards.check_reward(torch.tensor([1e39, 0.0], dtype=torch.float64), _images()), ValueError,
             r"reward is too large for sample\(s\) \[0\].*overflows float32"),
    BadInput("rewards", "empty reward batch", lambda: rewards.check_reward(torch.zeros(0), _images(0)), ValueError,
             r"reward is empty \(0 samples\)"),
    BadInput("rewards", "reward as a list", lambda: rewards.check_reward([0.0, 1.0], _images()), TypeError,
             r"reward must be a torch.Tensor \(B,\) or \(B,H,W\), got list"),
    BadInput("rewards", "unknown reward name", lambda: rewards.get_reward("bleu"), ValueError,
             r"unknown reward 'bleu'; choose one of \["),
    # ---- losses ----
    BadInput("losses", "clip_range = True", lambda: losses.ddpo_loss(_lp(), _lp(), torch.zeros(2), clip_range=True), ValueError,
             r"clip_range must be None \(score-function loss\) or a finite number > 0.*got True"),
    BadInput("losses", "clip_range = inf", lambda: losses.pxpo_loss(_lp(), _lp(), torch.zeros(2, 4, 4), clip_range=INF), ValueError,
             r"clip_range must be None .* got inf"),
    BadInput("losses", "empty batch", lambda: losses.pxpo_loss(_lp(B=0), _lp(B=0), torch.zeros(0, 4, 4)), ValueError,
             r"log_prob is an empty batch"),
    BadInput("losses", "one advantage too few", lambda: losses.ddpo_loss(_lp(), _lp(), torch.zeros(1)), ValueError,
             r"advantages must have shape \(2,\) \(one advantage per sample\), got \(1,\)"),
    BadInput("losses", "advantage map at image resolution", lambda: losses.pxpo_loss(_lp(), _lp(), torch.zeros(2, 32, 32)), ValueError,
             r"advantage_map must have shape \(2, 4, 4\).*to_sample_grid"),
    BadInput("losses", "old_log_prob of another shape", lambda: losses.ddpo_loss(_lp(), _lp(B=1), torch.zeros(2)), ValueError,
             r"old_log_prob must have log_prob's shape \(2, 3, 4, 4\)"),
    BadInput("losses", "log_prob (B,T,C,h,w) of all steps", lambda: losses.ddpo_loss(torch.zeros(2, 5, 3, 4, 4), _lp(), torch.zeros(2)),
             ValueError, r"log_prob must be per-element log-probs \(B,C,h,w\) of one timestep"),
    BadInput("losses", "log_prob with a NaN", lambda: losses.ddpo_loss(_with(_lp(), (1, 0, 0, 0), NAN), _lp(), torch.zeros(2)),
             losses.NonFiniteError, r"log_prob has NaN/inf for sample\(s\) \[1\]"),
    # ---- advantages ----
    BadInput("advantages", "empty rewards", lambda: advantages.scalar_advantages(torch.zeros(0), []), ValueError,
             r"rewards is empty \(0 samples\)"),
    BadInput("advantages", "reward 1e39 in a list", lambda: advantages.scalar_advantages([1e39, 0.0], ["a", "b"]), ValueError,
             r"rewards is too large for sample 0 \(prompt 'a'\).*overflows float32"),
    BadInput("advantages", "a NaN reward", lambda: advantages.scalar_advantages(torch.tensor([0.0, NAN]), ["a", "b"]), ValueError,
             r"rewards has NaN/inf for sample 1 \(prompt 'b'\)"),
    BadInput("advantages", "more rewards than prompts", lambda: advantages.scalar_advantages(torch.zeros(3), ["a", "b"]), ValueError,
             r"got 3 rewards but 2 prompts"),
    BadInput("advantages", "(B,H) rewards", lambda: advantages.PerPromptStatTracker().update(["a", "b"], torch.zeros(2, 3)), ValueError,
             r"rewards must be \(B,\) scalars or \(B,H,W\) maps, got shape \(2, 3\)"),
    BadInput("advantages", "prompts as one str", lambda: advantages.PerPromptStatTracker().update("ab", torch.zeros(2)), TypeError,
             r"prompts must be a list of str"),
    BadInput("advantages", "maps to scalar_advantages", lambda: advantages.scalar_advantages(torch.zeros(2, 3, 3), ["a", "b"]),
             ValueError, r"rewards must be \(B,\) for scalar advantages.*pixel_advantages"),
    BadInput("advantages", "clip_max = 0", lambda: advantages.clip_advantages(torch.zeros(2), 0), ValueError,
             r"clip_max must be a positive number"),
    BadInput("advantages", "min_count > buffer_size", lambda: advantages.PerPromptStatTracker(buffer_size=4, min_count=8), ValueError,
             r"min_count=8 > buffer_size=4"),
    BadInput("advantages", "rel_tol < 0", lambda: advantages.PerPromptStatTracker(rel_tol=-1.0), ValueError,
             r"rel_tol must be a finite number >= 0, got -1\.0"),
    # ---- pixelwise ----
    BadInput("pixelwise", "reward map of another aspect ratio", lambda: pixelwise.to_sample_grid(torch.zeros(1, 32, 32), (4, 8)),
             ValueError, r"reward_map is 32×32 but the sample grid is 4×8: the aspect ratios differ"),
    BadInput("pixelwise", "reward map (H,W) without batch", lambda: pixelwise.to_sample_grid(torch.zeros(32, 32), (4, 4)), ValueError,
             r"reward_map must have shape \(B,H,W\)"),
    BadInput("pixelwise", "reward map of another batch", lambda: pixelwise.to_sample_grid(torch.zeros(2, 8, 8), (4, 4), batch_size=3),
             ValueError, r"reward_map has batch 2 but the log-probs have batch 3"),
    BadInput("pixelwise", "reward map as a NumPy array", lambda: pixelwise.to_sample_grid(np.zeros((1, 8, 8)), (4, 4)), TypeError,
             r"reward_map must be a torch.Tensor \(B,H,W\), got ndarray"),
    BadInput("pixelwise", "grid size 0", lambda: pixelwise.to_sample_grid(torch.zeros(1, 8, 8), (0, 0)), ValueError,
             r"size must be the sample grid \(h, w\) of positive ints"),
    BadInput("pixelwise", "reward map with an inf", lambda: pixelwise.check_reward_map(_with(torch.zeros(2, 8, 8), (0, 1, 2), INF), _images()),
             ValueError, r"reward_map has 1 NaN/inf values \(first at \(b, i, j\) = \(0, 1, 2\)\)"),
    BadInput("pixelwise", "reward map not at image size", lambda: pixelwise.check_reward_map(torch.zeros(2, 4, 4), _images()), ValueError,
             r"reward_map has shape \(2, 4, 4\) but the images \(2, 3, 8, 8\) need \(2, 8, 8\)"),
    BadInput("pixelwise", "surrogate map off the sample grid", lambda: pixelwise.pxpo_surrogate(_lp(), torch.zeros(2, 8, 8)), ValueError,
             r"reward_map must have shape \(2, 4, 4\).*to_sample_grid"),
    BadInput("pixelwise", "log-probs (h,w) without channels", lambda: pixelwise.per_pixel(torch.zeros(4, 4)), ValueError,
             r"log_probs must have shape \(\.\.\.,C,h,w\)"),
    # ---- other modules: current behaviour that already raises a clear error ----
    BadInput("checkpoint", "missing checkpoint folder",
             lambda: __import__("pxpo_lite.checkpoint", fromlist=["load_checkpoint"]).load_checkpoint("/nonexistent/pxpo-ckpt"),
             FileNotFoundError, r"checkpoint '/nonexistent/pxpo-ckpt' does not exist"),
    BadInput("models", "missing weights folder",
             lambda: __import__("pxpo_lite.models", fromlist=["load_tiny_pipeline"]).load_tiny_pipeline(path="/nonexistent/weights"),
             FileNotFoundError, r"weights folder '/nonexistent/weights' does not exist"),
    BadInput("world", "prompt outside the caption grammar", lambda: world.parse_prompt("a cat"), ValueError,
             r"prompt 'a cat' does not follow the world's caption grammar"),
    BadInput("world", "unknown colour in a prompt",
             lambda: world.parse_prompt("a portrait with long teal hair and a red shirt on a blue background"), ValueError,
             r"unknown hair colour 'teal'"),
    BadInput("world", "render n = 0", lambda: world.render(0, seed=0), ValueError, r"n must be a positive int, got 0"),
    BadInput("world", "negative seed", lambda: world.render(1, seed=-1), ValueError, r"seed must be >= 0, got -1"),
    BadInput("canvas", "heatmap with a NaN",
             lambda: __import__("pxpo_lite.canvas", fromlist=["check_heatmap"]).check_heatmap(np.full((8, 8), np.nan), (8, 8)),
             ValueError, r"heatmap contains 64 NaN/inf value\(s\)"),
    BadInput("canvas", "heatmap of the wrong size",
             lambda: __import__("pxpo_lite.canvas", fromlist=["check_heatmap"]).check_heatmap(np.zeros((4, 4)), (8, 8)),
             ValueError, r"heatmap must have the image's size \(8, 8\) \(H,W\), got shape \(4, 4\)"),
    BadInput("canvas", "heatmap outside [-1,1]",
             lambda: __import__("pxpo_lite.canvas", fromlist=["check_heatmap"]).check_heatmap(np.full((8, 8), 3.0), (8, 8)),
             ValueError, r"heatmap values must lie in \[-1,1\]"),
    BadInput("canvas", "a complex heatmap",
             lambda: __import__("pxpo_lite.canvas", fromlist=["check_heatmap"]).check_heatmap(np.zeros((8, 8), complex), (8, 8)),
             TypeError, r"heatmap must hold real numbers .*got dtype complex128"),
    BadInput("canvas", "a heatmap tensor on the meta device",
             lambda: __import__("pxpo_lite.canvas", fromlist=["check_heatmap"]).check_heatmap(torch.zeros(8, 8, device="meta"), (8, 8)),
             TypeError, r"heatmap must hold real numbers in memory, got a meta-device tensor"),
    BadInput("canvas", "NaN in the canvas's heatmap_data (null from the browser)", lambda: _canvas_map([None] * 64),
             __import__("traitlets").TraitError, r"64 value\(s\) that are not finite numbers.*None from the browser.*previous map is kept"),
    BadInput("canvas", "heatmap_data painted on an image of another size", lambda: _canvas_map([0.5] * 16),
             __import__("traitlets").TraitError, r"has 16 values but the image is 8×8 = 64 pixels.*previous map is kept"),
]


def _canvas_map(data):
    from pxpo_lite.canvas import HeatmapCanvas

    HeatmapCanvas(np.zeros((3, 8, 8), np.float32)).heatmap_data = data


def _meta_pipe():
    import copy

    p = copy.copy(_pipe())
    p.unet = copy.deepcopy(_pipe().unet).to("meta")
    return p


def _keep_self_reference():
    from pxpo_lite.update import Keep, policy_gradient_step

    pipe = _pipe()
    params = [q for q in pipe.unet.parameters() if q.requires_grad]
    return policy_gradient_step(pipe, _traj(), torch.zeros(2), [(torch.arange(2), 0)], torch.optim.SGD(params, lr=0.0), params,
                                method="ddpo", keep=Keep(1.0, None, pipe.unet))


def _in_tmp(fn):
    """Run ``fn(folder)`` in a temporary folder that is removed afterwards (the case writes files)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return fn(Path(d))


def _nan_checkpoint(d: Path):
    from pxpo_lite.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(d / "ck", {"conv.weight": torch.tensor([float("nan")])}, {"epoch": 1})
    return load_checkpoint(d / "ck")


def _edited_session(d: Path):
    import json

    from pxpo_lite.session_store import SessionStore

    SessionStore(d / "s").start({"prompt": "a portrait", "seed": 0}, {"image": np.full((3, 4, 4), 0.5, np.float32)})
    m = json.loads((d / "s" / "session.json").read_text())
    m["prompt"] = "a bald portrait"
    (d / "s" / "session.json").write_text(json.dumps(m))
    return SessionStore(d / "s").load()


def _mask_0_255():
    m = np.zeros((8, 8), np.float32)
    m[:4] = 255
    return __import__("pxpo_lite.keep", fromlist=["keep_weights_from_mask"]).keep_weights_from_mask(m, (4, 4))


def _few_class_segmenter():
    from pxpo_lite import regions
    from pxpo_lite.models import Segmenter

    seg = Segmenter(width=8, dilations=(1,), num_classes=4).eval()
    return regions.restrict(rewards.colour_reward_map, "shirt", segmenter=seg)(_images(1, 8))


# Issue 20: errors that were silent wrong results or unclear
BAD_INPUTS += [
    BadInput("ddim", "pipeline step with eta > 1", lambda: ddim.ddim_step(_scheduler(), _x(), _scheduler().timesteps[0], _x(), eta=1.5),
             ValueError, r"eta must be a number in \(0, 1\], got 1\.5"),
    BadInput("sampling", "a pipe whose UNet is on the meta device", lambda:
             sampling.sample(_meta_pipe(), ["a portrait"], num_steps=2, progress=False), ValueError,
             r"pipe.unet's weights are on the meta device.*load real weights"),
    BadInput("trl_compat", "save_freq = 0 (a run that never saves)",
             lambda: __import__("pxpo_lite.trl_compat", fromlist=["x"]).trl_run_settings({"save_freq": 0}), ValueError,
             r"TRL setting save_freq \(epochs between checkpoints\) must be an int >= 1, got 0"),
    BadInput("trl_compat", "num_epochs = 2.7", lambda: __import__("pxpo_lite.trl_compat", fromlist=["x"]).trl_run_settings({"num_epochs": 2.7}),
             ValueError, r"TRL setting num_epochs \(epochs to train\) must be an int >= 1, got 2\.7"),
    BadInput("update", "Keep with the trained UNet as its own reference", _keep_self_reference, ValueError,
             r"Keep.reference_unet shares \d+ weight tensor\(s\) with the trained pipe.unet.*frozen_copy"),
    BadInput("regions", "restrict with a segmenter of 4 classes", _few_class_segmenter, ValueError,
             r"the segmenter gives 4 classes.*region 'shirt' is part id\(s\) \[5\]"),
    BadInput("keep", "a 0/255 mask to keep_weights_from_mask", _mask_0_255, ValueError,
             r"mask values must lie in \[0, 1\].*got \[0, 255\].*divide it by 255"),
    BadInput("checkpoint", "a checkpoint with NaN weights", lambda: _in_tmp(_nan_checkpoint), __import__("pxpo_lite.checkpoint", fromlist=["x"]).CheckpointError,
             r"holds NaN/inf values in \['model.safetensors: conv.weight'\]"),
    BadInput("session_store", "a session.json whose prompt was edited", lambda: _in_tmp(_edited_session),
             __import__("pxpo_lite.session_store", fromlist=["x"]).SessionError, r"the recorded field\(s\) \['prompt'\] were edited"),
    BadInput("config_checks", "a meta-device tensor as a number",
             lambda: __import__("pxpo_lite.config_checks", fromlist=["x"]).check_number("clip_range", torch.empty((), device="meta"), above=0),
             ValueError, r"clip_range must be a finite number > 0, got tensor\(.*meta"),
    BadInput("ddim", "a meta-device model_output with a real sample",
             lambda: ddim.ddim_step_logprob(_scheduler(), torch.zeros((1, 3, 4, 4), device="meta"), _scheduler().timesteps[0], _x(), eta=1.0),
             ValueError, r"model_output is a tensor on the 'meta' device \(shape \(1, 3, 4, 4\)\) but sample is on cpu: it has a shape but no values"),
    BadInput("pixelwise", "a meta-device reward map with real log-probs",
             lambda: pixelwise.pxpo_surrogate(_lp(), torch.zeros((2, 4, 4), device="meta")),
             ValueError, r"reward_map is a tensor on the 'meta' device .* but log_probs is on cpu"),
    BadInput("rewards", "meta-device images to a reward",
             lambda: rewards.colour_reward_map(torch.zeros((2, 3, 8, 8), device="meta")),
             ValueError, r"images is a tensor on the 'meta' device \(shape \(2, 3, 8, 8\)\): it has a shape but no values"),
    BadInput("sampling", "a step_index tensor on the meta device",
             lambda: sampling.step_log_prob(_pipe(), _traj(), torch.tensor(0, device="meta")),
             ValueError, r"step_index is a tensor on the 'meta' device"),
]


@functools.lru_cache(maxsize=None)
def _flow_scheduler(steps: int = 10, invert_sigmas: bool = False):
    from diffusers import FlowMatchEulerDiscreteScheduler

    s = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, invert_sigmas=invert_sigmas)
    s.set_timesteps(steps)
    return s


def _sde(**kw):
    """flow.sde_step_logprob on a 10-step flow schedule, x_t and v (1, 3, 4, 4); ``kw`` replaces any argument."""
    from pxpo_lite import flow

    s = kw.pop("scheduler") if "scheduler" in kw else _flow_scheduler()
    args = dict(model_output=_x(), timestep=s.timesteps[0], sample=_x())
    args.update(kw)
    return flow.sde_step_logprob(s, args.pop("model_output"), args.pop("timestep"), args.pop("sample"), **args)


@functools.lru_cache(maxsize=None)
def _flow_pipe():
    from pxpo_lite.flow_models import build_tiny_flow_pipeline

    return build_tiny_flow_pipeline(0)


def _flow_trainer(group_size: int, samples: int = 4):
    import copy

    from pxpo_lite import flow
    from pxpo_lite.trainer import TrainConfig

    return flow.FlowTrainer(copy.deepcopy(_flow_pipe()), "blue", TrainConfig(samples_per_epoch=samples, sample_batch_size=samples,
                            train_batch_size=2), group_size=group_size)


_NOISE = r"noise_level must be a finite number > 0 \(Flow-GRPO's a in σ_t = a·√\(t/\(1−t\)\); flow_grpo uses 0\.7\), got "

# Issue 23: Flow-GRPO (flow, flow_sampling) and GRPO's group advantages
BAD_INPUTS += [
    BadInput("flow", "a DDIMScheduler to the SDE step", lambda: _sde(scheduler=_scheduler(), timestep=_scheduler().timesteps[0]),
             ValueError, r"scheduler must be a flow-matching scheduler \(diffusers' FlowMatchEulerDiscreteScheduler\), got DDIMScheduler.*"
             r"a DDIM pipeline is trained with pxpo_lite.sample / ddim_step_logprob"),
    BadInput("flow", "noise_level = 0 (the deterministic ODE)", lambda: _sde(noise_level=0.0), ValueError,
             _NOISE + r"0\.0\. With 0 the step is the deterministic ODE and has no log-probability"),
    BadInput("flow", "noise_level < 0", lambda: _sde(noise_level=-0.5), ValueError, _NOISE + r"-0\.5"),
    BadInput("flow", "noise_level = NaN", lambda: _sde(noise_level=NAN), ValueError, _NOISE + r"nan"),
    BadInput("flow", "noise_level = inf", lambda: _sde(noise_level=INF), ValueError, _NOISE + r"inf"),
    BadInput("flow", "noise_level = True (bool)", lambda: _sde(noise_level=True), ValueError, _NOISE + r"True"),
    BadInput("flow", "noise_level = '0.7' (a str)", lambda: _sde(noise_level="0.7"), ValueError, _NOISE + r"'0\.7'"),
    BadInput("flow", "SDE step at a timestep not in the schedule", lambda: _sde(timestep=999.5), ValueError,
             r"timestep 999\.5 is not in the scheduler's schedule \[1000\.0, 889\.0, .*\(num_inference_steps=10\)"),
    BadInput("flow", "SDE step given the step index 3 as the timestep", lambda: _sde(timestep=3), ValueError,
             r"timestep must be one of scheduler.timesteps \(a float, t·1000\), got int 3; pass scheduler.timesteps\[i\], not the index i"),
    BadInput("flow", "SDE step with a model_output of other channels", lambda: _sde(model_output=_x((1, 2, 4, 4))), ValueError,
             r"model_output has shape \(1, 2, 4, 4\) but sample has shape \(1, 3, 4, 4\); they must match"),
    BadInput("flow", "SDE step with a prev_sample of another batch", lambda: _sde(prev_sample=_x((2, 3, 4, 4))), ValueError,
             r"prev_sample has shape \(2, 3, 4, 4\) but sample has shape \(1, 3, 4, 4\)"),
    BadInput("flow", "SDE step with a NaN in model_output", lambda: _sde(model_output=_with(_x(), (0, 1, 2, 3), NAN)),
             losses.NonFiniteError, r"model_output has NaN/inf for sample\(s\) \[0\]: the step needs finite inputs"),
    BadInput("flow", "SDE step with an inf in sample x_t", lambda: _sde(sample=_with(_x(), (0, 0, 0, 0), INF)),
             losses.NonFiniteError, r"sample has NaN/inf for sample\(s\) \[0\]"),
    BadInput("flow", "flow scheduler before set_timesteps",
             lambda: _sde(scheduler=__import__("diffusers").FlowMatchEulerDiscreteScheduler(), timestep=1000.0), ValueError,
             r"the scheduler has no timesteps yet \(num_inference_steps is None\); call scheduler.set_timesteps"),
    BadInput("flow", "flow scheduler with invert_sigmas=True", lambda: _sde(scheduler=_flow_scheduler(4, True), timestep=1000.0),
             ValueError, r"scheduler.config.invert_sigmas=True .* is not supported"),
    BadInput("flow", "a meta-device model_output with a real sample to the SDE step",
             lambda: _sde(model_output=torch.zeros((1, 3, 4, 4), device="meta")), ValueError,
             r"model_output is a tensor on the 'meta' device \(shape \(1, 3, 4, 4\)\) but sample is on cpu: it has a shape but no values"),
    BadInput("flow", "a meta-device timestep to the SDE step", lambda: _sde(timestep=torch.tensor(1000.0, device="meta")), ValueError,
             r"timestep is a tensor on the 'meta' device \(shape \(\)\): it has a shape but no values"),
    BadInput("flow", "FlowTrainer with group_size = 1", lambda: _flow_trainer(1), ValueError,
             r"group_size must be an int >= 2 .*a group of 1 has no spread\), got 1"),
    BadInput("flow", "FlowTrainer with samples per epoch not divisible by group_size", lambda: _flow_trainer(3), ValueError,
             r"each process samples 4 trajectories per epoch, not divisible by group_size=3"),
    BadInput("flow_sampling", "sample_flow on a DDIM pipeline", lambda: __import__("pxpo_lite.flow_sampling", fromlist=["x"]).sample_flow(
             _pipe(), ["a portrait"], num_steps=2, progress=False), ValueError,
             r"scheduler must be a flow-matching scheduler \(diffusers' FlowMatchEulerDiscreteScheduler\), got DDIMScheduler"),
    BadInput("advantages", "group_advantages with a group of 1", lambda: advantages.group_advantages(torch.tensor([1.0, 2.0, 3.0]), ["a", "a", "b"]),
             ValueError, r"1 prompt\(s\) have a group of 1 sample \(e\.g\. 'b'\): one sample has no spread\. Sample every prompt G >= 2 times"),
    BadInput("advantages", "GroupStatTracker with 5 samples in groups of 2 (the last alone)",
             lambda: advantages.GroupStatTracker().update(["a", "a", "b", "b", "c"], torch.arange(5.0)), ValueError,
             r"1 prompt\(s\) have a group of 1 sample \(e\.g\. 'c'\)"),
    BadInput("advantages", "group_pixel_advantages with every prompt once",
             lambda: advantages.group_pixel_advantages(torch.zeros(2, 4, 4), ["a", "b"]), ValueError,
             r"2 prompt\(s\) have a group of 1 sample \(e\.g\. 'a'\)"),
]


def run_case(case: BadInput) -> BaseException:
    """Call ``case.call`` and return what it raised (AssertionError if nothing)."""
    try:
        case.call()
    except BaseException as e:  # noqa: BLE001 - we report every exception, the test checks the type
        return e
    return AssertionError(f"{case.name}: no exception was raised")


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[f"{c.module}: {c.name}" for c in BAD_INPUTS])
def test_bad_input(case: BadInput):
    with pytest.raises(case.exc, match=case.match):
        case.call()


def test_table_is_large_and_names_are_unique():
    names = [c.name for c in BAD_INPUTS]
    assert len(names) >= 40 and len(set(names)) == len(names)
    for c in BAD_INPUTS:
        re.compile(c.match)


def test_doc_lists_every_case():
    """docs/bad_inputs.md is generated from BAD_INPUTS (scripts/bad_inputs_table.py): it must list them all."""
    text = DOC.read_text(encoding="utf-8")
    missing = [c.name for c in BAD_INPUTS if f"| {c.name} |" not in text]
    assert not missing, f"re-run `python scripts/bad_inputs_table.py`; missing from {DOC.name}: {missing}"
