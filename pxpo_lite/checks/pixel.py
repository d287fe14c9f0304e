"""Exercises of notebooks 03 (per-pixel maps, Kronecker credit), 04 (pixel advantages, PXPO loss) and
06 (heatmap → advantages, LoRA parameter count)."""
from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
from diffusers import UNet2DConditionModel

from .. import advantages as adv_lib
from .. import feedback, losses, pixelwise
from .. import lora as lora_lib
from .engine import generator, run_check

# --------------------------------------------------------------------------------------------
# 03: per-pixel log-prob maps and Kronecker-delta credit
# --------------------------------------------------------------------------------------------
def check_per_pixel_log_prob(fn: Callable) -> Callable:
    """Check ``fn(log_probs)``: (..., C, h, w) -> (..., h, w), each pixel's log-prob (all its channels).

    Reference: :func:`pxpo_lite.pixelwise.per_pixel`; cases with and without a step dim T, C = 3 and 4
    (notebook 03).
    """
    shapes = [(2, 3, 4, 5), (2, 6, 3, 4, 5), (3, 4, 5, 5)]
    cases = [{"_what": f"log_probs of shape {s}", "log_probs": torch.randn(*s, generator=generator(i)) - 2} for i, s in enumerate(shapes)]
    variants = lambda c: {"you average the channels: a pixel's log-prob is the log of the product of its channels' "
                          "densities (the covariance is diagonal)": c["log_probs"].mean(-3)}
    return run_check("per_pixel_log_prob", fn, pixelwise.per_pixel, cases, grad=("log_probs",), variants=variants,
                shape_hint="Reduce the channel dim only; count it from the end, so it works with or without a T dim.")


def check_kronecker_credit(fn: Callable) -> Callable:
    """Check ``fn(log_probs, reward_map)`` -> the PXPO surrogate (to maximise).

    ``log_probs`` (B,C,h,w) or (B,T,C,h,w), ``reward_map`` (B,h,w). Reference:
    :func:`pxpo_lite.pixelwise.pxpo_surrogate` (mean over C,h,w, sum over t, mean over B);
    gradients w.r.t. ``log_probs`` (notebook 03).
    """
    cases = []
    for i, s in enumerate([(2, 3, 4, 6), (2, 5, 3, 4, 6), (3, 2, 3, 5, 5)]):
        cases.append({"_what": f"log_probs {s}, reward_map {(s[0], *s[-2:])}", "log_probs": torch.randn(*s, generator=generator(i)) - 2,
                      "reward_map": torch.randn(s[0], *s[-2:], generator=generator(i + 50))})

    def variants(c):
        lp, m = c["log_probs"], c["reward_map"]
        ref = pixelwise.pxpo_surrogate(lp, m)
        v = {"every pixel gets the image's mean reward: that is DDPO's whole-image credit, not the Kronecker delta "
             "(log-prob pixel (i,j) must be weighted by reward pixel (i,j))": pixelwise.ddpo_surrogate(lp, m.mean((-2, -1))),
             "the sign: this surrogate is maximised (its negative is the loss)": -ref}
        if m.shape[-1] == m.shape[-2]:
            v["the map is transposed: reward pixel (i,j) must weight log-prob pixel (i,j)"] = pixelwise.pxpo_surrogate(lp, m.transpose(-1, -2))
        if lp.ndim == 5:
            v["you average over the steps t; a trajectory's log-probs add up over its steps"] = ref / lp.shape[1]
        return v

    return run_check("kronecker_credit", fn, pixelwise.pxpo_surrogate, cases, grad=("log_probs",), variants=variants,
                shape_hint="Return one number (the surrogate averaged over the batch).")


# --------------------------------------------------------------------------------------------
# 04 / 06 / LoRA
# --------------------------------------------------------------------------------------------
def _pixel_adv_reference(reward_maps, clip_max=5.0):
    return adv_lib.pixel_advantages(reward_maps, ["one prompt"] * len(reward_maps), clip_max=clip_max)


def check_pixel_advantages(fn: Callable) -> Callable:
    """Check ``fn(reward_maps, clip_max=5.0)`` -> PXPO advantages (B,H,W) of one batch of one prompt.

    Reference: :func:`pxpo_lite.advantages.pixel_advantages` without a tracker: a per-pixel
    baseline (the batch's mean map), one scalar std, clipping (notebook 04).
    """
    cases = []
    for i, (B, H, W, clip) in enumerate([(8, 4, 5, 5.0), (6, 3, 3, 1.0), (16, 2, 4, 5.0)]):
        maps = 2 * torch.randn(B, H, W, generator=generator(i)) * torch.rand(1, H, W, generator=generator(i + 9)) + torch.randn(1, H, W, generator=generator(i + 7))
        cases.append({"_what": f"{B} maps of {H}×{W}, clip_max = {clip}", "reward_maps": maps, "clip_max": clip})

    def variants(c):
        r, clip = c["reward_maps"], c["clip_max"]
        z = lambda x, s: (x / (s + adv_lib.EPS)).clamp(-clip, clip)
        centred = r - r.mean(0)
        return {"your baseline is one number per batch; PXPO's is a per-pixel mean map": z(r - r.mean(), centred.std(unbiased=False)),
                "you use the unbiased std (.std() divides by N − 1); the advantages use the population std: "
                ".std(unbiased=False)": z(centred, centred.std()),
                "the baseline is missing: subtract the batch's mean map (per pixel) before dividing by the std":
                    z(r, centred.std(unbiased=False)),
                "the baseline is missing: subtract the batch's mean map (per pixel), then divide by the std of "
                "what is left": z(r, r.std(unbiased=False)),
                "you divide by a per-pixel std; use one scalar std of all centred values": z(centred, centred.std(0, unbiased=False)),
                "nothing is clipped: clip the advantages to [−clip_max, clip_max]": centred / (centred.std(unbiased=False) + adv_lib.EPS)}

    return run_check("pixel_advantages", fn, _pixel_adv_reference, cases, variants=variants,
                shape_hint="Return one advantage per pixel of every map (B,H,W).")


def _pxpo_reference(log_prob, old_log_prob, advantage_map, clip_range=None):
    return losses.pxpo_loss(log_prob, old_log_prob, advantage_map, clip_range)[0]


def check_pxpo_loss(fn: Callable) -> Callable:
    """Check ``fn(log_prob, old_log_prob, advantage_map, clip_range)`` -> the PXPO loss of one step.

    Reference: :func:`pxpo_lite.losses.pxpo_loss` (score function without a clip range, element-wise
    clipped ratio with one); gradients w.r.t. ``log_prob`` (notebook 04).
    """
    cases = []
    for i, (s, eps) in enumerate([((2, 3, 4, 6), None), ((3, 3, 5, 5), 0.2), ((2, 4, 4, 4), 0.05)]):
        old = torch.randn(*s, generator=generator(i)) - 2
        cases.append({"_what": f"log_prob {s}, clip_range = {eps}", "log_prob": old + 0.3 * torch.randn(*s, generator=generator(i + 5)),
                      "old_log_prob": old, "advantage_map": torch.randn(s[0], *s[2:], generator=generator(i + 9)), "clip_range": eps})

    def variants(c):
        lp, old, m, eps = c["log_prob"], c["old_log_prob"], c["advantage_map"], c["clip_range"]
        v = {"the sign: the loss is minimised, so it is minus the advantage-weighted objective": -_pxpo_reference(**c),
             "each pixel must be weighted by its own advantage, not the image's mean (that is DDPO)":
                 losses.ddpo_loss(lp, old, m.mean((-2, -1)), eps)[0]}
        if eps is not None:
            v["nothing is clipped: clip each element's ratio to [1 − ε, 1 + ε]"] = (-m[:, None] * (lp - old).exp()).mean()
            d = lp - old
            v["the ratio is not exponentiated: ρ = exp(log_prob − old_log_prob), not the difference of the log-probs"] = \
                torch.maximum(-m[:, None] * d, -m[:, None] * d.clamp(1 - eps, 1 + eps)).mean()
        return v

    return run_check("pxpo_loss", fn, _pxpo_reference, cases, grad=("log_prob",), variants=variants,
                shape_hint="Return one number (the loss averaged over the batch).")


def check_heatmap_to_advantages(fn: Callable) -> Callable:
    """Check ``fn(heatmap, sample_size, scale=1.0)`` -> advantages (1,h,w) from a painted map (H,W).

    Reference: :func:`pxpo_lite.feedback.heatmap_to_advantages` (A = scale · h, area-averaged onto
    the sample grid); cases with the same grid and 2× / 4× smaller grids (notebook 06).
    """
    cases = []
    for i, (H, W, h, w, scale) in enumerate([(8, 8, 8, 8, 1.0), (16, 16, 4, 4, 2.0), (16, 8, 8, 4, 0.5)]):
        heat = np.clip(np.random.default_rng(i).normal(size=(H, W)), -1, 1).astype(np.float32)
        cases.append({"_what": f"a {H}×{W} heatmap onto a {h}×{w} grid, scale = {scale}", "heatmap": heat,
                      "sample_size": (h, w), "scale": scale})

    def variants(c):
        heat, (h, w), scale = torch.as_tensor(c["heatmap"]), c["sample_size"], c["scale"]
        kh, kw = heat.shape[0] // h, heat.shape[1] // w
        ref = feedback.heatmap_to_advantages(c["heatmap"], (h, w), scale)
        return {"you sum the pixels each cell covers: average them (area average)": ref * kh * kw,
                "you subsample the map: each cell gets the *mean* of the pixels it covers": scale * heat[None, ::kh, ::kw],
                "the scale is ignored": ref / scale}

    return run_check("heatmap_to_advantages", fn, feedback.heatmap_to_advantages, cases, variants=variants,
                shape_hint="Return a batch of one map: shape (1, h, w).")


def _tiny_unet(width: int):
    """A very small diffusers UNet (attention at the lower resolution, ResNet convolutions)."""
    return UNet2DConditionModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                block_out_channels=(width, 2 * width), norm_num_groups=4, cross_attention_dim=8,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=2)


def _lora_count_reference(model, rank, target_modules):
    m = copy.deepcopy(model)
    lora_lib.add_lora(m, rank=rank, target_modules=target_modules)
    return sum(p.numel() for p in lora_lib.lora_parameters(m))


def check_lora_param_count(fn: Callable) -> Callable:
    """Check ``fn(model, rank, target_modules)`` -> how many parameters LoRA of that rank trains.

    Reference: add adapters with :func:`pxpo_lite.lora.add_lora` to a copy and count
    ``lora_parameters`` (a Linear d_in→d_out gets r·(d_in + d_out); a k×k Conv2d c_in→c_out gets
    r·(c_in·k² + c_out)). Models: very small diffusers UNets.
    """
    cases = []
    for w, r, targets in [(8, 4, lora_lib.SD_TARGETS), (4, 2, ("to_q", "conv1", "conv2")), (8, 8, lora_lib.TINY_TARGETS)]:
        cases.append({"_what": f"a UNet of width {w}, rank {r}, targets {list(targets)}", "model": _tiny_unet(w),
                      "rank": r, "target_modules": tuple(targets)})

    def variants(c):
        mods = dict(c["model"].named_modules())
        full = sum(mods[n].weight.numel() for n in lora_lib.matching_modules(c["model"], c["target_modules"]))
        return {"you count the adapted layers' full weights: LoRA trains only the two low-rank factors": float(full)}

    return run_check("lora_param_count", fn, _lora_count_reference, cases, variants=variants, shape_hint="Return one integer.",
                     returns="number")

