"""The repository's set-up files agree with each other."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_installs_this_package_like_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = env["dependencies"]
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    local = [p for p in pip_section if re.fullmatch(r"(-e )?\.(\[[\w,-]+\])?", p.strip())]
    assert local, "environment.yml must pip-install this repository (e.g. '-e .[notebooks]')"
    extras = re.findall(r"\[([\w,-]+)\]", local[0])
    for extra in (extras[0].split(",") if extras else []):
        assert extra in py["optional-dependencies"], f"environment.yml asks for unknown extra {extra!r}"
    pyver = next(d for d in deps if isinstance(d, str) and d.startswith("python"))
    assert pyver.replace("python", "") == py["requires-python"], "python bounds differ"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make lab" in readme
    assert [l for l in ci.splitlines() if l and not l.startswith("#") and not l.startswith("set ") and not l.startswith("cd ")] == ["make test"]


def test_shipped_assets_are_package_data():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "assets/**/*" in py["tool"]["setuptools"]["package-data"]["pxpo_lite"]
