"""Pixel-wise log-probs, reward-map mapping and the PXPO/DDPO identity (issue 3, part 3)."""
import pytest
import torch

from pxpo_lite import pixelwise
from pxpo_lite.pixelwise import (check_reward_map, ddpo_surrogate, per_pixel, per_sample, pxpo_surrogate,
                                 to_sample_grid)

torch.set_num_threads(1)


def test_reductions():
    lp = torch.randn(2, 5, 3, 4, 6)
    assert per_pixel(lp).shape == (2, 5, 4, 6)
    torch.testing.assert_close(per_pixel(lp), lp[:, :, 0] + lp[:, :, 1] + lp[:, :, 2])
    assert per_sample(lp).shape == (2, 5)
    torch.testing.assert_close(per_sample(lp), lp.reshape(2, 5, -1).mean(-1))
    assert per_sample(lp[:, 0]).shape == (2,)
    # a pixel's log-prob map sums to the sample's total log-prob (diagonal covariance)
    torch.testing.assert_close(per_pixel(lp).sum((-2, -1)), lp.sum((-3, -2, -1)))
    with pytest.raises(ValueError, match="log_probs"):
        per_pixel(torch.zeros(4, 4))
    with pytest.raises(TypeError, match="log_probs"):
        per_sample([1.0])


def test_to_sample_grid_identity_and_area_average():
    r = torch.randn(2, 32, 32)
    assert to_sample_grid(r, (32, 32)) is r
    small = to_sample_grid(r, (4, 4))  # 8× like SD's VAE
    assert small.shape == (2, 4, 4)
    torch.testing.assert_close(small[1, 2, 3], r[1, 16:24, 24:32].mean())
    torch.testing.assert_close(small.mean((-2, -1)), r.mean((-2, -1)))  # area average keeps the mean
    assert to_sample_grid(r, torch.Size([2, 4, 3, 8, 8])).shape == (2, 8, 8)  # a log-prob shape works
    odd = to_sample_grid(torch.ones(1, 30, 30), (4, 4))  # non-integer factor: fractional area weights
    torch.testing.assert_close(odd, torch.ones(1, 4, 4))


def test_to_sample_grid_errors():
    r = torch.randn(2, 32, 32)
    with pytest.raises(ValueError, match="aspect ratio"):
        to_sample_grid(r, (4, 8))
    with pytest.raises(ValueError, match="batch"):
        to_sample_grid(r, (4, 4), batch_size=3)
    with pytest.raises(ValueError, match=r"\(B,H,W\)"):
        to_sample_grid(r[0], (4, 4))
    with pytest.raises(ValueError, match="size"):
        to_sample_grid(r, (4,))


def test_check_reward_map():
    images = torch.rand(2, 3, 8, 8)
    out = check_reward_map(torch.zeros(2, 8, 8, dtype=torch.float64), images)
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match="batch"):
        check_reward_map(torch.zeros(3, 8, 8), images)
    with pytest.raises(ValueError, match="reward_map has shape"):
        check_reward_map(torch.zeros(2, 8, 4), images)
    with pytest.raises(ValueError, match="reward_map has shape"):
        check_reward_map(torch.zeros(2), images)  # a scalar reward is not silently broadcast
    for bad in (float("nan"), float("inf"), -float("inf")):
        m = torch.zeros(2, 8, 8)
        m[1, 3, 4] = bad
        with pytest.raises(ValueError, match="NaN/inf"):
            check_reward_map(m, images)
    with pytest.raises(TypeError, match="reward_map"):
        check_reward_map([[0.0]], images)


@pytest.mark.parametrize("shape", [(3, 4, 5, 5), (3, 6, 4, 5, 5)])
def test_constant_map_pxpo_equals_ddpo_with_gradients(shape):
    theta = torch.randn(shape, requires_grad=True)
    log_probs = -0.5 * (theta - 0.3) ** 2 + theta.sin()  # any differentiable function of θ per element
    r = torch.tensor([0.5, -1.25, 2.0])
    const_map = r[:, None, None].expand(3, 5, 5).clone()
    s_px = pxpo_surrogate(log_probs, const_map)
    s_dd = ddpo_surrogate(log_probs, r)
    torch.testing.assert_close(s_px, s_dd)
    (g_px,) = torch.autograd.grad(s_px, theta, retain_graph=True)
    (g_dd,) = torch.autograd.grad(s_dd, theta)
    torch.testing.assert_close(g_px, g_dd)


def test_pxpo_credit_is_local():
    """Kronecker delta: a pixel's reward only weights that pixel's log-prob gradient."""
    theta = torch.zeros(1, 3, 4, 4, requires_grad=True)
    reward = torch.zeros(1, 4, 4)
    reward[0, 1, 2] = 1.0
    (grad,) = torch.autograd.grad(pxpo_surrogate(theta, reward), theta)
    assert grad[0, :, 1, 2].abs().min() > 0 and grad.abs().sum() == grad[0, :, 1, 2].abs().sum()
    (grad_dd,) = torch.autograd.grad(ddpo_surrogate(theta, reward.mean((-2, -1))), theta)
    assert (grad_dd != 0).all()  # DDPO spreads the same credit over every element


def test_constant_map_identity_through_a_real_unet():
    """Constant image-resolution map -> latent grid -> PXPO gradient == DDPO gradient, on tiny SD."""
    from pxpo_lite.sampling import sample, step_log_prob
    from pxpo_lite.sd import build_tiny_sd_pipeline

    pipe = build_tiny_sd_pipeline(seed=0)
    tr = sample(pipe, ["a portrait with red hair", "a bald portrait"], num_steps=2, guidance_scale=1.0,
                generator=torch.Generator().manual_seed(0), progress=False)
    r = torch.tensor([1.0, -0.5])
    image_map = check_reward_map(r[:, None, None].expand(2, 64, 64).clone(), tr.images)
    grid_map = to_sample_grid(image_map, tr.log_probs.shape, batch_size=len(tr))
    assert grid_map.shape == (2, 8, 8)
    params = [p for p in pipe.unet.parameters()]
    grads = []
    for surrogate in (lambda lp: pxpo_surrogate(lp, grid_map), lambda lp: ddpo_surrogate(lp, r)):
        lp = step_log_prob(pipe, tr, 0)
        grads.append(torch.autograd.grad(surrogate(lp), params, allow_unused=True))
    for a, b in zip(*grads):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_surrogate_shape_errors():
    lp = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="to_sample_grid"):
        pxpo_surrogate(lp, torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="reward_map"):
        pxpo_surrogate(lp, torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="rewards"):
        ddpo_surrogate(lp, torch.zeros(3))
    with pytest.raises(ValueError, match="log_probs"):
        ddpo_surrogate(torch.zeros(1, 2, 3, 4, 4, 4), torch.zeros(1))
    assert pixelwise.per_pixel(lp).shape == (2, 4, 4)


# --- defects of issue 9 ---------------------------------------------------------------------------
@pytest.mark.parametrize("H, h", [(30, 4), (32, 4), (512, 64), (7, 3), (4, 6)])
def test_to_sample_grid_preserves_the_mean_of_random_maps(H, h):
    # adaptive_avg_pool2d (30→4) used to be off by 2e-3 to 2e-2
    r = torch.rand(3, H, H, generator=torch.Generator().manual_seed(H)) * 2 - 1
    y = to_sample_grid(r, (h, h))
    assert y.shape == (3, h, h) and y.dtype == r.dtype
    assert (y.mean(dim=(1, 2)) - r.mean(dim=(1, 2))).abs().max() <= 1e-6


@pytest.mark.parametrize("H, h", [(32, 4), (512, 64), (6, 3)])
def test_to_sample_grid_integer_factor_is_block_mean(H, h):
    import torch.nn.functional as F

    r = torch.randn(2, H, H, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(to_sample_grid(r, (h, h)), F.avg_pool2d(r[:, None], H // h)[:, 0], rtol=0, atol=1e-6)


def test_to_sample_grid_fractional_cells_by_hand():
    from pxpo_lite.pixelwise import area_weights

    # 3 pixels onto 2 cells: cell 0 = pixel 0 + half of pixel 1, cell 1 = half of pixel 1 + pixel 2
    torch.testing.assert_close(area_weights(3, 2), torch.tensor([[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]], dtype=torch.float64))
    r = torch.tensor([[[1.0, 4.0, 7.0], [1.0, 4.0, 7.0], [1.0, 4.0, 7.0]]])
    torch.testing.assert_close(to_sample_grid(r, (2, 2)), torch.tensor([[[2.0, 6.0], [2.0, 6.0]]]))
    w = area_weights(30, 4)
    torch.testing.assert_close(w.sum(1), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(w.sum(0), torch.full((30,), 4 / 30, dtype=torch.float64))
