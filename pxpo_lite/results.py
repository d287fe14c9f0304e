"""Record a notebook's results so tests can read them back from the executed notebook.

``record("mean_reward_after", 0.12)`` displays the value (so a reader sees it) and attaches it
to the cell's output under a custom MIME type. ``read_results(executed_notebook)`` collects
every recorded value from a notebook file that papermill (or JupyterLab) executed. No extra
package: the values live in the notebook's own outputs. Values must be JSON-serialisable
(numbers, strings, lists, dicts); NumPy/torch scalars are converted.

Introduced in ``notebooks/00_tour.ipynb``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MIME = "application/vnd.pxpo-lite.result+json"


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy / torch
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"record() needs a JSON-serialisable value (number, str, list, dict), got {type(value).__name__}")


def record(name: str, value: Any) -> Any:
    """Show ``name = value`` and store it in the cell output for tests; returns ``value``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    plain = _plain(value)
    text = f"{name} = {json.dumps(plain) if not isinstance(plain, str) else plain}"
    try:
        from IPython.display import display  # IPython: not a dependency; plain Python prints instead

        display({MIME: {"name": name, "value": plain}, "text/plain": text}, raw=True)
    except ImportError:  # plain Python: just print
        print(text)
    return value


def read_results(notebook: str | Path) -> dict[str, Any]:
    """All values recorded in an executed notebook, by name (a later record wins)."""
    nb = json.loads(Path(notebook).read_text())
    out: dict[str, Any] = {}
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            if MIME in data:
                item = data[MIME]
                out[item["name"]] = item["value"]
    return out
