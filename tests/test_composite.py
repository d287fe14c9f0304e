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
