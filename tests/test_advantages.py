"""Advantages: per-prompt statistics (as ddpo-pytorch), clipping, per-pixel maps, bad input."""
import warnings

import numpy as np
import pytest
import torch

from pxpo_lite.advantages import (
    NoSignalWarning,
    PerPromptStatTracker,
    clip_advantages,
    pixel_advantages,
    scalar_advantages,
)


def test_batch_statistics_until_min_count_then_per_prompt():
    t = PerPromptStatTracker(buffer_size=4, min_count=3)
    prompts = ["a", "a", "b", "b"]
    r1 = torch.tensor([1.0, 3.0, 10.0, 14.0])
    adv = t.update(prompts, r1)
    # fewer than 3 rewards per prompt: the batch's mean/std
    expected = (r1 - r1.mean()) / (r1.std(unbiased=False) + 1e-6)
    torch.testing.assert_close(adv, expected)
    r2 = torch.tensor([5.0, 7.0, 20.0, 22.0])
    adv = t.update(prompts, r2)
    buf_a = np.array([1, 3, 5, 7.0])
    buf_b = np.array([10, 14, 20, 22.0])
    exp_a = (r2[:2].numpy() - buf_a.mean()) / (buf_a.std() + 1e-6)
    exp_b = (r2[2:].numpy() - buf_b.mean()) / (buf_b.std() + 1e-6)
    np.testing.assert_allclose(adv.numpy(), np.concatenate([exp_a, exp_b]), rtol=1e-5)
    # buffer keeps only the last 4
    t.update(["a"], torch.tensor([100.0]))
    assert list(t.buffers["a"]) == [3, 5, 7, 100]


def test_reference_ddpo_pytorch_tracker():
    """Same numbers as ddpo-pytorch's PerPromptStatTracker (re-implemented here in a few lines)."""
    from collections import deque

    rng = np.random.default_rng(0)
    ref, ours = {}, PerPromptStatTracker(16, 4)
    for _ in range(5):
        prompts = list(rng.choice(["x", "y", "z"], size=6))
        rewards = rng.normal(size=6)
        adv_ref = np.empty(6)
        for p in np.unique(prompts):
            m = np.array(prompts) == p
            ref.setdefault(p, deque(maxlen=16)).extend(rewards[m])
            src = rewards if len(ref[p]) < 4 else np.array(ref[p])
            adv_ref[m] = (rewards[m] - src.mean()) / (src.std() + 1e-6)
        np.testing.assert_allclose(ours.update(prompts, torch.tensor(rewards)).numpy(), adv_ref, rtol=1e-5, atol=1e-6)


def test_clipping():
    a = torch.tensor([-10.0, 0.5, 7.0])
    assert clip_advantages(a, 5).tolist() == [-5.0, 0.5, 5.0]
    assert clip_advantages(a, None) is a
    with pytest.raises(ValueError, match="clip_max"):
        clip_advantages(a, 0)
    adv = scalar_advantages(torch.tensor([0.0, 0.0, 0.0, 100.0]), ["p"] * 4, clip_max=1.0)
    assert adv.abs().max() <= 1.0


def test_constant_maps_reduce_to_scalar_advantages():
    r = torch.tensor([0.1, -0.4, 0.3, 0.9])
    prompts = ["a", "b", "a", "b"]
    maps = r[:, None, None].expand(4, 8, 8).clone()
    torch.testing.assert_close(
        pixel_advantages(maps, prompts), scalar_advantages(r, prompts)[:, None, None].expand(4, 8, 8), rtol=1e-5, atol=1e-6
    )


def test_pixel_advantages_baseline_map_and_scalar_std():
    torch.manual_seed(0)
    maps = torch.randn(6, 4, 4) + torch.linspace(-3, 3, 16).reshape(4, 4)  # a strong per-pixel offset
    adv = pixel_advantages(maps, ["p"] * 6, clip_max=None)
    centred = maps - maps.mean(0)
    torch.testing.assert_close(adv, centred / (centred.std(unbiased=False) + 1e-6), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(adv.mean(0), torch.zeros(4, 4), atol=1e-5, rtol=0)  # offsets removed
    assert pixel_advantages(maps * 100, ["p"] * 6, clip_max=2.0).abs().max() <= 2.0


def test_all_zero_maps_warn_and_give_zeros():
    with pytest.warns(NoSignalWarning, match="no reward signal"):
        adv = pixel_advantages(torch.zeros(3, 5, 5), ["a", "b", "c"])
    assert torch.equal(adv, torch.zeros(3, 5, 5))
    with pytest.warns(NoSignalWarning):
        adv = scalar_advantages(torch.full((4,), 0.3), ["a"] * 4)
    assert torch.equal(adv, torch.zeros(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixel_advantages(torch.rand(3, 5, 5), ["a", "b", "c"])  # signal: no warning


def test_bad_input_is_named():
    t = PerPromptStatTracker()
    with pytest.raises(ValueError, match=r"sample 2 \(prompt 'c'\)"):
        t.update(["a", "b", "c"], torch.tensor([0.0, 1.0, float("nan")]))
    with pytest.raises(ValueError, match="sample 0"):
        pixel_advantages(torch.full((2, 3, 3), float("inf")), ["a", "b"])
    with pytest.raises(ValueError, match="3 rewards but 2 prompts"):
        t.update(["a", "b"], torch.zeros(3))
    with pytest.raises(ValueError, match=r"\(B,\) scalars or \(B,H,W\)"):
        t.update(["a", "b"], torch.zeros(2, 3))
    with pytest.raises(ValueError, match="pixel_advantages"):
        scalar_advantages(torch.zeros(2, 3, 3), ["a", "b"])
    with pytest.raises(ValueError, match="min_count"):
        PerPromptStatTracker(buffer_size=4, min_count=8)
    t.update(["a", "b"], torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="one tracker per reward type"):
        t.update(["a", "b"], torch.zeros(2, 3, 3))


def test_state_dict_round_trip():
    t = PerPromptStatTracker(4, 2)
    t.update(["a", "b", "a"], torch.tensor([1.0, 2.0, 3.0]))
    meta, tensors = t.state_dict()
    t2 = PerPromptStatTracker()
    t2.load_state_dict(meta, tensors)
    r = torch.tensor([4.0, 5.0])
    torch.testing.assert_close(t.update(["a", "b"], r), t2.update(["a", "b"], r))


# --- defects of issue 9 ---------------------------------------------------------------------------
def test_one_pixel_differing_by_1e3_is_no_signal():
    # four identical maps of magnitude ~1; one pixel of one map differs by 1e-3: s ≈ 1.4e-5 used to
    # pass the absolute threshold 1e-6 and give that pixel an advantage of 51.6 (clipped to 5)
    base = torch.rand(32, 32, generator=torch.Generator().manual_seed(0)) - 1  # like the colour map, [-1, 0]
    maps = base.expand(4, 32, 32).clone()
    maps[0, 5, 7] += 1e-3
    with pytest.warns(NoSignalWarning, match="no reward signal"):
        adv = pixel_advantages(maps, ["p"] * 4, clip_max=None)
    assert torch.equal(adv, torch.zeros_like(adv))
    # the same one-pixel difference at a real size (0.5) is a signal
    maps[0, 5, 7] += 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adv = pixel_advantages(maps, ["p"] * 4, clip_max=5.0)
    assert adv[0, 5, 7] == 5.0


def test_large_maps_differing_by_float_rounding_are_no_signal():
    # magnitude 1000, differences of float32 rounding (~6e-5): used to get unit-variance advantages
    g = torch.Generator().manual_seed(1)
    base = 1000 + torch.rand(16, 16, generator=g)
    maps = torch.stack([base, base + 6.1e-5, base - 6.1e-5, base]).float()
    assert (maps - maps.mean(0)).std() > 1e-6  # above the old absolute threshold
    with pytest.warns(NoSignalWarning):
        adv = pixel_advantages(maps, ["p"] * 4)
    assert torch.equal(adv, torch.zeros_like(adv))
    with pytest.warns(NoSignalWarning):  # the scalar version: the same rule
        assert torch.equal(scalar_advantages(maps.mean(dim=(1, 2)), ["p"] * 4), torch.zeros(4))
    # a real spread at that magnitude is a signal, and the advantages are as before
    r = torch.tensor([1000.0, 1003.0, 997.0, 1001.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adv = scalar_advantages(r, ["p"] * 4, clip_max=None)
    torch.testing.assert_close(adv, (r - r.mean()) / (r.std(unbiased=False) + 1e-6))


def test_rel_tol_is_a_setting_and_saved():
    maps = torch.ones(4, 8, 8)
    maps[0, 0, 0] += 1e-3
    t = PerPromptStatTracker(buffer_size=None, min_count=5, rel_tol=0.0)  # absolute rule only
    assert t.update(["p"] * 4, maps).abs().max() > 5
    meta, tensors = t.state_dict()
    assert meta["rel_tol"] == 0.0
    t2 = PerPromptStatTracker()
    t2.load_state_dict(meta, tensors)
    assert t2.rel_tol == 0.0
    with pytest.raises(ValueError, match="rel_tol must be a finite number >= 0"):
        PerPromptStatTracker(rel_tol=-1)


@pytest.mark.parametrize("fn, rewards", [
    (scalar_advantages, torch.zeros(0)),
    (pixel_advantages, torch.zeros(0, 4, 4)),
])
def test_empty_batch_is_a_clear_error(fn, rewards):
    with pytest.raises(ValueError, match=r"rewards is empty \(0 samples\)"):
        fn(rewards, [])


@pytest.mark.parametrize("rewards", [[1e39, 0.0, 1.0], np.array([1e39, 0.0, 1.0]), torch.tensor([1e39, 0.0, 1.0], dtype=torch.float64)])
def test_too_large_reward_is_not_called_nan(rewards):
    with pytest.raises(ValueError, match=r"too large for sample 0 \(prompt 'a'\).*overflows float32") as e:
        scalar_advantages(rewards, ["a", "b", "c"])
    assert "NaN" not in str(e.value)


@pytest.mark.parametrize("clip_max", [0, -1.0, float("nan"), True])
def test_clip_max_must_be_positive_number(clip_max):
    with pytest.raises(ValueError, match="clip_max must be a positive number"):
        clip_advantages(torch.zeros(3), clip_max)
