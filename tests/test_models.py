"""The shipped tiny pipeline and segmenter: offline loading, contract, errors, round trips."""
import json
import shutil

import pytest
import torch

import pxpo_lite
from pxpo_lite import models, world


@pytest.fixture(scope="module")
def pipe():
    return pxpo_lite.load_tiny_pipeline(device="cpu")


def test_loads_offline(monkeypatch):
    # load time is measured by `python -m pxpo_lite.evaluate` (docs/model_eval.json), not asserted here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = pxpo_lite.load_tiny_pipeline()
    assert not pipe.unet.training


def test_sampling_contract_and_determinism(pipe):
    prompts = world.render(4, seed=0).prompts
    a = pipe(prompts, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt").images
    b = pipe(prompts, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert a.shape == (4, 3, 32, 32) and a.dtype == torch.float32
    assert 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b)
    pil = pipe(prompts[:1], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pil").images
    assert pil[0].size == (32, 32)


def test_looks_like_stable_diffusion(pipe):
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.scheduler, DDIMScheduler)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.tokenizer, CLIPTokenizer)
    cond, uncond = pipe.encode_prompt(["a bald portrait with a red shirt on a blue background"], "cpu", 2, True)
    assert cond.shape[0] == 2 and uncond.shape == cond.shape
    assert cond.shape[-1] == pipe.unet.config.cross_attention_dim


def test_save_and_reload_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    again = pxpo_lite.load_tiny_pipeline(path=tmp_path / "p")
    prompts = ["a portrait with short red hair and a white shirt on a navy background"]
    a = pipe(prompts, num_inference_steps=3, generator=torch.Generator().manual_seed(1)).images
    b = again(prompts, num_inference_steps=3, generator=torch.Generator().manual_seed(1)).images
    assert torch.equal(a, b)


def test_training_record_beside_weights():
    info = json.loads((models.TINY_PIPELINE_DIR / "TRAINING.json").read_text())
    for key in ("command", "data_seed", "steps", "wall_time_s"):
        assert key in info
    assert info["steps_done"] == info["steps"]
    seg = json.loads((models.SEGMENTER_DIR / "TRAINING.json").read_text())
    assert seg["heldout"]["pixel_accuracy"] >= 0.95 and seg["heldout"]["hair_iou"] >= 0.9


def test_shipped_weights_are_small():
    total = sum(p.stat().st_size for p in models.ASSETS.rglob("*.safetensors"))
    assert total <= 20 * 2**20


def test_unknown_words_and_empty_prompts(pipe):
    with pytest.raises(ValueError, match="never saw: \\['dragon'\\]"):
        pipe(["a portrait with a dragon"], num_inference_steps=2)
    with pytest.raises(ValueError, match="non-empty list"):
        pipe([], num_inference_steps=2)
    with pytest.raises(TypeError, match="must be a str"):
        pipe([3], num_inference_steps=2)


def test_missing_or_corrupt_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="pxpo_lite.pretrain"):
        pxpo_lite.load_tiny_pipeline(path=tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(models.TINY_PIPELINE_DIR, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RuntimeError, match="could not load the tiny pipeline"):
        pxpo_lite.load_tiny_pipeline(path=broken)
    with pytest.raises(FileNotFoundError, match="segmenter"):
        pxpo_lite.load_segmenter(path=tmp_path / "nope")
    (tmp_path / "seg").mkdir()
    (tmp_path / "seg" / "config.json").write_text("{}")
    (tmp_path / "seg" / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(RuntimeError, match="could not load the segmenter"):
        pxpo_lite.load_segmenter(path=tmp_path / "seg")


def test_segmenter_contract_and_accuracy():
    seg = pxpo_lite.load_segmenter()
    p = world.render(200, seed=10**9 + 123)
    with torch.no_grad():
        logits = seg(p.images)
    assert logits.shape == (200, len(world.PARTS), 32, 32)
    pred = logits.argmax(1)
    assert (pred == p.labels).float().mean() >= 0.95
    hair = world.PART_ID["hair"]
    iou = ((pred == hair) & (p.labels == hair)).sum() / ((pred == hair) | (p.labels == hair)).sum()
    assert iou >= 0.9
    with pytest.raises(ValueError, match="images must be"):
        seg(torch.zeros(2, 32, 32))


def test_tokenizer_is_offline_and_stable(tmp_path):
    tok = models.build_tokenizer()
    ids = tok(world.all_prompts()[:5]).input_ids
    tok.save_pretrained(tmp_path / "t")
    from transformers import CLIPTokenizer

    assert CLIPTokenizer.from_pretrained(tmp_path / "t")(world.all_prompts()[:5]).input_ids == ids
    longest = max(len(x) for x in tok(world.all_prompts()).input_ids)
    assert longest <= models.MAX_PROMPT_TOKENS
    # every world word is a single token
    for w in world.vocabulary():
        assert len(tok(w).input_ids) == 3, w


def _unet_weights(p):
    return {k: v.clone() for k, v in p.unet.state_dict().items()}


def test_pretrain_saves_the_ema_weights_and_restores_the_training_ones(tmp_path):
    """diffusers' EMAModel: the first update copies the weights; later ones lag behind them."""
    from pxpo_lite import pretrain

    out = tmp_path / "p"
    torch.manual_seed(0)
    trained = pretrain.train_diffusion(out, steps=1, batch=2, warmup=0)
    saved = pxpo_lite.load_tiny_pipeline(path=out)
    init = _unet_weights(models.build_tiny_pipeline(seed=0))
    torch.testing.assert_close(_unet_weights(saved), _unet_weights(trained), atol=1e-6, rtol=0)  # s - (s - p): rounding only
    assert any(not torch.equal(v, init[k]) for k, v in _unet_weights(saved).items()), "one step must train"
    trained = pretrain.train_diffusion(out, steps=2, batch=2, warmup=0)
    saved, now = _unet_weights(pxpo_lite.load_tiny_pipeline(path=out)), _unet_weights(trained)
    lag = max((v - now[k]).abs().max().item() for k, v in saved.items())
    assert lag > 1e-5, f"after two updates the EMA must lag the weights (max difference {lag})"
    info = json.loads((out / "TRAINING.json").read_text())
    assert info["steps_done"] == info["steps"] == 2 and info["warmup"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"], "no .tmp/.old folder left behind"


def test_pretrain_rejects_bad_steps(tmp_path):
    from pxpo_lite import pretrain

    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="steps must be a positive int"):
            pretrain.train_segmenter(tmp_path / "s", steps=bad)
    with pytest.raises(ValueError, match="warmup must be an int"):
        pretrain.train_diffusion(tmp_path / "d", steps=5, warmup=-1)
    assert pretrain.HELDOUT_WORLD_SEED > 10_000_000 * 2, "held-out world seeds lie above the training seeds"
