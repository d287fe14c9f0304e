"""Cheaper gradients: what each option saves (time, peak memory per epoch) and what it costs (reward).

Options, on the shipped tiny model and the colour task ("less blue": ``rewards.blue_reward`` for
DDPO, ``rewards.colour_reward_map`` for PXPO), all through the public ``Trainer`` / ``TrainConfig``:

* ``full`` — the reference: full UNet, every stochastic timestep trained (``timestep_fraction=1.0``);
* ``tf=0.5``, ``tf=0.25`` — ``TrainConfig.timestep_fraction``: each micro-batch trains on a random
  half / quarter of its stochastic steps (DDPO's timestep subsampling);
* ``lora`` — ``TrainConfig(use_lora=True)``: rank-4 adapters instead of all weights (lr: the
  TrainConfig default for each, 1e-4 full UNet, 3e-4 LoRA);
* ``ckpt`` and ``lora+ckpt`` — gradient checkpointing (``pxpo_lite.speed.apply_speedups(pipe,
  gradient_checkpointing=True)``, i.e. ``unet.enable_gradient_checkpointing()``), alone and with LoRA;
* ``channels_last``, ``prompt_cache`` and both — the exact speed-ups (``TrainConfig`` fields; see
  ``benchmarks/bench_speedups.py``), here with their memory and reward next to the others.

Every (option, method) runs in a **fresh subprocess** with one thread and the same seed and
budget (``--epochs`` × 16 samples, 10 DDIM steps, train batch 8). Measured there:

* time per epoch: median over the epochs after the first (wall and this process's CPU time;
  CPU time is less disturbed by other jobs on a shared machine), and the update part alone;
* peak memory: the process's maximum resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``)
  after training, and its growth during training over the RSS peak after set-up (model loaded,
  trainer built, one evaluation sampled) — ``tracemalloc`` does not see torch's allocations;
* reward per sample: ``blue_reward`` of 16 fixed prompts sampled with a fixed noise seed before
  and after training (the same evaluation set for every option).

Usage (default run: under ~10 minutes on a 2-core CPU)::

    python benchmarks/bench_cheaper_gradients.py --epochs 4 --out benchmarks/results/cheaper_gradients.json
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = {
    "full": {},
    "tf=0.5": {"timestep_fraction": 0.5},
    "tf=0.25": {"timestep_fraction": 0.25},
    "lora": {"use_lora": True},
    "ckpt": {"gradient_checkpointing": True},
    "lora+ckpt": {"use_lora": True, "gradient_checkpointing": True},
    "channels_last": {"channels_last": True},
    "prompt_cache": {"prompt_cache": True},
    "channels_last+cache": {"channels_last": True, "prompt_cache": True},
}
#: the two CPU defaults off (NCHW, LoRA unmerged in sampling): the baseline the published rows were measured against
BASE = dict(num_steps=10, samples_per_epoch=16, sample_batch_size=16, train_batch_size=8, use_lora=False, seed=0,
            progress=False, channels_last=False, lora_merged_sampling=False)
EVAL_SEED = 1234
EVAL_N = 16


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def worker(option: str, method: str, epochs: int, threads: int) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from pxpo_lite import load_tiny_pipeline, world
    from pxpo_lite.rewards import blue_reward, colour_reward_map
    from pxpo_lite.sampling import sample
    from pxpo_lite.speed import apply_speedups
    from pxpo_lite.trainer import TrainConfig, Trainer

    torch.set_num_threads(threads)
    opts = dict(OPTIONS[option])
    ckpt = opts.pop("gradient_checkpointing", False)
    cfg = TrainConfig(method=method, **{**BASE, **opts})
    pipe = load_tiny_pipeline()
    apply_speedups(pipe, gradient_checkpointing=ckpt)
    eval_prompts = [world.prompt_for(a) for a in world.sample_attributes(EVAL_N, np.random.default_rng(EVAL_SEED))]

    def evaluate() -> float:
        traj = sample(pipe, eval_prompts, num_steps=cfg.num_steps, eta=cfg.eta, generator=torch.Generator().manual_seed(EVAL_SEED),
                      progress=False)
        return float(blue_reward(traj.images).mean())

    trainer = Trainer(pipe, blue_reward if method == "ddpo" else colour_reward_map, cfg)
    before = evaluate()
    rss_setup = max_rss_mb()
    wall, cpu, update = [], [], []
    for _ in range(epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        rec = trainer.train_epoch()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        update.append(rec["train_s"])
    rss_peak = max_rss_mb()
    after = evaluate()
    timed = slice(1, None) if epochs > 1 else slice(None)  # the first epoch warms up
    return {
        "option": option, "method": method, "config": cfg.to_dict(), "gradient_checkpointing": ckpt,
        "trained_params": sum(p.numel() for p in trainer.params),
        "epoch_wall_s": statistics.median(wall[timed]), "epoch_cpu_s": statistics.median(cpu[timed]),
        "update_wall_s": statistics.median(update[timed]), "all_epoch_wall_s": wall,
        "peak_rss_mb": rss_peak, "rss_growth_in_training_mb": rss_peak - rss_setup,
        "reward_before": before, "reward_after": after,
        "train_reward_by_epoch": [m["reward_mean"] for m in trainer.metrics],
        "samples": epochs * cfg.samples_per_epoch,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=4, help="epochs of 16 samples per run (the reward budget)")
    ap.add_argument("--methods", nargs="+", choices=["ddpo", "pxpo"], default=["ddpo", "pxpo"])
    ap.add_argument("--options", nargs="+", choices=list(OPTIONS), default=list(OPTIONS))
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="torch threads per run (several: each option at each)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", nargs=2, metavar=("OPTION", "METHOD"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker[0], a.worker[1], a.epochs, a.threads[0])))
        return {}
    t0 = time.perf_counter()
    runs = []
    for method in a.methods:
        for threads in a.threads:
            for option in a.options:
                cmd = [sys.executable, __file__, "--worker", option, method, "--epochs", str(a.epochs), "--threads", str(threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                if out.returncode:
                    raise RuntimeError(f"{option}/{method} failed:\n{out.stderr[-3000:]}")
                runs.append({**json.loads([l for l in out.stdout.splitlines() if l.startswith("{")][-1]), "threads": threads})
                r = runs[-1]
                print(f"{method} {option} ({threads} thread(s)): {r['epoch_wall_s']:.2f} s/epoch, peak RSS {r['peak_rss_mb']:.0f} MB, "
                      f"reward {r['reward_before']:.4f} -> {r['reward_after']:.4f}", flush=True)
    n = runs[0]["samples"] if runs else 0
    print(f"\n| method | option | epoch s (wall) | epoch CPU s | ratio (CPU, vs full) | update s | peak RSS MB "
          f"| RSS growth in training MB | trained params | reward before → after {n} samples |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        same = [x for x in runs if x["method"] == r["method"] and x["option"] == "full" and x["threads"] == r["threads"]]
        ref = same[0] if same else r
        r["cpu_ratio_vs_full"] = ref["epoch_cpu_s"] / r["epoch_cpu_s"]
        r["wall_ratio_vs_full"] = ref["epoch_wall_s"] / r["epoch_wall_s"]
        label = r["option"] if len(a.threads) == 1 else f"{r['option']} ({r['threads']} threads)"
        print(f"| {r['method']} | {label} | {r['epoch_wall_s']:.2f} | {r['epoch_cpu_s']:.2f} | {r['cpu_ratio_vs_full']:.2f} "
              f"| {r['update_wall_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['rss_growth_in_training_mb']:.0f} | {r['trained_params']:,} "
              f"| {r['reward_before']:.4f} → {r['reward_after']:.4f} |")
    result = {"command": "python benchmarks/bench_cheaper_gradients.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "memory": "ru_maxrss of a fresh subprocess per run", "eval": {"n": EVAL_N, "seed": EVAL_SEED},
              "runs": runs, "wall_s": time.perf_counter() - t0}
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
