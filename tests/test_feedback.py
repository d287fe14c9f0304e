"""Feedback sessions: synthetic feedback, one PXPO round, save -> reload -> continue, bad inputs.

Uses a small random tiny pipeline built in code (4 DDIM steps, 1 update per round) so each
round takes well under a second.
"""
from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from pxpo_lite import build_tiny_pipeline, world
from pxpo_lite.canvas import HeatmapCanvas
from pxpo_lite import lora
from pxpo_lite import update as update_mod
from pxpo_lite.ddim import step_sigmas
from pxpo_lite.feedback import FeedbackSession, RefineConfig, SessionError, change_stats, heatmap_to_advantages
from pxpo_lite.synthetic_feedback import blob, next_heatmap, parse_rule, synthetic_heatmap
from pxpo_lite.update import TrainingError

PROMPT = world.all_prompts()[0]
CFG = dict(num_steps=4, updates_per_round=1, learning_rate=1e-2, lora_rank=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Batch-1 steps of a tiny UNet gain nothing from more threads; one thread keeps these tests
    fast on a shared, busy machine (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return build_tiny_pipeline(seed=0)


def _maps(shape=(32, 32)):
    """Two reproducible painted maps: like blob / dislike blob."""
    return [np.clip(blob(shape, 1) - blob(shape, 2), -1, 1), -blob(shape, 3)]


# -- synthetic feedback ---------------------------------------------------------------------------
def test_parse_rule_and_errors():
    assert parse_rule("dislike hair, like background") == [(-1.0, "hair"), (1.0, "background")]
    assert parse_rule("like blob; dislike shirt") == [(1.0, "blob"), (-1.0, "shirt")]
    for bad in ("", "hate hair", "dislike hat", "like"):
        with pytest.raises(ValueError, match="rule|clause"):
            parse_rule(bad)


def test_synthetic_heatmaps_are_reproducible_and_follow_the_rule():
    p = world.render(1, seed=4)
    img = p.images[0]
    a = synthetic_heatmap(img, "dislike hair, like background")
    b = synthetic_heatmap(img, "dislike hair, like background")
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == (32, 32) and set(np.unique(a)) <= {-1.0, 0.0, 1.0}
    labels = p.labels[0].numpy()
    hair, bg = labels == world.PART_ID["hair"], labels == world.PART_ID["background"]
    if hair.any():
        assert (a[hair] < 0).mean() > 0.8  # the segmenter finds most of the true hair
    assert (a[bg] > 0).mean() > 0.8
    c1 = synthetic_heatmap(img, "like blob", seed=1)
    np.testing.assert_array_equal(c1, synthetic_heatmap(img, "like blob", seed=1))
    assert not np.array_equal(c1, synthetic_heatmap(img, "like blob", seed=2)) and c1.max() == 1


def test_heatmap_to_advantages_zero_where_unpainted_and_area_average():
    h = np.zeros((32, 32), np.float32)
    h[:8, :8] = -1
    A = heatmap_to_advantages(h, (32, 32), scale=2.0)
    assert A.shape == (1, 32, 32) and A[0, :8, :8].eq(-2).all() and A[0, 8:].eq(0).all()
    A8 = heatmap_to_advantages(h, (4, 4))  # a latent grid 8x coarser (Stable Diffusion)
    assert A8.shape == (1, 4, 4) and A8[0, 0, 0] == -1 and A8[0, 1:].eq(0).all()


def test_change_stats():
    before = np.zeros((3, 2, 2), np.float32)
    after = before.copy()
    after[:, 0, 0] = 0.6
    h = np.array([[-1, 1], [0, 0]], np.float32)
    s = change_stats(before, after, h)
    assert s["change_disliked"] == pytest.approx(0.6) and s["change_liked"] == 0 and s["change_unpainted"] == 0
    assert np.isnan(s["change_ratio"])


def test_next_heatmap_never_waits(pipe):
    img = world.render(1, seed=2).images[0]
    c = HeatmapCanvas()
    h, src, msg = next_heatmap("canvas", img, canvas=c, rule="like blob")
    assert src == "synthetic" and "no image" in msg and h.any()
    c.set_image(img)
    h, src, msg = next_heatmap("canvas", img, canvas=c, rule="like blob")
    assert src == "synthetic" and "nothing is painted" in msg
    c.paint_stroke([(4, 4)], brush="dislike")
    h, src, _ = next_heatmap("canvas", img, canvas=c)
    assert src == "canvas" and h.min() == -1
    with pytest.raises(ValueError, match="FEEDBACK_SOURCE"):
        next_heatmap("human", img)


def test_deterministic_last_step_is_skipped(pipe):
    pipe.scheduler.set_timesteps(4)
    s = step_sigmas(pipe.scheduler, pipe.scheduler.timesteps, 1.0)
    assert len(s) == 4 and s[-1] == 0 and min(s[:-1]) > 1e-3


# -- one round ---------------------------------------------------------------------------------
def test_round_updates_regenerates_and_leaves_the_callers_pipe_alone(pipe, tmp_path):
    before_weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    s = FeedbackSession(pipe, PROMPT, seed=3, folder=tmp_path / "s", config=RefineConfig(**CFG))
    img0 = s.image.clone()
    r = s.step(_maps()[0], source="synthetic", note="blobs")
    assert r.index == 1 and len(s.rounds) == 1 and r.seconds > 0
    assert r.change_map.shape == (32, 32) and not np.allclose(r.image_after, img0.numpy())
    np.testing.assert_allclose(r.image_before, img0.numpy())
    for k in ("change_disliked", "change_liked", "change_unpainted", "change_ratio", "liked_pixels", "disliked_pixels"):
        assert k in r.stats
    # the default target_change: one step, then more until the disliked pixels change by 0.15 (≤ 12 steps)
    assert (r.stats["change_disliked"] >= 0.15 or r.update["updates"] == 12) and r.update["timesteps_used"] == 3
    assert 1 <= r.update["updates"] <= s.config.max_updates_per_round == 12
    assert not lora.has_lora(pipe.unet)
    for k, v in pipe.unet.state_dict().items():
        assert torch.equal(v, before_weights[k]), k
    assert s.summary()[0]["round"] == 1


def test_all_zero_heatmap_makes_no_update(pipe, tmp_path, capsys):
    s = FeedbackSession(pipe, PROMPT, seed=3, folder=tmp_path / "s", config=RefineConfig(**CFG))
    manifest = (tmp_path / "s" / "session.json").read_text()
    adapters = s.adapter_state()
    assert s.step(np.zeros((32, 32), np.float32)) is None
    assert "Nothing was painted" in capsys.readouterr().out
    assert s.rounds == [] and (tmp_path / "s" / "session.json").read_text() == manifest
    for k, v in s.adapter_state().items():
        assert torch.equal(v, adapters[k])


@pytest.mark.parametrize(
    "bad, words",
    [(np.zeros((16, 16)), "image's size"), (np.full((32, 32), np.nan), "NaN"), (np.full((32, 32), 3.0), "[-1,1]")],
)
def test_bad_heatmaps_are_refused(pipe, bad, words):
    s = FeedbackSession(pipe, PROMPT, seed=3, config=RefineConfig(**CFG))
    with pytest.raises(ValueError) as e:
        s.step(bad)
    assert words in str(e.value) and s.rounds == []


def _folder_state(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_painted_maps_lose_nothing_already_saved(pipe, tmp_path):
    """Issue 19's bad inputs on a session with a saved round: each is refused by name before any update,
    the folder is byte-for-byte as it was, and the next good round is round 2."""
    s = FeedbackSession(pipe, PROMPT, seed=3, folder=tmp_path / "s", config=RefineConfig(**CFG))
    s.step(_maps()[0])
    saved, adapters = _folder_state(tmp_path / "s"), s.adapter_state()
    nan = _maps()[1].copy()
    nan[5, 5] = np.nan  # one NaN from the front end
    for bad, err, words in [(nan, ValueError, r"1 NaN/inf value\(s\).*Nothing was changed.*np.nan_to_num"),
                            (np.zeros((16, 16)), ValueError, r"image's size \(32, 32\).*got shape \(16, 16\)"),
                            (torch.zeros(32, 32, device="meta"), TypeError, "meta-device"),
                            (np.zeros((32, 32), complex), TypeError, "dtype complex128")]:
        with pytest.raises(err, match=words):
            s.step(bad)
    assert s.step(np.zeros((32, 32), np.float32)) is None  # all zeros: no update, says so (test above)
    assert len(s.rounds) == 1 and _folder_state(tmp_path / "s") == saved
    for k, v in s.adapter_state().items():
        assert torch.equal(v, adapters[k])
    assert s.step(_maps()[1]).index == 2


@pytest.mark.parametrize("value, kept", [(-1.0, "the keep term holds nothing"), (1.0, "liked pixels are still held")])
def test_a_stroke_over_the_whole_image_runs_and_says_what_it_means(pipe, value, kept):
    """No unpainted pixel: the round is defined (the keep ramp has no outside pixel), but it warns that
    nothing is kept and that the ratios over unpainted pixels are NaN, and how to keep a part."""
    s = FeedbackSession(pipe, PROMPT, seed=3, config=RefineConfig(**CFG))
    with pytest.warns(UserWarning, match=f"paints every pixel.*{kept}.*NaN.*leave it unpainted"):
        r = s.step(np.full((32, 32), value, np.float32))
    assert r.index == 1 and np.isnan(r.stats["change_unpainted"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a map with an unpainted pixel does not warn
        m = np.full((32, 32), value, np.float32)
        m[0, 0] = 0
        s.step(m)


def test_bad_arguments(pipe):
    with pytest.raises(TypeError, match="one str"):
        FeedbackSession(pipe, [PROMPT])
    with pytest.raises(ValueError, match="never saw"):
        FeedbackSession(pipe, "a cat on a sofa", config=RefineConfig(**CFG))
    with pytest.raises(ValueError, match="updates_per_round"):
        RefineConfig(updates_per_round=0)


@pytest.mark.parametrize("field, value, words", [
    ("learning_rate", float("inf"), "RefineConfig.learning_rate must be a finite number > 0, got inf"),
    ("learning_rate", 0, "RefineConfig.learning_rate"),
    ("max_grad_norm", 0, "RefineConfig.max_grad_norm must be None or a finite number > 0, got 0"),
    ("max_grad_norm", float("nan"), "RefineConfig.max_grad_norm"),
    ("clip_range", True, "RefineConfig.clip_range must be None or a finite number > 0, got True"),
    ("advantage_scale", float("inf"), "RefineConfig.advantage_scale"),
    ("eta", 0.0, "RefineConfig.eta"),
    ("eta", 1.2, "RefineConfig.eta"),
    ("guidance_scale", float("inf"), "RefineConfig.guidance_scale"),
    ("num_steps", True, "RefineConfig.num_steps"),
])
def test_refine_config_checks_every_number(field, value, words):
    with pytest.raises(ValueError, match=words):
        RefineConfig(**{field: value})


def test_refine_config_reads_sessions_saved_before_the_rename():
    c = RefineConfig.from_dict({"num_steps": 4, "lr": 0.5, "min_sigma": 1e-3})
    assert c.learning_rate == 0.5 and c.num_steps == 4


def test_one_step_schedule_is_refused_up_front(pipe, tmp_path):
    """num_steps=1: the tiny model's only step is deterministic; nothing could be refined."""
    with pytest.raises(ValueError, match="num_steps=1 at eta=1.0 gives no stochastic DDIM step"):
        FeedbackSession(pipe, PROMPT, seed=3, folder=tmp_path / "s", config=RefineConfig(**{**CFG, "num_steps": 1}))
    assert not (tmp_path / "s").exists()


def test_nan_during_refinement_stops_before_the_step(pipe, tmp_path, monkeypatch):
    """The feedback loop has the trainer's NaN guard (one update path): no NaN image is saved."""
    s = FeedbackSession(pipe, PROMPT, seed=3, folder=tmp_path / "s", config=RefineConfig(**CFG, keep_beta=0.0))
    adapters = s.adapter_state()
    orig = update_mod.step_log_probs  # without the keep term the update re-scores with step_log_probs
    monkeypatch.setattr(update_mod, "step_log_probs", lambda *a: [lp * float("nan") for lp in orig(*a)])
    with pytest.raises(TrainingError, match=r"log-prob is NaN/inf for sample 0 .*refinement step 1.*weights untouched"):
        s.step(_maps()[0])
    assert s.rounds == [] and not (tmp_path / "s" / "round_001").exists()
    for k, v in s.adapter_state().items():
        assert torch.equal(v, adapters[k])


# -- save -> reload -> continue ---------------------------------------------------------------
def test_save_reload_continue_equals_uninterrupted(pipe, tmp_path):
    m1, m2 = _maps()
    full = FeedbackSession(pipe, PROMPT, seed=5, folder=tmp_path / "full", config=RefineConfig(**CFG))
    full.step(m1, source="synthetic")
    full.step(m2, source="synthetic")

    part = FeedbackSession(pipe, PROMPT, seed=5, folder=tmp_path / "part", config=RefineConfig(**CFG))
    part.step(m1, source="synthetic")
    del part  # "kernel restart"
    files = sorted(p.name for p in (tmp_path / "part").iterdir())
    assert files == ["round_000", "round_001", "session.json"]
    assert sorted(p.name for p in (tmp_path / "part" / "round_001").iterdir()) == sorted(
        ["adapter.safetensors", "heatmap.npy", "heatmap.png", "image.npy", "image.png", "image_before.npy"]
    )
    resumed = FeedbackSession.load(tmp_path / "part", pipe)
    assert len(resumed.rounds) == 1 and resumed.prompt == PROMPT and resumed.seed == 5
    np.testing.assert_array_equal(resumed.rounds[0].heatmap, m1)
    resumed.step(m2, source="synthetic")

    np.testing.assert_allclose(resumed.image.numpy(), full.image.numpy(), atol=1e-6)
    a, b = resumed.adapter_state(), full.adapter_state()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    for ra, rb in zip(resumed.rounds, full.rounds):
        np.testing.assert_array_equal(ra.heatmap, rb.heatmap)
        np.testing.assert_allclose(ra.image_after, rb.image_after, atol=1e-6)
    again = FeedbackSession.load(tmp_path / "part", pipe)  # the continued session is on disk too
    assert len(again.rounds) == 2 and len(again.images) == 3


def test_reload_before_any_round(pipe, tmp_path):
    s = FeedbackSession(pipe, PROMPT, seed=5, folder=tmp_path / "s", config=RefineConfig(**CFG))
    r = FeedbackSession.load(tmp_path / "s", pipe)
    assert r.rounds == [] and torch.equal(r.image, s.image)


def test_missing_half_written_and_foreign_folders_fail_clearly(pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FeedbackSession.load(tmp_path / "nope", pipe)
    folder = tmp_path / "s"
    s = FeedbackSession(pipe, PROMPT, seed=5, folder=folder, config=RefineConfig(**CFG))
    s.step(_maps()[0])
    with pytest.raises(SessionError, match="already holds a feedback session"):
        FeedbackSession(pipe, PROMPT, seed=5, folder=folder, config=RefineConfig(**CFG))

    # an interrupted later round (temp folder, never in the manifest): warn, keep what was complete
    shutil.copytree(folder / "round_001", folder / "round_002.tmp")
    with pytest.warns(UserWarning, match="interrupted"):
        assert len(FeedbackSession.load(folder, pipe).rounds) == 1
    shutil.rmtree(folder / "round_002.tmp")

    # a file the manifest lists is gone
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "round_001" / "adapter.safetensors").unlink()
    with pytest.raises(SessionError, match="half-written.*adapter.safetensors"):
        FeedbackSession.load(broken, pipe)

    # no manifest at all (the first save was interrupted)
    (broken / "session.json").unlink()
    with pytest.raises(SessionError, match="no session.json"):
        FeedbackSession.load(broken, pipe)

    # a corrupt manifest
    (broken / "session.json").write_text("{not json")
    with pytest.raises(SessionError, match="not valid JSON"):
        FeedbackSession.load(broken, pipe)
    (broken / "session.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(SessionError, match="not a"):
        FeedbackSession.load(broken, pipe)
    (broken / "session.json").write_text(json.dumps({"format": "pxpo-lite feedback session", "version": 1}))
    with pytest.raises(SessionError, match="malformed"):
        FeedbackSession.load(broken, pipe)

    # another base model
    other = build_tiny_pipeline(seed=1)
    with pytest.raises(SessionError, match="another base model"):
        FeedbackSession.load(folder, other)

    # overwrite=True starts afresh, deleting only the session's own files
    (folder / "notes.txt").write_text("mine")
    s2 = FeedbackSession(pipe, PROMPT, seed=6, folder=folder, config=RefineConfig(**CFG), overwrite=True)
    assert FeedbackSession.load(folder, pipe).seed == 6 and s2.rounds == []
    assert (folder / "notes.txt").read_text() == "mine" and not (folder / "round_001").exists()


# -- the keep term in refinement ----------------------------------------------------------------
@pytest.mark.parametrize("field, value, words", [
    ("keep_beta", -1.0, "RefineConfig.keep_beta must be a finite number >= 0, got -1.0"),
    ("keep_beta", float("nan"), "RefineConfig.keep_beta"),
    ("keep_beta", True, "RefineConfig.keep_beta"),
    ("keep_liked", 1, "RefineConfig.keep_liked must be True or False, got 1"),
])
def test_refine_config_checks_the_keep_fields(field, value, words):
    with pytest.raises(ValueError, match=words):
        RefineConfig(**{field: value})


def test_sessions_saved_before_the_keep_term_continue_without_it():
    assert RefineConfig.from_dict({"num_steps": 4}).keep_beta == 0.0
    assert RefineConfig.from_dict({"num_steps": 4, "keep_beta": 3.0}).keep_beta == 3.0
    assert RefineConfig().keep_beta > 0 and RefineConfig().keep_liked is True


def test_keep_term_round_one_is_bit_for_bit_the_plain_update_then_reports_its_kl(pipe):
    heat = _maps()[0]
    fixed = dict(CFG, target_change=None)  # one step per round: the first is taken at θ = θ_ref
    plain = FeedbackSession(pipe, PROMPT, seed=3, config=RefineConfig(**fixed, keep_beta=0.0))
    kept = FeedbackSession(pipe, PROMPT, seed=3, config=RefineConfig(**fixed, keep_beta=10.0))
    r0, r1 = plain.step(heat, source="synthetic"), kept.step(heat, source="synthetic")
    # one update from θ = θ_ref (fresh adapters): the keep term and its gradient are exactly 0
    assert np.array_equal(r0.image_after, r1.image_after)
    assert "keep_kl_last" not in r0.update
    assert r1.update["keep_kl_last"] == r1.update["keep_kl_kept_last"] == r1.update["keep_kl_free_last"] == 0.0
    r2 = kept.step(heat, source="synthetic")  # θ ≠ θ_ref now: the term is on
    assert r2.update["keep_kl_last"] > 0 and r2.update["keep_kl_free_last"] > 0
    json.dumps(r2.update)  # NaN-free: saved in the manifest


def test_keep_weights_reach_the_update_from_the_painted_map(pipe, monkeypatch):
    seen = []
    orig = update_mod.policy_gradient_step

    def spy(*a, keep=None, **k):
        seen.append(keep)
        return orig(*a, keep=keep, **k)

    monkeypatch.setattr("pxpo_lite.feedback.policy_gradient_step", spy)
    heat = _maps()[0]
    for keep_liked in (True, False):
        s = FeedbackSession(pipe, PROMPT, seed=3, config=RefineConfig(**CFG, keep_beta=2.0, keep_liked=keep_liked, keep_ramp=None))
        s.step(heat, source="synthetic")
        k = seen[-1]
        assert k.beta == 2.0 and k.weights.shape == (1, 32, 32)
        w = k.weights[0].numpy()
        np.testing.assert_allclose(w[heat == 0], 1.0)
        np.testing.assert_allclose(w[heat == -1], 0.0)
        np.testing.assert_allclose(w[heat == 1], 1.0 if keep_liked else 0.0)
    FeedbackSession(pipe, PROMPT, seed=3, config=RefineConfig(**CFG, keep_beta=0.0)).step(heat, source="synthetic")
    assert seen[-1] is None  # β = 0: no keep term, no reference forward


def test_nan_during_refinement_with_the_keep_term_stops_before_the_step(pipe, monkeypatch):
    """With the keep term the update re-scores through keep.steps_means: the same NaN guard applies."""
    s = FeedbackSession(pipe, PROMPT, seed=3, config=RefineConfig(**CFG, keep_beta=10.0))
    adapters = s.adapter_state()
    orig = update_mod.keep_lib.steps_means

    def nan_means(*a, **k):
        gs = orig(*a, **k)
        return [g._replace(log_prob=g.log_prob * float("nan")) for g in gs] if not k.get("reference") else gs

    monkeypatch.setattr(update_mod.keep_lib, "steps_means", nan_means)
    with pytest.raises(TrainingError, match=r"log-prob is NaN/inf for sample 0 .*refinement step 1.*weights untouched"):
        s.step(_maps()[0])
    assert s.rounds == []
    for k, v in s.adapter_state().items():
        assert torch.equal(v, adapters[k])


# -- NumPy scalars are numbers (issue 20) ------------------------------------------------------
@pytest.mark.parametrize("value", [np.float64(2e-3), np.float32(2e-3), np.array(2e-3), torch.tensor(2e-3)])
def test_refine_config_stores_numpy_scalars_as_python_numbers(value):
    c = RefineConfig(learning_rate=value, keep_beta=value, keep_ramp=value, dislike_scale=value, eta=np.float32(1.0),
                     num_steps=np.int64(4), timestep_batch=np.int32(2), guidance_scale=np.float64(1.0))
    for name in ("learning_rate", "keep_beta", "keep_ramp", "dislike_scale", "eta", "guidance_scale"):
        assert type(getattr(c, name)) is float, name
    assert type(c.num_steps) is int and type(c.timestep_batch) is int and c.num_steps == 4
    assert c.learning_rate == pytest.approx(2e-3) and json.dumps(RefineConfig.from_dict(json.loads(json.dumps(c.__dict__))).__dict__)
    for field, bad in (("keep_ramp", True), ("keep_ramp", "4"), ("learning_rate", "1e-3"), ("num_steps", np.float64(4.0))):
        with pytest.raises(ValueError, match=f"RefineConfig.{field}"):
            RefineConfig(**{field: bad})


def test_a_session_takes_numpy_numbers_and_saves_them_as_json(pipe, tmp_path):
    """np.int64 num_steps used to pass RefineConfig and fail in sample(); np.float32 values could not be
    written to session.json; np.int64 seed was 'not an int'."""
    cfg = RefineConfig(**{**CFG, "num_steps": np.int64(4), "learning_rate": np.float32(1e-2)})
    s = FeedbackSession(pipe, PROMPT, seed=np.int64(3), folder=tmp_path / "s", config=cfg)
    assert s.seed == 3 and type(s.seed) is int
    s.step(_maps()[0])
    again = FeedbackSession.load(tmp_path / "s", pipe)
    assert again.config.num_steps == 4 and again.seed == 3
    for bad in (True, 3.0, "3"):
        with pytest.raises(TypeError, match="seed must be an int"):
            FeedbackSession(pipe, PROMPT, seed=bad, config=cfg)
