"""The Stable Diffusion 3 path (issue 23, part 5): a tiny SD3 pipeline built in code runs Flow-GRPO's
sampler, its re-scoring and one FlowTrainer epoch with LoRA on the transformer, with the same calls as
the tiny flow model; the SD3.5 loader fails clearly offline. Full mode (SD3.5-medium on a GPU) is not run."""
import math
import warnings

import pytest
import torch

from pxpo_lite import lora, sd, sd3
from pxpo_lite.advantages import NoSignalWarning
from pxpo_lite.flow import FlowTrainer
from pxpo_lite.flow_sampling import FlowTrajectory, rescore, sample_flow, step_log_probs, steps_means
from pxpo_lite.trainer import TrainConfig

PROMPTS = ["a woman with red hair", "a man with a blue shirt"]


@pytest.fixture(scope="module")
def pipe():
    return sd3.build_tiny_sd3_pipeline(0)


@pytest.fixture(scope="module")
def traj(pipe):
    return sample_flow(pipe, PROMPTS, num_steps=3, noise_level=0.7, generator=torch.Generator().manual_seed(0), progress=False)


def test_the_tiny_pipeline_is_a_diffusers_sd3_pipeline(pipe):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    assert isinstance(pipe, StableDiffusion3Pipeline) and isinstance(pipe.transformer, SD3Transformer2DModel)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.vae.config.latent_channels == 16
    assert isinstance(pipe.text_encoder, CLIPTextModelWithProjection) and isinstance(pipe.text_encoder_2, CLIPTextModelWithProjection)
    assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None
    assert sd.build_tiny_sd3_pipeline is sd3.build_tiny_sd3_pipeline and sd.load_sd3_pipeline is sd3.load_sd3_pipeline
    view = sd3.as_flow_pipeline(pipe)
    assert sd3.as_flow_pipeline(pipe) is view and sd3.as_flow_pipeline(view) is view and view.transformer is pipe.transformer


def test_sample_flow_records_per_element_log_probs_of_the_latent_shape(pipe, traj):
    assert isinstance(traj, FlowTrajectory) and traj.guidance_scale == sd3.SD3_DEFAULT_GUIDANCE
    assert traj.latents.shape == (2, 4, 16, 8, 8) and traj.log_probs.shape == (2, 3, 16, 8, 8)
    assert traj.images.shape == (2, 3, 64, 64) and 0 <= traj.images.min() and traj.images.max() <= 1
    assert torch.isfinite(traj.log_probs).all()
    # the same seed gives the same trajectory
    again = sample_flow(pipe, PROMPTS, num_steps=3, noise_level=0.7, generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.equal(again.latents, traj.latents)


def test_rescoring_reproduces_the_sampling_log_probs_with_gradients(pipe, traj):
    assert (rescore(pipe, traj) - traj.log_probs).abs().max() <= 1e-5
    lps = step_log_probs(pipe, traj, [0, 2])  # two steps in one transformer call
    for i, lp in zip([0, 2], lps):
        assert lp.shape == (2, 16, 8, 8) and lp.requires_grad
        torch.testing.assert_close(lp.detach(), traj.log_probs[:, i], atol=1e-4, rtol=1e-4)
    g = steps_means(pipe, traj, [1])[0]
    assert g.mean.shape == (2, 16, 8, 8)


def test_decoding_uses_the_vae_scaling_and_shift_factors(pipe, traj):
    x0 = traj.latents[:, -1]
    vae = pipe.vae
    with torch.no_grad():
        want = (vae.decode(x0 / vae.config.scaling_factor + vae.config.shift_factor).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(traj.images, want)


def test_the_packed_prompt_carries_the_pooled_projections(pipe):
    view = sd3.as_flow_pipeline(pipe)
    e, _, p, _ = pipe.encode_prompt(PROMPTS, None, None, do_classifier_free_guidance=False, max_sequence_length=view.max_sequence_length)
    cond, uncond = view.encode_prompt(PROMPTS, "cpu", 1, False)
    assert uncond is None and torch.equal(cond[:, :-1], e) and torch.equal(cond[:, -1, : p.shape[1]], p)
    x, t = torch.randn(2, 16, 8, 8), torch.tensor([500.0])
    with torch.no_grad():
        got = view.unet(x, t[0], encoder_hidden_states=cond).sample
        want = pipe.transformer(hidden_states=x, timestep=t.expand(2), encoder_hidden_states=e, pooled_projections=p).sample
    torch.testing.assert_close(got, want)


def _trainer():
    pipe = sd3.build_tiny_sd3_pipeline(0)
    cfg = TrainConfig(method="ddpo", num_steps=3, eta=0.7, timestep_fraction=0.34, samples_per_epoch=4, sample_batch_size=4,
                      train_batch_size=2, use_lora=True, lora_targets=list(sd3.SD3_LORA_TARGETS), learning_rate=1e-2,
                      clip_range=0.2, keep_beta=0.01, progress=False, seed=0)
    return pipe, FlowTrainer(pipe, "blue", cfg, prompts=PROMPTS, group_size=2)


def test_one_grpo_epoch_with_lora_on_the_transformer_changes_the_adapters(tmp_path):
    pipe, tr = _trainer()
    names = lora.matching_modules(pipe.transformer, sd3.SD3_LORA_TARGETS)
    assert lora.has_lora(pipe.transformer) and any(n.endswith("attn.add_q_proj") for n in names)
    before = {k: v.clone() for k, v in tr.model_state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoSignalWarning)
        metrics = tr.train(1)
    after = tr.model_state_dict()
    assert math.isfinite(metrics[-1]["loss"]) and math.isfinite(metrics[-1]["keep_kl"])
    assert any(not torch.equal(before[k], after[k]) for k in before)
    tr.save_checkpoint(tmp_path / "ck")
    back = _trainer()[1].load_checkpoint(tmp_path / "ck")
    assert back.epoch == 1 and all(torch.equal(back.model_state_dict()[k], after[k]) for k in after)


def test_load_sd3_pipeline_offline_gives_a_clear_error(monkeypatch):
    with pytest.raises(RuntimeError, match="could not load the Stable Diffusion 3 pipeline"):
        sd3.load_sd3_pipeline("pxpo-lite/no-such-model", device="cpu", dtype=torch.float32, local_files_only=True)

    from diffusers import StableDiffusion3Pipeline

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(StableDiffusion3Pipeline, "from_pretrained", offline)
    with pytest.raises(RuntimeError, match="internet access .* login") as e:
        sd.load_sd3_pipeline(device="cpu")
    assert "stabilityai/stable-diffusion-3.5-medium" in str(e.value) and "build_tiny_sd3_pipeline" in str(e.value)
