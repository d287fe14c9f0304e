"""scripts/make_slides.py (`make slides`): one slide per exported figure, titled with its notebook and
section, on a fake docs/figures folder (no notebook is run)."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("make_slides", ROOT / "scripts" / "make_slides.py")
make_slides = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_slides)


def _md(text):
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def _code(text, tags=()):
    return {"cell_type": "code", "metadata": {"tags": list(tags)} if tags else {}, "source": text,
            "outputs": [], "execution_count": None}


SOURCE = [
    _md("[![Open In Colab](badge)](link)\n\n# 03 · Pixel-wise *log-probabilities*\n\nintro"),  # 0
    _code("SMOKE = False", ["parameters"]),                                                # 1
    _code("import torch"),                                                                 # 2
    _md("## 1. Per-pixel maps\n\n```\n## not a heading (fenced)\n```"),                    # 3
    _code("plt.show()"),                                                                   # 4 -> executed 5
    _md("### Exercise 03.1 — [maps](x.md)"),                                               # 5
    _code("plt.show(); plt.show()"),                                                       # 6 -> executed 7
]


def _setup(tmp_path):
    notebooks, figures = tmp_path / "notebooks", tmp_path / "docs" / "figures"
    notebooks.mkdir(parents=True)
    figures.mkdir(parents=True)
    (notebooks / "03_pix.ipynb").write_text(json.dumps({"cells": SOURCE, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    # names as run_notebooks.export_figures writes them: indices of the executed copy (one injected cell)
    for name in ("03_pix-07-1.png", "03_pix-05-0.png", "03_pix-07-0.png", "00_other-04-0.png"):
        (figures / name).write_bytes(b"\x89PNG fake")
    (figures / "notes.png").write_bytes(b"\x89PNG not a notebook figure")
    return notebooks, figures


def test_slides_in_order_with_notebook_and_section_titles(tmp_path):
    notebooks, figures = _setup(tmp_path)
    slides = make_slides.collect(figures, notebooks, executed=tmp_path / "executed")  # no executed copies
    got = [(s["notebook"], s["cell"], s["k"], s["notebook_title"], s["section"]) for s in slides]
    assert got == [
        ("00_other", 4, 0, "00_other", ""),                       # no source notebook: its file name
        ("03_pix", 5, 0, "03 · Pixel-wise log-probabilities", "1. Per-pixel maps"),
        ("03_pix", 7, 0, "03 · Pixel-wise log-probabilities", "Exercise 03.1 — maps"),
        ("03_pix", 7, 1, "03 · Pixel-wise log-probabilities", "Exercise 03.1 — maps"),
    ]
    out = figures / "slides.html"
    page = make_slides.render(slides, out)
    imgs = re.findall(r'<img src="([^"]+)"', page)
    assert imgs == ["00_other-04-0.png", "03_pix-05-0.png", "03_pix-07-0.png", "03_pix-07-1.png"]  # relative links
    assert page.count("<section") == 1 + 2 + 4                    # deck title, one per notebook, one per figure
    assert "<h2>Exercise 03.1 — maps</h2>" in page and "notes.png" not in page


def test_executed_copy_is_preferred_for_section_titles(tmp_path):
    notebooks, figures = _setup(tmp_path)
    executed = tmp_path / "executed"
    executed.mkdir()
    cells = SOURCE[:2] + [_code("# Parameters\nSMOKE = False", ["injected-parameters"])] + SOURCE[2:]
    cells[4] = _md("## 1. Renamed in the executed copy")
    (executed / "03_pix.ipynb").write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    sections = {(s["cell"], s["k"]): s["section"] for s in make_slides.collect(figures, notebooks, executed) if s["notebook"] == "03_pix"}
    assert sections == {(5, 0): "1. Renamed in the executed copy", (7, 0): "Exercise 03.1 — maps", (7, 1): "Exercise 03.1 — maps"}


def test_command_writes_the_deck_and_fails_without_figures(tmp_path):
    notebooks, figures = _setup(tmp_path)
    script = [sys.executable, "-I", str(ROOT / "scripts" / "make_slides.py"), "--notebooks", str(notebooks),
              "--executed", str(tmp_path / "none")]
    run = subprocess.run(script + ["--figures", str(figures)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "4 slides from 2 notebooks" in run.stdout
    assert (figures / "slides.html").read_text().count('<img src="') == 4
    empty = tmp_path / "empty"
    empty.mkdir()
    run = subprocess.run(script + ["--figures", str(empty)], capture_output=True, text=True)
    assert run.returncode == 1 and "make run" in run.stderr
    run = subprocess.run(script + ["--figures", str(tmp_path / "missing")], capture_output=True, text=True)
    assert run.returncode == 1 and "make run" in run.stderr


def test_make_slides_target():
    assert "\nslides:\n\tpython3 scripts/make_slides.py\n" in (ROOT / "Makefile").read_text()
