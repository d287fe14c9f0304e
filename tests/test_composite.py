"""The masked composite of painted feedback (``RefineConfig(composite=True)``, ``pxpo_lite.composite``).

A random tiny pipeline built in code, 4 DDIM steps, one update per round: each round is well under a second.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pxpo_lite import build_tiny_pipeline, world
from pxpo_lite.composite import base_trajectory, regenerate_mask, sample_composite
from pxpo_lite.feedback import FeedbackSession, RefineConfig
from pxpo_lite.keep_ramp import distance_to_disliked
from pxpo_lite.sampling import sample
from pxpo_lite.synthetic_feedback import blob

PROMPT = world.all_prompts()[0]
CFG = dict(num_steps=4, updates_per_round=1, learning_rate=3e-2, lora_rank=2, composite=True)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline(seed=0)


def _gen(seed=3):
    return torch.Generator().manual_seed(seed)


def test_regenerate_mask_is_the_union_of_disliked_strokes_widened_by_the_ramp():
    a, b = -blob((32, 32), 1, radius=4), -blob((32, 32), 2, radius=4)
    assert regenerate_mask([np.zeros((32, 32)), np.abs(a)], (32, 32), 4.0) is None  # nothing disliked: no composite
    m = regenerate_mask([a, b], (32, 32), None)[0].numpy()
    np.testing.assert_allclose(m, np.maximum(-a, -b), atol=1e-6)  # hard edge: the strokes themselves
    r = regenerate_mask([a], (32, 32), 4.0)[0].numpy()
    d = distance_to_disliked(torch.from_numpy(a)[None])[0].numpy()
    assert (r[a <= -1] == 1).all() and (r[d >= 4] == 0).all()
    band = (d > 0) & (d < 4)
    assert band.any() and ((r[band] > 0) & (r[band] < 1)).all()
    liked = regenerate_mask([np.clip(a + 2 * blob((32, 32), 5, radius=3), -1, 1)], (32, 32), None)[0].numpy()
    assert liked.min() >= 0  # liked paint is never redrawn


def test_composite_with_an_empty_mask_is_the_base_and_with_a_full_mask_is_plain_sampling(pipe):
    base = base_trajectory(pipe, PROMPT, num_steps=4, eta=1.0, guidance_scale=None, generator=_gen())
    none = sample_composite(pipe, base, torch.zeros(1, 32, 32), _gen())
    assert torch.equal(none.latents, base.latents)
    torch.testing.assert_close(none.log_probs, base.log_probs)
    full = sample_composite(pipe, base, torch.ones(1, 32, 32), _gen())
    plain = sample(pipe, [PROMPT], num_steps=4, eta=1.0, generator=_gen(), progress=False)
    torch.testing.assert_close(full.latents, plain.latents)
    torch.testing.assert_close(full.log_probs, plain.log_probs)
    with pytest.raises(ValueError, match="seed it as base"):
        sample_composite(pipe, base, torch.ones(1, 32, 32), _gen(4))
    with pytest.raises(ValueError, match=r"mask must be \(1,32,32\)"):
        sample_composite(pipe, base, torch.ones(32, 32), _gen())


def test_session_redraws_only_the_disliked_stroke_and_reloads_exactly(pipe, tmp_path):
    s = FeedbackSession(pipe, PROMPT, seed=3, folder=tmp_path / "s", config=RefineConfig(**CFG))
    heat = -blob((32, 32), 7, radius=6)
    for _ in range(2):
        s.step(heat, source="synthetic")
    change = np.abs(s.images[-1] - s.images[0]).mean(0)
    far = distance_to_disliked(torch.from_numpy(heat)[None])[0].numpy() >= 4
    assert change[far].max() == 0.0  # never-disliked pixels are the first image's, exactly
    assert change[heat <= -1].mean() > 0.01  # the stroke was redrawn by the updated model
    # the recorded trajectory is the shown image: its last latent decodes to it
    np.testing.assert_allclose(s.trajectory.images[0].numpy(), s.images[-1], atol=1e-6)
    again = FeedbackSession.load(tmp_path / "s", pipe)  # checks the regenerated image against the saved one
    np.testing.assert_allclose(again.image.numpy(), s.image.numpy(), atol=1e-6)


def test_composite_must_be_a_bool_and_old_sessions_read_without_it():
    with pytest.raises(ValueError, match="composite"):
        RefineConfig(composite="yes")
    assert RefineConfig.from_dict({"num_steps": 4}).composite is False


def test_redraw_liked_false_never_redraws_liked_pixels_first_seen_liked():
    dis = -blob((32, 32), 1, radius=5)
    ring = (distance_to_disliked(torch.from_numpy(dis)[None])[0].numpy() > 0) & (
        distance_to_disliked(torch.from_numpy(dis)[None])[0].numpy() < 4)
    heat = np.where(ring, 1.0, dis).astype(np.float32)  # liked right next to the disliked stroke
    kept = regenerate_mask([heat], (32, 32), 4.0, redraw_liked=False)[0].numpy()
    band = regenerate_mask([heat], (32, 32), 4.0)[0].numpy()
    assert (band[ring] > 0).all() and (kept[ring] == 0).all()  # the default band redraws them; False keeps them
    np.testing.assert_allclose(kept[~ring], band[~ring])  # everything else as before
    # a pixel disliked in an earlier round and liked now keeps being redrawn (the person likes the redrawn version)
    later = np.where(dis < 0, 1.0, 0.0).astype(np.float32)
    again = regenerate_mask([dis, later], (32, 32), 4.0, redraw_liked=False)[0].numpy()
    assert (again[dis <= -1] == 1).all()
    # on a coarser sample grid the liked fraction of each cell is left out
    coarse = regenerate_mask([heat], (8, 8), 4.0, redraw_liked=False)
    assert coarse.shape == (1, 8, 8) and 0 <= coarse.min() and coarse.max() <= 1


def test_session_with_redraw_liked_false_keeps_liked_pixels_exactly(pipe):
    dis = -blob((32, 32), 7, radius=6)
    d = distance_to_disliked(torch.from_numpy(dis)[None])[0].numpy()
    heat = np.where((d > 0) & (d < 3), 1.0, dis).astype(np.float32)
    s = FeedbackSession(pipe, PROMPT, seed=3, config=RefineConfig(**CFG, redraw_liked=False))
    s.step(heat, source="synthetic")
    change = np.abs(s.images[-1] - s.images[0]).mean(0)
    assert change[heat > 0].max() == 0.0 and change[heat <= -1].mean() > 0.01
    narrow = FeedbackSession(pipe, PROMPT, seed=3, config=RefineConfig(**CFG, redraw_ramp=2.0))
    narrow.step(dis, source="synthetic")
    assert np.abs(narrow.images[-1] - narrow.images[0]).mean(0)[d >= 2].max() == 0.0  # the band is 2 pixels wide


def test_redraw_fields_are_checked_and_old_sessions_keep_their_band():
    with pytest.raises(ValueError, match="RefineConfig.redraw_liked"):
        RefineConfig(redraw_liked="no")
    with pytest.raises(ValueError, match="RefineConfig.redraw_ramp must be None"):
        RefineConfig(redraw_ramp=0)
    old = RefineConfig.from_dict({"num_steps": 4, "composite": True, "keep_ramp": 3.0})
    assert old.redraw_ramp == 3.0 and old.redraw_liked is True  # saved before: the band was the keep ramp
    assert RefineConfig.from_dict({"num_steps": 4}).redraw_ramp is None


def test_the_unpainted_change_diagnosis_finds_nothing_outside_the_bands(pipe):
    """benchmarks/where_unpainted_changed.py (quoted in the README) splits the unpainted pixels' change by band:
    the shares add up to 1 and the part outside every band is 0 (the composite keeps those pixels)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "where_unpainted", Path(__file__).resolve().parents[1] / "benchmarks" / "where_unpainted_changed.py")
    where = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(where)
    row = {"prompt": PROMPT, "seed": 3, "rule": "dislike blob"}
    d = where.diagnose(row, {**CFG, "keep_beta": 1.0, "keep_ramp": 4.0}, 2, pipe, None)
    parts = d["parts"]
    assert sum(p["pixels"] for p in parts.values()) == d["unpainted_pixels"]
    assert parts["outside every band"]["pixels"] > 0 and parts["outside every band"]["share_of_change"] == 0.0
    assert abs(sum(p["share_of_change"] for p in parts.values()) - 1.0) < 1e-6
