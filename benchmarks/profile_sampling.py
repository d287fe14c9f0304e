"""Where does our sampling's time go? The UNet's share of one sampling call on the peer benchmark's models.

Samples ``--images`` prompts in one call (20 DDIM steps, η = 1, guidance 5: the settings of
``bench_vs_trl.py``) on its ``tiny`` or ``small`` Stable Diffusion model, ``--reps`` times, one
thread, and prints the wall time, the UNet's forward time (timed by wrapping ``unet.forward``), the
VAE decode and the rest (scheduler steps, log-probabilities, guidance, bookkeeping). If the UNet
is nearly all of it, sampling cannot get faster without a faster UNet::

    python benchmarks/profile_sampling.py --size small --images 16 --reps 3
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def timed(module, name: str, totals: dict) -> None:
    """Wrap ``module.<name>`` so its seconds add up in ``totals[name]``."""
    inner = getattr(module, name)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        out = inner(*args, **kwargs)
        totals[name] = totals.get(name, 0.0) + time.perf_counter() - t
        return out

    setattr(module, name, wrapper)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=["tiny", "small"], default="small")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    from bench_vs_trl import build_pipeline
    from pxpo_lite.sampling import sample

    torch.set_num_threads(1)
    pipe = build_pipeline(args.size)
    totals: dict = {}
    timed(pipe.unet, "forward", totals)
    timed(pipe.vae, "decode", totals)
    rows = []
    for rep in range(args.reps):
        totals.clear()
        t = time.perf_counter()
        sample(pipe, ["a photo of a cat"] * args.images, num_steps=20, eta=1.0, guidance_scale=5.0,
               generator=torch.Generator().manual_seed(rep), progress=False)
        wall = time.perf_counter() - t
        unet, vae = totals.get("forward", 0.0), totals.get("decode", 0.0)
        rows.append({"wall_s": wall, "unet_s": unet, "vae_s": vae, "other_s": wall - unet - vae})
        print(f"{args.size}, {args.images} images in one call: {wall:.2f} s, UNet {unet:.2f} s ({100 * unet / wall:.0f} %), "
              f"VAE decode {vae:.2f} s, the rest {wall - unet - vae:.2f} s", flush=True)
    return rows


if __name__ == "__main__":
    main()
