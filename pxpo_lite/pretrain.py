"""Pretrain the shipped models on the pixel-portraits world: ``python -m pxpo_lite.pretrain``.

Three models, all trained from scratch on freshly rendered world images (a new batch every
step, so there is no fixed data set and no over-fitting to it):

* ``segmenter``: per-pixel part labels, cross-entropy, a few minutes on a 2-core CPU;
* ``diffusion``: the tiny text-to-image model (UNet + text encoder together), v-prediction
  MSE on a cosine noise schedule, 10 % of prompts dropped to "" so classifier-free guidance
  works, an exponential moving average (EMA) of the weights is what gets shipped;
* ``flow``: the tiny flow-matching model (:mod:`pxpo_lite.flow_models`: the same UNet and text
  encoder, diffusers' ``FlowMatchEulerDiscreteScheduler``), trained exactly like ``diffusion``
  (same data, drop-out, lr schedule, EMA) but on the velocity loss ‖v̂ − (noise − x0)‖² at
  x_t = (1 − t)·x0 + t·noise, t uniform (:func:`flow_velocity_objective` says why).

All use diffusers' training utilities rather than hand-written ones: the learning rate follows
``diffusers.optimization.get_cosine_schedule_with_warmup`` (linear warm-up from 0, then a half
cosine to 0) and the EMA is ``diffusers.training_utils.EMAModel`` (decay
min(0.999, (1+k)/(10+k)) at update k+1; the first update copies the weights).

The command, data seed, steps, wall time and library versions are written beside the
weights (``TRAINING.json``), so the shipped files can be rebuilt and audited. ``TRAINING.json``
also lists every file of the folder: ``--out DIR`` replaces ``DIR`` only when it is missing, empty,
or a folder this command wrote (nothing in it but the files its ``TRAINING.json`` lists); anything
else is refused before training starts. A save is staged in the hidden ``.DIR.pxpo-tmp`` (marked
with ``pxpo-save.json``) and swapped in through ``.DIR.pxpo-old``; a ``DIR.old`` or ``DIR.tmp`` of
yours is never touched.

Provenance of the shipped weights
---------------------------------
The shipped weights (``pxpo_lite/assets/``, committed in f4dc4a7) were made by the earlier,
hand-written version of this file (commit 6f7820b), not rebuilt with this one (the tiny model
takes ~46 min on 2 cores). That version differs from the library's at the first step only:
its warm-up ran one step ahead (lr·(k+1)/warmup at step k; the library's is lr·k/warmup, so the library's
first step has lr 0; after the warm-up the two schedules agree to 3e-19) and its first EMA
update kept 10 % of the initial weights (the library's copies them; later decays are equal).
Measured on a 30-step run of each version (same seeds, one thread, one machine)::

    python -m pxpo_lite.pretrain diffusion --steps 30 --threads 1 --out <dir>
    python -m pxpo_lite.pretrain segmenter --steps 30 --threads 1 --out <dir>

tiny model EMA weights: max abs difference 4.8e-4, relative L2 1.1e-3 (loss of the 30 steps
0.6578 old, 0.6653 new); segmenter: max abs 2.7e-3, relative L2 5.4e-3 (held-out pixel
accuracy 0.8291 old, 0.8268 new). Rebuilding therefore gives equivalent, not bit-identical,
weights.

Usage::

    python -m pxpo_lite.pretrain segmenter            # ~2 min on 2 cores
    python -m pxpo_lite.pretrain diffusion            # ~46 min on 2 cores
    python -m pxpo_lite.pretrain flow --threads 1     # ~44 min, writes pxpo_lite/assets/tiny_flow
    python -m pxpo_lite.pretrain all

Introduced in ``notebooks/00_tour.ipynb`` (the shipped models).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import diffusers
import torch
import torch.nn.functional as F
import transformers
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from . import models, world
from .files import atomic_write_json
from .flow_models import TINY_FLOW_DIR, build_tiny_flow_pipeline, load_tiny_flow_pipeline

HELDOUT_WORLD_SEED = 10**9
"""World (image/prompt) seeds from here on are held out: pretraining renders batches with seeds
``data_seed * 10_000_000 + step``, far below. Evaluation of the shipped models draws its images
and prompts from here. Not a noise seed: experiments seed their sampling noise separately."""

FLOW_STEPS = 2200
"""Default steps of ``pretrain flow`` (× 32 images), those of the shipped weights: 44 min wall time
on the shared 2-core machine with ``--threads 1`` (25 min of CPU time; 2 threads on the loaded
machine ran 7× slower per step), inside the issue's hour."""

#: the options of the running command after ``what`` (TRAINING.json's "command"); :func:`main` sets them
_ARGS = {"text": " ".join(sys.argv[2:])}


def library_versions() -> dict:
    """Python, torch, diffusers, transformers versions, thread count and machine, for TRAINING.json."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }


def _record(out: Path, info: dict) -> None:
    files = sorted(f.relative_to(out).as_posix() for f in out.rglob("*") if f.is_file() and f.name != MARKER)
    atomic_write_json(out / "TRAINING.json", {**info, "files": files}, indent=2)


# -- writing only what this command made -------------------------------------------------------
MARKER = "pxpo-save.json"  # first file of a staging folder: {"format": ..., "target": <out's name>}
_FORMAT = "pxpo-lite-pretrain"
# what a TRAINING.json without a "files" list (written before it had one) may sit beside
_LEGACY = {"TRAINING.json", "model_index.json", "config.json", "model.safetensors", "unet", "vae", "text_encoder",
           "tokenizer", "scheduler"}


def _staged(out: Path, suffix: str) -> Path:
    out = Path(out).resolve()
    return out.with_name(f".{out.name}.pxpo-{suffix}")


def _not_ours(folder: Path) -> str | None:
    """None when ``folder`` is missing, empty, or holds only what its TRAINING.json records; else what is not ours."""
    if not folder.exists() and not folder.is_symlink():
        return None
    if folder.is_symlink() or not folder.is_dir():
        return "it is a file or a link, not a folder"
    entries = sorted(folder.iterdir())
    if not entries:
        return None
    try:
        info = json.loads((folder / "TRAINING.json").read_text())
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict) or not str(info.get("command", "")).startswith("python -m pxpo_lite.pretrain"):
        return f"it holds {[e.name for e in entries][:8]} and no TRAINING.json written by this command"
    files = set(info["files"]) | {"TRAINING.json", MARKER} if isinstance(info.get("files"), list) else None
    if files is None:
        foreign = [e.name for e in entries if e.name not in _LEGACY]
    else:
        foreign = sorted(f.relative_to(folder).as_posix() for f in folder.rglob("*")
                         if not f.is_dir() and f.relative_to(folder).as_posix() not in files)
    return f"it holds files this command did not write: {foreign[:8]}" if foreign else None


def _staging_is_ours(tmp: Path, out: Path) -> bool:
    try:
        return json.loads((tmp / MARKER).read_text()) == {"format": _FORMAT, "target": Path(out).resolve().name}
    except (OSError, ValueError):
        return False


def check_out(out: Path) -> None:
    """Raise ValueError unless ``out`` (and its staging folders) hold nothing but what this command wrote."""
    tmp, old = _staged(out, "tmp"), _staged(out, "old")
    for folder, why in ((out, _not_ours(out)), (old, _not_ours(old)),
                        (tmp, None if _staging_is_ours(tmp, out) or not _not_ours(tmp) else f"it has no {MARKER} of ours")):
        if why:
            raise ValueError(f"refusing to write the pretrained model to out={str(out)!r}: {str(folder)!r} is not a "
                             f"folder this command wrote ({why}), and a save replaces it. Pass --out a new or empty "
                             "folder, or move those files away")


def save_folder(out: Path, write, info: dict) -> None:
    """``write(folder)`` then ``TRAINING.json`` into the staging folder, then swap it in for ``out``:
    a kill leaves a complete folder at ``out`` or ``.out.pxpo-old``, and only folders of ours are removed."""
    out = Path(out)
    check_out(out)
    tmp, old = _staged(out, "tmp"), _staged(out, "old")
    if not out.exists() and old.exists():  # a kill between the two renames: put the last save back
        os.replace(old, out)
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    tmp.mkdir(parents=True)
    atomic_write_json(tmp / MARKER, {"format": _FORMAT, "target": out.resolve().name})
    write(tmp)
    _record(tmp, info)
    (tmp / MARKER).unlink()
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)


def _check_steps(steps, warmup: int) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}; e.g. --steps 30 for a quick run")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")


# --------------------------------------------------------------------------------------------
def train_segmenter(out: Path, steps: int = 1500, batch: int = 32, lr: float = 3e-3, data_seed: int = 1,
                    log_every: int = 100, warmup: int = 100):
    """Train :class:`models.Segmenter` with cross-entropy on fresh world batches; save it to ``out``."""
    _check_steps(steps, warmup)
    check_out(out)  # a refused folder fails now, not after the training
    torch.manual_seed(data_seed)
    model = models.Segmenter()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = get_cosine_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=steps)
    t0 = time.time()
    bar = tqdm(range(steps), desc="segmenter", mininterval=5)
    for step in bar:
        p = world.render(batch, seed=data_seed * 10_000_000 + step)
        x = p.images
        # Robustness to what a diffusion model draws: a little noise and a brightness jitter.
        x = (x * (1 + 0.1 * (torch.rand(batch, 1, 1, 1) - 0.5)) + 0.04 * torch.randn_like(x) * torch.rand(batch, 1, 1, 1)).clamp(0, 1)
        loss = F.cross_entropy(model(x), p.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        if step % log_every == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    wall = time.time() - t0
    model.eval()
    metrics = evaluate_segmenter(model)
    save_folder(out, model.save_pretrained, {
        "command": "python -m pxpo_lite.pretrain segmenter " + _ARGS["text"],
        "data_seed": data_seed, "steps": steps, "batch": batch, "lr": lr, "warmup": warmup,
        "wall_time_s": round(wall, 1), "final_loss": round(loss.item(), 5),
        "heldout": metrics, "versions": library_versions(),
    })
    print(f"segmenter: {wall:.0f} s, held-out {metrics}")
    return model


@torch.no_grad()
def evaluate_segmenter(model, n: int = 1000, seed: int = HELDOUT_WORLD_SEED) -> dict:
    """Pixel accuracy and hair IoU on held-out world images (seeds never used in training)."""
    p = world.render(n, seed=seed)
    pred = torch.cat([model(p.images[i : i + 250]).argmax(1) for i in range(0, n, 250)])
    hair = world.PART_ID["hair"]
    inter = ((pred == hair) & (p.labels == hair)).sum().item()
    union = ((pred == hair) | (p.labels == hair)).sum().item()
    return {"n_images": n, "pixel_accuracy": round((pred == p.labels).float().mean().item(), 4), "hair_iou": round(inter / union, 4)}


# --------------------------------------------------------------------------------------------
# The two text-to-image objectives: (x0, generator) -> (noisy sample, UNet timestep, target)
def v_prediction_objective(scheduler):
    """DDIM model: t uniform over the 1000 training steps of the cosine schedule, target v."""
    alphas = scheduler.alphas_cumprod

    def objective(x0, gen):
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise, t, a.sqrt() * noise - (1 - a).sqrt() * x0

    return objective


def flow_velocity_objective(scheduler):
    """Flow model: x_t = (1 − t)·x0 + t·noise, target v = noise − x0, UNet timestep t·1000.

    t is uniform on [0, 1), not SD3's logit-normal: the Euler sampler's first steps sit at t near 1
    (1.0, 0.95, ... for 20 steps) where a 32×32 portrait's colours are decided, and a logit-normal
    draws almost no t there (density → 0 at t = 1). Uniform t is also the loss the DDIM model had
    (uniform over its timesteps), so the two models differ in their objective only."""
    n = scheduler.config.num_train_timesteps

    def objective(x0, gen):
        t = torch.rand(len(x0), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        s = t.view(-1, 1, 1, 1)
        return (1 - s) * x0 + s * noise, t * n, noise - x0

    return objective


def train_text_to_image(pipe, objective, name: str, out: Path, steps: int, batch: int = 32, lr: float = 1e-3,
                        warmup: int = 200, ema_decay: float = 0.999, cond_drop: float = 0.1, data_seed: int = 0,
                        save_every: int = 1000, first_step: int = 0, before: dict | None = None):
    """Train ``pipe``'s UNet and text encoder on MSE(unet(x_t, t), target) with ``objective`` on fresh
    world batches (``cond_drop`` of the prompts replaced by ""), cosine lr with warm-up, EMA; save
    the EMA weights to ``out`` every ``save_every`` steps with ``TRAINING.json`` (command ``name``).

    ``first_step`` > 0 continues a finished run (``pipe`` holds its weights): batches are drawn from
    world seeds ``data_seed * 10_000_000 + first_step + step``, after the ones that run used, and
    ``before`` (that run's TRAINING.json) is kept in the new one as ``"continued_from"``."""
    _check_steps(steps, warmup)
    check_out(out)  # a refused folder fails now, not after the training
    unet, te = pipe.unet, pipe.text_encoder
    unet.train()
    te.train()
    params = list(unet.parameters()) + list(te.parameters())
    ema = EMAModel(params, decay=ema_decay)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    schedule = get_cosine_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=steps)
    gen = torch.Generator().manual_seed(data_seed * 1_000_003 + first_step)
    t0, cpu0 = time.time(), time.process_time()
    losses = []
    bar = tqdm(range(steps), desc=name, mininterval=10)
    for step in bar:
        p = world.render(batch, seed=data_seed * 10_000_000 + first_step + step)
        prompts = [("" if torch.rand((), generator=gen) < cond_drop else pr) for pr in p.prompts]
        xt, t, target = objective(p.images * 2 - 1, gen)
        prompt_embeds, _ = pipe.encode_prompt(prompts, device="cpu")
        pred = unet(xt, t, encoder_hidden_states=prompt_embeds).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        schedule.step()
        ema.step(params)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if (step + 1) % save_every == 0 or step + 1 == steps:
            save_ema_pipeline(pipe, params, ema, out, {
                "command": f"python -m pxpo_lite.pretrain {name} " + _ARGS["text"],
                "data_seed": data_seed, "steps_done": step + 1, "steps": steps, "batch": batch, "lr": lr,
                "warmup": warmup, "ema_decay": ema_decay, "cond_drop": cond_drop,
                "wall_time_s": round(time.time() - t0, 1), "cpu_time_s": round(time.process_time() - cpu0, 1),
                "loss_last_200": round(sum(losses[-200:]) / len(losses[-200:]), 5),
                "versions": library_versions(),
                **({"first_step": first_step, "continued_from": before} if first_step else {}),
            })
    print(f"{name}: {time.time() - t0:.0f} s for {steps} steps")
    return pipe


def train_diffusion(out: Path, steps: int = 6000, data_seed: int = 0, **kw):
    """Train the tiny DDIM pipeline (v-prediction MSE); keywords of :func:`train_text_to_image`."""
    _check_steps(steps, kw.get("warmup", 200))
    check_out(out)
    pipe = models.build_tiny_pipeline(seed=data_seed)
    return train_text_to_image(pipe, v_prediction_objective(pipe.scheduler), "diffusion", out, steps,
                               data_seed=data_seed, **kw)


def train_flow(out: Path, steps: int = FLOW_STEPS, data_seed: int = 0, init_from: Path | None = None, **kw):
    """Train the tiny flow-matching pipeline (velocity MSE); keywords of :func:`train_text_to_image`.

    ``init_from``: continue a finished ``pretrain flow`` run saved in that folder (its EMA weights
    start the new run, fresh optimiser and lr schedule, data after the batches it saw)."""
    _check_steps(steps, kw.get("warmup", 200))
    check_out(out)
    first, before = 0, None
    if init_from is not None:
        try:
            before = json.loads((Path(init_from) / "TRAINING.json").read_text())
        except (OSError, ValueError):
            before = None
        if not isinstance(before, dict) or before.get("data_seed", 0) != data_seed or "steps_done" not in before:
            raise ValueError(f"--init-from {str(init_from)!r} holds no readable TRAINING.json of a finished `pretrain "
                             f"flow` run with data_seed {data_seed}; pass the folder that run wrote, e.g. {str(TINY_FLOW_DIR)!r}")
        first = int(before.get("first_step", 0)) + int(before["steps_done"])
    pipe = build_tiny_flow_pipeline(seed=data_seed) if init_from is None else load_tiny_flow_pipeline(path=init_from)
    return train_text_to_image(pipe, flow_velocity_objective(pipe.scheduler), "flow", out, steps,
                               data_seed=data_seed, first_step=first, before=before, **kw)


def save_ema_pipeline(pipe, params, ema: EMAModel, out: Path, info: dict) -> None:
    """Save the pipeline with its EMA weights, plus ``TRAINING.json`` (:func:`save_folder`: only a
    folder this command wrote is replaced); the training weights are restored."""
    ema.store(params)
    ema.copy_to(params)
    try:
        save_folder(out, lambda tmp: pipe.save_pretrained(str(tmp), safe_serialization=True), info)
    finally:
        ema.restore(params)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m pxpo_lite.pretrain", description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["segmenter", "diffusion", "flow", "all"])
    ap.add_argument("--steps", type=int, default=None,
                    help=f"training steps (default: 1500 segmenter, 6000 diffusion, {FLOW_STEPS} flow)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: the shipped assets folder)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--init-from", type=Path, default=None,
                    help="flow only: continue the run saved in this folder (fresh lr schedule, later data)")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-3; 3e-3 segmenter)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 200; 100 segmenter)")
    args = ap.parse_args(argv)
    _ARGS["text"] = " ".join(sys.argv[2:] if argv is None else list(argv)[1:])
    if args.init_from is not None and args.what != "flow":
        ap.error("--init-from continues a `flow` run only")
    if args.threads:
        torch.set_num_threads(args.threads)
    for what, train, folder in (("segmenter", train_segmenter, models.SEGMENTER_DIR),
                                ("diffusion", train_diffusion, models.TINY_PIPELINE_DIR),
                                ("flow", train_flow, TINY_FLOW_DIR)):
        if args.what in (what, "all"):
            kw = {"steps": args.steps} if args.steps and args.what == what else {}
            kw.update({k: v for k, v in (("lr", args.lr), ("warmup", args.warmup)) if v is not None and args.what == what})
            if what == "flow" and args.init_from is not None:
                kw["init_from"] = args.init_from
            train(args.out if args.out and args.what == what else folder, **kw)


if __name__ == "__main__":
    main()
