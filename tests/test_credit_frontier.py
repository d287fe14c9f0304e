"""The credit frontier: the two controls (uninformed map, image-level ratio) and every credit reduce to
DDPO under a constant map; the frontier's bookkeeping (points, selection, Pareto front, samples to an
effect, the lr ladder, the run cache) on known data; the benchmark's JSON schema and --reduced end to end."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pxpo_lite import experiments as E
from pxpo_lite import trainer as trainer_mod
from pxpo_lite.advantages import spread_advantages, uninformed_map
from pxpo_lite.experiments import frontier as F
from pxpo_lite.losses import ddpo_loss, imageratio_loss, pxpo_loss
from pxpo_lite.trainer import TrainConfig, check_config

from test_trainer import _captured_grads, make

ROOT = Path(__file__).resolve().parents[1]


def _grad(loss, p):
    (g,) = torch.autograd.grad(loss, p)
    return g


# -- the controls at the loss level ------------------------------------------------------------
@pytest.mark.parametrize("clip_range", [None, 1e-4, 0.2])
@pytest.mark.parametrize("off_policy", [False, True])
def test_imageratio_with_a_constant_map_is_ddpo(clip_range, off_policy):
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(4, 3, 6, 5, generator=g, requires_grad=True)
    old = lp.detach() + (0.3 * torch.randn(lp.shape, generator=g) if off_policy else 0)
    adv = torch.randn(4, generator=g)
    l_d, _ = ddpo_loss(lp, old, adv, clip_range)
    l_i, _ = imageratio_loss(lp, old, adv[:, None, None].expand(4, 6, 5).contiguous(), clip_range)
    torch.testing.assert_close(l_i, l_d)
    torch.testing.assert_close(_grad(l_i, lp), _grad(l_d, lp))


def test_imageratio_shares_one_ratio_per_image():
    g = torch.Generator().manual_seed(1)
    lp = torch.randn(2, 3, 4, 4, generator=g, requires_grad=True)
    old = lp.detach() + 0.5 * torch.randn(lp.shape, generator=g)
    amap = torch.randn(2, 4, 4, generator=g)
    # score function: DDPO with the map's mean as the image's advantage
    l_i, _ = imageratio_loss(lp, old, amap)
    l_d, _ = ddpo_loss(lp, old, amap.mean(dim=(1, 2)))
    torch.testing.assert_close(_grad(l_i, lp), _grad(l_d, lp))
    # clipped: each pixel's PPO term with the image's ratio
    eps = 0.05
    l_c, info = imageratio_loss(lp, old, amap, eps)
    rho = torch.exp(lp.mean(dim=(1, 2, 3)) - old.mean(dim=(1, 2, 3)))[:, None, None]
    ref = torch.maximum(-amap * rho, -amap * rho.clamp(1 - eps, 1 + eps)).mean()
    torch.testing.assert_close(l_c, ref)
    # and it is not PXPO: a per-pixel map steers every element of the image alike
    l_p, _ = pxpo_loss(lp, old, amap)
    assert not torch.allclose(_grad(l_p, lp), _grad(imageratio_loss(lp, old, amap)[0], lp))
    assert info["clip_fraction"] == pytest.approx(float(((rho.flatten() - 1).abs() > eps).float().mean()))


def test_uninformed_map_mean_one_nonnegative_seeded_and_constant_at_zero_amplitude():
    m = uninformed_map(3, (8, 6), torch.Generator().manual_seed(0))
    assert m.shape == (3, 8, 6) and (m >= 0).all()
    torch.testing.assert_close(m.mean(dim=(1, 2)), torch.ones(3))
    assert m.std() > 0.3  # a real spatial reweighting
    torch.testing.assert_close(m, uninformed_map(3, (8, 6), torch.Generator().manual_seed(0)))
    torch.testing.assert_close(uninformed_map(2, (4, 4), amplitude=0.0), torch.ones(2, 4, 4))
    adv = torch.tensor([1.0, -2.0, 0.5])
    torch.testing.assert_close(spread_advantages(adv, m).mean(dim=(1, 2)), adv)
    for bad in (dict(batch=0, size=(4, 4)), dict(batch=2, size=(4,)), dict(batch=2, size=(4, 4), amplitude=-1.0)):
        with pytest.raises(ValueError):
            uninformed_map(**bad)
    with pytest.raises(ValueError, match="weight_map"):
        spread_advantages(adv, torch.ones(2, 4, 4))


def test_config_checks_the_new_fields():
    check_config(TrainConfig(method="pxpo_imageratio"))
    check_config(TrainConfig(method="pxpo", advantage_map="uninformed"))
    with pytest.raises(ValueError, match="advantage_map"):
        check_config(TrainConfig(method="pxpo", advantage_map="random"))
    with pytest.raises(ValueError, match="per-pixel method"):
        check_config(TrainConfig(method="ddpo", advantage_map="uninformed"))


# -- every credit with a constant map is DDPO, through the trainer ---------------------------------
# (pxpo and pxpo-clipped: tests/test_trainer.py::test_pxpo_with_scalar_reward_is_ddpo)
@pytest.mark.parametrize("kw", [dict(method="pxpo_imageratio"), dict(method="pxpo_imageratio", clip_range=0.02),
                                dict(method="pxpo", advantage_map="uninformed")])
def test_every_credit_with_a_constant_map_has_ddpo_gradients(kw, monkeypatch):
    # a scalar reward is a constant map; the uninformed control's map made constant too
    monkeypatch.setattr(trainer_mod, "uninformed_map", lambda b, size, g=None: torch.ones(b, *size))
    a, b = make(method="ddpo", clip_range=kw.get("clip_range")), make(**kw)
    traj, r = a.sample_and_score(n=4, generator=torch.Generator().manual_seed(1))
    adv_a = a.compute_advantages(traj.prompts, r, (32, 32))
    adv_b = b.compute_advantages(traj.prompts, r, (32, 32))
    assert adv_b.shape == (4, 32, 32)
    torch.testing.assert_close(adv_b, adv_a[:, None, None].expand(4, 32, 32))
    ga, gb = _captured_grads(a, traj, adv_a), _captured_grads(b, traj, adv_b)
    for x, y in zip(ga[0], gb[0]):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-7)


def test_uninformed_control_spreads_the_image_advantage_without_feedback():
    from pxpo_lite import rewards

    a = make(rewards.colour_reward_map, method="ddpo")
    b = make(rewards.colour_reward_map, method="pxpo", advantage_map="uninformed")
    traj, r = a.sample_and_score(n=4, generator=torch.Generator().manual_seed(1))
    adv_a = a.compute_advantages(traj.prompts, r, (32, 32))
    adv_b = b.compute_advantages(traj.prompts, r, (32, 32))
    torch.testing.assert_close(adv_b.mean(dim=(1, 2)), adv_a, rtol=1e-5, atol=1e-6)  # the image's own advantage, on average
    assert (adv_b.std(dim=(1, 2)) > 0).all()  # spread unevenly, by a map that never saw the reward
    assert not torch.allclose(adv_b, b.compute_advantages(traj.prompts, r * 0 + r.flip(0), (32, 32)))


def test_every_credit_is_a_method():
    for credit in ("image", "region", "pixel", "pixel-clipped", "pixel-uninformed", "pixel-imageratio"):
        assert E.parse_method(credit) == (credit, False)
        assert E.parse_method(credit + "+keep") == (credit, True)
        assert E.CREDITS[credit] in E.METHODS
    with pytest.raises(ValueError, match="method must be one of"):
        E.parse_method("pixel-random")


# -- the frontier's bookkeeping on known data --------------------------------------------------------
def _run(seed, path, lr=1e-4, beta=None):
    return {"task": "colour", "method": "pixel", "lr": lr, "beta": beta, "seed": seed, "budget": 64, "cpu_s": 1.0,
            "path": [{"n": n, "fidelity": f, "effect_std": e, "mean": 0.0} for n, f, e in path]}


def test_setting_points_selection_and_pareto():
    runs = [_run(0, [(32, 1.0, 0.5), (64, 0.8, 1.5)]), _run(1, [(32, 0.9, 0.7), (64, 0.9, 1.7)])]
    pts = F.setting_points(runs, n_boot=200)
    assert [p["n_samples"] for p in pts] == [32, 64]
    assert pts[0]["fidelity_end"] == pytest.approx(0.95) and pts[0]["effect_std"]["mean"] == pytest.approx(0.6)
    assert pts[1]["fidelity_end"] == pytest.approx(0.85) and pts[1]["fidelity_min"] == pytest.approx(0.85)
    lo, hi = pts[1]["effect_std"]["lo"], pts[1]["effect_std"]["hi"]
    assert 1.5 <= lo <= 1.6 <= hi <= 1.7
    # the larger effect at 64 fails fidelity at the end: the rule takes the point at 32
    assert F.select_setting(pts)["n_samples"] == 32
    assert F.select_setting(pts, fid_end=0.99) is None
    # a dip below 0.85 on the way disqualifies later points even if they recover
    dip = F.setting_points([_run(0, [(32, 0.8, 0.5), (64, 0.95, 1.0)])], n_boot=10)
    assert dip[1]["fidelity_min"] == pytest.approx(0.8) and not F.meets(dip[1]) and F.select_setting(dip) is None
    front = F.pareto(pts + dip)
    assert {(p["n_samples"], p["fidelity_end"]) for p in front} >= {(64, 0.95)}
    assert all(not (q["fidelity_end"] >= p["fidelity_end"] and q["effect_std"]["mean"] > p["effect_std"]["mean"])
               for p in front for q in pts + dip)


def test_samples_to_effect_with_interval():
    runs = [_run(s, [(32, 1.0, 0.2 + 0.1 * s), (64, 1.0, 0.6 + 0.1 * s), (96, 1.0, 1.2)]) for s in range(4)]
    st = F.samples_to_effect(runs, 0.5, n_boot=300)
    assert st["point"] == 32 or st["point"] == 64
    assert st["lo"] <= st["point"] <= st["hi"]
    never = F.samples_to_effect(runs, 5.0, n_boot=50)
    assert never["point"] is None and never["never_fraction"] == 1.0 and never["hi"] is None
    capped = F.samples_to_effect(runs, 1.0, max_n=64, n_boot=50)
    assert capped["point"] is None  # reached only at 96, beyond the chosen budget
    bad = [_run(s, [(32, 0.5, 2.0), (64, 1.0, 2.0)]) for s in range(2)]
    assert F.samples_to_effect(bad, 1.0, n_boot=20)["point"] is None  # fidelity dipped below 0.85 first


def test_ladder_brackets_the_learning_rate():
    # effect grows with lr; fidelity fails from lr 1e-3 on
    def run_at(lr):
        calls.append(lr)
        return [_run(0, [(64, 1.0 if lr < 1e-3 else 0.5, 1e4 * lr)], lr=lr)]

    calls = []
    lrs = F.ladder(run_at, (1e-4, 3e-4, 1e-3, 3e-3))
    assert lrs[-1] == 1e-3 and 3e-3 not in calls  # stops at the first failing lr
    assert lrs[0] < 1e-4 and 1e4 * lrs[0] < F.MIN_EFFECT  # extended down until the effect is small
    calls = []
    up = F.ladder(lambda lr: [_run(0, [(64, 1.0, 0.1)], lr=lr)], (1e-4, 3e-4), max_extend=2)
    assert up == pytest.approx([1e-4, 3e-4, 9e-4, 2.7e-3])  # never failed: extended upwards


def test_run_cache_resumes_and_skips_torn_lines(tmp_path):
    p = tmp_path / "runs.jsonl"
    c = F.RunCache(p, {"model": "x"})
    c.put("k1", {"cpu_s": 1.0})
    with open(p, "a") as f:
        f.write('{"key": "k2", "cont')  # a kill in the middle of a line
    assert F.RunCache(p, {"model": "x"}).get("k1")["cpu_s"] == 1.0
    assert F.RunCache(p, {"model": "x"}).get("k2") is None
    assert F.RunCache(p, {"model": "other"}).get("k1") is None  # another configuration's runs are not reused


# -- the benchmark end to end and its JSON ----------------------------------------------------------
SCHEMA_POINT = {"lr", "beta", "fidelity_end", "fidelity_min", "effect_std"}


def check_schema(res: dict) -> None:
    cfg = res["config"]
    assert {"command", "selection_seeds", "eval_seeds", "budget"} <= set(cfg)
    assert not set(cfg["selection_seeds"]) & set(cfg["eval_seeds"])
    for task, by_method in res["summary"].items():
        for m, row in by_method.items():
            E.parse_method(m)
            assert {"seeds", "lr_grid", "beta_grid", "frontier", "best_at_fidelity", "samples_to_paper_effect"} <= set(row)
            for p in row["frontier"]:
                assert SCHEMA_POINT <= set(p) and {"mean", "lo", "hi"} <= set(p["effect_std"])
            b = row["best_at_fidelity"]
            if b is not None:
                assert {"threshold", "lr", "beta", "fidelity_end", "fidelity_min", "effect_std"} <= set(b)
                assert b["threshold"] == 0.9 and {"mean", "lo", "hi"} <= set(b["effect_std"])
                assert {"point", "lo", "hi"} <= set(row["samples_to_paper_effect"])


def test_reduced_benchmark_on_a_tiny_budget(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_credit_frontier", ROOT / "benchmarks" / "bench_credit_frontier.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "frontier.json"
    small = ["--reduced", "--model", "random-tiny", "--budget", "16", "--jobs", "1", "--n-boot", "50", "--beta-grid", "1",
             "--lr-grid", "image=3e-5", "pixel=1e-5", "keep=3e-4", "--out", str(out)]
    res = bench.main(small)
    saved = json.loads(out.read_text())
    check_schema(saved)
    assert set(saved["summary"]["colour"]) == set(F.FRONTIER_METHODS)
    assert saved["config"]["selection_seeds"] == [0] and saved["config"]["eval_seeds"] == [1, 2]
    assert out.with_suffix(".png").exists() and out.with_suffix(".runs.jsonl").exists()
    n_runs = res["timing"]["runs"]
    # a second run takes every training run from the cache
    again = bench.main(small)
    assert again["timing"]["cached_runs_at_start"] == n_runs
    with pytest.raises(SystemExit, match="overlap"):
        bench.parse_args(["--selection-seeds", "0", "1", "--eval-seeds", "1", "2"])
    # two one-task results merge into one (a copy renamed to another task stands in for the second)
    other = json.loads(out.read_text())
    for k in ("summary", "before", "runs"):
        other[k] = {"hair": other[k]["colour"]} if "colour" in other[k] else {}
    other["config"]["budget"] = {"hair": 16}
    (tmp_path / "hair.json").write_text(json.dumps(other))
    merged = bench.main(["--merge", str(out), str(tmp_path / "hair.json"), "--out", str(tmp_path / "both.json")])
    check_schema(merged)
    assert set(merged["summary"]) == {"colour", "hair"} and set(merged["goals"]) == {"colour", "hair"}
    assert merged["config"]["budget"] == {"colour": 16, "hair": 16} and merged["timing"]["runs"] == 2 * n_runs
    with pytest.raises(SystemExit, match="two results"):
        bench.main(["--merge", str(out), str(out), "--out", str(tmp_path / "x.json")])


@pytest.mark.parametrize("name", ["credit_frontier.json"])
def test_committed_frontier_result(name):
    path = ROOT / "benchmarks" / "results" / name
    if not path.exists():
        pytest.skip(f"{name} not committed yet")
    res = json.loads(path.read_text())
    check_schema(res)
    for task, by_method in res["summary"].items():
        assert set(F.FRONTIER_METHODS) <= set(by_method)
        for m, row in by_method.items():
            if row["best_at_fidelity"] is not None:
                assert row["seeds"] >= 5
                assert math.isfinite(row["best_at_fidelity"]["effect_std"]["mean"])


def _row(lr, beta, mean, lo, hi, n=64, reach=None):
    b = {"threshold": 0.9, "lr": lr, "beta": beta, "n_samples": n, "fidelity_end": 0.95, "fidelity_min": 0.9,
         "effect_std": {"mean": mean, "lo": lo, "hi": hi}, "meets_on_eval_seeds": True}
    return {"seeds": 5, "lr_grid": [lr], "beta_grid": [] if beta is None else [beta], "frontier": [], "pareto": [],
            "best_at_fidelity": b, "samples_to_paper_effect": {"point": reach, "lo": reach, "hi": reach}}


def test_goals_and_the_notebooks_setting_from_a_result():
    res = {"config": {"command": "python benchmarks/bench_credit_frontier.py"},
           "summary": {"colour": {"image": _row(3e-5, None, 0.8, 0.6, 1.0, reach=128),
                                  "pixel": _row(1e-5, None, 1.4, 1.2, 1.6, reach=32),
                                  "pixel+keep": _row(1e-3, 1.0, 1.1, 0.9, 1.3, reach=64),
                                  "pixel-uninformed": _row(3e-5, None, 1.3, 1.0, 1.5, reach=96)}}}
    g = E.frontier_goals(res)["colour"]
    assert g["best_pixel_method"] == "pixel"
    assert g["beats_image"]["met"] and not g["beats_uninformed"]["met"]  # intervals 1.2–1.6 and 1.0–1.5 overlap
    assert g["effect"]["met"] and g["samples"]["met"]  # 32 <= 0.25 * 128
    res["summary"]["colour"]["pixel"]["best_at_fidelity"]["meets_on_eval_seeds"] = False
    g2 = E.frontier_goals(res)["colour"]  # kept the prompt only on the selection seeds: the next best that held counts
    assert g2["best_pixel_method"] == "pixel+keep" and not g2["beats_image"]["met"]
    res["summary"]["colour"]["pixel+keep"]["best_at_fidelity"]["meets_on_eval_seeds"] = False
    g3 = E.frontier_goals(res)["colour"]  # none held: the best chosen one is reported, and no goal about it is met
    assert g3["best_pixel_method"] == "pixel" and not g3["beats_image"]["met"] and not g3["effect"]["met"]
    res["summary"]["colour"]["pixel"]["best_at_fidelity"]["meets_on_eval_seeds"] = True
    res["summary"]["colour"]["pixel+keep"]["best_at_fidelity"]["meets_on_eval_seeds"] = True
    s = E.frontier_setting("colour", res)
    assert (s["method"], s["lr"], s["beta"], s["n_samples"]) == ("pixel", 1e-5, None, 64)
    with pytest.raises(ValueError, match="not in this frontier result"):
        E.frontier_setting("hair", res)
    res["summary"]["colour"] = {"image": res["summary"]["colour"]["image"]}
    with pytest.raises(ValueError, match="no per-pixel setting"):
        E.frontier_setting("colour", res)
    assert "best per-pixel method" in E.frontier_table({**res, "goals": E.frontier_goals(res)})
