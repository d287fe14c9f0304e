"""Issue 20, unclear errors: numbers that are numbers are accepted up front; meta tensors, 0/255 masks and
NaN checkpoints are named for what they are."""
import numpy as np
import pytest
import torch

from pxpo_lite import ddim, losses, sampling
from pxpo_lite.config_checks import as_int, as_real, check_number, check_positive_int
from pxpo_lite.train_config import TrainConfig, check_config


def test_numpy_scalars_and_0d_tensors_are_numbers_converted_up_front():
    c = TrainConfig(clip_range=np.float32(0.2), learning_rate=torch.tensor(1e-3), num_steps=np.int64(4), eta=np.float32(1.0),
                    seed=np.int64(2), keep_beta=torch.tensor(0.5), adam_betas=(np.float32(0.9), 0.999), timestep_batch=torch.tensor(2))
    check_config(c)
    assert (type(c.clip_range), type(c.learning_rate), type(c.num_steps), type(c.eta), type(c.seed), type(c.keep_beta),
            type(c.timestep_batch)) == (float, float, int, float, int, float, int)
    assert c.adam_betas == (pytest.approx(0.9), 0.999) and c.num_steps == 4
    # the converted values pass the later checks that take Python numbers only
    lp = torch.zeros(2, 3, 4, 4)
    losses.ddpo_loss(lp, lp, torch.zeros(2), clip_range=c.clip_range)
    assert ddim.check_eta(np.float32(0.5)) == 0.5 and ddim.check_eta(torch.tensor(1.0)) == 1.0
    assert sampling.resolve_guidance_scale(object(), np.float64(2.0)) == 2.0


@pytest.mark.parametrize("bad", [True, np.bool_(True), torch.tensor([0.1, 0.2]), torch.tensor(True), "0.1", float("nan"),
                                 torch.empty((), device="meta")])
def test_what_is_not_a_number_is_still_refused(bad):
    assert as_real(bad) is None or not np.isfinite(as_real(bad))
    with pytest.raises(ValueError, match="clip_range must be a finite number"):
        check_number("clip_range", bad, above=0)
    with pytest.raises(ValueError, match="must be an int >= 1"):
        check_positive_int("num_steps", bad if not isinstance(bad, float) else 2.5)
    assert as_int(np.int32(3)) == 3 and as_int(torch.tensor(3)) == 3 and as_int(torch.tensor(3.0)) is None


def test_keep_weights_from_a_0_255_mask_says_divide_by_255():
    from pxpo_lite.keep import keep_weights_from_heatmap, keep_weights_from_mask

    m = np.zeros((8, 8), np.float32)
    m[2:4] = 255
    with pytest.raises(ValueError, match=r"mask values must lie in \[0, 1\] \(1 = inside the region.*got \[0, 255\].*divide it by 255"):
        keep_weights_from_mask(m, (4, 4))
    with pytest.raises(ValueError, match=r"mask values must lie in \[0, 1\].*got \[-0\.5, -0\.5\]"):
        keep_weights_from_mask(np.full((8, 8), -0.5, np.float32), (4, 4))
    assert torch.equal(keep_weights_from_mask(m / 255, (4, 4)), keep_weights_from_mask(torch.from_numpy(m / 255), (4, 4)))
    with pytest.raises(ValueError, match=r"heatmap values must lie in \[-1, 1\] \(−1 dislike"):
        keep_weights_from_heatmap(np.full((8, 8), 3.0, np.float32), (4, 4))


def test_a_checkpoint_with_nan_weights_names_the_file_and_tensor(tmp_path):
    from pxpo_lite.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "ck", {"unet.conv.weight": torch.tensor([1.0, float("nan")]), "b": torch.zeros(2)}, {"epoch": 1})
    with pytest.raises(CheckpointError, match=r"ck' holds NaN/inf values in \['model.safetensors: unet.conv.weight'\].*earlier checkpoint"):
        load_checkpoint(tmp_path / "ck")
    save_checkpoint(tmp_path / "ok", {"b": torch.zeros(2)}, {"epoch": 1})
    assert torch.equal(load_checkpoint(tmp_path / "ok").model["b"], torch.zeros(2))
