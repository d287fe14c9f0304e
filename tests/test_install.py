"""The package installs and its notebooks run as on Colab: from a built wheel, on Colab's versions.

- ``test_wheel_install_runs_notebooks_without_the_source_tree``: build the sdist and a wheel from
  it (``scripts/make_venv.py``), install the wheel *with its dependencies* into a fresh venv
  (``$TORCH_SPEC`` first, default ``torch==2.13.0``), copy only ``notebooks/`` next to it and run
  notebooks 00 and 06 in smoke mode on that venv's kernel. A probe cell checks that
  ``pxpo_lite``, the shipped weights, the widget's JS/CSS and the shipped benchmark results all
  resolve inside the venv.
- ``test_every_notebook_on_colab_versions``: the venv of ``scripts/colab_versions.txt`` (Colab's
  preinstalled versions, cached under ``test-artifacts/venvs/``), the wheel on top with
  ``--no-deps`` and ``pip check``, then every notebook in smoke mode.
- Fast checks: nothing in a notebook reads files outside the package; the shipped benchmark copy
  (notebook 07) agrees with ``benchmarks/results/``; the wheel holds what notebooks read.

Each phase's time is printed (``pytest -s``) and written to ``test-artifacts/install/timings.json``.
The venv tests need the package index (PyPI); without it they are skipped, except in CI
(``CI=true``) where they must run. Set ``TORCH_SPEC`` as for ``scripts/setup.sh``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import make_venv  # noqa: E402  (scripts/ is not a package)
import ship_benchmark_results  # noqa: E402

from pxpo_lite.data import BENCHMARKS_DIR, benchmark_names, load_benchmark  # noqa: E402
from pxpo_lite.results import read_results  # noqa: E402

ARTIFACTS = ROOT / "test-artifacts" / "install"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
COLAB_PINS = {"diffusers": "0.39.0", "peft": "0.20.0", "transformers": "5.15.0", "accelerate": "1.14.0",
              "ipywidgets": "7.7.1", "anywidget": "0.9.21", "numpy": "2.1.3", "ipython": "7.34.0"}
# Code that reaches outside the notebook's folder or into repository folders that are not installed.
OUTSIDE = re.compile(r"""Path\(\s*["']\.\.["']|["']\.\./|os\.pardir|["'](benchmarks|docs|scripts|tests)/""")


def _record_times(test: str, phases: dict) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "timings.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[test] = {**phases, "total": round(sum(phases.values()), 1)}
    path.write_text(json.dumps(data, indent=2))
    print(f"{test}: {data[test]['total']:.0f} s in all; phases {phases}")


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    timer = make_venv.Timer("dist")
    sdist, wheel = make_venv.build_dist(tmp_path_factory.mktemp("dist"), timer)
    return sdist, wheel, timer.phases


def _or_skip_offline(exc: make_venv.StepError):
    if exc.network and not IN_CI:
        pytest.skip(f"the package index is unreachable (CI=true makes this a failure): {str(exc)[:300]}")
    raise exc


def _check_probe(p: dict, venv: Path) -> None:
    site = Path(p["package"]).resolve().parent
    assert Path(p["prefix"]).resolve() == venv.resolve(), f"the kernel is not the venv's python: {p}"
    assert venv.resolve() in site.parents and site != ROOT / "pxpo_lite", f"pxpo_lite resolved outside the venv: {site}"
    assert site.parent.name == "site-packages", f"pxpo_lite is not an installed package: {site}"
    for key in ("weights", "segmenter", "widget", "benchmarks"):
        assert Path(p[key]).resolve().is_relative_to(site), f"{key} is not read from the installed package: {p[key]}"


# ---------------------------------------------------------------- fast checks


def test_no_notebook_reads_files_outside_the_package():
    offenders = []
    for name in NOTEBOOKS:
        nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                offenders += [f"{name} cell {i}: {line.strip()}" for line in cell.source.splitlines() if OUTSIDE.search(line)]
    assert not offenders, "notebooks must read only the installed package (pxpo_lite.data, assets):\n" + "\n".join(offenders)


def test_outside_pattern_catches_the_old_notebook_07_read():
    assert OUTSIDE.search('bench = Path("..") / "benchmarks" / "results" / "ddpo_vs_pxpo.json"')
    assert OUTSIDE.search('json.loads(open("../benchmarks/results/x.json").read())')
    assert not OUTSIDE.search('b = load_benchmark("ddpo_vs_pxpo")')


def test_shipped_benchmark_agrees_with_the_benchmark_output():
    assert "ddpo_vs_pxpo" in benchmark_names()
    shipped = load_benchmark("ddpo_vs_pxpo")
    assert shipped["config"]["command"].startswith("python benchmarks/bench_ddpo_vs_pxpo.py")
    assert set(shipped["summary"]) == {"colour", "hair"}
    for name in benchmark_names():  # every shipped copy is the current output of its benchmark
        shipped = load_benchmark(name)
        assert shipped["config"]["command"].startswith("python benchmarks/bench_"), name
        source = ROOT / shipped["source"]["file"]
        if not source.exists():
            pytest.skip(f"{source} is not in this checkout")
        expected = ship_benchmark_results.shipped_copy(json.loads(source.read_text()), source)
        assert shipped == expected, f"re-run `python scripts/ship_benchmark_results.py --name {name}` after the benchmark"


def test_load_benchmark_rejects_bad_names():
    with pytest.raises(ValueError, match="name='nope'.*ddpo_vs_pxpo"):
        load_benchmark("nope")
    with pytest.raises(TypeError, match="name must be a str"):
        load_benchmark(7)


def test_colab_versions_file_pins_colab_and_says_where_they_come_from():
    text = make_venv.PINS.read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", text, flags=re.M))
    for name, version in COLAB_PINS.items():
        assert pins.get(name) == version, f"{name} should be pinned to Colab's {version}, got {pins.get(name)}"
    assert "torch" not in pins, "torch comes from $TORCH_SPEC (a CPU build), not the pins"
    assert re.search(r"Colab's published package list.*\n.*2026-08", text), "say where the pins come from and when"


@pytest.mark.install
def test_wheel_and_sdist_hold_everything_notebooks_read(dist):
    sdist, wheel, _ = dist
    names = set(zipfile.ZipFile(wheel).namelist())
    needed = ["pxpo_lite/widget/canvas.js", "pxpo_lite/widget/canvas.css", "pxpo_lite/data/__init__.py",
              "pxpo_lite/assets/segmenter/model.safetensors",
              "pxpo_lite/assets/tiny-portraits/unet/diffusion_pytorch_model.safetensors"]
    needed += [f"pxpo_lite/assets/benchmarks/{n}.json" for n in benchmark_names()]
    needed += [p.relative_to(ROOT).as_posix() for p in (ROOT / "pxpo_lite" / "assets").rglob("*")
               if p.is_file() and ".tmp" not in p.as_posix()]
    missing = sorted(set(needed) - names)
    assert not missing, f"the wheel (built from the sdist) lacks {missing}: fix [tool.setuptools.package-data]"
    assert BENCHMARKS_DIR.is_relative_to(ROOT / "pxpo_lite" / "assets")


# ---------------------------------------------------------------- venvs (slow)


@pytest.fixture
def scratch_venv(tmp_path):
    """A path for a throw-away venv (about 1 GB with torch), removed after the test."""
    yield tmp_path / "venv"
    shutil.rmtree(tmp_path / "venv", ignore_errors=True)


@pytest.mark.install
@pytest.mark.slow
def test_wheel_install_runs_notebooks_without_the_source_tree(dist, tmp_path, scratch_venv):
    _, wheel, dist_phases = dist
    timer = make_venv.Timer("wheel")
    venv = scratch_venv
    try:
        make_venv.new_venv(venv, timer)
        make_venv.install_wheel(venv, wheel, timer, deps=True)
    except make_venv.StepError as e:
        _or_skip_offline(e)
    work = tmp_path / "colab"  # only notebooks/ in here: `import pxpo_lite` cannot find the repository
    make_venv.copy_notebooks(work)
    out = ARTIFACTS / "wheel"
    with timer("probe"):
        p = make_venv.probe(venv, work, out)
    _check_probe(p, venv)
    assert p["versions"]["pxpo-lite"] == wheel.name.split("-")[1]
    (out / "versions.json").write_text(json.dumps(p["versions"], indent=2))  # what pip resolved for the wheel
    seconds, failed = make_venv.run_notebooks(venv, ["00_tour.ipynb", "06_human_feedback_canvas.ipynb"], work, out, timer)
    _record_times("wheel_install", {**dist_phases, **timer.phases})
    assert not failed, "notebooks failed from the installed wheel:\n" + "\n\n".join(f"{n}:\n{e}" for n, e in failed.items())
    for name in seconds:
        assert read_results(out / name), f"{name} recorded no results"


@pytest.mark.install
@pytest.mark.slow
def test_every_notebook_on_colab_versions(dist, tmp_path):
    _, wheel, _ = dist
    timer = make_venv.Timer("colab")
    try:
        venv = make_venv.colab_venv(timer)
        make_venv.install_wheel(venv, wheel, timer, deps=False)
    except make_venv.StepError as e:
        _or_skip_offline(e)
    work = tmp_path / "colab"
    make_venv.copy_notebooks(work)
    out = ARTIFACTS / "colab"
    with timer("probe"):
        p = make_venv.probe(venv, work, out)
    _check_probe(p, venv)
    for name, version in COLAB_PINS.items():
        assert p["versions"][name] == version, f"the kernel sees {name} {p['versions'][name]}, not Colab's {version}"
    seconds, failed = make_venv.run_notebooks(venv, NOTEBOOKS, work, out, timer)
    _record_times("colab_versions", timer.phases)
    (out / "versions.json").write_text(json.dumps(p["versions"], indent=2))
    assert not failed, "notebooks failed on Colab's versions:\n" + "\n\n".join(f"{n}:\n{e}" for n, e in failed.items())
    results = {name: read_results(out / name) for name in seconds}
    assert all(results.values()), f"some notebooks recorded nothing: {[n for n, r in results.items() if not r]}"
    assert results["07_ddpo_vs_pxpo.ipynb"]["benchmark_command"].startswith("python benchmarks/")
