"""Write docs/bad_inputs.md: the bad-input table of tests/test_bad_inputs.py with the actual messages.

Usage (from the repository root)::

    .venv/bin/python scripts/bad_inputs_table.py [--out docs/bad_inputs.md]

Runs every case of ``BAD_INPUTS`` once (no sampling, a few seconds on a CPU) and writes one
markdown row per case: module, the bad input, the exception type and its message. A case that
does not raise what the test expects is marked ✗ (the test fails on it too). Then the section
"Writers and workers" from ``BAD_WRITES`` of ``tests/test_bad_writes.py`` (each case in a
temporary folder that is removed), so regenerating keeps it.
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HEADER = """# Bad inputs and their error messages

Every kind of bad input we tried on `pxpo_lite`, what it raises and the message a user sees.
Generated from the list `BAD_INPUTS` in `tests/test_bad_inputs.py` (which checks each exception
type and message) by `python scripts/bad_inputs_table.py`; do not edit by hand.

| module | bad input | exception | message |
|---|---|---|---|
"""


WRITES_HEADER = """## Writers and workers

What a writer refuses because it did not make it (the rule: create or replace only what this
package made and recorded), and how a dead worker of `experiments.map_jobs` is reported instead of
a hang. Checked by `tests/test_bad_writes.py` (which also checks that this section lists each kind);
print the rows with `.venv/bin/python tests/test_bad_writes.py` (paths shown as `<tmp>`).

| module | bad input | exception | message |
|---|---|---|---|
"""


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _load_cases():
    return _load("test_bad_inputs")


def writes_section() -> str:
    """The "Writers and workers" section from ``BAD_WRITES`` of tests/test_bad_writes.py (each case in a temporary folder)."""
    mod = _load("test_bad_writes")
    rows = mod.section()
    return WRITES_HEADER + rows + f"\n\n{len(mod.BAD_WRITES)} kinds of refused write or dead worker.\n"


def _cell(text: str) -> str:
    text = re.sub(re.escape(tempfile.gettempdir()) + r"/tmp\w+", "<tmp>", str(text))  # a case's temporary folder
    return " ".join(text.split()).replace("|", "\\|")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "bad_inputs.md"), help="markdown file to write")
    args = ap.parse_args(argv)
    mod = _load_cases()
    rows, bad = [], 0
    for case in mod.BAD_INPUTS:
        e = mod.run_case(case)
        ok = isinstance(e, case.exc) and re.search(case.match, str(e)) is not None
        bad += not ok
        mark = "" if ok else " ✗"
        rows.append(f"| {case.module} | {_cell(case.name)} | `{type(e).__name__}`{mark} | {_cell(e)} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(HEADER + "\n".join(rows) + f"\n\n{len(rows)} kinds of bad input.\n\n" + writes_section(), encoding="utf-8")
    print(f"wrote {out} ({len(rows)} cases, {bad} not as expected)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
