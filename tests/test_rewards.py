"""Rewards: "less blue" map and scalar, JPEG compressibility, hair map from the segmenter, checks."""
import pytest
import torch

from pxpo_lite import rewards, world


def _solid(rgb, n=1, size=8):
    return torch.tensor(rgb, dtype=torch.float32).div(255).view(1, 3, 1, 1).expand(n, 3, size, size).clone()


def test_colour_map_documented_values():
    cases = {
        world.BACKGROUNDS["blue"]: -(215 - 85) / 255,
        world.BACKGROUNDS["light blue"]: -(240 - 195) / 255,
        world.BACKGROUNDS["navy"]: -(100 - 35) / 255,
        world.BACKGROUNDS["grey"]: 0.0,
        world.SHIRTS["white"]: 0.0,
        world.SHIRTS["red"]: 0.0,
        (0, 0, 255): -1.0,
    }
    for rgb, want in cases.items():
        m = rewards.colour_reward_map(_solid(rgb))
        assert m.shape == (1, 8, 8)
        torch.testing.assert_close(m, torch.full((1, 8, 8), want), atol=1e-6, rtol=0)


def test_colour_bounded_and_scalar_is_mean():
    imgs = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    m = rewards.colour_reward_map(imgs)
    assert m.shape == (5, 16, 16) and m.min() >= -1 and m.max() <= 0
    torch.testing.assert_close(rewards.blue_reward(imgs), m.mean(dim=(1, 2)))
    torch.testing.assert_close(rewards.scalar(rewards.colour_reward_map)(imgs), m.mean(dim=(1, 2)))
    assert rewards.scalar(rewards.blue_reward)(imgs).shape == (5,)


def test_world_images_blue_backgrounds_score_lower():
    p = world.render(32, seed=3)
    r = rewards.blue_reward(p.images, p.prompts)
    blue_bg = torch.tensor([a.background in ("blue", "navy", "light blue") for a in p.attributes])
    assert r[blue_bg].mean() < r[~blue_bg].mean()


def test_jpeg_compressibility_as_ddpo():
    flat = _solid((120, 50, 200), n=2, size=32)
    noisy = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    r_flat, r_noisy = rewards.jpeg_compressibility(flat), rewards.jpeg_compressibility(noisy)
    assert r_flat.shape == (2,) and (r_flat < 0).all()
    assert (r_flat > r_noisy).all()  # flat images compress better


def test_hair_map_from_segmenter():
    p = world.render(12, seed=5)
    m = rewards.hair_reward_map(p.images, p.prompts)
    assert m.shape == (12, 32, 32) and m.min() >= -1 and m.max() <= 0 and not m.requires_grad
    hair = p.labels == world.PART_ID["hair"]
    assert m[hair].mean() < -0.9 and m[~hair].mean() > -0.1
    # batched == one by one
    seg = rewards._default_segmenter("cpu")
    torch.testing.assert_close(-rewards.hair_probability(p.images, seg, batch_size=5), m)


def test_every_default_segmenter_is_one_cached_load(monkeypatch):
    """Issue 20: the shipped segmenter was loaded six ways (two caches, four fresh loads per call).
    Every ``segmenter=None`` default now shares rewards.default_segmenter: one load per device."""
    from pxpo_lite import fidelity, models, regions, synthetic_feedback
    from pxpo_lite.experiments import tasks

    loads, load = [], models.load_segmenter

    def counting(device="cpu", path=None):
        loads.append(str(device))
        return load(device, path)

    monkeypatch.setattr(rewards, "_SEGMENTERS", {})
    for mod in (models, rewards, regions, synthetic_feedback, fidelity, tasks):  # wherever a loader is bound, count it
        if hasattr(mod, "load_segmenter"):
            monkeypatch.setattr(mod, "load_segmenter", counting)
    if hasattr(regions, "_SEGMENTERS"):
        monkeypatch.setattr(regions, "_SEGMENTERS", {})
    p = world.render(2, seed=5)
    seg = rewards.default_segmenter()
    rewards.hair_reward_map(p.images, p.prompts)
    regions.part_labels(p.images)
    synthetic_feedback.synthetic_heatmap(p.images[0], "dislike hair")
    fidelity.prompt_fidelity(p.images, p.prompts)
    assert tasks._load_segmenter(None) is seg and regions._segmenter(p.images.device) is seg
    assert rewards.default_segmenter(torch.device("cpu")) is seg and rewards._default_segmenter("cpu") is seg
    assert loads == ["cpu"] and not seg.training


def test_check_reward_and_bad_input():
    imgs = torch.rand(3, 3, 8, 8)
    rewards.check_reward(torch.zeros(3), imgs)
    rewards.check_reward(torch.zeros(3, 8, 8), imgs, kind="map")
    with pytest.raises(ValueError, match=r"shape \(3, 4, 4\).*expected \(3, 8, 8\)"):
        rewards.check_reward(torch.zeros(3, 4, 4), imgs, kind="map")
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        rewards.check_reward(torch.zeros(2), imgs)
    bad = torch.zeros(3, 8, 8)
    bad[1, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"sample\(s\) \[1\]"):
        rewards.check_reward(bad, imgs)
    with pytest.raises(ValueError, match=r"\(B,3,H,W\)"):
        rewards.colour_reward_map(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match=r"in \[0,1\]"):
        rewards.colour_reward_map(torch.rand(1, 3, 8, 8) * 2 - 1.5)
    with pytest.raises(ValueError, match="2 prompts"):
        rewards.blue_reward(imgs, ["a", "b"])
    with pytest.raises(ValueError, match="unknown reward"):
        rewards.get_reward("sharpness")
    assert rewards.get_reward("blue") is rewards.blue_reward


# --- defects of issue 9 ---------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [rewards.colour_reward_map, rewards.blue_reward, rewards.jpeg_compressibility])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_images_are_rejected(fn, value):
    imgs = torch.rand(3, 3, 8, 8)
    imgs[1, 0, 2, 2] = value  # jpeg_compressibility of an all-NaN image used to be a finite -0.63
    with pytest.raises(ValueError, match=r"images has NaN/inf values in image\(s\) \[1\]"):
        fn(imgs)


def test_check_reward_is_the_one_validator():
    imgs = torch.rand(3, 3, 8, 8)
    # too large for float32 is not "NaN or inf"
    with pytest.raises(ValueError, match=r"too large for sample\(s\) \[2\].*overflows float32") as e:
        rewards.check_reward(torch.tensor([0.0, 1.0, 1e39], dtype=torch.float64), imgs)
    assert "NaN" not in str(e.value)
    # prompts name the samples
    with pytest.raises(ValueError, match=r"NaN/inf for sample 1 \(prompt 'b'\)"):
        rewards.check_reward(torch.tensor([0.0, float("nan"), 1.0]), imgs, prompts=["a", "b", "c"])
    # without images: ranks only
    rewards.check_reward(torch.zeros(2, 5, 5), None, kind="map")
    with pytest.raises(ValueError, match=r"\(B,\) scalars or \(B,H,W\) maps"):
        rewards.check_reward(torch.zeros(2, 5), None)
    with pytest.raises(ValueError, match=r"reward is empty \(0 samples\)"):
        rewards.check_reward(torch.zeros(0), torch.rand(0, 3, 8, 8))
    with pytest.raises(TypeError, match="real numbers"):
        rewards.check_reward(torch.zeros(3, dtype=torch.bool), imgs)
    with pytest.raises(ValueError, match="kind must be"):
        rewards.check_reward(torch.zeros(3), imgs, kind="vector")
    rewards.check_reward(torch.tensor([1, 2, 3]), imgs)  # integer rewards are fine
