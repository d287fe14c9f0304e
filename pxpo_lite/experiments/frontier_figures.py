"""The credit frontier, drawn and tabulated: effect vs held-out fidelity per method (selection
seeds), the chosen setting on the evaluation seeds with its 95 % interval, and effect vs samples
at the chosen setting (is the budget large enough?).

Used by ``benchmarks/bench_credit_frontier.py`` and ``notebooks/07_ddpo_vs_pxpo.ipynb``.
"""
from __future__ import annotations

from .credit import CREDIT_LABELS


def _label(m: str) -> str:
    credit, _, keep = m.partition("+")
    return CREDIT_LABELS.get(credit, credit) + (" + keep" if keep else "")


def plot_frontier(result: dict, axes=None):
    """Two panels per task: (1) every selection point in (fidelity at the end, effect), the Pareto front
    as a line, the chosen setting's evaluation-seed effect with its interval; (2) effect vs samples at
    the chosen setting on the evaluation seeds (mean and interval). Returns the figure."""
    import matplotlib.pyplot as plt

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
    the paper's effect; then the goals (``frontier.frontier_goals``) where the result has them."""
    lines = []
    for task, by_method in result["summary"].items():
        lines += [f"\n**{task}** (chosen on seeds {result.get('config', {}).get('selection_seeds')}, reported on "
                  f"{result.get('config', {}).get('eval_seeds')})", "",
                  "| method | lr | β | samples | effect (std), 95 % CI | fidelity end | fidelity lowest | samples to the paper's effect |",
                  "|---|---|---|---|---|---|---|---|"]
        for m, r in by_method.items():
            b = r.get("best_at_fidelity")
            st = r.get("samples_to_paper_effect") or {}
            reach = "–" if not st else ("not reached" if st.get("point") is None else
                                        f"{st['point']} [{st.get('lo') or '–'}, {st.get('hi') or 'not reached'}]")
            if not b:
                lines.append(f"| {_label(m)} | no setting kept fidelity ≥ 0.9 | | | | | | |")
                continue
            beta = "–" if b["beta"] is None else f"{b['beta']:g}"
            lines.append(f"| {_label(m)} | {b['lr']:g} | {beta} | {b['n_samples']} | "
                         f"{_ci(b.get('effect_std'))} | {_f(b.get('fidelity_end'))} | {_f(b.get('fidelity_min'))} | {reach} |")
        g = (result.get("goals") or {}).get(task)
        if g:
            def word(x):
                return "met" if x and x.get("met") else ("n/a" if x and x.get("met") is None else "not met")
            lines.append(f"\nbest per-pixel method: {g.get('best_pixel_method')}; beats per-image (disjoint CIs): "
                         f"{word(g.get('beats_image'))}; effect goal: {word(g.get('effect'))}; beats the uninformed control: "
                         f"{word(g.get('beats_uninformed'))}; ≤ 25 % of per-image samples: {word(g.get('samples'))}")
    return "\n".join(lines)
