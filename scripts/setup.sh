#!/usr/bin/env bash
# Set up the project's environment in .venv (idempotent; re-run after changing pyproject.toml).
#   - a virtual environment with the package and its notebook/test extras (editable install)
#   - torch: $TORCH_SPEC (default torch==2.13.0, the version the project is tested with) unless
#     the venv already has one; set TORCH_SPEC=torch to take your platform's default build
#   - Jupyter kernels: the notebooks declare the standard "python3" kernelspec; JupyterLab and
#     papermill started from this venv run it with the venv's own python (jupyter_client swaps
#     "python" in the venv's python3 kernel.json for sys.executable). A named kernel "pxpo-lite"
#     (also inside the venv) is registered for the test harness and scripts/run_notebooks.py.
#   - EXTRAS: notebooks (make lab/run/sync), test (make test), dev (test + nbstripout, make strip)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-test}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
STAMP="$VENV/.pxpo-installed-$EXTRAS"

if [ ! -x "$VENV/bin/python" ]; then
  echo ">> creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo ">> installing $TORCH_SPEC"
  "$VENV/bin/python" -m pip install -q "$TORCH_SPEC" || "$VENV/bin/python" -m pip install -q torch
fi
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo ">> installing pxpo-lite[$EXTRAS] (editable)"
  "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
  touch "$STAMP"
fi
if [ ! -d "$VENV/share/jupyter/kernels/pxpo-lite" ]; then
  echo ">> registering the Jupyter kernel 'pxpo-lite'"
  "$VENV/bin/python" -m ipykernel install --prefix "$VENV" --name pxpo-lite --display-name "Python (pxpo-lite)" >/dev/null
fi
echo ">> environment ready: $VENV ($("$VENV/bin/python" -c 'import torch, diffusers; print("torch", torch.__version__, "| diffusers", diffusers.__version__)'))"
