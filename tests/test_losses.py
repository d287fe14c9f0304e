"""Losses: DDPO (score function / PPO-clipped) and PXPO (per-pixel), the constant-map identity, diagnostics."""
import pytest
import torch

import pxpo_lite
from pxpo_lite.losses import NonFiniteError, ddpo_loss, pxpo_loss


def _setup(seed=0, B=4, C=3, h=6, w=5):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(B, C, h, w, generator=g, requires_grad=True)  # stand-in for log-probs under θ
    old = theta.detach().clone()
    return theta, old, g


def _grad(loss, p):
    (g,) = torch.autograd.grad(loss, p)
    return g


def test_exported():
    assert pxpo_lite.ddpo_loss is ddpo_loss and pxpo_lite.pxpo_loss is pxpo_loss


def test_ddpo_score_function_formula():
    lp, old, g = _setup()
    adv = torch.randn(4, generator=g)
    loss, info = ddpo_loss(lp, old, adv)
    torch.testing.assert_close(loss, -(adv * lp.mean(dim=(1, 2, 3))).mean())
    assert info["clip_fraction"] == 0.0 and info["approx_kl"] == 0.0 and info["ratio_mean"] == pytest.approx(1.0)


def test_ddpo_clipped_formula_matches_reference():
    lp, old, g = _setup(1)
    old = old + 0.3 * torch.randn(old.shape, generator=g)  # θ ≠ θ_old
    adv = torch.randn(4, generator=g)
    eps = 0.05
    loss, info = ddpo_loss(lp, old, adv, clip_range=eps)
    ratio = torch.exp(lp.mean(dim=(1, 2, 3)) - old.mean(dim=(1, 2, 3)))  # ddpo-pytorch's train step
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - eps, 1.0 + eps)
    torch.testing.assert_close(loss, torch.mean(torch.maximum(unclipped, clipped)))
    assert info["clip_fraction"] == pytest.approx(float(((ratio - 1).abs() > eps).float().mean()))
    assert info["ratio_max"] == pytest.approx(float(ratio.max().detach()), rel=1e-5)


@pytest.mark.parametrize("clip_range", [None, 1e-4, 0.2])
def test_constant_map_equals_ddpo_at_theta_old(clip_range):
    lp, old, g = _setup(2)
    adv = torch.randn(4, generator=g)
    amap = adv[:, None, None].expand(4, 6, 5)
    l_d, _ = ddpo_loss(lp, old, adv, clip_range)
    l_p, _ = pxpo_loss(lp, old, amap, clip_range)
    torch.testing.assert_close(l_p, l_d)
    torch.testing.assert_close(_grad(l_p, lp), _grad(l_d, lp))


def test_constant_map_equals_ddpo_score_function_anywhere():
    lp, old, g = _setup(3)
    old = old + torch.randn(old.shape, generator=g)
    adv = torch.randn(4, generator=g)
    l_d, _ = ddpo_loss(lp, old, adv)
    l_p, _ = pxpo_loss(lp, old, adv[:, None, None].expand(4, 6, 5).contiguous())
    torch.testing.assert_close(l_p, l_d)
    torch.testing.assert_close(_grad(l_p, lp), _grad(l_d, lp))


def test_pxpo_kronecker_credit():
    """Each pixel's log-prob gradient is scaled by its own advantage only (no cross-talk)."""
    lp, old, _ = _setup(4, B=1, C=3, h=2, w=2)
    amap = torch.tensor([[[1.0, 0.0], [0.0, -2.0]]])
    loss, _ = pxpo_loss(lp, old, amap)
    grad = _grad(loss, lp)
    expected = -amap.unsqueeze(1).expand(1, 3, 2, 2) / (3 * 2 * 2)
    torch.testing.assert_close(grad, expected)


def test_pxpo_clipped_elementwise():
    lp, old, g = _setup(5)
    old = old + 0.2 * torch.randn(old.shape, generator=g)
    amap = torch.randn(4, 6, 5, generator=g)
    eps = 0.1
    loss, info = pxpo_loss(lp, old, amap, clip_range=eps)
    ratio = (lp - old).exp()
    a = amap.unsqueeze(1)
    ref = torch.maximum(-a * ratio, -a * ratio.clamp(1 - eps, 1 + eps)).mean()
    torch.testing.assert_close(loss, ref)
    assert 0 < info["clip_fraction"] < 1
    assert info["approx_kl"] == pytest.approx(float(0.5 * ((lp.detach() - old) ** 2).mean()), rel=1e-5)
    # clipped elements with the "wrong" sign get no gradient
    grad = _grad(loss, lp)
    dead = ((ratio > 1 + eps) & (a > 0)) | ((ratio < 1 - eps) & (a < 0))
    assert dead.any() and torch.all(grad[dead] == 0)


def test_consistent_with_pixelwise_reductions():
    pixelwise = pytest.importorskip("pxpo_lite.pixelwise")
    lp, old, g = _setup(6)
    adv = torch.randn(4, generator=g)
    l_d, _ = ddpo_loss(lp, old, adv)
    torch.testing.assert_close(l_d, -(adv * pixelwise.per_sample(lp)).mean())
    amap = torch.randn(4, 6, 5, generator=g)
    l_p, _ = pxpo_loss(lp, old, amap)
    # per_pixel sums channels: mean over C,h,w == sum over pixels of A * per_pixel / (C h w)
    ref = -(amap * pixelwise.per_pixel(lp)).sum(dim=(1, 2)).mean() / (3 * 6 * 5)
    torch.testing.assert_close(l_p, ref)


def test_bad_inputs():
    lp, old, _ = _setup()
    with pytest.raises(ValueError, match=r"advantages must have shape \(4,\)"):
        ddpo_loss(lp, old, torch.zeros(3))
    with pytest.raises(ValueError, match=r"advantage_map must have shape \(4, 6, 5\)"):
        pxpo_loss(lp, old, torch.zeros(4, 32, 32))
    with pytest.raises(ValueError, match="old_log_prob"):
        ddpo_loss(lp, old[:2], torch.zeros(4))
    with pytest.raises(ValueError, match=r"\(B,C,h,w\)"):
        ddpo_loss(lp[0], old[0], torch.zeros(4))
    with pytest.raises(ValueError, match="clip_range"):
        pxpo_loss(lp, old, torch.zeros(4, 6, 5), clip_range=-1)
    bad = lp.detach().clone()
    bad[2, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"sample\(s\) \[2\]") as e:
        pxpo_loss(bad, old, torch.zeros(4, 6, 5))
    assert e.value.samples == [2]


# --- defects of issue 9 ---------------------------------------------------------------------------
@pytest.mark.parametrize("loss_fn, adv", [(ddpo_loss, torch.zeros(4)), (pxpo_loss, torch.zeros(4, 6, 5))])
@pytest.mark.parametrize("clip_range", [True, False, float("inf"), float("nan"), 0, "0.2"])
def test_clip_range_must_be_a_finite_positive_number(loss_fn, adv, clip_range):
    lp, old, _ = _setup()
    with pytest.raises(ValueError, match=r"clip_range must be None .* or a finite number > 0"):
        loss_fn(lp, old, adv, clip_range=clip_range)  # True used to run as clip_range=1.0


@pytest.mark.parametrize("loss_fn, adv", [(ddpo_loss, torch.zeros(0)), (pxpo_loss, torch.zeros(0, 6, 5))])
def test_empty_batch_is_a_clear_error(loss_fn, adv):
    lp = torch.zeros(0, 3, 6, 5, requires_grad=True)
    with pytest.raises(ValueError, match="log_prob is an empty batch"):
        loss_fn(lp, lp.detach(), adv)
