"""What the grader reads from a submission: its code cells, the learner's definitions, a source scan.

Used by :mod:`pxpo_lite.grade`. Nothing here executes learner code (:mod:`pxpo_lite.grade_run` does).

* :func:`read_notebook` loads an ``.ipynb`` file and says plainly why one cannot be graded.
* :func:`extract` picks, for one exercise, the statements the grader executes: from every code
  cell up to the last one that defines the learner's function, the imports, function and class
  definitions and assignments to plain names that call nothing (constants, lambdas), and in the
  exercise's cell any assignment to the function's name; never a ``checks`` call,
  never an expensive cell (a model load, a training loop). IPython magics (``%pip``) are skipped.
* :func:`scan` flags a learner function that calls into ``pxpo_lite`` (the reference
  implementations live there) or touches ``pxpo_lite.checks``, directly or through a helper
  defined in the notebook.
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

_MAGIC = re.compile(r"^(\s*)[%!].*$", re.M)


class NotebookError(ValueError):
    """A file that cannot be graded (missing, not JSON, not a notebook); the message names the file."""


def read_notebook(path: str | Path) -> dict:
    """The notebook at ``path`` as a dict with a ``cells`` list, or :class:`NotebookError` saying why not."""
    path = Path(path)
    if not path.is_file():
        raise NotebookError(f"{path}: no such file; pass the path of a submitted notebook (.ipynb)")
    if path.suffix != ".ipynb":
        raise NotebookError(f"{path}: not a notebook file (its name must end in .ipynb)")
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise NotebookError(f"{path}: not a text file ({e.reason}); is it a notebook?") from None
    except json.JSONDecodeError as e:
        raise NotebookError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                            "the file is damaged: ask for it again or repair it in Jupyter") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        kind = type(nb).__name__ if not isinstance(nb, dict) else "an object without a 'cells' list"
        raise NotebookError(f"{path}: JSON but not a notebook (found {kind}); a notebook is an object with 'cells'")
    return nb


def cell_source(cell: dict) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else str(s)


def code_cells(nb: dict) -> list[tuple[int, str, list[str]]]:
    """``(cell index, source with magics replaced by pass, tags)`` of every code cell."""
    out = []
    for i, c in enumerate(nb["cells"]):
        if isinstance(c, dict) and c.get("cell_type") == "code":
            src = _MAGIC.sub(lambda m: m.group(1) + "pass", cell_source(c))
            out.append((i, src, list(c.get("metadata", {}).get("tags", []))))
    return out


def _mentions_checks(node: ast.AST) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and n.id == "checks":
            return True
        if isinstance(n, ast.Attribute) and n.attr in ("checks", "OUTCOMES", "show", "run_check"):
            return True
    return False


def _calls_something(node: ast.AST) -> bool:
    """Whether evaluating ``node`` calls anything (a lambda's body is not evaluated)."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, (ast.Call, ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr)):
            return True
        if not isinstance(n, ast.Lambda):
            stack.extend(ast.iter_child_nodes(n))
    return False


def _binds(stmt: ast.stmt, name: str) -> bool:
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return stmt.name == name
    if isinstance(stmt, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets)
    if isinstance(stmt, ast.AnnAssign):
        return isinstance(stmt.target, ast.Name) and stmt.target.id == name and stmt.value is not None
    return False


def _wanted(stmt: ast.stmt, function: str, in_exercise_cell: bool) -> bool:
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return True
    if _mentions_checks(stmt):
        return False  # the check calls (the grader makes them), and any use of pxpo_lite.checks
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return True
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        names_only = all(isinstance(n, (ast.Name, ast.Tuple, ast.List, ast.Store, ast.Starred))
                         for t in targets for n in ast.walk(t))  # no `module.attr = …`, no `d[k] = …`
        return names_only and (not _calls_something(stmt.value) or (in_exercise_cell and _binds(stmt, function)))
    return False


@dataclass
class Extracted:
    """The statements to execute for one exercise: ``parts`` = ``[(filename, cell source, statement indices)]``."""
    function: str
    cell: int | None = None                       # the notebook cell that defines the function
    parts: list[tuple[str, str, list[int]]] = field(default_factory=list)
    statements: list[ast.stmt] = field(default_factory=list)   # the same, parsed (for the scan)
    problems: list[str] = field(default_factory=list)          # cells that could not be parsed


def extract(nb: dict, function: str) -> Extracted:
    """The statements the grader runs to obtain the learner's ``function`` (see the module docstring)."""
    ex = Extracted(function)
    parsed = []
    for i, src, tags in code_cells(nb):
        try:
            tree = ast.parse(src)
        except SyntaxError as e:
            ex.problems.append(f"cell {i} has a syntax error (line {e.lineno}: {e.msg}) and was skipped")
            continue
        parsed.append((i, src, tags, tree))
        if any(_binds(s, function) for s in tree.body):
            ex.cell = i
    if ex.cell is None:
        return ex
    for i, src, tags, tree in parsed:
        if i > ex.cell:
            break
        keep = [k for k, s in enumerate(tree.body) if _wanted(s, function, i == ex.cell)]
        ex.parts.append((f"<submission cell {i}>", src, keep))
        ex.statements += [tree.body[k] for k in keep]
        if "parameters" in tags:
            ex.parts.append(("<grader: smoke mode>", "SMOKE = True\n", [0]))
    return ex


# --------------------------------------------------------------------------------------------
# The source scan
# --------------------------------------------------------------------------------------------
def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def _aliases(nodes) -> dict[str, str]:
    """Local name -> qualified name, for the names imported from pxpo_lite (anywhere in ``nodes``)."""
    out = {}
    for s in nodes:
        for n in ast.walk(s):
            if isinstance(n, ast.Import):
                for a in n.names:
                    if a.name.split(".")[0] == "pxpo_lite":
                        out[a.asname or "pxpo_lite"] = a.name if a.asname else "pxpo_lite"
            elif isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] == "pxpo_lite" and not n.level:
                for a in n.names:
                    out[a.asname or a.name] = f"{n.module}.{a.name}"
    return out


def _resolve(qualified: str):
    """The object a ``pxpo_lite.…`` name stands for, or ``None`` when it does not exist."""
    import importlib

    parts = qualified.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        try:
            for p in parts[k:]:
                obj = getattr(obj, p)
        except AttributeError:
            return None
        return obj
    return None


def _used_functions(nodes, defs) -> list[ast.AST]:
    """``nodes`` plus every notebook-defined function they call, transitively."""
    out, seen = list(nodes), set()
    k = 0
    while k < len(out):
        for n in ast.walk(out[k]):
            if isinstance(n, ast.Name) and n.id in defs and n.id not in seen:
                seen.add(n.id)
                out.append(defs[n.id])
        k += 1
    return out


def scan(ex: Extracted, allowed: tuple[str, ...] = ()) -> list[str]:
    """Why the learner's function may wrap the package's implementation (``[]`` when nothing is found).

    Flags every use, in the function or in a helper it calls that the notebook defines, of a
    ``pxpo_lite`` callable not in ``allowed``, of ``pxpo_lite.checks``, and of dynamic lookups
    (``getattr``, ``eval``, ``importlib``). A static scan: it flags, the instructor decides.
    """
    defs = {s.name: s for s in ex.statements if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    own = [s for s in ex.statements if _binds(s, ex.function)]
    nodes = _used_functions(own[-1:], defs)
    aliases = _aliases(ex.statements)
    flags: list[str] = []
    for node in nodes:
        where = f"`{getattr(node, 'name', ex.function)}`"
        inner = {id(n.value) for n in ast.walk(node) if isinstance(n, ast.Attribute)}
        for n in ast.walk(node):
            if not isinstance(n, (ast.Name, ast.Attribute)) or id(n) in inner or isinstance(n.ctx, ast.Store):
                continue
            d = _dotted(n)
            if d is None:
                continue
            if d in ("getattr", "__import__", "eval", "exec", "importlib") or d.startswith("importlib."):
                flags.append(f"{where} uses {d}: a dynamic lookup the scan cannot follow")
                continue
            head, _, rest = d.partition(".")
            q = aliases[head] + ("." + rest if rest else "") if head in aliases else (d if head == "pxpo_lite" else "")
            if not q:
                continue
            if q.startswith("pxpo_lite.checks") or d.split(".")[0] == "checks":
                flags.append(f"{where} uses {q} (the checks themselves)")
            elif q not in allowed and callable(_resolve(q)):
                flags.append(f"{where} uses {q} (a package implementation, possibly the reference)")
    return list(dict.fromkeys(flags))
