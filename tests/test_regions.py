"""Region-focused and multi-channel reward maps (pxpo_lite.regions) on the world's labelled images."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pxpo_lite import keep, regions, rewards, world
from pxpo_lite.world import PART_ID, Attributes


@pytest.fixture(scope="module")
def portraits():
    attrs = [Attributes("blue", "long", "blue", "blue"), Attributes("red", "curly", "blue", "light blue"),
             Attributes(None, None, "red", "navy"), Attributes("black", "short", "blue", "green")]
    return world.render(len(attrs), seed=11, attributes=attrs)


@pytest.fixture(scope="module")
def seg_labels(portraits):
    return regions.part_labels(portraits.images)


def test_segmenter_labels_agree_with_the_world(portraits, seg_labels):
    assert (seg_labels == portraits.labels).float().mean() > 0.99


def test_less_blue_on_the_shirt_only_is_zero_off_the_shirt(portraits, seg_labels):
    fn = regions.restrict(rewards.colour_reward_map, "shirt")
    r = fn(portraits.images, portraits.prompts)
    full = rewards.colour_reward_map(portraits.images)
    shirt = seg_labels == PART_ID["shirt"]
    assert r.shape == full.shape and fn.is_map
    assert (r[~shirt] == 0).all()                      # exactly zero off the shirt, though backgrounds are blue
    assert torch.equal(r[shirt], full[shirt])          # the reward itself on the shirt
    assert (full[~shirt] < -0.1).any()
    true_shirt = portraits.labels == PART_ID["shirt"]
    blue_shirt = true_shirt[[0, 1, 3]]
    assert (r[[0, 1, 3]][blue_shirt] < -0.3).float().mean() > 0.98    # blue shirts are penalised
    assert (r[2] == 0).all()                                          # a red shirt is not blue
    assert (r[~true_shirt] != 0).float().mean() < 0.01                # ... and nothing else is


def test_hair_towards_red_rewards_only_hair_and_knows_red(portraits, seg_labels):
    fn = regions.restrict(regions.towards_colour("red"), "hair")
    r = fn(portraits.images)
    hair = seg_labels == PART_ID["hair"]
    assert (r[~hair] == 0).all() and (r[hair] < 0).all()
    red_hair, blue_hair = r[1][hair[1]], r[0][hair[0]]
    assert red_hair.mean() > -0.06 and blue_hair.mean() < -0.35      # red is near the target, blue far
    assert not hair[2].any() and (r[2] == 0).all()                  # bald: no hair, no reward
    # "everything else kept": keep weights 1 off the hair, 0 on it
    w = keep.keep_weights_from_mask(regions.region_mask("hair", portraits.images), (32, 32))
    assert torch.equal(w == 0, hair)


def test_towards_colour_values_and_colour_forms():
    img = torch.zeros(1, 3, 2, 2)
    img[0, 0, 0, 0] = 1.0                                # a pure red pixel; the others black
    r = regions.towards_colour((255, 0, 0))(img)
    assert r[0, 0, 0] == 0 and r[0, 1, 1] == pytest.approx(-1 / math.sqrt(3))
    torch.testing.assert_close(regions.towards_colour((1.0, 0.0, 0.0))(img), r)
    torch.testing.assert_close(regions.towards_colour("red")(img), regions.towards_colour(world.HAIR_COLOURS["red"])(img))
    torch.testing.assert_close(regions.towards_colour("orange")(img), regions.towards_colour(world.SHIRTS["orange"])(img))
    assert regions.towards_colour((0, 0, 0))(torch.ones(1, 3, 1, 1)).item() == pytest.approx(-1.0)
    for bad in ("mauve", (1, 2), (300, 0, 0), (0.5, 2.0, 0.0), (1, 0.5, 0)):
        with pytest.raises(ValueError, match="colour"):
            regions.towards_colour(bad)


def test_region_mask_forms(portraits, seg_labels):
    imgs = portraits.images
    union = regions.region_mask(["hair", "shirt"], imgs)
    assert torch.equal(union.bool(), (seg_labels == PART_ID["hair"]) | (seg_labels == PART_ID["shirt"]))
    painted = np.zeros((32, 32), np.float32)
    painted[:5, :7] = 1.0
    m = regions.region_mask(painted, imgs)
    assert m.shape == (4, 32, 32) and m.sum() == 4 * 35
    fn = regions.restrict(rewards.colour_reward_map, painted)
    r = fn(imgs)
    assert (r[:, 5:] == 0).all() and (r[:, :, 7:] == 0).all() and torch.equal(r[:, :5, :7], rewards.colour_reward_map(imgs)[:, :5, :7])
    by_fn = regions.restrict(rewards.colour_reward_map, lambda x: (x[:, 2] > 0.5).float())
    assert torch.equal(by_fn(imgs) != 0, (imgs[:, 2] > 0.5) & (rewards.colour_reward_map(imgs) != 0))


def test_region_errors_name_the_problem(portraits):
    imgs = portraits.images
    with pytest.raises(ValueError, match="parts of the world"):
        regions.restrict(rewards.colour_reward_map, "hat")
    with pytest.raises(ValueError, match="parts of the world"):
        regions.region_mask(["hair", "tie"], imgs)
    with pytest.raises(ValueError, match=r"need \(32, 32\)"):
        regions.region_mask(np.ones((16, 16)), imgs)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        regions.region_mask(np.full((32, 32), 2.0), imgs)
    with pytest.raises(ValueError, match="region callable"):
        regions.region_mask(lambda x: torch.ones(3, 32, 32), imgs)
    with pytest.raises(TypeError, match="region must be"):
        regions.region_mask(3, imgs)
    with pytest.raises(TypeError, match="reward_fn must be"):
        regions.restrict("colour", "hair")


def test_per_part_average_gives_one_credit_per_part(portraits, seg_labels):
    fn = regions.per_part_average(rewards.colour_reward_map)
    r, full = fn(portraits.images), rewards.colour_reward_map(portraits.images)
    for b in range(len(r)):
        for p in seg_labels[b].unique():
            inside = seg_labels[b] == p
            assert torch.allclose(r[b][inside], full[b][inside].mean().expand(int(inside.sum())), atol=1e-6)
    torch.testing.assert_close(r.mean(dim=(1, 2)), full.mean(dim=(1, 2)))   # DDPO's reward is unchanged


def test_multi_channel_reward_weights_channels_and_reports_each(portraits):
    imgs, prompts = portraits.images, portraits.prompts
    heat = np.zeros((32, 32), np.float32)
    heat[:16] = 1.0
    mc = regions.MultiChannelReward({
        "colour": (rewards.colour_reward_map, 1.0),
        "hair": (rewards.hair_reward_map, 0.5),
        "painted": (regions.painted(heat), 2.0),
        "jpeg": (rewards.jpeg_compressibility, 0.01),   # a scalar channel fills its image
    })
    with pytest.raises(RuntimeError, match="call the MultiChannelReward"):
        mc.channel_means()
    r = mc(imgs, prompts)
    colour, hair, jpeg = rewards.colour_reward_map(imgs), rewards.hair_reward_map(imgs), rewards.jpeg_compressibility(imgs)
    expected = colour + 0.5 * hair + 2.0 * torch.from_numpy(heat) + 0.01 * jpeg[:, None, None]
    torch.testing.assert_close(r, expected)
    torch.testing.assert_close(mc.last_means["colour"], colour.mean(dim=(1, 2)))
    torch.testing.assert_close(mc.last_means["hair"], hair.mean(dim=(1, 2)))
    torch.testing.assert_close(mc.last_means["jpeg"], jpeg)
    means = mc.channel_means()
    assert list(means) == ["colour", "hair", "painted", "jpeg"] and means["painted"] == pytest.approx(0.5)
    assert means["hair"] < 0 and mc.last_maps["hair"].shape == (4, 32, 32)
    assert mc.is_map and "0.5·hair" in mc.__name__
    # a new batch replaces the report
    mc(imgs[:1], prompts[:1])
    assert mc.last_means["colour"].shape == (1,)


def test_multi_channel_reward_rejects_bad_channels(portraits):
    with pytest.raises(ValueError, match="non-empty dict"):
        regions.MultiChannelReward({})
    with pytest.raises(ValueError, match=r"channel 'a' must be \(reward_fn, weight\)"):
        regions.MultiChannelReward({"a": rewards.colour_reward_map})
    with pytest.raises(ValueError, match="channel 'a' has weight nan"):
        regions.MultiChannelReward({"a": (rewards.colour_reward_map, float("nan"))})
    bad = regions.MultiChannelReward({"bad": (lambda x, p=None: torch.zeros(2, 3), 1.0)})
    with pytest.raises(ValueError, match="channel 'bad' has shape"):
        bad(portraits.images)
    with pytest.raises(ValueError, match="paint at the image's size"):
        regions.painted(np.zeros((8, 8)))(portraits.images)
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        regions.painted(np.full((32, 32), 3.0))


def test_trainer_reports_each_channel_of_a_multi_channel_reward():
    import copy

    from pxpo_lite.models import build_tiny_pipeline
    from pxpo_lite.trainer import TrainConfig, Trainer

    torch.set_num_threads(1)
    calls = []
    heat = np.zeros((32, 32), np.float32)
    heat[:8] = 1.0

    def hair(images, prompts=None):
        calls.append(len(images))
        return rewards.hair_reward_map(images)

    mc = regions.MultiChannelReward({"colour": (rewards.colour_reward_map, 1.0), "hair": (hair, 0.5),
                                     "painted": (regions.painted(heat), 2.0)})
    cfg = TrainConfig(method="pxpo", num_steps=3, samples_per_epoch=4, sample_batch_size=2, train_batch_size=4, progress=False)
    tr = Trainer(copy.deepcopy(build_tiny_pipeline(0)), mc, cfg, prompts=[world.all_prompts()[1]])
    rec = tr.train(1)[-1]
    assert calls == [4]  # one reward call per epoch: the report is of the samples trained on
    assert [k for k in rec if k.startswith("reward/")] == ["reward/colour", "reward/hair", "reward/painted"]
    assert rec["reward/painted"] == pytest.approx(0.25)
    for name, value in mc.channel_means().items():
        assert rec[f"reward/{name}"] == pytest.approx(value)
    total = rec["reward/colour"] + 0.5 * rec["reward/hair"] + 2.0 * rec["reward/painted"]
    assert rec["reward_mean"] == pytest.approx(total, rel=1e-5)
    plain = Trainer(copy.deepcopy(build_tiny_pipeline(0)), rewards.colour_reward_map, cfg, prompts=[world.all_prompts()[1]])
    assert not any(k.startswith("reward/") for k in plain.train(1)[-1])


def test_multi_channel_weights_accept_numpy_numbers_not_bools(portraits):
    """Issue 20: np.float32 / np.int64 weights were refused as 'must be a finite number'."""
    mc = regions.MultiChannelReward({"a": (rewards.colour_reward_map, np.float32(0.5)), "b": (rewards.colour_reward_map, np.int64(2))})
    assert mc.channels["a"][1] == 0.5 and type(mc.channels["b"][1]) is float and mc.__name__ == "multi(0.5·a, 2·b)"
    for bad in (True, "1", np.array([1.0, 2.0])):
        with pytest.raises(ValueError, match="channel 'a' has weight"):
            regions.MultiChannelReward({"a": (rewards.colour_reward_map, bad)})
