"""session_store: a feedback session's folder — round trip, hashes checked on load, paths kept inside,
overwrite deletes only the session's files, damaged files named (no model needed)."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pxpo_lite.files import sha256_file
from pxpo_lite.session_store import MANIFEST, SessionError, SessionStore

H = W = 8
RNG = np.random.default_rng(0)
IMG = [RNG.random((3, H, W), dtype=np.float32) for _ in range(3)]
HEAT = [np.clip(RNG.normal(size=(H, W)), -1, 1).astype(np.float32) for _ in range(2)]
ADAPTERS = [{"a.lora_A": torch.randn(2, 4), "a.lora_B": torch.full((4, 2), float(i))} for i in (1, 2)]


def saved(folder, rounds=2):
    st = SessionStore(folder)
    st.start({"prompt": "p", "seed": 3}, {"image": IMG[0]})
    for i in range(rounds):
        st.save_round(i + 1, {"heatmap": HEAT[i], "image_before": IMG[i], "image": IMG[i + 1]}, ADAPTERS[i],
                      {"source": "canvas", "stats": {"x": i}})
    return st


def manifest(folder):
    return json.loads((folder / MANIFEST).read_text())


def rewrite(folder, m):
    (folder / MANIFEST).write_text(json.dumps(m))


def test_round_trip_and_layout(tmp_path):
    st = saved(tmp_path / "s")
    assert st.exists()
    s = SessionStore(tmp_path / "s").load()
    assert s.meta == {"prompt": "p", "seed": 3}
    np.testing.assert_array_equal(s.initial["image"], IMG[0])
    assert [r.index for r in s.rounds] == [1, 2] and s.rounds[1].info == {"source": "canvas", "stats": {"x": 1}}
    np.testing.assert_array_equal(s.rounds[1].arrays["heatmap"], HEAT[1])
    np.testing.assert_array_equal(s.rounds[1].arrays["image"], IMG[2])
    assert all(torch.equal(s.adapter[k], ADAPTERS[1][k]) for k in ADAPTERS[1])
    m = manifest(tmp_path / "s")
    r2 = m["rounds"][1]
    assert r2["folder"] == "round_002" and sorted(r2["files"]) == sorted(
        ["heatmap.npy", "heatmap.png", "image_before.npy", "image.npy", "image.png", "adapter.safetensors"])
    assert all(sha256_file(tmp_path / "s" / "round_002" / n) == h for n, h in r2["files"].items())
    assert Image.open(tmp_path / "s" / "round_002" / "image.png").size == (W, H)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["round_000", "round_001", "round_002", MANIFEST]


def test_empty_session_loads(tmp_path):
    saved(tmp_path / "s", rounds=0)
    s = SessionStore(tmp_path / "s").load()
    assert s.rounds == [] and s.adapter is None


def test_continue_after_load(tmp_path):
    saved(tmp_path / "s", rounds=1)
    st = SessionStore(tmp_path / "s")
    st.load()
    st.save_round(2, {"heatmap": HEAT[1], "image": IMG[2]}, ADAPTERS[1])
    assert len(SessionStore(tmp_path / "s").load().rounds) == 2
    with pytest.raises(ValueError, match="index must be the next round, 3"):
        st.save_round(5, {"image": IMG[2]}, None)


def test_overwrite_deletes_only_the_sessions_files(tmp_path):
    folder = tmp_path / "s"
    saved(folder)
    (folder / "notes.txt").write_text("mine")
    (folder / "round_001" / "mine.txt").write_text("mine too")
    (folder / "round_007").mkdir()
    (folder / "round_007" / "plot.png").write_bytes(b"user")
    (folder / "round_backup.zip").write_bytes(b"user")
    with pytest.raises(SessionError, match="already holds a feedback session"):
        SessionStore(folder).start({"prompt": "q"}, {"image": IMG[0]})
    SessionStore(folder).start({"prompt": "q"}, {"image": IMG[1]}, overwrite=True)
    assert (folder / "notes.txt").read_text() == "mine"
    assert (folder / "round_001" / "mine.txt").read_text() == "mine too"  # before: every round_* was deleted
    assert sorted(p.name for p in (folder / "round_001").iterdir()) == ["mine.txt"]
    assert (folder / "round_007" / "plot.png").exists() and (folder / "round_backup.zip").exists()
    assert not (folder / "round_002").exists()
    s = SessionStore(folder).load()
    assert s.meta == {"prompt": "q"} and s.rounds == []
    np.testing.assert_array_equal(s.initial["image"], IMG[1])


def test_overwrite_with_a_damaged_manifest_deletes_nothing(tmp_path):
    folder = tmp_path / "s"
    saved(folder)
    (folder / MANIFEST).write_text("[1, 2]")
    with pytest.raises(SessionError, match="nothing was deleted"):
        SessionStore(folder).start({"prompt": "q"}, {"image": IMG[0]}, overwrite=True)
    assert (folder / "round_002" / "adapter.safetensors").exists()


def test_manifest_that_is_a_list_or_malformed(tmp_path):
    folder = tmp_path / "s"
    saved(folder)
    good = manifest(folder)
    rewrite(folder, [good])
    with pytest.raises(SessionError, match="holds a JSON list, not an object"):
        SessionStore(folder).load()
    rewrite(folder, {**good, "rounds": {"a": 1}})
    with pytest.raises(SessionError, match="malformed"):
        SessionStore(folder).load()
    rewrite(folder, {**good, "version": 99})
    with pytest.raises(SessionError, match="not a"):
        SessionStore(folder).load()


@pytest.mark.parametrize("bad", ["../s/round_000", "../other", "/tmp", "round_000/../../x"])
def test_manifest_paths_stay_inside_the_folder(tmp_path, bad):
    folder = tmp_path / "s"
    saved(folder)
    shutil.copytree(folder, tmp_path / "other")
    m = manifest(folder)
    m["rounds"][0]["folder"] = bad
    rewrite(folder, m)
    with pytest.raises(SessionError, match="not inside the session folder"):
        SessionStore(folder).load()
    with pytest.raises(SessionError, match="nothing was deleted"):
        SessionStore(folder).start({}, {"image": IMG[0]}, overwrite=True)
    assert (tmp_path / "other" / "round_001" / "image.npy").exists()


def test_corrupt_adapter_in_an_earlier_round(tmp_path):
    folder = tmp_path / "s"
    saved(folder)
    f = folder / "round_001" / "adapter.safetensors"
    f.write_bytes(f.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(SessionError, match="round_001/adapter.safetensors is corrupt"):
        SessionStore(folder).load()


def _replace_with_hash(folder, rnd, name, arr):
    np.save(folder / f"round_{rnd:03d}" / name, arr)
    m = manifest(folder)
    m["rounds"][rnd - 1]["files"][name] = sha256_file(folder / f"round_{rnd:03d}" / name)
    rewrite(folder, m)


def test_nan_or_wrong_shaped_heatmap_even_with_a_matching_hash(tmp_path):
    folder = tmp_path / "s"
    saved(folder)
    nan = HEAT[0].copy()
    nan[2, 3] = np.nan
    _replace_with_hash(folder, 1, "heatmap.npy", nan)
    with pytest.raises(SessionError, match=r"round_001/heatmap.npy is damaged.*1 NaN/inf"):
        SessionStore(folder).load()
    _replace_with_hash(folder, 1, "heatmap.npy", np.zeros((4, 4), np.float32))
    with pytest.raises(SessionError, match=r"round_001/heatmap.npy is damaged.*shape \(4, 4\), expected \(8, 8\)"):
        SessionStore(folder).load()


def test_truncated_last_round(tmp_path):
    folder = tmp_path / "s"
    saved(folder)
    f = folder / "round_002" / "image.npy"
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(SessionError, match="round_002/image.npy is corrupt.*delete the last entry of 'rounds'"):
        SessionStore(folder).load()
    (folder / "round_002" / "adapter.safetensors").unlink()
    with pytest.raises(SessionError, match="half-written.*adapter.safetensors"):
        SessionStore(folder).load()


def test_refuses_to_save_nan_or_wrong_shape(tmp_path):
    st = saved(tmp_path / "s", rounds=0)
    bad = IMG[1].copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="round 1: image holds 1 NaN/inf"):
        st.save_round(1, {"image": bad}, ADAPTERS[0])
    with pytest.raises(ValueError, match=r"round 1: heatmap has shape \(5, 5\)"):
        st.save_round(1, {"heatmap": np.zeros((5, 5))}, ADAPTERS[0])
    assert SessionStore(tmp_path / "s").load().rounds == []


def test_kill_while_saving_a_round_keeps_the_previous_rounds(tmp_path, monkeypatch):
    folder = tmp_path / "s"
    st = saved(folder, rounds=1)
    real = os.replace

    def kill_folder_rename(a, b):
        if str(a).endswith("round_002.tmp"):
            raise KeyboardInterrupt("killed")
        return real(a, b)

    monkeypatch.setattr(os, "replace", kill_folder_rename)
    with pytest.raises(KeyboardInterrupt):
        st.save_round(2, {"heatmap": HEAT[1], "image": IMG[2]}, ADAPTERS[1])
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="interrupted"):
        s = SessionStore(folder).load()
    assert len(s.rounds) == 1 and all(torch.equal(s.adapter[k], ADAPTERS[0][k]) for k in ADAPTERS[0])
    st2 = SessionStore(folder)
    with pytest.warns(UserWarning):
        st2.load()
    st2.save_round(2, {"heatmap": HEAT[1], "image": IMG[2]}, ADAPTERS[1])  # the leftover .tmp is replaced
    assert len(SessionStore(folder).load().rounds) == 2


def test_leftover_round_folder_with_user_files_is_not_deleted(tmp_path):
    st = saved(tmp_path / "s", rounds=1)
    (tmp_path / "s" / "round_002").mkdir()
    (tmp_path / "s" / "round_002" / "essay.txt").write_text("mine")
    with pytest.raises(SessionError, match="essay.txt"):
        st.save_round(2, {"image": IMG[2]}, ADAPTERS[1])
    assert (tmp_path / "s" / "round_002" / "essay.txt").exists()


def test_version_1_manifest_is_read_and_checked(tmp_path):
    folder = tmp_path / "s"
    saved(folder)
    m = manifest(folder)
    m["version"] = 1
    for e in [m["initial"]] + m["rounds"]:
        e["files"] = list(e["files"])
        del e["arrays"]
    rewrite(folder, m)
    with pytest.warns(UserWarning, match="version-1"):
        assert len(SessionStore(folder).load().rounds) == 2
    np.save(folder / "round_001" / "heatmap.npy", np.full((H, W), np.nan, np.float32))
    with pytest.raises(SessionError, match="round_001/heatmap.npy is damaged"), pytest.warns(UserWarning):
        SessionStore(folder).load()


def test_missing_folder_or_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SessionStore(tmp_path / "nope").load()
    (tmp_path / "empty").mkdir()
    assert not SessionStore(tmp_path / "empty").exists()
    with pytest.raises(SessionError, match="no session.json"):
        SessionStore(tmp_path / "empty").load()
    with pytest.raises(SessionError, match="call start"):
        SessionStore(tmp_path / "empty").save_round(1, {"image": IMG[0]}, None)
    with pytest.raises(TypeError, match="folder must be a path"):
        SessionStore(3)
