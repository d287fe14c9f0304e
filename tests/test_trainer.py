"""Trainer: DDPO/PXPO epochs on a tiny random pipeline, LoRA round trip, checkpoints/resume, bad input."""
import copy
import functools
import math
import shutil

import pytest
import torch

from pxpo_lite import lora, rewards
from pxpo_lite.checkpoint import CheckpointError
from pxpo_lite.models import build_tiny_pipeline
from pxpo_lite.sampling import sample
from pxpo_lite import trainer as trainer_mod
from pxpo_lite import update as update_mod
from pxpo_lite.plotting import plot_reward_curve
from pxpo_lite.trainer import TrainConfig, Trainer, TrainingError, check_config

PROMPTS = [
    "a bald portrait with a red shirt on a blue background",
    "a portrait with long blue hair and a white shirt on a grey background",
]


@functools.lru_cache(maxsize=None)
def _base_pipe(seed=0):
    return build_tiny_pipeline(seed)


def tiny_pipe(seed=0):
    """A fresh copy of one random tiny pipeline (build_tiny_pipeline's tokenizer is not
    reproducible across calls, so copies are the way to get identical pipelines)."""
    return copy.deepcopy(_base_pipe(seed))


def small(**kw):
    base = dict(num_steps=3, samples_per_epoch=4, sample_batch_size=2, train_batch_size=2, progress=False)
    return TrainConfig(**{**base, **kw})


def make(reward="blue", seed=0, **kw):
    return Trainer(tiny_pipe(seed), reward, small(**kw), prompts=PROMPTS)


def weights(tr):
    return {k: v.detach().clone() for k, v in tr.model_state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method,clip", [("ddpo", None), ("ddpo", 1e-4), ("pxpo", None), ("pxpo", 0.1)])
def test_epochs_run_and_log_plain_records(method, clip):
    tr = make(rewards.colour_reward_map if method == "pxpo" else "blue", method=method, clip_range=clip)
    w0 = weights(tr)
    metrics = tr.train(2)
    assert len(metrics) == 2 and metrics is tr.metrics
    rec = metrics[-1]
    for k in ("epoch", "n_samples", "reward_mean", "reward_std", "loss", "approx_kl", "clip_fraction", "ratio_mean", "ratio_max", "grad_norm"):
        assert k in rec and isinstance(rec[k], (int, float)) and math.isfinite(rec[k]), k
    assert rec["epoch"] == 2 and rec["n_samples"] == 8 and rec["optimizer_steps"] == 2
    assert not same(w0, weights(tr))
    ax = plot_reward_curve(metrics, label=method)
    assert ax.get_xlabel() == "samples"
    plot_reward_curve([metrics, metrics])


def _captured_grads(tr, traj, adv):
    grads = []
    tr.optimizer.step = lambda *a, **k: grads.append([p.grad.detach().clone() for p in tr.params])
    tr.optimise(traj, adv, torch.Generator().manual_seed(0))
    return grads


def test_pxpo_with_scalar_reward_is_ddpo():
    """A scalar reward becomes a constant advantage map: PXPO's gradients equal DDPO's (clipped or not)."""
    for clip in (None, 0.2):
        a, b = make(method="ddpo", clip_range=clip), make(method="pxpo", clip_range=clip)
        traj, r = a.sample_and_score(n=4, generator=torch.Generator().manual_seed(1))
        adv_a = a.compute_advantages(traj.prompts, r, (32, 32))
        adv_b = b.compute_advantages(traj.prompts, r, (32, 32))
        assert adv_a.shape == (4,) and adv_b.shape == (4, 32, 32)
        torch.testing.assert_close(adv_b, adv_a[:, None, None].expand(4, 32, 32))
        ga, gb = _captured_grads(a, traj, adv_a), _captured_grads(b, traj, adv_b)
        assert len(ga) == len(gb) == 2
        for x, y in zip(ga[0], gb[0]):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-7)


def test_gradient_accumulation_matches_one_big_batch():
    a = make(train_batch_size=4, grad_accum_steps=1)
    b = make(train_batch_size=2, grad_accum_steps=2)
    traj, r = a.sample_and_score(n=4, generator=torch.Generator().manual_seed(1))
    adv = a.compute_advantages(traj.prompts, r, tuple(traj.latents.shape[-2:]))
    ga, gb = _captured_grads(a, traj, adv), _captured_grads(b, traj, adv)
    assert len(ga) == len(gb) == 1  # one optimiser step each
    for x, y in zip(ga[0], gb[0]):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-7)


def test_deterministic_last_step_skipped_and_timestep_fraction():
    """Only steps with σ_t > 0 are trained (ddim.trainable_step_indices, the one threshold)."""
    tr = make(num_steps=4)
    traj, _ = tr.sample_and_score(n=2)
    assert tr.trainable_steps(traj) == [0, 1, 2]  # trailing schedule: the last step has σ = 0
    tr2 = make(num_steps=4, timestep_fraction=0.34)
    assert tr2.train_epoch()["train_timesteps"] == 1


@pytest.mark.parametrize("use_lora", [False, True])
def test_resume_gives_same_weights_as_uninterrupted(tmp_path, use_lora):
    kw = dict(use_lora=use_lora, stat_buffer_size=4, stat_min_count=2, clip_range=0.1)
    full = make(**kw)
    full.train(3)
    part = make(**kw)
    part.train(1)
    part.save_checkpoint(tmp_path / "ck")
    resumed = make(**kw).load_checkpoint(tmp_path / "ck")
    assert resumed.epoch == 1 and len(resumed.metrics) == 1
    resumed.train(2)
    assert same(weights(full), weights(resumed))
    assert [m["reward_mean"] for m in full.metrics] == [m["reward_mean"] for m in resumed.metrics]
    assert resumed.tracker.stats() == full.tracker.stats()


def test_lora_save_load_merge_round_trip(tmp_path):
    # NCHW as the fresh pipeline below, so the reloaded adapter must give the same images bit for bit
    # (the CPU default, channels_last, agrees with NCHW to float rounding only: tests/test_speed.py)
    tr = make(use_lora=True, learning_rate=1e-2, channels_last=False)
    tr.train(1)
    assert lora.has_lora(tr.pipe.unet) and any(v.abs().sum() > 0 for k, v in tr.model_state_dict().items() if "lora_B" in k)
    tr.save_lora(tmp_path / "adapter")
    fresh = tiny_pipe(0)
    lora.load_lora(fresh.unet, tmp_path / "adapter")

    def imgs(pipe):
        return sample(pipe, PROMPTS, num_steps=3, generator=torch.Generator().manual_seed(7), progress=False).images

    ref = imgs(tr.pipe)
    assert torch.equal(imgs(fresh), ref)
    lora.merge_and_unload(fresh.unet)
    assert not lora.has_lora(fresh.unet)
    assert set(fresh.unet.state_dict()) == set(tiny_pipe(0).unet.state_dict())
    torch.testing.assert_close(imgs(fresh), ref, atol=1e-4, rtol=0)


def test_lora_without_matching_modules_is_an_error():
    with pytest.raises(ValueError, match="match no module"):
        make(use_lora=True, lora_targets=("no_such_layer",))
    with pytest.raises(ValueError, match="match no module"):
        lora.add_lora(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1)))


def test_nan_reward_stops_before_update():
    def bad_reward(images, prompts):
        r = rewards.blue_reward(images)
        r[1] = float("nan")
        return r

    tr = make(bad_reward)
    w0 = weights(tr)
    with pytest.raises(TrainingError, match=r"sample 1 \(prompt '.+'\).*weights untouched"):
        tr.train_epoch()
    assert same(w0, weights(tr))


def test_nan_log_prob_names_sample_and_timestep(monkeypatch):
    tr = make(train_batch_size=4)
    w0 = weights(tr)
    orig = update_mod.step_log_probs

    def poisoned(pipe, traj, steps, idx):
        return [lp + torch.where(idx == 2, float("nan"), 0.0).view(-1, 1, 1, 1) for lp in orig(pipe, traj, steps, idx)]

    monkeypatch.setattr(update_mod, "step_log_probs", poisoned)
    with pytest.raises(TrainingError, match=r"log-prob is NaN/inf for sample 2 .*timestep index \d \(t = \d+\)"):
        tr.train_epoch()
    assert same(w0, weights(tr))
    assert all(p.grad is None for p in tr.params)


def test_bad_configs_name_the_numbers():
    with pytest.raises(ValueError, match=r"6 trajectories.*sample_batch_size=4"):
        check_config(small(samples_per_epoch=6, sample_batch_size=4))
    with pytest.raises(ValueError, match=r"2 × 2 = 4"):
        check_config(small(samples_per_epoch=6, sample_batch_size=2, train_batch_size=2, grad_accum_steps=2))
    with pytest.raises(ValueError, match=r"samples_per_epoch=5 is not divisible by the number of processes 2"):
        check_config(small(samples_per_epoch=5), num_processes=2)
    with pytest.raises(ValueError, match="method"):
        check_config(small(method="ppo"))
    with pytest.raises(ValueError, match="eta"):
        check_config(small(eta=0.0))
    with pytest.raises(ValueError, match="timestep_fraction"):
        check_config(small(timestep_fraction=0))


@pytest.mark.parametrize("field, value, words", [
    ("clip_range", True, "clip_range must be None or a finite number > 0, got True"),
    ("clip_range", float("inf"), "clip_range"),
    ("learning_rate", float("inf"), "learning_rate must be None or a finite number > 0, got inf"),
    ("learning_rate", 0.0, "learning_rate"),
    ("max_grad_norm", 0, "max_grad_norm must be None or a finite number > 0, got 0"),
    ("max_grad_norm", float("nan"), "max_grad_norm"),
    ("adv_clip_max", -1.0, "adv_clip_max"),
    ("timestep_fraction", True, "timestep_fraction"),
    ("eta", 1.5, "eta must be a number in \\(0, 1\\]"),
    ("guidance_scale", float("inf"), "guidance_scale"),
    ("adam_betas", (0.9, 1.0), "adam_betas\\[1\\]"),
    ("adam_eps", 0.0, "adam_eps"),
    ("stat_buffer_size", 0, "stat_buffer_size"),
    ("lora_rank", 2.0, "lora_rank"),
    ("seed", -1, "seed"),
])
def test_every_numeric_field_is_checked(field, value, words):
    with pytest.raises(ValueError, match=words):
        check_config(small(**{field: value}))


def test_config_is_checked_before_the_accelerator_is_built(monkeypatch):
    built = []
    monkeypatch.setattr(trainer_mod, "Accelerator", lambda *a, **k: built.append(1))
    with pytest.raises(ValueError, match="learning_rate"):
        Trainer(tiny_pipe(), "blue", small(learning_rate=float("inf")), prompts=PROMPTS)
    with pytest.raises(TypeError, match="TrainConfig"):
        Trainer(tiny_pipe(), "blue", {"method": "ddpo"}, prompts=PROMPTS)
    assert built == []


def test_one_step_schedule_with_nothing_to_train_is_an_error():
    """num_steps=1 on the tiny model's trailing schedule: its only step is deterministic (σ = 0)."""
    with pytest.raises(ValueError, match=r"num_steps=1 at eta=1.0 gives no stochastic DDIM step.*num_steps >= 2"):
        make(num_steps=1)
    assert make(num_steps=2).train_epoch()["train_timesteps"] == 1


def test_train_calls_the_callback_after_every_epoch():
    tr = make()
    seen = []
    tr.train(2, callback=lambda record, trainer: seen.append((record["epoch"], trainer is tr)))
    assert seen == [(1, True), (2, True)]
    with pytest.raises(TypeError, match="callback"):
        tr.train(1, callback="not a function")


def test_advantages_reach_the_loss_in_its_shape_only():
    """Advantages are converted once (compute_advantages); optimise refuses any other shape."""
    tr = make(method="pxpo")
    traj, r = tr.sample_and_score(n=4, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=r"advantages for method='pxpo' must have shape \(4, 32, 32\).*got \(4,\)"):
        tr.optimise(traj, torch.zeros(4))


def test_wrong_reward_shape_is_named():
    tr = make(lambda images, prompts: torch.zeros(len(images), 8, 8))
    with pytest.raises(ValueError, match=r"shape \(2, 8, 8\).*expected \(2,\).*\(2, 32, 32\)"):
        tr.sample_and_score(n=2)


def test_missing_and_corrupt_checkpoints(tmp_path):
    tr = make()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tr.load_checkpoint(tmp_path / "nope")
    tr.train(1)
    ck = tr.save_checkpoint(tmp_path / "ck")
    w = weights(tr)
    f = ck / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    fresh = make()
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt"):
        fresh.load_checkpoint(ck)
    tr.save_checkpoint(ck)  # overwrite atomically
    (ck / "state.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        fresh.load_checkpoint(ck)
    # files without a state.json are not recorded as this package's: a save refuses them and deletes nothing
    with pytest.raises(CheckpointError, match="not recorded as a checkpoint"):
        tr.save_checkpoint(ck)
    assert (ck / "model.safetensors").exists()
    shutil.rmtree(ck)  # the user decides; then the save goes through
    tr.save_checkpoint(ck)
    with pytest.raises(CheckpointError, match="method='ddpo'"):
        make(method="pxpo").load_checkpoint(ck)
    fresh.load_checkpoint(ck)
    assert same(w, weights(fresh))


def test_same_trainer_on_a_tiny_stable_diffusion_pipeline(tmp_path):
    """SD latents: LoRA by default, the image-resolution reward map area-averaged to the latent grid."""
    sd = pytest.importorskip("pxpo_lite.sd")
    pipe = sd.build_tiny_sd_pipeline(0)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red apple", "a blue sky"]
    tr = Trainer(pipe, rewards.colour_reward_map, small(method="pxpo", clip_range=0.2, guidance_scale=1.0), prompts=prompts)
    assert tr.use_lora and all("lora_" in n for n in tr.model_state_dict())
    traj, r = tr.sample_and_score(n=2)
    H, W = traj.images.shape[-2:]
    h, w = traj.latents.shape[-2:]
    assert r.shape == (2, H, W) and (H // h, W // w) == (8, 8)
    assert tr.compute_advantages(traj.prompts, r, (h, w)).shape == (2, h, w)
    rec = tr.train_epoch()
    assert math.isfinite(rec["loss"]) and rec["optimizer_steps"] == 2
    tr.save_checkpoint(tmp_path / "ck")
    tr.save_lora(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_timestep_batch_config_and_same_training():
    """timestep_batch: checked up front; any value trains the same weights (float rounding)."""
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="timestep_batch"):
            check_config(small(timestep_batch=bad))
    a, b = make(timestep_batch=1), make(timestep_batch=None)
    ra, rb = a.train_epoch(), b.train_epoch()
    assert ra["timestep_batch"] == 1 and rb["timestep_batch"] > 1
    assert ra["reward_mean"] == rb["reward_mean"]  # same samples
    for pa, pb in zip(a.params, b.params):  # Adam's first step is ±lr (1e-4) per weight: allow a fifth of one step
        torch.testing.assert_close(pa, pb, rtol=0, atol=2e-5)


def test_phase_seconds_and_automatic_sampling_layout(monkeypatch):
    """Each epoch records its phase times; sample_batch_size=None draws the epoch in one call when it fits,
    else in as few equal calls as fit (the memory rule, issue 22); an explicit value is a cap."""
    import pxpo_lite.memory as memory

    tr = make(sample_batch_size=None)
    rec = tr.train_epoch()
    assert set(rec["seconds"]) == {"sampling", "reward", "advantages", "update"}
    assert all(v >= 0 for v in rec["seconds"].values()) and rec["seconds"]["sampling"] > 0 and rec["seconds"]["update"] > 0
    assert abs(rec["sample_s"] - rec["seconds"]["sampling"] - rec["seconds"]["reward"]) < 1e-9
    assert rec["sample_batch_size"] == 4  # the whole epoch (4 samples) in one sampling call on a CPU
    assert make(sample_batch_size=2).train_epoch()["sample_batch_size"] == 2  # an explicit cap is kept
    # little free memory: as few equal calls as fit (rows per sample: 1, the tiny model is unguided)
    per_row = memory.activation_bytes_per_row(tr.pipe, (3, 32, 32), tr.pipe.encode_prompt(PROMPTS[:1], "cpu", 1, False)[0])
    for rows, bs in ((3, 2), (1, 1), (2, 2), (100, 4)):
        monkeypatch.setattr(memory, "available_bytes", lambda device, r=rows: int(r * per_row / memory.MEMORY_FRACTION) + 1)
        assert tr.sampling_batch_size(4, PROMPTS) == bs, rows
    monkeypatch.setattr(memory, "available_bytes", lambda device: None)  # unknown memory: one call
    assert tr.sampling_batch_size(6, PROMPTS) == 6


def test_automatic_sampling_layout_is_the_same_training_run_as_one_explicit_call():
    """sample_batch_size=None on a CPU is one call: the same samples and weights as sample_batch_size=samples_per_epoch."""
    a, b = make(sample_batch_size=None), make(sample_batch_size=4)
    ra, rb = a.train_epoch(), b.train_epoch()
    assert ra["reward_mean"] == rb["reward_mean"] and same(weights(a), weights(b))
