"""Peer benchmark: pxpo-lite's Trainer vs TRL 0.23.1's DDPOTrainer on the same folder and config.

TRL's ``DDPOTrainer`` (removed in TRL 0.24; 0.23.1 is its last release) was the most used DDPO
implementation. This script builds one tiny random Stable Diffusion pipeline folder in code
(``pxpo_lite.sd.build_tiny_sd_pipeline``: 64×64 images, 4×8×8 latents), then times both trainers
on that folder with TRL's defaults where a CPU allows them — 20 DDIM steps, η = 1, guidance 5 in
sampling and training, 16 samples per epoch (4 × 4), train batch 4, LoRA r = 4 on the attention
projections, lr 3e-4, PPO clip 1e-4, the scalar "less blue" reward — in alternating fresh
processes (TRL, then each of our arms in ``OURS`` — DDPO with one timestep per UNet forward as TRL
does it, DDPO and PXPO with the defaults, which score all of a micro-batch's timesteps in one
forward (``TrainConfig.timestep_batch``), both again with the exact speed-ups ``channels_last`` and the
prompt-embedding cache, and DDPO drawing the epoch's 16 samples in one sampling call; then TRL again,
...), each running ``--epochs`` epochs after one warm-up epoch that is not timed. It prints samples per second per run and the ratios with their
spread (the machine is noisy: compare only numbers from one run of this script).

TRL is an optional dependency used only here. Install it in a separate environment that sees
this project's packages (TRL 0.23.1 works with diffusers 0.42.1, peft 0.21.2, transformers 5.24,
accelerate 1.15)::

    python3 -m venv /tmp/trlvenv
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/trlvenv/lib/python3.11/site-packages/base.pth
    /tmp/trlvenv/bin/pip install trl==0.23.1 datasets
    .venv/bin/python benchmarks/bench_vs_trl.py --trl-python /tmp/trlvenv/bin/python --runs 3 --epochs 3 \
        --threads 1 --out benchmarks/results/vs_trl.json

Known CPU gotchas of TRL's DDPO (handled here): ``DDPOConfig(mixed_precision="no")`` (its default
fp16 needs a GPU); ``DefaultDDPOStableDiffusionPipeline`` on a folder without LoRA weights needs an
``accelerate.PartialState()`` created first; ``save_freq`` is set past the run so it never writes
checkpoints during timing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "a portrait with short red hair and a green shirt on a navy background",
    "a portrait with long blue hair and a red shirt on a pink background",
    "a portrait with no hair and a blue shirt on a sky-blue background",
    "a portrait with long black hair and a white shirt on a blue background",
]
# TRL DDPOConfig fields, TRL's defaults except sizes a CPU runs in seconds.
PEER = {
    "sample_num_steps": 20, "sample_eta": 1.0, "sample_guidance_scale": 5.0,
    "sample_batch_size": 4, "sample_num_batches_per_epoch": 4,
    "train_batch_size": 4, "train_gradient_accumulation_steps": 1, "train_num_inner_epochs": 1,
    "train_learning_rate": 3e-4, "train_clip_range": 1e-4, "train_adv_clip_max": 5.0,
    "train_max_grad_norm": 1.0, "train_timestep_fraction": 1.0, "train_cfg": True,
    "per_prompt_stat_tracking": False, "mixed_precision": "no", "seed": 0,
}
SAMPLES_PER_EPOCH = PEER["sample_batch_size"] * PEER["sample_num_batches_per_epoch"]


def build_folder(folder: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from pxpo_lite.sd import build_tiny_sd_pipeline

    build_tiny_sd_pipeline(seed=0).save_pretrained(folder)


#: our arms: name -> (method, TrainConfig overrides on top of the TRL mapping, what it is)
OURS = {
    "ddpo-1": ("ddpo", {"timestep_batch": 1}, "ours, DDPO, one timestep per UNet forward (TRL's loop; our default before timestep_batch)"),
    "ddpo": ("ddpo", {}, "ours, DDPO, defaults (timestep_batch=None: all 20 timesteps of a micro-batch in one forward here)"),
    "pxpo": ("pxpo", {}, "ours, PXPO, defaults"),
    "ddpo-fast": ("ddpo", {"channels_last": True, "prompt_cache": True}, "ours, DDPO + channels_last + prompt cache"),
    "pxpo-fast": ("pxpo", {"channels_last": True, "prompt_cache": True}, "ours, PXPO + channels_last + prompt cache"),
    "ddpo-fast-sb16": ("ddpo", {"channels_last": True, "prompt_cache": True, "sample_batch_size": 16},
                       "ours, DDPO + the same + the epoch's 16 samples drawn in one sampling call (TRL: 4 calls of 4)"),
}
#: the ratios printed and saved: (name, numerator arm, denominator arm)
RATIOS = [
    ("ours_ddpo_over_trl", "ddpo", "trl"),
    ("ours_pxpo_over_ours_ddpo", "pxpo", "ddpo"),
    ("ours_ddpo_fast_over_trl", "ddpo-fast", "trl"),
    ("ours_pxpo_fast_over_ours_ddpo_fast", "pxpo-fast", "ddpo-fast"),
    ("ours_ddpo_fast_sb16_over_trl", "ddpo-fast-sb16", "trl"),
    ("ours_ddpo_one_timestep_per_forward_over_trl", "ddpo-1", "trl"),
    ("ours_ddpo_over_ours_one_timestep_per_forward", "ddpo", "ddpo-1"),
]


def worker_ours(folder: str, epochs: int, arm: str) -> list[float]:
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    sys.path.insert(0, str(ROOT))
    from pxpo_lite.rewards import blue_reward, colour_reward_map
    from pxpo_lite.trainer import Trainer
    from pxpo_lite.trl_compat import train_config_from_trl

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    method, overrides, _ = OURS[arm]
    config = train_config_from_trl(PEER, method=method, progress=False, **overrides)
    reward = blue_reward if method == "ddpo" else colour_reward_map
    trainer = Trainer(pipe, reward, config, prompts=PROMPTS)
    times = []
    for e in range(epochs + 1):
        t0 = time.perf_counter()
        trainer.train_epoch()
        if e:  # the first epoch warms up (allocations, lazy imports) and is not timed
            times.append(time.perf_counter() - t0)
    assert torch.isfinite(torch.tensor([m["reward_mean"] for m in trainer.metrics])).all()
    return times


def worker_trl(folder: str, epochs: int) -> list[float]:
    import torch
    from accelerate import PartialState

    sys.path.insert(0, str(ROOT))
    from pxpo_lite.rewards import blue_reward

    PartialState()  # TRL's pipeline logs through accelerate before any Accelerator exists
    from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

    logdir = tempfile.mkdtemp()
    config = DDPOConfig(**PEER, num_epochs=epochs + 1, save_freq=10**9, log_with=None,
                        project_kwargs={"logging_dir": logdir, "project_dir": logdir})
    pipeline = DefaultDDPOStableDiffusionPipeline(folder, use_lora=True)
    pipeline.set_progress_bar_config(disable=True)

    def reward_fn(images, prompts, metadata):
        return blue_reward(images.float().clamp(0, 1)), {}

    def prompt_fn():
        return PROMPTS[int(torch.randint(len(PROMPTS), ()))], {}

    trainer = DDPOTrainer(config, reward_fn, prompt_fn, pipeline)
    times, global_step = [], 0
    for e in range(epochs + 1):
        t0 = time.perf_counter()
        global_step = trainer.step(e, global_step)
        if e:
            times.append(time.perf_counter() - t0)
    return times


def run_worker(python: str, which: str, folder: Path, epochs: int, threads: int) -> dict:
    cmd = [python, __file__, "--worker", which, "--folder", str(folder), "--epochs", str(epochs), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"{which} run failed:\n{out.stderr[-3000:]}")
    line = [l for l in out.stdout.splitlines() if l.startswith("{")][-1]
    return json.loads(line)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trl-python", default=None, help="a Python with trl==0.23.1 (see the module docstring)")
    p.add_argument("--runs", type=int, default=3, help="alternating runs of each trainer")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per run (after one warm-up epoch)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    p.add_argument("--arms", nargs="+", default=["trl", *OURS], choices=["trl", *OURS],
                   help="which trainers to alternate (default: all; ratios need both of their arms)")
    p.add_argument("--worker", choices=["trl", *OURS], help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.worker:
        import torch

        torch.set_num_threads(a.threads)
        torch.manual_seed(0)
        times = worker_trl(a.folder, a.epochs) if a.worker == "trl" else worker_ours(a.folder, a.epochs, a.worker)
        print(json.dumps({"which": a.worker, "epoch_s": times, "samples_per_s": SAMPLES_PER_EPOCH * len(times) / sum(times)}))
        return

    if a.trl_python is None:
        p.error("--trl-python is required (a Python where `import trl` gives 0.23.1); see the module docstring")
    folder = Path(tempfile.mkdtemp()) / "tiny-sd"
    build_folder(folder)
    arms = tuple(a.arms)
    runs: dict[str, list[dict]] = {k: [] for k in arms}
    t0 = time.perf_counter()
    for r in range(a.runs):
        for which in arms:
            python = a.trl_python if which == "trl" else sys.executable
            res = run_worker(python, which, folder, a.epochs, a.threads)
            runs[which].append(res)
            print(f"run {r + 1}/{a.runs} {which:14s}: {res['samples_per_s']:.2f} samples/s "
                  f"(epochs {', '.join(f'{s:.2f}' for s in res['epoch_s'])} s)", flush=True)
    sps = {k: [x["samples_per_s"] for x in v] for k, v in runs.items()}
    summary = {"samples_per_s": {k: statistics.median(v) for k, v in sps.items()},
               "arms": {k: ("TRL 0.23.1 DDPOTrainer" if k == "trl" else OURS[k][2]) for k in arms}}
    for name, num, den in RATIOS:
        if num in sps and den in sps:  # alternating pairs: run r of one arm ÷ run r of the other
            rs = [x / y for x, y in zip(sps[num], sps[den])]
            summary[name] = {"median": statistics.median(rs), "min": min(rs), "max": max(rs)}
            print(f"{num} / {den} samples per second: {summary[name]['median']:.3f} "
                  f"(min {min(rs):.3f}, max {max(rs):.3f}, {len(rs)} alternating pairs)")
    if a.out:
        import torch

        cmd = "bench_vs_trl.py " + " ".join(sys.argv[1:] if argv is None else argv)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({
            "command": cmd, "config": PEER, "runs": runs, "summary": summary,
            "wall_s": time.perf_counter() - t0, "torch": torch.__version__,
        }, indent=2))


if __name__ == "__main__":
    main()
