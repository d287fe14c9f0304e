"""A feedback session's folder on disk: saved after every round, verified on load, never touching other files.

:class:`pxpo_lite.feedback.FeedbackSession` keeps its rounds here; this module knows nothing of
models, only of files. Layout (readable without pxpo-lite: PNG, NumPy ``.npy``, safetensors, JSON)::

    session.json          the manifest, written last (atomically): the caller's metadata, and per
                          folder its files with their SHA-256 and its arrays' shapes
    round_000/            image.npy, image.png                         (the initial image)
    round_001/            heatmap.npy, heatmap.png, image_before.npy, image.npy, image.png,
                          adapter.safetensors                         (one folder per round)

Guarantees:

* **a kill loses at most the round being saved**: a round is built as ``round_NNN.tmp/`` and
  renamed into place, then the manifest is replaced atomically; a round counts once the
  manifest lists it;
* **load verifies everything**: every listed file exists and matches its SHA-256, every path
  stays inside the folder (:func:`pxpo_lite.files.path_inside`), arrays are finite and of the
  recorded shape (images (3,H,W), maps (H,W) of the session's image), the adapters parse; any
  failure is a :class:`SessionError` naming the file;
* **only the session's own files are deleted**: ``start(..., overwrite=True)`` removes exactly
  the files a valid manifest lists, each only if it still has its recorded SHA-256 (else nothing
  is deleted; a version-1 manifest records no hashes, so it is refused), and then their folders
  if empty; a leftover round folder from an interrupted save is replaced only if it holds nothing
  but the files a save writes; a manifest temp file a kill left (``.session.json.*.tmp``) is
  removed on the next start or load;
* **a failed save blocks nothing**: a round whose save fails (a folder in the way, a full disk)
  is kept, with a copy of its arrays and adapter, and saved before the next round
  (or by :meth:`SessionStore.save_pending`) once the cause is fixed; a round with bad arrays
  (NaN, wrong shape) is refused before anything is kept.

Example::

    store = SessionStore("sessions/s1")
    store.start({"prompt": "...", "seed": 0}, {"image": img0})              # (3,H,W) in [0,1]
    store.save_round(1, {"heatmap": h, "image_before": img0, "image": img1},
                     adapter=lora_state, info={"source": "canvas"})
    saved = SessionStore("sessions/s1").load()
    saved.meta["prompt"], saved.initial["image"], saved.rounds[0].arrays["heatmap"], saved.adapter

Introduced in ``notebooks/06_human_feedback_canvas.ipynb``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .files import (atomic_write, atomic_write_json, fsync_dir, json_hashes, load_npy, path_inside, save_heatmap_png,  # noqa: F401 (re-exported)
                    save_image_png, save_npy, sha256_file)

MANIFEST = "session.json"
FORMAT = "pxpo-lite feedback session"
FORMAT_VERSION = 2  # 2: a SHA-256 and shape per file; 1 (still read): file names only
ADAPTER = "adapter.safetensors"
PNGS = ("image", "heatmap")  # arrays also saved as a picture
_RESERVED = ("format", "version", "image_shape", "initial", "rounds", "meta_sha256")
_MANIFEST_TMP = re.compile(r"\.session\.json\.[a-z0-9_]{8}\.tmp")  # atomic_write's temp name for the manifest


class SessionError(ValueError):
    """A session folder is missing, half-written, damaged, or does not match the model."""


@dataclass
class SavedRound:
    index: int
    info: dict                      # what the caller passed (source, note, stats, ...)
    arrays: dict[str, np.ndarray]   # name -> float32 array


@dataclass
class SavedSession:
    meta: dict                      # the caller's metadata (prompt, seed, config, ...)
    initial: dict[str, np.ndarray]
    rounds: list[SavedRound] = field(default_factory=list)
    adapter: dict[str, torch.Tensor] | None = None  # the last round's; None before any round


def _round_name(index: int) -> str:
    return f"round_{index:03d}"


class SessionStore:
    """The files of one feedback session in ``folder`` (see the module docstring)."""

    def __init__(self, folder):
        if not isinstance(folder, (str, os.PathLike)):
            raise TypeError(f"folder must be a path (str or Path), got {type(folder).__name__}")
        self.folder = Path(folder)
        self.manifest: dict | None = None  # as on disk after start()/load()/save_round()
        self.pending: list[tuple] = []  # rounds whose save failed: (index, arrays, adapter, info), saved first

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def exists(self) -> bool:
        """True when the folder holds a manifest (a session, possibly damaged)."""
        return self.manifest_path.is_file()

    # -- writing --------------------------------------------------------------------------------
    def start(self, meta: dict, arrays: dict[str, np.ndarray], overwrite: bool = False) -> None:
        """Begin a session: ``round_000/`` with ``arrays`` (needs ``"image"``, (3,H,W) in [0,1]), then
        the manifest. An existing session is an error unless ``overwrite``; then only its listed files go."""
        if not isinstance(meta, dict) or any(k in meta for k in _RESERVED):
            raise ValueError(f"meta must be a dict without the keys {list(_RESERVED)}, got {meta!r:.80}")
        image = np.asarray(arrays.get("image") if isinstance(arrays, dict) else None)
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"arrays must hold 'image' of shape (3,H,W), got {getattr(image, 'shape', None)}")
        if self.exists():
            if not overwrite:
                raise SessionError(
                    f"{str(self.folder)!r} already holds a feedback session; continue it with "
                    f"FeedbackSession.load({str(self.folder)!r}, pipe), or pass overwrite=True / another folder")
            self.remove()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._remove_manifest_temps()
        self.pending = []
        m = {"format": FORMAT, "version": FORMAT_VERSION, **meta, "image_shape": list(image.shape), "rounds": [],
             "meta_sha256": json_hashes(meta)}
        self.manifest = m  # for the shape checks of _write_round
        try:
            m["initial"] = self._write_round(0, arrays, adapter=None)
            atomic_write_json(self.manifest_path, m)
        except BaseException:
            self.manifest = None
            raise

    def save_round(self, index: int, arrays: dict[str, np.ndarray], adapter: dict[str, torch.Tensor] | None,
                   info: dict | None = None) -> None:
        """Save round ``index`` (= rounds saved + 1): ``arrays`` as .npy (and PNG for ``image``/``heatmap``),
        ``adapter`` as safetensors, ``info`` (JSON) into its manifest entry; the manifest last."""
        if self.manifest is None:
            raise SessionError(f"no session started or loaded in {str(self.folder)!r}; call start() or load() first")
        want = len(self.manifest["rounds"]) + len(self.pending) + 1
        if isinstance(index, bool) or index != want:
            raise ValueError(f"index must be the next round, {want}, got {index!r}")
        info = dict(info or {})
        if any(k in info for k in ("index", "folder", "files", "arrays")):
            raise ValueError("info must not use the keys 'index', 'folder', 'files', 'arrays'")
        arrays = self._check_arrays(index, arrays)  # a bad round is refused, never kept
        adapter = None if adapter is None else {k: v.detach().cpu().clone() for k, v in adapter.items()}
        self.pending.append((index, arrays, adapter, info))
        self.save_pending()

    def save_pending(self) -> None:
        """Save the rounds whose save failed, oldest first (:meth:`save_round` calls it). On a failure the
        round stays pending, and the error says so."""
        while self.pending:
            index, arrays, adapter, info = self.pending[0]
            try:
                entry = {"index": index, **self._write_round(index, arrays, adapter), **info}
                m = {**self.manifest, "rounds": self.manifest["rounds"] + [entry]}
                atomic_write_json(self.manifest_path, m)  # the manifest last: the round now counts
            except (OSError, SessionError) as e:
                note = (f"round {index} was not saved and is kept in memory; fix the cause, and it is saved before the "
                        "next round (or call save_pending())")
                if isinstance(e, SessionError):
                    raise SessionError(f"{e}; {note}") from e
                if hasattr(e, "add_note"):
                    e.add_note(note)
                raise
            self.manifest = m
            self.pending.pop(0)

    def _check_arrays(self, index: int, arrays: dict) -> dict:
        shape = tuple(self.manifest["image_shape"])
        checked = {}
        for name, a in arrays.items():
            a = np.array(a, dtype=np.float32)  # a copy: kept as it is now if the save must wait
            if a.shape not in (shape, shape[1:]):
                raise ValueError(f"round {index}: {name} has shape {a.shape}; expected {shape} (image) or {shape[1:]} (map)")
            if not np.isfinite(a).all():
                raise ValueError(f"round {index}: {name} holds {int((~np.isfinite(a)).sum())} NaN/inf values; not saved")
            checked[name] = a
        return checked

    def _write_round(self, index: int, arrays: dict, adapter) -> dict:
        checked = self._check_arrays(index, arrays)
        names = [f"{n}.npy" for n in checked] + [f"{n}.png" for n in checked if n in PNGS] + ([ADAPTER] if adapter is not None else [])
        final = self.folder / _round_name(index)
        tmp = self.folder / (final.name + ".tmp")
        for d in (tmp, final):
            self._clear_leftover(d, names)
        tmp.mkdir()
        for name, a in checked.items():
            save_npy(tmp / f"{name}.npy", a)
            if name in PNGS:
                (save_image_png if a.ndim == 3 else save_heatmap_png)(tmp / f"{name}.png", a)
        if adapter is not None:
            tensors = {k: v.detach().contiguous().cpu() for k, v in adapter.items()}
            atomic_write(tmp / ADAPTER, lambda p: save_file(tensors, str(p), metadata={"round": str(index)}))
        files = {n: sha256_file(tmp / n) for n in names}
        fsync_dir(tmp)
        os.replace(tmp, final)
        fsync_dir(self.folder)
        return {"folder": final.name, "files": files, "arrays": {n: list(a.shape) for n, a in checked.items()}}

    def _clear_leftover(self, d: Path, names: list[str]) -> None:
        """Remove a round folder left by an interrupted save, only if it holds nothing but a save's files."""
        if not d.exists():
            return
        listed = self.manifest is not None and any(e.get("folder") == d.name for e in self._entries(self.manifest))
        foreign = [] if d.is_dir() else [d.name]
        if d.is_dir():
            foreign = [e.name for e in d.iterdir() if not (e.is_file() and (e.name in names or e.name.endswith(".tmp")))]
        if listed or foreign:
            raise SessionError(f"{str(d)!r} is in the way of a new round and holds files that are not a round's "
                               f"({foreign[:8] or 'listed in the manifest'}); move it away")
        shutil.rmtree(d)

    def remove(self) -> list[Path]:
        """Delete the session: the manifest first, then exactly the files it lists, then their folders if
        empty. Raises SessionError (deleting nothing) when the manifest is not valid. Returns what was deleted."""
        try:
            m = self._read_manifest()
        except SessionError as e:
            raise SessionError(f"overwrite=True deletes only the files a valid {MANIFEST} lists, and this one is not "
                               f"valid, so nothing was deleted ({e}); delete the folder yourself or use another") from e
        if m["version"] == 1:
            raise SessionError(f"overwrite=True deletes only files whose SHA-256 {MANIFEST} records, and this version-1 "
                               "manifest records none, so nothing was deleted; delete the folder yourself or use another")
        targets = []
        for e in self._entries(m):
            d = self._inside(e["folder"])
            targets += [(d, self._inside(f"{e['folder']}/{name}"), want) for name, want in e["files"].items()]
        changed = [str(f.relative_to(self.folder.resolve())) for _, f, want in targets
                   if f.exists() and (not f.is_file() or sha256_file(f) != want)]
        if changed:
            raise SessionError(f"overwrite=True deletes only the files {MANIFEST} lists with their recorded SHA-256, and "
                               f"{changed[:8]} do not match it (edited, or not the session's), so nothing was deleted; "
                               "move them away, or delete the folder yourself or use another")
        self.manifest_path.unlink()
        deleted = [self.manifest_path]
        for d, f, _ in targets:
            if f.is_file():
                f.unlink()
                deleted.append(f)
        for d in dict.fromkeys(d for d, _, _ in targets):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        self.manifest = None
        return deleted

    def _remove_manifest_temps(self) -> None:
        """Delete manifest temp files a kill left mid-write (only atomic_write's exact name pattern)."""
        for f in self.folder.glob(".session.json.*.tmp"):
            if _MANIFEST_TMP.fullmatch(f.name) and f.is_file():
                f.unlink()

    # -- reading --------------------------------------------------------------------------------
    def _inside(self, rel) -> Path:
        try:
            return path_inside(self.folder, rel)
        except (ValueError, TypeError) as e:
            raise SessionError(f"{str(self.manifest_path)!r} lists a path that is not inside the session folder: {e}") from e

    def _read_manifest(self) -> dict:
        if not self.folder.is_dir():
            raise FileNotFoundError(f"feedback session folder {str(self.folder)!r} does not exist; start one with "
                                    "FeedbackSession(pipe, prompt, seed, folder=...)")
        if not self.exists():
            found = sorted(p.name for p in self.folder.iterdir())
            raise SessionError(
                f"{str(self.folder)!r} has no {MANIFEST}: it is not a feedback session, or its first save was interrupted "
                f"(found: {found[:8]}). The manifest is written last, so without it nothing in the folder is complete; "
                "start a new session there with overwrite=True.")
        try:
            m = json.loads(self.manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SessionError(f"{str(self.manifest_path)!r} is not valid JSON ({e}); the session cannot be read") from e
        if not isinstance(m, dict):
            raise SessionError(f"{str(self.manifest_path)!r} holds a JSON {type(m).__name__}, not an object: it is not "
                               "a session manifest; the session cannot be read")
        if m.get("format") != FORMAT or m.get("version") not in (1, FORMAT_VERSION):
            raise SessionError(f"{str(self.manifest_path)!r} is not a {FORMAT!r} manifest of version 1 or {FORMAT_VERSION} "
                               f"(format={m.get('format')!r}, version={m.get('version')!r})")
        try:
            shape = tuple(int(s) for s in m["image_shape"])
            if len(shape) != 3 or shape[0] != 3:
                raise ValueError(f"image_shape {shape} is not (3,H,W)")
            if not isinstance(m["initial"], dict) or not isinstance(m["rounds"], list):
                raise TypeError("'initial' must be an object and 'rounds' a list")
            for i, e in enumerate(self._entries(m)):
                if not isinstance(e["folder"], str) or not isinstance(e["files"], (list, dict)):
                    raise TypeError(f"entry {i} needs a 'folder' str and 'files'")
                if i and e["index"] != i:
                    raise ValueError(f"round entry {i} has index {e['index']!r}")
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise SessionError(f"{str(self.manifest_path)!r} is incomplete or malformed ({type(e).__name__}: {e}); "
                               "the session cannot be read") from e
        for e in self._entries(m):
            self._inside(e["folder"])
            for name in e["files"]:
                self._inside(f"{e['folder']}/{name}")
        return m

    @staticmethod
    def _entries(m: dict) -> list[dict]:
        return ([m["initial"]] if "initial" in m else []) + list(m["rounds"])

    def load(self) -> SavedSession:
        """Read and verify the whole session (see the module docstring); raises SessionError naming the file."""
        m = self._read_manifest()
        self._remove_manifest_temps()
        self.pending = []
        for d in sorted(self.folder.glob("round_*.tmp")):
            warnings.warn(f"ignoring {d.name}: a round whose save was interrupted (not in the manifest); the session "
                          f"continues from round {len(m['rounds'])}", stacklevel=2)
        entries = self._entries(m)
        if m["version"] == 1:
            warnings.warn(f"{str(self.manifest_path)!r} is a version-1 manifest without file hashes: files are checked "
                          "for shape and finite values only", stacklevel=2)
        for e in entries:
            missing = [f for f in e["files"] if not self._inside(f"{e['folder']}/{f}").is_file()]
            if missing:
                raise SessionError(f"session {str(self.folder)!r} is half-written: {e['folder']}/ lacks {missing}; "
                                   "restore the files or start a new session")
            if isinstance(e["files"], dict):
                for name, want in e["files"].items():
                    if sha256_file(self._inside(f"{e['folder']}/{name}")) != want:
                        last = e is entries[-1] and len(entries) > 1
                        raise SessionError(
                            f"session {str(self.folder)!r}: {e['folder']}/{name} is corrupt (its SHA-256 does not match "
                            f"{MANIFEST}; truncated or altered). Restore it"
                            + (f", or delete the last entry of 'rounds' in {MANIFEST} to continue from the round before"
                               if last else "") + ", or start a new session")
        self._check_meta(m)
        shape = tuple(m["image_shape"])
        arrays = [self._load_arrays(e, shape) for e in entries]
        adapter = None
        for e in entries[1:]:
            if ADAPTER in e["files"]:
                adapter = self._load_adapter(e)  # every round's, so an earlier damaged one is found too
        meta = {k: v for k, v in m.items() if k not in _RESERVED}
        rounds = [SavedRound(e["index"], {k: v for k, v in e.items() if k not in ("index", "folder", "files", "arrays")}, a)
                  for e, a in zip(entries[1:], arrays[1:])]
        self.manifest = m
        return SavedSession(meta, arrays[0], rounds, adapter if rounds else None)

    def _check_meta(self, m: dict) -> None:
        """Metadata (prompt, seed, config...) as start() recorded it (a manifest without hashes: unchecked)."""
        recorded, meta = m.get("meta_sha256"), {k: v for k, v in m.items() if k not in _RESERVED}
        now, recorded = (json_hashes(meta), recorded if isinstance(recorded, dict) else {}) if recorded is not None else ({}, {})
        edited = sorted(k for k in set(now) | set(recorded) if now.get(k) != recorded.get(k))
        if edited:
            raise SessionError(
                f"{str(self.manifest_path)!r}: the recorded field(s) {edited} were edited after the session wrote them "
                f"(their SHA-256 in 'meta_sha256' no longer matches; now {({k: meta.get(k) for k in edited})!r:.200}); the saved "
                "images and adapters belong to the values the session was made with. Restore them, or start a new session")

    def _load_arrays(self, e: dict, shape: tuple) -> dict[str, np.ndarray]:
        recorded = e.get("arrays") or {n[:-4]: (list(shape[1:]) if n.startswith("heatmap") else list(shape))
                                      for n in e["files"] if n.endswith(".npy")}  # version 1: by name
        out = {}
        for name, s in recorded.items():
            f = self._inside(f"{e['folder']}/{name}.npy")
            if tuple(s) not in (shape, shape[1:]):
                raise SessionError(f"{str(self.manifest_path)!r}: {e['folder']}/{name}.npy is recorded with shape {s}, "
                                   f"not the session's image {list(shape)} or map {list(shape[1:])}")
            try:
                out[name] = load_npy(f, shape=tuple(s), finite=True)
            except ValueError as err:
                raise SessionError(f"session {str(self.folder)!r}: {e['folder']}/{name}.npy is damaged: {err}") from err
        return out

    def _load_adapter(self, e: dict) -> dict[str, torch.Tensor]:
        f = self._inside(f"{e['folder']}/{ADAPTER}")
        try:
            tensors = load_file(str(f))
        except Exception as err:
            raise SessionError(f"session {str(self.folder)!r}: {e['folder']}/{ADAPTER} is corrupt "
                               f"({type(err).__name__}: {err})") from err
        bad = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
        if bad:
            raise SessionError(f"session {str(self.folder)!r}: {e['folder']}/{ADAPTER} holds NaN/inf weights ({bad[:3]})")
        return tensors


__all__ = ["SessionStore", "SessionError", "SavedSession", "SavedRound", "save_image_png", "save_heatmap_png",
           "MANIFEST", "FORMAT", "FORMAT_VERSION"]
