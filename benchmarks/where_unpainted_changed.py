"""Where did the unpainted pixels change? A diagnosis of a localisation result's worst images.

For the ``--worst`` images of ``--rule`` in a result of ``bench_localised_feedback.py`` (lowest
disliked ÷ unpainted), the session is run again (same prompt, seed, rule, rounds and config, so
it reproduces the result's image on this machine) and the change on pixels unpainted in the first
map is split by where they lie: inside the composite's band around the *first* map's disliked
strokes, inside the band added by later rounds' maps (the rule re-paints every round), or outside
every band (0 by construction of the composite). Prints one line per image::

    python benchmarks/where_unpainted_changed.py benchmarks/results/localised_feedback_rules.json \\
        --rule "dislike hair, like background" --worst 3

``--set key=value`` overrides the result's config (``redraw_ramp=2``, ``redraw_liked=false``) to
see the same image under another band.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def diagnose(row: dict, config: dict, rounds: int, pipe, segmenter) -> dict:
    from pxpo_lite.composite import regenerate_mask
    from pxpo_lite.feedback import FeedbackSession, RefineConfig
    from pxpo_lite.synthetic_feedback import synthetic_heatmap

    # from_dict: a result made before redraw_ramp / redraw_liked existed ran with the keep ramp's band, liked pixels redrawn
    s = FeedbackSession(pipe, row["prompt"], seed=row["seed"], config=RefineConfig.from_dict(config))
    maps = []
    for _ in range(rounds):
        heat = synthetic_heatmap(s.image, row["rule"], seed=row["seed"], segmenter=segmenter)
        if s.step(heat, source="synthetic") is None:
            break
        maps.append(heat)
    cfg = s.config
    change = np.abs(s.images[-1] - s.images[0]).mean(0)
    unpainted = maps[0] == 0
    size = maps[0].shape
    first_band = regenerate_mask(maps[:1], size, cfg.redraw_ramp, cfg.redraw_liked)[0].numpy() > 0
    all_bands = regenerate_mask(maps, size, cfg.redraw_ramp, cfg.redraw_liked)[0].numpy() > 0
    parts = {"first map's band": unpainted & first_band, "later maps' band": unpainted & all_bands & ~first_band,
             "outside every band": unpainted & ~all_bands}
    total = float(change[unpainted].sum())
    return {"prompt": row["prompt"], "seed": row["seed"], "unpainted_pixels": int(unpainted.sum()),
            "change_unpainted": float(change[unpainted].mean()),
            "parts": {k: {"pixels": int(m.sum()), "share_of_change": float(change[m].sum() / total) if total else 0.0}
                      for k, m in parts.items()}}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("result", help="a bench_localised_feedback.py JSON")
    ap.add_argument("--rule", required=True)
    ap.add_argument("--variant", default="default")
    ap.add_argument("--worst", type=int, default=3)
    ap.add_argument("--set", nargs="*", default=[], help="config overrides, key=value (RefineConfig field names)")
    args = ap.parse_args(argv)
    from pxpo_lite.models import load_segmenter, load_tiny_pipeline

    torch.set_num_threads(1)
    result = json.loads(Path(args.result).read_text())
    rows = [r for r in result["per_image"] if r["rule"] == args.rule and r["variant"] == args.variant]
    if not rows:
        raise SystemExit(f"no rows for rule {args.rule!r}, variant {args.variant!r} in {args.result}")
    rows = sorted(rows, key=lambda r: r["disliked_over_unpainted"])[:args.worst]
    config = {"num_steps": result["settings"]["num_steps"], **rows[0]["config"]}
    for item in args.set:
        key, _, value = item.partition("=")
        low = value.lower()
        config[key] = None if low == "none" else low == "true" if low in ("true", "false") else int(value) if value.isdigit() else float(value)
    pipe, seg = load_tiny_pipeline("cpu"), load_segmenter("cpu")
    out = []
    for row in rows:
        d = diagnose(row, config, result["settings"]["rounds"], pipe, seg)
        out.append(d)
        print(f"{d['prompt']} | seed {d['seed']} | disliked ÷ unpainted in the result {row['disliked_over_unpainted']:.2f} | "
              f"{d['unpainted_pixels']} unpainted pixels, mean change {d['change_unpainted']:.3f}: "
              + "; ".join(f"{k} {p['pixels']} px, {100 * p['share_of_change']:.0f} %" for k, p in d["parts"].items()), flush=True)
    return out


if __name__ == "__main__":
    main()
