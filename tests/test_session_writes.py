"""Feedback session writes (issue 20, data loss 6-8): overwrite checks the recorded hashes before it
deletes anything, a failed round save does not block later rounds, and a manifest temp file left
by a kill is cleaned up (session_store.py; no model needed)."""
import errno
import json
import os

import numpy as np
import pytest
import torch

from pxpo_lite import session_store
from pxpo_lite.session_store import MANIFEST, SessionError, SessionStore

H = W = 8
RNG = np.random.default_rng(1)
IMG = [RNG.random((3, H, W), dtype=np.float32) for _ in range(4)]
HEAT = [np.clip(RNG.normal(size=(H, W)), -1, 1).astype(np.float32) for _ in range(3)]


def adapter(i):
    return {"a.lora_A": torch.full((2, 4), float(i)), "a.lora_B": torch.full((4, 2), -float(i))}


def started(folder):
    st = SessionStore(folder)
    st.start({"prompt": "p", "seed": 3}, {"image": IMG[0]})
    return st


def save(st, i, ad=None):
    st.save_round(i, {"heatmap": HEAT[i - 1], "image_before": IMG[i - 1], "image": IMG[i]}, ad if ad is not None else adapter(i))


# -- 6: overwrite=True deletes only files with their recorded hash -----------------------------
def test_an_edited_manifest_cannot_make_overwrite_delete_a_user_file(tmp_path):
    folder = tmp_path / "s"
    st = started(folder)
    save(st, 1)
    (folder / "round_001" / "essay.txt").write_text("my essay")
    m = json.loads((folder / MANIFEST).read_text())
    m["rounds"][0]["files"]["essay.txt"] = "0" * 64  # listed, with a hash that is not the file's
    (folder / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(SessionError, match=r"essay\.txt.*do not match.*nothing was deleted"):
        SessionStore(folder).start({"prompt": "q"}, {"image": IMG[1]}, overwrite=True)
    assert (folder / "round_001" / "essay.txt").read_text() == "my essay"
    assert (folder / MANIFEST).exists() and (folder / "round_001" / "adapter.safetensors").exists()


def test_a_replaced_session_file_is_not_deleted(tmp_path):
    folder = tmp_path / "s"
    save(started(folder), 1)
    (folder / "round_001" / "image.png").write_bytes(b"the user's own picture now")
    with pytest.raises(SessionError, match=r"image\.png.*nothing was deleted"):
        SessionStore(folder).start({"prompt": "q"}, {"image": IMG[1]}, overwrite=True)
    assert (folder / "round_001" / "image.png").read_bytes() == b"the user's own picture now"


def test_a_version_1_manifest_is_not_used_to_delete(tmp_path):
    folder = tmp_path / "s"
    save(started(folder), 1)
    m = json.loads((folder / MANIFEST).read_text())
    m["version"] = 1
    for e in [m["initial"]] + m["rounds"]:
        e["files"] = list(e["files"])
    (folder / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(SessionError, match="version-1.*nothing was deleted"):
        SessionStore(folder).start({"prompt": "q"}, {"image": IMG[1]}, overwrite=True)
    assert (folder / "round_001" / "image.npy").exists()


def test_overwrite_of_an_intact_session_still_works(tmp_path):
    folder = tmp_path / "s"
    save(started(folder), 1)
    SessionStore(folder).start({"prompt": "q"}, {"image": IMG[1]}, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["round_000", MANIFEST]


# -- 7: a failed round save does not poison later rounds -------------------------------------------
def test_a_round_blocked_by_a_user_folder_is_saved_with_the_next_one(tmp_path):
    folder = tmp_path / "s"
    st = started(folder)
    save(st, 1)
    (folder / "round_002").mkdir()
    (folder / "round_002" / "essay.txt").write_text("mine")
    live = adapter(2)
    with pytest.raises(SessionError, match=r"essay\.txt.*round 2 was not saved and is kept"):
        save(st, 2, live)
    for v in live.values():
        v.add_(100.0)  # the training goes on: the kept round must hold the adapter as it was
    with pytest.raises(SessionError, match="essay.txt"):
        save(st, 3)  # still in the way: round 3 waits too, no 'index must be the next round'
    (folder / "round_002" / "essay.txt").rename(tmp_path / "essay.txt")
    (folder / "round_002").rmdir()
    st.save_round(4, {"image": IMG[3]}, adapter(4))
    s = SessionStore(folder).load()
    assert [r.index for r in s.rounds] == [1, 2, 3, 4] and st.pending == []
    np.testing.assert_array_equal(s.rounds[1].arrays["image"], IMG[2])
    ad2 = session_store.load_file(str(folder / "round_002" / "adapter.safetensors"))
    assert torch.equal(ad2["a.lora_A"], adapter(2)["a.lora_A"])


def test_a_disk_full_error_is_kept_and_retried(tmp_path, monkeypatch):
    folder = tmp_path / "s"
    st = started(folder)
    real = session_store.save_npy
    calls = {"n": 0}

    def full(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(session_store, "save_npy", full)
    with pytest.raises(OSError, match="No space left"):
        save(st, 1)
    assert st.pending and not (folder / "round_001").exists()
    save(st, 2)  # the disk has room again: round 1, then round 2
    assert [r.index for r in SessionStore(folder).load().rounds] == [1, 2]


def test_a_bad_round_is_refused_not_kept(tmp_path):
    st = started(tmp_path / "s")
    with pytest.raises(ValueError, match="NaN"):
        st.save_round(1, {"image": np.full((3, H, W), np.nan, np.float32)}, adapter(1))
    assert st.pending == []
    save(st, 1)


# -- 8: a manifest temp file left by a kill is cleaned up ----------------------------------------
def test_a_manifest_temp_left_by_a_kill_is_removed_on_the_next_open(tmp_path, monkeypatch):
    folder = tmp_path / "s"
    st = started(folder)
    real = os.replace

    def kill(a, b):
        if str(b).endswith(MANIFEST):
            raise KeyboardInterrupt("killed during the manifest write")
        return real(a, b)

    monkeypatch.setattr(os, "replace", kill)
    monkeypatch.setattr(session_store, "atomic_write_json", _leaky_atomic_write_json)
    with pytest.raises(KeyboardInterrupt):
        save(st, 1)
    monkeypatch.undo()
    left = [p.name for p in folder.iterdir() if p.name.startswith(f".{MANIFEST}.")]
    assert len(left) == 1
    (folder / ".session.json.notes.tmp").write_text("a user file with a similar name")
    assert SessionStore(folder).load().rounds == []  # the round did not count: its manifest write was killed
    assert not (folder / left[0]).exists() and (folder / ".session.json.notes.tmp").exists()


def _leaky_atomic_write_json(path, obj, indent=1):
    """atomic_write_json as a SIGKILL sees it: the temp file is written and nothing cleans it up."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def test_a_feedback_session_goes_on_after_a_failed_round_save(tmp_path):
    from pxpo_lite import build_tiny_pipeline, world
    from pxpo_lite.feedback import FeedbackSession, RefineConfig

    torch.set_num_threads(1)
    pipe = build_tiny_pipeline(0)
    folder = tmp_path / "s"
    cfg = RefineConfig(num_steps=4, updates_per_round=1, learning_rate=1e-2, lora_rank=2)
    s = FeedbackSession(pipe, world.all_prompts()[0], seed=1, folder=folder, config=cfg)
    heat = np.zeros((32, 32), np.float32)
    heat[:8] = 1.0
    (folder / "round_001").mkdir()
    (folder / "round_001" / "essay.txt").write_text("mine")
    with pytest.raises(SessionError, match="round 1 was not saved and is kept"):
        s.step(heat)
    (folder / "round_001" / "essay.txt").rename(tmp_path / "essay.txt")
    s.step(heat)  # before: 'index must be the next round, 1, got 2', for every later round
    saved = FeedbackSession.load(folder, pipe)
    assert len(saved.rounds) == 2
    np.testing.assert_allclose(saved.images[-1], s.images[-1], atol=1e-6)
