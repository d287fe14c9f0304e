"""``python -m pxpo_lite.evaluate`` writes only where asked, and replaces only its own files (issue 20, data loss 5)."""
import json
from pathlib import Path

import pytest

from pxpo_lite import evaluate, world

REPO_DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_out_is_required(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # another project's folder
    (tmp_path / "docs").mkdir()
    with pytest.raises(SystemExit):
        evaluate.main(["--n", "2"])
    assert "--out" in capsys.readouterr().err and not any((tmp_path / "docs").iterdir())


@pytest.mark.parametrize("name,content", [("model_eval.json", '{"command": "my own tool"}'), ("samples.png", "png")])
def test_files_of_another_project_are_refused_before_any_work(tmp_path, name, content):
    out = tmp_path / "docs"
    out.mkdir()
    (out / name).write_text(content)
    with pytest.raises(ValueError, match=rf"--out.*{name}.*move that file away"):
        evaluate.main(["--n", "2", "--out", str(out)])
    assert (out / name).read_text() == content


def test_replaces_its_own_report_and_grid(tmp_path, monkeypatch):
    # the files are what is tested, not the model: world images stand in for samples (seconds, not minutes)
    monkeypatch.setattr(evaluate.models, "load_tiny_pipeline", lambda path=None: (lambda *a, **k: None))
    monkeypatch.setattr(evaluate, "sample_images", lambda pipe, prompts, **k: world.render(len(prompts), seed=0).images)
    monkeypatch.setattr(evaluate, "evaluate_segmenter", lambda seg: {"pixel_accuracy": 1.0})
    out = tmp_path / "docs"
    evaluate.main(["--n", "2", "--steps", "2", "--out", str(out)])
    first = json.loads((out / "model_eval.json").read_text())
    assert first["files"]["samples.png"] and first["n"] == 2
    evaluate.main(["--n", "2", "--steps", "2", "--out", str(out)])  # its own files: replaced
    (out / "samples.png").write_bytes(b"edited by the user")
    with pytest.raises(ValueError, match="samples.png"):
        evaluate.main(["--n", "2", "--steps", "2", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["model_eval.json", "samples.png"]


def test_this_repositorys_docs_report_is_accepted():
    if (REPO_DOCS / "model_eval.json").exists():
        evaluate.check_out(REPO_DOCS)  # written before it recorded its files
