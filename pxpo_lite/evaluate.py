"""Measure the shipped tiny model: ``python -m pxpo_lite.evaluate``.

Samples images for prompts drawn from held-out world seeds (never seen in pretraining), with
fresh noise seeds, and reports the segmenter-judged prompt fidelity per attribute
(:mod:`pxpo_lite.fidelity`), the segmenter's own held-out accuracy, load and sampling times.
Writes a JSON report (``model_eval.json``) and a sample grid (``samples.png``, prompt above each
image) into ``--out DIR`` (required: ``--out docs`` in this repository, see the Makefile). Only
files this command wrote are replaced: an existing ``model_eval.json`` must be one of its reports,
and an existing ``samples.png`` one that report records (its SHA-256); anything else is refused
before any work starts.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from . import fidelity, models, world
from .files import atomic_write, atomic_write_json, sha256_file
from .plotting import image_grid
from .pretrain import HELDOUT_WORLD_SEED, evaluate_segmenter
from .rewards import default_segmenter
from .sampling import sample


def sample_images(pipe, prompts, steps: int = 20, guidance: float | None = None, seed: int = 0, batch: int = 64, eta: float = 1.0):
    """Images (B,3,H,W) of ``prompts`` from the DDIM sampler (:func:`pxpo_lite.sample`), ``batch`` at a time, seeded."""
    g = torch.Generator().manual_seed(seed)
    return sample(pipe, list(prompts), num_steps=steps, eta=eta, guidance_scale=guidance, generator=g, progress=False,
                  batch_size=batch).images


COMMAND = "python -m pxpo_lite.evaluate"
REPORT, GRID = "model_eval.json", "samples.png"


def check_out(out: Path) -> None:
    """Raise ValueError unless ``out``'s report and grid are missing or were written by this command."""
    try:
        report = json.loads((out / REPORT).read_text()) if (out / REPORT).exists() else None
    except (OSError, ValueError):
        report = "unreadable"
    ours = isinstance(report, dict) and str(report.get("command", "")).startswith(COMMAND)
    problem = None
    if report is not None and not ours:
        problem = f"{str(out / REPORT)!r} is not a report of {COMMAND}"
    elif (out / GRID).exists():
        recorded = report.get("files", {}).get(GRID) if ours and isinstance(report.get("files"), dict) else None
        legacy = ours and "files" not in report  # a report written before it recorded its files
        if not legacy and (recorded is None or recorded != sha256_file(out / GRID)):
            problem = f"{str(out / GRID)!r} is not the grid a report of {COMMAND} there records"
    if problem:
        raise ValueError(f"refusing to write into --out {str(out)!r}: {problem}, and it would be overwritten. "
                         "Pass --out a new or empty folder, or move that file away")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m pxpo_lite.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=512, help="number of samples (default 512)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0], help="guidance scales to evaluate")
    ap.add_argument("--eta", type=float, default=1.0, help="DDIM eta (1.0: the stochastic policy RL samples from)")
    ap.add_argument("--pipeline", type=Path, default=None, help="pipeline folder (default: shipped)")
    ap.add_argument("--out", type=Path, required=True, help="folder for model_eval.json and samples.png "
                    "(in this repository: --out docs); files there not written by this command are refused")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    check_out(args.out)

    t = time.perf_counter()
    pipe = models.load_tiny_pipeline(path=args.pipeline)
    load_s = time.perf_counter() - t
    seg = default_segmenter()  # the one cached loader (rewards.py)
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
            fig = image_grid(images[:32], prompts[:32], ncols=8, suptitle="tiny model samples (held-out prompts and seeds)")
            atomic_write(args.out / GRID, lambda f: fig.savefig(f, dpi=90, format="png"))
            report["files"] = {GRID: sha256_file(args.out / GRID)}
    report["segmenter_heldout"] = evaluate_segmenter(seg)
    atomic_write_json(args.out / REPORT, report, indent=2)
    print(json.dumps({k: v for k, v in report.items() if k != "by_guidance"}, indent=2))


if __name__ == "__main__":
    main()
