"""Prompt fidelity of the tiny flow-matching model beside the shipped DDIM model, one protocol.

    python scripts/eval_flow_model.py --out docs/flow_model_eval.json

Both models get the same held-out prompts (``world.render(n, seed=HELDOUT_WORLD_SEED + 1)``, those
of ``python -m pxpo_lite.evaluate``), the *same initial noise* (one ``torch.randn`` of seed
``--seed``, passed as ``latents``), the same number of steps and the same guidance scales. Each is
sampled with its own pipeline's deterministic sampler (flow: Euler ODE; DDIM: η = 0), and the DDIM
model also with η = 1 through ``pxpo_lite.sample`` (the stochastic policy RL samples from, the
README's protocol). The shipped segmenter judges every image (:func:`pxpo_lite.fidelity.prompt_fidelity`);
the report lists the images that miss (prompt and hair pixels seen, at most 40 per row).

Writes one JSON report; an existing file at ``--out`` is replaced only if this script wrote it.
``--add-to REPORT`` keeps an earlier report's rows and adds this run's (same prompts, noise and weights).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from pxpo_lite import fidelity, models, world
from pxpo_lite.evaluate import sample_images
from pxpo_lite.files import atomic_write_json
from pxpo_lite.flow_models import TINY_FLOW_DIR, load_tiny_flow_pipeline
from pxpo_lite.pretrain import HELDOUT_WORLD_SEED

COMMAND = "python scripts/eval_flow_model.py"
SAMPLERS = {"flow": "flow model, Euler ODE (TinyFlowPipeline.__call__)",
            "ddim": "DDIM model, DDIM eta=0 (TinyPortraitPipeline.__call__)",
            "ddim_eta1": "DDIM model, DDIM eta=1 (pxpo_lite.sample, noise seed --seed)"}


def pipe_images(pipe, prompts, noise, steps, guidance, batch=64):
    return torch.cat([pipe(prompts[i:i + batch], num_inference_steps=steps, guidance_scale=guidance,
                           latents=noise[i:i + batch]).images for i in range(0, len(prompts), batch)])


def training_record(folder: Path) -> dict:
    info = json.loads((folder / "TRAINING.json").read_text())
    return {k: info[k] for k in ("command", "steps", "batch", "wall_time_s", "cpu_time_s", "loss_last_200") if k in info}


def main(argv=None):
    ap = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--steps", type=int, nargs="+", default=[20])
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    ap.add_argument("--seed", type=int, default=1, help="noise seed (the same noise for every model)")
    ap.add_argument("--samplers", nargs="+", choices=list(SAMPLERS), default=list(SAMPLERS))
    ap.add_argument("--flow", type=Path, default=TINY_FLOW_DIR, help="flow pipeline folder (default: shipped)")
    ap.add_argument("--out", type=Path, required=True, help="the JSON report, e.g. docs/flow_model_eval.json")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--add-to", type=Path, default=None,
                    help="an earlier report of this script with the same --n, --seed and weights: its results are kept "
                         "and this run's rows are added (the commands are listed under 'commands')")
    args = ap.parse_args(argv)
    if args.out.exists():
        try:
            ours = str(json.loads(args.out.read_text()).get("command", "")).startswith(COMMAND)
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise ValueError(f"refusing to overwrite {str(args.out)!r}: it is not a report of {COMMAND}")
    if args.threads:
        torch.set_num_threads(args.threads)

    pipes = {"flow": load_tiny_flow_pipeline(path=args.flow), "ddim": models.load_tiny_pipeline()}
    seg = models.load_segmenter()
    prompts = world.render(args.n, seed=HELDOUT_WORLD_SEED + 1).prompts
    noise = torch.randn((args.n, 3, world.SIZE, world.SIZE), generator=torch.Generator().manual_seed(args.seed))
    report = {"command": " ".join([COMMAND] + (argv if argv is not None else sys.argv[1:])),
              "n": args.n, "prompts": "world.render(n, seed=HELDOUT_WORLD_SEED + 1).prompts",
              "bald_prompts": sum(world.parse_prompt(p).bald for p in prompts), "noise_seed": args.seed,
              "samplers": {s: SAMPLERS[s] for s in args.samplers},
              "training": {"flow": training_record(args.flow), "ddim": training_record(models.TINY_PIPELINE_DIR)},
              "results": {}, "sample_s": {}}
    if args.add_to is not None:
        earlier = json.loads(args.add_to.read_text())
        same = {k: (earlier.get(k), report[k]) for k in ("n", "prompts", "noise_seed", "training")}
        differ = [k for k, (a, b) in same.items() if a != b]
        if not str(earlier.get("command", "")).startswith(COMMAND) or differ:
            raise ValueError(f"--add-to {str(args.add_to)!r} is not a report of {COMMAND} with this run's protocol "
                             f"(differs in {differ or ['command']}); run without --add-to for a new report")
        commands = earlier.get("commands", [earlier["command"]]) + [report["command"]]
        report = {**earlier, "commands": commands, "samplers": {**earlier["samplers"], **report["samplers"]}}
        report.setdefault("sample_s", {})
    for s in args.samplers:
        for steps in args.steps:
            for g in args.guidance:
                t = time.perf_counter()
                if s == "ddim_eta1":
                    images = sample_images(pipes["ddim"], prompts, steps=steps, guidance=g, seed=args.seed, eta=1.0)
                else:
                    images = pipe_images(pipes[s], prompts, noise, steps, g)
                report["sample_s"][f"{s} steps={steps} guidance={g}"] = round(time.perf_counter() - t, 1)
                fid = fidelity.prompt_fidelity(images, prompts, seg, per_image=True)
                misses = [{"i": i, "prompt": prompts[i], "hair_pixels": j["hair_pixels"]}
                          for i, (m, j) in enumerate(zip(fid.pop("matches"), fid.pop("judgements"))) if not all(m.values())]
                report["results"].setdefault(s, {}).setdefault(str(steps), {})[str(g)] = {**fid, "misses": misses[:40]}
                print(f"{s:9s} steps {steps:2d} guidance {g}: " + ", ".join(f"{k} {v * 100:.1f}%" for k, v in fid.items() if k not in ("n", "misses")),
                      flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, report, indent=2)


if __name__ == "__main__":
    main()
