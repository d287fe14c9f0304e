"""Checkpoints: nothing of the user's overwritten, nothing lost on a kill mid-save, damaged files named,
config changes and other base models caught on resume (checkpoint.py, trainer_checkpoint.py)."""
import copy
import functools
import json
import os
import shutil
import warnings

import pytest
import torch

from pxpo_lite import checkpoint as ckpt
from pxpo_lite.checkpoint import CheckpointError, load_checkpoint, recover_checkpoint, save_checkpoint
from pxpo_lite.models import build_tiny_pipeline
from pxpo_lite.trainer import TrainConfig, Trainer
from pxpo_lite.trainer_checkpoint import load_trainer_checkpoint, save_trainer_checkpoint

PROMPTS = ["a bald portrait with a red shirt on a blue background"]


@functools.lru_cache(maxsize=None)
def _base_pipe(seed=0):
    return build_tiny_pipeline(seed)


def make(seed=0, **kw):
    base = dict(num_steps=3, samples_per_epoch=2, sample_batch_size=2, train_batch_size=2, progress=False,
                stat_buffer_size=4, stat_min_count=2)
    return Trainer(copy.deepcopy(_base_pipe(seed)), "blue", TrainConfig(**{**base, **kw}), prompts=PROMPTS)


def weights(tr):
    return {k: v.detach().clone() for k, v in tr.model_state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def small_save(path, epoch):
    """A generic checkpoint with a marker: which save is at a path."""
    return save_checkpoint(path, {"w": torch.full((3,), float(epoch))}, {"epoch": epoch})


def epoch_at(path):
    return load_checkpoint(path).state["epoch"]


class KillAt:
    """Replace os.replace so that its n-th call raises (a kill at that point of a save)."""

    def __init__(self, n):
        self.n, self.calls, self.real = n, 0, os.replace

    def __call__(self, a, b):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt(f"killed at os.replace call {self.n}")
        return self.real(a, b)


# -- never overwrite what is not a checkpoint ---------------------------------------------------
def test_refuses_a_folder_of_user_files(tmp_path):
    user = tmp_path / "mywork"
    (user / "figs").mkdir(parents=True)
    (user / "notes.txt").write_text("keep me")
    (user / "figs" / "a.png").write_bytes(b"png")
    with pytest.raises(CheckpointError, match=r"mywork.*not empty.*figs/.*notes\.txt"):
        small_save(user, 1)
    tr = make()
    with pytest.raises(CheckpointError, match="notes.txt"):
        save_trainer_checkpoint(tr, user)
    assert (user / "notes.txt").read_text() == "keep me" and (user / "figs" / "a.png").exists()
    # a checkpoint with a user file added is not replaced either
    small_save(tmp_path / "ck", 1)
    (tmp_path / "ck" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="notes.txt"):
        small_save(tmp_path / "ck", 2)
    # a state.json of another program
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "state.json").write_text('{"format": "something else"}')
    with pytest.raises(CheckpointError, match="another format"):
        small_save(tmp_path / "other", 1)


def test_saves_into_missing_empty_or_checkpoint_folder(tmp_path):
    small_save(tmp_path / "new" / "ck", 1)
    (tmp_path / "empty").mkdir()
    small_save(tmp_path / "empty", 2)
    small_save(tmp_path / "empty", 3)  # replaces its own checkpoint
    assert epoch_at(tmp_path / "empty") == 3 and epoch_at(tmp_path / "new" / "ck") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "new"]  # no .tmp/.old left


def test_refuses_current_folder_its_parents_and_files(tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for bad in (".", "..", str(tmp_path), "./"):
        with pytest.raises(CheckpointError, match="current folder or one of its parents"):
            small_save(bad, 1)
    (work / "f.txt").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        small_save("f.txt", 1)
    small_save("sub", 1)  # a sub-folder of the current folder is fine
    assert epoch_at("sub") == 1


# -- a kill in the middle of a save loses nothing -----------------------------------------------
STAGE = ".ck.pxpo-tmp"  # the staging folder of a save to tmp_path / "ck"


def kill_save(monkeypatch, n, save):
    monkeypatch.setattr(os, "replace", KillAt(n))
    with pytest.raises(KeyboardInterrupt):
        save()
    monkeypatch.undo()


@pytest.mark.parametrize("n", [2, 3, 4])  # a save swaps in 4 files (state.json last): a kill after 1, 2 or 3
def test_a_kill_during_the_swap_keeps_the_path_and_the_new_checkpoint(tmp_path, monkeypatch, n):
    """Issue 20, data loss 3: the caller's usual ``if os.path.exists(ck): load`` must find the new checkpoint."""
    ck = tmp_path / "ck"
    small_save(ck, 1)
    kill_save(monkeypatch, n, lambda: small_save(ck, 2))
    assert os.path.exists(ck) and (tmp_path / STAGE).is_dir()  # the old two-rename swap left no ck here
    with pytest.warns(UserWarning, match=STAGE):
        assert epoch_at(ck) == 2  # loading reads the complete new copy, renames nothing
    assert (tmp_path / STAGE).is_dir()
    with pytest.warns(UserWarning, match="recovered"):  # the next save puts it in place first
        assert recover_checkpoint(ck) == tmp_path / STAGE
    assert epoch_at(ck) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert sorted(p.name for p in ck.iterdir()) == sorted(ckpt.OWN_NAMES)


def test_a_kill_before_the_swap_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    ck = tmp_path / "ck"
    small_save(ck, 1)
    kill_save(monkeypatch, 1, lambda: small_save(ck, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert epoch_at(ck) == 1  # the save had not begun to replace anything
    assert recover_checkpoint(ck) is None and sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_a_kill_while_staging_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    ck = tmp_path / "ck"
    small_save(ck, 1)
    real = ckpt.save_file
    monkeypatch.setattr(ckpt, "save_file", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt("killed")))
    with pytest.raises(KeyboardInterrupt):
        small_save(ck, 2)
    monkeypatch.setattr(ckpt, "save_file", real)
    assert epoch_at(ck) == 1 and (tmp_path / STAGE / ckpt.MARKER).is_file()
    small_save(ck, 3)  # the partial staging folder is ours: removed
    assert epoch_at(ck) == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_kill_at_first_save_then_restart(tmp_path, monkeypatch):
    ck = tmp_path / "ck"
    kill_save(monkeypatch, 1, lambda: small_save(ck, 1))
    assert os.path.exists(ck)
    with pytest.warns(UserWarning, match=STAGE):
        assert epoch_at(ck) == 1
    with pytest.warns(UserWarning, match="recovered"):
        small_save(ck, 2)
    assert epoch_at(ck) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_trainer_resumes_from_a_save_killed_mid_swap_with_the_exists_check(tmp_path, monkeypatch):
    tr = make(use_lora=True)
    tr.train(1)
    ck = tmp_path / "ck"
    save_trainer_checkpoint(tr, ck)
    tr.train(1)
    w2 = weights(tr)
    kill_save(monkeypatch, 2, lambda: save_trainer_checkpoint(tr, ck))  # model swapped in, the rest not
    fresh = make(use_lora=True)
    if os.path.exists(ck):  # what a training script does on restart
        with pytest.warns(UserWarning, match="interrupted save"):
            fresh.load_checkpoint(ck)
    assert fresh.epoch == 2 and same(w2, weights(fresh))
    with pytest.warns(UserWarning, match="recovered"):
        save_trainer_checkpoint(fresh, ck)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"] and load_checkpoint(ck).state["epoch"] == 2


# -- a user's folders beside a checkpoint are never touched (issue 20, data loss 1-2) ------------
def test_a_users_old_and_tmp_folders_are_never_deleted(tmp_path):
    for name in ("run1", "run2", "run3"):
        (tmp_path / (name + ".old")).mkdir()
        (tmp_path / (name + ".tmp")).mkdir()
        (tmp_path / (name + ".old") / "notes.txt").write_text("mine")
    small_save(tmp_path / "run1", 1)
    shutil.copytree(tmp_path / "run1", tmp_path / "run1.old", dirs_exist_ok=True)  # cp -r run1 run1.old
    small_save(tmp_path / "run1", 2)
    small_save(tmp_path / "run2", 1)
    small_save(tmp_path / "run2", 2)
    small_save(tmp_path / "run3", 1)
    for name in ("run1", "run2", "run3"):
        assert (tmp_path / (name + ".old") / "notes.txt").read_text() == "mine" and (tmp_path / (name + ".tmp")).is_dir()
    assert epoch_at(tmp_path / "run1.old") == 1 and epoch_at(tmp_path / "run1") == 2


def test_a_users_backup_is_not_loaded_for_a_damaged_checkpoint(tmp_path):
    small_save(tmp_path / "run4", 1)
    shutil.copytree(tmp_path / "run4", tmp_path / "run4.old")
    small_save(tmp_path / "run4", 2)
    f = tmp_path / "run4" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match="run4'.*model.safetensors is corrupt"):
        load_checkpoint(tmp_path / "run4")
    small_save(tmp_path / "run4", 3)  # a damaged checkpoint of ours is replaced; the backup stays as it was
    assert epoch_at(tmp_path / "run4.old") == 1 and epoch_at(tmp_path / "run4") == 3


def test_a_staging_name_that_is_not_ours_is_refused_and_kept(tmp_path):
    ck = tmp_path / "ck"
    small_save(ck, 1)
    (tmp_path / STAGE).mkdir()
    (tmp_path / STAGE / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match=r"\.ck\.pxpo-tmp.*not a save of this package.*move it away"):
        small_save(ck, 2)
    (tmp_path / STAGE / "notes.txt").unlink()  # an empty folder without our marker: still not ours
    with pytest.raises(CheckpointError, match="pxpo-save.json"):
        small_save(ck, 2)
    assert (tmp_path / STAGE).is_dir() and epoch_at(ck) == 1


def test_checkpoint_named_files_without_a_state_json_are_not_replaced(tmp_path):
    user = tmp_path / "export"
    user.mkdir()
    (user / "model.safetensors").write_bytes(b"my own weights")
    with pytest.raises(CheckpointError, match="model.safetensors.*without a state.json"):
        small_save(user, 1)
    assert (user / "model.safetensors").read_bytes() == b"my own weights"


# -- damaged files: CheckpointError naming the file and the fix ---------------------------------
@pytest.mark.parametrize("content,match", [
    ("[1, 2]", "state.json holds a JSON list"),
    ("{not json", "state.json is not valid JSON"),
    ('{"format": "pxpo-lite-checkpoint/1"}', "no 'sha256' table"),
])
def test_damaged_state_json(tmp_path, content, match):
    small_save(tmp_path / "ck", 1)
    (tmp_path / "ck" / "state.json").write_text(content)
    with pytest.raises(CheckpointError, match=match + ".*restore the folder from a backup"):
        load_checkpoint(tmp_path / "ck")
    small_save(tmp_path / "ck", 2)  # a damaged checkpoint of ours may be replaced
    assert epoch_at(tmp_path / "ck") == 2


@pytest.mark.parametrize("key,value", [("epoch", None), ("global_step", -1), ("metrics", {}), ("config", [])])
def test_damaged_trainer_state_is_named_not_keyerror(tmp_path, key, value):
    tr = make()
    save_trainer_checkpoint(tr, tmp_path / "ck")
    sj = tmp_path / "ck" / "state.json"
    st = json.loads(sj.read_text())
    if value is None:
        del st[key]
    else:
        st[key] = value
    sj.write_text(json.dumps(st))
    with pytest.raises(CheckpointError, match=f"state.json is damaged: '{key}'.*restore"):
        load_trainer_checkpoint(make(), tmp_path / "ck")


@pytest.mark.parametrize("name", ckpt.FILES)
def test_truncated_safetensors(tmp_path, name):
    tr = make()
    tr.train(1)
    save_trainer_checkpoint(tr, tmp_path / "ck")
    f = tmp_path / "ck" / name
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match=f"{name} is corrupt.*restore"):
        load_trainer_checkpoint(make(), tmp_path / "ck")


# -- resuming: config and base model ------------------------------------------------------------
def test_resume_is_exact_and_silent_with_the_same_config(tmp_path):
    full = make(use_lora=True, learning_rate=1e-2)
    full.train(2)
    part = make(use_lora=True, learning_rate=1e-2)
    part.train(1)
    save_trainer_checkpoint(part, tmp_path / "ck")
    st = json.loads((tmp_path / "ck" / "state.json").read_text())
    assert st["config"] == part.config.to_dict() and len(st["base_fingerprint"]) == 16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed = load_trainer_checkpoint(make(use_lora=True, learning_rate=1e-2), tmp_path / "ck")
    resumed.train(1)
    assert same(weights(full), weights(resumed))


def test_new_learning_rate_warns_and_is_used(tmp_path):
    tr = make(learning_rate=1e-3)
    tr.train(1)
    save_trainer_checkpoint(tr, tmp_path / "ck")
    new = make(learning_rate=2e-3, max_grad_norm=0.5)
    with pytest.warns(UserWarning, match=r"learning_rate: 0.001 → 0.002.*max_grad_norm: 1.0 → 0.5"):
        load_trainer_checkpoint(new, tmp_path / "ck")
    assert new.optimizer.param_groups[0]["lr"] == 2e-3  # before: the checkpoint's 1e-3, silently
    assert new.optimizer.state_dict()["state"]  # the AdamW moments were restored


@pytest.mark.parametrize("field,value", [("num_steps", 4), ("eta", 0.5), ("stat_buffer_size", 8), ("method", "pxpo")])
def test_config_change_that_changes_meaning_raises(tmp_path, field, value):
    save_trainer_checkpoint(make(), tmp_path / "ck")
    with pytest.raises(CheckpointError, match=field):
        load_trainer_checkpoint(make(**{field: value}), tmp_path / "ck")


def test_lora_change_raises(tmp_path):
    save_trainer_checkpoint(make(use_lora=True), tmp_path / "ck")
    with pytest.raises(CheckpointError, match="lora_rank"):
        load_trainer_checkpoint(make(use_lora=True, lora_rank=2), tmp_path / "ck")
    with pytest.raises(CheckpointError, match="use_lora=True"):
        load_trainer_checkpoint(make(use_lora=False), tmp_path / "ck")


def test_lora_checkpoint_on_another_base_model_raises(tmp_path):
    tr = make(use_lora=True)
    save_trainer_checkpoint(tr, tmp_path / "ck")
    fp = json.loads((tmp_path / "ck" / "state.json").read_text())["base_fingerprint"]
    other = make(seed=1, use_lora=True)
    fp_other = ckpt.base_fingerprint(other.pipe.unet)
    assert fp != fp_other and fp == ckpt.base_fingerprint(_base_pipe(0).unet)  # adapters left out
    with pytest.raises(CheckpointError, match=f"another base model.*{fp}.*{fp_other}"):
        load_trainer_checkpoint(other, tmp_path / "ck")


def test_fields_missing_from_an_older_checkpoint_take_their_defaults(tmp_path):
    """A checkpoint saved before a config field existed (keep_beta, the speed options) resumes
    silently with that field's default; keep_beta changes the objective, so a new value is breaking."""
    save_trainer_checkpoint(make(), tmp_path / "ck")
    state_path = tmp_path / "ck" / "state.json"
    st = json.loads(state_path.read_text())
    for k in ("keep_beta", "channels_last", "prompt_cache"):
        del st["config"][k]
    state_path.write_text(json.dumps(st))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_trainer_checkpoint(make(), tmp_path / "ck")
    with pytest.raises(CheckpointError, match="keep_beta"):
        load_trainer_checkpoint(make(keep_beta=1.0), tmp_path / "ck")
