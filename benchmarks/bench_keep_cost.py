"""The keep term's cost: one trained step (forward with grad + backward) without and with the
reference forward μ_ref, on the shipped tiny model (LoRA: adapters switched off give μ_ref; full:
a frozen copy). Moved out of the package: only ``pxpo_lite/update.py`` changes weights by RL,
and this measurement calls ``backward`` itself.

    python benchmarks/bench_keep_cost.py --batch 1 8 --reps 5 --threads 1
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pxpo_lite import lora  # noqa: E402
from pxpo_lite.keep import frozen_copy, keep_term, step_means  # noqa: E402
from pxpo_lite.models import load_tiny_pipeline  # noqa: E402
from pxpo_lite.sampling import sample, step_log_prob  # noqa: E402


# --------------------------------------------------------------------------------------------
def measure_reference_cost(pipe, batch_sizes=(1, 8), reps: int = 5, num_steps: int = 10, step_index: int = 4,
                           reference_unet: torch.nn.Module | None = None, seed: int = 0) -> dict:
    """Median seconds of one trained step (forward with grad + backward) without and with μ_ref.

    "without": ``step_log_prob`` → PXPO-style loss → backward; "with": :func:`step_means` for
    μ_θ and μ_ref (adapters off, or ``reference_unet``) → the same loss + :func:`keep_term` →
    backward. Repetitions are interleaved; returns ``{batch: {"without_s", "with_s", "ratio"}}``.
    """

    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    if not params:
        raise ValueError("pipe.unet has no trainable parameters: add LoRA adapters (lora.add_lora) or unfreeze it")
    result = {}
    for B in batch_sizes:
        traj = sample(pipe, ["a portrait with long blue hair and a red shirt on a pink background"] * B, num_steps=num_steps,
                      generator=torch.Generator().manual_seed(seed), progress=False)
        adv = torch.randn(B, *traj.latents.shape[-2:], generator=torch.Generator().manual_seed(seed))

        def without():
            lp = step_log_prob(pipe, traj, step_index)
            (-(adv[:, None] * lp).mean()).backward()

        def with_ref():
            pol = step_means(pipe, traj, step_index)
            ref = step_means(pipe, traj, step_index, reference=True, reference_unet=reference_unet)
            (-(adv[:, None] * pol.log_prob).mean() + keep_term(pol.mean, ref.mean, pol.sigma, None, 10.0).term).backward()

        times = {"without": [], "with": []}
        for r in range(reps + 1):  # the first round warms up and is dropped
            for name, fn in (("without", without), ("with", with_ref)):
                for p in params:
                    p.grad = None
                t0 = time.perf_counter()
                fn()
                if r:
                    times[name].append(time.perf_counter() - t0)
        a, b = float(np.median(times["without"])), float(np.median(times["with"]))
        result[B] = {"without_s": a, "with_s": b, "ratio": b / a}
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Cost of the keep term's reference forward on the shipped tiny model.")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mode", choices=["lora", "full"], default="lora", help="lora: adapters off for μ_ref; full: frozen copy")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_tiny_pipeline()
    ref = None
    if args.mode == "lora":
        lora.add_lora(pipe.unet, 4, target_modules=lora.TINY_TARGETS)
    else:
        ref = frozen_copy(pipe.unet)
        pipe.unet.requires_grad_(True)
    res = measure_reference_cost(pipe, args.batch, args.reps, reference_unet=ref)
    print(json.dumps({"mode": args.mode, "threads": args.threads, "reps": args.reps, "results": res}, indent=2))


if __name__ == "__main__":
    main()
