"""LoRA via peft/diffusers: merging folds the adapters into the weights without changing the output."""
from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from pxpo_lite import lora

TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8, cross_attention_dim=16, attention_head_dim=8,
)


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY_UNET).eval()


def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500]), torch.randn(2, 5, 16, generator=g)


@torch.no_grad()
def output(unet):
    x, t, c = inputs()
    return unet(x, t, encoder_hidden_states=c).sample


def adapted(seed: int = 0, targets=lora.TINY_TARGETS):
    """A tiny UNet with LoRA adapters whose B is non-zero, so the adapters change the output."""
    unet = tiny_unet(seed)
    lora.add_lora(unet, rank=4, alpha=8, target_modules=targets)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in lora.lora_parameters(unet):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return unet


@pytest.mark.parametrize("targets", [lora.SD_TARGETS, lora.TINY_TARGETS], ids=["attention", "attention+convs"])
def test_merged_unet_gives_the_adapted_output(targets):
    base_out = output(tiny_unet(0))
    unet = adapted(0, targets)
    before = output(unet)
    assert (before - base_out).abs().max() > 1e-3, "the adapters must change the output for this test to mean anything"
    assert lora.merge_and_unload(unet) is unet
    torch.testing.assert_close(output(unet), before, atol=1e-5, rtol=1e-5)
    assert not lora.has_lora(unet) and not getattr(unet, "peft_config", None)
    assert set(unet.state_dict()) == set(tiny_unet(0).state_dict()), "merging must restore the base architecture"


def test_merge_needs_adapters_and_a_merged_model_takes_new_ones():
    unet = tiny_unet()
    with pytest.raises(ValueError, match="no LoRA adapters to merge"):
        lora.merge_and_unload(unet)
    unet = adapted()
    lora.merge_and_unload(unet)
    merged = output(unet)
    lora.add_lora(unet, rank=2, target_modules=lora.SD_TARGETS)  # B = 0: output unchanged
    assert lora.has_lora(unet)
    torch.testing.assert_close(output(unet), merged, atol=1e-6, rtol=0)


def test_adding_twice_or_to_a_plain_module_is_an_error():
    unet = adapted()
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        lora.add_lora(unet)
    with pytest.raises(ValueError, match="rank must be a positive int"):
        lora.add_lora(tiny_unet(), rank=0)
    plain = torch.nn.Sequential()
    plain.add_module("to_q", torch.nn.Linear(4, 4))
    with pytest.raises(TypeError, match="diffusers model with adapter support"):
        lora.add_lora(plain)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        lora.has_lora("unet")


def test_wrapped_model_gets_clean_keys_and_merges(tmp_path):
    unet = tiny_unet()
    wrapped = torch.nn.DataParallel(unet)  # as a DDP/accelerate wrapper: the model sits at .module
    lora.add_lora(wrapped, rank=4, target_modules=lora.SD_TARGETS, init="gaussian")
    keys = list(lora.lora_state_dict(wrapped))
    assert keys and not any(k.startswith(("module.", "base_model.")) for k in keys)
    lora.save_lora(wrapped, tmp_path / "a")
    fresh = tiny_unet()
    lora.load_lora(fresh, tmp_path / "a")
    for k, v in lora.lora_state_dict(fresh).items():
        assert torch.equal(v, lora.lora_state_dict(unet)[k])
    lora.merge_and_unload(wrapped)
    assert not lora.has_lora(unet)


@pytest.mark.parametrize("targets", [lora.SD_TARGETS, lora.TINY_TARGETS])
def test_merged_adapters_for_sampling_restore_the_weights_bit_for_bit(targets):
    """lora.merged_adapters: the adapted output to float rounding inside the block; afterwards the very
    same weight tensors, unchanged, the adapters active and trainable (also when the block raises)."""
    unet = adapted(targets=targets).to(memory_format=torch.channels_last)
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    objects = {n: p for n, p in unet.named_parameters()}
    ref = output(unet)
    with lora.merged_adapters(unet):
        layers = [m for m in unet.modules() if isinstance(m, lora.LoraLayer)]
        assert layers and all(m.merged for m in layers)
        torch.testing.assert_close(output(unet), ref, atol=1e-5, rtol=1e-5)
    for _ in range(2):  # twice: nothing accumulates
        with pytest.raises(RuntimeError, match="boom"), lora.merged_adapters(unet):
            raise RuntimeError("boom")
    after = dict(unet.named_parameters())
    assert after.keys() == objects.keys() and all(after[n] is objects[n] for n in after)
    assert all(torch.equal(after[n], before[n]) for n in after)
    assert not any(m.merged for m in layers)
    assert torch.equal(output(unet), ref)
    assert all(p.requires_grad for p in lora.lora_parameters(unet))
    x, t, c = inputs()
    unet(x, t, encoder_hidden_states=c).sample.square().mean().backward()
    assert all(p.grad is not None for p in lora.lora_parameters(unet))
    with lora.merged_adapters(unet, enabled=False):  # off: nothing is touched
        assert not any(m.merged for m in layers) and all(p is objects[n] for n, p in unet.named_parameters())
    with lora.merged_adapters(tiny_unet()):  # no adapters: nothing to do
        pass
