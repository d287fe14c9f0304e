"""Pretrain the shipped models on the pixel-portraits world: ``python -m pxpo_lite.pretrain``.

Two models, both trained from scratch on freshly rendered world images (a new batch every
step, so there is no fixed data set and no over-fitting to it):

* ``segmenter``: per-pixel part labels, cross-entropy, a few minutes on a 2-core CPU;
* ``diffusion``: the tiny text-to-image model (UNet + text encoder together), v-prediction
  MSE on a cosine noise schedule, 10 % of prompts dropped to "" so classifier-free guidance
  works, an exponential moving average (EMA) of the weights is what gets shipped.

The command, data seed, steps, wall time and library versions are written beside the
weights (``TRAINING.json``), so the shipped files can be rebuilt and audited.

Usage::

    python -m pxpo_lite.pretrain segmenter            # ~3 min
    python -m pxpo_lite.pretrain diffusion            # ~40 min on 2 cores
    python -m pxpo_lite.pretrain all
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import models, world

EVAL_SEED = 10**9  # held-out world seeds start here; training seeds are far below


def _versions() -> dict:
    import diffusers
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }


def _lr(step: int, steps: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _record(out: Path, info: dict) -> None:
    (out / "TRAINING.json").write_text(json.dumps(info, indent=2))


# --------------------------------------------------------------------------------------------
def train_segmenter(out: Path, steps: int = 1500, batch: int = 32, lr: float = 3e-3, data_seed: int = 1, log_every: int = 100):
    torch.manual_seed(data_seed)
    model = models.Segmenter()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    t0 = time.time()
    bar = tqdm(range(steps), desc="segmenter", mininterval=5)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, lr, 100)
        p = world.render(batch, seed=data_seed * 10_000_000 + step)
        x = p.images
        # Robustness to what a diffusion model draws: a little noise and a brightness jitter.
        x = (x * (1 + 0.1 * (torch.rand(batch, 1, 1, 1) - 0.5)) + 0.04 * torch.randn_like(x) * torch.rand(batch, 1, 1, 1)).clamp(0, 1)
        loss = F.cross_entropy(model(x), p.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % log_every == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    wall = time.time() - t0
    model.eval()
    metrics = evaluate_segmenter(model)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    _record(out, {
        "command": "python -m pxpo_lite.pretrain segmenter " + " ".join(sys.argv[2:]),
        "data_seed": data_seed, "steps": steps, "batch": batch, "lr": lr,
        "wall_time_s": round(wall, 1), "final_loss": round(loss.item(), 5),
        "heldout": metrics, "versions": _versions(),
    })
    print(f"segmenter: {wall:.0f} s, held-out {metrics}")
    return model


@torch.no_grad()
def evaluate_segmenter(model, n: int = 1000, seed: int = EVAL_SEED) -> dict:
    """Pixel accuracy and hair IoU on held-out world images (seeds never used in training)."""
    p = world.render(n, seed=seed)
    pred = torch.cat([model(p.images[i : i + 250]).argmax(1) for i in range(0, n, 250)])
    hair = world.PART_ID["hair"]
    inter = ((pred == hair) & (p.labels == hair)).sum().item()
    union = ((pred == hair) | (p.labels == hair)).sum().item()
    return {"n_images": n, "pixel_accuracy": round((pred == p.labels).float().mean().item(), 4), "hair_iou": round(inter / union, 4)}


# --------------------------------------------------------------------------------------------
def train_diffusion(
    out: Path,
    steps: int = 6000,
    batch: int = 32,
    lr: float = 1e-3,
    warmup: int = 200,
    ema_decay: float = 0.999,
    cond_drop: float = 0.1,
    data_seed: int = 0,
    save_every: int = 1000,
):
    pipe = models.build_tiny_pipeline(seed=data_seed)
    unet, te, sched = pipe.unet, pipe.text_encoder, pipe.scheduler
    unet.train()
    te.train()
    params = list(unet.parameters()) + list(te.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    alphas = sched.alphas_cumprod
    gen = torch.Generator().manual_seed(data_seed)
    t0 = time.time()
    losses = []
    bar = tqdm(range(steps), desc="diffusion", mininterval=10)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, lr, warmup)
        p = world.render(batch, seed=data_seed * 10_000_000 + step)
        prompts = [("" if torch.rand((), generator=gen) < cond_drop else pr) for pr in p.prompts]
        x0 = p.images * 2 - 1
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * x0  # v-prediction
        pred = unet(xt, t, encoder_hidden_states=pipe._embed(prompts, "cpu")).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            d = min(ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - d)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if (step + 1) % save_every == 0 or step + 1 == steps:
            _save_ema(pipe, params, ema, out, {
                "command": "python -m pxpo_lite.pretrain diffusion " + " ".join(sys.argv[2:]),
                "data_seed": data_seed, "steps_done": step + 1, "steps": steps, "batch": batch, "lr": lr,
                "warmup": warmup, "ema_decay": ema_decay, "cond_drop": cond_drop,
                "wall_time_s": round(time.time() - t0, 1),
                "loss_last_200": round(sum(losses[-200:]) / len(losses[-200:]), 5),
                "versions": _versions(),
            })
    print(f"diffusion: {time.time() - t0:.0f} s for {steps} steps")
    return pipe


def _save_ema(pipe, params, ema, out: Path, info: dict) -> None:
    """Save the EMA weights as the pipeline (training weights are restored afterwards)."""
    backup = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    tmp = out.with_name(out.name + ".tmp")
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    _record(tmp, info)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    with torch.no_grad():
        for p, b in zip(params, backup):
            p.copy_(b)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m pxpo_lite.pretrain", description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["segmenter", "diffusion", "all"])
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: 1500 segmenter, 6000 diffusion)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: the shipped assets folder)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what in ("segmenter", "all"):
        kw = {"steps": args.steps} if args.steps and args.what == "segmenter" else {}
        train_segmenter(args.out if args.out and args.what == "segmenter" else models.SEGMENTER_DIR, **kw)
    if args.what in ("diffusion", "all"):
        kw = {"steps": args.steps} if args.steps and args.what == "diffusion" else {}
        train_diffusion(args.out if args.out and args.what == "diffusion" else models.TINY_PIPELINE_DIR, **kw)


if __name__ == "__main__":
    main()
