"""The repository's set-up files agree with each other."""
import re
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
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


def test_one_version_setting_read_statically_from_the_package():
    """pyproject's version is dynamic, read by setuptools from `__version__ = "..."` without importing torch."""
    import ast

    import pxpo_lite

    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in py["project"] and "version" in py["project"]["dynamic"]
    assert py["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pxpo_lite.__version__"}
    tree = ast.parse((ROOT / "pxpo_lite" / "__init__.py").read_text())
    literal = [ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "__version__"]
    assert literal == [pxpo_lite.__version__], "__version__ must be one plain string literal in pxpo_lite/__init__.py"
    assert re.fullmatch(r"\d+\.\d+\.\d+", pxpo_lite.__version__)


def test_one_repository_setting():
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", urls["Repository"])
    for path in ["Makefile", "scripts/setup.sh", "scripts/sync_notebooks.py", "environment.yml"]:
        assert "github.com/pxpo" not in (ROOT / path).read_text(), f"{path} names the repository; read pyproject's instead"


def test_make_strip_uses_nbstripout_from_the_extra_it_installs():
    make = (ROOT / "Makefile").read_text()
    rule = make[make.index("\nstrip:"):].split("\n\n")[0]
    assert "nbstripout" in rule and "sync_notebooks.py" in rule and "--keep-metadata-keys" in rule
    setup_target = rule.split(":")[1].split()[0]
    extras = re.search(rf"\n{setup_target}:\n\tEXTRAS=(\w+)", make).group(1)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][extras]
    assert any(d.startswith("nbstripout") for d in deps), f"make strip installs [{extras}], which lacks nbstripout"
    assert not (ROOT / "scripts" / "strip_notebooks.py").exists()
    for target in ("sync:", "student:"):
        assert "\n" + target in make, f"Makefile lacks the {target} target"
