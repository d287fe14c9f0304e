"""files.py: atomic writes (old file kept when the writer fails, no temp left), hashes, paths kept inside a folder."""
import hashlib
import json
import os

import numpy as np
import pytest

from pxpo_lite.files import (
    atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text, load_npy, path_inside, save_npy,
    sha256_file,
)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "old")
    assert atomic_write_text(p, "new") == p
    assert p.read_text() == "new"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.txt"]


def test_failed_writer_keeps_old_file_and_removes_temp(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "old")

    def bad(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(p, bad)
    assert p.read_text() == "old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.txt"]


def test_failed_rename_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "a.bin"
    atomic_write_bytes(p, b"old")

    def boom(a, b):
        raise OSError("kill before rename")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(p, b"new")
    monkeypatch.undo()
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["a.bin"]


def test_atomic_write_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write_text(tmp_path / "nope" / "a.txt", "x")
    with pytest.raises(TypeError, match="text must be a str"):
        atomic_write_text(tmp_path / "a.txt", b"x")
    with pytest.raises(TypeError, match="data must be bytes"):
        atomic_write_bytes(tmp_path / "a.txt", "x")
    with pytest.raises(TypeError, match="writer must be a callable"):
        atomic_write(tmp_path / "a.txt", "x")
    with pytest.raises(ValueError, match="NaN or inf"):
        atomic_write_json(tmp_path / "a.json", {"loss": float("nan")})
    assert not (tmp_path / "a.json").exists()


def test_json_numpy_values(tmp_path):
    p = atomic_write_json(tmp_path / "s.json", {"a": np.float32(1.5), "b": np.arange(3), "c": tmp_path})
    assert json.loads(p.read_text()) == {"a": 1.5, "b": [0, 1, 2], "c": str(tmp_path)}


def test_sha256_file(tmp_path):
    data = os.urandom(3 << 20)  # several chunks
    p = tmp_path / "x"
    p.write_bytes(data)
    assert sha256_file(p) == hashlib.sha256(data).hexdigest()


def test_path_inside(tmp_path):
    (tmp_path / "s" / "round_000").mkdir(parents=True)
    assert path_inside(tmp_path / "s", "round_000") == (tmp_path / "s" / "round_000").resolve()
    assert path_inside(tmp_path / "s", "round_000/image.npy").name == "image.npy"
    for bad in ["../s/round_000", "../x", "round_000/../../x", str(tmp_path / "s" / "round_000"), "/etc/passwd", "", "."]:
        with pytest.raises(ValueError, match="outside|relative path|contains"):
            path_inside(tmp_path / "s", bad)
    with pytest.raises(TypeError):
        path_inside(tmp_path, 3)


def test_path_inside_refuses_symlink_out(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "s" / "link").symlink_to(tmp_path / "other")
    with pytest.raises(ValueError, match="outside"):
        path_inside(tmp_path / "s", "link/x.npy")


def test_npy_round_trip_and_checks(tmp_path):
    a = np.random.default_rng(0).random((3, 4, 4)).astype(np.float32)
    p = save_npy(tmp_path / "a.npy", a)
    np.testing.assert_array_equal(load_npy(p, shape=(3, None, 4)), a)
    with pytest.raises(ValueError, match=r"shape \(3, 4, 4\), expected \(4, 4\)"):
        load_npy(p, shape=(4, 4))
    a[0, 0, 0] = np.nan
    save_npy(p, a)
    with pytest.raises(ValueError, match="1 NaN/inf"):
        load_npy(p)
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(ValueError, match="not a readable .npy"):
        load_npy(p)
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="o.npy"):
        load_npy(tmp_path / "o.npy")
