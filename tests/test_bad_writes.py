"""Writers refuse what they did not make, and a dead worker is reported (issue 20): each kind, its
exception and message; ``docs/bad_inputs.md`` lists them (section "Writers and workers").

Print the doc section with ``.venv/bin/python tests/test_bad_writes.py`` (paths shown as ``<tmp>``).
"""
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest
import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md"
IMG = np.full((3, 4, 4), 0.5, np.float32)


class BadWrite(NamedTuple):
    module: str
    what: str
    call: Callable[[Path], object]  # gets an empty temporary folder
    exc: type
    match: str


def _user_folder(tmp: Path, name="run1", file="notes.txt") -> Path:
    (tmp / name).mkdir()
    (tmp / name / file).write_text("mine")
    return tmp / name


def _save(path):
    from pxpo_lite.checkpoint import save_checkpoint

    return save_checkpoint(path, {"w": torch.zeros(2)}, {"epoch": 1})


def _staging_taken(tmp: Path):
    _user_folder(tmp, ".run1.pxpo-tmp")
    return _save(tmp / "run1")


def _session(tmp: Path, edit):
    from pxpo_lite.session_store import MANIFEST, SessionStore

    st = SessionStore(tmp / "s")
    st.start({"prompt": "p"}, {"image": IMG})
    st.save_round(1, {"image": IMG}, {"a": torch.zeros(2)})
    m = json.loads((tmp / "s" / MANIFEST).read_text())
    edit(tmp / "s", m)
    (tmp / "s" / MANIFEST).write_text(json.dumps(m))
    return SessionStore(tmp / "s").start({"prompt": "q"}, {"image": IMG}, overwrite=True)


def _edited_hash(folder, m):
    (folder / "round_001" / "image.npy").write_bytes(b"the user's file now")


def _version_1(folder, m):
    m["version"] = 1
    for e in [m["initial"]] + m["rounds"]:
        e["files"] = list(e["files"])


def _round_in_the_way(tmp: Path):
    from pxpo_lite.session_store import SessionStore

    st = SessionStore(tmp / "s")
    st.start({"prompt": "p"}, {"image": IMG})
    _user_folder(tmp / "s", "round_001", "essay.txt")
    return st.save_round(1, {"image": IMG}, None)


def _worker_exits(tmp: Path):
    from pxpo_lite.experiments.parallel import can_fork, map_jobs

    if not can_fork("cpu"):
        pytest.skip("forked workers need Linux on a CPU")
    return map_jobs(lambda j: os._exit(3) if j == 1 else j, [0, 1, 2], processes=2)


def _pretrain(tmp):
    from pxpo_lite import pretrain

    return pretrain.main(["diffusion", "--steps", "1", "--out", str(_user_folder(tmp, "DIR"))])


def _evaluate(tmp):
    from pxpo_lite import evaluate

    (tmp / "docs").mkdir()
    (tmp / "docs" / "model_eval.json").write_text('{"command": "another project"}')
    return evaluate.main(["--out", str(tmp / "docs")])


def _errors():
    from pxpo_lite.checkpoint import CheckpointError
    from pxpo_lite.experiments.parallel import WorkerDied
    from pxpo_lite.session_store import SessionError

    return CheckpointError, SessionError, WorkerDied


CheckpointError, SessionError, WorkerDied = _errors()
BAD_WRITES = [
    BadWrite("checkpoint", "save into a folder holding a user's files", lambda t: _save(_user_folder(t)),
             CheckpointError, r"run1.*not empty and is not a checkpoint.*notes\.txt.*move those files away"),
    BadWrite("checkpoint", "save over a model.safetensors of the user's (no state.json)",
             lambda t: _save(_user_folder(t, "export", "model.safetensors")), CheckpointError,
             r"without a state\.json, so not recorded as a checkpoint"),
    BadWrite("checkpoint", "the staging name .<name>.pxpo-tmp taken by a user folder", _staging_taken, CheckpointError,
             r"\.run1\.pxpo-tmp.*not a save of this package.*move it away"),
    BadWrite("pretrain", "--out DIR holding a user's files", _pretrain, ValueError,
             r"out=.*DIR.*not a folder this command wrote.*move those files away"),
    BadWrite("evaluate", "--out with another program's model_eval.json", _evaluate, ValueError,
             r"model_eval\.json.*is not a report of python -m pxpo_lite\.evaluate.*move that file away"),
    BadWrite("session_store", "overwrite=True over a listed file that no longer has its hash",
             lambda t: _session(t, _edited_hash), SessionError, r"image\.npy.*do not match it.*nothing was deleted"),
    BadWrite("session_store", "overwrite=True over a version-1 manifest (no hashes)",
             lambda t: _session(t, _version_1), SessionError, r"version-1 manifest records none, so nothing was deleted"),
    BadWrite("session_store", "a user folder where a round is saved", _round_in_the_way, SessionError,
             r"round_001.*essay\.txt.*move it away; round 1 was not saved and is kept in memory"),
    BadWrite("experiments", "a map_jobs worker that dies (os._exit, SIGKILL)", _worker_exits, WorkerDied,
             r"worker process died.*job 1: 1.*processes=1"),
]


@pytest.mark.parametrize("case", BAD_WRITES, ids=[c.what for c in BAD_WRITES])
def test_bad_write(case, tmp_path):
    with pytest.raises(case.exc, match=case.match):
        case.call(tmp_path)


def test_doc_lists_every_kind():
    text = DOC.read_text()
    missing = [c.what for c in BAD_WRITES if f"| {c.module} | {c.what} |" not in text]
    assert not missing, f"docs/bad_inputs.md lacks {missing}; print the section with python tests/test_bad_writes.py"


def section() -> str:
    rows = []
    for c in BAD_WRITES:
        with tempfile.TemporaryDirectory() as t:
            try:
                c.call(Path(t))
                msg = "✗ no error"
            except c.exc as e:
                msg = re.sub(r"/[^ ']*?" + re.escape(Path(t).name), "<tmp>", str(e)).replace("|", "\\|")
        rows.append(f"| {c.module} | {c.what} | `{c.exc.__name__}` | {msg} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(section() + "\n")
