"""Config fields are type-checked (issue 20, silent wrong results): use_lora="no" is not LoRA, and
train() refuses a checkpoint setting that would never save."""
import pytest

from pxpo_lite.models import build_tiny_pipeline
from pxpo_lite.train_config import TrainConfig, check_config
from pxpo_lite.trainer import Trainer


@pytest.mark.parametrize("bad", ["no", "False", 0, 1])
def test_use_lora_must_be_a_bool_or_none(bad):
    with pytest.raises(ValueError, match=rf"use_lora must be True, False or None.*got {bad!r}"):
        check_config(TrainConfig(use_lora=bad))
    for ok in (True, False, None):
        check_config(TrainConfig(use_lora=ok))


@pytest.fixture(scope="module")
def trainer():
    cfg = TrainConfig(num_steps=2, samples_per_epoch=2, sample_batch_size=2, train_batch_size=2, progress=False)
    return Trainer(build_tiny_pipeline(0), "blue", cfg, prompts=["a bald portrait with a red shirt on a blue background"])


@pytest.mark.parametrize("every", [-1, 1.5, True, "2"])
def test_checkpoint_every_must_be_an_int(trainer, tmp_path, every):
    with pytest.raises(ValueError, match=rf"checkpoint_every must be an int >= 0.*got {every!r}"):
        trainer.train(2, checkpoint_dir=tmp_path / "ck", checkpoint_every=every)
    assert trainer.epoch == 0


def test_a_checkpoint_setting_that_never_saves_is_refused(trainer, tmp_path):
    with pytest.raises(ValueError, match=r"checkpoint_dir=.*checkpoint_every=0 would never save.*pass both"):
        trainer.train(2, checkpoint_dir=tmp_path / "ck")
    with pytest.raises(ValueError, match=r"checkpoint_dir=None with checkpoint_every=1 would never save"):
        trainer.train(2, checkpoint_every=1)
    assert trainer.epoch == 0 and not (tmp_path / "ck").exists()
    trainer.train(1, checkpoint_dir=tmp_path / "ck", checkpoint_every=1)
    assert (tmp_path / "ck" / "state.json").exists()
