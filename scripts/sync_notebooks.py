"""Generate every notebook's Colab badge, Colab install line and kernelspec from one setting.

Where the project lives is set once: ``[project.urls] Repository`` in ``pyproject.toml``. The
package version is set once: ``__version__`` in ``pxpo_lite/__init__.py`` (pyproject reads it).
From these two, for every ``notebooks/*.ipynb``, this script writes

* the badge in the first (markdown) cell:
  ``https://colab.research.google.com/github/<owner>/<repo>/blob/v<version>/notebooks/<name>.ipynb``;
* the install line of the set-up cell (the code cell with ``%pip install``), pinned to the
  release the notebook was written for: ``%pip install -q "pxpo-lite @ git+<url>@v<version>"``;
* the standard kernelspec ``{"display_name": "Python 3", "language": "python", "name": "python3"}``
  (Jupyter and papermill started from the project's venv run it with the venv's python).

Releases: a release sets ``__version__``, runs ``make sync``, commits, and pushes the tag
``v<version>`` (``git tag v0.2.0 && git push origin v0.2.0``); badges and install lines point at
that tag, so a notebook opened in Colab installs exactly the package it was written for.

Usage::

    python scripts/sync_notebooks.py                 # rewrite notebooks/*.ipynb where they disagree
    python scripts/sync_notebooks.py --check         # list every disagreement, exit 1 if any
    python scripts/sync_notebooks.py --check a.ipynb b.ipynb

``make sync`` runs it; ``make strip`` runs it before stripping outputs with nbstripout;
``tests/test_notebook_conventions.py`` fails when a notebook disagrees.
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import nbformat

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser from PyPI (the test extra installs it)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "pxpo-lite"
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE_LINE = re.compile(r"\[!\[Open In Colab\]\(" + re.escape(BADGE_IMAGE) + r"\)\]\([^)]*\)")
# A pip line that installs this package: mentions pxpo-lite / pxpo_lite (a git URL or a name).
INSTALL_LINE = re.compile(r"^(\s*)[%!]pip install\b.*pxpo[-_]lite.*$", re.MULTILINE)
GITHUB_URL = re.compile(r"https://github\.com/([A-Za-z0-9][\w.-]*)/([\w.-]+?)(?:\.git)?/?")


def repository_url(root: Path = ROOT) -> str:
    """``[project.urls] Repository`` from pyproject.toml (a https://github.com/<owner>/<repo> URL)."""
    py = tomllib.loads((root / "pyproject.toml").read_text())
    url = py.get("project", {}).get("urls", {}).get("Repository")
    if not url or not GITHUB_URL.fullmatch(url):
        raise ValueError(
            f"pyproject.toml [project.urls] Repository must be https://github.com/<owner>/<repo>, got {url!r}; "
            "set it there (it is the one place the repository is named)"
        )
    return url.rstrip("/").removesuffix(".git")


def package_version(root: Path = ROOT) -> str:
    """``__version__`` of pxpo_lite/__init__.py, read without importing the package."""
    tree = ast.parse((root / "pxpo_lite" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ValueError("pxpo_lite/__init__.py has no `__version__ = \"X.Y.Z\"` line; add one (it is the one version setting)")


def expected(name: str, url: str, version: str) -> tuple[str, str]:
    """The badge markdown and the install line (without indentation) for notebook ``name``."""
    owner, repo = GITHUB_URL.fullmatch(url).groups()
    link = f"https://colab.research.google.com/github/{owner}/{repo}/blob/v{version}/notebooks/{name}"
    return f"[![Open In Colab]({BADGE_IMAGE})]({link})", f'%pip install -q "{PACKAGE} @ git+{url}@v{version}"'


def sync(nb, name: str, url: str, version: str) -> list[str]:
    """Bring one notebook (nbformat node) in line, in place; return what disagreed (empty: nothing)."""
    badge, install = expected(name, url, version)
    problems = []
    first = nb.cells[0] if nb.cells else None
    if first is None or first.cell_type != "markdown":
        problems.append("the first cell must be markdown holding the Colab badge")
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(badge))
    elif badge not in first.source:
        problems.append(f"badge should be {badge}")
        if BADGE_LINE.search(first.source):
            first.source = BADGE_LINE.sub(lambda m: badge, first.source, count=1)
        else:
            first.source = badge + "\n\n" + first.source
    found = False
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for m in list(INSTALL_LINE.finditer(cell.source)):
            found = True
            if m.group(0).strip() != install:
                problems.append(f"install line is {m.group(0).strip()!r}, should be {install!r}")
        cell.source = INSTALL_LINE.sub(lambda m: m.group(1) + install, cell.source)
    if not found:
        problems.append(f"no set-up cell installs the package on Colab; add `{install}` under `if IN_COLAB:`")
    if dict(nb.metadata.get("kernelspec", {})) != KERNELSPEC:
        problems.append(f"kernelspec is {dict(nb.metadata.get('kernelspec', {}))}, should be {KERNELSPEC}")
        nb.metadata["kernelspec"] = dict(KERNELSPEC)
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python scripts/sync_notebooks.py", description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    ap.add_argument("--check", action="store_true", help="change nothing; list every disagreement and exit 1 if any")
    args = ap.parse_args(argv)
    url, version = repository_url(), package_version()
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    disagreements = unfixable = 0
    for path in paths:
        nb = nbformat.read(str(path), as_version=4)
        problems = sync(nb, path.name, url, version)
        for p in problems:
            print(f"{path}: {p}")
        disagreements += len(problems)
        unfixable += sum(p.startswith("no set-up cell") for p in problems)
        if problems and not args.check:
            nbformat.write(nb, str(path))
    if args.check and disagreements:
        print(f"{disagreements} disagreement(s) with {url} v{version}; run `make sync`", file=sys.stderr)
        return 1
    if unfixable:
        print(f"{unfixable} notebook(s) have no install line to update; add one by hand", file=sys.stderr)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
