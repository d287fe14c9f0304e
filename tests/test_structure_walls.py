"""Guard the walls (issue 20, structure): where weights change, which modules may import which."""
import ast
import re
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "pxpo_lite"
SOURCES = sorted(p for p in PKG.rglob("*.py"))

#: The only modules that run .backward( and an optimiser's .step(.
CHANGES_WEIGHTS = {"update.py", "pretrain.py"}
#: Known exceptions, by module and function (none: the keep term's cost measurement lives in benchmarks/).
KNOWN: dict = {}
MATH = ("ddim", "pixelwise", "losses", "advantages")
NOT_BELOW = {"sampling", "update", "trainer", "feedback", "experiments", "canvas"}


def _rel(p: Path) -> str:
    return p.relative_to(PKG).as_posix()


def _calls(tree, pattern):
    """(function name or None, line) of every call whose source text matches ``pattern``."""
    out = []
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and re.fullmatch(pattern, ast.unparse(node.func)):
            inside = [f.name for f in funcs if f.lineno <= node.lineno <= (f.end_lineno or f.lineno)]
            out.append((inside[0] if inside else None, node.lineno))
    return out


def test_backward_and_optimiser_steps_only_in_update_and_pretrain():
    found = {}
    for p in SOURCES:
        tree = ast.parse(p.read_text(encoding="utf-8"))
        hits = _calls(tree, r".*\.backward") + _calls(tree, r"\w*opt\w*\.step")
        if hits:
            found[_rel(p)] = hits
    assert set(found) >= CHANGES_WEIGHTS, found
    stray = {f: [(fn, line) for fn, line in hits if fn not in KNOWN.get(f, set())]
             for f, hits in found.items() if f not in CHANGES_WEIGHTS}
    stray = {f: h for f, h in stray.items() if h}
    assert not stray, f".backward( / optimiser .step( outside {sorted(CHANGES_WEIGHTS)}: {stray}"


def _imports(p: Path) -> set[str]:
    """Package modules ``p`` imports (relative or absolute, at any depth of the file)."""
    names = set()
    for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                names |= {mod.split(".")[0]} if mod else {a.name for a in node.names}
            elif mod.startswith("pxpo_lite"):
                parts = mod.split(".")
                names |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("pxpo_lite.")}
    return names


def test_math_modules_import_nothing_above_them():
    bad = {m: sorted(_imports(PKG / f"{m}.py") & NOT_BELOW) for m in MATH}
    assert not any(bad.values()), bad


#: Modules split out so that each concept has one home (issue 20): they sit below sampling and the update.
LOW = ("guidance", "steps", "refine_config", "config_checks")


def test_split_out_homes_import_nothing_above_them():
    bad = {m: sorted(_imports(PKG / f"{m}.py") & (NOT_BELOW | {"keep", "feedback", "flow", "flow_sampling"})) for m in LOW}
    assert not any(bad.values()), bad


def test_only_the_lazy_package_attribute_imports_the_widget():
    importers = sorted(_rel(p) for p in SOURCES if p.name != "canvas.py" and "canvas" in _imports(p))
    assert importers == ["__init__.py"], importers
    code = "import sys, pxpo_lite, pxpo_lite.feedback; print('pxpo_lite.canvas' in sys.modules, 'anywidget' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
