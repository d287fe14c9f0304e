"""pxpo_lite.flow: Flow-GRPO's SDE step, the flow sampler, group advantages and GRPO through the one update path."""
import copy
import functools
import math
import warnings

import pytest
import torch

from pxpo_lite import flow, lora, update
from pxpo_lite.advantages import NoSignalWarning, group_advantages, group_pixel_advantages
from pxpo_lite.flow_models import build_tiny_flow_pipeline
from pxpo_lite.flow_sampling import FlowTrajectory, sample_flow, step_log_probs, steps_means
from pxpo_lite.keep import keep_term
from pxpo_lite.losses import ddpo_loss
from pxpo_lite.trainer import TrainConfig

PROMPTS = [
    "a bald portrait with a red shirt on a blue background",
    "a portrait with long blue hair and a white shirt on a grey background",
]


def _scheduler(n=10, **kw):
    from diffusers import FlowMatchEulerDiscreteScheduler

    s = FlowMatchEulerDiscreteScheduler(**{"num_train_timesteps": 1000, "shift": 1.0, **kw})
    s.set_timesteps(n)
    return s


@functools.lru_cache(maxsize=None)
def _base():
    return build_tiny_flow_pipeline(0)


def _pipe():
    pipe = copy.deepcopy(_base())
    pipe.unet.eval()
    return pipe


def _xv(seed=0, shape=(2, 3, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def _by_hand(s, i, x, v, a):
    """The paper's step, written out: σ_t = a√(t/(1−t)) (1 − t at sigmas[1] when t = 1), μ, std = σ_t√(−dt)."""
    t, t_next = float(s.sigmas[i]), float(s.sigmas[i + 1])
    dt = t_next - t
    sigma = a * math.sqrt(t / (1 - (float(s.sigmas[1]) if t == 1.0 else t)))
    return x + (v + sigma**2 / (2 * t) * (x + (1 - t) * v)) * dt, sigma * math.sqrt(-dt)


def _flow_grpo_per_image(s, i, x, v, a, x_next):
    """flow_grpo's per-image form (sd3_sde_with_logprob.py, re-derived): mean as x·(1+σ²dt/(2t)) + v·(1+σ²(1−t)/(2t))·dt,
    the Gaussian log-density with std σ√(−dt), averaged over every non-batch dimension."""
    t, dt = s.sigmas[i], s.sigmas[i + 1] - s.sigmas[i]
    sig = torch.sqrt(t / (1 - torch.where(t == 1, s.sigmas[1], t))) * a
    mean = x * (1 + sig**2 / (2 * t) * dt) + v * (1 + sig**2 * (1 - t) / (2 * t)) * dt
    std = sig * torch.sqrt(-dt)
    lp = -((x_next - mean) ** 2) / (2 * std**2) - torch.log(std) - math.log(math.sqrt(2 * math.pi))
    return lp.mean(dim=tuple(range(1, lp.ndim)))


# --------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("i", [0, 1, 5, 9])
def test_log_prob_equals_torch_normal_per_element(i):
    s = _scheduler(10)
    x, v, x_next = _xv(i)
    prev, lp = flow.sde_step_logprob(s, v, s.timesteps[i], x, 0.7, prev_sample=x_next)
    mean, std = _by_hand(s, i, x.double(), v.double(), 0.7)
    assert prev is x_next and lp.shape == x.shape and lp.dtype == torch.float32
    want = torch.distributions.Normal(mean, std).log_prob(x_next.double())
    torch.testing.assert_close(lp.double(), want, rtol=1e-5, atol=1e-4)
    m2, s2 = flow.sde_gaussian(s, v, s.timesteps[i], x, 0.7)
    torch.testing.assert_close(m2.double(), mean, rtol=1e-5, atol=1e-5)
    assert abs(float(s2) - std) < 1e-6 * max(1, std)


@pytest.mark.parametrize("n", [1, 3, 10])
def test_batch_mean_equals_flow_grpos_per_image_log_prob(n):
    s = _scheduler(n)
    for i in range(n):
        x, v, _ = _xv(10 + i)
        prev, lp = flow.sde_step_logprob(s, v, s.timesteps[i], x, 0.7, generator=torch.Generator().manual_seed(i))
        torch.testing.assert_close(flow.per_image_log_prob(lp), _flow_grpo_per_image(s, i, x, v, 0.7, prev), rtol=1e-5, atol=1e-5)
        # the draw is x_next = μ + std·z with the generator's first randn_tensor, as flow_grpo and diffusers draw it
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        mean, std = flow.sde_gaussian(s, v, s.timesteps[i], x, 0.7)
        torch.testing.assert_close(prev, mean + std * z)


@pytest.mark.parametrize("n", [1, 2, 10])
def test_noise_level_to_zero_gives_the_schedulers_ode_step(n):
    s = _scheduler(n)
    for i in range(n):
        x, v, _ = _xv(20 + i)
        mean, std = flow.sde_gaussian(s, v, s.timesteps[i], x, 1e-7)
        ode = _scheduler(n)  # a fresh scheduler: diffusers' step keeps an internal step index
        ode.set_begin_index(i)
        torch.testing.assert_close(mean, ode.step(v, ode.timesteps[i], x).prev_sample, rtol=1e-5, atol=1e-5)
        assert 0 < float(std) < 1e-6


@pytest.mark.parametrize("n,shift", [(1, 1.0), (2, 1.0), (10, 1.0), (50, 1.0), (10, 3.0)])
def test_every_step_of_a_schedule_is_finite_including_t1_and_the_last(n, shift):
    s = _scheduler(n, shift=shift)
    assert float(s.sigmas[0]) == 1.0  # the first step starts at t = 1, where σ_t = a√(t/(1−t)) diverges
    stds = flow.step_stds(s, 0.7)
    assert len(stds) == n and all(math.isfinite(v) and v > 0 for v in stds)
    x, v, _ = _xv(n)
    for i, t in enumerate(s.timesteps):
        prev, lp = flow.sde_step_logprob(s, v, t, x, 0.7, generator=torch.Generator().manual_seed(i))
        assert torch.isfinite(prev).all() and torch.isfinite(lp).all(), (n, i)
    if n == 1:  # sigmas = [1, 0]: flow_grpo's sigma_max = sigmas[1] = 0 gives σ_1 = a, std = a
        assert abs(stds[0] - 0.7) < 1e-6


def test_reproducible_with_a_generator():
    s = _scheduler(10)
    x, v, _ = _xv(3)
    a = flow.sde_step_logprob(s, v, s.timesteps[2], x, generator=torch.Generator().manual_seed(5))
    b = flow.sde_step_logprob(s, v, s.timesteps[2], x, generator=torch.Generator().manual_seed(5))
    c = flow.sde_step_logprob(s, v, s.timesteps[2], x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_bad_inputs_get_clear_errors():
    from diffusers import DDIMScheduler

    s = _scheduler(10)
    x, v, _ = _xv(0)
    ddim = DDIMScheduler()
    ddim.set_timesteps(10)
    with pytest.raises(ValueError, match="FlowMatchEulerDiscreteScheduler"):
        flow.sde_step_logprob(ddim, v, ddim.timesteps[0], x)
    for bad in (0, 0.0, -0.5, float("nan"), float("inf"), True, "0.7", None):
        with pytest.raises(ValueError, match="noise_level must be a finite number > 0"):
            flow.sde_step_logprob(s, v, s.timesteps[0], x, bad)
    with pytest.raises(ValueError, match="not in the scheduler's schedule"):
        flow.sde_step_logprob(s, v, 999.5, x)
    with pytest.raises(ValueError, match="not the index"):
        flow.sde_step_logprob(s, v, 3, x)
    with pytest.raises(ValueError, match="shape"):
        flow.sde_step_logprob(s, v[:, :2], s.timesteps[0], x)
    with pytest.raises(ValueError, match="shape"):
        flow.sde_step_logprob(s, v, s.timesteps[0], x, prev_sample=x[:1])
    nan = v.clone()
    nan[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"model_output has NaN/inf for sample\(s\) \[1\]"):
        flow.sde_step_logprob(s, nan, s.timesteps[0], x)
    with pytest.raises(ValueError, match="set_timesteps"):
        from diffusers import FlowMatchEulerDiscreteScheduler

        flow.sde_step_logprob(FlowMatchEulerDiscreteScheduler(), v, 1000.0, x)
    with pytest.raises(ValueError, match="invert_sigmas"):
        flow.sde_step_logprob(_scheduler(4, invert_sigmas=True), v, 1000.0, x)


# --------------------------------------------------------------------------------------------
# The sampler and the re-scoring
# --------------------------------------------------------------------------------------------
def test_sample_flow_records_a_trajectory_that_rescoring_reproduces():
    pipe = _pipe()
    tr = sample_flow(pipe, PROMPTS, num_steps=3, generator=torch.Generator().manual_seed(0), progress=False)
    assert isinstance(tr, FlowTrajectory) and tr.noise_level == 0.7 and len(tr) == 2
    assert tr.latents.shape == (2, 4, 3, 32, 32) and tr.log_probs.shape == (2, 3, 3, 32, 32)
    assert tr.images.shape == (2, 3, 32, 32) and torch.isfinite(tr.log_probs).all()
    torch.testing.assert_close(flow.rescore(pipe, tr), tr.log_probs, rtol=0, atol=1e-5)
    # two steps scored in one UNet forward equal the stored ones; a sub-batch too
    lps = step_log_probs(pipe, tr, [0, 2], torch.tensor([1]))
    torch.testing.assert_close(lps[1], tr.log_probs[1:, 2], rtol=0, atol=1e-5)
    again = sample_flow(pipe, PROMPTS, num_steps=3, generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.equal(again.latents, tr.latents)
    chunked = sample_flow(pipe, PROMPTS, num_steps=3, generator=torch.Generator().manual_seed(0), progress=False, batch_size=1)
    assert isinstance(chunked, FlowTrajectory) and chunked.latents.shape == tr.latents.shape


def test_tiny_noise_level_follows_the_pipelines_ode():
    pipe = _pipe()
    x1 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    tr = sample_flow(pipe, PROMPTS, num_steps=4, noise_level=1e-6, latents=x1, progress=False,
                     generator=torch.Generator().manual_seed(0))
    ode = pipe(PROMPTS, num_inference_steps=4, latents=x1).images
    torch.testing.assert_close(tr.images, ode, rtol=0, atol=1e-4)


def test_sample_flow_refuses_a_ddim_pipeline():
    from pxpo_lite.models import build_tiny_pipeline

    with pytest.raises(ValueError, match="flow-matching scheduler"):
        sample_flow(build_tiny_pipeline(0), PROMPTS, num_steps=2, progress=False)


def test_keep_term_is_the_closed_form_kl_of_the_two_step_gaussians():
    pipe = _pipe()
    lora.add_lora(pipe.unet, 4, None, lora.TINY_TARGETS)
    tr = sample_flow(pipe, PROMPTS, num_steps=3, generator=torch.Generator().manual_seed(0), progress=False)
    with torch.no_grad():
        for p in lora.lora_parameters(pipe.unet):
            p.add_(0.05 * torch.randn_like(p))
    idx = torch.arange(2)
    pol = steps_means(pipe, tr, [1], idx)[0]
    ref = steps_means(pipe, tr, [1], idx, reference=True)[0]
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(pol.mean.detach(), pol.sigma),
                                           torch.distributions.Normal(ref.mean, ref.sigma))
    kt = keep_term(pol.mean, ref.mean, pol.sigma, None, beta=0.5)
    assert float(kl.mean()) > 0 and torch.equal(pol.sigma, ref.sigma)
    torch.testing.assert_close(kt.term.detach(), 0.5 * kl.mean(), rtol=1e-5, atol=0)
    torch.testing.assert_close(pol.log_prob, step_log_probs(pipe, tr, [1], idx)[0], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Group advantages
# --------------------------------------------------------------------------------------------
def test_group_advantages_normalise_within_each_prompts_group():
    prompts = ["a", "b", "a", "b", "a", "b"]
    r = torch.tensor([1.0, 10.0, 2.0, 30.0, 3.0, 20.0])
    adv = group_advantages(r, prompts, clip_max=None)
    for p in "ab":
        idx = [i for i, q in enumerate(prompts) if q == p]
        g = r[idx].double()
        torch.testing.assert_close(adv[idx].double(), (g - g.mean()) / (g.std(unbiased=False) + 1e-6), rtol=1e-6, atol=1e-6)
    glob = group_advantages(r, prompts, clip_max=None, global_std=True)
    torch.testing.assert_close(glob[[0, 2, 4]].double(), (r[[0, 2, 4]].double() - 2) / (r.double().std(unbiased=False) + 1e-6))


def test_per_pixel_group_normalisation_and_constant_maps():
    prompts = ["a", "a", "b", "b"]
    r = torch.tensor([1.0, 3.0, -2.0, 5.0])
    const = r[:, None, None].expand(4, 4, 4).contiguous()
    torch.testing.assert_close(group_pixel_advantages(const, prompts), group_advantages(r, prompts)[:, None, None].expand(4, 4, 4))
    maps = torch.randn(4, 4, 4, generator=torch.Generator().manual_seed(0))
    maps[:2, 0, 0] = 7.0  # a pixel that is the same in both samples of group "a": no advantage there
    adv = group_pixel_advantages(maps, prompts, clip_max=None)
    assert adv[0, 0, 0] == 0 and adv[1, 0, 0] == 0
    c = maps[:2] - maps[:2].mean(0)
    torch.testing.assert_close(adv[:2], c / (c.std(unbiased=False) + 1e-6), rtol=1e-5, atol=1e-5)


def test_group_of_one_and_no_signal():
    with pytest.raises(ValueError, match="group of 1"):
        group_advantages(torch.tensor([1.0, 2.0, 3.0]), ["a", "a", "b"])
    with pytest.warns(NoSignalWarning, match="1 of 2 group"):
        adv = group_advantages(torch.tensor([1.0, 2.0, 5.0, 5.0]), ["a", "a", "b", "b"])
    assert adv[2] == 0 and adv[3] == 0 and adv[0] < 0 < adv[1]


# --------------------------------------------------------------------------------------------
# GRPO through the one update path
# --------------------------------------------------------------------------------------------
class Recorder(torch.optim.SGD):
    """SGD (lr 0) that keeps the gradients it stepped with."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.seen = []

    def step(self, closure=None):
        self.seen.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])
        return super().step(closure)


def _flow_setup():
    pipe = _pipe()
    tr = sample_flow(pipe, PROMPTS, num_steps=3, generator=torch.Generator().manual_seed(0), progress=False)
    return pipe, tr, [p for p in pipe.unet.parameters() if p.requires_grad]


def test_grpo_step_through_update_is_the_gradient_of_the_grpo_loss():
    pipe, tr, params = _flow_setup()
    adv = torch.tensor([1.0, -1.0])
    idx = torch.arange(2)
    opt = Recorder(params)
    res = update.policy_gradient_step(pipe, tr, adv, [(idx, 0), (idx, 2)], opt, params, method="ddpo", clip_range=0.2)
    assert res.grad_norm > 0 and len(res.infos) == 2
    loss = sum(ddpo_loss(lp, tr.log_probs[:, i], adv, 0.2)[0] for lp, i in zip(step_log_probs(pipe, tr, [0, 2]), (0, 2))) / 2
    want = torch.autograd.grad(loss, params, allow_unused=True)
    for g, w in zip(opt.seen[0], want):
        torch.testing.assert_close(g, torch.zeros_like(g) if w is None else w, rtol=1e-4, atol=1e-7)
    assert update.trainable_steps(pipe, 3, 0.7) == [0, 1, 2]


def test_both_per_pixel_forms_reduce_to_grpo_under_a_constant_map():
    pipe, tr, params = _flow_setup()
    adv = group_advantages(torch.tensor([0.3, 0.9, 0.1, 0.5]), ["a", "a", "b", "b"])[:2]
    const = adv[:, None, None].expand(2, 32, 32).contiguous()
    for clip_range in (None, 0.2):  # score function; PPO clip at θ = θ_old (every ratio 1, inside the clip)
        grads = {}
        for method, a in (("ddpo", adv), ("pxpo", const), ("pxpo_imageratio", const)):
            opt = Recorder(params)
            update.policy_gradient_step(pipe, tr, a, [(torch.arange(2), 1)], opt, params, method=method, clip_range=clip_range)
            grads[method] = opt.seen[0]
        for method in ("pxpo", "pxpo_imageratio"):
            for g, w in zip(grads[method], grads["ddpo"]):
                torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-8)


def _trainer(method, reward, **kw):
    cfg = TrainConfig(method=method, num_steps=3, eta=0.7, timestep_fraction=0.34, samples_per_epoch=4, sample_batch_size=4, train_batch_size=2,
                      use_lora=True, learning_rate=1e-2, clip_range=0.2, progress=False, seed=0, **kw)
    return flow.FlowTrainer(_pipe(), reward, cfg, prompts=PROMPTS, group_size=2)


@pytest.mark.parametrize("method,reward,keep_beta", [("ddpo", "blue", 0.01), ("pxpo", "colour_map", 0.0)])
def test_two_grpo_epochs_change_the_lora_weights_with_finite_losses(method, reward, keep_beta, tmp_path):
    tr = _trainer(method, reward, keep_beta=keep_beta)
    before = {k: v.clone() for k, v in tr.model_state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoSignalWarning)
        metrics = tr.train(2)
    after = tr.model_state_dict()
    assert len(metrics) == 2 and all(math.isfinite(m["loss"]) and math.isfinite(m["approx_kl"]) for m in metrics)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert metrics[-1]["optimizer_steps"] == 2 and metrics[-1]["train_timesteps"] == 1
    if keep_beta:
        assert all(math.isfinite(m["keep_kl"]) for m in metrics) and metrics[-1]["keep_kl"] > 0
        tr.save_checkpoint(tmp_path / "ck")  # the group tracker has no buffers to save: its settings go with the state
        back = _trainer(method, reward, keep_beta=keep_beta).load_checkpoint(tmp_path / "ck")
        assert back.epoch == 2 and all(torch.equal(back.model_state_dict()[k], after[k]) for k in after)


def test_flow_trainer_refuses_a_group_of_one_and_a_ddim_pipeline():
    from pxpo_lite.models import build_tiny_pipeline

    with pytest.raises(ValueError, match="group_size must be an int >= 2"):
        flow.FlowTrainer(_pipe(), "blue", TrainConfig(samples_per_epoch=4, sample_batch_size=4, train_batch_size=2), group_size=1)
    with pytest.raises(ValueError, match="flow-matching scheduler"):
        flow.FlowTrainer(build_tiny_pipeline(0), "blue", TrainConfig(samples_per_epoch=4, sample_batch_size=4, train_batch_size=2))
    with pytest.raises(ValueError, match="not divisible by group_size=3"):
        flow.FlowTrainer(_pipe(), "blue", TrainConfig(samples_per_epoch=4, sample_batch_size=4, train_batch_size=2), group_size=3)
