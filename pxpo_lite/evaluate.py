"""Measure the shipped tiny model: ``python -m pxpo_lite.evaluate``.

Samples images for prompts drawn from held-out world seeds (never seen in pretraining), with
fresh noise seeds, and reports the segmenter-judged prompt fidelity per attribute
(:mod:`pxpo_lite.fidelity`), the segmenter's own held-out accuracy, load and sampling times.
Writes a JSON report and a sample grid (prompt above each image).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from . import fidelity, models, world
from .pretrain import HELDOUT_WORLD_SEED, evaluate_segmenter
from .sampling import sample


def sample_images(pipe, prompts, steps: int = 20, guidance: float | None = None, seed: int = 0, batch: int = 64, eta: float = 1.0):
    """Images (B,3,H,W) of ``prompts`` from the DDIM sampler (:func:`pxpo_lite.sample`), ``batch`` at a time, seeded."""
    g = torch.Generator().manual_seed(seed)
    return sample(pipe, list(prompts), num_steps=steps, eta=eta, guidance_scale=guidance, generator=g, progress=False,
                  batch_size=batch).images


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m pxpo_lite.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=512, help="number of samples (default 512)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0], help="guidance scales to evaluate")
    ap.add_argument("--eta", type=float, default=1.0, help="DDIM eta (1.0: the stochastic policy RL samples from)")
    ap.add_argument("--pipeline", type=Path, default=None, help="pipeline folder (default: shipped)")
    ap.add_argument("--out", type=Path, default=Path("docs"))
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    t = time.perf_counter()
    pipe = models.load_tiny_pipeline(path=args.pipeline)
    load_s = time.perf_counter() - t
    seg = models.load_segmenter()
    prompts = world.render(args.n, seed=HELDOUT_WORLD_SEED + 1).prompts

    report = {"command": "python -m pxpo_lite.evaluate " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
              "n": args.n, "steps": args.steps, "eta": args.eta, "load_s": round(load_s, 2), "by_guidance": {}}
    t = time.perf_counter()
    pipe(prompts[:16], num_inference_steps=20, generator=torch.Generator().manual_seed(0))
    report["sample_16x20_s"] = round(time.perf_counter() - t, 2)
    args.out.mkdir(parents=True, exist_ok=True)
    for gs in args.guidance:
        images = sample_images(pipe, prompts, steps=args.steps, guidance=gs, seed=1, eta=args.eta)
        fid = fidelity.prompt_fidelity(images, prompts, seg)
        report["by_guidance"][str(gs)] = fid
        print(f"guidance {gs}: " + ", ".join(f"{k} {v * 100:.1f}%" for k, v in fid.items() if k != "n"))
        if gs == args.guidance[0]:
            from .plotting import image_grid

            fig = image_grid(images[:32], prompts[:32], ncols=8, suptitle="tiny model samples (held-out prompts and seeds)")
            fig.savefig(args.out / "samples.png", dpi=90)
    report["segmenter_heldout"] = evaluate_segmenter(seg)
    (args.out / "model_eval.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "by_guidance"}, indent=2))


if __name__ == "__main__":
    main()
