"""Build the package as Colab would install it, and the virtual environments the install tests use.

    python scripts/make_venv.py dist  --out dist          # sdist, then a wheel built from the sdist
    python scripts/make_venv.py colab                     # Colab's library versions (cached); prints the venv path
    python scripts/make_venv.py wheel --venv /tmp/v       # fresh venv: torch, the wheel with its dependencies

Used by ``tests/test_install.py`` (wheel install; every notebook on Colab's versions) and by the
ipywidgets-7 browser check in ``tests/test_browser.py``:

- ``build_dist`` copies only what a release contains (``pyproject.toml``, ``README.md``,
  ``pxpo_lite/``) to a temporary folder, builds the sdist there and then the wheel *from the
  sdist* (what ``python -m build`` does), so a file missing from either fails here, not on Colab.
- ``colab_venv`` makes (once; cached under ``test-artifacts/venvs/colab-<key>``, the key hashing
  ``scripts/colab_versions.txt``, the torch spec and the Python version) a venv with
  ``$TORCH_SPEC`` (default ``torch==2.13.0``, as ``scripts/setup.sh``) and then the pins of
  ``scripts/colab_versions.txt``. The project goes on top with ``--no-deps`` (``install_wheel``).
- ``run_notebooks`` runs notebooks with papermill *from the venv* on its own ``python3`` kernel,
  in a folder holding only a copy of ``notebooks/`` (no ``PYTHONPATH``, no user kernelspecs), so
  ``import pxpo_lite`` can only resolve to the installed package.

Every step is timed (``Timer``); pip output is kept quiet and shown only when a step fails.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINS = ROOT / "scripts" / "colab_versions.txt"
VENV_CACHE = ROOT / "test-artifacts" / "venvs"
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")
RUNNER = ["papermill>=2.5", "ipykernel>=6.0", "nbformat>=5.9"]  # to execute notebooks (not project dependencies)
RELEASE_FILES = ["pyproject.toml", "README.md", "LICENSE"]
NETWORK_ERRORS = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable",
                  "ProxyError", "ConnectTimeoutError", "Max retries exceeded")
STAMP = ".pxpo-venv-ready"


class StepError(RuntimeError):
    """A build, pip or notebook step failed; ``network`` is True when the cause was an unreachable package index."""

    def __init__(self, message: str, network: bool = False):
        super().__init__(message)
        self.network = network


class Timer:
    """Named wall-clock phases: ``with timer("install torch"): ...``; ``timer.phases`` maps name -> seconds."""

    def __init__(self, label: str = ""):
        self.label, self.phases = label, {}

    @contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = round(time.perf_counter() - t, 1)
            print(f"[{self.label}] {name}: {self.phases[name]:.1f} s", flush=True)


def _quiet_tail(text: str, n: int = 40) -> str:
    lines = [l for l in text.splitlines() if "is ignored: it is neither a file nor a directory" not in l]
    return "\n".join(lines[-n:])


def run(cmd: list, what: str, timeout: float = 1800, **kw) -> subprocess.CompletedProcess:
    """Run ``cmd``; on failure raise ``StepError`` naming ``what`` with the output's tail (pip's
    warnings about this machine's missing local index folders left out)."""
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if r.returncode != 0:
        out = r.stdout + r.stderr
        raise StepError(f"{what} failed (exit {r.returncode}): {' '.join(map(str, cmd))}\n{_quiet_tail(out)}",
                       network=any(e in out for e in NETWORK_ERRORS))
    return r


def python(venv: Path) -> Path:
    return Path(venv) / "bin" / "python"


def pip_install(venv: Path, *args, what: str) -> None:
    run([python(venv), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args], what)


def new_venv(path: Path, timer: Timer, torch_spec: str = TORCH_SPEC) -> Path:
    """A fresh venv at ``path`` (made with this machine's ``python3``) holding ``torch_spec``."""
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    with timer("create venv"):
        run([shutil.which("python3") or sys.executable, "-m", "venv", path], "python3 -m venv")
    with timer(f"install {torch_spec}"):
        pip_install(path, torch_spec, what=f"installing {torch_spec}")
    return path


def build_dist(out_dir: Path, timer: Timer) -> tuple[Path, Path]:
    """Build the sdist from a copy of the release files, then the wheel from that sdist; returns both."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, timer("build sdist + wheel"):
        src = Path(tmp) / "src"
        src.mkdir()
        for name in RELEASE_FILES:
            if (ROOT / name).exists():
                shutil.copy2(ROOT / name, src / name)
        shutil.copytree(ROOT / "pxpo_lite", src / "pxpo_lite",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.tmp"))
        sdist_dir = Path(tmp) / "sdist"
        code = f"from setuptools import build_meta as b; print(b.build_sdist({str(sdist_dir)!r}))"
        name = run([sys.executable, "-c", code], "building the sdist", cwd=src).stdout.strip().splitlines()[-1]
        sdist = out_dir / name
        shutil.copy2(sdist_dir / name, sdist)
        with tarfile.open(sdist) as tar:
            try:
                tar.extractall(Path(tmp) / "unpacked", filter="data")
            except TypeError:  # Python < 3.10.12 / 3.11.4: no extraction filters (our own archive)
                tar.extractall(Path(tmp) / "unpacked")
        (unpacked,) = (Path(tmp) / "unpacked").iterdir()
        isolation = [] if _has_setuptools() else ["--use-pep517"]
        run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *(isolation or ["--no-build-isolation"]),
             "-w", out_dir, unpacked], "building the wheel from the sdist")
    (wheel,) = sorted(out_dir.glob("pxpo_lite-*.whl"))
    return sdist, wheel


def _has_setuptools() -> bool:
    try:
        import setuptools  # noqa: F401  (only to decide whether pip may build without isolation)
    except ImportError:
        return False
    return True


def install_wheel(venv: Path, wheel: Path, timer: Timer, deps: bool) -> None:
    """Install ``wheel`` into ``venv``: with its dependencies (+ the notebook runner), or ``--no-deps``
    on top of what is there; then ``pip check`` (the wheel's requirements must be met)."""
    if deps:
        with timer("install wheel + dependencies + runner"):
            pip_install(venv, wheel, *RUNNER, what="installing the wheel with its dependencies")
    else:
        with timer("install wheel --no-deps"):
            pip_install(venv, "--no-deps", "--force-reinstall", wheel, what="installing the wheel with --no-deps")
    with timer("pip check"):
        run([python(venv), "-m", "pip", "check"], "pip check (a requirement of the installed packages is not met)")
    register_kernel(venv)


def register_kernel(venv: Path) -> None:
    """Register the venv's own ``python3`` kernelspec inside the venv (found first with ``kernel_env``)."""
    run([python(venv), "-m", "ipykernel", "install", "--prefix", venv, "--name", "python3"], "registering the kernel")


def _pins_key(torch_spec: str) -> str:
    h = hashlib.sha256(PINS.read_bytes() + torch_spec.encode() + f"{sys.version_info[:2]}".encode())
    return h.hexdigest()[:12]


def colab_venv(timer: Timer, torch_spec: str = TORCH_SPEC, cache: Path = VENV_CACHE) -> Path:
    """The venv with Colab's versions (``scripts/colab_versions.txt``) on ``torch_spec``; built once and
    reused until the pins, the torch spec or the Python version change (a lock guards concurrent builds)."""
    venv = Path(cache) / f"colab-{_pins_key(torch_spec)}"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / STAMP).exists():
            print(f"[{timer.label}] reusing {venv.relative_to(ROOT) if venv.is_relative_to(ROOT) else venv}", flush=True)
            return venv
        new_venv(venv, timer, torch_spec)
        with timer("install Colab's versions"):
            pip_install(venv, "-r", PINS, what=f"installing the pins of {PINS.name}")
        register_kernel(venv)
        (venv / STAMP).write_text(json.dumps({"pins": PINS.read_text(), "torch": torch_spec, "python": sys.version}))
    return venv


def kernel_env(venv: Path, workdir: Path) -> dict:
    """Environment for running notebooks from ``venv``: its bin first, no PYTHONPATH, no user
    kernelspecs (an empty JUPYTER_DATA_DIR; env paths first), offline model hub."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    data = Path(workdir) / "jupyter-data"
    data.mkdir(parents=True, exist_ok=True)
    env.update(PATH=f"{Path(venv) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", JUPYTER_DATA_DIR=str(data),
               JUPYTER_PREFER_ENV_PATH="1", JUPYTER_RUNTIME_DIR=str(Path(workdir) / "jupyter-runtime"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg", TQDM_MININTERVAL="5")
    return env


PROBE = """import json, sys, importlib.metadata as md
import pxpo_lite, pxpo_lite.models, pxpo_lite.canvas, pxpo_lite.data
names = ["torch", "diffusers", "peft", "transformers", "accelerate", "ipywidgets", "anywidget", "numpy", "ipython", "pxpo-lite"]
print("PROBE" + json.dumps({"executable": sys.executable, "prefix": sys.prefix, "package": pxpo_lite.__file__,
    "weights": str(pxpo_lite.models.TINY_PIPELINE_DIR), "segmenter": str(pxpo_lite.models.SEGMENTER_DIR),
    "widget": str(pxpo_lite.canvas.WIDGET_DIR), "benchmarks": str(pxpo_lite.data.BENCHMARKS_DIR),
    "versions": {n: md.version(n) for n in names}}))
"""


def copy_notebooks(workdir: Path) -> Path:
    """Copy ``notebooks/*.ipynb`` (nothing else of the repository) to ``workdir/notebooks``."""
    nb_dir = Path(workdir) / "notebooks"
    nb_dir.mkdir(parents=True, exist_ok=True)
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        shutil.copy2(nb, nb_dir / nb.name)
    return nb_dir


def papermill(venv: Path, notebook: Path, out: Path, workdir: Path, parameters: dict, timeout: int = 900) -> None:
    cmd = [python(venv), "-m", "papermill", notebook, out, "-k", "python3", "--cwd", Path(notebook).parent,
           "--no-progress-bar", "--execution-timeout", str(timeout)]
    if parameters:
        cmd += ["-y", json.dumps(parameters)]  # JSON is YAML
    run(cmd, f"executing {Path(notebook).name}", env=kernel_env(venv, workdir), cwd=Path(notebook).parent,
        timeout=timeout + 120)


def probe(venv: Path, workdir: Path, out_dir: Path) -> dict:
    """Run a one-cell notebook on the venv's kernel; returns where pxpo_lite and its files resolved
    from and the library versions the kernel sees."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(PROBE)]
    src = Path(workdir) / "notebooks" / "probe.ipynb"
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, src)
    out = Path(out_dir) / "probe.ipynb"
    try:
        papermill(venv, src, out, workdir, {}, timeout=300)
    finally:
        src.unlink()
    text = "".join(o.get("text", "") for o in nbformat.read(out, as_version=4).cells[0].outputs)
    return json.loads(text.split("PROBE", 1)[1].strip().splitlines()[0])


def run_notebooks(venv: Path, names: list[str], workdir: Path, out_dir: Path, timer: Timer,
                  parameters: dict | None = None) -> tuple[dict[str, float], dict[str, str]]:
    """Execute ``names`` (in ``workdir/notebooks``) in smoke mode from ``venv``, every one even when
    some fail; returns (seconds per notebook that ran, the error's tail per notebook that failed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds, failed = {}, {}
    for name in names:
        try:
            with timer(f"notebook {name}"):
                papermill(venv, Path(workdir) / "notebooks" / name, out_dir / name, workdir,
                          {"SMOKE": True, **(parameters or {})})
            seconds[name] = timer.phases[f"notebook {name}"]
        except StepError as e:
            failed[name] = "\n".join(str(e).splitlines()[-15:])
    return seconds, failed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["dist", "colab", "wheel"])
    ap.add_argument("--out", type=Path, default=ROOT / "dist", help="dist: where the sdist and wheel go")
    ap.add_argument("--venv", type=Path, help="wheel: the venv to create (replaced if present)")
    args = ap.parse_args(argv)
    timer = Timer(args.what)
    if args.what == "colab":
        print(colab_venv(timer))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        sdist, wheel = build_dist(args.out if args.what == "dist" else Path(tmp), timer)
        if args.what == "dist":
            print(sdist, wheel, sep="\n")
            return 0
        if args.venv is None:
            ap.error("wheel: --venv PATH is required (the venv to create)")
        new_venv(args.venv, timer)
        install_wheel(args.venv, wheel, timer, deps=True)
        print(args.venv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
