"""Localised human feedback, measured: does the disliked region change visibly while the rest stays?

For each image (a prompt of the world with hair × a seed), each synthetic feedback rule
(``pxpo_lite.synthetic_feedback``: segmentation-aligned such as "dislike hair, like background",
or free strokes such as "dislike large_blob", "dislike stroke", "dislike blob, dislike blob") and
each **variant** (RefineConfig overrides; ``default`` = RefineConfig's defaults), a
:class:`pxpo_lite.FeedbackSession` runs ``--rounds`` rounds (the rule painted on the current image
each round). Per image, measured from the first image in the regions of the first round's map:

* mean |Δ| (over RGB, on [0, 1]) in the disliked, liked and unpainted pixels after the last round,
  and ``disliked/unpainted`` (goal ≥ 5 on average, ≥ 3 on every image), ``liked/unpainted`` (≤ 1);
* rounds and seconds until the disliked change reaches ``--target`` (0.15; None: not reached);
* **new-seed transfer** (did the *model* learn, or was only this image edited?): the final
  adapters and the base model sample a new noise seed of the same prompt, the rule is painted on
  the base image, and ``transfer_ratio`` = change in its disliked part ÷ change everywhere else;
* **plausibility**: the segmenter's mean confidence (max softmax) in the disliked region of the
  last image vs the first (a smeared patch is not a part it recognises), and ``seam_ratio`` =
  mean gradient magnitude on the stroke's edge, last ÷ first (> 1: a new edge at the stroke).

Summary rows: mean, std and min–max over images; JSON (with the command) + a figure + a markdown
table. One process by default (one thread)::

    python benchmarks/bench_localised_feedback.py --images 8 --seeds 0 1 \\
        --rules "dislike large_blob" "dislike hair, like background" --variants default "ramp=none lr=1e-3"

Variant specs: ``default`` or space-separated ``key=value`` with keys ``beta`` (keep_beta),
``lr``, ``ramp`` (keep_ramp in pixels, ``none`` for the hard edge), ``dislike``
(dislike_scale), ``area`` (dislike_area, ``none`` for off), ``updates`` (updates_per_round), ``target``
(target_change, ``none`` for fixed rounds), ``max_updates`` (max_updates_per_round), ``redraw_ramp``
(the composite's band in pixels, ``none``: a hard edge), ``redraw_liked`` (``false``: liked pixels are never redrawn); unspecified keys are RefineConfig's defaults.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RULES = ("dislike large_blob", "dislike hair, like background")
OUT = ROOT / "benchmarks" / "results" / "localised_feedback"
KEYS = {"beta": "keep_beta", "lr": "learning_rate", "ramp": "keep_ramp", "dislike": "dislike_scale", "updates": "updates_per_round",
        "composite": "composite", "area": "dislike_area", "target": "target_change", "max_updates": "max_updates_per_round",
        "redraw_ramp": "redraw_ramp", "redraw_liked": "redraw_liked"}
TRANSFER_SEED = 1000  # the new-seed transfer samples seed + 1000


def hair_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct prompts of the world with hair (not bald), drawn with ``seed``."""
    from pxpo_lite import world

    pool = [p for p in world.all_prompts() if not world.parse_prompt(p).bald]
    idx = np.random.default_rng(seed).choice(len(pool), size=n, replace=False)
    return [pool[i] for i in sorted(idx)]


def parse_variant(spec: str) -> dict:
    """'default' -> {}; 'ramp=4 lr=3e-3' -> {'keep_ramp': 4.0, 'learning_rate': 0.003}."""
    if spec.strip() == "default":
        return {}
    out = {}
    for item in spec.split():
        key, _, value = item.partition("=")
        if key not in KEYS or not value:
            raise ValueError(f"cannot read {item!r} of variant {spec!r}: write key=value with a key from {sorted(KEYS)}, "
                             "e.g. 'ramp=4 lr=3e-3' (ramp=none: the hard edge), or 'default'")
        if key in ("composite", "redraw_liked"):
            out[KEYS[key]] = value.lower() in ("1", "true", "yes", "on")
            continue
        out[KEYS[key]] = None if value.lower() == "none" else (int(value) if key in ("updates", "max_updates") else float(value))
    return out


_W: dict = {}


def _init_worker():
    torch.set_num_threads(1)
    from pxpo_lite.models import load_segmenter, load_tiny_pipeline

    _W["pipe"], _W["seg"] = load_tiny_pipeline("cpu"), load_segmenter("cpu")


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 and math.isfinite(a) else float("nan")


def _mean(x: np.ndarray, m: np.ndarray) -> float:
    return float(x[m].mean()) if m.any() else float("nan")


def plausibility(image: np.ndarray, region: np.ndarray) -> float:
    """The segmenter's mean confidence (max softmax over parts) in ``region`` of ``image`` (3,H,W)."""
    with torch.no_grad():
        p = torch.softmax(_W["seg"](torch.as_tensor(image)[None]), 1)[0].max(0).values.numpy()
    return _mean(p, region)


def edge_strength(image: np.ndarray) -> np.ndarray:
    """(H,W) gradient magnitude (forward differences, RGB mean)."""
    gy = np.abs(np.diff(image, axis=1, append=image[:, -1:])).mean(0)
    gx = np.abs(np.diff(image, axis=2, append=image[:, :, -1:])).mean(0)
    return np.hypot(gx, gy)


def run_one(job: dict) -> dict:
    """One session: ``job`` = prompt, seed, rule, variant, overrides, rounds, num_steps, target."""
    from pxpo_lite.feedback import FeedbackSession, RefineConfig, change_stats
    from pxpo_lite.keep import adapters_disabled
    from pxpo_lite.keep_ramp import distance_to_disliked
    from pxpo_lite.sampling import sample
    from pxpo_lite.synthetic_feedback import synthetic_heatmap

    t0, c0 = time.perf_counter(), time.process_time()
    cfg = RefineConfig(num_steps=job["num_steps"], **job["overrides"])
    s = FeedbackSession(_W["pipe"], job["prompt"], seed=job["seed"], config=cfg)
    first_map, rounds_to, seconds_to, elapsed, curve, updates = None, None, None, 0.0, [], []
    for r in range(job["rounds"]):
        heat = synthetic_heatmap(s.image, job["rule"], seed=job["seed"], segmenter=_W["seg"])
        first_map = heat if first_map is None else first_map
        rnd = s.step(heat, source="synthetic")
        if rnd is None:  # the rule finds nothing left to dislike (say the hair is gone): the person would stop here
            if not s.rounds:
                raise ValueError(f"rule {job['rule']!r} paints nothing on the first image of {job['prompt']!r}, seed {job['seed']}")
            break
        elapsed += rnd.seconds
        updates.append(rnd.diagnostics["updates"])
        curve.append(change_stats(s.images[0], rnd.image_after, first_map)["change_disliked"])
        if rounds_to is None and curve[-1] >= job["target"]:
            rounds_to, seconds_to = r + 1, elapsed
    first, last = s.images[0], s.images[-1]
    st = change_stats(first, last, first_map)
    dis = first_map < 0
    # new-seed transfer: the same prompt, a seed never trained on, adapters on vs off
    gen = lambda: torch.Generator().manual_seed(job["seed"] + TRANSFER_SEED)  # noqa: E731
    kw = dict(num_steps=cfg.num_steps, eta=cfg.eta, guidance_scale=cfg.guidance_scale, progress=False)
    with torch.no_grad():
        s.pipe.unet.eval()
        with adapters_disabled(s.pipe.unet):
            base = sample(s.pipe, [job["prompt"]], generator=gen(), **kw).images[0].numpy()
        adapted = sample(s.pipe, [job["prompt"]], generator=gen(), **kw).images[0].numpy()
    tmap = synthetic_heatmap(base, job["rule"], seed=job["seed"], segmenter=_W["seg"])
    tchange = np.abs(adapted - base).mean(0)
    edge = (distance_to_disliked(torch.from_numpy(first_map)[None])[0].numpy() <= 1.5) & (
        distance_to_disliked(torch.from_numpy(-np.where(dis, 0.0, 1.0)).float()[None])[0].numpy() <= 1.5)
    out = {k: job[k] for k in ("prompt", "seed", "rule", "variant")}
    out.update(
        change_disliked=st["change_disliked"], change_liked=st["change_liked"], change_unpainted=st["change_unpainted"],
        disliked_over_unpainted=_ratio(st["change_disliked"], st["change_unpainted"]),
        liked_over_unpainted=_ratio(st["change_liked"], st["change_unpainted"]),
        disliked_pixels=int(dis.sum()), liked_pixels=int((first_map > 0).sum()),
        change_disliked_per_round=curve, rounds_to_target=rounds_to, seconds_to_target=seconds_to,
        seconds_per_round=elapsed / len(s.rounds), updates_per_round_made=updates, rounds_made=len(s.rounds),
        transfer_change_part=_mean(tchange, tmap < 0), transfer_change_rest=_mean(tchange, tmap >= 0),
        plausibility_first=plausibility(first, dis), plausibility_last=plausibility(last, dis),
        seam_ratio=_ratio(_mean(edge_strength(last), edge), _mean(edge_strength(first), edge)),
        keep_kl_last=s.rounds[-1].update.get("keep_kl_last"), seconds=time.perf_counter() - t0,
        cpu_seconds=time.process_time() - c0,  # this process's CPU time: the wall time above grows when others share the cores
    )
    out["transfer_ratio"] = _ratio(out["transfer_change_part"], out["transfer_change_rest"])
    if job.get("keep_images"):
        out["images"] = {"first": first.tolist(), "last": last.tolist(), "map": first_map.tolist()}
    return out


def spread(values) -> dict:
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if not len(v):
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None, "median": None}
    return {"n": int(len(v)), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "median": float(np.median(v))}


SPREAD_KEYS = ("disliked_over_unpainted", "liked_over_unpainted", "change_unpainted", "change_disliked", "change_liked",
               "transfer_ratio", "plausibility_first", "plausibility_last", "seam_ratio", "seconds_per_round",
               "cpu_seconds", "rounds_to_target", "seconds_to_target")


def summarise(rows: list[dict], target: float = 0.15, max_rounds: int = 5) -> list[dict]:
    out = []
    for rule in dict.fromkeys(r["rule"] for r in rows):
        for variant in dict.fromkeys(r["variant"] for r in rows):
            sel = [r for r in rows if r["rule"] == rule and r["variant"] == variant]
            if not sel:
                continue
            d = {"rule": rule, "variant": variant, "config": sel[0].get("config"), "images": len(sel)}
            d.update({k: spread(r[k] for r in sel) for k in SPREAD_KEYS})
            d["reached_target"] = sum(r["rounds_to_target"] is not None and r["rounds_to_target"] <= max_rounds for r in sel)
            dou, lou = d["disliked_over_unpainted"], d["liked_over_unpainted"]
            d["goals"] = {
                f"change_disliked_ge_{target:g}_every_image": d["reached_target"] == len(sel),
                "disliked_over_unpainted_mean_ge_5": dou["mean"] is not None and dou["mean"] >= 5,
                "disliked_over_unpainted_min_ge_3": dou["min"] is not None and dou["min"] >= 3,
                "liked_over_unpainted_mean_le_1": None if lou["mean"] is None else lou["mean"] <= 1,
                "seconds_per_round_le_10": d["seconds_per_round"]["max"] <= 10,
            }
            out.append(d)
    return out


def _seam(s: dict) -> str:
    """The seam ratio's median (mean, max): a ratio over a stroke edge that was flat in the first image
    (a small blob on a cheek) is huge for a faint new edge, so the median is the typical image."""
    return "–" if s["mean"] is None else f"{s['median']:.2f} ({s['mean']:.2f}, {s['max']:.2f})"


def table(summary: list[dict]) -> str:
    def f(s, p=2):
        return "–" if s["mean"] is None else f"{s['mean']:.{p}f} ({s['min']:.{p}f}–{s['max']:.{p}f})"

    lines = ["| rule | variant | images | disliked Δ | disliked ÷ unpainted | liked ÷ unpainted | unpainted Δ | "
             "reached 0.15 | new-seed part ÷ rest | seg. confidence first → last | seam median (mean, max) | s/round |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in summary:
        lines.append(f"| {d['rule']} | {d['variant']} | {d['images']} | {f(d['change_disliked'], 3)} | {f(d['disliked_over_unpainted'])} | "
                     f"{f(d['liked_over_unpainted'])} | {f(d['change_unpainted'], 3)} | {d['reached_target']}/{d['images']} | "
                     f"{f(d['transfer_ratio'])} | {d['plausibility_first']['mean']:.2f} → {d['plausibility_last']['mean']:.2f} | "
                     f"{_seam(d['seam_ratio'])} | {d['seconds_per_round']['mean']:.1f} |")
    return "\n".join(lines)


def figure(rows: list[dict], summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ex = [r for r in rows if "images" in r]
    ncols = max(3, 2 + len(ex))
    fig, axes = plt.subplots(2, ncols, figsize=(3.0 * ncols, 6.2))
    for ax in axes.ravel():
        ax.axis("off")
    groups = [(d["rule"], d["variant"]) for d in summary]
    for ax, key, goal, title in ((axes[0, 0], "change_disliked", 0.15, "disliked mean |Δ| (goal ≥ 0.15)"),
                                 (axes[0, 1], "disliked_over_unpainted", 5, "disliked ÷ unpainted (goal ≥ 5)")):
        ax.axis("on")
        for k, (rule, variant) in enumerate(groups):
            v = [r[key] for r in rows if r["rule"] == rule and r["variant"] == variant]
            ax.scatter(np.full(len(v), k) + np.linspace(-0.15, 0.15, len(v)), v, s=10, alpha=0.6)
            ax.plot([k - 0.25, k + 0.25], [np.nanmean(v)] * 2, "k-")
        ax.axhline(goal, color="r", ls="--", lw=1)
        ax.set_xticks(range(len(groups)), [f"{r[:18]}\n{v[:18]}" for r, v in groups], fontsize=6, rotation=60)
        ax.set_title(title, fontsize=9)
    if ex:
        axes[1, 0].imshow(np.asarray(ex[0]["images"]["first"]).transpose(1, 2, 0))
        axes[1, 0].set_title("first image", fontsize=8)
        axes[1, 1].imshow(np.asarray(ex[0]["images"]["map"]), cmap="RdYlGn", vmin=-1, vmax=1)
        axes[1, 1].set_title(f"painted: {ex[0]['rule'][:24]}", fontsize=7)
        for k, r in enumerate(ex):
            axes[1, 2 + k].imshow(np.clip(np.asarray(r["images"]["last"]).transpose(1, 2, 0), 0, 1))
            axes[1, 2 + k].set_title(f"last, {r['variant'][:22]}\nΔ {r['change_disliked']:.2f}, ×{r['disliked_over_unpainted']:.1f}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=8, help="prompts with hair")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--rules", nargs="+", default=list(RULES))
    ap.add_argument("--variants", nargs="+", default=["default", "ramp=none lr=1e-3"],
                    help="'default' or 'key=value ...' RefineConfig overrides (see the module docstring)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--num-steps", type=int, default=10, help="DDIM steps of each image")
    ap.add_argument("--target", type=float, default=0.15, help="disliked mean |Δ| to reach")
    ap.add_argument("--jobs", type=int, default=1, help="processes (one thread each)")
    ap.add_argument("--out", type=str, default=str(OUT), help="writes OUT.json and OUT.png")
    args = ap.parse_args(argv)
    from dataclasses import asdict

    from pxpo_lite.feedback import RefineConfig

    variants = {v: parse_variant(v) for v in args.variants}
    configs = {v: {k: val for k, val in asdict(RefineConfig(num_steps=args.num_steps, **o)).items()
                   if k in KEYS.values()} for v, o in variants.items()}
    prompts = hair_prompts(args.images)
    jobs = [{"prompt": p, "seed": s, "rule": rule, "variant": v, "overrides": o, "rounds": args.rounds,
             "num_steps": args.num_steps, "target": args.target,
             "keep_images": p == prompts[0] and s == args.seeds[0] and rule == args.rules[0]}
            for rule in args.rules for p in prompts for s in args.seeds for v, o in variants.items()]
    t0 = time.perf_counter()

    def report(k, r):
        print(f"[{k + 1}/{len(jobs)}] {r['rule']} | {r['variant']} | seed {r['seed']}: disliked Δ {r['change_disliked']:.3f}, "
              f"÷ unpainted {r['disliked_over_unpainted']:.2f} ({r['seconds']:.0f} s)", flush=True)

    rows = []
    if args.jobs > 1:
        with mp.get_context("spawn").Pool(args.jobs, initializer=_init_worker) as pool:
            for k, r in enumerate(pool.imap(run_one, jobs, chunksize=1)):
                rows.append(r)
                report(k, r)
    else:
        _init_worker()
        for k, j in enumerate(jobs):
            rows.append(run_one(j))
            report(k, rows[-1])
    wall = time.perf_counter() - t0
    for r in rows:
        r["config"] = configs[r["variant"]]
    summary = summarise(rows, args.target, args.rounds)
    result = {
        "command": "python benchmarks/bench_localised_feedback.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "settings": {**{k: v for k, v in vars(args).items() if k != "out"}, "prompts": prompts, "variant_configs": configs,
                     "transfer_seed": f"seed + {TRANSFER_SEED}", "model": "shipped tiny pipeline, LoRA r4"},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                    "processes": args.jobs, "threads_per_process": 1},
        "wall_s": wall,
        "summary": summary,
        "per_image": [{k: v for k, v in r.items() if k != "images"} for r in rows],
    }
    result["config"] = {"command": result["command"], **result["settings"], "wall_s": round(wall, 1)}  # what is shipped
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    figure(rows, summary, out.with_suffix(".png"))
    print(table(summary))
    print(f"\n{len(rows)} sessions in {wall / 60:.1f} min; wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
