"""The heatmap canvas: paint what you like (+) and dislike (−) on a generated image.

The paper's third experiment (``docs/paper.md``, "Single-image human feedback") asks a person for a
**reward map** r(x_0^{i,j}, c): one signed value per pixel. This widget is how a person paints
it. It shows one image (the tiny model's 32×32 enlarged with crisp pixels) and offers a
"like" brush (+), a "dislike" brush (−), an eraser, brush size and strength, undo, clear and a
see-through overlay of what has been painted.

Painting happens in the browser (``pxpo_lite/widget/canvas.js``, an anywidget ES module; no
kernel round-trip per mouse move). When a stroke ends, the map reaches Python as the trait
``heatmap_data``: a flat, row-major list of H·W floats in [−1, 1] at the image's resolution.
From Python::

    canvas = HeatmapCanvas(image)          # image (3,H,W) in [0,1]; display(canvas) to paint
    canvas.heatmap                         # (H,W) float32 NumPy array in [-1, 1]
    canvas.on_change(lambda m: print(m.sum()))
    canvas.undo(); canvas.clear()

Brush maths (the same in JS and in :meth:`HeatmapCanvas.paint_stroke`): a stamp of diameter
``size`` gives pixel (i, j) the weight w = clamp(size/2 + 0.5 − d, 0, 1), d the distance from the
pixel centre to the brush centre; within one stroke each pixel keeps its largest weight m;
like/dislike set map = clamp(before ± strength·m, −1, 1); the eraser sets
map = before·(1 − strength·m).

After a round, :meth:`HeatmapCanvas.set_change_map` overlays what moved (the round's
``change_map``, yellow, stronger = changed more; the "Show change" button or ``show_change``
toggles it), so a person sees whether the region they painted is the one that changed.

The painted map becomes per-pixel advantages in :mod:`pxpo_lite.feedback`.
Introduced in ``notebooks/06_human_feedback_canvas.ipynb``.

Works in JupyterLab 4 / Notebook 7 (ipywidgets 8) and in Colab (ipywidgets 7 + Colab's custom
widget manager, which anywidget turns on itself). This module never imports torch (it runs beside
anywidget alone: a tensor is recognised by its ``detach`` method).
"""
from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Callable, Sequence

import anywidget
import numpy as np
import traitlets
from PIL import Image

from .brush import apply_stroke, brush_weights, check_heatmap, check_heatmap_list, heatmap_to_list, list_to_heatmap  # noqa: F401 (re-exported)

WIDGET_DIR = Path(__file__).resolve().parent / "widget"
BRUSHES = ("like", "dislike", "erase")
MAX_HISTORY = 100


class NoImageError(RuntimeError):
    """Raised when the heatmap is read or painted before :meth:`HeatmapCanvas.set_image`."""


def _read_asset(name: str) -> str:
    path = WIDGET_DIR / name
    if not path.is_file():
        raise FileNotFoundError(
            f"the canvas widget's front-end file {str(path)!r} is missing; reinstall pxpo-lite "
            "(pyproject.toml ships pxpo_lite/widget/*.js and *.css as package data)"
        )
    return path.read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Conversions (pure functions, tested without a browser)
# --------------------------------------------------------------------------------------------
def image_to_array(image) -> np.ndarray:
    """An image (3,H,W) or (1,3,H,W) in [0,1] (torch tensor or NumPy) -> (3,H,W) float32 NumPy."""
    if hasattr(image, "detach"):  # torch.Tensor, without importing torch
        image = image.detach().float().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"image must be a torch.Tensor or numpy.ndarray of shape (3,H,W) in [0,1], got {type(image).__name__}; "
            "e.g. canvas.set_image(trajectory.images[0])"
        )
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or arr.shape[0] != 3 or arr.shape[1] < 1 or arr.shape[2] < 1:
        raise ValueError(
            f"image must have shape (3,H,W) (one RGB image, channels first), got {tuple(np.shape(image))}; "
            "pass one image of a batch, e.g. images[0]"
        )
    if not np.isfinite(arr).all():
        raise ValueError("image contains NaN or inf; expected finite values in [0,1]")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"image values must lie in [0,1], got min {lo:.3g}, max {hi:.3g}; "
            "if the image is in [-1,1], pass (image + 1) / 2"
        )
    return np.clip(arr, 0.0, 1.0)


def array_to_png_data_url(image: np.ndarray) -> str:
    """(3,H,W) float in [0,1] -> 'data:image/png;base64,...' at native resolution."""
    rgb = (np.clip(image.transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --------------------------------------------------------------------------------------------
# The widget
# --------------------------------------------------------------------------------------------
class HeatmapCanvas(anywidget.AnyWidget):
    """Paint a signed heatmap (like +, dislike −) over an image; read it from Python as (H,W) float32.

    Args:
        image: optional (3,H,W) image in [0,1] to show straight away (else call :meth:`set_image`).
        scale: display pixels per image pixel (0 = auto: about 384 px wide; 12 for 32×32).
        brush, brush_size, strength, overlay_opacity: initial tool settings.
        on_change: optional callback ``f(heatmap)`` run whenever the map changes.
    """

    _esm = _read_asset("canvas.js")
    _css = _read_asset("canvas.css")

    # image (a PNG data URL at native resolution: small, and the same in ipywidgets 7 and 8)
    image_src = traitlets.Unicode("").tag(sync=True)
    height = traitlets.Int(0).tag(sync=True)
    width = traitlets.Int(0).tag(sync=True)
    # the painted map: flat row-major H*W floats in [-1, 1], synced when a stroke ends (checked: _valid_map)
    heatmap_data = traitlets.List().tag(sync=True)
    # tools
    brush = traitlets.Enum(BRUSHES, default_value="like").tag(sync=True)
    brush_size = traitlets.Int(4).tag(sync=True)
    strength = traitlets.Float(1.0).tag(sync=True)
    overlay_opacity = traitlets.Float(0.6).tag(sync=True)
    scale = traitlets.Int(0).tag(sync=True)
    # the last round's change map (flat row-major H*W mean |after - before|, [] = none) and its toggle
    change_data = traitlets.List(traitlets.Float()).tag(sync=True)
    show_change = traitlets.Bool(False).tag(sync=True)
    # read-only for the browser: how many undo steps exist, and a status message
    history_length = traitlets.Int(0).tag(sync=True)
    message = traitlets.Unicode("").tag(sync=True)

    def __init__(
        self,
        image=None,
        *,
        scale: int = 0,
        brush: str = "like",
        brush_size: int = 4,
        strength: float = 1.0,
        overlay_opacity: float = 0.6,
        on_change: Callable[[np.ndarray], None] | None = None,
        **kwargs,
    ):
        super().__init__(
            scale=scale, brush=brush, brush_size=brush_size, strength=strength, overlay_opacity=overlay_opacity, **kwargs
        )
        self._history: list[list[float]] = []
        self._quiet = False  # True while Python rewrites the map without an undo step
        self._callbacks: list[Callable[[np.ndarray], None]] = []
        self._image: np.ndarray | None = None
        self.observe(self._on_map_change, names="heatmap_data")
        self.on_msg(self._on_front_end_msg)
        if on_change is not None:
            self.on_change(on_change)
        if image is not None:
            self.set_image(image)
        else:
            self.message = "No image yet: call set_image(image)"

    # -- validation of tool settings -----------------------------------------------------------
    @traitlets.validate("brush_size")
    def _valid_size(self, proposal):
        v = proposal["value"]
        if not 1 <= v <= 64:
            raise traitlets.TraitError(f"brush_size must be 1..64 image pixels, got {v}")
        return v

    @traitlets.validate("strength", "overlay_opacity")
    def _valid_unit(self, proposal):
        v = proposal["value"]
        if not (0 <= v <= 1) or not math.isfinite(v):
            raise traitlets.TraitError(f"{proposal['trait'].name} must be in [0,1], got {v}")
        return v

    @traitlets.validate("heatmap_data")
    def _valid_map(self, proposal):
        try:
            return check_heatmap_list(proposal["value"], self.height, self.width)
        except ValueError as e:
            raise traitlets.TraitError(str(e)) from None

    def set_state(self, sync_data):
        """A map from the browser that fails :meth:`_valid_map` (NaN, another image's size) is refused
        without an exception in the kernel's comm handler: the previous map stays, the browser is sent it
        back, and the reason shows in the widget's status line (``message``)."""
        try:
            super().set_state(sync_data)
        except traitlets.TraitError as e:
            if "heatmap_data" not in sync_data:
                raise
            self.message = f"stroke refused: {e}"
            self.send_state("heatmap_data")

    # -- image ----------------------------------------------------------------------------------
    def set_image(self, image, keep_heatmap: bool = False) -> "HeatmapCanvas":
        """Show ``image`` (3,H,W) in [0,1]. Clears the map and its undo history unless
        ``keep_heatmap=True`` and the size is unchanged."""
        arr = image_to_array(image)
        H, W = arr.shape[1:]
        keep = keep_heatmap and self._image is not None and (H, W) == (self.height, self.width)
        self._image = arr
        self._quiet = True
        try:
            with self.hold_sync():
                self.height, self.width = int(H), int(W)
                if not keep:
                    self.heatmap_data = [0.0] * (H * W)
                    self._history = []
                    self.history_length = 0
                if len(self.change_data) != H * W:
                    self.change_data, self.show_change = [], False
                self.image_src = array_to_png_data_url(arr)
                self.message = ""
        finally:
            self._quiet = False
        return self

    @property
    def image(self) -> np.ndarray:
        """The image shown, (3,H,W) float32 in [0,1]."""
        self._require_image("read the image")
        return self._image.copy()

    @property
    def has_image(self) -> bool:
        return self._image is not None

    def _require_image(self, what: str) -> None:
        if self._image is None:
            raise NoImageError(
                f"cannot {what}: the canvas has no image yet. Call canvas.set_image(image) with a (3,H,W) "
                "image in [0,1] first (e.g. the image you want to give feedback on)."
            )

    # -- the last round's change map -------------------------------------------------------------
    def set_change_map(self, change, show: bool = True) -> None:
        """Overlay ``change`` (H,W) ≥ 0, e.g. ``FeedbackRound.change_map`` (mean |after − before| per
        pixel), on the image: brighter = moved more (scaled to the map's maximum). ``show`` turns
        the overlay on (the "Show change" toggle; ``canvas.show_change = False`` hides it)."""
        self._require_image("show a change map")
        if hasattr(change, "detach"):
            change = change.detach().float().cpu().numpy()
        arr = np.asarray(change, dtype=np.float32)
        if arr.shape != self.shape:
            raise ValueError(f"change must have the image's size {self.shape} (H,W), got shape {arr.shape}; "
                             "pass the round's change map, e.g. canvas.set_change_map(round.change_map)")
        if not np.isfinite(arr).all() or (arr < 0).any():
            raise ValueError("change must be finite and >= 0 (mean |after − before| per pixel), got NaN/inf or a negative value")
        with self.hold_sync():
            self.change_data = [round(float(v), 5) for v in arr.ravel()]
            self.show_change = bool(show)

    @property
    def change_map(self) -> np.ndarray | None:
        """The change map shown by the overlay, (H,W) float32, or None when none was set for this image."""
        return list_to_heatmap(self.change_data, self.height, self.width) if self.change_data else None

    # -- heatmap --------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the image and the map."""
        return (self.height, self.width)

    @property
    def heatmap(self) -> np.ndarray:
        """The painted map, (H,W) float32 in [-1,1] (a copy): + liked, − disliked, 0 unpainted."""
        self._require_image("read the heatmap")
        return list_to_heatmap(self.heatmap_data, self.height, self.width)

    @heatmap.setter
    def heatmap(self, value) -> None:
        self._require_image("set the heatmap")
        self.heatmap_data = heatmap_to_list(check_heatmap(value, self.shape))

    @property
    def is_empty(self) -> bool:
        """True when nothing is painted (all zeros) or there is no image."""
        return self._image is None or not any(self.heatmap_data)

    def summary(self) -> dict:
        """Counts and extremes of the map, for a quick printout."""
        m = self.heatmap
        return {
            "shape": list(m.shape),
            "liked_pixels": int((m > 0).sum()),
            "disliked_pixels": int((m < 0).sum()),
            "min": float(m.min()),
            "max": float(m.max()),
            "mean": float(m.mean()),
        }

    def clear(self) -> None:
        """Erase the whole map (one undo step)."""
        self._require_image("clear the heatmap")
        if not self.is_empty:
            self.heatmap_data = [0.0] * (self.height * self.width)

    def undo(self) -> bool:
        """Go back one change (a stroke, a clear or a Python assignment). False when nothing to undo."""
        if not self._history:
            self.message = "nothing to undo"
            return False
        previous = self._history.pop()
        self._quiet = True
        try:
            with self.hold_sync():
                self.heatmap_data = previous
                self.history_length = len(self._history)
                self.message = ""
        finally:
            self._quiet = False
        return True

    def paint_stroke(
        self,
        points: Sequence[tuple[float, float]],
        brush: str | None = None,
        size: float | None = None,
        strength: float | None = None,
    ) -> np.ndarray:
        """Paint one stroke from Python exactly as the browser would (for scripts and tests).

        ``points`` are (row, col) in pixel units; (i, j) is pixel (i, j)'s centre. Tool settings
        default to the widget's current ones. Returns the new map.
        """
        self._require_image("paint")
        brush = self.brush if brush is None else brush
        if brush not in BRUSHES:
            raise ValueError(f"brush must be one of {BRUSHES}, got {brush!r}")
        size = self.brush_size if size is None else size
        strength = self.strength if strength is None else strength
        if not 0 <= strength <= 1:
            raise ValueError(f"strength must be in [0,1], got {strength}")
        mask = brush_weights([(r + 0.5, c + 0.5) for r, c in points], self.shape, size)
        self.heatmap = apply_stroke(self.heatmap, mask, brush, strength)
        return self.heatmap

    # -- change notification and undo history ----------------------------------------------------
    def on_change(self, callback: Callable[[np.ndarray], None], remove: bool = False) -> None:
        """Run ``callback(heatmap)`` (an (H,W) float32 array) after every change of the map."""
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        if remove:
            self._callbacks.remove(callback)
        else:
            self._callbacks.append(callback)

    def _on_map_change(self, change) -> None:
        old, new = change["old"], change["new"]
        n = self.height * self.width
        if not self._quiet and old is not None and len(old) == n and old != new:
            self._history.append(list(old))
            del self._history[:-MAX_HISTORY]
            self.history_length = len(self._history)
        if self._image is None or len(new) != n:
            return
        heatmap = list_to_heatmap(new, self.height, self.width)
        for cb in list(self._callbacks):
            cb(heatmap.copy())

    def _on_front_end_msg(self, _widget, content, _buffers) -> None:
        if isinstance(content, dict) and content.get("event") == "undo":
            self.undo()

    def __repr__(self) -> str:
        if self._image is None:
            return "HeatmapCanvas(no image)"
        s = self.summary()
        return f"HeatmapCanvas({self.height}×{self.width}, liked {s['liked_pixels']} px, disliked {s['disliked_pixels']} px)"
