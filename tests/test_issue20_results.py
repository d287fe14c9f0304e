"""Issue 20, silent wrong results: each case used to return a wrong answer without a word."""
import copy
import functools

import numpy as np
import pytest
import torch

import pxpo_lite
from pxpo_lite import world

torch.set_num_threads(1)
PROMPTS = world.all_prompts()[:2]


@functools.lru_cache(maxsize=None)
def _base():
    return pxpo_lite.build_tiny_pipeline(seed=0)


def _pipe():
    return copy.deepcopy(_base())


# ---- the pipeline's own __call__ -------------------------------------------------------------
def test_pipeline_call_eta_1_is_finite_where_diffusers_rounds_below_zero():
    """A schedule where diffusers' 1−ᾱ_{t−1}−σ_t² rounds to −6e-8 in float32: its own step gives an
    all-NaN image; the pipeline must give the clamped (finite) step, as sample() does."""
    pipe = _pipe()
    pipe.scheduler.alphas_cumprod[799] = 0.1811  # 5 steps: t = 999 -> 799 rounds to −6e-8 at η = 1
    s = copy.deepcopy(pipe.scheduler)
    s.set_timesteps(5)
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.isnan(s.step(torch.zeros_like(x), 999, x, eta=1.0).prev_sample).all()  # diffusers' own step: NaN
    images = pipe(PROMPTS, num_inference_steps=5, eta=1.0, generator=torch.Generator().manual_seed(0)).images
    assert torch.isfinite(images).all()
    traj = pxpo_lite.sample(pipe, PROMPTS, num_steps=5, eta=1.0, generator=torch.Generator().manual_seed(0), progress=False)
    torch.testing.assert_close(images, traj.images, atol=1e-5, rtol=0)


def test_pipeline_call_equals_diffusers_where_it_is_finite_and_checks_eta():
    pipe = _pipe()
    for eta in (0.0, 0.5):
        got = pipe(PROMPTS[:1], num_inference_steps=4, eta=eta, generator=torch.Generator().manual_seed(1)).images
        ref = _pipe()
        g = torch.Generator().manual_seed(1)
        x = pxpo_lite.sampling.initial_latents(ref, 1, g)
        cond, _ = ref.encode_prompt(PROMPTS[:1], "cpu", 1, False)
        ref.scheduler.set_timesteps(4)
        with torch.no_grad():
            for t in ref.scheduler.timesteps:
                x = ref.scheduler.step(ref.unet(x, t, encoder_hidden_states=cond).sample, t, x, eta=eta, generator=g).prev_sample
        torch.testing.assert_close(got, (x / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"eta must be a number in \(0, 1\], got 1\.5"):
        pipe(PROMPTS[:1], num_inference_steps=2, eta=1.5)


# ---- trl_run_settings ------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [("save_freq", 0), ("save_freq", -1), ("num_epochs", 2.7), ("num_epochs", 0),
                                          ("save_freq", True), ("num_epochs", "3")])
def test_trl_run_settings_refuses_a_run_that_never_saves_or_truncates(field, value):
    from pxpo_lite.trl_compat import trl_run_settings

    with pytest.raises(ValueError, match=rf"TRL setting {field} .* must be an int >= 1, got {value!r}"):
        trl_run_settings({field: value})
    assert trl_run_settings({"num_epochs": np.int64(3), "save_freq": 2}) == {"epochs": 3, "checkpoint_every": 2, "checkpoint_dir": None}


# ---- Keep with the trained UNet as its own reference ----------------------------------------
def test_keep_with_the_trained_unet_as_reference_is_refused():
    from pxpo_lite import keep
    from pxpo_lite.update import Keep, policy_gradient_step

    pipe = _pipe()
    traj = pxpo_lite.sample(pipe, PROMPTS, num_steps=3, generator=torch.Generator().manual_seed(0), progress=False)
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=1.0)
    pairs = [(torch.arange(2), 0)]
    with pytest.raises(ValueError, match=r"Keep.reference_unet shares \d+ weight tensor\(s\) with the trained pipe.unet.*frozen_copy"):
        policy_gradient_step(pipe, traj, torch.tensor([1.0, -1.0]), pairs, opt, params, method="ddpo",
                             keep=Keep(1.0, None, pipe.unet))
    assert all(torch.equal(a, b) for a, b in zip(before, params))
    # a frozen copy is the reference it should be: the step runs
    res = policy_gradient_step(pipe, traj, torch.tensor([1.0, -1.0]), pairs, opt, params, method="ddpo",
                               keep=Keep(1.0, None, keep.frozen_copy(pipe.unet)))
    assert np.isfinite(res.grad_norm)


# ---- prompt_cache after the text encoder changes ----------------------------------------------
def test_prompt_cache_follows_a_swapped_or_changed_text_encoder():
    from pxpo_lite.models import build_text_encoder
    from pxpo_lite.speed import enable_prompt_cache

    pipe = _pipe()
    cache = enable_prompt_cache(pipe)
    own = lambda: type(pipe).encode_prompt(pipe, PROMPTS, "cpu", 1, False)[0]  # noqa: E731 - no cache
    first, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False)
    torch.manual_seed(5)
    pipe.text_encoder = build_text_encoder(pipe.tokenizer)  # swapped
    swapped, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False)
    assert not torch.allclose(first, swapped) and torch.equal(swapped, own())
    with torch.no_grad():  # the same encoder, new weights (as an optimiser step or load_state_dict)
        next(pipe.text_encoder.parameters()).add_(0.5)
    changed, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False)
    assert not torch.allclose(changed, swapped) and torch.equal(changed, own())
    again, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False)
    assert torch.equal(again, changed) and cache.hits == 2  # unchanged encoder: served from the cache


# ---- regions with a segmenter of other classes ------------------------------------------------
@pytest.mark.parametrize("classes", [4, 7])
def test_restrict_with_a_segmenter_of_other_classes_names_the_part(classes):
    from pxpo_lite import regions, rewards
    from pxpo_lite.models import Segmenter

    seg = Segmenter(width=8, dilations=(1,), num_classes=classes).eval()
    fn = regions.restrict(rewards.colour_reward_map, "shirt", segmenter=seg)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=rf"segmenter gives {classes} classes.*6 parts.*'shirt': 5.*region 'shirt' is part id\(s\) \[5\]"):
        fn(images)
    with pytest.raises(ValueError, match=rf"segmenter gives {classes} classes"):
        regions.per_part_average(rewards.colour_reward_map, segmenter=seg)(images)


# ---- a feedback session continued from an edited manifest -------------------------------------
def _edit(folder, **fields):
    import json

    m = json.loads((folder / "session.json").read_text())
    for k, v in fields.items():
        if k == "num_steps":
            m["config"]["num_steps"] = v
        else:
            m[k] = v
    (folder / "session.json").write_text(json.dumps(m))


def test_session_store_names_an_edited_metadata_field(tmp_path):
    from pxpo_lite.session_store import SessionError, SessionStore

    st = SessionStore(tmp_path / "s")
    st.start({"prompt": "p", "seed": 3, "config": {"num_steps": 4}}, {"image": np.full((3, 4, 4), 0.5, np.float32)})
    assert SessionStore(tmp_path / "s").load().meta["prompt"] == "p"
    for field, value, name in [("prompt", "q", "prompt"), ("num_steps", 8, "config"), ("seed", "3", "seed")]:
        _edit(tmp_path / "s", **{field: value})
        with pytest.raises(SessionError, match=rf"session.json.*the recorded field\(s\) \['{name}'\] were edited"):
            SessionStore(tmp_path / "s").load()
        _edit(tmp_path / "s", prompt="p", seed=3, num_steps=4)
    SessionStore(tmp_path / "s").load()  # restored: loads again


@pytest.mark.parametrize("field, value, name", [("prompt", world.all_prompts()[1], "prompt"), ("num_steps", 3, "config")])
def test_feedback_session_with_check_image_false_refuses_an_edited_manifest(tmp_path, field, value, name):
    from pxpo_lite.feedback import FeedbackSession, RefineConfig
    from pxpo_lite.session_store import SessionError

    pipe = _pipe()
    FeedbackSession(pipe, PROMPTS[0], seed=3, folder=tmp_path / "s", config=RefineConfig(num_steps=2, lora_rank=2))
    _edit(tmp_path / "s", **{field: value})
    with pytest.raises(SessionError, match=rf"\['{name}'\] were edited"):
        FeedbackSession.load(tmp_path / "s", pipe, check_image=False)


def test_string_seed_in_a_manifest_without_hashes_names_the_file(tmp_path):
    import json

    from pxpo_lite.feedback import FeedbackSession, RefineConfig
    from pxpo_lite.session_store import SessionError

    pipe = _pipe()
    FeedbackSession(pipe, PROMPTS[0], seed=3, folder=tmp_path / "s", config=RefineConfig(num_steps=2, lora_rank=2))
    m = json.loads((tmp_path / "s" / "session.json").read_text())
    del m["meta_sha256"]  # as written before the hashes were recorded
    m["seed"] = "3"
    (tmp_path / "s" / "session.json").write_text(json.dumps(m))
    with pytest.raises(SessionError, match=r"session.json' is incomplete or malformed.*'seed' must be an int.*seed='3'"):
        FeedbackSession.load(tmp_path / "s", pipe, check_image=False)
