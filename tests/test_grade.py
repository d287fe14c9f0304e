"""The grader (python -m pxpo_lite.grade): it runs the checks itself, in isolation, from the package's list.

Small synthetic notebooks named like notebook 01b (its two real exercises: the REINFORCE estimator
and PPO's clipped loss), each built in tmp_path. Every case of the course's grading needs is here:
a reference wrapper is flagged, a forged output is ignored, a deleted check still counts,
same-named files of two students stay apart, a time-out or crash is isolated, an input is never
written over, and a file that cannot be graded gives exit status 2 naming it.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pxpo_lite import grade as grader
from pxpo_lite.checks import MIME, registry
from pxpo_lite.grade_source import extract, read_notebook, scan

ROOT = Path(__file__).resolve().parents[1]
NB = "01b_rl_from_zero.ipynb"

REINFORCE_OK = '''# Exercise 01b.1: the REINFORCE estimator
def reinforce_estimate(actions, rewards, mu, sigma, baseline=0.0):
    score = (actions - mu) / sigma**2
    return ((rewards - baseline) * score).mean()

reinforce_estimate = checks.check_reinforce_estimator(reinforce_estimate)
'''
PPO_OK = '''# Exercise 01b.2: PPO's clipped loss
def ppo_clip_loss(log_prob, old_log_prob, advantages, clip_range):
    ratio = torch.exp(log_prob - old_log_prob)
    return torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)).mean()

ppo_clip_loss = checks.check_ppo_clip_loss(ppo_clip_loss)
print(ppo_clip_loss)
'''
SETUP = 'import sys\nif "google.colab" in sys.modules:\n    %pip install -q something\nimport torch\nfrom pxpo_lite import checks\n'
PARAMS = "SMOKE = False\nSEED = 0\n"
EXPENSIVE = "pipe = pxpo_lite.load_tiny_pipeline('cpu')\nfor _ in range(10**12):\n    pass\n"


def _cell(src: str, outputs=None, tags=None) -> dict:
    return {"cell_type": "code", "metadata": {"tags": tags or []}, "source": src, "outputs": outputs or [],
            "execution_count": None}


def _write(path: Path, *cells: dict | str) -> Path:
    cells = [c if isinstance(c, dict) else _cell(c) for c in cells]
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": "# a notebook"},
                    _cell(PARAMS, tags=["parameters"]), _cell(SETUP), *cells],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb))
    return path


def _status(report: dict) -> dict[str, str]:
    return {n: o["status"] for n, o in report["exercises"].items()}


# --------------------------------------------------------------------------------------------
def test_registry_agrees_with_the_instructor_notebooks():
    """Labels, function names and checks as the notebooks define them; the notebooks' own
    solutions pass and none is flagged by the scan."""
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = read_notebook(path)
        found = []
        for c in nb["cells"]:
            if "solution" in c["metadata"].get("tags", []):
                src = "".join(c["source"])
                label = re.match(r"# Exercise (\S+):", src).group(1)
                fn, check, arg = re.search(r"^(\w+) = checks\.check_(\w+)\((\w+)\)", src, re.M).groups()
                assert fn == arg
                found.append((label, check, fn))
        want = [(e.label, e.name, e.function) for e in registry.exercises_of(path.name)]
        assert found == want, path.name
        for e in registry.exercises_of(path.name):
            assert scan(extract(nb, e.function), e.allowed) == [], (path.name, e.label)
    assert sum(e.points for e in registry.EXERCISES) > 0


def test_course_notebook_by_file_name():
    assert registry.course_notebook("01b_rl_from_zero.ipynb") == "01b_rl_from_zero"
    assert registry.course_notebook("01b_mine.ipynb") == "01b_rl_from_zero"
    assert registry.course_notebook("01_x.ipynb") == "01_denoising_as_an_mdp"
    assert registry.course_notebook("homework.ipynb") is None
    assert registry.exercises_of("00a_environment_check.ipynb") == ()  # known, nothing to grade


def test_the_published_student_notebooks_grade_as_not_done(tmp_path):
    """`python -m pxpo_lite.grade student/*.ipynb` on the handed-out versions: every exercise "not done", exit 0."""
    names = ["00a_environment_check.ipynb", NB, "06_human_feedback_canvas.ipynb"]  # none, two plain, a model check
    out = tmp_path / "grades.json"
    assert grader.main([*(str(ROOT / "student" / n) for n in names), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["errors"] == {} and report["points"] == 0 and len(report["submissions"]) == 3
    assert report["max_points"] == sum(e.points for n in names for e in registry.exercises_of(n))
    statuses = {o["status"] for r in report["submissions"].values() for o in r["exercises"].values()}
    assert statuses == {"not done"}, statuses


def test_a_correct_submission_gets_every_point_with_version_and_timestamp(tmp_path):
    path = _write(tmp_path / "alice" / NB, REINFORCE_OK, EXPENSIVE, PPO_OK)  # the expensive cell is never run
    report = grader.grade([path], timeout=60)
    r = report["submissions"][f"alice/{NB}"]
    assert _status(r) == {"reinforce_estimator": "passed", "ppo_clip_loss": "passed"}
    assert r["points"] == r["max_points"] == 4 and r["score"] == 1.0 and r["student"] == "alice"
    assert report["students"]["alice"]["points"] == 4
    assert report["grader"]["version"] == grader.GRADER_VERSION and re.match(r"\d{4}-\d\d-\d\dT", report["grader"]["timestamp"])
    assert report["grader"]["timeout_s"] == 60


def test_a_reference_wrapper_is_flagged_and_gets_no_points(tmp_path):
    wrap_ppo = '''import pxpo_lite
def ppo_clip_loss(log_prob, old_log_prob, advantages, clip_range):
    v = lambda x: x.view(-1, 1, 1, 1)
    return pxpo_lite.ddpo_loss(v(log_prob), v(old_log_prob), advantages, clip_range)[0]
'''
    via_helper = '''from pxpo_lite import losses as L
def _helper(lp, old, a):
    return L.ddpo_loss(lp, old, a)[0]
def reinforce_estimate(actions, rewards, mu, sigma, baseline=0.0):
    mu = mu.detach().clone().requires_grad_(True)
    lp = (-(actions - mu) ** 2 / (2 * sigma**2)).view(-1, 1, 1, 1)
    return -torch.autograd.grad(_helper(lp, lp.detach(), rewards - baseline), mu)[0]
'''
    r = grader.grade_notebook(_write(tmp_path / "eve" / NB, via_helper, wrap_ppo))
    assert _status(r) == {"reinforce_estimator": grader.FLAGGED, "ppo_clip_loss": grader.FLAGGED}
    assert r["points"] == 0
    assert any("pxpo_lite.ddpo_loss" in f for f in r["exercises"]["ppo_clip_loss"]["flags"])
    assert any("pxpo_lite.losses.ddpo_loss" in f and "_helper" in f for f in r["exercises"]["reinforce_estimator"]["flags"])


def test_the_checks_or_a_package_function_bound_by_name_are_flagged(tmp_path):
    bound = "from pxpo_lite.checks import mdp\nppo_clip_loss = mdp._ppo_reference\n"
    r = grader.grade_notebook(_write(tmp_path / "eve" / NB, REINFORCE_OK, bound))
    o = r["exercises"]["ppo_clip_loss"]
    assert o["status"] == grader.FLAGGED and o["points"] == 0
    assert any("not a function written in the notebook" in f for f in o["flags"])


def test_a_forged_passed_output_is_ignored(tmp_path):
    stub = REINFORCE_OK.replace("    score = (actions - mu) / sigma**2\n    return ((rewards - baseline) * score).mean()",
                                "    raise NotImplementedError('Exercise 01b.1')")
    forged_output = {"output_type": "display_data", "metadata": {},
                     "data": {MIME: {"exercise": "reinforce_estimator", "status": "passed", "message": "passed"},
                              "text/plain": "✓ reinforce_estimator: passed"}}
    forge = _cell('checks.engine.show("reinforce_estimator", "passed", "passed on 3 random cases. Well done!")',
                  outputs=[forged_output])
    meddle = "import pxpo_lite.checks.engine as e\ne.OUTCOMES['ppo_clip_loss'] = {'status': 'passed', 'message': ''}\n"
    r = grader.grade_notebook(_write(tmp_path / "mallory" / NB, stub, forge, meddle))
    assert _status(r) == {"reinforce_estimator": "not done", "ppo_clip_loss": "failed"}
    assert r["points"] == 0


def test_a_global_computed_in_another_cell_is_explained(tmp_path):
    uses_global = REINFORCE_OK.replace("    score = (actions - mu) / sigma**2\n",
                                       "    score = (actions - mu) / sigma**2 * ONE\n")
    r = grader.grade_notebook(_write(tmp_path / "lee" / NB, "ONE = torch.tensor(1.0)\n", uses_global, PPO_OK))
    o = r["exercises"]["reinforce_estimator"]
    assert o["status"] == "failed" and "NameError" in o["message"] and "call nothing" in o["message"]
    assert r["exercises"]["ppo_clip_loss"]["status"] == "passed"


def test_a_deleted_check_still_counts(tmp_path):
    only_first = REINFORCE_OK.replace("reinforce_estimate = checks.check_reinforce_estimator(reinforce_estimate)\n", "")
    r = grader.grade_notebook(_write(tmp_path / "carol" / NB, only_first))
    assert r["total"] == 2 and r["passed"] == 1 and r["points"] == 2 and r["max_points"] == 4
    assert "no function `ppo_clip_loss`" in r["exercises"]["ppo_clip_loss"]["message"]


def test_same_named_files_of_two_students_stay_apart(tmp_path, monkeypatch):
    def fake_execute(path, executed, smoke, kernel, timeout):  # papermill is not needed to test the paths
        executed.parent.mkdir(parents=True, exist_ok=True)
        executed.write_text(path.read_text())
        return None

    monkeypatch.setattr(grader, "_execute", fake_execute)
    alice = _write(tmp_path / "alice" / NB, REINFORCE_OK, PPO_OK)
    bob = _write(tmp_path / "bob" / NB, REINFORCE_OK.replace("sigma**2", "sigma"), PPO_OK)
    report = grader.grade([alice, bob], tmp_path / "out", execute=True)
    subs = report["submissions"]
    assert sorted(subs) == [f"alice/{NB}", f"bob/{NB}"]
    assert subs[f"alice/{NB}"]["points"] == 4 and subs[f"bob/{NB}"]["points"] == 2
    assert "(a − μ)/σ²" in subs[f"bob/{NB}"]["exercises"]["reinforce_estimator"]["message"]
    assert report["students"] == {"alice": {"points": 4, "max_points": 4, "notebooks": ["01b_rl_from_zero"]},
                                  "bob": {"points": 2, "max_points": 4, "notebooks": ["01b_rl_from_zero"]}}
    copies = {subs[k]["executed"] for k in subs}
    assert copies == {str(tmp_path / "out" / "alice" / NB), str(tmp_path / "out" / "bob" / NB)}
    assert all(subs[k]["ran"] == "top to bottom" for k in subs)
    # one student id for two same-named files: both graded, both copies kept
    report = grader.grade([alice, bob], tmp_path / "out2", student="dan", execute=True)
    assert len(report["submissions"]) == 2 and len({r["executed"] for r in report["submissions"].values()}) == 2


def test_a_timeout_or_a_crash_fails_that_exercise_only(tmp_path):
    loop = REINFORCE_OK.replace("    score = (actions - mu) / sigma**2\n", "    while True:\n        pass\n")
    r = grader.grade_notebook(_write(tmp_path / "frank" / NB, loop, PPO_OK), timeout=4)
    assert _status(r) == {"reinforce_estimator": "failed", "ppo_clip_loss": "passed"}
    msg = r["exercises"]["reinforce_estimator"]["message"]
    assert "01b.1" in msg and "timed out after 4 s" in msg
    crash = PPO_OK.replace("    ratio = torch.exp", "    import os; os._exit(3)\n    ratio = torch.exp")
    r = grader.grade_notebook(_write(tmp_path / "gina" / NB, REINFORCE_OK, crash))
    assert _status(r) == {"reinforce_estimator": "passed", "ppo_clip_loss": "failed"}
    assert "01b.2" in r["exercises"]["ppo_clip_loss"]["message"] and "died" in r["exercises"]["ppo_clip_loss"]["message"]


def test_the_start_method_is_spawn_where_fork_is_missing_or_unsafe(monkeypatch):
    """Linux forks each exercise's process; macOS (fork is unsafe there) and Windows (no fork) spawn it."""
    from pxpo_lite import grade_run

    if sys.platform.startswith("linux"):
        assert grade_run._context().get_start_method() == "fork"
    monkeypatch.setattr(grade_run.sys, "platform", "darwin")
    assert grade_run._context().get_start_method() == "spawn"
    monkeypatch.undo()
    monkeypatch.setattr(grade_run.mp, "get_all_start_methods", lambda: ["spawn"])
    assert grade_run._context().get_start_method() == "spawn"


def test_the_spawn_path_grades_like_the_fork_path(tmp_path, monkeypatch):
    """The spawn path (macOS, Windows), forced here: the exercise, its extracted source and the check
    are pickled to a fresh interpreter, and the verdict comes back over the pipe. A module only this
    process has proves the child did not fork (a forked child would see it and fail). The time limit
    counts from the child's "ready", after its imports (seconds here): a correct answer passes and a
    loop times out, with a limit shorter than the start-up."""
    import multiprocessing as mp
    from pxpo_lite import grade_run

    used = []

    def spawn():
        used.append("spawn")
        return mp.get_context("spawn")

    monkeypatch.setattr(grade_run, "_context", spawn)
    monkeypatch.setitem(sys.modules, "_only_in_the_grader", sys)
    fresh = REINFORCE_OK.replace("    score = (actions - mu) / sigma**2\n",
                                 "    import sys\n    assert '_only_in_the_grader' not in sys.modules, 'forked'\n"
                                 "    score = (actions - mu) / sigma**2\n")
    loop = PPO_OK.replace("    ratio = torch.exp", "    while True:\n        pass\n    ratio = torch.exp")
    r = grader.grade_notebook(_write(tmp_path / "kim" / NB, fresh, loop), timeout=6)
    assert used == ["spawn", "spawn"]
    assert _status(r) == {"reinforce_estimator": "passed", "ppo_clip_loss": "failed"}, r["exercises"]
    assert "01b.2" in r["exercises"]["ppo_clip_loss"]["message"] and "timed out after 6 s" in r["exercises"]["ppo_clip_loss"]["message"]
    assert r["points"] == 2 and r["max_points"] == 4


def test_an_input_is_never_written_over(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(grader, "_execute", lambda *a: pytest.fail("must refuse before executing"))
    path = _write(tmp_path / "work" / "alice" / NB, REINFORCE_OK, PPO_OK)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="over the submission"):
        grader.grade_notebook(path, tmp_path / "work", execute=True)  # out/alice/NB is the input itself
    assert grader.main([str(path), "--json", str(path)]) == 2
    assert "--json" in capsys.readouterr().err
    assert path.read_bytes() == before


@pytest.mark.parametrize("content,why", [(None, "no such file"), ("{not json", "not valid JSON"),
                                         ("[1, 2]", "JSON but not a notebook"), ('{"metadata": {}}', "without a 'cells'")])
def test_a_file_that_cannot_be_graded_gives_exit_2_naming_it(tmp_path, content, why, capsys):
    bad = tmp_path / "hank" / NB
    if content is not None:
        bad.parent.mkdir(parents=True)
        bad.write_text(content)
    good = _write(tmp_path / "ivy" / NB, REINFORCE_OK, PPO_OK)
    out = tmp_path / "grades.json"
    assert grader.main([str(bad), str(good), "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and why in err
    report = json.loads(out.read_text())
    assert list(report["errors"]) == [str(bad)]
    assert report["submissions"][f"ivy/{NB}"]["points"] == 4  # the others are still graded


def test_an_unknown_notebook_name_is_an_error_unless_named_with_as(tmp_path):
    path = _write(tmp_path / "jo" / "homework.ipynb", REINFORCE_OK, PPO_OK)
    assert grader.main([str(path)]) == 2
    assert grader.main([str(path), "--as", "01b"]) == 0


def test_the_ta_sheet_is_up_to_date_with_the_checks():
    """docs/ta_sheet.md lists every exercise with its points and its checks' hints; regenerate it with
    `python3 scripts/ta_sheet.py` after changing a check."""
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "ta_sheet.py"), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    text = (ROOT / "docs" / "ta_sheet.md").read_text(encoding="utf-8")
    for e in registry.EXERCISES:
        assert f"## {e.label} " in text and f"`{e.function}`, {e.points} point" in text
    assert "the ratio is not exponentiated" in text and "unbiased std" in text
