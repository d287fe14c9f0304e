"""Benchmark the RL training step: DDPO vs PXPO, and RL update throughput vs a raw UNet forward+backward.

One process, one model, one batch of trajectories, measured with interleaved repetitions
(medians), so machine noise hits every variant alike:

* ``ddpo_update`` / ``pxpo_update``: ``Trainer.optimise`` on the batch — for every trainable
  denoising step: re-score the stored transition with gradients (``step_log_prob``), the loss
  (``ddpo_loss`` on mean-reduced log-probs / ``pxpo_loss`` on per-pixel maps), backward; then
  gradient-norm clipping and one AdamW step. Goal: PXPO ≤ 1.05 × DDPO.
* ``raw_unet``: the floor — the same number of UNet forward+backward passes on the same inputs
  (x_t, t, prompt embeddings, same micro-batches) with a plain MSE-style loss, the same clipping
  and AdamW step. Goal: RL update throughput ≥ 85 % of it.
* ``rewards``: time of each reward function on the batch next to sampling it.

Usage (the README quotes the JSON this writes)::

    python benchmarks/bench_train_step.py --batch 8 --steps 10 --reps 7 --threads 2 --out bench_train_step.json
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_pipe(model: str):
    from pxpo_lite import models

    if model == "tiny":
        try:
            return models.load_tiny_pipeline("cpu"), "shipped tiny pipeline"
        except (FileNotFoundError, RuntimeError) as e:
            print(f"shipped tiny pipeline unavailable ({e}); using a random one", file=sys.stderr)
    return models.build_tiny_pipeline(0), "random tiny pipeline"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["tiny", "random"], default="tiny")
    ap.add_argument("--batch", type=int, default=8, help="trajectories in the batch (one micro-batch)")
    ap.add_argument("--steps", type=int, default=10, help="DDIM steps T")
    ap.add_argument("--reps", type=int, default=7, help="interleaved repetitions (medians reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clip-range", type=float, default=None, help="None: score-function losses")
    ap.add_argument("--out", type=str, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from pxpo_lite import rewards, world
    from pxpo_lite.sampling import model_output, sample
    from pxpo_lite.trainer import TrainConfig, Trainer

    base, what = load_pipe(args.model)
    prompts = [world.prompt_for(a) for a in world.sample_attributes(args.batch, __import__("numpy").random.default_rng(0))]
    cfg = dict(num_steps=args.steps, samples_per_epoch=args.batch, sample_batch_size=args.batch, train_batch_size=args.batch,
               timestep_fraction=1.0, use_lora=False, learning_rate=1e-6, clip_range=args.clip_range, progress=False)
    trainers = {
        "ddpo_update": Trainer(copy.deepcopy(base), rewards.colour_reward_map, TrainConfig(method="ddpo", **cfg), prompts=prompts),
        "pxpo_update": Trainer(copy.deepcopy(base), rewards.colour_reward_map, TrainConfig(method="pxpo", **cfg), prompts=prompts),
    }
    raw_pipe = copy.deepcopy(base)
    raw_pipe.unet.requires_grad_(True)
    raw_params = [p for p in raw_pipe.unet.parameters() if p.requires_grad]
    raw_opt = torch.optim.AdamW(raw_params, lr=1e-6, weight_decay=1e-4)

    # one batch of trajectories, shared by every variant
    t0 = time.perf_counter()
    traj, reward_maps = trainers["ddpo_update"].sample_and_score(prompts, generator=torch.Generator().manual_seed(0))
    t_sample = time.perf_counter() - t0
    adv = {name: tr.compute_advantages(traj.prompts, reward_maps, tuple(traj.latents.shape[-2:])) for name, tr in trainers.items()}
    steps = trainers["ddpo_update"].trainable_steps(traj)

    def rl(name):
        trainers[name].optimise(traj, adv[name], torch.Generator().manual_seed(0))

    def raw():
        pipe = raw_pipe
        pipe.scheduler.set_timesteps(args.steps)
        for i in steps:
            x = traj.latents[:, i]
            out = model_output(pipe, x, traj.timesteps[i], traj.prompt_embeds, None, 1.0)
            loss = out.float().pow(2).mean()
            (loss / len(steps)).backward()
        torch.nn.utils.clip_grad_norm_(raw_params, 1.0)
        raw_opt.step()
        raw_opt.zero_grad(set_to_none=True)

    variants = {"ddpo_update": lambda: rl("ddpo_update"), "pxpo_update": lambda: rl("pxpo_update"), "raw_unet": raw}
    for fn in variants.values():  # warm-up
        fn()
    times = {k: [] for k in variants}
    names = list(variants)
    for rep in range(args.reps):
        order = names[rep % len(names):] + names[: rep % len(names)]  # rotate the order each repetition
        for k in order:
            t = time.perf_counter()
            variants[k]()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}

    # rewards next to sampling
    seg = rewards._default_segmenter("cpu")
    rt = {}
    for name, fn in {"blue": rewards.blue_reward, "colour_map": rewards.colour_reward_map, "jpeg": rewards.jpeg_compressibility,
                     "hair_map": lambda im, p=None: rewards.hair_reward_map(im, p, seg)}.items():
        fn(traj.images)
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            fn(traj.images)
            ts.append(time.perf_counter() - t)
        rt[name] = statistics.median(ts)

    micro = len(steps)
    result = {
        "command": "python benchmarks/bench_train_step.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": what,
        "batch": args.batch,
        "ddim_steps": args.steps,
        "trained_steps_per_update": micro,
        "reps": args.reps,
        "threads": args.threads,
        "clip_range": args.clip_range,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.machine()},
        "median_s": med,
        "all_s": times,
        "pxpo_over_ddpo": med["pxpo_update"] / med["ddpo_update"],
        "ddpo_throughput_vs_raw": med["raw_unet"] / med["ddpo_update"],
        "pxpo_throughput_vs_raw": med["raw_unet"] / med["pxpo_update"],
        "goals": {"pxpo_over_ddpo": "<= 1.05", "throughput_vs_raw": ">= 0.85"},
        "rewards_ms": {k: v * 1e3 for k, v in rt.items()},
        "sampling_ms": t_sample * 1e3,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "all_s"}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
