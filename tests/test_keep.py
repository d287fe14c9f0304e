"""The per-pixel keep term (pxpo_lite.keep): the closed-form KL, its weights, μ_ref from the reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

import pxpo_lite
from pxpo_lite import keep, lora
from pxpo_lite.sampling import step_log_prob

PROMPTS = ["a portrait with long blue hair and a red shirt on a pink background",
           "a portrait with short black hair and a green shirt on a yellow background"]


@pytest.fixture(scope="module")
def traj():
    pipe = pxpo_lite.load_tiny_pipeline()
    return pxpo_lite.sample(pipe, PROMPTS, num_steps=6, generator=torch.Generator().manual_seed(3), progress=False)


@pytest.fixture()
def lora_pipe():
    pipe = pxpo_lite.load_tiny_pipeline()
    torch.manual_seed(0)
    lora.add_lora(pipe.unet, 4, target_modules=lora.TINY_TARGETS)
    return pipe


def _perturb(params, scale=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=g))


# ---------------------------------------------------------------------------- the KL
def test_gaussian_kl_matches_torch_distributions_per_element():
    g = torch.Generator().manual_seed(0)
    mu, mu_ref = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    for sigma in (0.07, 0.5, torch.tensor(1.3), torch.rand(2, 1, 1, 1, generator=g) + 0.1):
        s = torch.as_tensor(sigma).expand_as(mu)
        expected = kl_divergence(Normal(mu, s), Normal(mu_ref, s))
        torch.testing.assert_close(keep.gaussian_kl(mu, mu_ref, sigma), expected, rtol=1e-5, atol=1e-6)


def test_gaussian_kl_rejects_bad_inputs():
    mu = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        keep.gaussian_kl(mu, mu, 0.0)
    with pytest.raises(ValueError, match="sigma must be finite"):
        keep.gaussian_kl(mu, mu, float("nan"))
    with pytest.raises(ValueError, match="mu_ref has"):
        keep.gaussian_kl(mu, torch.zeros(1, 3, 2, 3), 1.0)
    with pytest.raises(TypeError, match="mu_ref must be"):
        keep.gaussian_kl(mu, np.zeros((1, 3, 2, 2)), 1.0)
    with pytest.raises(ValueError, match="does not broadcast"):
        keep.gaussian_kl(mu, mu, torch.ones(2, 1, 1, 1) + torch.ones(1, 5, 1, 1))


def test_keep_term_is_beta_times_weighted_mean_and_validates():
    g = torch.Generator().manual_seed(0)
    mu, mu_ref = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    w = torch.rand(2, 4, 4, generator=g)
    kt = keep.keep_term(mu, mu_ref, 0.3, w, beta=7.0)
    kl = (mu - mu_ref) ** 2 / (2 * 0.3**2)
    torch.testing.assert_close(kt.term, 7.0 * (w[:, None] * kl).mean())
    torch.testing.assert_close(kt.kl, kl)
    # w ≡ 1 (None) is the global KL; a (h,w) map broadcasts over the batch.
    torch.testing.assert_close(keep.keep_term(mu, mu_ref, 0.3, None, 2.0).term, 2.0 * kl.mean())
    torch.testing.assert_close(keep.keep_term(mu, mu_ref, 0.3, w[0], 1.0).term, (w[0][None, None] * kl).mean())
    # stats: KL where w = 0 and the weighted KL where w > 0
    w01 = torch.zeros(2, 4, 4)
    w01[:, :2] = 1
    st = keep.keep_term(mu, mu_ref, 0.3, w01, 1.0).stats
    assert st["kl_free"] == pytest.approx(float(kl[..., 2:, :].mean()), rel=1e-5)
    assert st["kl_kept"] == pytest.approx(float(kl[..., :2, :].mean()), rel=1e-5)
    assert st["keep_fraction"] == pytest.approx(0.5)
    assert keep.keep_term(mu, mu_ref, 0.3, w, beta=0).term.item() == 0.0
    for bad in (-1.0, float("inf"), True, "1"):
        with pytest.raises(ValueError, match="beta must be"):
            keep.keep_term(mu, mu_ref, 0.3, w, bad)
    with pytest.raises(ValueError, match=r"weights have shape \(2, 32, 32\).*keep_weights_from_heatmap"):
        keep.keep_term(mu, mu_ref, 0.3, torch.ones(2, 32, 32), 1.0)
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        keep.keep_term(mu, mu_ref, 0.3, -w, 1.0)
    with pytest.raises(ValueError, match=r"mu must be the step's mean \(B,C,h,w\)"):
        keep.keep_term(mu[0], mu_ref[0], 0.3, None, 1.0)


# ---------------------------------------------------------------------------- weights
def test_keep_weights_from_heatmap_values_on_disliked_liked_unpainted():
    heat = np.zeros((32, 32), np.float32)
    heat[:8] = -1.0       # disliked
    heat[8:16] = 1.0      # liked
    heat[16:18] = -0.5    # a soft dislike stroke
    heat[18:20] = 0.5     # a soft like stroke
    w = keep.keep_weights_from_heatmap(heat, (32, 32))
    assert w.shape == (1, 32, 32)
    assert (w[0, :8] == 0).all() and (w[0, 8:16] == 1).all() and (w[0, 20:] == 1).all()
    assert torch.allclose(w[0, 16:18], torch.tensor(0.5)) and (w[0, 18:20] == 1).all()
    w2 = keep.keep_weights_from_heatmap(torch.from_numpy(heat), (32, 32), keep_liked=False, outside=2.0)
    assert (w2[0, :8] == 0).all() and (w2[0, 8:16] == 0).all() and (w2[0, 20:] == 2).all()
    assert torch.allclose(w2[0, 16:20], torch.tensor(1.0))
    # batched maps keep their batch
    assert keep.keep_weights_from_heatmap(np.stack([heat, -heat]), (32, 32)).shape == (2, 32, 32)


def test_keep_weights_pool_an_sd_sized_map_to_the_latent_grid():
    heat = np.zeros((64, 64), np.float32)
    heat[:8, :8] = -1.0      # exactly latent cell (0, 0)
    heat[:8, 8:12] = -1.0    # half of latent cell (0, 1)
    heat[8:16, :8] = 1.0     # latent cell (1, 0), liked
    w = keep.keep_weights_from_heatmap(heat, (8, 8))
    assert w.shape == (1, 8, 8)
    assert w[0, 0, 0] == 0 and w[0, 0, 1] == pytest.approx(0.5) and w[0, 1, 0] == 1
    assert w[0].sum() == pytest.approx(64 - 1 - 0.5)
    assert keep.keep_weights_from_heatmap(heat, (8, 8), keep_liked=False)[0, 1, 0] == 0
    m = np.zeros((64, 64), np.float32)
    m[:16, :16] = 1
    wm = keep.keep_weights_from_mask(m, (8, 8))
    assert (wm[0, :2, :2] == 0).all() and wm[0].sum() == 60


def test_keep_weights_reject_bad_maps():
    with pytest.raises(ValueError, match=r"heatmap values must lie in \[-1, 1\]"):
        keep.keep_weights_from_heatmap(np.full((4, 4), 2.0), (4, 4))
    with pytest.raises(ValueError, match="NaN"):
        keep.keep_weights_from_heatmap(np.full((4, 4), np.nan), (4, 4))
    with pytest.raises(ValueError, match=r"\(H,W\) or \(B,H,W\)"):
        keep.keep_weights_from_heatmap(np.zeros(4), (4, 4))
    with pytest.raises(TypeError, match="heatmap must be"):
        keep.keep_weights_from_heatmap([[0.0]], (1, 1))
    with pytest.raises(ValueError, match="outside must be"):
        keep.keep_weights_from_heatmap(np.zeros((4, 4)), (4, 4), outside=-1)
    with pytest.raises(ValueError, match="aspect ratios differ"):
        keep.keep_weights_from_heatmap(np.zeros((4, 8)), (4, 4))
    with pytest.raises(ValueError, match=r"mask values must lie in \[0, 1\]"):
        keep.keep_weights_from_mask(-np.ones((4, 4)), (4, 4))
    with pytest.raises(TypeError, match="mask must be a NumPy array"):
        keep.keep_weights_from_mask("hair", (4, 4))


# ---------------------------------------------------------------------------- μ_θ, μ_ref
def test_kl_is_exactly_zero_at_theta_ref_with_fresh_adapters(lora_pipe, traj):
    lora_pipe.scheduler.set_timesteps(traj.num_steps)
    steps = pxpo_lite.ddim.trainable_step_indices(lora_pipe.scheduler, traj.timesteps, traj.eta)
    for i in (steps[0], steps[-1]):
        pol = keep.step_means(lora_pipe, traj, i)
        ref = keep.step_means(lora_pipe, traj, i, reference=True)
        assert torch.equal(pol.mean, ref.mean)  # B = 0: bit for bit
        kt = keep.keep_term(pol.mean, ref.mean, pol.sigma, None, 10.0)
        assert kt.term.item() == 0.0 and (kt.kl == 0).all()
        assert pol.mean.requires_grad and not ref.mean.requires_grad


def test_step_means_log_prob_is_step_log_prob(lora_pipe, traj):
    _perturb(lora.lora_parameters(lora_pipe.unet))
    for idx in (None, [1]):
        pol = keep.step_means(lora_pipe, traj, 2, idx)
        assert torch.equal(pol.log_prob, step_log_prob(lora_pipe, traj, 2, idx))
        assert pol.mean.shape == (1 if idx else 2, 3, 32, 32) and pol.sigma.ndim == 0 and float(pol.sigma) > 0


def test_one_rescoring_path_one_forward_and_one_gaussian_per_step(lora_pipe, traj, monkeypatch):
    """keep.steps_means and sampling.step_log_probs read one function (sampling.step_gaussians): one UNet
    forward per call for all its steps and one DDIM Gaussian per step (issue 20: keep computed it twice),
    with the numbers of before, bit for bit."""
    from pxpo_lite import ddim, sampling

    _perturb(lora.lora_parameters(lora_pipe.unet))
    steps, idx = [0, 2, 3], torch.tensor([1, 0])
    # before: one stacked forward, then per step ddim_step_logprob (the log-prob) and ddim_gaussian again (μ, σ_t)
    s = sampling.step_inputs(lora_pipe, traj, steps, idx)
    outs = sampling.stacked_model_output(lora_pipe, s.xs, s.ts, s.cond, s.uncond, s.guidance_scale)
    old = [(*ddim.ddim_gaussian(s.scheduler, o, int(t), x, eta=s.eta)[:2],
            ddim.ddim_step_logprob(s.scheduler, o, t, x, eta=s.eta, prev_sample=xp)[1])
           for o, t, x, xp in zip(outs, s.ts, s.xs, s.x_prevs)]
    gaussians, orig = [], ddim.ddim_gaussian
    for mod in (ddim, keep, sampling):  # wherever it is called from
        if hasattr(mod, "ddim_gaussian"):
            monkeypatch.setattr(mod, "ddim_gaussian", lambda *a, **k: gaussians.append(1) or orig(*a, **k))
    forwards = []
    hook = lora_pipe.unet.register_forward_hook(lambda *a: forwards.append(torch.is_grad_enabled()))
    try:
        pols = keep.steps_means(lora_pipe, traj, steps, idx)
        assert forwards == [True] and len(gaussians) == 3
        lps = sampling.step_log_probs(lora_pipe, traj, steps, idx)
        assert forwards == [True, True] and len(gaussians) == 6
        refs = keep.steps_means(lora_pipe, traj, steps, idx, reference=True)
        assert forwards == [True, True, False] and len(gaussians) == 9
    finally:
        hook.remove()
    for pol, lp, (mean, sigma, old_lp) in zip(pols, lps, old):
        assert torch.equal(pol.mean, mean) and torch.equal(pol.sigma, sigma)
        assert torch.equal(pol.log_prob, old_lp) and torch.equal(lp, old_lp) and pol.mean.requires_grad
    assert all(not r.mean.requires_grad and (r.mean - p.mean).abs().max() > 0 for r, p in zip(refs, pols))


def test_reference_is_the_base_model_and_adapter_state_is_restored(lora_pipe, traj):
    base = pxpo_lite.load_tiny_pipeline()
    params = lora.lora_parameters(lora_pipe.unet)
    _perturb(params)
    params[0].requires_grad_(False)  # a user-frozen adapter weight must stay frozen
    ref = keep.step_means(lora_pipe, traj, 1, reference=True)
    plain = keep.step_means(base, traj, 1)
    torch.testing.assert_close(ref.mean, plain.mean.detach(), rtol=0, atol=1e-6)
    pol = keep.step_means(lora_pipe, traj, 1)
    assert (pol.mean - ref.mean).abs().max() > 1e-4  # the adapters are back on
    assert [p.requires_grad for p in params] == [False] + [True] * (len(params) - 1)
    with pytest.raises(RuntimeError, match="boom"):
        with keep.adapters_disabled(lora_pipe.unet):
            raise RuntimeError("boom")
    torch.testing.assert_close(keep.step_means(lora_pipe, traj, 1).mean, pol.mean, rtol=0, atol=0)
    assert [p.requires_grad for p in params] == [False] + [True] * (len(params) - 1)


def test_gradient_flows_only_into_the_trained_adapters(lora_pipe, traj):
    params = lora.lora_parameters(lora_pipe.unet)
    _perturb(params)  # at θ = θ_ref the KL's gradient is exactly 0
    pol = keep.step_means(lora_pipe, traj, 2)
    ref = keep.step_means(lora_pipe, traj, 2, reference=True)
    keep.keep_term(pol.mean, ref.mean, pol.sigma, None, 1.0).term.backward()
    ids = {id(p) for p in params}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert all(p.grad is None for p in lora_pipe.unet.parameters() if id(p) not in ids)
    assert ref.mean.grad_fn is None


def test_full_unet_training_with_a_frozen_copy(traj):
    pipe = pxpo_lite.load_tiny_pipeline()
    ref_unet = keep.frozen_copy(pipe.unet)
    pipe.unet.requires_grad_(True)
    pol = keep.step_means(pipe, traj, 3)
    ref = keep.step_means(pipe, traj, 3, reference=True, reference_unet=ref_unet)
    assert torch.equal(pol.mean, ref.mean)
    _perturb(list(pipe.unet.parameters()), 0.01)
    pol = keep.step_means(pipe, traj, 3)
    w = keep.keep_weights_from_heatmap(np.where(np.arange(32)[:, None] < 16, -1.0, 0.0) * np.ones((32, 32)), (32, 32))
    kt = keep.keep_term(pol.mean, ref.mean, pol.sigma, w, 1.0)
    kt.term.backward()
    assert kt.term.item() > 0 and kt.stats["kl_free"] > 0
    assert all(p.grad is None for p in ref_unet.parameters())
    assert sum(p.grad.abs().sum() for p in pipe.unet.parameters() if p.grad is not None) > 0
    # the disliked rows (w = 0) contribute nothing: the term only sees the kept half
    torch.testing.assert_close(kt.term, (kt.kl[..., 16:, :]).sum() / kt.kl.numel())


def test_step_means_rejects_bad_arguments(traj):
    pipe = pxpo_lite.load_tiny_pipeline()
    with pytest.raises(ValueError, match="has no LoRA adapters.*frozen_copy"):
        keep.step_means(pipe, traj, 0, reference=True)
    with pytest.raises(ValueError, match="step_index must be an int in"):
        keep.step_means(pipe, traj, 6)
    with pytest.raises(ValueError, match="reference_unet is only used with reference=True"):
        keep.step_means(pipe, traj, 0, reference_unet=pipe.unet)
    with pytest.raises(TypeError, match="traj must be"):
        keep.step_means(pipe, {"latents": None}, 0)


# ---------------------------------------------------------------------------- the keep term in the Trainer
def _trainer(beta, keep_weights=None, use_lora=False, samples=2):
    import copy

    from pxpo_lite.models import build_tiny_pipeline
    from pxpo_lite.trainer import TrainConfig, Trainer

    torch.set_num_threads(1)
    cfg = TrainConfig(method="pxpo", num_steps=3, samples_per_epoch=samples, sample_batch_size=2, train_batch_size=2,
                      keep_beta=beta, use_lora=use_lora, learning_rate=1e-3, progress=False)
    return Trainer(copy.deepcopy(build_tiny_pipeline(0)), pxpo_lite.rewards.colour_reward_map, cfg,
                   prompts=PROMPTS, keep_weights=keep_weights)


def test_trainer_keep_term_first_step_is_the_plain_one_and_is_reported():
    plain, kept = _trainer(0.0), _trainer(10.0)
    assert plain.reference_unet is None and kept.reference_unet is not None  # full UNet: a frozen copy, made once
    r0, r1 = plain.train(1)[-1], kept.train(1)[-1]
    assert r1["optimizer_steps"] == 1 and "keep_kl" not in r0
    for a, b in zip(plain.params, kept.params):
        assert torch.equal(a, b)  # θ = θ_ref at the first step: bit for bit the update without the term
    assert r1["keep_kl"] == r1["keep_kl_kept"] == r1["keep_term"] == 0.0 and math.isnan(r1["keep_kl_free"])
    r2 = kept.train(1)[-1]
    assert r2["keep_kl"] > 0 and r2["keep_term"] == pytest.approx(10 * r2["keep_kl"], rel=1e-5)


def test_trainer_keep_weights_per_sample_and_lora_reference():
    def top_free(images, prompts):  # the top half of each image is free to change, the rest kept
        w = torch.ones(len(images), *images.shape[-2:])
        w[:, :16] = 0
        return w

    tr = _trainer(5.0, keep_weights=top_free, use_lora=True, samples=4)
    assert tr.reference_unet is None  # LoRA: the reference is the UNet with its adapters off
    tr.train(1)
    rec = tr.train(1)[-1]
    assert rec["keep_kl_free"] > 0 and rec["keep_kl_kept"] > 0
    assert rec["keep_kl"] == pytest.approx((rec["keep_kl_free"] + rec["keep_kl_kept"]) / 2, rel=1e-4)
    with pytest.raises(ValueError, match="keep_weights must be a function .*keep_beta > 0.*keep_beta=0.0"):
        _trainer(0.0, keep_weights=top_free)
    with pytest.raises(ValueError, match="keep_beta must be a finite number >= 0"):
        _trainer(-1.0)
    bad = _trainer(1.0, keep_weights=lambda im, p: torch.ones(len(im), 8, 8))
    with pytest.raises(ValueError, match=r"keep_weights returned \(2, 8, 8\).*\(2, 32, 32\)"):
        bad.train(1)


@pytest.mark.parametrize("value", [np.float32(0.5), np.float64(0.5), np.array(0.5), torch.tensor(0.5)])
def test_check_beta_and_outside_accept_numpy_numbers(value):
    """Issue 20: np.float32 / 0-d arrays were refused as 'must be a finite number'."""
    assert keep.check_beta(value) == 0.5 and type(keep.check_beta(value)) is float
    assert keep.check_beta(np.int64(2)) == 2.0 and keep.check_beta(torch.tensor([0.5])) == 0.5  # 1 element: as before
    w = keep.keep_weights_from_heatmap(np.zeros((4, 4), np.float32), (4, 4), outside=value, ramp=np.int64(2))
    assert torch.allclose(w, torch.full((1, 4, 4), 0.5))
    for bad in (True, np.bool_(True), "1", torch.tensor(1.0, device="meta"), np.array([1.0, 2.0])):
        with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
            keep.check_beta(bad)
