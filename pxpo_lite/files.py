"""Writing files so that nothing is ever half-written, and reading paths that stay where they belong.

Every file the package saves (checkpoints, feedback sessions, pretrained assets) goes through
:func:`atomic_write`: the content is written to a temporary file **in the same folder**, flushed
to disk (``fsync``), then renamed onto the real name with ``os.replace``. A rename within one
file system is atomic, so a reader (or a restart after a kill) sees either the old file or the
complete new one, never a mixture. The folder is fsynced too (where the OS allows it), so the
rename itself survives a power cut.

:func:`sha256_file` hashes a file in chunks (used to detect truncated or altered files on load);
:func:`path_inside` resolves a relative path read from a manifest and refuses one that escapes
its folder (``../other/round_000``, an absolute path, a symlink out).

Example::

    from pxpo_lite.files import atomic_write_json, atomic_write, sha256_file
    atomic_write_json("run/state.json", {"epoch": 3})
    atomic_write("run/notes.txt", lambda tmp: tmp.write_text("hi"))   # writer gets the temp path
    digest = sha256_file("run/x.npy")

Introduced in ``notebooks/02_ddpo.ipynb`` (checkpoints) and ``notebooks/06_human_feedback_canvas.ipynb``
(feedback sessions).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

__all__ = [
    "atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
    "fsync_dir", "sha256_file", "path_inside", "save_npy", "load_npy",
]


def fsync_dir(folder) -> None:
    """Flush a folder's entries (renames, new files) to disk; a no-op where the OS does not allow it."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp)`` to write a temporary file next to ``path``, fsync it, rename it onto ``path``.

    ``writer`` receives the temporary file's :class:`~pathlib.Path` (it may open it or hand it
    to a library such as ``safetensors.torch.save_file``). If ``writer`` raises, the temporary
    file is removed and ``path`` is left as it was. The parent folder must exist.
    Returns ``path`` as a Path.
    """
    if not callable(writer):
        raise TypeError(f"writer must be a callable taking the temporary path, got {type(writer).__name__}")
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {str(path)!r}: its folder {str(folder)!r} does not exist; create it first")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(folder)
    return path


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}; use atomic_write_text for str")
    return atomic_write(path, lambda p: p.write_bytes(bytes(data)))


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> Path:
    """Write the str ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}; use atomic_write_bytes for bytes")
    return atomic_write(path, lambda p: p.write_text(text, encoding=encoding))


def _json_default(o: Any):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (np.generic, np.ndarray)) or hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"cannot store a {type(o).__name__} in JSON; convert it to a number, str, list or dict")


def atomic_write_json(path, obj, indent: int | None = 1) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically. NumPy/torch values become lists/numbers, Paths
    strings; NaN and ±inf are refused (they are not JSON), with the offending value named."""
    try:
        text = json.dumps(obj, indent=indent, default=_json_default, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"cannot write {str(path)!r}: the object holds NaN or inf ({e}); store None instead") from e
    return atomic_write_text(path, text + "\n")


def json_hashes(fields: dict) -> dict[str, str]:
    """SHA-256 (16 hex digits) of each field's canonical JSON, so an edited field can be named."""
    return {k: hashlib.sha256(json.dumps(v, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
            for k, v in fields.items()}


def sha256_file(path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def path_inside(folder, relative) -> Path:
    """``folder / relative`` resolved, after checking it stays inside ``folder``.

    Raises ValueError naming the path when ``relative`` is absolute, is empty, or leads out of
    ``folder`` (any ``..`` component is refused, even ``../s/x`` that would come back;
    a symlink that points elsewhere). Use it on every path read
    from a file (a manifest), so a damaged or hostile manifest cannot make the program read or
    delete files outside its folder.
    """
    if not isinstance(relative, (str, os.PathLike)):
        raise TypeError(f"path {relative!r} must be a str, got {type(relative).__name__}")
    rel = Path(relative)
    if str(relative) in ("", ".") or rel.is_absolute() or rel.anchor:
        raise ValueError(f"path {str(relative)!r} must be a relative path inside {str(folder)!r} (not empty or absolute)")
    if ".." in rel.parts:
        raise ValueError(f"path {str(relative)!r} contains '..': a path read from a manifest must stay inside "
                         f"{str(folder)!r} without leaving it (even to come back); refusing to use it")
    base = Path(folder).resolve()
    full = (base / rel).resolve()
    if full == base or base not in full.parents:
        raise ValueError(f"path {str(relative)!r} leads outside the folder {str(base)!r} (to {str(full)!r}); refusing to use it")
    return full


def save_npy(path, arr, dtype=np.float32) -> Path:
    """Save an array as ``.npy`` (atomically, as ``dtype``; no pickled objects)."""
    a = np.asarray(arr, dtype=dtype)

    def write(p: Path):
        with open(p, "wb") as f:
            np.save(f, a, allow_pickle=False)

    return atomic_write(path, write)


def load_npy(path, shape: tuple | None = None, finite: bool = True) -> np.ndarray:
    """Load a ``.npy`` (never pickled objects) as float32, checking its shape and that it is finite.

    Raises ValueError naming the file when it cannot be read, has another shape than ``shape``
    (``None`` entries match any size), or holds NaN/inf while ``finite``.
    """
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{str(path)!r} is not a readable .npy file ({type(e).__name__}: {e})") from e
    if not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{str(path)!r} holds {a.dtype} data, expected numbers")
    if shape is not None and (a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape))):
        raise ValueError(f"{str(path)!r} has shape {tuple(a.shape)}, expected {tuple(shape)}")
    a = a.astype(np.float32)
    if finite and not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise ValueError(f"{str(path)!r} holds {bad} NaN/inf value(s) of {a.size}")
    return a


# -- image writers (feedback sessions) -----------------------------------------------------------
def save_image_png(path, image: np.ndarray) -> Path:
    """(3,H,W) in [0,1] -> 8-bit RGB PNG (atomically)."""
    arr = (np.clip(np.asarray(image, np.float32).transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8)
    return atomic_write(path, lambda p: Image.fromarray(arr, "RGB").save(p, format="PNG"))


def save_heatmap_png(path, heat: np.ndarray) -> Path:
    """(H,W) in [-1,1] -> a viewable PNG: green = like, red = dislike, black = unpainted."""
    heat = np.asarray(heat, np.float32)
    rgb = np.zeros(heat.shape + (3,), np.uint8)
    rgb[..., 1] = (np.clip(heat, 0, 1) * 255).astype(np.uint8)
    rgb[..., 0] = (np.clip(-heat, 0, 1) * 255).astype(np.uint8)
    return atomic_write(path, lambda p: Image.fromarray(rgb, "RGB").save(p, format="PNG"))
