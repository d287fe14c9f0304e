"""Peer benchmark: pxpo-lite's Trainer vs TRL 0.23.1's DDPOTrainer on the same folder and config, phase by phase.

TRL's ``DDPOTrainer`` (removed in TRL 0.24; 0.23.1 is its last release) was the most used DDPO
implementation. This script builds tiny random Stable Diffusion pipeline folders in code
(``--sizes``: ``tiny`` = ``pxpo_lite.sd.build_tiny_sd_pipeline``, 64×64 images, 4×8×8 latents;
``small`` = the same UNet and text encoder on 4×16×16 latents with a 4× VAE, 64×64 images: four
times the UNet's input, about twice the epoch), then times both trainers on each folder with
TRL's defaults where a CPU allows them — 20 DDIM steps, η = 1, guidance 5 in sampling and
training, 16 samples per epoch, train batch 4, LoRA r = 4 on the attention projections, lr 3e-4,
PPO clip 1e-4, the scalar "less blue" reward — in each of TRL's sampling layouts (``--layouts``:
``4x4`` = ``sample_batch_size`` 4 × ``sample_num_batches_per_epoch`` 4, ``8x2`` = 8 × 2).

Our arms take the config through ``pxpo_lite.trl_compat.train_config_from_trl``, which keeps the
16 samples per epoch and leaves the per-call layout to our automatic rule (the whole epoch in one
sampling call when it fits in memory): what a TRL user gets by mapping their config. Each run is a
fresh process; the arms alternate (TRL, ours DDPO, ours PXPO, then again: ``--runs`` rounds per
layout × size), each running ``--epochs`` timed epochs after one warm-up epoch that is not timed.

Phase times per epoch (seconds): ``sampling``, ``reward``, ``advantages``, ``update``. Ours come
from ``trainer.metrics[-1]["seconds"]``. TRL's come from wrapping its trainer's methods on the
instance: ``_generate_samples`` (sampling), ``compute_rewards`` (reward),
``_train_batched_samples`` (update); ``advantages`` is the rest of ``step`` (gathering, logging,
the stat tracker or batch normalisation, the per-sample shuffles of the samples and timesteps).
It prints and saves samples per second per run, the ratios with their spread over the
alternating rounds (median, min, max; the machine is noisy: compare only numbers from one run
of this script), and a phase table.

TRL is an optional dependency used only here. Install it in a separate environment that sees
this project's packages (TRL 0.23.1 works with diffusers 0.42.1, peft 0.21.2, transformers 5.24,
accelerate 1.15)::

    python3 -m venv /tmp/trlvenv
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/trlvenv/lib/python3.11/site-packages/base.pth
    /tmp/trlvenv/bin/pip install trl==0.23.1 datasets
    .venv/bin/python benchmarks/bench_vs_trl.py --trl-python /tmp/trlvenv/bin/python --runs 3 --epochs 2 \
        --threads 1 --layouts 4x4 8x2 --sizes tiny small --out benchmarks/results/vs_trl.json

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
#: TRL's sampling layouts: name -> (sample_batch_size, sample_num_batches_per_epoch), 16 samples each
LAYOUTS = {"4x4": (4, 4), "8x2": (8, 2)}
SIZES = ("tiny", "small")
PHASES = ("sampling", "reward", "advantages", "update")


def peer_config(layout: str = "4x4") -> dict:
    bs, nb = LAYOUTS[layout]
    assert bs * nb == SAMPLES_PER_EPOCH
    return {**PEER, "sample_batch_size": bs, "sample_num_batches_per_epoch": nb}


def build_pipeline(size: str = "tiny"):
    """``tiny``: build_tiny_sd_pipeline(seed=0); ``small``: its UNet on 16×16 latents and a 4× VAE (64×64 images)."""
    sys.path.insert(0, str(ROOT))
    from pxpo_lite.sd import TINY_SD_UNET, TINY_SD_VAE, build_tiny_sd_pipeline

    pipe = build_tiny_sd_pipeline(seed=0)
    if size == "small":
        from diffusers import AutoencoderKL, UNet2DConditionModel

        torch_seed(1)
        pipe.unet = UNet2DConditionModel(**{**TINY_SD_UNET, "sample_size": 16})
        vae = {**TINY_SD_VAE, "block_out_channels": (8, 16, 16), "down_block_types": ("DownEncoderBlock2D",) * 3,
               "up_block_types": ("UpDecoderBlock2D",) * 3}
        pipe.vae = AutoencoderKL(**vae)
        pipe.register_modules(unet=pipe.unet, vae=pipe.vae)
        pipe.vae_scale_factor = 4
    elif size != "tiny":
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    return pipe


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def build_folder(folder: Path, size: str = "tiny") -> None:
    build_pipeline(size).save_pretrained(folder)


#: our arms: name -> (method, TrainConfig overrides on top of the TRL mapping, what it is);
#: "layout" in an override stands for TRL's per-call batch of the layout being run
OURS = {
    "ddpo": ("ddpo", {}, "ours, DDPO, defaults (the epoch's samples in as few sampling calls as memory allows: one here; "
                         "timestep_batch=None: all 20 timesteps of a micro-batch in one forward here)"),
    "pxpo": ("pxpo", {}, "ours, PXPO, defaults"),
    "ddpo-trl-calls": ("ddpo", {"sample_batch_size": "layout"}, "ours, DDPO, sampling in TRL's calls (sample_batch_size = TRL's)"),
    "ddpo-1": ("ddpo", {"timestep_batch": 1}, "ours, DDPO, one timestep per UNet forward (TRL's loop)"),
    "ddpo-nchw": ("ddpo", {"channels_last": False}, "ours, DDPO, the UNet in the default NCHW layout (channels_last off; "
                                                     "the default turns it on for a CPU)"),
    "ddpo-plain": ("ddpo", {"channels_last": False, "lora_merged_sampling": False},
                   "ours, DDPO, without the two CPU defaults (NCHW convolutions, LoRA unmerged in sampling)"),
    "ddpo-fast": ("ddpo", {"channels_last": True, "prompt_cache": True}, "ours, DDPO + prompt cache (channels_last explicit: the CPU default)"),
    "pxpo-fast": ("pxpo", {"channels_last": True, "prompt_cache": True}, "ours, PXPO + prompt cache (channels_last explicit: the CPU default)"),
}
DEFAULT_ARMS = ("trl", "ddpo", "pxpo")
#: the ratios printed and saved: (name, numerator arm, denominator arm)
RATIOS = [
    ("ours_ddpo_over_trl", "ddpo", "trl"),
    ("ours_pxpo_over_trl", "pxpo", "trl"),
    ("ours_pxpo_over_ours_ddpo", "pxpo", "ddpo"),
    ("ours_ddpo_trl_calls_over_trl", "ddpo-trl-calls", "trl"),
    ("ours_ddpo_one_timestep_per_forward_over_trl", "ddpo-1", "trl"),
    ("ours_ddpo_nchw_over_trl", "ddpo-nchw", "trl"),
    ("ours_ddpo_over_ours_ddpo_nchw", "ddpo", "ddpo-nchw"),
    ("ours_ddpo_plain_over_trl", "ddpo-plain", "trl"),
    ("ours_ddpo_over_ours_ddpo_plain", "ddpo", "ddpo-plain"),
    ("ours_ddpo_fast_over_trl", "ddpo-fast", "trl"),
    ("ours_pxpo_fast_over_ours_ddpo_fast", "pxpo-fast", "ddpo-fast"),
]


def arm_config(arm: str, layout: str = "4x4"):
    """Our arm's TrainConfig: TRL's config of ``layout`` through ``train_config_from_trl``, then the arm's overrides."""
    sys.path.insert(0, str(ROOT))
    from pxpo_lite.trl_compat import train_config_from_trl

    method, overrides, _ = OURS[arm]
    overrides = {k: (LAYOUTS[layout][0] if v == "layout" else v) for k, v in overrides.items()}
    return train_config_from_trl(peer_config(layout), method=method, progress=False, **overrides)


def worker_ours(folder: str, epochs: int, arm: str, layout: str = "4x4") -> dict:
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    sys.path.insert(0, str(ROOT))
    from pxpo_lite.rewards import blue_reward, colour_reward_map
    from pxpo_lite.trainer import Trainer

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    method = OURS[arm][0]
    config = arm_config(arm, layout)
    reward = blue_reward if method == "ddpo" else colour_reward_map
    trainer = Trainer(pipe, reward, config, prompts=PROMPTS)
    times, phases = [], []
    for e in range(epochs + 1):
        t0 = time.perf_counter()
        rec = trainer.train_epoch()
        if e:  # the first epoch warms up (allocations, lazy imports, the memory probe) and is not timed
            times.append(time.perf_counter() - t0)
            phases.append(dict(rec["seconds"]))
    assert torch.isfinite(torch.tensor([m["reward_mean"] for m in trainer.metrics])).all()
    last = trainer.metrics[-1]
    return {"epoch_s": times, "phases": phases,
            "layout_used": {"sample_batch_size": last["sample_batch_size"], "timestep_batch": last["timestep_batch"],
                            "channels_last": trainer.speedups["channels_last"], "lora_merged_sampling": trainer.merge_for_sampling}}


def worker_trl(folder: str, epochs: int, layout: str = "4x4") -> dict:
    import torch
    from accelerate import PartialState

    sys.path.insert(0, str(ROOT))
    from pxpo_lite.rewards import blue_reward

    PartialState()  # TRL's pipeline logs through accelerate before any Accelerator exists
    from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

    logdir = tempfile.mkdtemp()
    config = DDPOConfig(**peer_config(layout), num_epochs=epochs + 1, save_freq=10**9, log_with=None,
                        project_kwargs={"logging_dir": logdir, "project_dir": logdir})
    pipeline = DefaultDDPOStableDiffusionPipeline(folder, use_lora=True)
    pipeline.set_progress_bar_config(disable=True)

    def reward_fn(images, prompts, metadata):
        return blue_reward(images.float().clamp(0, 1)), {}

    def prompt_fn():
        return PROMPTS[int(torch.randint(len(PROMPTS), ()))], {}

    trainer = DDPOTrainer(config, reward_fn, prompt_fn, pipeline)
    spent = {"sampling": 0.0, "reward": 0.0, "update": 0.0}

    def timed(name, fn):  # wrap a bound method on the instance: its seconds add to the phase
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t
        return wrapper

    trainer._generate_samples = timed("sampling", trainer._generate_samples)
    trainer.compute_rewards = timed("reward", trainer.compute_rewards)
    trainer._train_batched_samples = timed("update", trainer._train_batched_samples)
    times, phases, global_step = [], [], 0
    for e in range(epochs + 1):
        for k in spent:
            spent[k] = 0.0
        t0 = time.perf_counter()
        global_step = trainer.step(e, global_step)
        dt = time.perf_counter() - t0
        if e:
            times.append(dt)
            # advantages: the rest of step (gather, log, normalise, the per-sample shuffles)
            phases.append({"sampling": spent["sampling"], "reward": spent["reward"],
                           "advantages": dt - sum(spent.values()), "update": spent["update"]})
    return {"epoch_s": times, "phases": phases,
            "layout_used": {"sample_batch_size": config.sample_batch_size, "timestep_batch": 1, "channels_last": False, "lora_merged_sampling": False}}


def run_worker(python: str, which: str, folder: Path, epochs: int, threads: int, layout: str) -> dict:
    cmd = [python, __file__, "--worker", which, "--folder", str(folder), "--epochs", str(epochs), "--threads", str(threads),
           "--layouts", layout]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"{which} run failed:\n{out.stderr[-3000:]}")
    line = [l for l in out.stdout.splitlines() if l.startswith("{")][-1]
    return json.loads(line)


def spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def phase_means(run: dict) -> dict:
    """Mean seconds per epoch of each phase over one run's timed epochs."""
    return {k: statistics.fmean(p[k] for p in run["phases"]) for k in PHASES}


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Samples/s per arm (median over rounds), the ratios (round r ÷ round r), the phase table and per-phase
    speed ratios (den seconds ÷ num seconds: > 1 means the numerator arm is faster in that phase)."""
    sps = {k: [x["samples_per_s"] for x in v] for k, v in runs.items()}
    out = {"samples_per_s": {k: statistics.median(v) for k, v in sps.items()},
           "epoch_s": {k: statistics.median(statistics.fmean(x["epoch_s"]) for x in v) for k, v in runs.items()},
           "phase_s": {k: {ph: statistics.median(phase_means(x)[ph] for x in v) for ph in PHASES} for k, v in runs.items()},
           "ratios": {}, "phase_ratios": {}}
    for name, num, den in RATIOS:
        if num in sps and den in sps:  # alternating pairs: run r of one arm ÷ run r of the other
            out["ratios"][name] = spread([x / y for x, y in zip(sps[num], sps[den])])
            out["phase_ratios"][name] = {
                ph: spread([phase_means(d)[ph] / max(phase_means(n)[ph], 1e-9) for n, d in zip(runs[num], runs[den])])
                for ph in PHASES}
    return out


def phase_table(results: dict) -> str:
    """Markdown: per layout × size and arm, s/epoch per phase (median over rounds) and the ratio to TRL."""
    lines = ["| layout | model | arm | sampling s | reward s | advantages s | update s | epoch s | speed ÷ TRL (median, min–max) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, res in results.items():
        layout, size = key.split("/")
        summ = res["summary"]
        for arm in res["runs"]:
            ph = summ["phase_s"][arm]
            ratio = "1" if arm == "trl" else ""
            for name, num, den in RATIOS:
                if num == arm and den == "trl" and name in summ["ratios"]:
                    r = summ["ratios"][name]
                    ratio = f"{r['median']:.2f} ({r['min']:.2f}–{r['max']:.2f})"
            lines.append(f"| {layout} | {size} | {arm} | " + " | ".join(f"{ph[k]:.2f}" for k in PHASES)
                         + f" | {summ['epoch_s'][arm]:.2f} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trl-python", default=None, help="a Python with trl==0.23.1 (see the module docstring)")
    p.add_argument("--runs", type=int, default=3, help="alternating rounds of each arm, per layout and size")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per run (after one warm-up epoch)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    p.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=["trl", *OURS],
                   help=f"which trainers to alternate (default: {' '.join(DEFAULT_ARMS)}; ratios need both of their arms)")
    p.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS),
                   help="TRL's sampling layouts: sample_batch_size x sample_num_batches_per_epoch")
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES), help="model sizes (see the docstring)")
    p.add_argument("--worker", choices=["trl", *OURS], help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.worker:
        import torch

        torch.set_num_threads(a.threads)
        torch.manual_seed(0)
        layout = a.layouts[0]
        res = worker_trl(a.folder, a.epochs, layout) if a.worker == "trl" else worker_ours(a.folder, a.epochs, a.worker, layout)
        print(json.dumps({"which": a.worker, "layout": layout, **res,
                          "samples_per_s": SAMPLES_PER_EPOCH * len(res["epoch_s"]) / sum(res["epoch_s"])}))
        return

    if a.trl_python is None and "trl" in a.arms:
        p.error("--trl-python is required (a Python where `import trl` gives 0.23.1); see the module docstring")
    arms = tuple(a.arms)
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    for size in a.sizes:
        folder = Path(tempfile.mkdtemp()) / f"{size}-sd"
        build_folder(folder, size)
        for layout in a.layouts:
            runs: dict[str, list[dict]] = {k: [] for k in arms}
            for r in range(a.runs):
                for which in arms:
                    python = a.trl_python if which == "trl" else sys.executable
                    res = run_worker(python, which, folder, a.epochs, a.threads, layout)
                    runs[which].append(res)
                    ph = phase_means(res)
                    print(f"{layout} {size} round {r + 1}/{a.runs} {which:6s}: {res['samples_per_s']:.2f} samples/s "
                          f"(epochs {', '.join(f'{s:.2f}' for s in res['epoch_s'])} s; "
                          + ", ".join(f"{k} {ph[k]:.2f}" for k in PHASES) + f"; {res['layout_used']})", flush=True)
            summary = summarise(runs)
            summary["arms"] = {k: ("TRL 0.23.1 DDPOTrainer" if k == "trl" else OURS[k][2]) for k in arms}
            results[f"{layout}/{size}"] = {"config": peer_config(layout), "runs": runs, "summary": summary}
            for name, r in summary["ratios"].items():
                print(f"{layout} {size} {name}: {r['median']:.3f} (min {r['min']:.3f}, max {r['max']:.3f}, {a.runs} rounds)", flush=True)
    table = phase_table(results)
    print(table)
    if a.out:
        import torch

        cmd = "bench_vs_trl.py " + " ".join(sys.argv[1:] if argv is None else argv)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({
            "command": cmd, "layouts": {k: LAYOUTS[k] for k in a.layouts}, "sizes": list(a.sizes), "results": results,
            "phase_table_markdown": table, "wall_s": time.perf_counter() - t0, "torch": torch.__version__,
            "threads": a.threads, "epochs": a.epochs, "rounds": a.runs,
        }, indent=2))


if __name__ == "__main__":
    main()
