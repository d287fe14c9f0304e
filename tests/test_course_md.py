"""COURSE.md's instructor kit stays in step with notebooks/: every notebook has one session in the
week plan, a learner-time estimate and a row of expected key numbers; every linked file exists."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "COURSE.md").read_text()
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))


def _section(title: str) -> str:
    start = TEXT.index(f"\n## {title}")
    end = TEXT.find("\n## ", start + 1)
    return TEXT[start : end if end > 0 else None]


def _rows(section: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^\| ([0-9]+[a-z]?) \|", section, re.M)]


def test_every_notebook_has_one_session_in_the_week_plan():
    plan = _section("Four-week plan")
    for name in NOTEBOOKS:
        assert plan.count(f"](notebooks/{name})") == 1, f"{name}: expected one session in COURSE.md's week plan"
    assert sorted(set(re.findall(r"\]\(notebooks/([^)]+)\)", plan))) == NOTEBOOKS


def test_every_notebook_has_a_time_estimate_and_key_numbers():
    prefixes = sorted(n.split("_", 1)[0] for n in NOTEBOOKS)
    assert sorted(_rows(_section("Learner time per notebook"))) == prefixes
    assert sorted(_rows(_section("Expected key numbers, for TAs"))) == prefixes


def test_linked_files_exist():
    links = re.findall(r"\]\(((?:notebooks|docs|student|scripts)/[^)#\s]+)", TEXT)
    assert links and all((ROOT / link).exists() for link in links), [l for l in links if not (ROOT / l).exists()]
