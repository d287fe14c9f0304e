"""Speed options (pxpo_lite.speed, issue 13 item 2): each leaves results unchanged, or within a stated tolerance."""
import copy

import pytest
import torch

import pxpo_lite
from pxpo_lite import world
from pxpo_lite.lora import TINY_TARGETS, add_lora, lora_parameters
from pxpo_lite.rewards import blue_reward
from pxpo_lite.sampling import sample, step_log_prob
from pxpo_lite.speed import PromptEmbeddingCache, apply_speedups, disable_prompt_cache, enable_prompt_cache
from pxpo_lite.trainer import TrainConfig, Trainer

torch.set_num_threads(1)

PROMPTS = world.all_prompts()[:2] * 2  # repeated prompts: the cache encodes each once
STEPS = 3


def g(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pipe():
    return pxpo_lite.build_tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def sd_pipe():
    from pxpo_lite.sd import build_tiny_sd_pipeline

    return build_tiny_sd_pipeline(seed=0)


def run(p, w=3.0, seed=0):
    return sample(p, PROMPTS, num_steps=STEPS, guidance_scale=w, generator=g(seed), progress=False)


@pytest.mark.parametrize("which", ["pipe", "sd_pipe"])
def test_prompt_cache_gives_the_same_trajectory(which, request):
    base = request.getfixturevalue(which)
    ref = run(base)
    p = copy.deepcopy(base)
    cache = enable_prompt_cache(p)
    assert enable_prompt_cache(p) is cache  # idempotent
    for _ in range(2):
        tr = run(p)
        assert torch.equal(tr.prompt_embeds, ref.prompt_embeds)
        assert torch.equal(tr.negative_prompt_embeds, ref.negative_prompt_embeds)
        assert torch.equal(tr.log_probs, ref.log_probs) and torch.equal(tr.images, ref.images)
    # 2 distinct prompts + the empty negative prompt encoded once; every other row came from the cache
    assert cache.misses == 3 and cache.hits == 2 * 2 * len(PROMPTS) - 3
    disable_prompt_cache(p)
    assert not isinstance(p.__dict__.get("encode_prompt"), PromptEmbeddingCache)
    assert torch.equal(run(p).log_probs, ref.log_probs)


def test_prompt_cache_passes_precomputed_embeddings_through(pipe):
    p = copy.deepcopy(pipe)
    cache = enable_prompt_cache(p)
    own, _ = type(p).encode_prompt(p, PROMPTS, "cpu", 1, False)
    cond, uncond = p.encode_prompt(None, "cpu", 2, False, prompt_embeds=own)
    assert torch.equal(cond, own.repeat_interleave(2, dim=0)) and uncond is None
    assert cache.misses == 0 and cache.hits == 0
    cond, _ = p.encode_prompt(PROMPTS, "cpu", 2, False)  # num_images_per_prompt as the pipeline's own method
    assert torch.equal(cond, own.repeat_interleave(2, dim=0))


def test_prompt_cache_clear_re_encodes(pipe):
    p = copy.deepcopy(pipe)
    cache = enable_prompt_cache(p)
    p.encode_prompt(PROMPTS, "cpu", 1, False)
    cache.clear()
    p.encode_prompt(PROMPTS, "cpu", 1, False)
    assert cache.misses == 4 and cache.hits == 4


def test_channels_last_within_float_rounding(pipe):
    ref = run(pipe)
    p = copy.deepcopy(pipe)
    apply_speedups(p, channels_last=True)
    conv = next(m for m in p.unet.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    tr = run(p)
    # measured: max |Δ log-prob| 1.9e-6 (tiny), 4.6e-5 (tiny SD); the tolerance leaves room for other CPUs
    assert torch.allclose(tr.log_probs, ref.log_probs, atol=1e-4, rtol=0)
    assert torch.allclose(tr.images, ref.images, atol=1e-4, rtol=0)


def grads(p, traj, params):
    for q in params:
        q.grad = None
    step_log_prob(p, traj, 1).sum().backward()
    return torch.cat([q.grad.reshape(-1) for q in params])


@pytest.mark.parametrize("use_lora", [False, True])
def test_gradient_checkpointing_same_gradients_and_recomputes(pipe, use_lora):
    ref_pipe, ck_pipe = copy.deepcopy(pipe), copy.deepcopy(pipe)
    apply_speedups(ck_pipe, gradient_checkpointing=True)
    params = {}
    for name, p in (("ref", ref_pipe), ("ck", ck_pipe)):
        if use_lora:
            torch.manual_seed(0)
            add_lora(p.unet, 4, None, TINY_TARGETS)
            params[name] = lora_parameters(p.unet)
        else:
            p.unet.requires_grad_(True)
            params[name] = list(p.unet.parameters())
    traj = run(ref_pipe, w=1.0)
    # checkpointing is really on: a ResNet block's forward starts again in the backward pass (pre-hook: the
    # recomputation stops early, once the saved tensors are back, so a post-forward hook would not fire)
    calls = {"ref": 0, "ck": 0}
    for name, p in (("ref", ref_pipe), ("ck", ck_pipe)):
        block = p.unet.down_blocks[0].resnets[0]
        block.register_forward_pre_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    g_ref, g_ck = grads(ref_pipe, traj, params["ref"]), grads(ck_pipe, traj, params["ck"])
    assert calls == {"ref": 1, "ck": 2}
    assert torch.equal(g_ref, g_ck)  # recomputation in eval mode (no dropout) is exact


def test_trainer_epoch_unchanged_by_exact_speedups(pipe):
    cfg = TrainConfig(num_steps=STEPS, samples_per_epoch=4, sample_batch_size=4, train_batch_size=2, use_lora=False,
                      learning_rate=1e-4, progress=False)
    a, b = copy.deepcopy(pipe), copy.deepcopy(pipe)
    apply_speedups(b, gradient_checkpointing=True, prompt_cache=True)
    ta, tb = Trainer(a, blue_reward, cfg, prompts=PROMPTS), Trainer(b, blue_reward, cfg, prompts=PROMPTS)
    for _ in range(2):
        ra, rb = ta.train_epoch(), tb.train_epoch()
        assert ra["reward_mean"] == rb["reward_mean"] and ra["loss"] == rb["loss"]
    for pa, pb in zip(ta.params, tb.params):
        assert torch.equal(pa, pb)
    assert b.encode_prompt.hits > 0


def test_compile_is_lazy_and_in_place(pipe):
    p = copy.deepcopy(pipe)
    unet = p.unet
    flags = apply_speedups(p, compile=True)
    assert flags == {"channels_last": False, "gradient_checkpointing": False, "prompt_cache": False, "compile": True}
    assert p.unet is unet and unet._compiled_call_impl is not None  # nn.Module.compile: compiled on the first call


def test_bad_inputs(pipe):
    with pytest.raises(TypeError, match="channels_last must be True or False, got 'yes'"):
        apply_speedups(pipe, channels_last="yes")
    with pytest.raises(TypeError, match="compile_kwargs must be a dict"):
        apply_speedups(pipe, compile=True, compile_kwargs="max-autotune")
    with pytest.raises(TypeError, match="pipe must be a pipeline with a torch UNet at pipe.unet, got object"):
        apply_speedups(object())
    with pytest.raises(TypeError, match="pipe must be a pipeline with an encode_prompt method, got int"):
        PromptEmbeddingCache(3)


def test_trainconfig_speed_fields_reach_the_pipeline():
    """TrainConfig's speed options are applied by the Trainer (channels_last on for a CPU by default, the rest off) and checked."""
    from pxpo_lite.train_config import check_config

    with pytest.raises(ValueError, match="channels_last"):
        check_config(TrainConfig(channels_last="yes"))
    pipe = pxpo_lite.load_tiny_pipeline()
    cfg = TrainConfig(num_steps=3, samples_per_epoch=2, sample_batch_size=2, train_batch_size=2, per_prompt_stats=False,
                      progress=False, channels_last=True, gradient_checkpointing=True, prompt_cache=True)
    Trainer(pipe, "blue", cfg)
    assert pipe.unet.is_gradient_checkpointing
    w = next(p for p in pipe.unet.parameters() if p.ndim == 4)
    assert w.is_contiguous(memory_format=torch.channels_last)


def test_cpu_speed_options_are_chosen_by_the_device_unless_given():
    """channels_last / lora_merged_sampling = None (TrainConfig's defaults): on for a CPU (measured faster),
    off on a GPU (unmeasured); the Trainer applies what they resolve to."""
    from pxpo_lite.speed import resolve_cpu_default

    assert resolve_cpu_default("x", None, "cpu") is True and resolve_cpu_default("x", None, torch.device("cuda")) is False
    assert resolve_cpu_default("x", False, "cpu") is False and resolve_cpu_default("x", True, "cuda") is True
    with pytest.raises(TypeError, match="channels_last must be True or False"):
        resolve_cpu_default("channels_last", 1, "cpu")
    assert TrainConfig().channels_last is None and TrainConfig().lora_merged_sampling is None
    from pxpo_lite.train_config import check_config

    with pytest.raises(ValueError, match="lora_merged_sampling"):
        check_config(TrainConfig(lora_merged_sampling="yes"))
    cfg = dict(num_steps=3, samples_per_epoch=2, sample_batch_size=2, train_batch_size=2, per_prompt_stats=False, progress=False)
    for given, expected in ((None, True), (False, False)):
        p = pxpo_lite.build_tiny_pipeline(seed=0)
        tr = Trainer(p, "blue", TrainConfig(**cfg, channels_last=given, lora_merged_sampling=given, use_lora=True))
        conv = next(w for n, w in p.unet.named_parameters() if w.ndim == 4 and w.shape[-1] > 1 and "lora_" not in n)
        assert tr.speedups["channels_last"] is expected and tr.merge_for_sampling is expected
        assert conv.is_contiguous(memory_format=torch.channels_last) is expected
    assert not Trainer(pxpo_lite.build_tiny_pipeline(seed=0), "blue", TrainConfig(**cfg, use_lora=False)).merge_for_sampling
    assert apply_speedups(pxpo_lite.build_tiny_pipeline(seed=0), channels_last=None)["channels_last"] is True


def test_merged_lora_sampling_gives_the_unmerged_log_probs_to_rounding(monkeypatch):
    """The Trainer samples with its adapters merged (CPU default); re-scoring with them unmerged reproduces the
    trajectory's log-probs to float rounding, and an epoch leaves the base weights exactly as they were."""
    from pxpo_lite import lora
    from pxpo_lite.sampling import rescore

    cfg = dict(num_steps=3, samples_per_epoch=4, sample_batch_size=4, train_batch_size=2, per_prompt_stats=False,
               progress=False, use_lora=True, learning_rate=1e-2)
    p = pxpo_lite.build_tiny_pipeline(seed=0)
    tr = Trainer(p, "blue", TrainConfig(**cfg))
    assert tr.merge_for_sampling
    merged_during_sampling, inner = [], lora.merged_adapters

    def spy(model, enabled=True):
        merged_during_sampling.append(enabled)
        return inner(model, enabled)

    monkeypatch.setattr(lora, "merged_adapters", spy)
    base = {n: w.detach().clone() for n, w in p.unet.named_parameters() if "lora_" not in n}
    tr.train(1)  # adapters move away from zero
    assert all(torch.equal(w, base[n]) for n, w in p.unet.named_parameters() if "lora_" not in n)
    traj, _ = tr.sample_and_score(n=4)
    assert merged_during_sampling and all(merged_during_sampling)  # every sampling call ran merged
    assert not any(m.merged for m in p.unet.modules() if isinstance(m, lora.LoraLayer))
    torch.testing.assert_close(rescore(p, traj), traj.log_probs, atol=1e-4, rtol=1e-4)


def test_bench_cheaper_gradients_worker_measures_time_memory_and_reward(monkeypatch):
    """One (option, method) of benchmarks/bench_cheaper_gradients.py in this process, on a small model."""
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_cheaper_gradients as bench

    small = pxpo_lite.build_tiny_pipeline(seed=0, block_out_channels=(8, 16, 16))
    monkeypatch.setattr(pxpo_lite, "load_tiny_pipeline", lambda *a, **k: copy.deepcopy(small))
    monkeypatch.setitem(bench.BASE, "num_steps", 2)
    monkeypatch.setattr(bench, "EVAL_N", 2)
    assert {"channels_last", "prompt_cache", "channels_last+cache", "tf=0.5", "ckpt"} <= set(bench.OPTIONS)
    r = bench.worker("channels_last+cache", "pxpo", 2, 1)
    assert r["config"]["channels_last"] and r["config"]["prompt_cache"] and r["samples"] == 32
    assert r["epoch_wall_s"] > 0 and r["peak_rss_mb"] > 0 and len(r["train_reward_by_epoch"]) == 2
    assert all(isinstance(r[k], float) for k in ("reward_before", "reward_after"))
    assert sys.modules["bench_cheaper_gradients"] is bench


def test_bench_vs_trl_arms_map_to_valid_configs(monkeypatch):
    """Every arm of benchmarks/bench_vs_trl.py is a valid TrainConfig on TRL's config (TRL itself is not needed),
    and every ratio names two arms."""
    from pathlib import Path

    from pxpo_lite.train_config import check_config

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_vs_trl as bench

    for layout in bench.LAYOUTS:
        assert bench.peer_config(layout)["sample_batch_size"] * bench.peer_config(layout)["sample_num_batches_per_epoch"] == 16
        for arm, (method, overrides, what) in bench.OURS.items():
            cfg = bench.arm_config(arm, layout)
            check_config(cfg)
            assert cfg.samples_per_epoch == bench.SAMPLES_PER_EPOCH and cfg.train_batch_size == 4 and cfg.num_steps == 20
            assert cfg.clip_range == 1e-4 and cfg.guidance_scale == 5.0 and cfg.use_lora and what and cfg.method == method
        assert bench.arm_config("ddpo", layout).sample_batch_size is None  # our automatic layout
        assert bench.arm_config("ddpo-trl-calls", layout).sample_batch_size == bench.LAYOUTS[layout][0]
    assert bench.OURS["ddpo-1"][1] == {"timestep_batch": 1} and bench.DEFAULT_ARMS == ("trl", "ddpo", "pxpo")
    assert all({num, den} <= {"trl", *bench.OURS} for _, num, den in bench.RATIOS)


def run_benchmark_main(name: str, argv: list[str]):
    """``benchmarks/<name>.py``'s ``main(argv)`` in this process; torch's thread count restored after."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    n = torch.get_num_threads()
    try:
        return mod.main(argv)
    finally:
        torch.set_num_threads(n)


def test_profile_sampling_splits_a_call_into_unet_vae_and_the_rest():
    """benchmarks/profile_sampling.py (quoted in the README): the parts add up to the wall time."""
    (row,) = run_benchmark_main("profile_sampling", ["--size", "tiny", "--images", "2", "--reps", "1"])
    assert 0 < row["unet_s"] < row["wall_s"] and 0 < row["vae_s"] < row["wall_s"] and row["other_s"] > 0


def test_probe_small_model_measures_its_three_candidates(capsys):
    """benchmarks/probe_small_model.py (quoted in the README), on the tiny model, one repetition."""
    out = run_benchmark_main("probe_small_model", ["--size", "tiny", "--reps", "1"])
    assert out["attention_shapes"] and all(len(q) == 4 and len(k) == 4 for q, k in out["attention_shapes"])
    assert set(out["timestep_batch_s"]) == {16, 20} and all(len(v) == 1 and v[0] > 0 for v in out["timestep_batch_s"].values())
    assert len(out["sampling_s"]) == 2 and all(len(v) == 1 and v[0] > 0 for v in out["sampling_s"].values())
    printed = capsys.readouterr().out
    assert "flash" in printed and "timestep_batch=20" in printed and "merged" in printed
