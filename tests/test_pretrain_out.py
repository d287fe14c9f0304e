"""``python -m pxpo_lite.pretrain --out DIR`` replaces only a folder it wrote (issue 20, data loss 4)."""
import json

import pytest

from pxpo_lite import pretrain


def _user_files(tmp_path):
    out = tmp_path / "DIR"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for name in ("DIR.old", "DIR.tmp"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "keep.txt").write_text("mine")
    return out


def test_out_with_user_files_is_refused_before_training(tmp_path):
    out = _user_files(tmp_path)
    with pytest.raises(ValueError, match=r"out=.*DIR.*notes\.txt.*move those files away"):
        pretrain.main(["diffusion", "--steps", "1", "--out", str(out)])
    with pytest.raises(ValueError, match=r"notes\.txt"):
        pretrain.train_segmenter(out, steps=1)
    assert (out / "notes.txt").read_text() == "mine"
    assert all((tmp_path / n / "keep.txt").read_text() == "mine" for n in ("DIR.old", "DIR.tmp"))


def test_a_save_replaces_its_own_folder_and_leaves_the_users_siblings(tmp_path):
    out = _user_files(tmp_path)
    (out / "notes.txt").unlink()
    pretrain.train_diffusion(out, steps=1, batch=2, warmup=0)
    info = json.loads((out / "TRAINING.json").read_text())
    assert "unet/diffusion_pytorch_model.safetensors" in info["files"] and "pxpo-save.json" not in info["files"]
    pretrain.train_diffusion(out, steps=1, batch=2, warmup=0)  # replaces what it wrote
    assert all((tmp_path / n / "keep.txt").read_text() == "mine" for n in ("DIR.old", "DIR.tmp"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DIR", "DIR.old", "DIR.tmp"]
    (out / "unet" / "mine.txt").write_text("added by the user")  # now it holds a file not recorded
    with pytest.raises(ValueError, match=r"unet/mine\.txt"):
        pretrain.train_diffusion(out, steps=1, batch=2, warmup=0)
    assert (out / "unet" / "mine.txt").exists()


def test_a_staging_folder_that_is_not_ours_is_refused(tmp_path):
    (tmp_path / ".DIR.pxpo-tmp").mkdir()
    (tmp_path / ".DIR.pxpo-tmp" / "x.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"\.DIR\.pxpo-tmp.*pxpo-save\.json"):
        pretrain.check_out(tmp_path / "DIR")
    assert (tmp_path / ".DIR.pxpo-tmp" / "x.txt").exists()


def test_the_shipped_folders_are_ours():
    from pxpo_lite import models

    pretrain.check_out(models.TINY_PIPELINE_DIR)  # TRAINING.json written before it listed its files
    pretrain.check_out(models.SEGMENTER_DIR)
