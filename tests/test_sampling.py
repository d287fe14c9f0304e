"""Trajectories: sampling with per-element log-probs, re-scoring, gradients, seeds, and the same code
on a tiny Stable Diffusion pipeline (issue 3, part 2)."""
import pytest
import torch

import pxpo_lite
from pxpo_lite import world
from pxpo_lite.sampling import Trajectory, rescore, sample, step_log_prob

torch.set_num_threads(1)

PROMPTS = world.all_prompts()[:3]
STEPS = 4


def g(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pipe():
    return pxpo_lite.build_tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def sd_pipe():
    from pxpo_lite.sd import build_tiny_sd_pipeline

    return build_tiny_sd_pipeline(seed=0)


@pytest.fixture(scope="module")
def traj(pipe):
    return sample(pipe, PROMPTS, num_steps=STEPS, eta=1.0, generator=g(0), progress=False)


def test_public_names():
    for name in ["ddim_step_logprob", "Trajectory", "sample", "step_log_prob", "rescore", "pixelwise"]:
        assert hasattr(pxpo_lite, name)


def test_trajectory_shapes(pipe, traj):
    B, T = len(PROMPTS), STEPS
    assert len(traj) == B and traj.num_steps == T
    assert traj.images.shape == (B, 3, 32, 32) and traj.images.dtype == torch.float32
    assert 0 <= traj.images.min() and traj.images.max() <= 1
    assert traj.latents.shape == (B, T + 1, 3, 32, 32)
    assert traj.log_probs.shape == (B, T, 3, 32, 32) and traj.log_probs.dtype == torch.float32
    assert not traj.log_probs.requires_grad and torch.isfinite(traj.log_probs).all()
    assert traj.timesteps.shape == (T,)
    assert traj.prompts == PROMPTS and traj.prompt_embeds.shape[0] == B
    assert traj.negative_prompt_embeds is None and traj.guidance_scale == 1.0 and traj.eta == 1.0
    torch.testing.assert_close(traj.images, pipe.decode_latents_to_images(traj.latents[:, -1]))


def test_same_seed_same_trajectory_and_matches_plain_pipeline(pipe, traj):
    again = sample(pipe, PROMPTS, num_steps=STEPS, eta=1.0, generator=g(0), progress=False)
    assert torch.equal(again.latents, traj.latents) and torch.equal(again.log_probs, traj.log_probs)
    other = sample(pipe, PROMPTS, num_steps=STEPS, eta=1.0, generator=g(1), progress=False)
    assert not torch.equal(other.latents, traj.latents)
    # the noise is drawn exactly like the pipeline's own DDIM loop (diffusers scheduler.step)
    ref = pipe(PROMPTS, num_inference_steps=STEPS, eta=1.0, generator=g(0)).images
    torch.testing.assert_close(traj.images, ref, rtol=0, atol=1e-6)


def test_rescore_reproduces_sampling_log_probs(pipe, traj):
    lps = rescore(pipe, traj)
    assert lps.shape == traj.log_probs.shape and not lps.requires_grad
    assert (lps - traj.log_probs).abs().max() <= 1e-5
    split = rescore(pipe, traj, batch_size=2)  # other batch composition: equal up to float rounding
    assert (split - traj.log_probs).abs().max() <= 1e-4


def test_step_log_prob_has_gradients_to_unet(pipe, traj):
    pipe.unet.zero_grad(set_to_none=True)
    lp = step_log_prob(pipe, traj, 1)
    assert lp.shape == (len(PROMPTS), 3, 32, 32) and lp.requires_grad
    assert (lp.detach() - traj.log_probs[:, 1]).abs().max() <= 1e-5
    lp.mean().backward()
    grads = [p.grad for p in pipe.unet.parameters()]
    assert all(gr is not None for gr in grads) and sum(gr.abs().sum() for gr in grads) > 0
    pipe.unet.zero_grad(set_to_none=True)
    sub = step_log_prob(pipe, traj, -1, sample_idx=[2, 0])
    assert sub.shape == (2, 3, 32, 32)
    assert (sub.detach() - traj.log_probs[[2, 0], -1]).abs().max() <= 1e-4


def test_step_log_prob_gradients_reach_lora_adapters():
    from peft import LoraConfig

    p = pxpo_lite.build_tiny_pipeline(seed=1)
    p.unet.requires_grad_(False)
    p.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    tr = sample(p, PROMPTS[:2], num_steps=2, generator=g(3), progress=False)
    step_log_prob(p, tr, 0).mean().backward()
    lora = [(n, q) for n, q in p.unet.named_parameters() if "lora" in n]
    assert lora and all(q.grad is not None for _, q in lora)
    assert sum(q.grad.abs().sum() for _, q in lora) > 0
    assert all(q.grad is None for n, q in p.unet.named_parameters() if "lora" not in n)


def test_classifier_free_guidance(pipe):
    tr = sample(pipe, PROMPTS[:2], num_steps=3, guidance_scale=3.0, generator=g(2), progress=False)
    assert tr.guidance_scale == 3.0 and tr.negative_prompt_embeds is not None
    assert tr.negative_prompt_embeds.shape == tr.prompt_embeds.shape
    ref = pipe(PROMPTS[:2], num_inference_steps=3, guidance_scale=3.0, eta=1.0, generator=g(2)).images
    torch.testing.assert_close(tr.images, ref, rtol=0, atol=1e-6)
    assert (rescore(pipe, tr) - tr.log_probs).abs().max() <= 1e-5


def test_select_to_and_cat(traj):
    sub = traj.select([2, 0])
    assert len(sub) == 2 and sub.prompts == [PROMPTS[2], PROMPTS[0]]
    assert torch.equal(sub.latents[0], traj.latents[2]) and torch.equal(sub.log_probs[1], traj.log_probs[0])
    assert len(traj.select(slice(1, None))) == 2 and len(traj.select(torch.tensor([1]))) == 1
    assert len(traj.select(torch.tensor([True, False, True]))) == 2 and len(traj.select(1)) == 1
    assert torch.equal(traj.to("cpu").latents, traj.latents)
    both = Trajectory.cat([traj.select([0]), traj.select([1, 2])])
    assert torch.equal(both.latents, traj.latents) and both.prompts == traj.prompts
    with pytest.raises(IndexError):
        traj.select([5])


def test_progress_bar_switch(pipe, capsys):
    sample(pipe, PROMPTS[:1], num_steps=2, generator=g(), progress=True)
    assert "sampling" in capsys.readouterr().err
    sample(pipe, PROMPTS[:1], num_steps=2, generator=g(), progress=False)
    assert capsys.readouterr().err == ""


# --- the same code on Stable Diffusion latents -------------------------------------------------
def test_tiny_stable_diffusion_pipeline(sd_pipe):
    from diffusers import StableDiffusionPipeline

    assert isinstance(sd_pipe, StableDiffusionPipeline) and sd_pipe.vae_scale_factor == 8
    prompts = ["a portrait with red hair", "a bald portrait"]
    tr = sample(sd_pipe, prompts, num_steps=3, generator=g(0), progress=False)
    assert tr.guidance_scale == 5.0 and tr.negative_prompt_embeds is not None  # DDPO's default for SD
    assert tr.latents.shape == (2, 4, 4, 8, 8) and tr.log_probs.shape == (2, 3, 4, 8, 8)
    assert tr.images.shape == (2, 3, 64, 64) and 0 <= tr.images.min() and tr.images.max() <= 1
    ref = sd_pipe(prompts, num_inference_steps=3, guidance_scale=5.0, eta=1.0, generator=g(0), output_type="pt").images
    torch.testing.assert_close(tr.images, ref, rtol=0, atol=1e-5)
    assert (rescore(sd_pipe, tr) - tr.log_probs).abs().max() <= 1e-5
    lp = step_log_prob(sd_pipe, tr, 2)
    lp.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in sd_pipe.unet.parameters())
    sd_pipe.unet.zero_grad(set_to_none=True)
    tr1 = sample(sd_pipe, prompts, num_steps=2, guidance_scale=1.0, generator=g(0), progress=False)
    assert tr1.negative_prompt_embeds is None


def test_rescoring_resets_a_changed_scheduler(pipe, traj):
    pipe.scheduler.set_timesteps(7)
    assert (rescore(pipe, traj) - traj.log_probs).abs().max() <= 1e-5


def test_load_sd_pipeline_offline_error():
    from pxpo_lite.sd import load_sd_pipeline

    with pytest.raises(RuntimeError, match="could not load the Stable Diffusion pipeline"):
        load_sd_pipeline("pxpo-lite/no-such-model", device="cpu", dtype=torch.float32, local_files_only=True)


# --- bad input ---------------------------------------------------------------------------------
def test_bad_inputs(pipe, traj):
    with pytest.raises(ValueError, match="eta"):
        sample(pipe, PROMPTS, eta=0.0, progress=False)
    with pytest.raises(ValueError, match="num_steps"):
        sample(pipe, PROMPTS, num_steps=0, progress=False)
    with pytest.raises(ValueError, match="guidance_scale"):
        sample(pipe, PROMPTS, guidance_scale=-1.0, progress=False)
    with pytest.raises(ValueError, match="latents"):
        sample(pipe, PROMPTS, latents=torch.zeros(1, 3, 32, 32), progress=False)
    with pytest.raises(ValueError, match="step_index"):
        step_log_prob(pipe, traj, STEPS)
    with pytest.raises(ValueError, match="prompt"):
        sample(pipe, [], progress=False)


def test_non_ddim_scheduler_is_rejected():
    from diffusers import EulerDiscreteScheduler

    p = pxpo_lite.build_tiny_pipeline(seed=0)
    p.scheduler = EulerDiscreteScheduler.from_config(p.scheduler.config)
    with pytest.raises(TypeError, match="DDIMScheduler"):
        sample(p, PROMPTS[:1], progress=False)


def test_batch_size_equals_sampling_chunk_by_chunk(pipe):
    prompts = world.all_prompts()[:5]
    whole = sample(pipe, prompts, num_steps=3, eta=1.0, generator=g(3), progress=False, batch_size=2)
    gen = g(3)
    parts = [sample(pipe, prompts[s : s + 2], num_steps=3, eta=1.0, generator=gen, progress=False) for s in (0, 2, 4)]
    ref = Trajectory.cat(parts)
    assert len(whole) == 5 and whole.prompts == prompts
    for name in ("images", "latents", "log_probs", "prompt_embeds"):
        assert torch.equal(getattr(whole, name), getattr(ref, name)), name
    # a batch_size >= B is one chunk: identical to no batch_size
    one = sample(pipe, prompts, num_steps=3, eta=1.0, generator=g(3), progress=False, batch_size=5)
    assert torch.equal(one.latents, sample(pipe, prompts, num_steps=3, eta=1.0, generator=g(3), progress=False).latents)
    # given x_T is split the same way
    x_T = torch.randn(5, 3, 32, 32, generator=g(4))
    a = sample(pipe, prompts, num_steps=2, eta=1.0, generator=g(5), latents=x_T, progress=False, batch_size=3)
    assert torch.equal(a.latents[:, 0], x_T)


@pytest.mark.parametrize("bs", [0, -1, 1.5, True, "2"])
def test_batch_size_must_be_positive_int(pipe, bs):
    with pytest.raises(ValueError, match="batch_size"):
        sample(pipe, PROMPTS, num_steps=2, progress=False, batch_size=bs)


# --- defects of issue 9 ---------------------------------------------------------------------------
@pytest.mark.parametrize("w", [float("inf"), float("nan"), -0.5, True, "3"])
def test_guidance_scale_must_be_finite_and_non_negative(pipe, w):
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
        sample(pipe, PROMPTS[:1], num_steps=2, guidance_scale=w, progress=False)


def test_guidance_below_one_is_applied_and_recorded(pipe):
    # w = 0 is the unconditional model: the same as sampling the empty prompt without guidance
    tr0 = sample(pipe, PROMPTS[:2], num_steps=3, guidance_scale=0.0, generator=g(6), progress=False)
    assert tr0.guidance_scale == 0.0 and tr0.negative_prompt_embeds is not None
    empty = sample(pipe, ["", ""], num_steps=3, guidance_scale=1.0, generator=g(6), progress=False)
    torch.testing.assert_close(tr0.latents, empty.latents, rtol=0, atol=1e-5)
    # 0 < w < 1 lies between the unconditional and the conditional sample, and differs from both
    tr_half = sample(pipe, PROMPTS[:2], num_steps=3, guidance_scale=0.5, generator=g(6), progress=False)
    tr1 = sample(pipe, PROMPTS[:2], num_steps=3, guidance_scale=1.0, generator=g(6), progress=False)
    assert tr_half.guidance_scale == 0.5 and tr1.negative_prompt_embeds is None
    assert not torch.allclose(tr_half.latents, tr1.latents) and not torch.allclose(tr_half.latents, tr0.latents)
    # re-scoring uses the recorded w: it reproduces the sampling-time log-probs
    assert (rescore(pipe, tr_half) - tr_half.log_probs).abs().max() <= 1e-5


@pytest.mark.parametrize("shape, dtype, exc, message", [
    ((3, 3, 16, 16), torch.float32, ValueError, r"latents must be x_T of shape \(3, 3, 32, 32\)"),  # used to give 16×16 images
    ((3, 4, 32, 32), torch.float32, ValueError, r"latents must be x_T of shape \(3, 3, 32, 32\)"),  # wrong channels
    ((3, 3, 32), torch.float32, ValueError, r"latents must be x_T of shape \(3, 3, 32, 32\)"),      # not 4-d
    ((3, 3, 32, 32), torch.int64, TypeError, r"latents must be a floating-point tensor .*int64"),  # integer x_T
])
def test_latents_must_match_the_unet_sample_shape(pipe, shape, dtype, exc, message):
    with pytest.raises(exc, match=message):
        sample(pipe, PROMPTS, num_steps=2, latents=torch.zeros(shape, dtype=dtype), progress=False)


def test_numpy_integers_are_ints_for_num_steps_and_batch_size(pipe):
    """Issue 20: np.int64 (e.g. from a NumPy sweep) was refused as 'must be an int >= 1, got 4'."""
    import numpy as np

    a = sample(pipe, PROMPTS[:2], num_steps=np.int64(2), batch_size=np.int32(1), generator=g(0), progress=False)
    b = sample(pipe, PROMPTS[:2], num_steps=2, batch_size=1, generator=g(0), progress=False)
    assert a.num_steps == 2 and type(a.num_steps) is int and torch.equal(a.images, b.images)
    for bad in (True, np.float64(2.0)):
        with pytest.raises(ValueError, match="num_steps must be an int >= 1"):
            sample(pipe, PROMPTS[:1], num_steps=bad, progress=False)


def test_one_call_and_chunked_calls_draw_the_same_noise_values(sd_pipe):
    """The trainer's automatic layout (the whole epoch in one call) and a capped one (several calls) draw
    the SAME standard-normal values from the same generator, assigned to other samples and steps: x_T of
    every sample and every step's z. So the two layouts sample from the same distribution (issue 22).
    (Tiny SD: its leading schedule has σ_t > 0 at every step, so every draw can be read back.)"""
    from pxpo_lite.sampling import step_gaussians

    pipe = sd_pipe

    prompts = world.all_prompts()[:6]

    def draws(batch_size):
        tr = sample(pipe, prompts, num_steps=3, eta=1.0, guidance_scale=5.0, generator=g(7), progress=False, batch_size=batch_size)
        gs = step_gaussians(pipe, tr, range(tr.num_steps))
        assert all(float(s.sigma) > 0 for s in gs)  # every step drew its noise
        with torch.no_grad():
            z = [(tr.latents[:, i + 1] - s.mean) / s.sigma for i, s in enumerate(gs)]
        return torch.cat([tr.latents[:, 0].flatten() / pipe.scheduler.init_noise_sigma, *(x.flatten() for x in z)])

    one, chunked = draws(None), draws(2)
    assert not torch.allclose(one, chunked)  # other assignments of the draws ...
    assert torch.allclose(one.sort().values, chunked.sort().values, atol=1e-3)  # ... of the same values
    assert abs(float(one.mean())) < 0.02 and abs(float(one.std()) - 1) < 0.02
