"""TRL DDPOConfig -> TrainConfig mapping (pxpo_lite.trl_compat)."""
import dataclasses
import warnings

import pytest

from pxpo_lite.trainer import TrainConfig, check_config
from pxpo_lite.trl_compat import (
    TRL_DEFAULTS,
    TRL_FIELD_MAP,
    UnsupportedTRLSetting,
    train_config_from_trl,
    trl_run_settings,
)

# The benchmark's peer config (TRL's defaults except the sizes a CPU can run).
PEER = {
    "sample_num_steps": 20, "sample_eta": 1.0, "sample_guidance_scale": 5.0,
    "sample_batch_size": 4, "sample_num_batches_per_epoch": 4, "train_batch_size": 4,
    "train_learning_rate": 3e-4, "train_clip_range": 1e-4, "mixed_precision": "no", "num_epochs": 3,
}


def test_every_mapped_field_exists_in_trainconfig():
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(TRL_FIELD_MAP.values()) <= known


def test_peer_config_maps_field_by_field():
    c = train_config_from_trl(PEER)
    assert (c.num_steps, c.eta, c.guidance_scale) == (20, 1.0, 5.0)
    assert c.samples_per_epoch == 16 and c.train_batch_size == 4
    # TRL's 4 calls of 4 are a memory setting: the layout is left to our automatic rule (issue 22) ...
    assert c.sample_batch_size is None
    # ... and TRL's calls can be asked for
    assert train_config_from_trl(PEER, sample_batch_size=4).sample_batch_size == 4
    assert c.learning_rate == 3e-4 and c.clip_range == 1e-4 and c.mixed_precision == "no"
    assert c.use_lora is True and c.method == "ddpo"
    assert c.adam_betas == (0.9, 0.999) and c.adam_weight_decay == 1e-4 and c.adam_eps == 1e-8
    check_config(c)  # a valid pxpo-lite config
    assert trl_run_settings(PEER) == {"epochs": 3, "checkpoint_every": 1, "checkpoint_dir": None}


def test_missing_fields_take_trls_defaults_not_ours():
    c = train_config_from_trl({})
    assert c.num_steps == TRL_DEFAULTS["sample_num_steps"] == 50
    assert c.per_prompt_stats is False  # TRL's default; pxpo-lite's own default is True
    assert c.samples_per_epoch == 2 and c.mixed_precision == "fp16"


def test_processes_scale_samples_per_epoch_and_overrides_apply_last():
    c = train_config_from_trl(PEER, num_processes=2, method="pxpo", clip_range=None)
    assert c.samples_per_epoch == 32 and c.method == "pxpo" and c.clip_range is None


def test_accepts_a_dataclass_like_trls_ddpoconfig():
    @dataclasses.dataclass
    class DDPOConfig:  # the shape of trl.DDPOConfig (a dataclass)
        sample_num_steps: int = 10
        train_learning_rate: float = 1e-3

    c = train_config_from_trl(DDPOConfig())
    assert c.num_steps == 10 and c.learning_rate == 1e-3


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("train_cfg", False, "train_cfg"),
        ("negative_prompts", "blurry", "negative prompts"),
        ("train_use_8bit_adam", True, "8-bit"),
        ("push_to_hub", True, "uploads"),
    ],
)
def test_unsupported_settings_raise_with_what_to_do(field, value, words):
    with pytest.raises(UnsupportedTRLSetting, match=words):
        train_config_from_trl({**PEER, field: value})


def test_unknown_fields_and_types_are_named():
    with pytest.raises(ValueError, match="sample_num_stepz"):
        train_config_from_trl({"sample_num_stepz": 3})
    with pytest.raises(TypeError, match="DDPOConfig"):
        train_config_from_trl(["sample_num_steps", 3])
    with pytest.raises(ValueError, match="num_processes"):
        train_config_from_trl(PEER, num_processes=0)
    with pytest.raises(ValueError, match="learning_rat"):
        train_config_from_trl(PEER, learning_rat=1.0)


def test_ignored_logging_fields_are_reported():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        train_config_from_trl({**PEER, "exp_name": "x", "allow_tf32": True})
    assert any("exp_name" in str(x.message) and "allow_tf32" in str(x.message) for x in w)
