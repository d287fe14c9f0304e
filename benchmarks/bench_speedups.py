"""Speed-ups of one training epoch, each measured on/off side by side, plus a profile of one epoch.

Two models: the shipped tiny model (``pxpo_lite.load_tiny_pipeline``; DDPO, 16 samples, 10 DDIM
steps, train batch 8, full UNet) and the tiny Stable Diffusion pipeline built in code
(``pxpo_lite.sd.build_tiny_sd_pipeline``) with the peer config of ``benchmarks/bench_vs_trl.py``
(TRL's DDPO defaults: 20 steps, guidance 5, 16 samples, train batch 4, LoRA r = 4).

1. **Profile**: one epoch under ``torch.profiler``; the top operators by self CPU time.
2. **Speed-ups** (``pxpo_lite.speed.apply_speedups``), each a separate copy of the same pipeline,
   timed in interleaved repetitions (base, option 1, option 2, base, ...; medians; ratio =
   base time ÷ option time, > 1 is faster; this process's CPU time, which other jobs on a shared
   machine disturb far less than wall time, and wall time): ``channels_last``; ``lora_merged_sampling``
   (sampling with the LoRA merged into copies of the weights; the tiny model has no LoRA); ``prompt_cache`` (text
   embeddings once per prompt); ``bf16_autocast`` (the whole epoch, sampling and update, under
   ``torch.autocast("cpu", torch.bfloat16)``) and bf16 autocast of one UNet forward+backward;
   with ``--compile``, ``torch.compile`` of the UNet (first epoch = compile time, then steady state);
   ``timestep_batch`` (the default ``TrainConfig.timestep_batch=None``: all of a micro-batch's
   trained timesteps, up to a size budget, in one UNet forward; the base scores one timestep per
   forward) and ``sample_batch_16`` (the epoch's 16 samples in one sampling call).
   Exactness: the first epoch's sampled log-probs and the weights after it are compared with the
   base copy's (max abs difference; 0.0 = same numbers).
3. **CFG in training** (tiny SD, guidance 5): the update re-runs the UNet on [uncond; cond] with
   gradients — both halves depend on the weights, so no exact saving exists beyond the stored
   embeddings; the script reports how many text-encoder rows one epoch encodes with and without
   the prompt cache.

Usage (default run: a few minutes on a 2-core CPU)::

    python benchmarks/bench_speedups.py --threads 1 --reps 3 --out benchmarks/results/speedups.json
    python benchmarks/bench_speedups.py --model tiny --compile --reps 3 --out benchmarks/results/speedups_compile.json
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pxpo_lite import load_tiny_pipeline  # noqa: E402
from pxpo_lite.rewards import blue_reward  # noqa: E402
from pxpo_lite.sd import build_tiny_sd_pipeline  # noqa: E402
from pxpo_lite.speed import apply_speedups  # noqa: E402
from pxpo_lite.trainer import TrainConfig, Trainer  # noqa: E402
from pxpo_lite.trl_compat import train_config_from_trl  # noqa: E402

from bench_vs_trl import PEER, PROMPTS  # noqa: E402


def setup(model: str):
    """(pipe, config, prompts) for one model."""
    if model == "tiny":
        cfg = TrainConfig(method="ddpo", num_steps=10, samples_per_epoch=16, sample_batch_size=16, train_batch_size=8,
                          use_lora=False, progress=False, timestep_batch=1, channels_last=False)
        return load_tiny_pipeline(), cfg, None
    return build_tiny_sd_pipeline(0), train_config_from_trl(PEER, method="ddpo", progress=False, timestep_batch=1, channels_last=False,
                                                              lora_merged_sampling=False), PROMPTS


def make_trainer(base, cfg: TrainConfig, prompts, **options):
    """A Trainer on a copy of ``base`` with ``apply_speedups(**options)``, and the context its epochs run in:
    ``bf16=True`` runs sampling and update under CPU bf16 autocast (one process can hold only one accelerate
    mixed-precision setting, so ``TrainConfig.mixed_precision`` cannot be compared side by side)."""
    pipe = copy.deepcopy(base)
    bf16 = options.pop("bf16", False)
    cfg = dataclasses.replace(cfg, **options.pop("config", {}))  # TrainConfig fields of this variant
    apply_speedups(pipe, **options)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    return Trainer(pipe, blue_reward, cfg, prompts=prompts), ctx


def top_ops(prof, n: int) -> list[dict]:
    ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ev) or 1.0
    return [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total, "calls": e.count}
            for e in ev[:n]]


def profile_epoch(base, cfg, prompts, n: int) -> dict:
    tr, _ = make_trainer(base, cfg, prompts)
    tr.train_epoch()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        rec = tr.train_epoch()
    return {"sample_s": rec["sample_s"], "train_s": rec["train_s"], "top": top_ops(prof, n)}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def weights(tr) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in tr.params])


def fwd_bwd_bf16(base, cfg, reps: int) -> dict:
    """One UNet forward+backward on a training-sized batch, float32 vs bf16 autocast (interleaved; CPU time)."""
    unet = copy.deepcopy(base.unet).requires_grad_(True)
    c = unet.config
    guided = getattr(base, "vae", None) is not None  # the SD peer config trains with guidance: batch [uncond; cond]
    b = cfg.train_batch_size * (2 if guided else 1)
    x = torch.randn(b, c.in_channels, c.sample_size, c.sample_size)
    ctx = base.encode_prompt(["a portrait"] * b, "cpu", 1, False)[0].detach()
    t = torch.tensor(500)

    def run(bf16: bool) -> float:
        t0 = time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = unet(x, t, encoder_hidden_states=ctx).sample
        out.float().square().mean().backward()
        unet.zero_grad(set_to_none=True)
        return time.process_time() - t0

    run(False), run(True)  # warm-up
    times = {"float32": [], "bf16": []}
    for _ in range(reps):
        times["float32"].append(run(False))
        times["bf16"].append(run(True))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"batch": b, "median_s": med, "ratio": med["float32"] / med["bf16"]}


def compare(base, cfg, prompts, variants: dict, reps: int) -> dict:
    """Time one epoch per variant, interleaved; exactness of the first epoch against 'base'."""
    trainers, first = {}, {}
    for name, opts in variants.items():
        tr, ctx = make_trainer(base, cfg, prompts, **dict(opts))
        t0 = time.perf_counter()
        with ctx():
            traj, _ = tr.sample_and_score(n=tr.local_samples, generator=torch.Generator().manual_seed(123))
            tr.train_epoch()
        first[name] = {"first_epoch_s": time.perf_counter() - t0, "log_probs": traj.log_probs, "weights": weights(tr)}
        trainers[name] = (tr, ctx)
    times = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    for _ in range(reps):
        for name, (tr, ctx) in trainers.items():
            t0, c0 = time.perf_counter(), time.process_time()
            with ctx():
                tr.train_epoch()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    out = {}
    for name in variants:
        out[name] = {
            "epoch_s": times[name], "median_s": med[name], "ratio_vs_base": med["base"] / med[name],
            "epoch_cpu_s": cpu[name], "median_cpu_s": med_cpu[name], "cpu_ratio_vs_base": med_cpu["base"] / med_cpu[name],
            "first_epoch_s": first[name]["first_epoch_s"],
            "max_abs_diff_log_probs": max_diff(first[name]["log_probs"], first["base"]["log_probs"]),
            "max_abs_diff_weights_after_epoch": max_diff(first[name]["weights"], first["base"]["weights"]),
        }
        cache = trainers[name][0].pipe.__dict__.get("encode_prompt")
        if cache is not None:
            out[name]["text_encoder_rows"] = {"encoded": cache.misses, "served_from_cache": cache.hits}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["tiny", "tiny-sd", "both"], default="both")
    ap.add_argument("--reps", type=int, default=3, help="interleaved timed epochs per variant (medians)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=12, help="profile entries to print")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile of the UNet (minutes to compile)")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    models = ["tiny", "tiny-sd"] if a.model == "both" else [a.model]
    variants = {"base": {}, "channels_last": {"channels_last": True}, "prompt_cache": {"prompt_cache": True},
                "bf16_autocast": {"bf16": True},
                "timestep_batch": {"config": {"timestep_batch": None}},  # the default: several timesteps per forward
                "lora_merged_sampling": {"config": {"lora_merged_sampling": True}},  # tiny SD's LoRA merged in sampling (tiny: no LoRA)
                "sample_batch_16": {"config": {"sample_batch_size": 16}}}  # the epoch in one sampling call
    if a.compile:
        variants = {"base": {}, "compile": {"compile": True, "compile_kwargs": {"dynamic": False}}}
    result = {"command": "python benchmarks/bench_speedups.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "torch": torch.__version__, "machine": platform.processor() or platform.machine(), "threads": a.threads,
              "models": {}}
    for model in models:
        base, cfg, prompts = setup(model)
        res = {"config": cfg.to_dict()}
        if not a.no_profile:
            res["profile"] = profile_epoch(base, cfg, prompts, a.top)
            print(f"\n## {model}: profile of one epoch (sample {res['profile']['sample_s']:.2f} s, "
                  f"update {res['profile']['train_s']:.2f} s), top {a.top} by self CPU time\n")
            print("| op | self CPU ms | share | calls |\n|---|---|---|---|")
            for r in res["profile"]["top"]:
                print(f"| {r['op']} | {r['self_cpu_ms']:.0f} | {100 * r['share']:.1f} % | {r['calls']} |")
        res["variants"] = compare(base, cfg, prompts, variants, a.reps)
        if not a.compile:
            res["unet_fwd_bwd_bf16"] = fwd_bwd_bf16(base, cfg, max(3, a.reps))
        print(f"\n## {model}: one epoch per option ({a.reps} interleaved repetitions, medians; ratio = base ÷ option)\n")
        print("| option | epoch CPU s | ratio (CPU) | epoch wall s | ratio (wall) | first epoch wall s "
              "| max abs diff log-probs | weights after 1 epoch |")
        print("|---|---|---|---|---|---|---|---|")
        for name, v in res["variants"].items():
            print(f"| {name} | {v['median_cpu_s']:.2f} | {v['cpu_ratio_vs_base']:.3f} | {v['median_s']:.2f} | "
                  f"{v['ratio_vs_base']:.3f} | {v['first_epoch_s']:.1f} | "
                  f"{v['max_abs_diff_log_probs']:.2g} | {v['max_abs_diff_weights_after_epoch']:.2g} |")
        if "unet_fwd_bwd_bf16" in res:
            f = res["unet_fwd_bwd_bf16"]
            print(f"\nUNet forward+backward (CPU time), batch {f['batch']}: float32 {1e3 * f['median_s']['float32']:.0f} ms, "
                  f"bf16 autocast {1e3 * f['median_s']['bf16']:.0f} ms (ratio {f['ratio']:.2f})")
        for name, v in res["variants"].items():
            if "text_encoder_rows" in v:
                print(f"{name}: text-encoder rows over the whole run: {v['text_encoder_rows']}")
        result["models"][model] = res
    result["wall_s"] = time.perf_counter() - t_start
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
