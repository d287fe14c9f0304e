"""The DDIM step with per-element log-probs, against the installed diffusers DDIMScheduler.step and
torch.distributions.Normal (issue 3, part 1)."""
import functools
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from pxpo_lite.ddim import SIGMA_MIN, ddim_step_logprob

torch.set_num_threads(1)

SHAPE = (2, 3, 8, 8)

CONFIGS = {
    "tiny-v-trailing": dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=False,
                            set_alpha_to_one=True, steps_offset=1, timestep_spacing="trailing"),
    "sd-eps-leading": dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                           set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon"),
    "eps-clip": dict(prediction_type="epsilon", clip_sample=True, clip_sample_range=0.5),
    "sample-pred": dict(prediction_type="sample", clip_sample=False, timestep_spacing="linspace"),
    "v-threshold": dict(prediction_type="v_prediction", thresholding=True, dynamic_thresholding_ratio=0.9,
                        sample_max_value=1.5, clip_sample=False),
}


def make(name, steps=10):
    s = DDIMScheduler(**CONFIGS[name])
    s.set_timesteps(steps)
    return s


def tensors(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g).to(dtype)
    out = (torch.randn(SHAPE, generator=g) * 1.5).to(dtype)
    noise = torch.randn(SHAPE, generator=g).to(dtype)
    return x, out, noise


def diffusers_gaussian(s, out, t, x, eta, **kw):
    """μ and σ from the installed DDIMScheduler.step alone: noise 0 gives μ, noise 1 gives μ + σ."""
    mu = s.step(out, t, x, eta=eta, variance_noise=torch.zeros_like(x), **kw).prev_sample
    sigma = s.step(out, t, x, eta=eta, variance_noise=torch.ones_like(x), **kw).prev_sample - mu
    return mu, sigma


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("eta", [1.0, 0.3])
def test_prev_sample_matches_diffusers_with_same_noise(name, eta):
    s = make(name)
    x, out, noise = tensors()
    for t in s.timesteps:
        ref = s.step(out, t, x, eta=eta, variance_noise=noise).prev_sample
        prev, lp = ddim_step_logprob(s, out, t, x, eta=eta, variance_noise=noise)
        assert prev.shape == x.shape and lp.shape == x.shape and lp.dtype == torch.float32
        torch.testing.assert_close(prev, ref, rtol=0, atol=1e-6)
        assert torch.isfinite(lp).all()


@pytest.mark.parametrize("name", ["tiny-v-trailing", "sd-eps-leading"])
def test_generator_draws_like_diffusers(name):
    s = make(name)
    x, out, _ = tensors(1)
    t = s.timesteps[3]
    ref = s.step(out, t, x, eta=1.0, generator=torch.Generator().manual_seed(7)).prev_sample
    prev, _ = ddim_step_logprob(s, out, t, x, eta=1.0, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(prev, ref, rtol=0, atol=1e-6)


def test_use_clipped_model_output_matches_diffusers():
    s = make("eps-clip")
    x, out, noise = tensors(2)
    t = s.timesteps[2]
    ref = s.step(out, t, x, eta=1.0, variance_noise=noise, use_clipped_model_output=True).prev_sample
    prev, _ = ddim_step_logprob(s, out, t, x, eta=1.0, variance_noise=noise, use_clipped_model_output=True)
    torch.testing.assert_close(prev, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_log_prob_equals_torch_normal_elementwise(name):
    s = make(name)
    x, out, noise = tensors(3)
    for t in s.timesteps:
        mu, sigma = diffusers_gaussian(s, out, t, x, 1.0)
        prev, lp = ddim_step_logprob(s, out, t, x, eta=1.0, variance_noise=noise)
        std = torch.where(sigma > 0, sigma, SIGMA_MIN)  # the documented floor: deterministic steps only
        ref = torch.distributions.Normal(mu.double(), std.double()).log_prob(prev.double())
        torch.testing.assert_close(lp.double(), ref, rtol=1e-5, atol=2e-4)


def test_scoring_a_given_transition_equals_sampling_log_prob():
    s = make("tiny-v-trailing")
    x, out, noise = tensors(4)
    t = s.timesteps[1]
    prev, lp = ddim_step_logprob(s, out, t, x, eta=1.0, variance_noise=noise)
    prev2, lp2 = ddim_step_logprob(s, out, t, x, eta=1.0, prev_sample=prev)
    assert prev2 is prev
    torch.testing.assert_close(lp2, lp, rtol=0, atol=0)


def test_last_step_sigma_zero_is_clamped_not_nan():
    s = make("tiny-v-trailing", steps=20)  # set_alpha_to_one: the last step has σ = 0 exactly
    x, out, noise = tensors(5)
    t = s.timesteps[-1]
    mu, sigma = diffusers_gaussian(s, out, t, x, 1.0)
    assert sigma.abs().max() == 0
    prev, lp = ddim_step_logprob(s, out, t, x, eta=1.0, variance_noise=noise)
    torch.testing.assert_close(prev, mu, rtol=0, atol=1e-6)  # deterministic, as diffusers
    assert torch.isfinite(lp).all()
    expected = -math.log(SIGMA_MIN) - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(lp, torch.full_like(lp, expected), rtol=0, atol=1e-3)
    # scoring a perturbed x_{t-1} stays finite and follows N(μ, SIGMA_MIN)
    _, lp2 = ddim_step_logprob(s, out, t, x, eta=1.0, prev_sample=mu + 0.05)
    assert torch.isfinite(lp2).all()
    torch.testing.assert_close(lp2, torch.distributions.Normal(mu, SIGMA_MIN).log_prob(mu + 0.05), rtol=1e-4, atol=1e-3)
    # and so do gradients
    out_g = out.clone().requires_grad_(True)
    _, lp3 = ddim_step_logprob(s, out_g, t, x, eta=1.0, prev_sample=mu + 0.05)
    lp3.sum().backward()
    assert torch.isfinite(out_g.grad).all()


def test_gradient_flows_to_model_output():
    s = make("sd-eps-leading")
    x, out, noise = tensors(6)
    out = out.requires_grad_(True)
    prev, lp = ddim_step_logprob(s, out, s.timesteps[4], x, eta=1.0, prev_sample=x * 0.9)
    lp.mean().backward()
    assert out.grad is not None and out.grad.abs().sum() > 0


def test_half_precision_inputs():
    s = make("sd-eps-leading")
    x, out, noise = tensors(7, torch.float16)
    prev, lp = ddim_step_logprob(s, out, s.timesteps[2], x, eta=1.0, variance_noise=noise)
    assert prev.dtype == torch.float16 and lp.dtype == torch.float32 and torch.isfinite(lp).all()
    ref = s.step(out.float(), s.timesteps[2], x.float(), eta=1.0, variance_noise=noise.float()).prev_sample
    torch.testing.assert_close(prev.float(), ref, rtol=0, atol=5e-3)


def test_timestep_accepts_int_and_tensor():
    s = make("tiny-v-trailing")
    x, out, noise = tensors(8)
    t = s.timesteps[2]
    a = ddim_step_logprob(s, out, int(t), x, eta=1.0, variance_noise=noise)[1]
    b = ddim_step_logprob(s, out, t, x, eta=1.0, variance_noise=noise)[1]
    c = ddim_step_logprob(s, out, np.int64(t), x, eta=1.0, variance_noise=noise)[1]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    with pytest.raises(TypeError, match="timestep"):
        ddim_step_logprob(s, out, "999", x, eta=1.0)


# --- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("eta", [0, 0.0, -1.0, float("nan"), float("inf"), 1.2, 2, True])
def test_eta_must_be_in_zero_one(eta):
    s = make("tiny-v-trailing")
    x, out, _ = tensors()
    with pytest.raises(ValueError, match="eta"):
        ddim_step_logprob(s, out, s.timesteps[0], x, eta=eta)


def test_model_output_shape_mismatch():
    s = make("tiny-v-trailing")
    x, out, _ = tensors()
    with pytest.raises(ValueError, match="model_output"):
        ddim_step_logprob(s, out[:1], s.timesteps[0], x, eta=1.0)
    with pytest.raises(ValueError, match="model_output"):
        ddim_step_logprob(s, torch.cat([out, out]), s.timesteps[0], x, eta=1.0)  # un-combined CFG halves


def test_prev_sample_shape_mismatch():
    s = make("tiny-v-trailing")
    x, out, _ = tensors()
    with pytest.raises(ValueError, match="prev_sample"):
        ddim_step_logprob(s, out, s.timesteps[0], x, eta=1.0, prev_sample=x[..., :4])


def test_timestep_not_in_schedule():
    s = make("tiny-v-trailing")
    x, out, _ = tensors()
    bad = int(s.timesteps[0]) - 1
    with pytest.raises(ValueError, match=f"timestep {bad} is not in the scheduler"):
        ddim_step_logprob(s, out, bad, x, eta=1.0)
    with pytest.raises(ValueError, match="timestep"):
        ddim_step_logprob(s, out, torch.tensor([999, 899]), x, eta=1.0)


def test_non_ddim_scheduler():
    s = DDPMScheduler()
    s.set_timesteps(10)
    x, out, _ = tensors()
    with pytest.raises(TypeError, match="DDIMScheduler"):
        ddim_step_logprob(s, out, s.timesteps[0], x, eta=1.0)


def test_scheduler_without_set_timesteps():
    s = DDIMScheduler(**CONFIGS["tiny-v-trailing"])
    x, out, _ = tensors()
    with pytest.raises(ValueError, match="set_timesteps"):
        ddim_step_logprob(s, out, 999, x, eta=1.0)


def test_generator_and_variance_noise_exclusive():
    s = make("tiny-v-trailing")
    x, out, noise = tensors()
    with pytest.raises(ValueError, match="generator or variance_noise"):
        ddim_step_logprob(s, out, s.timesteps[0], x, eta=1.0, variance_noise=noise, generator=torch.Generator())


def test_trainable_step_indices_are_the_steps_with_sigma_above_zero():
    from pxpo_lite.ddim import step_sigmas, trainable_step_indices

    tiny = make("tiny-v-trailing", 10)  # set_alpha_to_one: the last step has σ = 0
    idx = trainable_step_indices(tiny, tiny.timesteps, 1.0)
    sig = step_sigmas(tiny, tiny.timesteps, 1.0)
    assert sig[-1] == 0.0 and idx == list(range(9))
    sd = make("sd-eps-leading", 10)  # no step reaches ᾱ = 1: every step is stochastic, even tiny σ
    assert trainable_step_indices(sd, sd.timesteps, 0.1) == list(range(10))
    with pytest.raises(ValueError, match="eta"):
        trainable_step_indices(sd, sd.timesteps, 0.0)


# --- defects of issue 9 ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _shipped_config():
    from pxpo_lite.models import load_tiny_pipeline

    return load_tiny_pipeline().scheduler.config


def _shipped_scheduler(steps):
    """The shipped tiny model's scheduler after set_timesteps(steps)."""
    s = DDIMScheduler.from_config(_shipped_config())
    s.set_timesteps(steps)
    return s


def test_every_num_steps_1_to_50_gives_finite_steps_with_the_shipped_schedule():
    # 1 − ᾱ_{t−1} − σ² rounds to −6e-8 at 5 steps (η = 1): it used to be square-rooted into NaN
    x, out, noise = tensors(11)
    for steps in range(1, 51):
        s = _shipped_scheduler(steps)
        for t in s.timesteps:
            prev, lp = ddim_step_logprob(s, out, t, x, eta=1.0, variance_noise=noise)
            assert torch.isfinite(prev).all() and torch.isfinite(lp).all(), (steps, int(t))


def test_shipped_model_samples_finite_at_5_steps():
    import pxpo_lite
    from pxpo_lite.sampling import sample

    pipe = pxpo_lite.load_tiny_pipeline()
    tr = sample(pipe, ["a portrait"], num_steps=5, eta=1.0, generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.isfinite(tr.images).all() and torch.isfinite(tr.log_probs).all()


def _sigma64(s, t, eta):
    """σ_t of DDIM eq. 16 in float64, from the scheduler's ᾱ table alone."""
    acp = s.alphas_cumprod.double()
    prev = int(t) - s.config.num_train_timesteps // s.num_inference_steps
    a_t = acp[int(t)]
    a_prev = acp[prev] if prev >= 0 else s.final_alpha_cumprod.double()
    return float(eta * (((1 - a_prev) / (1 - a_t)) * (1 - a_t / a_prev)).clamp(min=0).sqrt())


@pytest.mark.parametrize("config, steps, eta", [
    (CONFIGS["sd-eps-leading"], 50, 0.3),   # SD's schedule: the last step has σ ≈ 0.006
    (CONFIGS["sd-eps-leading"], 50, 0.1),   # three steps below 1e-2
    ({}, 10, 0.5),                          # diffusers' default DDIMScheduler, 10 steps
])
def test_small_real_sigma_gives_the_exact_gaussian_log_prob(config, steps, eta):
    s = DDIMScheduler(**config)
    s.set_timesteps(steps)
    x, out, noise = tensors(12)
    small = 0
    for t in s.timesteps:
        sigma = _sigma64(s, t, eta)
        if sigma == 0:
            continue  # deterministic step: floored (tested above)
        small += sigma < SIGMA_MIN
        mu, _ = diffusers_gaussian(s, out, t, x, eta)
        prev, lp = ddim_step_logprob(s, out, t, x, eta=eta, variance_noise=noise)
        ref = torch.distributions.Normal(mu.double(), sigma).log_prob(prev.double())
        torch.testing.assert_close(lp.double(), ref, rtol=1e-4, atol=5e-3)
    assert small >= 1  # the case that used to be floored to SIGMA_MIN


def test_integer_sample_is_rejected():
    s = make("tiny-v-trailing")
    x, out, _ = tensors()
    with pytest.raises(TypeError, match="sample must be a floating-point tensor"):
        ddim_step_logprob(s, out, s.timesteps[0], (x * 10).long(), eta=1.0)
    with pytest.raises(TypeError, match="model_output must be a floating-point tensor"):
        ddim_step_logprob(s, out.long(), s.timesteps[0], x, eta=1.0)
    with pytest.raises(TypeError, match="prev_sample must be a floating-point tensor"):
        ddim_step_logprob(s, out, s.timesteps[0], x, eta=1.0, prev_sample=x.long())
