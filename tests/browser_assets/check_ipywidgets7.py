"""Colab-compatibility check: the canvas under ipywidgets 7 (Colab's version) in classic Notebook 6.5.

Colab renders third-party widgets with ipywidgets 7 semantics through its custom widget manager,
which anywidget switches on by calling google.colab.output.enable_custom_widget_manager(). This
script starts classic Notebook from a *separate* venv holding Colab's widget stack (it loads
pxpo_lite/canvas.py of this checkout by path), simulates Colab's module in the kernel, paints
with both brushes in headless Chromium, presses Undo, and checks the kernel's heatmap.
Exit code 0 = pass.

tests/test_browser.py runs it on the venv of Colab's versions (scripts/colab_versions.txt:
ipywidgets 7.7.1, anywidget 0.9.21, notebook 6.5.7), which it builds once and caches:
    python scripts/make_venv.py colab          # prints the venv's path
    python tests/browser_assets/check_ipywidgets7.py test-artifacts/venvs/colab-<key>
Any venv with ipywidgets<8, anywidget, notebook<7, ipykernel, numpy, pillow works.
"""
import json, os, secrets, signal, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path
import nbformat as nbf
from playwright.sync_api import sync_playwright

VENV = Path(sys.argv[1])
CANVAS_PY = Path(__file__).resolve().parents[2] / "pxpo_lite" / "canvas.py"
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SHOTS.mkdir(exist_ok=True)
tmp = Path(tempfile.mkdtemp()); root = tmp / "root"; root.mkdir()
nb = nbf.v4.new_notebook()
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}  # the venv's own
nb.cells = [nbf.v4.new_code_cell(f"""
import sys, types, importlib, importlib.util
calls = []
colab = types.ModuleType("google.colab.output")            # what Colab provides
colab.enable_custom_widget_manager = lambda: calls.append("enabled")
colab._widgets = types.SimpleNamespace(_installed_url=None)
sys.modules["google.colab.output"] = colab
pkg = types.ModuleType("pxpo_widgets")                       # the package folder without its __init__ (no torch here):
pkg.__path__ = [{str(CANVAS_PY.parent)!r}]; sys.modules["pxpo_widgets"] = pkg   # canvas.py and the brush it imports
m = importlib.import_module("pxpo_widgets.canvas")
import numpy as np, ipywidgets, anywidget
img = np.random.default_rng(0).random((3, 32, 32)).astype("float32")
canvas = m.HeatmapCanvas(img, scale=12)
print("ipywidgets", ipywidgets.__version__, "anywidget", anywidget.__version__, "colab manager calls", calls)
canvas
"""), nbf.v4.new_code_cell("""
import json
h = canvas.heatmap
print("STATS " + json.dumps({"like": float(h[5:9, 8:24].mean()), "dislike": float(h[23:27, 8:24].mean()), "rest": float(abs(h[13:19]).max()), "hist": canvas.history_length}))
""")]
nbf.write(nb, root / "check.ipynb")
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
token = secrets.token_hex(8)
# The venv's python3 kernel, never a user kernelspec or this checkout on the path.
env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
env.update(JUPYTER_RUNTIME_DIR=str(tmp / "rt"), JUPYTER_DATA_DIR=str(tmp / "data"), JUPYTER_PREFER_ENV_PATH="1",
           PATH=f"{VENV}/bin:" + os.environ["PATH"])
proc = subprocess.Popen([str(VENV / "bin/jupyter"), "notebook", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
                         f"--NotebookApp.token={token}", f"--notebook-dir={root}"], stdout=open(tmp / "log", "w"),
                        stderr=subprocess.STDOUT, env=env, start_new_session=True)
base = f"http://127.0.0.1:{port}"
try:
    for _ in range(400):
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2); break
        except OSError:
            if proc.poll() is not None: break
            time.sleep(0.3)
    else:
        raise SystemExit("classic Notebook did not start:\n" + (tmp / "log").read_text()[-3000:])
    if proc.poll() is not None:
        raise SystemExit("classic Notebook exited:\n" + (tmp / "log").read_text()[-3000:])
    t0 = time.time()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                              args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"])
        page = b.new_page(viewport={"width": 1200, "height": 1000})
        logs = []; page.on("console", lambda msg: logs.append(msg.text))
        page.goto(f"{base}/notebooks/check.ipynb?token={token}")
        page.wait_for_function("window.Jupyter && Jupyter.notebook && Jupyter.notebook.kernel && Jupyter.notebook.kernel.is_connected()", timeout=120000)
        time.sleep(1)
        page.evaluate("Jupyter.notebook.execute_cells([0])")
        paint = page.locator("canvas.pxpo-paint")
        try:
            paint.wait_for(state="visible", timeout=120000)
        except Exception:
            page.screenshot(path=str(SHOTS / "canvas_ipywidgets7_failed.png")); print("\n".join(logs[-30:])); raise
        box = paint.bounding_box(); print("canvas box", box)
        at = lambda r, c: (box["x"] + (c + 0.5) / 32 * box["width"], box["y"] + (r + 0.5) / 32 * box["height"])
        for brush, row in (("like", 7), ("dislike", 25)):
            page.locator(f"button.pxpo-brush-{brush}").click()
            page.mouse.move(*at(row, 8)); page.mouse.down()
            for k in range(1, 13): page.mouse.move(*at(row, 8 + 15 * k / 12))
            page.mouse.up()
        time.sleep(1)
        page.screenshot(path=str(SHOTS / "canvas_ipywidgets7.png"))
        page.evaluate("Jupyter.notebook.execute_cells([1])")
        out = page.locator(".cell").nth(1).locator(".output_area")
        for _ in range(240):
            txt = out.all_inner_texts()
            if any("STATS" in t for t in txt): break
            time.sleep(0.5)
        print(page.locator(".cell").nth(0).locator(".output_area").first.inner_text()[:200])
        stats = lambda texts: json.loads(next(t for t in texts if "STATS" in t).split("STATS", 1)[1])
        s = stats(txt); print("painted:", s)
        assert s["like"] > 0.5 and s["dislike"] < -0.5 and s["rest"] == 0 and s["hist"] == 2, s
        page.locator("button.pxpo-undo").click(); time.sleep(2)
        page.evaluate("Jupyter.notebook.execute_cells([1])")
        for _ in range(120):
            time.sleep(0.5)
            try:
                s2 = stats(out.all_inner_texts())
            except StopIteration:
                continue
            if s2["hist"] == 1: break
        print("after undo:", s2)
        assert s2["dislike"] == 0 and s2["like"] > 0.5, s2
        first = page.locator(".cell").nth(0).locator(".output_area").first.inner_text()
        assert "ipywidgets 7." in first and "'enabled'" in first, first
        print(f"browser part {time.time() - t0:.1f} s")
        b.close()
finally:
    os.killpg(proc.pid, signal.SIGTERM)
