"""The keep weight that grows with distance from a disliked stroke, free strokes, disliked-advantage scale."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pxpo_lite import build_tiny_pipeline, world
from pxpo_lite.feedback import FeedbackSession, RefineConfig, change_stats, heatmap_to_advantages
from pxpo_lite.keep import keep_weights_from_heatmap
from pxpo_lite.keep_ramp import distance_to_disliked
from pxpo_lite.synthetic_feedback import STROKES, free_stroke, parse_rule, synthetic_heatmap


def _brute_distance(h: np.ndarray) -> np.ndarray:
    ii, jj = np.nonzero(h < 0)
    yy, xx = np.mgrid[0:h.shape[0], 0:h.shape[1]]
    if not len(ii):
        return np.full(h.shape, np.inf)
    return np.sqrt((yy[..., None] - ii) ** 2 + (xx[..., None] - jj) ** 2).min(-1)


# ---------------------------------------------------------------------------- the ramp
def test_ramp_is_zero_inside_rises_linearly_and_keeps_liked_pixels():
    h = np.zeros((32, 32), np.float32)
    h[10:14, 10:14] = -1.0   # the disliked stroke
    h[0:3, :] = 1.0          # liked, far away
    h[12, 16] = 1.0          # liked, right next to the stroke
    w = keep_weights_from_heatmap(h, (32, 32), ramp=4.0)
    assert w.shape == (1, 32, 32)
    assert (w[0, 10:14, 10:14] == 0).all()
    row = w[0, 11, 13:22].tolist()  # moving right from the stroke's edge along an unpainted row
    assert row == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert w[0, 12, 16] == 1.0 and (w[0, 0:3] == 1).all()  # liked pixels keep w = 1 however close
    # without the ramp the same map gives the hard 0/1 edge
    hard = keep_weights_from_heatmap(h, (32, 32))
    assert hard[0, 11, 14] == 1.0 and (hard[0, 10:14, 10:14] == 0).all()
    # keep_liked=False: liked pixels are free (0), the ramp applies to the rest as before
    free = keep_weights_from_heatmap(h, (32, 32), keep_liked=False, ramp=4.0)
    assert free[0, 12, 16] == 0 and free[0, 11, 15] == pytest.approx(0.5)


def test_ramp_weight_is_monotone_in_distance_and_the_distance_is_exact():
    rng = np.random.default_rng(0)
    for _ in range(3):
        h = np.where(rng.random((20, 24)) < 0.03, -1.0, 0.0).astype(np.float32)
        h[rng.integers(0, 20), rng.integers(0, 24)] = -0.4  # a soft dislike counts as disliked
        d = distance_to_disliked(torch.from_numpy(h)[None])[0].numpy()
        np.testing.assert_allclose(d, _brute_distance(h), atol=1e-4)
        w = keep_weights_from_heatmap(h, (20, 24), ramp=3.0)[0].numpy()
        order = np.argsort(d.ravel(), kind="stable")
        assert (np.diff(w.ravel()[order]) >= -1e-6).all()  # farther from the stroke: never less kept
        np.testing.assert_allclose(w, np.minimum(1.0, d / 3.0), atol=1e-6)


def test_ramp_batches_and_pools_to_an_sd_latent_grid():
    h = np.zeros((2, 64, 64), np.float32)
    h[0, :16, :16] = -1.0
    h[1, 40:, 40:] = -1.0
    w = keep_weights_from_heatmap(h, (8, 8), ramp=16.0)
    assert w.shape == (2, 8, 8)
    assert (w[0, :2, :2] == 0).all() and (w[1, 5:, 5:] == 0).all()
    assert w[0, 7, 7] == 1.0 and w[1, 0, 0] == 1.0
    assert 0 < w[0, 2, 0] < w[0, 3, 0] < 1  # rising cell by cell away from the stroke


def test_all_zero_map_and_a_stroke_over_the_whole_image_are_defined():
    zero = keep_weights_from_heatmap(np.zeros((16, 16), np.float32), (16, 16), ramp=4.0)
    assert (zero == 1).all()  # nothing disliked: no ramp, everything kept
    assert torch.isinf(distance_to_disliked(torch.zeros(1, 4, 4))).all()
    whole = keep_weights_from_heatmap(-np.ones((16, 16), np.float32), (16, 16), ramp=4.0)
    assert (whole == 0).all()  # everything disliked: nothing kept (plain PXPO)


@pytest.mark.parametrize("ramp", [0, -2.0, float("nan"), float("inf"), True, "4"])
def test_bad_ramps_are_refused_with_the_argument_named(ramp):
    h = np.zeros((8, 8), np.float32)
    h[0, 0] = -1
    with pytest.raises(ValueError, match=r"ramp must be None .* or a finite number of pixels > 0"):
        keep_weights_from_heatmap(h, (8, 8), ramp=ramp)
    with pytest.raises(ValueError, match="RefineConfig.keep_ramp must be None"):
        RefineConfig(keep_ramp=ramp)


@pytest.mark.parametrize("bad, err, words", [
    (np.full((8, 8), np.nan, np.float32), ValueError, "NaN"),
    (np.full((8, 8), -2.0, np.float32), ValueError, r"\[-1, 1\]"),
    (np.zeros(8, np.float32), ValueError, r"\(H,W\) or \(B,H,W\)"),
    (np.zeros((8, 12), np.float32), ValueError, "aspect ratios differ"),
])
def test_bad_maps_are_refused_with_the_ramp_too(bad, err, words):
    with pytest.raises(err, match=words):
        keep_weights_from_heatmap(bad, (8, 8), ramp=2.0)


# ---------------------------------------------------------------------------- config and advantages
def test_dislike_scale_multiplies_only_disliked_advantages():
    h = np.zeros((4, 4), np.float32)
    h[0, 0], h[1, 1], h[2, 2] = -1.0, 1.0, -0.5
    A = heatmap_to_advantages(h, (4, 4), scale=2.0, dislike_scale=3.0)[0]
    assert A[0, 0] == -6.0 and A[1, 1] == 2.0 and A[2, 2] == -3.0 and A[3, 3] == 0
    with pytest.raises(ValueError, match="dislike_scale must be a finite number > 0, got 0"):
        heatmap_to_advantages(h, (4, 4), dislike_scale=0)
    with pytest.raises(ValueError, match="RefineConfig.dislike_scale must be a finite number > 0, got -1"):
        RefineConfig(dislike_scale=-1)


def test_dislike_area_scales_small_disliked_strokes_only():
    from pxpo_lite.painted import MAX_AREA_GAIN, area_gain

    h = np.zeros((10, 10), np.float32)
    h[0, :5] = -1.0   # 5 % of the image disliked
    h[9, 9] = 1.0     # a liked pixel is never scaled
    A = heatmap_to_advantages(h, (10, 10), dislike_scale=3.0, dislike_area=0.2)[0]
    assert torch.allclose(A[0, :5], torch.full((5,), -3.0 * 4.0)) and A[9, 9] == 1.0 and A[5, 5] == 0
    # a stroke as large as dislike_area (or larger) is unchanged; None switches it off
    big = np.zeros((10, 10), np.float32)
    big[:3] = -1.0
    assert area_gain(big, 0.2) == 1.0 and area_gain(h, None) == 1.0
    assert torch.equal(heatmap_to_advantages(big, (10, 10), dislike_area=0.2), heatmap_to_advantages(big, (10, 10)))
    # soft values count by their weight; a single faint dot is capped
    dot = np.zeros((10, 10), np.float32)
    dot[4, 4] = -0.1
    assert area_gain(dot, 0.5) == MAX_AREA_GAIN
    assert area_gain(np.where(h < 0, -0.5, 0.0), 0.2) == pytest.approx(8.0)
    assert area_gain(np.zeros((10, 10)), 0.2) == 1.0  # nothing disliked
    with pytest.raises(ValueError, match="RefineConfig.dislike_area must be None or a finite number > 0 and <= 1, got 0"):
        RefineConfig(dislike_area=0)
    with pytest.raises(ValueError, match="dislike_area must be a finite number"):
        heatmap_to_advantages(h, (10, 10), dislike_area=1.5)


def test_sessions_saved_before_the_ramp_continue_without_it():
    old = RefineConfig.from_dict({"num_steps": 4, "keep_beta": 10.0})
    assert old.keep_ramp is None and old.dislike_scale == 1.0 and old.dislike_area is None  # saved before area scaling
    assert RefineConfig.from_dict({"num_steps": 4, "keep_ramp": 3.0}).keep_ramp == 3.0


def test_change_stats_ratios_and_a_whole_image_stroke():
    before = np.zeros((3, 4, 4), np.float32)
    after = before.copy()
    after[:, 0, 0] = 0.6   # disliked pixel moved
    after[:, 3, 3] = 0.1   # an unpainted one a little
    h = np.zeros((4, 4), np.float32)
    h[0, 0], h[1, 1] = -1, 1
    s = change_stats(before, after, h)
    assert s["disliked_over_unpainted"] == pytest.approx(0.6 / (0.1 / 14))
    assert s["liked_over_unpainted"] == 0.0
    whole = change_stats(before, after, -np.ones((4, 4), np.float32))
    assert math.isnan(whole["change_unpainted"]) and math.isnan(whole["disliked_over_unpainted"])


# ---------------------------------------------------------------------------- free strokes
def test_free_strokes_are_reproducible_sized_and_the_stroke_crosses_parts():
    p = world.render(1, seed=4)
    labels = p.labels[0].numpy()
    sizes = {}
    for kind in STROKES:
        m = free_stroke(kind, (32, 32), 7)
        assert m.shape == (32, 32) and m.dtype == np.float32 and 0 <= m.min() and m.max() == 1
        np.testing.assert_array_equal(m, free_stroke(kind, (32, 32), 7))
        assert not np.array_equal(m, free_stroke(kind, (32, 32), 8))
        sizes[kind] = int((m > 0.5).sum())
    assert sizes["small_blob"] < sizes["large_blob"]
    line = free_stroke("line", (32, 32), 7) > 0.5
    assert line.sum() >= 16 and line.sum() <= 3 * 32  # long and thin
    for seed in range(5):
        parts = set(np.unique(labels[free_stroke("stroke", (32, 32), seed) > 0.5]).tolist())
        assert {world.PART_ID["skin"], world.PART_ID["shirt"]} <= parts and len(parts) >= 3  # crosses part boundaries
    with pytest.raises(ValueError, match="kind must be one of"):
        free_stroke("square", (32, 32), 0)


def test_rules_with_free_strokes_and_two_blobs():
    assert parse_rule("dislike small blob, like large_blob") == [(-1.0, "small_blob"), (1.0, "large_blob")]
    img = world.render(1, seed=4).images[0]
    two = synthetic_heatmap(img, "dislike blob, dislike blob", seed=3)
    one = synthetic_heatmap(img, "dislike blob", seed=3)
    assert (two < 0).sum() > (one < 0).sum() and two.max() == 0
    with pytest.raises(ValueError, match="target from"):
        parse_rule("dislike huge blob")


# ---------------------------------------------------------------------------- in a session
@pytest.fixture(scope="module")
def pipe():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield build_tiny_pipeline(seed=0)
    torch.set_num_threads(n)


CFG = dict(num_steps=4, updates_per_round=1, learning_rate=1e-2, lora_rank=2)


def test_session_ramp_reaches_the_update_and_a_whole_image_stroke_runs(pipe, monkeypatch):
    from pxpo_lite import update as update_mod

    seen = []
    orig = update_mod.policy_gradient_step

    def spy(*a, keep=None, **k):
        seen.append((keep, a[2]))
        return orig(*a, keep=keep, **k)

    monkeypatch.setattr("pxpo_lite.feedback.policy_gradient_step", spy)
    prompt = world.all_prompts()[0]
    h = np.zeros((32, 32), np.float32)
    h[10:14, 10:14] = -1.0
    s = FeedbackSession(pipe, prompt, seed=3, config=RefineConfig(**CFG, keep_ramp=4.0, dislike_scale=2.0))
    s.step(h, source="synthetic")
    keep, A = seen[-1]
    np.testing.assert_allclose(keep.weights[0].numpy(), keep_weights_from_heatmap(h, (32, 32), ramp=4.0)[0].numpy())
    # a 16-pixel stroke is 1.6 % of the image: the default dislike_area (0.3) scales it by the cap, ×10
    from pxpo_lite.painted import MAX_AREA_GAIN

    assert RefineConfig().dislike_area == 0.3 and A[0, 11, 11] == -2.0 * MAX_AREA_GAIN and A[0, 0, 0] == 0
    with pytest.warns(UserWarning, match="paints every pixel"):  # defined: nothing kept, nothing unpainted (and it says so)
        whole = s.step(-np.ones((32, 32), np.float32), source="synthetic")
    assert (seen[-1][0].weights == 0).all()
    assert whole.stats["change_disliked"] > 0 and math.isnan(whole.stats["change_unpainted"])


# ---------------------------------------------------------------------------- the adaptive round (target_change)
def test_target_change_is_checked_and_old_sessions_keep_fixed_rounds():
    assert RefineConfig.from_dict({"num_steps": 4}).target_change is None
    with pytest.raises(ValueError, match="target_change"):
        RefineConfig(target_change=0)
    with pytest.raises(ValueError, match="target_change"):
        RefineConfig(target_change=float("nan"))
    with pytest.raises(ValueError, match="max_updates_per_round .* below updates_per_round"):
        RefineConfig(updates_per_round=4, max_updates_per_round=3)


@pytest.mark.parametrize("target, sign, want_updates", [(None, -1, 2), (1.0, -1, 6), (1e-9, -1, 2), (1.0, 1, 2)])
def test_a_round_keeps_updating_until_the_disliked_pixels_change(pipe, monkeypatch, target, sign, want_updates):
    """target_change: more chunks of updates_per_round on the same trajectory until the disliked
    change reaches the target (1e-9: at once) or max_updates_per_round is spent (1.0: never reached);
    a map with nothing disliked (sign +1) makes one chunk."""
    from pxpo_lite import feedback as fb

    calls, orig = [], fb.pxpo_refine

    def spy(pipe_, traj, A, params, config, **k):
        calls.append(traj)
        return orig(pipe_, traj, A, params, config, **k)

    monkeypatch.setattr(fb, "pxpo_refine", spy)
    cfg = RefineConfig(**{**CFG, "updates_per_round": 2}, target_change=target, max_updates_per_round=7)
    s = FeedbackSession(pipe, world.all_prompts()[0], seed=3, config=cfg)
    first = s.trajectory
    h = np.zeros((32, 32), np.float32)
    h[8:16, 8:16] = sign
    r = s.step(h, source="synthetic")
    assert r.diagnostics["updates"] == want_updates and len(calls) == want_updates // 2
    assert all(t is first for t in calls)  # every chunk scores the image the person painted on
    # the round's image is the last regeneration, measured against the image painted on
    st = change_stats(r.image_before, s.image.numpy(), h)
    assert {k: r.stats[k] for k in st} == pytest.approx(st, nan_ok=True)
