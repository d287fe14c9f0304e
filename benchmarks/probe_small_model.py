"""What else could make our epoch faster on the peer benchmark's small model? Three probes, one thread.

``bench_vs_trl.py`` leaves our DDPO at about 1.3× TRL on its ``small`` model (the UNet on 16×16
latents), where the UNet is 96 % of sampling (``profile_sampling.py``). This script measures three
candidates that would keep the same distribution and gradient, each side by side and interleaved:

1. **Attention kernel**: the CPU's flash attention (what PyTorch picks) against the plain
   matrix-product ("math") kernel, at the shapes the UNet's attention layers see in the update
   (recorded from one forward of a micro-batch's timesteps), forward and forward+backward.
2. **Timesteps per update forward**: the automatic ``timestep_batch`` (16 here: a forward of 16 and
   one of 4) against all 20 in one forward — one epoch's update phase (4 micro-batches of 4,
   guidance 5, LoRA r = 4 on the attention projections, NHWC as the default on a CPU).
3. **LoRA merged for sampling**: one sampling call of 16 (20 DDIM steps, η = 1, guidance 5) with the
   adapters as peft runs them against the same adapters merged into the weights.

Usage (about 3 minutes on a 2-core CPU)::

    python benchmarks/probe_small_model.py --reps 5
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

PROMPTS = ["a photo of a cat"] * 16


def seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def spread(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.3f} s (min {min(xs):.3f}, max {max(xs):.3f})"


def attention_shapes(pipe, traj) -> list[tuple]:
    """(q, k) shapes of every attention call in one guided forward of 4 samples × 16 timesteps."""
    from pxpo_lite.sampling import step_log_probs

    shapes, inner = [], F.scaled_dot_product_attention

    def record(q, k, v, *a, **kw):
        shapes.append((tuple(q.shape), tuple(k.shape)))
        return inner(q, k, v, *a, **kw)

    F.scaled_dot_product_attention = record
    try:
        with torch.no_grad():
            step_log_probs(pipe, traj, list(range(16)), torch.arange(4))
    finally:
        F.scaled_dot_product_attention = inner
    return sorted(set(shapes))


def probe_attention(shapes, reps: int) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    print("\n1. attention kernel (flash ÷ math time; below 1: flash is faster)")
    for qs, ks in shapes:
        for grad in (False, True):
            q, k, v = (torch.randn(s, requires_grad=grad) for s in (qs, ks, ks))
            times = {}
            for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
                def call():
                    with sdpa_kernel(backend):
                        out = F.scaled_dot_product_attention(q, k, v)
                        if grad:
                            out.sum().backward()
                times[backend] = min(seconds(call) for _ in range(reps))
            ratio = times[SDPBackend.FLASH_ATTENTION] / times[SDPBackend.MATH]
            print(f"   q {qs}, k {ks}, {'forward+backward' if grad else 'forward'}: "
                  f"flash {1e3 * times[SDPBackend.FLASH_ATTENTION]:.1f} ms, math {1e3 * times[SDPBackend.MATH]:.1f} ms, ratio {ratio:.2f}")


def probe_timestep_batch(pipe, traj, reps: int) -> None:
    from pxpo_lite.lora import lora_parameters
    from pxpo_lite.update import policy_gradient_step

    params = lora_parameters(pipe.unet)
    opt = torch.optim.SGD(params, lr=0.0)  # lr 0: every repetition does the same work on the same weights
    adv = torch.randn(len(traj), generator=torch.Generator().manual_seed(0))

    def update(k: int) -> None:
        for mb in range(4):
            idx = torch.arange(4 * mb, 4 * mb + 4)
            policy_gradient_step(pipe, traj, adv, [(idx, i) for i in range(20)], opt, params, method="ddpo",
                                 clip_range=1e-4, max_grad_norm=1.0, timestep_batch=k)

    update(16)  # warm-up
    times = {16: [], 20: []}
    for _ in range(reps):
        for k in times:
            times[k].append(seconds(lambda: update(k)))
    print("\n2. one epoch's update phase (4 micro-batches × 20 timesteps, guided)")
    for k, ts in times.items():
        print(f"   timestep_batch={k}: {spread(ts)}")
    return times


def probe_merged_sampling(pipe, reps: int) -> None:
    from peft.tuners.lora import LoraLayer

    from pxpo_lite.sampling import sample

    merged = copy.deepcopy(pipe)
    for m in merged.unet.modules():
        if isinstance(m, LoraLayer):
            m.merge()
    times = {"LoRA as peft runs it": [], "LoRA merged into the weights": []}
    pipes = dict(zip(times, (pipe, merged)))
    for rep in range(reps + 1):
        for name, p in pipes.items():
            t = seconds(lambda: sample(p, PROMPTS, num_steps=20, eta=1.0, guidance_scale=5.0,
                                       generator=torch.Generator().manual_seed(rep), progress=False))
            if rep:  # the first round warms up
                times[name].append(t)
    print("\n3. one sampling call of 16 (20 steps, guidance 5)")
    for name, ts in times.items():
        print(f"   {name}: {spread(ts)}")
    return times


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--size", choices=["tiny", "small"], default="small", help="bench_vs_trl.py's model (tiny: a quick check)")
    args = ap.parse_args(argv)
    from bench_vs_trl import build_pipeline

    from pxpo_lite.lora import SD_TARGETS, add_lora
    from pxpo_lite.sampling import sample

    torch.set_num_threads(1)
    pipe = build_pipeline(args.size)
    pipe.unet.eval()
    add_lora(pipe.unet, rank=4, target_modules=SD_TARGETS)
    pipe.unet.to(memory_format=torch.channels_last)
    traj = sample(pipe, PROMPTS, num_steps=20, eta=1.0, guidance_scale=5.0, generator=torch.Generator().manual_seed(0),
                  progress=False)
    print(f"{args.size} model, one thread, torch {torch.__version__}, {args.reps} repetitions")
    shapes = attention_shapes(pipe, traj)
    probe_attention(shapes, args.reps)
    return {"attention_shapes": shapes, "timestep_batch_s": probe_timestep_batch(pipe, traj, args.reps),
            "sampling_s": probe_merged_sampling(pipe, args.reps)}


if __name__ == "__main__":
    main()
