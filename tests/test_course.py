"""Course mode: self-checking exercises (pxpo_lite.checks), student versions (scripts/make_student.py)
and the grader (python -m pxpo_lite.grade; its own cases are in tests/test_grade.py).

Unit tests run the checks on correct and deliberately wrong implementations; the notebook tests
(smoke mode: every notebook for the instructor version, the fast ones as students) check that the instructor versions pass every check,
the student versions run top to bottom with every check "not done", a student notebook with the
solutions pasted back grades 100 %, and a wrong solution is reported failed with a hint.
"""
from __future__ import annotations

import importlib.util
import base64
import copy
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pxpo_lite import checks, ddim, lora
from pxpo_lite.grade import expected_exercises, grade_notebook, read_outcomes

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = {
    "00_tour.ipynb": ["blueness"],
    "01_denoising_as_an_mdp.ipynb": ["ddim_step_log_prob"],
    "01b_rl_from_zero.ipynb": ["reinforce_estimator", "ppo_clip_loss"],
    "02_ddpo.ipynb": ["prompt_advantages"],
    "03_pixelwise_logprobs.ipynb": ["per_pixel_log_prob", "kronecker_credit"],
    "04_pxpo_colour_feedback.ipynb": ["pixel_advantages", "pxpo_loss", "gaussian_kl"],
    "05_pxpo_segmentation_feedback.ipynb": ["hair_reward_map"],
    "06_human_feedback_canvas.ipynb": ["heatmap_to_advantages", "lora_param_count"],
    "07_ddpo_vs_pxpo.ipynb": ["effect_size"],
    "08_stable_diffusion.ipynb": ["latent_grid"],
    "09_flow_matching_grpo.ipynb": ["flow_sde_log_prob", "group_advantages"],
}
COURSE_NOTEBOOKS = sorted(EXERCISES)
STUDENT_RUN = ["01b_rl_from_zero.ipynb", "06_human_feedback_canvas.ipynb", "08_stable_diffusion.ipynb"]  # the fast ones


def _load_make_student():
    spec = importlib.util.spec_from_file_location("make_student", ROOT / "scripts" / "make_student.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


make_student = _load_make_student()


# --------------------------------------------------------------------------------------------
# Correct implementations, written independently of the package
# --------------------------------------------------------------------------------------------
def ddim_ok(scheduler, model_output, t, x_t, x_prev, eta, floor=True):
    t_prev = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    a_t = scheduler.alphas_cumprod[t]
    a_p = scheduler.alphas_cumprod[t_prev] if t_prev >= 0 else scheduler.final_alpha_cumprod
    if scheduler.config.prediction_type == "v_prediction":
        x0 = a_t.sqrt() * x_t - (1 - a_t).sqrt() * model_output
        eps = a_t.sqrt() * model_output + (1 - a_t).sqrt() * x_t
    else:
        eps, x0 = model_output, (x_t - (1 - a_t).sqrt() * model_output) / a_t.sqrt()
    sigma = eta * ((1 - a_p) / (1 - a_t)).sqrt() * (1 - a_t / a_p).sqrt()
    mu = a_p.sqrt() * x0 + (1 - a_p - sigma**2).clamp(min=0).sqrt() * eps
    s = torch.where(sigma > 0, sigma, torch.tensor(ddim.SIGMA_MIN)) if floor else sigma  # the floor only where σ_t = 0
    return -(x_prev - mu) ** 2 / (2 * s**2) - s.log() - 0.5 * math.log(2 * math.pi)


def reinforce_ok(actions, rewards, mu, sigma, baseline=0.0):
    return ((rewards - baseline) * (actions - mu) / sigma**2).mean()


def ppo_ok(log_prob, old_log_prob, advantages, clip_range):
    rho = (log_prob - old_log_prob).exp()
    return torch.maximum(-advantages * rho, -advantages * rho.clamp(1 - clip_range, 1 + clip_range)).mean()


def kron_ok(log_probs, reward_map):
    lp = log_probs if log_probs.ndim == 5 else log_probs[:, None]
    return (reward_map[:, None, None] * lp).mean((-3, -2, -1)).sum(1).mean()


def pixel_adv_ok(reward_maps, clip_max=5.0):
    c = reward_maps - reward_maps.mean(0)
    return (c / (c.std(unbiased=False) + 1e-6)).clamp(-clip_max, clip_max)


def pxpo_ok(log_prob, old_log_prob, advantage_map, clip_range=None):
    a = advantage_map[:, None]
    if clip_range is None:
        return -(a * log_prob).mean()
    rho = (log_prob - old_log_prob).exp()
    return torch.maximum(-a * rho, -a * rho.clamp(1 - clip_range, 1 + clip_range)).mean()


def heat_ok(heatmap, sample_size, scale=1.0):
    return F.adaptive_avg_pool2d(torch.as_tensor(heatmap)[None, None] * scale, sample_size)[0]


def blue_ok(images):
    r, g, b = images.unbind(1)
    return (b - torch.maximum(r, g)).clamp(0, 1)


def prompt_adv_ok(rewards, prompts, clip_max=5.0):
    out = torch.zeros_like(rewards)
    for p in set(prompts):
        idx = torch.tensor([i for i, q in enumerate(prompts) if q == p])
        out[idx] = (rewards[idx] - rewards[idx].mean()) / (rewards[idx].std(unbiased=False) + 1e-6)
    return out.clamp(-clip_max, clip_max)


def sde_ok(scheduler, v, i, x, x_next, a):
    t, t_next = scheduler.sigmas[i], scheduler.sigmas[i + 1]
    sigma = a * (t / (1 - (scheduler.sigmas[1] if t == 1 else t))).sqrt()
    mu = x + (v + sigma**2 / (2 * t) * (x + (1 - t) * v)) * (t_next - t)
    s = sigma * (t - t_next).sqrt()
    return -(x_next - mu) ** 2 / (2 * s**2) - s.log() - 0.5 * math.log(2 * math.pi)


def lora_count_ok(model, rank, target_modules):
    mods, n = dict(model.named_modules()), 0
    for name in lora.matching_modules(model, target_modules):
        m = mods[name]
        if isinstance(m, torch.nn.Linear):
            n += rank * (m.in_features + m.out_features)
        else:
            n += rank * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels)
    return n


CORRECT = [
    (checks.check_ddim_step_log_prob, ddim_ok),
    (checks.check_reinforce_estimator, reinforce_ok),
    (checks.check_ppo_clip_loss, ppo_ok),
    (checks.check_per_pixel_log_prob, lambda lp: lp.sum(-3)),
    (checks.check_kronecker_credit, kron_ok),
    (checks.check_pixel_advantages, pixel_adv_ok),
    (checks.check_pxpo_loss, pxpo_ok),
    (checks.check_heatmap_to_advantages, heat_ok),
    (checks.check_lora_param_count, lora_count_ok),
    (checks.check_blueness, blue_ok),
    (checks.check_prompt_advantages, prompt_adv_ok),
    (checks.check_gaussian_kl, lambda m, r, s: (m - r) ** 2 / (2 * s**2)),
    (checks.check_hair_reward_map, lambda lg: -lg.softmax(1)[:, 2]),
    (checks.check_effect_size, lambda b, a: (a.mean() - b.mean()) / b.std(unbiased=False)),
    (checks.check_latent_grid, lambda m, f: F.avg_pool2d(m[:, None], f)[:, 0]),
    (checks.check_flow_sde_log_prob, sde_ok),
    (checks.check_group_advantages, prompt_adv_ok),  # GRPO's groups are DDPO's per-prompt statistics of one batch
]


def _name(check) -> str:
    return check.__name__[len("check_"):]


@pytest.mark.parametrize("check,fn", CORRECT, ids=[_name(c) for c, _ in CORRECT])
def test_a_correct_implementation_passes_and_is_returned(check, fn):
    assert check(fn) is fn
    assert checks.OUTCOMES[_name(check)]["status"] == checks.PASSED


@pytest.mark.parametrize("check", [c for c, _ in CORRECT], ids=[_name(c) for c, _ in CORRECT])
def test_a_stub_is_not_done_and_the_reference_is_returned(check, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError("Exercise: write your code here")

    ref = check(stub)
    assert ref is not stub and callable(ref)
    assert checks.OUTCOMES[_name(check)]["status"] == checks.NOT_DONE
    assert "not done yet" in capsys.readouterr().out
    # the returned reference is usable with the learner's signature: it passes its own check
    assert check(ref) is ref


def _failed_with(check, fn, *words):
    ref = check(fn)
    outcome = checks.OUTCOMES[_name(check)]
    assert ref is not fn, "a wrong function must not be returned"
    assert outcome["status"] == checks.FAILED, outcome
    for w in words:
        assert w in outcome["message"], (w, outcome["message"])
    return outcome["message"]


def test_wrong_sign_is_named():
    _failed_with(checks.check_ppo_clip_loss, lambda *a: -ppo_ok(*a), "wrong sign")
    _failed_with(checks.check_pxpo_loss, lambda *a: -pxpo_ok(*a), "sign")


def test_typical_mistakes_get_specific_hints():
    _failed_with(checks.check_reinforce_estimator,
                 lambda a, r, mu, s, b=0.0: ((r - b) * (a - mu) / s).mean(), "(a − μ)/σ²")
    _failed_with(checks.check_reinforce_estimator, lambda a, r, mu, s, b=0.0: reinforce_ok(a, r, mu, s, 0.0), "baseline")
    _failed_with(checks.check_ppo_clip_loss,
                 lambda lp, old, a, e: torch.minimum(-a * (lp - old).exp(), -a * (lp - old).exp().clamp(1 - e, 1 + e)).mean(),
                 "pessimistic")
    _failed_with(checks.check_ddim_step_log_prob, lambda *a: ddim_ok(*a) + 0.5 * math.log(2 * math.pi), "½ log 2π")
    _failed_with(checks.check_ddim_step_log_prob, lambda *a: ddim_ok(*a, floor=False), "SIGMA_MIN", "last step")
    _failed_with(checks.check_per_pixel_log_prob, lambda lp: lp.sum(1), "shape", "channel")
    _failed_with(checks.check_per_pixel_log_prob, lambda lp: lp.mean(-3), "average the channels")
    _failed_with(checks.check_kronecker_credit,
                 lambda lp, m: kron_ok(lp, m.mean((-2, -1), keepdim=True).expand_as(m)), "whole-image credit")
    _failed_with(checks.check_kronecker_credit, lambda lp, m: kron_ok(lp.detach(), m), "not differentiable")
    _failed_with(checks.check_heatmap_to_advantages, lambda h, s, sc=1.0: heat_ok(h, s, sc)[0], "shape", "(1, h, w)")
    _failed_with(checks.check_pixel_advantages,
                 lambda r, c=5.0: ((r - r.mean()) / ((r - r.mean(0)).std(unbiased=False) + 1e-6)).clamp(-c, c), "per-pixel mean map")
    _failed_with(checks.check_lora_param_count,
                 lambda m, r, t: sum(dict(m.named_modules())[n].weight.numel() for n in lora.matching_modules(m, t)), "full weights")
    msg = _failed_with(checks.check_lora_param_count, lambda m, r, t: 2 * lora_count_ok(m, r, t), "factor 2")
    assert "rank" in msg  # names the failing case


def test_new_checks_name_the_typical_mistakes():
    _failed_with(checks.check_blueness, lambda im: im[:, 2] - torch.maximum(im[:, 0], im[:, 1]), "clipped")
    _failed_with(checks.check_prompt_advantages,
                 lambda r, p, c=5.0: ((r - r.mean()) / (r.std(unbiased=False) + 1e-6)).clamp(-c, c), "each prompt")
    _failed_with(checks.check_gaussian_kl, lambda m, r, s: (m - r) ** 2 / (2 * s), "2σ²")
    _failed_with(checks.check_gaussian_kl, lambda m, r, s: ((m - r) ** 2 / (2 * s**2)).detach(), "not differentiable")
    _failed_with(checks.check_hair_reward_map, lambda lg: lg.softmax(1)[:, 2], "negative")
    _failed_with(checks.check_effect_size, lambda b, a: (a.mean() - b.mean()) / a.std(unbiased=False), "std *after*")
    _failed_with(checks.check_latent_grid, lambda m, f: F.max_pool2d(m[:, None], f)[:, 0], "maximum")


def test_an_error_in_the_learners_code_is_reported_not_raised():
    msg = _failed_with(checks.check_per_pixel_log_prob, lambda lp: lp.sum(dim=7), "IndexError")
    assert "log_probs of shape" in msg


def test_check_needs_a_function():
    with pytest.raises(TypeError, match="callable"):
        checks.check_ppo_clip_loss(0.5)


def test_outcomes_are_displayed_with_the_grader_mime(capsys):
    checks.check_ppo_clip_loss(ppo_ok)
    assert "✓ ppo_clip_loss" in capsys.readouterr().out
    assert checks.summary()["ppo_clip_loss"]["status"] == checks.PASSED


# --------------------------------------------------------------------------------------------
# Student versions
# --------------------------------------------------------------------------------------------
CELL = '''# Exercise 9.1: a title
def f(x):
    """Doc."""
    y = 1
    ### BEGIN SOLUTION
    return x + y
    ### END SOLUTION

f = checks.check_something(f)
'''


def test_stub_source_keeps_signature_docstring_and_indentation():
    out = make_student.stub_source(CELL)
    assert "return x + y" not in out and "BEGIN SOLUTION" not in out
    assert '    raise NotImplementedError(\'Exercise 9.1: a title — write your code here\')' in out
    assert 'def f(x):\n    """Doc."""\n    y = 1\n' in out and out.endswith("f = checks.check_something(f)\n")
    ns = {}
    exec(out.replace("f = checks.check_something(f)\n", ""), ns)
    with pytest.raises(NotImplementedError, match="Exercise 9.1"):
        ns["f"](1)


@pytest.mark.parametrize("bad,match", [
    ("# Exercise 1\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", "not indented"),
    ("def f():\n    ### BEGIN SOLUTION\n    return 1\n", "never closed"),
    ("def f():\n    return 1\n    ### END SOLUTION\n", "without a"),
])
def test_stub_source_rejects_malformed_markers(bad, match):
    with pytest.raises(ValueError, match=match):
        make_student.stub_source(bad)


def test_untagged_solution_block_is_an_error():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(CELL)])
    with pytest.raises(ValueError, match="not tagged 'solution'"):
        make_student.make_student(nb, "x.ipynb")


@pytest.mark.parametrize("name", COURSE_NOTEBOOKS)
def test_student_version_has_stubs_no_solutions_no_answers(name):
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    n_solution = sum("solution" in c.metadata.get("tags", []) for c in nb.cells)
    assert n_solution == len(EXERCISES[name])
    student, counts = make_student.make_student(nb, name)
    assert counts["stubbed"] == n_solution
    text = "\n".join("".join(c["source"]) for c in student["cells"])
    assert "### BEGIN SOLUTION" not in text
    assert text.count("raise NotImplementedError(") >= n_solution
    assert not any("answer" in c["metadata"].get("tags", []) for c in student["cells"])
    assert all(c.get("outputs", []) == [] for c in student["cells"] if c["cell_type"] == "code")
    badges = re.findall(r"https://colab\.research\.google\.com/github/[^)\s]+", text)
    assert badges and all(b.endswith(f"/student/{name}") for b in badges), badges  # opens the student version
    assert "### BEGIN SOLUTION" in "".join(c.source for c in nb.cells)  # the input is left as it was
    assert expected_exercises(ROOT / "notebooks" / name) == EXERCISES[name]


@pytest.mark.parametrize("name", COURSE_NOTEBOOKS)
def test_every_notebook_ends_with_think_questions_and_records_in_one_cell(name):
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    text = "\n".join(c.source for c in nb.cells)
    assert "### Think!" in text, "a summary with Think! questions before the results cell"
    assert sum("answer" in c.metadata.get("tags", []) for c in nb.cells) >= 3, "answers (instructor version) to >= 3 questions"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[-1].source.startswith("# Results of this notebook"), "one final recording cell"
    calls = [i for i, c in enumerate(code[:-1]) if re.search(r"(?<![\w.])record\(", c.source)]
    assert not calls, f"record(...) in learner-facing cells {calls}: put the value in RESULTS"
    assert "**Runtime (measured)**" in nb.cells[0].source and "Expected runtime" not in nb.cells[0].source


def test_make_student_needs_neither_the_package_nor_torch_nor_nbformat(tmp_path):
    """`make student` runs scripts/make_student.py with plain python3: only the standard library."""
    code = ("import sys, runpy; sys.modules.update(torch=None, nbformat=None, pxpo_lite=None, numpy=None); "
            f"sys.argv = ['make_student.py', {str(ROOT / 'notebooks' / '01b_rl_from_zero.ipynb')!r}, '--out', "
            f"{str(tmp_path)!r}]; runpy.run_path({str(ROOT / 'scripts' / 'make_student.py')!r}, run_name='__main__')")
    res = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "01b_rl_from_zero.ipynb").is_file()
    nbformat.validate(nbformat.read(tmp_path / "01b_rl_from_zero.ipynb", as_version=4))
    assert "\nstudent:\n\tpython3 scripts/make_student.py\n" in (ROOT / "Makefile").read_text()


def test_published_student_notebooks_are_up_to_date(tmp_path):
    """student/ is generated from notebooks/ and committed; regenerate it with `make student`."""
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_student.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True, check=True)
    published = ROOT / "student"
    want = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert sorted(p.name for p in published.glob("*.ipynb")) == want, "student/ and notebooks/ differ: run `make student`"
    stale = [n for n in want if (published / n).read_bytes() != (tmp_path / n).read_bytes()]
    assert not stale, f"student/ is out of date with notebooks/ for {stale}: run `make student` and commit student/"


def test_make_student_command_writes_the_folder(tmp_path):
    paths = [str(ROOT / "notebooks" / n) for n in COURSE_NOTEBOOKS]
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_student.py"), *paths, "--out", str(tmp_path)],
                         capture_output=True, text=True, check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(COURSE_NOTEBOOKS), res.stdout
    answers = [c for c in nbformat.read(ROOT / "notebooks" / "01b_rl_from_zero.ipynb", as_version=4).cells
               if "answer" in c.metadata.get("tags", [])]
    assert answers and "answer cell(s) removed" in res.stdout


# --------------------------------------------------------------------------------------------
# Notebooks: instructor, student, pasted back, wrong (smoke mode)
# --------------------------------------------------------------------------------------------
def _student(name: str, folder: Path, replace: dict[int, str] | None = None) -> Path:
    """Write the student version of a notebook; ``replace``: exercise index -> source of that cell."""
    student, _ = make_student.make_student(make_student.read_notebook(ROOT / "notebooks" / name), name)
    cells = [c for c in student["cells"] if "solution" in c["metadata"].get("tags", [])]
    for k, src in (replace or {}).items():
        cells[k]["source"] = src
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(make_student.dumps(student), encoding="utf-8")
    return folder / name


def _solutions(name: str) -> list[str]:
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    return [c.source for c in nb.cells if "solution" in c.metadata.get("tags", [])]


@pytest.mark.notebook
@pytest.mark.parametrize("name", COURSE_NOTEBOOKS)
def test_instructor_version_passes_every_check(name, executed_notebook):
    out, _, _ = executed_notebook(name)
    outcomes = read_outcomes(out)
    assert sorted(outcomes) == sorted(EXERCISES[name])
    assert all(o["status"] == checks.PASSED for o in outcomes.values()), outcomes


@pytest.mark.notebook
@pytest.mark.parametrize("name", STUDENT_RUN)
def test_student_version_runs_with_every_check_not_done(name, tmp_path):
    report = grade_notebook(_student(name, tmp_path / "student"), tmp_path / "executed", execute=True)
    assert report["ran"] == "top to bottom", report["ran"]
    assert {n: o["status"] for n, o in report["exercises"].items()} == {n: checks.NOT_DONE for n in EXERCISES[name]}
    assert report["score"] == 0 and report["points"] == 0


@pytest.mark.notebook
def test_solutions_pasted_back_grade_100_percent(tmp_path):
    name = "01b_rl_from_zero.ipynb"
    path = _student(name, tmp_path / "student", dict(enumerate(_solutions(name))))
    out = tmp_path / "grades.json"
    res = subprocess.run([sys.executable, "-m", "pxpo_lite.grade", str(path), "--json", str(out)],
                         capture_output=True, text=True, cwd=str(ROOT), check=True)
    report = json.loads(out.read_text())
    assert report["passed"] == report["total"] == 2 and report["points"] == report["max_points"], res.stdout
    assert f"student: {report['max_points']}/{report['max_points']} points" in res.stdout


@pytest.mark.notebook
def test_a_wrong_solution_is_reported_failed_with_a_hint(tmp_path):
    name = "01b_rl_from_zero.ipynb"
    first, second = _solutions(name)
    wrong = first.replace("return ((rewards - baseline) * score).mean()", "return -((rewards - baseline) * score).mean()")
    assert wrong != first
    report = grade_notebook(_student(name, tmp_path / "student", {0: wrong, 1: second}), tmp_path / "executed",
                            execute=True)
    ex = report["exercises"]
    assert ex["reinforce_estimator"]["status"] == checks.FAILED and "sign" in ex["reinforce_estimator"]["message"]
    assert ex["ppo_clip_loss"]["status"] == checks.PASSED
    assert report["passed"] == 1 and report["points"] == ex["ppo_clip_loss"]["max_points"]
    assert report["ran"] == "top to bottom"  # the notebook went on with the reference


def test_run_notebooks_exports_every_figure(tmp_path):
    spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "scripts" / "run_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    png = base64.b64encode(b"\x89PNG fake").decode()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("plot()"), nbformat.v4.new_code_cell("x")])
    nb.cells[0].outputs = [nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"}),
                           nbformat.v4.new_output("display_data", data={"image/png": png})]
    path = tmp_path / "07_x.ipynb"
    nbformat.write(nb, path)
    written = mod.export_figures(path, tmp_path / "figures")
    assert [p.name for p in written] == ["07_x-00-0.png", "07_x-00-1.png"]
    assert written[0].read_bytes() == b"\x89PNG fake"


# --------------------------------------------------------------------------------------------
# A ✓ means the notebook goes on: the return contract, float64, array inputs, copied inputs
# --------------------------------------------------------------------------------------------
def test_float64_answers_pass():
    def ddim_f64(scheduler, model_output, t, x_t, x_prev, eta):  # the schedule in float64 too
        s = copy.deepcopy(scheduler)
        s.alphas_cumprod, s.final_alpha_cumprod = s.alphas_cumprod.double(), s.final_alpha_cumprod.double()
        return ddim_ok(s, model_output.double(), t, x_t.double(), x_prev.double(), eta)

    assert checks.check_ddim_step_log_prob(ddim_f64) is ddim_f64  # incl. the σ_t = 0 step's gradients
    f64 = lambda lp, old, a, e: ppo_ok(lp.double(), old.double(), a.double(), e)
    assert checks.check_ppo_clip_loss(f64) is f64
    assert checks.check_blueness(lambda im: blue_ok(im.double())) is not None
    assert checks.OUTCOMES["blueness"]["status"] == checks.PASSED


@pytest.mark.parametrize("check,fn,words", [
    (checks.check_blueness, lambda im: blue_ok(im).numpy(), ("NumPy array", "torch tensor of shape (4, 6, 5)", "values are right")),
    (checks.check_reinforce_estimator, lambda *a: float(reinforce_ok(*a)), ("a float", "0-d", "values are right")),
    (checks.check_heatmap_to_advantages, lambda h, s, sc=1.0: heat_ok(h, s, sc).numpy(), ("NumPy array", "(1, 8, 8)")),
    (checks.check_ppo_clip_loss, lambda *a: (ppo_ok(*a), {}), ("a tuple", "tensor itself")),
    (checks.check_per_pixel_log_prob, lambda lp: lp.sum(-3).round().long(), ("torch.int64", "float32 or float64")),
    (checks.check_lora_param_count, lambda m, r, t: [lora_count_ok(m, r, t)], ("a list", "one number")),
], ids=["blueness-numpy", "reinforce-float", "heatmap-numpy", "ppo-tuple", "per-pixel-int", "lora-list"])
def test_an_answer_that_breaks_the_return_contract_gets_a_hint_not_a_pass(check, fn, words):
    _failed_with(check, fn, *words)


def test_numbers_and_numpy_arrays_where_the_text_allows_them():
    assert checks.check_lora_param_count(lambda m, r, t: float(lora_count_ok(m, r, t))) is not None
    assert checks.OUTCOMES["lora_param_count"]["status"] == checks.PASSED
    numpy_effect = lambda b, a: (np.mean(a) - np.mean(b)) / np.std(b)  # 07.1 says "two arrays"
    assert checks.check_effect_size(numpy_effect) is numpy_effect
    listy = lambda b, a: (sum(a) / len(a) - sum(b) / len(b)) / float(np.std(np.asarray(b)))
    assert checks.check_effect_size(listy) is listy
    _failed_with(checks.check_effect_size, lambda b, a: (np.mean(a) - np.mean(b)) / np.std(b, ddof=1), "unbiased std")


def test_inputs_are_copied_before_the_learners_function_sees_them():
    def correct_but_mutates(rewards, prompts, clip_max=5.0):
        out = prompt_adv_ok(rewards, prompts, clip_max)
        prompts.reverse()
        rewards.zero_()
        return out

    assert checks.check_prompt_advantages(correct_but_mutates) is correct_but_mutates

    def wrong_and_mutates(rewards, prompts, clip_max=5.0):  # whole-batch statistics, then all prompts made equal
        prompts[:] = [prompts[0]] * len(prompts)
        return ((rewards - rewards.mean()) / (rewards.std(unbiased=False) + 1e-6)).clamp(-clip_max, clip_max)

    _failed_with(checks.check_prompt_advantages, wrong_and_mutates, "each prompt")


def test_hints_name_exp_unbiased_std_and_a_missing_baseline():
    no_exp = lambda lp, old, a, e: torch.maximum(-a * (lp - old), -a * (lp - old).clamp(1 - e, 1 + e)).mean()
    msg = _failed_with(checks.check_ppo_clip_loss, no_exp, "not exponentiated")
    assert "constant factor" not in msg
    pxpo_no_exp = lambda lp, old, m, e=None: pxpo_ok(lp, old, m, None) if e is None else torch.maximum(
        -m[:, None] * (lp - old), -m[:, None] * (lp - old).clamp(1 - e, 1 + e)).mean()
    _failed_with(checks.check_pxpo_loss, pxpo_no_exp, "not exponentiated")
    unbiased = lambda r, c=5.0: ((r - r.mean(0)) / ((r - r.mean(0)).std() + 1e-6)).clamp(-c, c)
    _failed_with(checks.check_pixel_advantages, unbiased, "unbiased std", "unbiased=False")
    no_baseline = lambda r, c=5.0: (r / (r.std(unbiased=False) + 1e-6)).clamp(-c, c)
    _failed_with(checks.check_pixel_advantages, no_baseline, "baseline is missing")
    no_baseline2 = lambda r, c=5.0: (r / ((r - r.mean(0)).std(unbiased=False) + 1e-6)).clamp(-c, c)
    _failed_with(checks.check_pixel_advantages, no_baseline2, "baseline is missing")

    def prompt_unbiased(rewards, prompts, clip_max=5.0):
        out = torch.zeros_like(rewards)
        for p in set(prompts):
            idx = torch.tensor([i for i, q in enumerate(prompts) if q == p])
            out[idx] = (rewards[idx] - rewards[idx].mean()) / (rewards[idx].std() + 1e-6)
        return out.clamp(-clip_max, clip_max)

    _failed_with(checks.check_prompt_advantages, prompt_unbiased, "unbiased std")


def test_a_wrong_number_is_not_called_a_constant_factor():
    msg = _failed_with(checks.check_reinforce_estimator, lambda *a: reinforce_ok(*a) + 0.37, "the reference gives")
    assert "factor" not in msg
