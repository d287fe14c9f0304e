"""pxpo_lite.update: the one policy-gradient step (re-score, loss, NaN guard, accumulation, clip, step)."""
import copy
import functools
import math

import pytest
import torch

from pxpo_lite import keep, lora, update
from pxpo_lite.losses import ddpo_loss, pxpo_loss
from pxpo_lite.models import build_tiny_pipeline
from pxpo_lite.sampling import sample, step_log_prob, step_log_probs
from pxpo_lite.update import Keep, TrainingError, policy_gradient_step, summarise, trainable_steps

PROMPTS = [
    "a bald portrait with a red shirt on a blue background",
    "a portrait with long blue hair and a white shirt on a grey background",
]


@functools.lru_cache(maxsize=None)
def _base():
    return build_tiny_pipeline(0)


def setup(n=2, num_steps=3):
    pipe = copy.deepcopy(_base())
    pipe.unet.eval()
    traj = sample(pipe, (PROMPTS * n)[:n], num_steps=num_steps, generator=torch.Generator().manual_seed(0), progress=False)
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    return pipe, traj, params


def grads_of(params):
    return [None if p.grad is None else p.grad.detach().clone() for p in params]


class Recorder(torch.optim.SGD):
    """SGD that keeps the gradients it stepped with."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.seen = []

    def step(self, closure=None):
        self.seen.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])
        return super().step(closure)


@pytest.mark.parametrize("method", ["ddpo", "pxpo"])
def test_gradient_is_the_mean_of_the_pairs_losses(method):
    pipe, traj, params = setup()
    adv = torch.tensor([1.0, -0.5]) if method == "ddpo" else torch.randn(2, 32, 32, generator=torch.Generator().manual_seed(1))
    idx = torch.arange(2)
    pairs = [(idx[:1], 0), (idx[1:], 1), (idx, 1)]
    opt = Recorder(params)
    res = policy_gradient_step(pipe, traj, adv, pairs, opt, params, method=method)
    assert len(res.infos) == 3 and res.grad_norm > 0 and all(p.grad is None for p in params)
    # by hand: mean of the three losses, one backward
    loss_fn = ddpo_loss if method == "ddpo" else pxpo_loss
    total = sum(loss_fn(step_log_prob(pipe, traj, i, j), traj.log_probs[j, i], adv[j])[0] for j, i in pairs) / 3
    total.backward()
    for got, p in zip(opt.seen[0], params):
        torch.testing.assert_close(got, p.grad, rtol=1e-4, atol=1e-7)


def test_clipping_and_the_reported_norm():
    pipe, traj, params = setup()
    opt = Recorder(params)
    res = policy_gradient_step(pipe, traj, torch.tensor([1.0, -1.0]), [(torch.arange(2), 0)], opt, params,
                               method="ddpo", max_grad_norm=1e-6)
    clipped = torch.cat([g.reshape(-1) for g in opt.seen[0]]).norm()
    assert res.grad_norm > 1e-6 and float(clipped) == pytest.approx(1e-6, rel=1e-3)


def _hand_norm(params, max_grad_norm):
    """The gradient norm as update.py computed it before clip_grad_norm_ did it all (issue 20)."""
    if max_grad_norm is not None:
        return float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    grads = [p.grad.detach().reshape(-1) for p in params if p.grad is not None]
    return float(torch.cat(grads).norm()) if grads else 0.0


@pytest.mark.parametrize("max_grad_norm", [None, 0.05, 1e9])
@pytest.mark.parametrize("grad", ["finite", "inf", "nan", "none"])
def test_clip_gradients_is_clip_grad_norm_with_the_hand_computed_norm(max_grad_norm, grad):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))
    if grad != "none":
        model(torch.randn(4, 5)).pow(2).sum().backward()
    if grad in ("inf", "nan"):
        model[0].weight.grad[1, 2] = float(grad)
    twin = copy.deepcopy(model)
    for a, b in zip(twin.parameters(), model.parameters()):
        a.grad = None if b.grad is None else b.grad.clone()
    want = _hand_norm(list(twin.parameters()), max_grad_norm)
    got = update.clip_gradients(model.parameters(), max_grad_norm)
    if grad == "finite":
        assert got == pytest.approx(want, rel=1e-6) and got > 0.05
        for a, b in zip(model.parameters(), twin.parameters()):  # the same gradients after: clipped alike, or untouched
            assert torch.equal(a.grad, b.grad)
        if max_grad_norm == 0.05:
            assert update.clip_gradients(model.parameters(), None) == pytest.approx(0.05, rel=1e-4)
    elif grad == "none":
        assert got == want == 0.0
    else:  # a non-finite norm, as before: policy_gradient_step then skips the optimiser step
        assert not math.isfinite(got) and not math.isfinite(want) and math.isnan(got) == math.isnan(want)


def test_the_step_measures_the_norm_with_clip_grad_norm_also_without_clipping(monkeypatch):
    pipe, traj, params = setup(n=1, num_steps=2)
    calls, orig = [], torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda ps, m, *a, **k: calls.append(m) or orig(ps, m, *a, **k))
    opt = Recorder(params)
    res = policy_gradient_step(pipe, traj, torch.tensor([1.0]), [(torch.arange(1), 0)], opt, params, method="ddpo")
    flat = torch.cat([g.reshape(-1) for g in opt.seen[0]])  # the gradients it stepped with: not clipped
    assert calls == [math.inf] and res.grad_norm == pytest.approx(float(flat.double().norm()), rel=1e-6)
    # the float32 hand-computed norm it replaces rounds more (1.4 M elements summed in one vector): 5e-5 here
    assert res.grad_norm == pytest.approx(float(flat.norm()), rel=1e-4)


def test_nan_log_prob_stops_before_the_step(monkeypatch):
    pipe, traj, params = setup()
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1.0)
    orig = update.step_log_probs
    monkeypatch.setattr(update, "step_log_probs", lambda *a: [lp * float("nan") for lp in orig(*a)])
    with pytest.raises(TrainingError, match=r"log-prob is NaN/inf for sample 1 \(prompt 'a portrait.*timestep index 0 \(t = \d+\), round 7.*weights untouched"):
        policy_gradient_step(pipe, traj, torch.zeros(2), [(torch.tensor([1]), 0)], opt, params, method="ddpo", where=", round 7")
    assert all(torch.equal(a, p) for a, p in zip(before, params)) and all(p.grad is None for p in params)


def test_nan_advantage_and_inf_gradient_are_stopped():
    pipe, traj, params = setup()
    opt = torch.optim.AdamW(params, lr=1.0)
    with pytest.raises(TrainingError, match="advantages has NaN/inf.*weights untouched"):
        policy_gradient_step(pipe, traj, torch.tensor([float("nan"), 0.0]), [(torch.arange(2), 0)], opt, params, method="ddpo")
    huge = torch.tensor([1e38, -1e38])
    with pytest.raises(TrainingError, match="(gradient norm|loss) is"):
        policy_gradient_step(pipe, traj, huge, [(torch.arange(2), 0)], opt, params, method="ddpo")
    assert all(p.grad is None for p in params)


def test_extra_loss_term_is_added_to_each_pair():
    pipe, traj, params = setup()
    adv = torch.tensor([1.0, -1.0])
    pairs = [(torch.arange(2), 0)]
    plain = policy_gradient_step(pipe, traj, adv, pairs, Recorder(params), params, method="ddpo")
    calls = []

    def extra(pipe_, traj_, idx, i, log_prob):
        calls.append((idx.tolist(), i, tuple(log_prob.shape)))
        return 0.0 * log_prob.sum() + 2.0, {"extra": 2.0}

    with_extra = policy_gradient_step(pipe, traj, adv, pairs, Recorder(params), params, method="ddpo", extra_loss=extra)
    assert calls == [([0, 1], 0, (2, 3, 32, 32))]
    assert with_extra.infos[0]["loss"] == pytest.approx(plain.infos[0]["loss"] + 2.0) and with_extra.infos[0]["extra"] == 2.0


def test_bad_arguments_are_named():
    pipe, traj, params = setup()
    opt = torch.optim.SGD(params, lr=0.0)
    with pytest.raises(ValueError, match=r"method='pxpo' must have shape \(2, 32, 32\).*got \(2,\)"):
        policy_gradient_step(pipe, traj, torch.zeros(2), [(torch.arange(2), 0)], opt, params, method="pxpo")
    with pytest.raises(ValueError, match="pairs is empty"):
        policy_gradient_step(pipe, traj, torch.zeros(2), [], opt, params, method="ddpo")
    with pytest.raises(ValueError, match="method must be one of"):
        update.step_loss("ppo", torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), torch.zeros(1), None)
    with pytest.raises(ValueError, match="nothing to summarise"):
        summarise([])


def test_trainable_steps_one_threshold():
    pipe = copy.deepcopy(_base())
    pipe.scheduler.set_timesteps(7)
    assert trainable_steps(pipe, 4, 1.0) == [0, 1, 2]  # trailing schedule: σ = 0 only at the last step
    assert trainable_steps(pipe, 4, 0.01) == [0, 1, 2]  # a small σ is still a policy
    with pytest.raises(ValueError, match="num_steps=1 at eta=1.0 gives no stochastic DDIM step"):
        trainable_steps(pipe, 1, 1.0)
    assert pipe.scheduler.num_inference_steps == 7  # the pipeline's own scheduler is left as it was


def test_summarise_means_and_extremes():
    s = summarise([{"loss": 1.0, "ratio_min": 0.9, "ratio_max": 1.1}, {"loss": 3.0, "ratio_min": 0.8, "ratio_max": 1.0}])
    assert s == {"loss": 2.0, "ratio_min": 0.8, "ratio_max": 1.1}


# ---------------------------------------------------------------------------- the keep term in the update
def _forwards(unet):
    """Count UNet forwards (with or without grad) through a hook; returns the list it appends to."""
    seen = []
    unet.register_forward_hook(lambda m, a, out: seen.append(torch.is_grad_enabled()))
    return seen


def test_keep_term_is_exactly_zero_at_theta_ref_and_beta_zero_adds_no_forward():
    pipe, traj, params = setup()
    ref_unet = keep.frozen_copy(pipe.unet)
    seen = _forwards(pipe.unet)
    ref_seen = _forwards(ref_unet)
    adv = torch.randn(2, 32, 32, generator=torch.Generator().manual_seed(1))
    pairs = [(torch.arange(2), 0), (torch.tensor([1]), 1)]
    plain_opt, keep_opt = Recorder(params), Recorder(params)
    plain = policy_gradient_step(pipe, traj, adv, pairs, plain_opt, params, method="pxpo")
    assert seen == [True, True] and ref_seen == []
    off = policy_gradient_step(pipe, traj, adv, pairs, Recorder(params), params, method="pxpo", keep=Keep(0.0))
    assert seen == [True] * 4 and ref_seen == [] and "keep_kl" not in off.infos[0]  # β = 0: the plain update
    w = torch.ones(2, 32, 32)
    w[:, :16] = 0
    res = policy_gradient_step(pipe, traj, adv, pairs, keep_opt, params, method="pxpo",
                               keep=Keep(10.0, w, reference_unet=ref_unet))
    assert seen == [True] * 6 and ref_seen == [False, False]  # one forward with grad + one reference forward per pair
    for a, b in zip(plain_opt.seen[0], keep_opt.seen[0]):
        assert torch.equal(a, b)  # θ = θ_ref: the term and its gradient are exactly 0 -> the same update, bit for bit
    assert res.grad_norm == plain.grad_norm
    info = res.infos[0]
    assert info["keep_kl"] == info["keep_kl_kept"] == info["keep_kl_free"] == info["keep_term"] == 0.0
    assert info["loss"] == plain.infos[0]["loss"]


def test_keep_term_with_lora_is_zero_at_start_and_pulls_back_after_a_change():
    pipe, traj, _ = setup()
    torch.manual_seed(0)
    lora.add_lora(pipe.unet, 4, target_modules=lora.TINY_TARGETS)
    params = lora.lora_parameters(pipe.unet)
    adv = torch.randn(2, 32, 32, generator=torch.Generator().manual_seed(1))
    pairs = [(torch.arange(2), 0)]
    a, b = Recorder(params), Recorder(params)
    policy_gradient_step(pipe, traj, adv, pairs, a, params, method="pxpo")
    policy_gradient_step(pipe, traj, adv, pairs, b, params, method="pxpo", keep=Keep(5.0))
    assert all(torch.equal(x, y) for x, y in zip(a.seen[0], b.seen[0]))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    # only the keep term (advantages 0): the gradient flows and a step lowers the KL to the base model
    opt = torch.optim.SGD(params, lr=0.05)
    first = policy_gradient_step(pipe, traj, torch.zeros(2, 32, 32), pairs, opt, params, method="pxpo", keep=Keep(1.0))
    second = policy_gradient_step(pipe, traj, torch.zeros(2, 32, 32), pairs, opt, params, method="pxpo", keep=Keep(1.0))
    assert first.grad_norm > 0 and first.infos[0]["keep_kl"] > 0
    assert second.infos[0]["keep_kl"] < first.infos[0]["keep_kl"]
    assert first.infos[0]["keep_kl_kept"] == pytest.approx(first.infos[0]["keep_kl"])  # w ≡ 1
    assert math.isnan(first.infos[0]["keep_kl_free"]) and "keep_kl_free" in summarise(first.infos)


def test_keep_term_nan_reference_is_stopped_before_the_step():
    pipe, traj, params = setup()
    ref_unet = keep.frozen_copy(pipe.unet)
    with torch.no_grad():
        next(ref_unet.parameters()).fill_(float("nan"))
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1.0)
    with pytest.raises(TrainingError, match="loss is NaN/inf.*weights untouched"):
        policy_gradient_step(pipe, traj, torch.zeros(2, 32, 32), [(torch.arange(2), 0)], opt, params, method="pxpo",
                             keep=Keep(1.0, reference_unet=ref_unet))
    assert all(torch.equal(a, p) for a, p in zip(before, params)) and all(p.grad is None for p in params)


def test_keep_bad_arguments_are_named():
    pipe, traj, params = setup()
    opt = torch.optim.SGD(params, lr=0.0)
    for beta in (-1.0, float("nan"), True, "10"):
        with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
            Keep(beta)
    with pytest.raises(ValueError, match=r"Keep.weights must be None or a tensor \(B,h,w\)"):
        Keep(1.0, torch.ones(32, 32))
    with pytest.raises(ValueError, match="finite and >= 0"):
        Keep(1.0, -torch.ones(1, 32, 32))
    with pytest.raises(TypeError, match="keep must be a keep.Keep"):
        policy_gradient_step(pipe, traj, torch.zeros(2), [(torch.arange(2), 0)], opt, params, method="ddpo", keep=1.0)
    with pytest.raises(ValueError, match="Keep.weights has 3 maps but the trajectory has 2 samples"):
        policy_gradient_step(pipe, traj, torch.zeros(2), [(torch.arange(2), 0)], opt, params, method="ddpo",
                             keep=Keep(1.0, torch.ones(3, 32, 32), keep.frozen_copy(pipe.unet)))


# --------------------------------------------------------------------------------------------
# Several timesteps per UNet forward (TrainConfig.timestep_batch)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_step_log_probs_equal_one_step_at_a_time(guidance):
    pipe = copy.deepcopy(_base())
    pipe.unet.eval()
    traj = sample(pipe, PROMPTS, num_steps=4, guidance_scale=guidance, generator=torch.Generator().manual_seed(0), progress=False)
    assert (traj.negative_prompt_embeds is not None) == (guidance != 1.0)
    idx = torch.tensor([1, 0])
    together = step_log_probs(pipe, traj, [0, 2, 3], idx)
    for lp, i in zip(together, [0, 2, 3]):
        torch.testing.assert_close(lp, step_log_prob(pipe, traj, i, idx), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lp.detach(), traj.log_probs[idx, i], rtol=1e-4, atol=1e-4)  # unchanged weights
    assert torch.equal(step_log_probs(pipe, traj, [2], idx)[0], step_log_prob(pipe, traj, 2, idx))  # k = 1: the same call


@pytest.mark.parametrize("method,beta", [("ddpo", 0.0), ("pxpo", 0.0), ("pxpo", 2.0)])
def test_timestep_batch_gives_the_same_gradient(method, beta):
    """One forward per micro-batch over its timesteps = one forward per pair, to float rounding
    (the keep term's reference forward is batched the same way)."""
    pipe, traj, params = setup(n=2, num_steps=4)
    lora.add_lora(pipe.unet, rank=2, target_modules=lora.TINY_TARGETS) if beta else None
    params = lora.lora_parameters(pipe.unet) if beta else params
    if beta:  # B = 0 at the start: move off the reference so that the keep term has a gradient
        with torch.no_grad():
            for p in params:
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    adv = torch.tensor([1.0, -0.5]) if method == "ddpo" else torch.randn(2, 32, 32, generator=torch.Generator().manual_seed(1))
    a, b = torch.tensor([0]), torch.tensor([1])
    pairs = [(a, 0), (a, 1), (a, 2), (b, 0), (b, 2)]  # stochastic steps only (the 4th has σ_t = 0)
    kp = Keep(beta) if beta else None
    seen, infos = [], []
    for tb in (1, 2, 5):
        opt = Recorder(params)
        res = policy_gradient_step(pipe, traj, adv, pairs, opt, params, method=method, keep=kp, timestep_batch=tb, clip_range=0.1)
        seen.append(opt.seen[0])
        infos.append(res.infos)
    for other, info in zip(seen[1:], infos[1:]):
        scale = max(float(g.abs().max()) for g in seen[0])
        for g1, g in zip(seen[0], other):
            assert float((g - g1).abs().max()) <= 1e-3 * scale  # float32 rounding (×1/σ_t² in the log-prob), not a different gradient
        for d1, d in zip(infos[0], info):
            assert d.keys() == d1.keys()
            assert all(d[k] == pytest.approx(d1[k], rel=1e-3, abs=1e-6, nan_ok=True) for k in d), (d, d1)


def test_group_pairs_keeps_order_and_micro_batches():
    a, b = torch.tensor([0, 1]), torch.tensor([2, 3])
    pairs = [(a, 0), (a, 1), (a, 2), (b, 0), (torch.tensor([2, 3]), 1), (a, 3)]
    groups = update.group_pairs(pairs, 2)
    assert [[i for _, i in g] for g in groups] == [[0, 1], [2], [0, 1], [3]]
    assert [g[0][0].tolist() for g in groups] == [[0, 1], [0, 1], [2, 3], [0, 1]]
    assert len(update.group_pairs(pairs, 1)) == 6 and len(update.group_pairs(pairs, 99)) == 3
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError, match=r"timestep_batch \(timesteps per UNet forward\) must be an int >= 1"):
            update.group_pairs(pairs, bad)


def test_resolve_timestep_batch_rule():
    pipe, traj, _ = setup(n=2, num_steps=20)  # tiny model: 3×32×32 samples, no guidance
    assert update.resolve_timestep_batch(3, pipe, traj, 8) == 3
    assert update.resolve_timestep_batch(None, pipe, traj, 8) == update.TIMESTEP_BATCH_ELEMENTS // (8 * 3 * 32 * 32) == 5
    assert update.resolve_timestep_batch(None, pipe, traj, 1) == 20  # one painted image: every step at once
    # no parameter-count cut-off: a 100 M-parameter UNet is not forced to 1 (the probe cannot run on it: no memory cap)
    big = type("P", (), {"unet": torch.nn.Linear(10_000, 10_000, device="meta")})()
    assert update.resolve_timestep_batch(None, big, traj, 1) == 20
    # the memory rule: k × rows ≤ rows that fit (the bytes per row measured by a probe forward)
    from pxpo_lite import memory

    assert memory.activation_bytes_per_row(pipe, (3, 32, 32), traj.prompt_embeds) > 3 * 32 * 32 * 4
    for free_rows, k in ((10**6, 20), (8 * 3, 3), (8 * 5 + 7, 5), (1, 1)):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(update, "rows_that_fit", lambda *a, n=free_rows: n)
            assert update.resolve_timestep_batch(None, pipe, traj, 8 if k != 20 else 1) == k
    with pytest.raises(ValueError, match=r"timestep_batch \(.*None: automatic\) must be an int >= 1, got 0"):
        update.resolve_timestep_batch(0, pipe, traj, 8)
