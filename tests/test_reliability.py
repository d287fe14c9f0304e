"""What the README's "Reliability" section promises that no other test pins down in one place:
no pickle anywhere in the package's file formats, and no network on the default path.

(Nothing lost on kill or restart and exact resume are shown in tests/test_checkpoint.py,
tests/test_session_store.py, tests/test_files.py and tests/test_trainer.py.)
"""
import ast
import socket
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pxpo_lite"


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.AST) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def test_no_pickle_in_the_package():
    """Weights, optimiser state, sessions and results are safetensors / JSON / .npy without pickle."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                if any(n.split(".")[0] in ("pickle", "dill", "joblib") for n in names):
                    found.append(f"{path.name}:{node.lineno} imports pickle")
        for call in _calls(tree):
            name = _name(call.func)
            if name in ("torch.save", "torch.load"):
                found.append(f"{path.name}:{call.lineno} {name}")
            for kw in call.keywords:
                if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    found.append(f"{path.name}:{call.lineno} allow_pickle not False")
    assert not found, f"pickle-based I/O in the package: {found}"


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_default_path_needs_no_network(no_network):
    """Loading the shipped models, sampling, rewarding and one training epoch touch no socket."""
    import pxpo_lite
    from pxpo_lite import TrainConfig, Trainer

    pipe = pxpo_lite.load_tiny_pipeline()
    seg = pxpo_lite.load_segmenter()
    traj = pxpo_lite.sample(pipe, ["a portrait with long red hair and a green shirt on a navy background"], num_steps=3,
                            generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(traj.images).all() and seg(traj.images).shape[1] == 6
    cfg = TrainConfig(method="pxpo", num_steps=3, samples_per_epoch=2, sample_batch_size=2, train_batch_size=2,
                      per_prompt_stats=False, progress=False)
    Trainer(pipe, "colour_map", cfg).train(1)
