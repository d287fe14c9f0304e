"""A real browser paints on the heatmap canvas and the kernel receives the map.

Starts JupyterLab (this venv) on 127.0.0.1 with a token in a temporary root holding
``tests/browser_assets/canvas_demo.ipynb``, opens it in headless Debian Chromium driven by
Playwright (``/usr/bin/chromium``; never ``playwright install``: CI installs Chromium with
``scripts/install_browser.sh``), runs the cell that shows the canvas, drags the mouse with the
like brush over rows 6–8 and with the dislike brush over rows 24–26, runs a cell that prints
the kernel's heatmap statistics, checks the signs per region, presses Undo in the widget and
checks the dislike stroke is gone. Screenshots go to ``test-artifacts/`` (set
``PXPO_UPDATE_DOCS_SCREENSHOT=1`` to also refresh ``docs/canvas.png`` for the README).

The second (``tests/browser_assets/refine_demo.ipynb``) paints a dislike patch with the mouse,
runs one refinement round with RefineConfig's defaults, and reads the change map back from the
kernel and from the canvas's own pixels (the "Show change" overlay on minus off): the painted
region must have changed most.

The last test repeats the painting under Colab's widget stack (ipywidgets 7, anywidget 0.9,
classic Notebook 6.5) in a venv of Colab's versions that it builds itself (scripts/make_venv.py).

Skipped only when Chromium or Playwright (or, for the second, the package index) is missing
outside CI; in CI (CI=true) both must run.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import make_venv  # noqa: E402  (scripts/ is not a package: builds the Colab-versions venv)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "tests" / "browser_assets" / "canvas_demo.ipynb"
REFINE_ASSET = ROOT / "tests" / "browser_assets" / "refine_demo.ipynb"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
H = W = 32  # the demo image's size


def _require(ok: bool, why: str) -> None:
    if ok:
        return
    if IN_CI:
        pytest.fail(f"{why} (CI=true: the browser test must run; run scripts/install_browser.sh and install the test extra)")
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyter_lab(tmp_path):
    """JupyterLab serving a temp root with the demo notebook; yields (base_url, token)."""
    from jupyter_client.kernelspec import KernelSpecManager

    root = tmp_path / "root"
    root.mkdir()
    registered = "pxpo-lite" in KernelSpecManager().find_kernel_specs()
    if not registered and IN_CI:
        pytest.fail("Jupyter kernel 'pxpo-lite' is not registered; run `make setup`")
    for asset in (ASSET, REFINE_ASSET):
        nb = json.loads(asset.read_text())
        if not registered:
            nb["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        (root / asset.name).write_text(json.dumps(nb))
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "jupyter.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "jupyterlab",
            "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
            f"--LabApp.user_settings_dir={tmp_path / 'settings'}", f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
        ],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                pytest.fail(f"JupyterLab did not start:\n{(tmp_path / 'jupyter.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield base, token
    finally:
        # End the server and the kernels it started (its own process group, by id).
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()


def _wait(predicate, timeout: float, what: str, interval: float = 0.25):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _dismiss_toasts(page) -> None:
    for name in ("No", "Dismiss"):
        btn = page.locator(".jp-toast-button, .Toastify__toast button").filter(has_text=re.compile(f"^{name}$"))
        if btn.count():
            try:
                btn.first.click(timeout=1000)
            except Exception:  # the toast may vanish on its own
                pass


def _prompt_number(cell) -> int:
    m = re.search(r"\[(\d+)\]", cell.locator(".jp-InputPrompt").first.inner_text())
    return int(m.group(1)) if m else 0


def _run_cell(page, index: int, timeout: float = 90) -> None:
    """Run code cell ``index`` with Ctrl+Enter and wait until its prompt shows a new number
    (retrying the key press: the first may land before the kernel is ready)."""
    cell = page.locator(".jp-Notebook .jp-CodeCell").nth(index)
    before = _prompt_number(cell)
    deadline = time.time() + timeout
    while time.time() < deadline:
        _dismiss_toasts(page)
        cell.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Control+Enter")
        try:
            _wait(lambda: _prompt_number(cell) > before, min(30, max(1, deadline - time.time())), "the cell to run")
            return
        except AssertionError:
            continue
    raise AssertionError(f"code cell {index} did not run within {timeout:.0f} s")


def _stats(page, index: int, tag: str = "HEATMAP_STATS", timeout: float = 30) -> dict:
    out = page.locator(".jp-Notebook .jp-CodeCell").nth(index).locator(".jp-OutputArea")
    text = _wait(lambda: (t := out.inner_text()) and tag in t and t, timeout, "the stats output")
    return json.loads(text.split(tag, 1)[1].strip().splitlines()[0])


# the colour of each image pixel's centre as drawn on the canvas (row-major H*W [r, g, b])
_READ_CANVAS = """(el) => {
  const d = el.getContext("2d").getImageData(0, 0, el.width, el.height).data, s = el.width / %d, out = [];
  for (let i = 0; i < %d; i++) for (let j = 0; j < %d; j++) {
    const k = 4 * (Math.floor((i + 0.5) * s) * el.width + Math.floor((j + 0.5) * s));
    out.push([d[k], d[k + 1], d[k + 2]]);
  }
  return out;
}""" % (W, H, W)


def _drag(page, box, row: float, cols: tuple[float, float]) -> None:
    """Drag along image row ``row`` from column cols[0] to cols[1] (pixel centres)."""

    def at(r, c):
        return box["x"] + (c + 0.5) / W * box["width"], box["y"] + (r + 0.5) / H * box["height"]

    page.mouse.move(*at(row, cols[0]))
    page.mouse.down()
    steps = 12
    for k in range(1, steps + 1):
        page.mouse.move(*at(row, cols[0] + (cols[1] - cols[0]) * k / steps))
    page.mouse.up()


def _open_notebook(browser, base: str, token: str, name: str):
    """A new page on notebook ``name`` in JupyterLab, its kernel idle and toasts dismissed; returns
    (page, the list the page's console messages go to)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    console = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.goto(f"{base}/lab/tree/{name}?token={token}")
    page.locator(".jp-Notebook .jp-CodeCell").first.wait_for(timeout=60_000)
    _wait(lambda: "| Idle" in page.locator("#jp-main-statusbar").inner_text(), 90, "the kernel to be idle")
    _dismiss_toasts(page)
    return page, console


def test_paint_like_and_dislike_in_jupyterlab(jupyter_lab):
    _require(Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run scripts/install_browser.sh (as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require(False, "the playwright package is missing: pip install -e .[test]")
    base, token = jupyter_lab
    ARTIFACTS.mkdir(exist_ok=True)
    t0 = time.time()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page, console = _open_notebook(browser, base, token, ASSET.name)

            # 1. show the canvas
            _run_cell(page, 0)
            paint = page.locator("canvas.pxpo-paint")
            try:
                paint.wait_for(state="visible", timeout=60_000)
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "canvas_browser_failed.png"))
                raise AssertionError("the canvas did not appear; browser console:\n" + "\n".join(console[-30:]))
            box = paint.bounding_box()
            assert abs(box["width"] - W * 12) < 2 and abs(box["height"] - H * 12) < 2, f"expected 384×384 px, got {box}"

            # 2. paint: like over rows 6-8, dislike over rows 24-26 (brush 4 px wide)
            page.locator("button.pxpo-brush-like").click()
            _drag(page, box, 7, (8, 23))
            page.locator("button.pxpo-brush-dislike").click()
            _drag(page, box, 25, (8, 23))
            _wait(lambda: "disliked 0" not in page.locator(".pxpo-status").inner_text(), 10, "the status line")
            page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.45)  # show the brush outline
            time.sleep(0.3)
            page.locator(".pxpo-canvas").screenshot(path=str(ARTIFACTS / "canvas_browser.png"))
            page.screenshot(path=str(ARTIFACTS / "canvas_browser_page.png"))

            # 3. the kernel has the map: + where liked, − where disliked, 0 elsewhere
            _run_cell(page, 1)
            s = _stats(page, 1)
            assert s["shape"] == [H, W]
            assert s["like_region_mean"] > 0.5, s
            assert s["dislike_region_mean"] < -0.5, s
            assert s["untouched_max_abs"] == 0.0, s
            assert s["max"] == pytest.approx(1.0) and s["min"] == pytest.approx(-1.0), s
            assert s["history_length"] == 2, s  # two strokes -> two undo steps

            # 4. Undo in the widget removes the dislike stroke (history lives in the kernel)
            page.locator("button.pxpo-undo").click()
            _wait(lambda: "disliked 0" in page.locator(".pxpo-status").inner_text(), 30, "undo to reach the canvas")
            _run_cell(page, 1)
            s2 = _stats(page, 1)
            assert s2["dislike_region_mean"] == 0.0 and s2["like_region_mean"] > 0.5, s2
            assert s2["history_length"] == 1, s2
        finally:
            browser.close()
    seconds = time.time() - t0
    print(f"browser part took {seconds:.1f} s")
    if os.environ.get("PXPO_UPDATE_DOCS_SCREENSHOT"):
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copy(ARTIFACTS / "canvas_browser.png", ROOT / "docs" / "canvas.png")


def test_paint_refine_one_round_and_see_the_change_map(jupyter_lab):
    """A dislike stroke painted with the mouse, one round of RefineConfig's defaults, and the change
    map read back twice: in the kernel (the round's |after − before|) and from the canvas's pixels
    (the yellow overlay, on minus off). The painted region must have changed most."""
    _require(Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run scripts/install_browser.sh (as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require(False, "the playwright package is missing: pip install -e .[test]")
    import numpy as np

    base, token = jupyter_lab
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page, console = _open_notebook(browser, base, token, REFINE_ASSET.name)
            _run_cell(page, 0, timeout=180)
            paint = page.locator("canvas.pxpo-paint")
            try:
                paint.wait_for(state="visible", timeout=90_000)
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "refine_browser_failed.png"))
                raise AssertionError("the canvas did not appear; browser console:\n" + "\n".join(console[-30:]))
            box = paint.bounding_box()
            change_btn = page.locator("button.pxpo-change")
            assert change_btn.is_disabled(), "no round yet: nothing to show"
            for row in (9, 11, 13):  # a dislike patch over the hair and forehead (brush 6 px, rows ~6-16)
                _drag(page, box, row, (10, 21))
            _wait(lambda: "disliked 0" not in page.locator(".pxpo-status").inner_text(), 10, "the status line")
            page.mouse.move(box["x"] - 40, box["y"] - 40)  # off the canvas: no brush outline in the pixels read below

            _run_cell(page, 1, timeout=180)  # one round
            s = _stats(page, 1, "CHANGE_STATS", timeout=120)
            _wait(lambda: change_btn.inner_text() == "Hide change", 30, "the change overlay to switch on")
            page.locator(".pxpo-canvas").screenshot(path=str(ARTIFACTS / "refine_browser_change.png"))
            on = np.array(paint.evaluate(_READ_CANVAS), float)
            change_btn.click()
            _wait(lambda: change_btn.inner_text() == "Show change", 30, "the toggle to switch the overlay off")
            off = np.array(paint.evaluate(_READ_CANVAS), float)
        finally:
            browser.close()
    painted = np.array(s["painted_mask"], bool).ravel()
    assert s["painted_pixels"] > 50, s
    # the kernel's change map: the painted region moved most
    assert s["painted_mean"] > 2 * s["rest_mean"], {k: v for k, v in s.items() if k != "painted_mask"}
    # the canvas shows it: the overlay adds most colour where the change was largest
    overlay = np.abs(on - off).sum(1)
    assert overlay.max() > 0, "the overlay drew nothing"
    assert overlay[painted].mean() > 2 * overlay[~painted].mean(), (overlay[painted].mean(), overlay[~painted].mean())
    print(f"one round {s['seconds']:.1f} s; change painted {s['painted_mean']:.3f} vs rest {s['rest_mean']:.3f}")


def test_paint_with_ipywidgets7_classic_notebook():
    """Colab compatibility: the same painting under Colab's ipywidgets 7 / anywidget in classic
    Notebook 6.5, with Colab's enable_custom_widget_manager() simulated
    (tests/browser_assets/check_ipywidgets7.py). Runs in the venv of Colab's versions that
    scripts/make_venv.py builds once and caches under test-artifacts/venvs/ (shared with
    tests/test_install.py); PXPO_IPYWIDGETS7_VENV=/path/to/venv uses another one."""
    _require(Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run scripts/install_browser.sh (as root)")
    try:
        import playwright.sync_api  # noqa: F401  (only to check it is installed)
    except ImportError:
        _require(False, "the playwright package is missing: pip install -e .[test]")
    venv = os.environ.get("PXPO_IPYWIDGETS7_VENV")
    if not venv:
        try:
            venv = make_venv.colab_venv(make_venv.Timer("ipywidgets7"))
        except make_venv.StepError as e:
            if e.network and not IN_CI:
                pytest.skip(f"cannot build the Colab-versions venv, the package index is unreachable: {str(e)[:300]}")
            raise
    script = ROOT / "tests" / "browser_assets" / "check_ipywidgets7.py"
    t0 = time.time()
    r = subprocess.run([sys.executable, str(script), str(venv)], capture_output=True, text=True, timeout=600)
    print(r.stdout[-2000:], f"ipywidgets-7 check took {time.time() - t0:.1f} s")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "ipywidgets 7." in r.stdout and "after undo" in r.stdout, r.stdout[-3000:]
