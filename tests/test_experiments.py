"""pxpo_lite.experiments and benchmarks/bench_ddpo_vs_pxpo.py on a tiny random model (fast, CPU)."""
from __future__ import annotations

import copy
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pxpo_lite import experiments as E
from pxpo_lite import world

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(num_steps=2, samples_per_epoch=8, sample_batch_size=8, train_batch_size=4, timestep_fraction=1.0)


@pytest.fixture(scope="module")
def pipe():
    from pxpo_lite.models import build_tiny_pipeline

    return build_tiny_pipeline(seed=0, block_out_channels=(8, 16, 16))  # small: fast tests


@pytest.fixture(scope="module")
def colour():
    return E.get_task("colour")


@pytest.fixture(scope="module")
def seg():
    import pxpo_lite

    return pxpo_lite.load_segmenter()


def _weights(p):
    return {k: v.detach().clone() for k, v in p.unet.state_dict().items()}


# -- tasks ---------------------------------------------------------------------------------------
def test_task_prompts_fit_their_task():
    col, hair = E.task_prompts("colour"), E.task_prompts("hair")
    assert len(col) == len(set(col)) == 4 and len(hair) == 4
    for p in col:
        a = world.parse_prompt(p)
        assert "blue" in (a.background, a.shirt, a.hair_colour) or a.background in ("light blue", "navy")
    assert all(not world.parse_prompt(p).bald for p in hair)
    assert E.task_prompts("colour") == col  # deterministic
    with pytest.raises(ValueError, match="'colour' or 'hair'"):
        E.task_prompts("jpeg")


def test_get_task_and_reward_checks(colour):
    with pytest.raises(ValueError, match="'colour' or 'hair'"):
        E.get_task("teeth")
    x = world.render(4, seed=0).images
    r = colour.reward(x)
    assert r.shape == (4, 32, 32) and r.max() <= 0 and r.min() >= -1
    assert torch.allclose(colour.scalar_reward(x), r.mean(dim=(1, 2)))
    assert colour.paper["before"] == (-0.39, 0.08)

    bad = E.Task("nan", "t", lambda im, p=None: torch.full(im.shape[:1] + im.shape[2:], float("nan")), (), {})
    with pytest.raises(ValueError, match="NaN"):
        bad.reward(x)
    small = E.Task("small", "t", lambda im, p=None: torch.zeros(len(im), 16, 16), (), {})
    with pytest.raises(ValueError, match="shape"):
        small.reward(x)


def test_hair_task_and_missing_segmenter(tmp_path):
    hair = E.get_task("hair")
    x = world.render(4, seed=1)
    r = hair.reward(x.images)
    assert r.shape == (4, 32, 32)
    # the segmenter finds the hair: hair pixels are penalised more than the rest
    is_hair = x.labels == world.PART_ID["hair"]
    assert r[is_hair].mean() < r[~is_hair].mean() - 0.5
    assert hair.conflicts_with == "hair_presence"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        E.get_task("hair", segmenter=tmp_path / "no-such-segmenter")


# -- configs ---------------------------------------------------------------------------------------
def test_make_config():
    c = E.make_config("colour", "pxpo_clip", seed=3)
    assert (c.method, c.clip_range, c.seed, c.learning_rate) == ("pxpo", E.PXPO_CLIP_RANGE, 3, E.TASK_LR["colour"])
    assert c.stat_buffer_size == c.stat_min_count == E.GROUP_SIZE
    d = E.make_config("hair", "ddpo", learning_rate=1e-3, group_size=2)
    assert (d.method, d.clip_range, d.learning_rate, d.stat_min_count) == ("ddpo", None, 1e-3, 2)
    with pytest.raises(ValueError, match="method"):
        E.make_config("colour", "ppo")
    with pytest.raises(ValueError, match="task"):
        E.make_config("jpeg", "ddpo")


def test_grouped_prompts():
    pick = E.grouped_prompts(["a", "b", "c"], group_size=2)
    out = pick(6, torch.Generator().manual_seed(0))
    assert sorted(out) == ["a", "a", "b", "b", "c", "c"] and out[0] == out[1]
    many = pick(10, torch.Generator().manual_seed(0))  # more groups than prompts: with replacement
    assert len(many) == 10 and all(many[i] == many[i + 1] for i in range(0, 10, 2))
    with pytest.raises(ValueError, match="multiple of group_size"):
        pick(5, torch.Generator())
    with pytest.raises(ValueError, match="non-empty"):
        E.grouped_prompts([])


# -- runs ------------------------------------------------------------------------------------------
def test_run_trains_a_copy_and_is_deterministic(pipe, colour):
    before = _weights(pipe)
    a = E.run(pipe, colour, "pxpo", 16, seed=0, progress=False, keep_pipe=True, **FAST)
    assert [r["n_samples"] for r in a.records] == [8, 16]
    assert all(math.isfinite(r["reward_mean"]) for r in a.records)
    assert all(torch.equal(before[k], v) for k, v in _weights(pipe).items()), "the base pipeline must not change"
    after = _weights(a.pipe)
    assert any(not torch.equal(before[k], after[k]) for k in before), "the trained copy must change"
    b = E.run(pipe, colour, "pxpo", 16, seed=0, progress=False, **FAST)
    assert [r["reward_mean"] for r in a.records] == [r["reward_mean"] for r in b.records]
    assert b.pipe is None and a.summary()["method"] == "pxpo"


def test_run_bad_inputs(pipe, colour):
    with pytest.raises(ValueError, match="multiple of samples_per_epoch"):
        E.run(pipe, colour, "ddpo", 12, progress=False, **FAST)
    with pytest.raises(ValueError, match="budget"):
        E.run(pipe, colour, "ddpo", 0, progress=False, **FAST)
    with pytest.raises(TypeError, match="Task"):
        E.run(pipe, "colour", "ddpo", 8, progress=False, **FAST)


def test_all_zero_reward_map_warns_and_does_not_divide_by_zero(pipe):
    from pxpo_lite.advantages import NoSignalWarning

    zero = E.Task("colour", "zero", lambda im, p=None: torch.zeros(len(im), *im.shape[2:]), E.task_prompts("colour"), E.PAPER["colour"])
    before = _weights(pipe)
    with pytest.warns(NoSignalWarning):
        r = E.run(pipe, zero, "pxpo", 8, progress=False, keep_pipe=True, **FAST)
    assert r.records[0]["reward_mean"] == 0.0 and math.isfinite(r.records[0]["grad_norm"])
    after = _weights(r.pipe)  # zero advantages: only weight decay may move the weights, by a hair
    assert max(float((before[k] - after[k]).abs().max()) for k in before) < 1e-3


# -- evaluation ---------------------------------------------------------------------------------------
def test_generate_is_seeded(pipe):
    p = ["a bald portrait with a white shirt on a blue background"] * 2
    a = E.generate(pipe, p, seed=5, num_steps=2)
    b = E.generate(pipe, p, seed=5, num_steps=2)
    c = E.generate(pipe, p, seed=6, num_steps=2)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)


def test_measure_heldout_and_table(pipe, colour, monkeypatch):
    monkeypatch.setitem(E.DEFAULTS, "num_steps", 2)
    res = E.measure_heldout(pipe, colour, per_prompt=2)
    assert res["n"] == 8 and res["images"].shape == (8, 3, 32, 32) and len(res["rewards"]) == 8
    assert math.isclose(res["mean"], float(np.mean(res["rewards"])), rel_tol=1e-5)
    assert set(res["fidelity"]) >= {"hair_presence", "background", "shirt", "all"}
    after = dict(res, mean=res["mean"] + 2 * res["std"])
    assert math.isclose(E.effect_size(res, after), 2.0, rel_tol=1e-6)
    md = E.paper_table(colour, res, after)
    assert "-0.39 ± 0.08 → -0.35 ± 0.08" in md and "0.5" in md
    row = E.table_row("x", res, after)
    assert row["effect_std"] == 2.0
    with pytest.warns(UserWarning, match="zero std"):
        assert math.isnan(E.effect_size(dict(res, std=0.0), after))


def test_fidelity_other():
    fid = {"hair_presence": 0.0, "hair_colour": 1.0, "background": 0.5, "shirt": 1.0, "all": 0.0}
    assert E.fidelity_other(fid, "hair_presence") == pytest.approx(2.5 / 3)
    assert E.fidelity_other(dict(fid, hair_colour=float("nan")), "hair_presence") == pytest.approx(0.75)
    assert E.fidelity_other(fid, None) == pytest.approx(2.5 / 4)


def test_paper_effects():
    assert E.paper_effect("colour") == pytest.approx(0.5)
    assert E.paper_effect("hair") == pytest.approx(1.0)


# -- curves and samples-to-reach ----------------------------------------------------------------------
def _fake(method, rewards, seed=0, spe=16):
    recs = [{"n_samples": spe * (i + 1), "reward_mean": r} for i, r in enumerate(rewards)]
    return E.RunResult("colour", method, seed, spe * len(rewards), recs, 1.0)


def test_smooth_and_samples_to_reach():
    assert np.allclose(E.smooth([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])
    assert np.allclose(E.smooth([1, 2, 3, 4], 3, centered=True), [1.5, 2, 3, 3.5])
    assert np.allclose(E.smooth([1, 2], 1), [1, 2])
    ddpo = [_fake("ddpo", [-0.5, -0.4, -0.3, -0.2, -0.2, -0.2], s) for s in (0, 1)]
    pxpo = [_fake("pxpo", [-0.4, -0.3, -0.2, -0.1, -0.1, -0.1], s) for s in (0, 1)]
    assert list(pxpo[0].trained_on) == [0, 16, 32, 48, 64, 80]
    assert E.final_reward(ddpo, 3) == pytest.approx(-0.2)
    assert E.samples_to_reach(pxpo, -0.2, 1) == 32
    assert E.samples_to_reach(pxpo, -0.2, 3) == 32  # centred: mean(-0.3, -0.2, -0.1) at 32
    assert E.samples_to_reach(pxpo, -0.15, 3) == 48
    assert E.samples_to_reach(pxpo, 0.5, 3) is None
    s = E.summarize({"colour": {"ddpo": ddpo, "pxpo": pxpo}}, window=3)["colour"]
    assert s["ddpo_final"] == pytest.approx(-0.2) and s["budget"] == 96 and s["ddpo_improved"]
    assert s["methods"]["pxpo"]["samples_to_reach_ddpo_final"] == 32
    assert s["methods"]["pxpo"]["fraction_of_ddpo_budget"] == pytest.approx(32 / 96)
    assert s["methods"]["ddpo"]["samples_to_reach_ddpo_final"] == 64  # centred: mean(-0.2, -0.2, -0.2) at 64
    assert s["methods"]["ddpo"]["gain"] == pytest.approx(0.3)
    flat = [_fake("ddpo", [-0.5, -0.5, -0.5], s) for s in (0, 1)]
    assert not E.summarize({"hair": {"ddpo": flat}})["hair"]["ddpo_improved"]
    with pytest.raises(ValueError, match="non-empty"):
        E.mean_curve([])


def test_compare_plot_and_json(pipe, colour, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    res = E.compare(pipe, [colour], ["ddpo", "pxpo"], seeds=[0, 1], budget=8, window=1, progress=False, **FAST)
    assert set(res["runs"]["colour"]) == {"ddpo", "pxpo"} and len(res["runs"]["colour"]["pxpo"]) == 2
    # same seed, same first batch: the first epoch's reward is identical across methods
    assert res["runs"]["colour"]["ddpo"][0].records[0]["reward_mean"] == res["runs"]["colour"]["pxpo"][0].records[0]["reward_mean"]
    fig = E.plot_comparison(res)
    fig.savefig(tmp_path / "c.png")
    js = json.loads(json.dumps(E.result_to_json(res)))
    assert js["summary"]["colour"]["methods"]["ddpo"]["samples_to_reach_ddpo_final"] == 0  # one epoch: trained on 0


def test_compare_in_parallel_gives_the_same_results(pipe, colour, seg, monkeypatch):
    """Forked workers (one per run, one thread each) give the sequential results, evaluation too."""
    monkeypatch.setitem(E.DEFAULTS, "num_steps", 2)  # held-out sampling too
    from pxpo_lite.experiments import parallel

    assert parallel.can_fork("cpu") and not parallel.can_fork("cuda:0") and parallel.default_jobs(1) == 1
    kw = dict(seeds=[0, 1], budget=16, window=1, progress=False, eval_per_prompt=1, segmenter=seg, **FAST)
    one = E.compare(pipe, [colour], ["pxpo"], jobs=1, **kw)
    two = E.compare(pipe, [colour], ["pxpo"], jobs=2, **kw)
    for m in ("pxpo",):
        for a, b in zip(one["runs"]["colour"][m], two["runs"]["colour"][m]):
            assert (a.seed, a.method) == (b.seed, b.method) and a.pipe is None and b.pipe is None
            # equal up to summation order (one torch thread per worker vs this process's threads)
            assert [r["reward_mean"] for r in a.records] == pytest.approx([r["reward_mean"] for r in b.records], rel=1e-4)
            assert [r["grad_norm"] for r in a.records] == pytest.approx([r["grad_norm"] for r in b.records], rel=1e-3)
    for m in ("pxpo",):
        assert one["eval"]["colour"][m].keys() == two["eval"]["colour"][m].keys()
        for k, v in one["eval"]["colour"][m].items():
            assert v == (pytest.approx(two["eval"]["colour"][m][k], rel=1e-3, abs=1e-6) if isinstance(v, float) else two["eval"]["colour"][m][k])
    assert parallel.map_jobs(lambda x: x * x, [1, 2, 3], processes=2) == [1, 4, 9]
    with pytest.raises(ValueError, match="processes"):
        parallel.map_jobs(abs, [1], processes=0)


def test_benchmark_cli(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_ddpo_vs_pxpo as bench
    from pxpo_lite import models

    tiny = models.build_tiny_pipeline(seed=0, block_out_channels=(8, 16, 16))
    monkeypatch.setattr(models, "load_tiny_pipeline", lambda *a, **k: copy.deepcopy(tiny))
    import pxpo_lite

    monkeypatch.setattr(pxpo_lite, "load_tiny_pipeline", lambda *a, **k: copy.deepcopy(tiny))
    monkeypatch.setitem(E.DEFAULTS, "samples_per_epoch", 8)
    monkeypatch.setitem(E.DEFAULTS, "sample_batch_size", 8)
    out = tmp_path / "r.json"
    res = bench.main(["--seeds", "0", "--budget", "8", "--task", "colour", "--methods", "ddpo", "pxpo",
                      "--num-steps", "2", "--out", str(out), "--quiet"])
    data = json.loads(out.read_text())
    assert out.with_suffix(".png").exists()
    assert data["config"]["seeds"] == [0] and data["config"]["budget"] == 8 and data["config"]["wall_s"] > 0
    assert "command" in data["config"] and set(data["summary"]["colour"]["methods"]) == {"ddpo", "pxpo"}
    assert res["summary"] == data["summary"]


def test_fidelity_tracker_callback(pipe, colour, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.setitem(E.DEFAULTS, "num_steps", 2)
    tr = E.FidelityTracker(colour, None, per_prompt=1, every=1, keep_images=False)
    from pxpo_lite.models import load_segmenter

    tr.segmenter = load_segmenter()
    before = tr.start(pipe)
    r = E.run(pipe, colour, "pxpo", 16, seed=0, progress=False, callback=tr, **FAST)
    assert [p["n_samples"] for p in tr.points] == [0, 8, 16] and before is tr.points[0]
    assert "images" not in tr.points[1] and len(r.records) == 2
    best = tr.best_within(0.0, "all")
    assert best is not None and best["mean"] == max(p["mean"] for p in tr.points[1:])
    assert tr.best_within(1.01, "all") is None
    tr.plot()
    md = E.paper_table(colour, before, {"end": tr.points[-1], "kept": tr.points[1]})
    assert md.count("\n") == 4  # header, rule, paper, two rows


def test_run_uses_the_trainers_callback_and_validates_it(pipe, colour):
    seen = []
    r = E.run(pipe, colour, "ddpo", 16, seed=0, progress=False, callback=lambda rec, p: seen.append((rec["epoch"], p is not pipe)), **FAST)
    assert seen == [(1, True), (2, True)] and len(r.records) == 2
    with pytest.raises(TypeError, match="callback"):
        E.run(pipe, colour, "ddpo", 16, seed=0, progress=False, callback=3, **FAST)


def test_experiments_modules_are_small():
    """The package is split by idea (tasks, runs, evaluation, sweeps, figures); none is over ~400 lines."""
    import pathlib

    folder = pathlib.Path(E.__file__).parent
    sizes = {p.name: len(p.read_text().splitlines()) for p in folder.glob("*.py")}
    assert set(sizes) >= {"tasks.py", "runs.py", "evaluation.py", "sweeps.py", "figures.py"}
    assert max(sizes.values()) <= 400, sizes


def test_paper_table_of_a_region_task_has_no_paper_row():
    """Region tasks are not in the paper (PAPER[...] is None): the table shows our rows only."""
    from pxpo_lite.models import load_segmenter

    shirt = E.get_task("shirt_blue", segmenter=load_segmenter())
    ev = {"mean": -0.02, "std": 0.01, "fidelity": {"all": 1.0}, "fidelity_other": 1.0}
    md = E.paper_table(shirt, ev, {**ev, "mean": -0.01})
    assert "paper" not in md and md.count("\n") == 2 and "| 1.00 |" in md
    assert E.TASKS == ("colour", "hair", "shirt_blue", "hair_red") and E.PAPER["shirt_blue"] is None
