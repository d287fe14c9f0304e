"""Exercises of notebooks 00 (a reward map), 02 (per-prompt advantages), 04 (the keep term's KL),
05 (the hair reward map), 07 (effect size) and 08 (a reward map on the latent grid)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .. import advantages as adv_lib
from .. import keep, pixelwise, rewards, world
from ..experiments import evaluation
from .engine import generator, run_check


# --------------------------------------------------------------------------------------------
# 00: the "less blue" reward map
# --------------------------------------------------------------------------------------------
def check_blueness(fn: Callable) -> Callable:
    """Check ``fn(images)``: (B,3,H,W) in [0,1] -> (B,H,W) blueness clip(B − max(R, G), 0, 1).

    Reference: :func:`pxpo_lite.rewards.blueness` (notebook 00); cases: random images and the
    world's rendered portraits.
    """
    portraits = torch.as_tensor(world.render(3, seed=7).images)
    cases = [{"_what": "4 random 6×5 images", "images": torch.rand(4, 3, 6, 5, generator=generator(0))},
             {"_what": "3 rendered portraits", "images": portraits}]

    def variants(c):
        r, g, b = c["images"].unbind(1)
        return {"nothing is clipped: blueness is clipped to [0, 1] (a red pixel is 0, not negative)": b - torch.maximum(r, g),
                "you subtract the mean of R and G; blueness subtracts the larger of the two": (b - (r + g) / 2).clamp(0, 1),
                "that is the reward (−blueness); the exercise asks for blueness itself": -rewards.blueness(c["images"])}

    return run_check("blueness", fn, rewards.blueness, cases, variants=variants,
                     shape_hint="Return one value per pixel (B,H,W): reduce the channel dim (dim 1).")


# --------------------------------------------------------------------------------------------
# 02: DDPO's per-prompt advantages
# --------------------------------------------------------------------------------------------
def _prompt_adv_reference(rewards_, prompts, clip_max=5.0):
    tracker = adv_lib.PerPromptStatTracker(buffer_size=None, min_count=2)  # each prompt's own statistics
    return adv_lib.scalar_advantages(rewards_, list(prompts), tracker=tracker, clip_max=clip_max)


def _unbiased_prompt_adv(rewards_, prompts, clip_max):
    out = torch.zeros_like(rewards_)
    for p in dict.fromkeys(prompts):
        idx = torch.tensor([k for k, q in enumerate(prompts) if q == p])
        out[idx] = (rewards_[idx] - rewards_[idx].mean()) / (rewards_[idx].std() + adv_lib.EPS)
    return out.clamp(-clip_max, clip_max)


def check_prompt_advantages(fn: Callable) -> Callable:
    """Check ``fn(rewards, prompts, clip_max=5.0)`` -> DDPO advantages (B,) of one batch.

    Reference: :func:`pxpo_lite.advantages.scalar_advantages` with a fresh per-prompt tracker
    (``min_count=2``): each reward minus its own prompt's mean in the batch, over that prompt's
    (population) std + ``advantages.EPS``, clipped (notebook 02).
    """
    cases = []
    for i, (n_prompts, per, clip) in enumerate([(2, 4, 5.0), (3, 5, 1.0), (4, 8, 5.0)]):
        prompts = [p for p in world.all_prompts()[i : i + n_prompts] for _ in range(per)]
        order = torch.randperm(len(prompts), generator=generator(i + 30)).tolist()
        prompts = [prompts[k] for k in order]  # the prompts come mixed in a batch
        level = {p: 3.0 * k for k, p in enumerate(dict.fromkeys(prompts))}  # each prompt its own reward level
        r = torch.randn(len(prompts), generator=generator(i), dtype=torch.float64) + \
            torch.tensor([level[p] for p in prompts], dtype=torch.float64)
        cases.append({"_what": f"{len(prompts)} rewards of {n_prompts} prompts (mixed), clip_max = {clip}",
                      "rewards": r, "prompts": prompts, "clip_max": clip})

    def variants(c):
        r, clip = c["rewards"], c["clip_max"]
        return {"you normalise with the whole batch's mean and std; DDPO uses each prompt's own statistics":
                    ((r - r.mean()) / (r.std(unbiased=False) + adv_lib.EPS)).clamp(-clip, clip),
                "nothing is clipped: clip the advantages to [−clip_max, clip_max]": _prompt_adv_reference(r, c["prompts"], None),
                "you use the unbiased std (.std() divides by n − 1); DDPO divides by each prompt's population std: "
                ".std(unbiased=False)": _unbiased_prompt_adv(r, c["prompts"], clip)}

    return run_check("prompt_advantages", fn, _prompt_adv_reference, cases, variants=variants,
                     shape_hint="Return one advantage per reward (B,), in the batch's order.")


# --------------------------------------------------------------------------------------------
# 04: the keep term's per-element KL
# --------------------------------------------------------------------------------------------
def check_gaussian_kl(fn: Callable) -> Callable:
    """Check ``fn(mu, mu_ref, sigma)`` -> KL(N(μ, σ²) ‖ N(μ_ref, σ²)) per element (shaped like ``mu``).

    Reference: :func:`pxpo_lite.keep.gaussian_kl` = (μ − μ_ref)² / (2σ²); gradients w.r.t. ``mu``
    (notebook 04).
    """
    cases = []
    for i, (s, sigma) in enumerate([((2, 3, 4, 4), 0.5), ((1, 3, 5, 6), 0.08), ((3, 4, 2, 2), 1.3)]):
        mu_ref = torch.randn(*s, generator=generator(i))
        cases.append({"_what": f"means {s}, σ = {sigma}", "mu": mu_ref + 0.2 * torch.randn(*s, generator=generator(i + 3)),
                      "mu_ref": mu_ref, "sigma": sigma})

    def variants(c):
        d2 = (c["mu"] - c["mu_ref"]) ** 2
        return {"you divide by 2σ, not 2σ²": d2 / (2 * c["sigma"]),
                "the ½ is missing: KL = (μ − μ_ref)² / (2σ²)": d2 / c["sigma"] ** 2}

    return run_check("gaussian_kl", fn, keep.gaussian_kl, cases, grad=("mu",), variants=variants,
                     shape_hint="Return one KL per element (the shape of mu): do not sum or average.")


# --------------------------------------------------------------------------------------------
# 05: the hair reward map from the segmenter's logits
# --------------------------------------------------------------------------------------------
def _hair_reference(part_logits):
    return -part_logits.softmax(dim=1)[:, world.PART_ID["hair"]]


def check_hair_reward_map(fn: Callable) -> Callable:
    """Check ``fn(part_logits)``: the segmenter's logits (B, P, H, W) -> the reward map −P(hair) (B,H,W).

    Reference: what :func:`pxpo_lite.rewards.hair_reward_map` computes from the logits (softmax
    over the P = ``len(world.PARTS)`` parts, minus the hair channel ``world.PART_ID["hair"]``);
    gradients w.r.t. the logits (notebook 05).
    """
    P = len(world.PARTS)
    cases = [{"_what": f"logits of shape {s}", "part_logits": 3 * torch.randn(*s, generator=generator(i))}
             for i, s in enumerate([(2, P, 4, 4), (3, P, 6, 5)])]

    def variants(c):
        lg, h = c["part_logits"], world.PART_ID["hair"]
        return {"that is +P(hair); the reward for removing hair is its negative": -_hair_reference(lg),
                "you take the raw logit: turn logits into probabilities with a softmax over the parts (dim 1)": -lg[:, h],
                "softmax over the wrong dim: the parts are dim 1": -lg.softmax(dim=-1)[:, h]}

    return run_check("hair_reward_map", fn, _hair_reference, cases, grad=("part_logits",), variants=variants,
                     shape_hint="Return one reward per pixel (B,H,W): pick the hair channel.")


# --------------------------------------------------------------------------------------------
# 07: the paper's effect size
# --------------------------------------------------------------------------------------------
def _effect_reference(before, after):
    b, a = torch.as_tensor(before, dtype=torch.float64), torch.as_tensor(after, dtype=torch.float64)
    stats = lambda r: {"mean": float(r.mean()), "std": float(r.std(unbiased=False))}  # as measure_heldout
    return torch.tensor(evaluation.effect_size(stats(b), stats(a)), dtype=torch.float64)


def check_effect_size(fn: Callable) -> Callable:
    """Check ``fn(rewards_before, rewards_after)`` -> (mean after − mean before) / std before.

    Reference: :func:`pxpo_lite.experiments.effect_size` on the statistics ``measure_heldout``
    reports (population std of the rewards before) (notebook 07). The rewards are "two arrays": an
    answer written for NumPy arrays (``np.mean``, ``np.std``) is called with arrays; it returns one number.
    """
    cases = []
    for i, (n, shift) in enumerate([(32, 0.3), (64, -0.1), (16, 1.2)]):
        b = 0.2 * torch.randn(n, generator=generator(i), dtype=torch.float64) - 0.5
        cases.append({"_what": f"{n} held-out rewards, true shift {shift}", "rewards_before": b,
                      "rewards_after": b + shift + 0.1 * torch.randn(n, generator=generator(i + 5), dtype=torch.float64)})

    def variants(c):
        b, a = c["rewards_before"], c["rewards_after"]
        d = a.mean() - b.mean()
        return {"you divide by the std *after* training; the paper's unit is the std before": d / a.std(unbiased=False),
                "you divide by the pooled std; the paper's unit is the std before": d / torch.cat([a, b]).std(unbiased=False),
                "you use the unbiased std (.std() or ddof=1 divides by N − 1); the paper's unit is the population "
                "std of the rewards before (np.std(x), x.std(unbiased=False))": d / b.std(),
                "that is the change itself; express it in units of the std before": d}

    return run_check("effect_size", fn, _effect_reference, cases, variants=variants,
                     shape_hint="Return one number.", returns="number", arrays=True)


# --------------------------------------------------------------------------------------------
# 08: an image-resolution reward map on the latent grid
# --------------------------------------------------------------------------------------------
def _latent_reference(reward_map, factor):
    H, W = reward_map.shape[-2:]
    return pixelwise.to_sample_grid(reward_map, (H // factor, W // factor))


def check_latent_grid(fn: Callable) -> Callable:
    """Check ``fn(reward_map, factor)``: (B,H,W) -> (B,H/f,W/f), each latent cell the mean of its f×f pixels.

    Reference: :func:`pxpo_lite.pixelwise.to_sample_grid` (area average; SD's f = 8); gradients
    w.r.t. the map (notebook 08).
    """
    cases = [{"_what": f"maps {s}, factor {f}", "reward_map": torch.randn(*s, generator=generator(i)), "factor": f}
             for i, (s, f) in enumerate([((2, 16, 16), 8), ((3, 8, 12), 4), ((1, 64, 64), 8)])]

    def variants(c):
        m, f = c["reward_map"][:, None], c["factor"]
        return {"you take each cell's maximum; each latent cell gets the *mean* of the pixels it covers":
                    F.max_pool2d(m, f)[:, 0],
                "you sum each cell's pixels: average them (the map's mean must stay the same)": F.avg_pool2d(m, f)[:, 0] * f * f,
                "you subsample the map: each cell gets the mean of all f×f pixels it covers": m[:, 0, ::f, ::f]}

    return run_check("latent_grid", fn, _latent_reference, cases, grad=("reward_map",), variants=variants,
                     shape_hint="Return (B, H/factor, W/factor): one value per latent cell.")

