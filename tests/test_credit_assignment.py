"""The credit-assignment benchmark: its statistics on known data, the lr rule on synthetic pilots,
region tasks and per-region credit, and the benchmark end to end on a tiny random model."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pxpo_lite import experiments as E
from pxpo_lite import world

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(num_steps=2, samples_per_epoch=8, sample_batch_size=8, train_batch_size=4, timestep_fraction=1.0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Many tiny runs: one torch thread is ~10x faster than two on a busy 2-core machine (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def seg():
    from pxpo_lite.models import load_segmenter

    return load_segmenter()


@pytest.fixture(scope="module")
def pipe():
    from pxpo_lite.models import build_tiny_pipeline

    return build_tiny_pipeline(seed=0, block_out_channels=(8, 16, 16))


# -- statistics on known data ----------------------------------------------------------------------
def test_bootstrap_ci_on_known_data():
    assert E.bootstrap_ci([0.3, 0.3, 0.3]) == (pytest.approx(0.3), pytest.approx(0.3))
    assert E.bootstrap_ci([2.0]) == (2.0, 2.0)  # one seed: no spread to resample
    rng = np.random.default_rng(1)
    v = rng.normal(5.0, 2.0, size=400)
    lo, hi = E.bootstrap_ci(v, n_boot=4000)
    se = v.std() / math.sqrt(len(v))  # the normal-theory 95 % interval is mean ± 1.96 se
    assert lo == pytest.approx(v.mean() - 1.96 * se, abs=0.3 * se) and hi == pytest.approx(v.mean() + 1.96 * se, abs=0.3 * se)
    assert E.bootstrap_ci(v, seed=3) == E.bootstrap_ci(v, seed=3)  # seeded
    lo2, hi2 = E.bootstrap_ci([0.0, 1.0], level=0.5, n_boot=4000)
    assert 0 <= lo2 <= 0.5 <= hi2 <= 1
    with pytest.raises(ValueError, match="values"):
        E.bootstrap_ci([])
    with pytest.raises(ValueError, match="values"):
        E.bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="level"):
        E.bootstrap_ci([1.0, 2.0], level=95)
    with pytest.raises(ValueError, match="n_boot"):
        E.bootstrap_ci([1.0, 2.0], n_boot=0)


def test_samples_to_target():
    x = [0, 16, 32, 48, 64]
    y = [-0.5, -0.4, -0.3, -0.2, -0.2]
    assert E.samples_to_target(x, y, -0.3, window=1) == 32
    assert E.samples_to_target(x, y, -0.3, window=3) == 32  # centred: mean(-0.4, -0.3, -0.2)
    assert E.samples_to_target(x, y, -0.25, window=3) == 48
    assert E.samples_to_target(x, y, -0.5, window=1) == 0
    assert E.samples_to_target(x, y, 0.0) is None
    with pytest.raises(ValueError, match="same length"):
        E.samples_to_target(x, y[:3], -0.3)
    with pytest.raises(ValueError, match="target"):
        E.samples_to_target(x, y, float("nan"))


def test_bootstrap_samples_to_target():
    x = [0, 16, 32, 48]
    same = [[-0.4, -0.3, -0.2, -0.1]] * 5
    st = E.bootstrap_samples_to_target(x, same, -0.2, window=1, n_boot=200)
    assert st == {"point": 32, "lo": 32, "hi": 32, "never_fraction": 0.0}
    # one seed of two never reaches the target: some resamples never do, so the upper end is "never"
    mixed = [[-0.4, -0.2, -0.1, 0.0], [-0.4, -0.3, -0.2, -0.2]]
    st = E.bootstrap_samples_to_target(x, mixed, -0.15, window=1, n_boot=1000)
    assert st["point"] == 32  # seed mean -0.4, -0.25, -0.15, -0.1
    # resamples {0,0} and {0,1} reach it at 32, {1,1} (a quarter of them) never
    assert st["lo"] == 32 and st["hi"] is None and 0.18 < st["never_fraction"] < 0.32
    with pytest.raises(ValueError, match="curves"):
        E.bootstrap_samples_to_target(x, [[0.0, 1.0]], 0.5)


def test_select_lr_rule_on_synthetic_pilots():
    grid = {1e-5: 0.97, 3e-5: 0.93, 1e-4: 0.85, 3e-4: 0.20}
    assert E.select_lr(grid) == {"lr": 3e-5, "passed": True, "rule": E.select_lr(grid)["rule"]}
    assert "largest lr" in E.select_lr(grid)["rule"]
    # the largest passing lr, even when a smaller one failed in between (the rule does not assume monotone)
    assert E.select_lr({1e-5: 0.95, 3e-5: 0.5, 1e-4: 0.91})["lr"] == 1e-4
    assert E.select_lr({1e-5: 0.9, 1e-4: 0.899})["lr"] == 1e-5  # the threshold is inclusive
    assert E.select_lr({1e-5: 0.95, 1e-4: 0.95}, threshold=0.96) == {"lr": 1e-5, "passed": False,
                                                                     "rule": E.select_lr({1e-5: 0.95, 1e-4: 0.95}, threshold=0.96)["rule"]}
    assert E.select_lr({1e-5: None, 3e-5: float("nan"), 1e-4: 0.95})["lr"] == 1e-4  # unmeasured counts as failing
    assert not E.select_lr({1e-5: None, 1e-4: 0.1})["passed"]
    with pytest.raises(ValueError, match="pilot"):
        E.select_lr({})
    with pytest.raises(ValueError, match="learning rates"):
        E.select_lr({-1e-4: 0.9})
    with pytest.raises(ValueError, match="fidelity"):
        E.select_lr({1e-4: 1.5})
    with pytest.raises(ValueError, match="threshold"):
        E.select_lr({1e-4: 0.9}, threshold=90)


def test_region_change():
    b = torch.zeros(2, 3, 4, 4)
    a = b.clone()
    mask = torch.zeros(2, 4, 4)
    mask[:, :2] = 1
    a[:, :, :2] = 0.2  # inside moved by 0.2
    a[:, :, 2:] = 0.05  # outside by 0.05
    c = E.region_change(b, a, mask)
    assert c["inside"] == pytest.approx(0.2) and c["outside"] == pytest.approx(0.05) and c["ratio"] == pytest.approx(4.0)
    assert math.isnan(E.region_change(b, b, mask)["ratio"])  # nothing changed outside: no ratio
    assert math.isnan(E.region_change(b, a, torch.zeros(2, 4, 4))["inside"])
    with pytest.raises(ValueError, match="mask"):
        E.region_change(b, a, mask[0])
    with pytest.raises(ValueError, match="same shape"):
        E.region_change(b, a[:1], mask)


# -- methods and region tasks ----------------------------------------------------------------------
def test_parse_method():
    assert E.parse_method("pixel") == ("pixel", False) and E.parse_method("region+keep") == ("region", True)
    for bad in ("pxpo", "pixel+kl", "image+"):
        with pytest.raises(ValueError, match="method must be one of"):
            E.parse_method(bad)
    with pytest.raises(TypeError, match="method"):
        E.parse_method(3)


def test_region_tasks(seg):
    x = world.render(8, seed=3)
    shirt = E.get_task("shirt_blue", segmenter=seg)
    r = shirt.reward(x.images)
    from pxpo_lite import regions

    inside = regions.region_mask("shirt", x.images, seg)
    assert (r[inside == 0] == 0).all() and (r[inside == 1] < 0).any()  # the reward is about the shirt only
    assert shirt.region == "shirt" and shirt.conflicts_with == "shirt" and shirt.paper is None
    for p in shirt.prompts:
        a = world.parse_prompt(p)
        assert a.shirt == "blue" and a.background in ("blue", "light blue", "navy")
    red = E.get_task("hair_red", segmenter=seg)
    assert red.region == "hair" and all(world.parse_prompt(p).hair_colour not in (None, "red") for p in red.prompts)
    rr = red.reward(x.images)
    hair = regions.region_mask("hair", x.images, seg)
    assert (rr[hair == 0] == 0).all() and rr.min() >= -1
    assert E.get_task("colour").region is None and E.get_task("hair", segmenter=seg).region == "hair"
    with pytest.raises(ValueError, match="region task"):
        E.get_task("shirt_green")
    with pytest.raises(ValueError, match="region task"):
        E.task_prompts("shirt_green")
    assert "shirt_blue" in E.TASK_LR and "hair_red" in E.TASK_LR


def test_region_credit_keeps_the_image_mean_and_is_piecewise_constant(seg):
    x = world.render(6, seed=5)
    colour = E.get_task("colour")
    t = E.credit_task(colour, "region", seg)
    assert E.credit_task(colour, "pixel", seg) is colour
    r, rr = colour.reward(x.images), t.reward(x.images)
    assert torch.allclose(r.mean(dim=(1, 2)), rr.mean(dim=(1, 2)), atol=1e-5)  # DDPO-equivalent image reward
    from pxpo_lite import regions

    labels = regions.part_labels(x.images, seg)
    for b in range(len(x.images)):
        for part in labels[b].unique():
            vals = rr[b][labels[b] == part]
            assert torch.allclose(vals, vals[0].expand_as(vals)), "one credit per part"
    with pytest.raises(ValueError, match="credit"):
        E.credit_task(colour, "patch", seg)


# -- the benchmark on a tiny random model ----------------------------------------------------------
def test_benchmark_end_to_end(pipe, seg, monkeypatch):
    monkeypatch.setitem(E.DEFAULTS, "num_steps", 2)  # held-out sampling too
    colour = E.get_task("colour")
    logs = []
    res = E.benchmark(pipe, [colour], ["image", "region", "pixel"], seeds=[0, 1], budget=16, lr_grid=[1e-5, 1e-3],
                      lr_table={"colour": {"image": 2e-5}}, per_prompt=1, n_boot=50, segmenter=seg, log=logs.append, **FAST)
    lr = res["lr"]["colour"]
    assert lr["image"] == {"lr": 2e-5, "passed": None, "rule": "given (--lr table)"}
    for m in ("region", "pixel"):
        assert set(lr[m]["pilot"]) | set(lr[m]["not_run"]) == {1e-5, 1e-3} and lr[m]["lr"] in (1e-5, 1e-3)
        fids = {k: v["fidelity"] for k, v in lr[m]["pilot"].items()}
        assert lr[m]["lr"] == E.select_lr(fids)["lr"]  # the rule, applied to what the pilot measured
        assert "records" not in lr[m]
        # seed 0 is the pilot seed at the same budget: its run is the pilot's run at the chosen lr
        assert res["runs"]["colour"][m][0]["from_pilot"] and "from_pilot" not in res["runs"]["colour"][m][1]
    n_pilot = sum(len(lr[m]["pilot"]) for m in ("region", "pixel"))
    assert res["timing"]["pilot_runs"] == n_pilot and res["timing"]["runs"] == 4 and res["timing"]["cpu_s"] > 0
    s = res["summary"]["colour"]
    assert s["target"] == pytest.approx(np.mean([np.mean(r["reward"][-3:]) for r in res["runs"]["colour"]["image"]]))
    for m in ("image", "region", "pixel"):
        row = s["methods"][m]
        assert row["seeds"] == 2 and set(row["samples_to_target"]) >= {"point", "lo", "hi", "never_fraction"}
        assert row["final_reward"]["lo"] <= row["final_reward"]["mean"] <= row["final_reward"]["hi"]
        assert math.isfinite(row["effect_std"]["mean"]) and len(row["curve"]["x"]) == 2
    # the first batch of a seed is the same for every method (same model, prompts, noise)
    first = [res["runs"]["colour"][m][0]["reward"][0] for m in ("image", "region", "pixel")]
    assert first == pytest.approx([first[0]] * 3, abs=1e-6)  # region credit: the same image mean, up to rounding
    json.dumps(res)  # JSON-ready
    assert any("pixel" in line for line in logs)
    with pytest.raises(ValueError, match="no learning rate"):
        E.benchmark(pipe, [colour], ["pixel"], seeds=[0], budget=8, lr_grid=None, segmenter=seg, log=logs.append, **FAST)


def test_pilot_runs_the_grid_upwards_and_stops_at_the_first_failure(monkeypatch):
    from pxpo_lite.experiments import credit

    fid = {1e-5: 1.0, 3e-5: 0.95, 1e-4: 0.5, 3e-4: 1.0}  # 3e-4 would pass by chance, but is never run
    ran = []

    class R:
        seed, trained_on, rewards, seconds, cpu_seconds, pipe = 0, [0], [0.0], 0.0, 0.0, None

    def fake_run(base, task, method, budget, seed, lr, *a, **k):
        ran.append(lr)
        r = R()
        r.pipe = lr
        return r

    monkeypatch.setattr(credit, "run_credit", fake_run)
    monkeypatch.setattr(credit, "evaluate", lambda pipe, *a, **k: {"fidelity": fid[pipe], "effect_std": 0.0})
    task = E.get_task("colour")
    out = credit.pilot_lr(None, task, "pixel", [3e-4, 1e-5, 1e-4, 3e-5], before={"mean": 0})
    assert ran == [1e-5, 3e-5, 1e-4] and out["not_run"] == [3e-4]
    assert out["lr"] == 3e-5 and out["passed"] and "stopping at the first that failed" in out["rule"]
    assert set(out["records"]) == {1e-5, 3e-5, 1e-4}
    ran.clear()
    full = credit.pilot_lr(None, task, "pixel", [3e-4, 1e-5, 1e-4, 3e-5], before={"mean": 0}, stop_after_fail=False)
    assert ran == [1e-5, 3e-5, 1e-4, 3e-4] and full["lr"] == 3e-4 and full["not_run"] == []


def test_benchmark_region_task_measures_inside_and_outside(pipe, seg, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.setitem(E.DEFAULTS, "num_steps", 2)
    shirt = E.get_task("shirt_blue", segmenter=seg)
    res = E.benchmark(pipe, [shirt], ["image", "pixel"], seeds=[0], budget=8, lr_grid=None,
                      lr_table={"shirt_blue": {"image": 1e-4, "pixel": 1e-4}}, per_prompt=1, n_boot=20, track_every=1,
                      segmenter=seg, log=lambda *_: None, **FAST)
    ev = res["runs"]["shirt_blue"]["pixel"][0]["eval"]
    assert ev["fidelity_key"] == "other" and {"change_inside", "change_outside", "change_ratio"} <= set(ev)
    row = res["summary"]["shirt_blue"]["methods"]["pixel"]
    assert "change_ratio" in row and "fidelity_min_during" in row
    res["config"] = {"learning_rates": res.pop("lr")}
    md = E.credit_table(res, "shirt_blue")
    assert sum(line.startswith("| ") for line in md.splitlines()) == 3 and "inside / outside" in md and "per-pixel credit (PXPO)" in md
    assert "did not improve" in md  # one epoch: DDPO has no gain, so samples-to-target is flagged as saying little
    E.plot_credit_assignment(res)


def test_keep_methods_hold_the_weights_nearer_the_reference(pipe):
    colour = E.get_task("colour")
    base = {k: v.clone() for k, v in pipe.unet.state_dict().items()}

    def moved(r):
        return sum(float((r.pipe.unet.state_dict()[k] - v).pow(2).sum()) for k, v in base.items()) ** 0.5

    free = E.run_credit(pipe, colour, "pixel", 16, 0, 1e-3, keep_pipe=True, **FAST)
    kept = E.run_credit(pipe, colour, "pixel+keep", 16, 0, 1e-3, keep_beta=100.0, keep_pipe=True, **FAST)
    assert kept.method == "pixel+keep" and kept.cpu_seconds > 0
    assert moved(kept) < moved(free), "the keep term must hold the policy nearer the reference"
    same = E.run_credit(pipe, colour, "pixel+keep", 16, 0, 1e-3, keep_beta=0.0, keep_pipe=True, **FAST)
    assert moved(same) == pytest.approx(moved(free), rel=1e-5)  # β = 0: the plain update


def test_bench_credit_assignment_cli(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_credit_assignment as bench
    import pxpo_lite
    from pxpo_lite import models

    table = bench.lr_table(["3e-5", "pixel=1e-4", "colour:image=2e-4"], ["colour", "hair"], ["image", "pixel"])
    assert table == {"colour": {"image": 2e-4, "pixel": 1e-4}, "hair": {"image": 3e-5, "pixel": 1e-4}}
    with pytest.raises(SystemExit, match="not a number"):
        bench.lr_table(["pixel=fast"], ["colour"], ["pixel"])
    with pytest.raises(SystemExit, match="task must be one of"):
        bench.lr_table(["teeth:pixel=1e-4"], ["colour"], ["pixel"])

    tiny = models.build_tiny_pipeline(seed=0, block_out_channels=(8, 16, 16))
    monkeypatch.setattr(pxpo_lite, "load_tiny_pipeline", lambda *a, **k: copy.deepcopy(tiny))
    for k, v in FAST.items():
        monkeypatch.setitem(E.DEFAULTS, k, v)
    out = tmp_path / "c.json"
    res = bench.main(["--reduced", "--budget", "8", "--tasks", "colour", "--methods", "image", "pixel", "--jobs", "1",
                      "--eval-per-prompt", "1", "--n-boot", "20", "--out", str(out)])
    data = json.loads(out.read_text())
    assert out.with_suffix(".png").exists() and data["config"]["command"].startswith("python benchmarks/bench_credit_assignment.py --reduced")
    assert data["config"]["seeds"] == [0] and data["config"]["learning_rates"]["colour"]["pixel"]["lr"] == 3e-5
    assert bench.parse_args(["--reduced"]).jobs == 2 and bench.parse_args([]).jobs == 1
    assert data["timing"]["full_benchmark_estimate"]["runs"] == 162 and data["timing"]["total_cpu_s"] > 0
    assert data["summary"] == res["summary"]
    table2 = bench.lr_table([], ["colour"], ["image", "pixel"], previous=out)  # --lr-from reuses the chosen lrs
    assert table2 == {"colour": {"image": 3e-5, "pixel": 3e-5}}


def test_bench_credit_assignment_jobs_merge_the_parts(tmp_path, monkeypatch):
    """``--jobs 2``: methods shared over two processes (the shipped model), merged into one result."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_credit_assignment as bench

    out = tmp_path / "j.json"
    res = bench.main(["--reduced", "--budget", "16", "--tasks", "colour", "--methods", "image", "pixel", "pixel+keep",
                      "--eval-per-prompt", "1", "--n-boot", "20", "--num-steps", "2", "--jobs", "2", "--out", str(out)])
    data = json.loads(out.read_text())
    assert list(data["runs"]["colour"]) == ["image", "pixel", "pixel+keep"]  # all methods, in the usual order
    assert list(data["config"]["learning_rates"]["colour"]) == ["image", "pixel", "pixel+keep"]
    assert data["timing"]["jobs"] == 2 and data["timing"]["runs"] == 3 and data["config"]["jobs"] == 2
    assert not list(tmp_path.glob("*.part*.json")), "part files are removed after the merge"
    assert set(res["summary"]["colour"]["methods"]) == {"image", "pixel", "pixel+keep"}
    assert data["config"]["command"].endswith(f"--jobs 2 --out {out}")


def test_credit_goals_reads_a_result():
    def row(frac, fid_ok, low, effect):
        return {"samples_to_target": {"fraction_of_budget": frac}, "fidelity_ok_all_seeds": fid_ok, "fidelity_min_during": low,
                "fidelity": {"mean": 0.95}, "effect_std": {"mean": effect}}

    res = {"summary": {
        "colour": {"target_improved": True, "methods": {"pixel+keep": row(0.2, True, 0.93, 1.2)}},
        "hair": {"target_improved": True, "methods": {"pixel+keep": row(0.3, True, 0.85, 2.5)}},
        "shirt_blue": {"target_improved": False, "methods": {"pixel+keep": row(0.0, True, None, 3.0)}},
    }}
    g = E.credit_goals(res)
    assert g["colour"]["reach"]["met"] and g["colour"]["fidelity"]["met"] and g["colour"]["effect"]["met"]
    assert not g["hair"]["reach"]["met"]  # 30 % of the budget > 25 %
    assert not g["hair"]["fidelity"]["met"] and not g["hair"]["effect"]["met"]  # 85 % during training: not "all the way"
    assert g["shirt_blue"]["reach"]["met"] is None and "effect" not in g["shirt_blue"]  # DDPO did not improve: no target
