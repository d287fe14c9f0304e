"""The credit frontier, read: the goals met or not (:func:`frontier_goals`), the setting notebooks 04
and 05 train with (:func:`frontier_setting`), a table, and a figure — effect vs held-out fidelity per
method (selection seeds), the chosen setting on the evaluation seeds with its 95 % interval, and
effect vs samples at the chosen setting (is the budget large enough?).

Used by ``benchmarks/bench_credit_frontier.py`` and notebooks 04, 05 and 07.
"""
from __future__ import annotations

from typing import Sequence

from ..data import benchmark_names, load_benchmark
from .credit import CREDIT_LABELS
from .frontier import FIDELITY_END


def _label(m: str) -> str:
    credit, _, keep = m.partition("+")
    return CREDIT_LABELS.get(credit, credit) + (" + keep" if keep else "")


def plot_frontier(result: dict, axes=None):
    """Two panels per task: (1) every selection point in (fidelity at the end, effect), the Pareto front
    as a line, the chosen setting's evaluation-seed effect with its interval; (2) effect vs samples at
    the chosen setting on the evaluation seeds (mean and interval). Returns the figure."""
    import matplotlib.pyplot as plt  # matplotlib: only when plotting (import pxpo_lite does not load it)

    summary = result["summary"]
    if axes is None:
        fig, axes = plt.subplots(len(summary), 2, figsize=(11, 3.8 * len(summary)), squeeze=False)
    else:
        fig = axes[0][0].figure
    for row, (task, by_method) in zip(axes, summary.items()):
        ax, ax2 = row
        for k, (m, r) in enumerate(by_method.items()):
            c = f"C{k}"
            pts = [p for p in r["frontier"] if p["fidelity_end"] is not None]
            ax.scatter([p["fidelity_end"] for p in pts], [p["effect_std"]["mean"] for p in pts], s=8, color=c, alpha=0.35)
            front = sorted(r["pareto"], key=lambda p: p["fidelity_end"])
            ax.plot([p["fidelity_end"] for p in front], [p["effect_std"]["mean"] for p in front], "-", color=c, lw=1.2,
                    label=_label(m))
            b = r.get("best_at_fidelity") or {}
            if b.get("effect_std") and b.get("fidelity_end") is not None:
                e = b["effect_std"]
                ax.errorbar([b["fidelity_end"]], [e["mean"]], yerr=[[e["mean"] - e["lo"]], [e["hi"] - e["mean"]]], fmt="*",
                            ms=11, color=c, mec="k", capsize=3)
            path = r.get("eval_path") or []
            if path:
                x = [p["n_samples"] for p in path]
                ax2.plot(x, [p["effect_std"]["mean"] for p in path], "o-", ms=3, color=c, label=_label(m))
                ax2.fill_between(x, [p["effect_std"]["lo"] for p in path], [p["effect_std"]["hi"] for p in path], color=c, alpha=0.12)
        th = result.get("config", {}).get("fidelity_end", 0.9)
        ax.axvline(th, color="grey", ls=":", lw=1)
        ax.set_xlabel("held-out prompt fidelity at the end (selection seeds)")
        ax.set_ylabel("effect (std)")
        ax.set_title(f"{task}: effect vs fidelity; ★ = chosen setting on the evaluation seeds (95 % CI)", fontsize=9)
        ax.legend(fontsize=7)
        target = result.get("config", {}).get("paper_effect", {}).get(task)
        if target is not None:
            ax2.axhline(target, color="grey", ls="--", lw=1, label="the paper's effect")
        ax2.set_xlabel("samples trained on")
        ax2.set_ylabel("effect (std), evaluation seeds")
        ax2.set_title(f"{task}: effect vs budget at the chosen setting", fontsize=9)
        ax2.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _ci(e: dict | None) -> str:
    return "–" if not e else f"{e['mean']:+.2f} [{e['lo']:+.2f}, {e['hi']:+.2f}]"


def _f(v) -> str:
    return "–" if v is None else f"{v:.2f}"


def frontier_table(result: dict) -> str:
    """Markdown, one table per task: per method the chosen setting (lr, β, samples), its effect on the
    evaluation seeds with a 95 % interval, fidelity at the end and lowest on the way, the samples to
    the paper's effect, and whether the fidelity condition held on the evaluation seeds too ("fidelity
held"); then the goals (:func:`frontier_goals`) where the result has them."""
    lines = []
    for task, by_method in result["summary"].items():
        lines += [f"\n**{task}** (chosen on seeds {result.get('config', {}).get('selection_seeds')}, reported on "
                  f"{result.get('config', {}).get('eval_seeds')})", "",
                  "| method | lr | β | samples | effect (std), 95 % CI | fidelity end | fidelity lowest | fidelity held | samples to the paper's effect |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for m, r in by_method.items():
            b = r.get("best_at_fidelity")
            st = r.get("samples_to_paper_effect") or {}
            reach = "–" if not st else ("not reached" if st.get("point") is None else
                                        f"{st['point']} [{st.get('lo') or '–'}, {st.get('hi') or 'not reached'}]")
            if not b:
                lines.append(f"| {_label(m)} | no setting kept fidelity ≥ 0.9 | | | | | | | |")
                continue
            beta = "–" if b["beta"] is None else f"{b['beta']:g}"
            lines.append(f"| {_label(m)} | {b['lr']:g} | {beta} | {b['n_samples']} | "
                         f"{_ci(b.get('effect_std'))} | {_f(b.get('fidelity_end'))} | {_f(b.get('fidelity_min'))} | "
                         f"{'yes' if b.get('meets_on_eval_seeds') else 'no'} | {reach} |")
        g = (result.get("goals") or {}).get(task)
        if g:
            def word(x):
                if not x:
                    return "not measured (no setting met the fidelity condition)"
                return "met" if x.get("met") else ("n/a" if x.get("met") is None else "not met")
            lines.append(f"\nbest per-pixel method: {g.get('best_pixel_method')}; beats per-image (disjoint CIs): "
                         f"{word(g.get('beats_image'))}; effect goal: {word(g.get('effect'))}; beats the uninformed control: "
                         f"{word(g.get('beats_uninformed'))}; ≤ 25 % of per-image samples: {word(g.get('samples'))}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Goals
# --------------------------------------------------------------------------------------------
PIXEL_METHODS = ("pixel", "pixel+keep", "pixel-clipped", "pixel-clipped+keep", "region", "region+keep")
"""Per-pixel (feedback-carrying) credits that compete for "the best per-pixel method"."""

GOAL_EFFECT = {"colour": 1.0, "hair": 2.0}


def _best(summary_t: dict, names, held_only: bool = False) -> tuple[str | None, dict | None]:
    rows = [(m, r["best_at_fidelity"]) for m, r in summary_t.items() if m in names and r.get("best_at_fidelity")
            and r["best_at_fidelity"].get("effect_std") and (r["best_at_fidelity"].get("meets_on_eval_seeds") or not held_only)]
    if not rows:
        return None, None
    return max(rows, key=lambda mr: mr[1]["effect_std"]["mean"])


def frontier_goals(result: dict) -> dict:
    """The goals, per task, read from a frontier result: the best per-pixel method beats per-image
    credit with disjoint 95 % intervals, its effect is ≥ :data:`GOAL_EFFECT`, it reaches the paper's
    effect with ≤ 25 % of per-image credit's samples, and it beats the ``pixel-uninformed`` control.
    A goal about the per-pixel method's effect counts as met only where its fidelity condition held
    on the evaluation seeds as well (a setting that kept the prompt only on the seeds it was chosen
    on is not a result); the other side is taken as measured, whether or not it held."""
    out = {}
    for t, s in result["summary"].items():
        m, b = _best(s, PIXEL_METHODS, held_only=True)  # the best per-pixel setting that kept the prompt on new seeds,
        if b is None:                                   # else the best chosen one (its goals are then not met)
            m, b = _best(s, PIXEL_METHODS)
        img = (s.get("image") or {}).get("best_at_fidelity") or {}
        unf = (s.get("pixel-uninformed") or {}).get("best_at_fidelity") or {}
        g: dict = {"best_pixel_method": m}
        held = bool(b and b.get("meets_on_eval_seeds"))  # the fidelity condition held on the evaluation seeds too
        if b and img.get("effect_std"):
            g["beats_image"] = {"pixel": b["effect_std"], "image": img["effect_std"], "pixel_fidelity_held": held,
                                "image_fidelity_held": bool(img.get("meets_on_eval_seeds")),
                                "met": held and b["effect_std"]["lo"] > img["effect_std"]["hi"]}
        if b and unf.get("effect_std"):
            g["beats_uninformed"] = {"pixel": b["effect_std"], "uninformed": unf["effect_std"],
                                     "uninformed_fidelity_held": bool(unf.get("meets_on_eval_seeds")),
                                     "met": held and b["effect_std"]["lo"] > unf["effect_std"]["hi"]}
        if b and t in GOAL_EFFECT:
            g["effect"] = {"mean": b["effect_std"]["mean"], "goal": GOAL_EFFECT[t], "fidelity_held": held,
                           "met": held and b["effect_std"]["mean"] >= GOAL_EFFECT[t]}
        sp = (s.get(m) or {}).get("samples_to_paper_effect") if m else None
        si = (s.get("image") or {}).get("samples_to_paper_effect")
        if sp and si:
            if sp.get("point") is None:
                met = False
            elif si.get("point") is None:
                met = None  # per-image credit never reached it under the condition: no ratio to take
            else:
                met = sp["point"] <= 0.25 * si["point"]
            g["samples"] = {"pixel": sp.get("point"), "image": si.get("point"), "met": met}
        out[t] = g
    return out


def frontier_setting(task: str, result: dict | None = None, methods: Sequence[str] = PIXEL_METHODS) -> dict:
    """The best per-pixel setting of ``task`` that kept fidelity ≥ 0.9 (at the end, ≥ 0.85 all the way;
    preferring settings that kept it on the evaluation seeds too) in a frontier result (default: the shipped ``credit_frontier``): ``{"method", "lr", "beta",
    "n_samples", "effect_std", "fidelity_end", "fidelity_min", "source"}``. Notebooks 04 and 05 train
    with it by default, so a learner's first run is the one that keeps the prompt."""
    if result is None:  # the shipped copy
        result = load_benchmark("credit_frontier" if "credit_frontier" in benchmark_names() else "credit_frontier_reduced")
    if task not in result["summary"]:
        raise ValueError(f"task {task!r} is not in this frontier result (it has {sorted(result['summary'])}); "
                         f"run python benchmarks/bench_credit_frontier.py --tasks {task}")
    m, b = _best(result["summary"][task], methods, held_only=True)  # kept the prompt on the evaluation seeds too
    if b is None:
        m, b = _best(result["summary"][task], methods)
    if b is None:
        raise ValueError(f"no per-pixel setting of {task!r} kept fidelity >= {FIDELITY_END} in this result; "
                         "choose a learning rate by hand (see notebook 07)")
    return {"method": m, "lr": b["lr"], "beta": b["beta"], "n_samples": b["n_samples"], "effect_std": b.get("effect_std"),
            "fidelity_end": b.get("fidelity_end"), "fidelity_min": b.get("fidelity_min"),
            "source": result.get("config", {}).get("command")}
