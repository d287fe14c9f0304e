"""Localised human feedback, measured: does single-image refinement change what was disliked and keep the rest?

For each image (a prompt of the world with hair × a seed) and each synthetic feedback rule
(``pxpo_lite.synthetic_feedback``, e.g. "dislike hair, like background"), a
:class:`pxpo_lite.FeedbackSession` runs ``--rounds`` rounds (the rule is painted on the current
image each round), once **without** the keep term (``keep_beta=0``: plain PXPO) and once **with**
it (``keep_beta=β``: β·mean(w·KL(π_θ‖π_base)), w = 1 on unpainted and liked pixels, 0 on disliked
ones; ``pxpo_lite.keep``, notebook 06). After the last round, the change from the first image
(mean |final − first| over RGB) is measured in the regions of the first round's map:

* ``disliked/unpainted`` = change in the disliked region ÷ change on unpainted pixels (goal ≥ 5);
* ``liked/unpainted`` = change in the liked region ÷ change on unpainted pixels (goal ≤ 1);
* what "dislike" did to the disliked pixels: their mean distance to the prompt's background colour
  (``regions.towards_colour``), first image vs last (lower after = faded towards the background).

Per image, then mean, std and min–max over images; JSON (with the command) + a figure + a
markdown table. Usage (defaults: 5 rounds, RefineConfig's lr; ≈ 10 min on 2 quiet CPU cores)::

    python benchmarks/bench_localised_feedback.py --jobs 2
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

RULES = ("dislike hair, like background",)
MORE_RULES = ("dislike shirt, like hair",)  # run with --rules "dislike shirt, like hair" --out ..._shirt
OUT = ROOT / "benchmarks" / "results" / "localised_feedback"


def hair_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct prompts of the world with hair (not bald), drawn with ``seed``."""
    from pxpo_lite import world

    pool = [p for p in world.all_prompts() if not world.parse_prompt(p).bald]
    idx = np.random.default_rng(seed).choice(len(pool), size=n, replace=False)
    return [pool[i] for i in sorted(idx)]


_W: dict = {}


def _init_worker():
    torch.set_num_threads(1)
    from pxpo_lite.models import load_segmenter, load_tiny_pipeline

    _W["pipe"], _W["seg"] = load_tiny_pipeline("cpu"), load_segmenter("cpu")


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 and math.isfinite(a) else float("nan")


def run_one(job: dict) -> dict:
    """One session: ``job`` = prompt, seed, rule, variant, beta, rounds, num_steps, lr, keep_liked."""
    from pxpo_lite import regions, world
    from pxpo_lite.feedback import FeedbackSession, RefineConfig
    from pxpo_lite.synthetic_feedback import synthetic_heatmap

    t0 = time.perf_counter()
    cfg = RefineConfig(num_steps=job["num_steps"], learning_rate=job["lr"], keep_beta=job["beta"], keep_liked=job["keep_liked"])
    s = FeedbackSession(_W["pipe"], job["prompt"], seed=job["seed"], config=cfg)
    first_map = None
    for r in range(job["rounds"]):
        heat = synthetic_heatmap(s.image, job["rule"], seed=job["seed"], segmenter=_W["seg"])
        first_map = heat if first_map is None else first_map
        s.step(heat, source="synthetic")
    first, last = s.images[0], s.images[-1]
    change = np.abs(last - first).mean(0)

    def mean(m):
        return float(change[m].mean()) if m.any() else float("nan")

    dis, liked, unp = first_map < 0, first_map > 0, first_map == 0
    bg = regions.towards_colour(world.BACKGROUNDS[world.parse_prompt(job["prompt"]).background])
    dist = [-bg(torch.as_tensor(im)[None])[0].numpy() for im in (first, last)]
    ud = s.rounds[-1].update
    out = {k: job[k] for k in ("prompt", "seed", "rule", "variant", "beta")}
    out.update(
        change_disliked=mean(dis), change_liked=mean(liked), change_unpainted=mean(unp),
        disliked_pixels=int(dis.sum()), liked_pixels=int(liked.sum()),
        bg_distance_disliked_first=float(dist[0][dis].mean()) if dis.any() else float("nan"),
        bg_distance_disliked_last=float(dist[1][dis].mean()) if dis.any() else float("nan"),
        keep_kl_last=ud.get("keep_kl_last"), keep_kl_free_last=ud.get("keep_kl_free_last"),
        seconds=time.perf_counter() - t0,
    )
    out["disliked_over_unpainted"] = _ratio(out["change_disliked"], out["change_unpainted"])
    out["liked_over_unpainted"] = _ratio(out["change_liked"], out["change_unpainted"])
    if job.get("keep_images"):
        out["images"] = {"first": first.tolist(), "last": last.tolist(), "map": first_map.tolist()}
    return out


def spread(values) -> dict:
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if not len(v):
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {"n": int(len(v)), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max())}


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for rule in dict.fromkeys(r["rule"] for r in rows):
        for variant in dict.fromkeys(r["variant"] for r in rows):
            sel = [r for r in rows if r["rule"] == rule and r["variant"] == variant]
            if not sel:
                continue
            d = {"rule": rule, "variant": variant, "beta": sel[0]["beta"], "images": len(sel),
                 "disliked_over_unpainted": spread(r["disliked_over_unpainted"] for r in sel),
                 "liked_over_unpainted": spread(r["liked_over_unpainted"] for r in sel),
                 "change_unpainted": spread(r["change_unpainted"] for r in sel),
                 "bg_distance_disliked_first": spread(r["bg_distance_disliked_first"] for r in sel),
                 "bg_distance_disliked_last": spread(r["bg_distance_disliked_last"] for r in sel)}
            d["goal_disliked_ge_5"] = d["disliked_over_unpainted"]["mean"] is not None and d["disliked_over_unpainted"]["mean"] >= 5
            d["goal_liked_le_1"] = d["liked_over_unpainted"]["mean"] is not None and d["liked_over_unpainted"]["mean"] <= 1
            out.append(d)
    return out


def table(summary: list[dict]) -> str:
    def f(s):
        return "–" if s["mean"] is None else f"{s['mean']:.2f} ± {s['std']:.2f} ({s['min']:.2f}–{s['max']:.2f})"

    lines = ["| rule | variant | images | disliked ÷ unpainted (goal ≥ 5) | liked ÷ unpainted (goal ≤ 1) | "
             "disliked: distance to background, first → last |", "|---|---|---|---|---|---|"]
    for d in summary:
        a, b = d["bg_distance_disliked_first"]["mean"], d["bg_distance_disliked_last"]["mean"]
        lines.append(f"| {d['rule']} | {d['variant']} | {d['images']} | {f(d['disliked_over_unpainted'])} | "
                     f"{f(d['liked_over_unpainted'])} | {a:.3f} → {b:.3f} |")
    return "\n".join(lines)


def figure(rows: list[dict], summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ex = [r for r in rows if "images" in r]
    ncols = max(3, 1 + len(ex))
    fig, axes = plt.subplots(2, ncols, figsize=(3.2 * ncols, 6.4))
    groups = [(d["rule"], d["variant"]) for d in summary]
    for ax, key, goal, title in ((axes[0, 0], "disliked_over_unpainted", 5, "disliked ÷ unpainted change"),
                                 (axes[0, 1], "liked_over_unpainted", 1, "liked ÷ unpainted change")):
        for k, (rule, variant) in enumerate(groups):
            v = [r[key] for r in rows if r["rule"] == rule and r["variant"] == variant]
            ax.scatter(np.full(len(v), k) + np.linspace(-0.15, 0.15, len(v)), v, s=10, alpha=0.6)
            ax.plot([k - 0.25, k + 0.25], [np.nanmean(v)] * 2, "k-")
        ax.axhline(goal, color="r", ls="--", lw=1, label=f"goal {'≥' if goal == 5 else '≤'} {goal}")
        ax.set_xticks(range(len(groups)), [f"{r.split(',')[0]}\n{v}" for r, v in groups], fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    for ax in axes[0, 2:]:
        ax.axis("off")
    for k in range(ncols):
        axes[1, k].axis("off")
    if ex:
        axes[1, 0].imshow(np.asarray(ex[0]["images"]["map"]), cmap="RdYlGn", vmin=-1, vmax=1)
        axes[1, 0].set_title(f"painted (round 1)\n{ex[0]['rule']}", fontsize=7)
        axes[0, 2].imshow(np.asarray(ex[0]["images"]["first"]).transpose(1, 2, 0))
        axes[0, 2].set_title("first image", fontsize=8)
        axes[0, 2].axis("off")
        for k, r in enumerate(ex):
            axes[1, 1 + k].imshow(np.clip(np.asarray(r["images"]["last"]).transpose(1, 2, 0), 0, 1))
            axes[1, 1 + k].set_title(f"last, {r['variant']}\n(dis/unp {r['disliked_over_unpainted']:.1f})", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=8, help="prompts with hair")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rules", nargs="+", default=list(RULES))
    ap.add_argument("--betas", type=float, nargs="+", default=[0.0, 10.0], help="keep_beta values (0: without the keep term)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--num-steps", type=int, default=10, help="DDIM steps of each image")
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default: RefineConfig's)")
    ap.add_argument("--keep-unpainted-only", action="store_true", help="keep_liked=False: liked pixels are free too")
    ap.add_argument("--jobs", type=int, default=2, help="processes (one thread each)")
    ap.add_argument("--out", type=str, default=str(OUT), help="writes OUT.json and OUT.png")
    args = ap.parse_args(argv)
    from pxpo_lite.feedback import RefineConfig

    lr = args.lr if args.lr is not None else RefineConfig().learning_rate
    prompts = hair_prompts(args.images)
    jobs = [{"prompt": p, "seed": s, "rule": rule, "beta": b, "variant": f"keep β={b:g}" if b > 0 else "no keep",
             "rounds": args.rounds, "num_steps": args.num_steps, "lr": lr, "keep_liked": not args.keep_unpainted_only,
             "keep_images": p == prompts[0] and s == args.seeds[0] and rule == args.rules[0]}
            for rule in args.rules for p in prompts for s in args.seeds for b in args.betas]
    t0 = time.perf_counter()
    if args.jobs > 1:
        with mp.get_context("spawn").Pool(args.jobs, initializer=_init_worker) as pool:
            rows = []
            for k, r in enumerate(pool.imap(run_one, jobs, chunksize=1)):
                rows.append(r)
                print(f"[{k + 1}/{len(jobs)}] {r['variant']}, seed {r['seed']}: disliked/unpainted {r['disliked_over_unpainted']:.2f} "
                      f"({r['seconds']:.0f} s)", flush=True)
    else:
        _init_worker()
        rows = [run_one(j) for j in jobs]
    wall = time.perf_counter() - t0
    summary = summarise(rows)
    result = {
        "command": "python benchmarks/bench_localised_feedback.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "settings": {**{k: v for k, v in vars(args).items() if k != "out"}, "lr": lr, "prompts": prompts,
                     "updates_per_round": RefineConfig().updates_per_round, "model": "shipped tiny pipeline, LoRA r4"},
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
