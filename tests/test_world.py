import numpy as np
import pytest
import torch

from pxpo_lite import world


def test_render_contract():
    p = world.render(8, seed=3)
    assert p.images.shape == (8, 3, world.SIZE, world.SIZE) and p.images.dtype == torch.float32
    assert 0.0 <= p.images.min() and p.images.max() <= 1.0
    assert p.labels.shape == (8, world.SIZE, world.SIZE) and p.labels.dtype == torch.int64
    assert len(p.prompts) == 8 and all(isinstance(s, str) for s in p.prompts)
    assert "background" in world.PARTS and "hair" in world.PARTS
    assert int(p.labels.max()) < len(world.PARTS)


def test_deterministic_and_seed_dependent():
    a, b, c = world.render(16, seed=5), world.render(16, seed=5), world.render(16, seed=6)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.prompts == b.prompts
    assert not torch.equal(a.images, c.images)


def test_labels_agree_with_prompts_and_colours():
    p = world.render(300, seed=11)
    hair = world.PART_ID["hair"]
    for img, lab, attr, prompt in zip(p.images, p.labels, p.attributes, p.prompts):
        assert world.parse_prompt(prompt) == attr
        has_hair = bool((lab == hair).any())
        assert has_hair == (not attr.bald), prompt
        # the background is a plain colour that reaches both top corners
        assert lab[0, 0] == world.PART_ID["background"] and lab[0, -1] == world.PART_ID["background"]
        bg = img[:, lab == 0].mean(1).numpy()
        assert world.nearest_colour(bg, world.BACKGROUNDS) == attr.background
        if has_hair:
            assert world.nearest_colour(img[:, lab == hair].mean(1).numpy(), world.HAIR_COLOURS) == attr.hair_colour


def test_blue_is_common():
    p = world.render(2000, seed=1)
    blueish = sum(a.background in ("blue", "light blue", "navy") for a in p.attributes) / len(p)
    assert 0.4 < blueish < 0.6


def test_render_with_given_attributes():
    attrs = [world.Attributes(None, None, "red", "blue"), world.Attributes("red", "long", "green", "navy")]
    p = world.render(2, seed=0, attributes=attrs)
    assert p.prompts == [world.prompt_for(a) for a in attrs]
    assert not (p.labels[0] == world.PART_ID["hair"]).any()


@pytest.mark.parametrize("seed", ["1", 1.5, None, True])
def test_bad_seed_type(seed):
    with pytest.raises(TypeError, match="seed must be an int"):
        world.render(2, seed=seed)


def test_bad_n_and_prompt():
    with pytest.raises(ValueError, match="n must be a positive int"):
        world.render(0, seed=0)
    with pytest.raises(ValueError, match="unknown hair colour 'purple'"):
        world.parse_prompt("a portrait with long purple hair and a red shirt on a blue background")
    with pytest.raises(ValueError, match="caption grammar"):
        world.parse_prompt("a cat")


def test_vocabulary_covers_all_prompts():
    vocab = set(world.vocabulary())
    for p in world.all_prompts():
        assert set(p.split()) <= vocab
    assert len(set(world.all_prompts())) == len(world.all_prompts())
