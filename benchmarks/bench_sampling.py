"""Overhead of sampling with per-element log-probs, and of re-scoring (issue 3, DESIGN.md §8).

One run, same model, same prompts, same steps:

1. ``pxpo_lite.sample`` (DDIM η=1, per-element log-probs kept for every step)
   ÷ the pipeline's own plain diffusers DDIM loop (``pipe(...)``, ``scheduler.step``, η=1).
   Repetitions are interleaved (plain, ours, plain, ours, ...) and the median of the per-pair
   ratios is reported, so machine load drifts cancel. Goal: ≤ 1.05.
2. ``pxpo_lite.rescore`` of the stored trajectory ÷ the UNet forward passes it needs (T calls on
   the stored x_t with the same batch, no grad): the floor for re-scoring.

    python benchmarks/bench_sampling.py --out benchmarks/results/sampling.json
    python benchmarks/bench_sampling.py --model tiny-sd --batch 4 --steps 10   # tiny random Stable Diffusion
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


def build(model: str, device: str):
    import pxpo_lite

    if model == "tiny":
        return pxpo_lite.load_tiny_pipeline(device)
    if model == "tiny-random":
        return pxpo_lite.build_tiny_pipeline(seed=0).to(device)
    if model == "tiny-sd":
        from pxpo_lite.sd import build_tiny_sd_pipeline

        return build_tiny_sd_pipeline(seed=0).to(device)
    from pxpo_lite.sd import load_sd_pipeline

    return load_sd_pipeline(model, device=device)


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny (shipped) | tiny-random | tiny-sd | a hub id (GPU)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=7, help="interleaved repetitions (after one warm-up each)")
    ap.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pipeline's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    import pxpo_lite
    from pxpo_lite.sampling import model_output, pipeline_device, unet_dtype, resolve_guidance_scale

    torch.set_num_threads(args.threads)
    pipe = build(args.model, args.device)
    pipe.set_progress_bar_config(disable=True)
    from pxpo_lite import world

    prompts = [world.all_prompts()[i % len(world.all_prompts())] for i in range(0, 7 * args.batch, 7)]
    w = resolve_guidance_scale(pipe, args.guidance)
    extra = {"output_type": "pt"}

    def plain(seed):
        g = torch.Generator().manual_seed(seed)
        return pipe(prompts, num_inference_steps=args.steps, guidance_scale=w, eta=1.0, generator=g, **extra).images

    def ours(seed):
        g = torch.Generator().manual_seed(seed)
        return pxpo_lite.sample(pipe, prompts, num_steps=args.steps, eta=1.0, guidance_scale=w, generator=g, progress=False)

    # warm-up + correctness: the same seed gives the same images
    _, ref = timed(lambda: plain(0), args.device)
    _, traj = timed(lambda: ours(0), args.device)
    same = (ref.float().cpu() - traj.images.cpu()).abs().max().item()

    t_plain, t_ours = [], []
    for r in range(args.reps):
        t_plain.append(timed(lambda: plain(r + 1), args.device)[0])
        t_ours.append(timed(lambda: ours(r + 1), args.device)[0])
    ratios = [o / p for o, p in zip(t_ours, t_plain)]

    # re-scoring vs the bare UNet forward passes on the same stored states
    cond = traj.prompt_embeds
    uncond = traj.negative_prompt_embeds
    dev, dtype = pipeline_device(pipe), unet_dtype(pipe)

    @torch.no_grad()
    def unet_only():
        for i, t in enumerate(traj.timesteps):
            model_output(pipe, traj.latents[:, i].to(dev, dtype), t, cond, uncond, w)

    def rescore():
        return pxpo_lite.rescore(pipe, traj)

    timed(unet_only, args.device)
    _, lps = timed(rescore, args.device)
    exact = (lps - traj.log_probs).abs().max().item()
    t_unet, t_rescore = [], []
    for _ in range(args.reps):
        t_unet.append(timed(unet_only, args.device)[0])
        t_rescore.append(timed(rescore, args.device)[0])
    r_ratios = [a / b for a, b in zip(t_rescore, t_unet)]

    res = {
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "model": args.model,
        "device": str(args.device),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "steps": args.steps,
        "guidance_scale": w,
        "reps": args.reps,
        "sample_vs_plain_ratio_median": statistics.median(ratios),
        "sample_vs_plain_ratios": ratios,
        "plain_s_median": statistics.median(t_plain),
        "sample_s_median": statistics.median(t_ours),
        "rescore_vs_unet_ratio_median": statistics.median(r_ratios),
        "rescore_vs_unet_ratios": r_ratios,
        "unet_forwards_s_median": statistics.median(t_unet),
        "rescore_s_median": statistics.median(t_rescore),
        "same_seed_images_max_abs_diff": same,
        "rescore_max_abs_diff": exact,
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     "diffusers": __import__("diffusers").__version__, "machine": platform.machine(),
                     "cpu_count": __import__("os").cpu_count()},
    }
    rows = [
        ("plain diffusers DDIM loop (pipe.__call__)", res["plain_s_median"], None),
        ("pxpo_lite.sample (per-element log-probs)", res["sample_s_median"], res["sample_vs_plain_ratio_median"]),
        (f"{args.steps} UNet forward passes (floor)", res["unet_forwards_s_median"], None),
        ("pxpo_lite.rescore", res["rescore_s_median"], res["rescore_vs_unet_ratio_median"]),
    ]
    print(f"model={args.model} device={args.device} threads={res['threads']} batch={args.batch} steps={args.steps} "
          f"guidance={w} reps={args.reps} (medians)")
    print(f"{'':44s} {'seconds':>9s} {'ratio':>7s}")
    for name, s, ratio in rows:
        print(f"{name:44s} {s:9.3f} {'' if ratio is None else f'{ratio:7.3f}'}")
    print(f"same seed -> same images as pipe(): max |Δ| = {same:.1e}; rescore reproduces log-probs: max |Δ| = {exact:.1e}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2))
        print("wrote", args.out)
    return res


if __name__ == "__main__":
    main()
