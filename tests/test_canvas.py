"""The heatmap canvas widget, Python side: traits, conversions, brush maths, undo/clear, errors, Colab."""
from __future__ import annotations

import base64
import io
import sys
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from pxpo_lite.canvas import (
    HeatmapCanvas,
    NoImageError,
    apply_stroke,
    array_to_png_data_url,
    brush_weights,
    check_heatmap,
    heatmap_to_list,
    image_to_array,
    list_to_heatmap,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def image():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 32, 32, generator=g)


@pytest.fixture
def canvas(image):
    return HeatmapCanvas(image)


# -- front-end files ------------------------------------------------------------------------
def test_front_end_is_an_es_module_without_imports_and_is_package_data():
    js = (ROOT / "pxpo_lite" / "widget" / "canvas.js").read_text()
    assert "export default { render }" in js
    assert "import " not in js.split("export default")[0].replace("// ", "#"), "no imports: works offline, no build step"
    assert "http://" not in js and "https://" not in js
    assert str(HeatmapCanvas._esm) == js  # the widget ships exactly this file
    assert ".pxpo-paint" in (ROOT / "pxpo_lite" / "widget" / "canvas.css").read_text()
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["pxpo_lite"]
    assert "widget/*.js" in data and "widget/*.css" in data


# -- traits and conversions -----------------------------------------------------------------
def test_traits_after_set_image(canvas, image):
    assert (canvas.height, canvas.width) == (32, 32) and canvas.shape == (32, 32)
    assert canvas.image_src.startswith("data:image/png;base64,")
    assert canvas.heatmap_data == [0.0] * 32 * 32
    assert canvas.is_empty and canvas.history_length == 0
    assert canvas.brush == "like" and canvas.brush_size == 4 and canvas.strength == 1.0
    h = canvas.heatmap
    assert h.dtype == np.float32 and h.shape == (32, 32)
    np.testing.assert_allclose(canvas.image, image.numpy(), atol=1e-7)
    state = canvas.get_state()
    for key in ("image_src", "height", "width", "heatmap_data", "brush", "brush_size", "strength", "history_length", "_esm", "_css"):
        assert key in state, key


def test_png_data_url_round_trips_at_native_resolution(image):
    from PIL import Image

    url = array_to_png_data_url(image.numpy())
    im = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert im.size == (32, 32) and im.mode == "RGB"
    want = (image.numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(im), want)


def test_image_conversion_accepts_batch_of_one_and_numpy(image):
    assert image_to_array(image[None]).shape == (3, 32, 32)
    assert image_to_array(image.numpy()).dtype == np.float32


@pytest.mark.parametrize(
    "bad, err, words",
    [
        (torch.rand(32, 32), ValueError, "(3,H,W)"),
        (torch.rand(2, 3, 8, 8), ValueError, "(3,H,W)"),
        (torch.full((3, 8, 8), float("nan")), ValueError, "NaN"),
        (torch.rand(3, 8, 8) * 2 - 1, ValueError, "(image + 1) / 2"),
        ([[0.0]], TypeError, "torch.Tensor or numpy.ndarray"),
    ],
)
def test_bad_images_are_refused_clearly(canvas, bad, err, words):
    with pytest.raises(err, match=None) as e:
        canvas.set_image(bad)
    assert words in str(e.value)


def test_heatmap_list_conversions_round_trip():
    h = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    data = heatmap_to_list(h)
    assert isinstance(data, list) and len(data) == 12 and all(isinstance(v, float) for v in data)
    np.testing.assert_allclose(list_to_heatmap(data, 3, 4), h, atol=1e-4)
    with pytest.raises(ValueError, match="expected height\\*width"):
        list_to_heatmap(data, 4, 4)


def test_heatmap_setter_validates(canvas):
    canvas.heatmap = np.full((32, 32), 0.5, np.float32)
    assert canvas.heatmap.mean() == pytest.approx(0.5)
    canvas.heatmap = torch.zeros(1, 32, 32)  # (1,H,W) tensors are fine
    with pytest.raises(ValueError, match=r"image's size \(32, 32\)"):
        canvas.heatmap = np.zeros((16, 16))
    nan = np.zeros((32, 32), np.float32)
    nan[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        canvas.heatmap = nan
    with pytest.raises(ValueError, match=r"\[-1,1\]"):
        canvas.heatmap = np.full((32, 32), 2.0)
    with pytest.raises(TypeError):
        check_heatmap("not a map", (32, 32))


def test_nothing_works_before_an_image_and_says_why():
    c = HeatmapCanvas()
    assert not c.has_image and c.is_empty and "set_image" in c.message
    for action in (lambda: c.heatmap, lambda: c.clear(), lambda: c.paint_stroke([(1, 1)]), lambda: c.summary()):
        with pytest.raises(NoImageError, match="set_image"):
            action()
    with pytest.raises(NoImageError):
        c.heatmap = np.zeros((32, 32))
    assert repr(c) == "HeatmapCanvas(no image)"


def test_tool_settings_are_validated(canvas):
    import traitlets

    with pytest.raises(traitlets.TraitError):
        canvas.brush = "spray"
    with pytest.raises(traitlets.TraitError):
        canvas.brush_size = 0
    with pytest.raises(traitlets.TraitError):
        canvas.strength = 1.5


# -- brush maths (mirrors canvas.js) -------------------------------------------------------------
def test_brush_weights_one_pixel_and_soft_edge():
    m = brush_weights([(5.5, 5.5)], (11, 11), size=1)
    assert m[5, 5] == 1 and m.sum() == 1
    m4 = brush_weights([(5.5, 5.5)], (11, 11), size=4)  # r = 2: w = clamp(2.5 - d, 0, 1)
    assert m4[5, 5] == 1 and m4[5, 6] == 1 and m4[5, 7] == pytest.approx(0.5) and m4[5, 8] == 0


def test_a_stroke_does_not_add_up_within_itself_but_strokes_do(canvas):
    pts = [(10, 4), (10, 20), (10, 4)]  # back and forth over the same pixels
    h = canvas.paint_stroke(pts, brush="like", size=3, strength=0.4)
    assert h[10, 10] == pytest.approx(0.4)
    h = canvas.paint_stroke(pts, brush="like", size=3, strength=0.4)
    assert h[10, 10] == pytest.approx(0.8)
    h = canvas.paint_stroke(pts, brush="like", size=3, strength=0.4)
    assert h[10, 10] == pytest.approx(1.0)  # clamped to [-1, 1]
    h = canvas.paint_stroke([(10, 10)], brush="dislike", size=1, strength=1.0)
    assert h[10, 10] == pytest.approx(0.0)
    assert h[0, 0] == 0 and h[20, 10] == 0


def test_like_dislike_regions_and_eraser(canvas):
    canvas.paint_stroke([(5, 6), (5, 25)], brush="like", size=4)
    canvas.paint_stroke([(25, 6), (25, 25)], brush="dislike", size=4, strength=0.5)
    h = canvas.heatmap
    assert h[4:7, 8:24].min() == 1.0 and h[24:27, 8:24].max() == -0.5 and not h[12:19].any()
    s = canvas.summary()
    assert s["liked_pixels"] > 0 and s["disliked_pixels"] > 0 and s["max"] == 1 and s["min"] == -0.5
    h = canvas.paint_stroke([(5, 6), (5, 25)], brush="erase", size=6)
    assert not h[:10].any() and h[24:27, 8:24].max() == -0.5


def test_apply_stroke_formulas():
    before = np.array([[0.5, -0.5, 0.0]], np.float32)
    m = np.array([[1.0, 0.5, 0.0]], np.float32)
    np.testing.assert_allclose(apply_stroke(before, m, "like", 0.8), [[1.0, -0.1, 0.0]], atol=1e-6)
    np.testing.assert_allclose(apply_stroke(before, m, "dislike", 0.8), [[-0.3, -0.9, 0.0]], atol=1e-6)
    np.testing.assert_allclose(apply_stroke(before, m, "erase", 0.5), [[0.25, -0.375, 0.0]], atol=1e-6)


# -- sync from the browser, undo, clear, observe ---------------------------------------------------
def test_browser_sync_undo_clear_and_callbacks(canvas):
    seen = []
    canvas.on_change(lambda h: seen.append(float(h.sum())))
    stroke1 = [0.0] * 1024
    stroke1[0] = 1.0
    canvas.heatmap_data = stroke1  # what canvas.js does when a stroke ends
    stroke2 = list(stroke1)
    stroke2[1] = -0.5
    canvas.heatmap_data = stroke2
    assert canvas.history_length == 2 and seen == [1.0, 0.5]
    canvas.clear()
    assert canvas.is_empty and canvas.history_length == 3
    canvas.clear()  # clearing an empty map adds no undo step
    assert canvas.history_length == 3
    assert canvas.undo() and canvas.heatmap[0, 1] == -0.5
    canvas._on_front_end_msg(canvas, {"event": "undo"}, [])  # the Undo button in the browser
    assert canvas.heatmap[0, 0] == 1.0 and canvas.heatmap[0, 1] == 0.0 and canvas.history_length == 1
    assert canvas.undo() and canvas.is_empty and canvas.history_length == 0
    assert canvas.undo() is False and canvas.message == "nothing to undo"
    assert seen[-1] == 0.0


def _painted(canvas):
    """A canvas with one dislike stroke (one undo step) and a callback that records every map it sees."""
    canvas.paint_stroke([(3, 3)], brush="dislike", size=3)
    seen = []
    canvas.on_change(lambda h: seen.append(h))
    return canvas.heatmap, seen


@pytest.mark.parametrize("bad, words", [
    ([float("nan")] * 1024, r"1024 value\(s\) that are not finite numbers \(first at pixel 0: nan.*previous map is kept"),
    ([0.0] * 1023 + [None], r"1 value\(s\) that are not finite.*pixel 1023: None.*None from the browser"),
    ([float("inf")] + [0.0] * 1023, r"not finite numbers \(first at pixel 0: inf"),
    ([0.5] * 256, r"has 256 values but the image is 32×32 = 1024 pixels.*another size.*previous map is kept"),
    ([2.0] * 1024, r"must lie in \[-1,1\].*got min 2, max 2.*previous map is kept"),
    (["a"] * 1024, r"not finite numbers \(first at pixel 0: 'a'"),
])
def test_a_bad_map_assigned_from_python_is_refused_and_the_painted_map_kept(canvas, bad, words):
    """Issue 19/20: NaN, a map of another size or out of range used to be stored (NaN reached the
    callbacks and the update; a wrong size made canvas.heatmap raise); now refused, nothing lost."""
    import traitlets

    kept, seen = _painted(canvas)
    with pytest.raises(traitlets.TraitError, match=words):
        canvas.heatmap_data = bad
    np.testing.assert_array_equal(canvas.heatmap, kept)
    assert canvas.history_length == 1 and seen == [] and canvas.summary()["disliked_pixels"] > 0


@pytest.mark.parametrize("bad, words", [([None] * 1024, "None from the browser"), ([0.1] * 64, "another size")])
def test_a_bad_map_from_the_browser_is_refused_in_the_status_line(canvas, bad, words, monkeypatch):
    """JSON turns NaN into null: a stroke the kernel cannot use is refused without an exception in the
    comm handler (where no one sees it); the status line says why and the browser gets the kept map back."""
    kept, seen = _painted(canvas)
    sent = []
    monkeypatch.setattr(canvas, "send_state", lambda key=None: sent.append(key))
    canvas.set_state({"heatmap_data": bad})  # what ipywidgets calls when canvas.js saves a stroke
    assert canvas.message.startswith("stroke refused: ") and words in canvas.message
    np.testing.assert_array_equal(canvas.heatmap, kept)
    assert sent[-1] == "heatmap_data" and seen == [] and canvas.history_length == 1
    good = heatmap_to_list(np.zeros((32, 32), np.float32))
    canvas.set_state({"heatmap_data": good})  # the next good stroke is taken as usual
    assert canvas.is_empty and canvas.history_length == 2 and len(seen) == 1
    import traitlets

    with pytest.raises(traitlets.TraitError):  # other bad settings still raise as before
        canvas.set_state({"brush_size": 0})


def test_check_heatmap_refuses_complex_text_and_meta_maps_by_name():
    for bad, words in [(np.zeros((8, 8), complex), "dtype complex128"), (np.full((8, 8), "a"), "dtype <U1"),
                       (np.full((8, 8), "x", dtype=object), "could not be read as numbers"),
                       (torch.zeros(8, 8, device="meta"), "meta-device")]:
        with pytest.raises(TypeError, match=words):
            check_heatmap(bad, (8, 8))
    with pytest.raises(ValueError, match=r"NaN/inf value\(s\).*np.nan_to_num"):
        check_heatmap(np.full((8, 8), np.nan), (8, 8))


def test_set_image_resets_map_and_history_unless_kept(canvas, image):
    canvas.paint_stroke([(3, 3)], size=2)
    canvas.set_image(image, keep_heatmap=True)
    assert not canvas.is_empty and canvas.history_length == 1
    canvas.set_image(torch.rand(3, 16, 24))
    assert canvas.shape == (16, 24) and canvas.is_empty and canvas.history_length == 0
    assert canvas.heatmap.shape == (16, 24)


def test_on_change_can_be_removed_and_must_be_callable(canvas):
    calls = []
    f = calls.append
    canvas.on_change(f)
    canvas.paint_stroke([(1, 1)])
    canvas.on_change(f, remove=True)
    canvas.paint_stroke([(8, 8)])
    assert len(calls) == 1
    with pytest.raises(TypeError):
        canvas.on_change(42)


# -- Colab (ipywidgets 7 + the custom widget manager) ---------------------------------------------
def test_colab_custom_widget_manager_is_enabled(monkeypatch, image):
    """In Colab anywidget calls google.colab.output.enable_custom_widget_manager() and tags the
    widget's output for the manager; simulate Colab's module and check both."""
    import anywidget._util as util

    calls = []
    colab_output = types.ModuleType("google.colab.output")
    colab_output.enable_custom_widget_manager = lambda: calls.append(1)
    colab_output._widgets = types.SimpleNamespace(_installed_url="https://example.invalid/manager.js")
    monkeypatch.setitem(sys.modules, "google.colab.output", colab_output)
    util.enable_custom_widget_manager_once.cache_clear()
    try:
        c = HeatmapCanvas(image)
        bundle = c._repr_mimebundle_()
        data, meta = bundle if isinstance(bundle, tuple) else (bundle, {})
        assert calls, "enable_custom_widget_manager() was not called"
        assert "application/vnd.jupyter.widget-view+json" in data
    finally:
        util.enable_custom_widget_manager_once.cache_clear()


# -- the last round's change map --------------------------------------------------------------
def test_change_map_overlay_traits_toggle_and_errors(canvas, image):
    assert canvas.change_map is None and canvas.show_change is False
    change = np.zeros((32, 32), np.float32)
    change[4:8, 4:8] = 0.3
    canvas.set_change_map(change)
    assert canvas.show_change is True and len(canvas.change_data) == 32 * 32
    np.testing.assert_allclose(canvas.change_map, change, atol=1e-5)
    canvas.show_change = False  # the toggle the browser button flips
    canvas.set_change_map(torch.from_numpy(change), show=False)
    assert canvas.show_change is False
    with pytest.raises(ValueError, match=r"change must have the image's size \(32, 32\)"):
        canvas.set_change_map(np.zeros((16, 16)))
    with pytest.raises(ValueError, match="change must be finite and >= 0"):
        canvas.set_change_map(np.full((32, 32), np.nan))
    with pytest.raises(ValueError, match="change must be finite and >= 0"):
        canvas.set_change_map(-np.ones((32, 32)))
    canvas.set_image(image)  # the next image of the same size keeps the last round's map
    assert canvas.change_map is not None
    canvas.set_image(torch.rand(3, 16, 16))  # another size: the map no longer fits and goes
    assert canvas.change_map is None and canvas.show_change is False
    with pytest.raises(NoImageError, match="cannot show a change map"):
        HeatmapCanvas().set_change_map(change)
    js = (ROOT / "pxpo_lite" / "widget" / "canvas.js").read_text()
    assert '"change:change_data"' in js and '"change:show_change"' in js and "pxpo-change" in js


def test_import_pxpo_lite_does_not_import_anywidget():
    import subprocess

    code = "import sys, pxpo_lite; assert 'anywidget' not in sys.modules; pxpo_lite.HeatmapCanvas; assert 'anywidget' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(ROOT))
