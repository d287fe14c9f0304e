// pxpo-lite heatmap canvas: paint a signed "like / dislike" map over a small image.
//
// An anywidget ES module (no build step, no imports): `export default { render }`.
// Painting happens here, in the browser; the map reaches Python only when a stroke ends,
// as the `heatmap_data` trait (a flat row-major list of H*W floats in [-1, 1]).
// The last round's change map (`change_data`, same layout, >= 0) is drawn in yellow over the
// image while `show_change` is on (the "Show change" button toggles it).
// Undo lives in Python (one history of every map state): the Undo button sends
// {event: "undo"} to the kernel. Python side: pxpo_lite/canvas.py (HeatmapCanvas).
//
// Brush maths (mirrored by HeatmapCanvas.paint_stroke in Python):
//   weight of a pixel for one stamp  w = clamp(r + 0.5 - d, 0, 1), r = size / 2,
//                                     d = distance from the pixel centre to the brush centre;
//   within one stroke a pixel keeps its largest weight m (passing twice does not add up);
//   like / dislike:  map = clamp(before + sign * strength * m, -1, 1);
//   eraser:          map = before * (1 - strength * m).

const BRUSHES = [
  ["like", "+ Like", "Paint what you like (positive advantage)"],
  ["dislike", "\u2212 Dislike", "Paint what you dislike (negative advantage)"],
  ["erase", "Eraser", "Erase painted values"],
];

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function render({ model, el: root }) {
  // ---- DOM -------------------------------------------------------------------------------
  const wrap = el("div", "pxpo-canvas");
  const toolbar = el("div", "pxpo-toolbar");
  const brushButtons = {};
  for (const [name, label, title] of BRUSHES) {
    const b = el("button", "pxpo-btn pxpo-brush pxpo-brush-" + name, label);
    b.type = "button";
    b.title = title;
    b.dataset.brush = name;
    b.addEventListener("click", () => {
      model.set("brush", name);
      model.save_changes();
    });
    brushButtons[name] = b;
    toolbar.appendChild(b);
  }
  function slider(label, trait, min, max, step, fmt) {
    const box = el("label", "pxpo-slider");
    const text = el("span", "pxpo-slider-label");
    const input = el("input");
    input.type = "range";
    input.min = String(min);
    input.max = String(max);
    input.step = String(step);
    input.className = "pxpo-range pxpo-range-" + trait;
    const show = () => {
      input.value = String(model.get(trait));
      text.textContent = label + " " + fmt(model.get(trait));
    };
    input.addEventListener("input", () => {
      const v = Number(input.value);
      model.set(trait, v);
      text.textContent = label + " " + fmt(v);
    });
    input.addEventListener("change", () => model.save_changes());
    box.appendChild(text);
    box.appendChild(input);
    show();
    return [box, show];
  }
  const [sizeBox, showSize] = slider("size", "brush_size", 1, 16, 1, (v) => String(v) + " px");
  const [strengthBox, showStrength] = slider("strength", "strength", 0.05, 1, 0.05, (v) => Number(v).toFixed(2));
  const [overlayBox, showOverlay] = slider("overlay", "overlay_opacity", 0, 1, 0.05, (v) => Number(v).toFixed(2));
  toolbar.appendChild(sizeBox);
  toolbar.appendChild(strengthBox);
  toolbar.appendChild(overlayBox);
  const undoBtn = el("button", "pxpo-btn pxpo-undo", "Undo");
  undoBtn.type = "button";
  undoBtn.title = "Undo the last change to the map";
  const clearBtn = el("button", "pxpo-btn pxpo-clear", "Clear");
  clearBtn.type = "button";
  clearBtn.title = "Erase the whole map (undoable)";
  toolbar.appendChild(undoBtn);
  toolbar.appendChild(clearBtn);
  const changeBtn = el("button", "pxpo-btn pxpo-change", "Show change");
  changeBtn.type = "button";
  changeBtn.title = "Overlay what moved in the last round (brighter = changed more)";
  changeBtn.addEventListener("click", () => {
    model.set("show_change", !model.get("show_change"));
    model.save_changes();
  });
  toolbar.appendChild(changeBtn);

  const stage = el("div", "pxpo-stage");
  const canvas = el("canvas", "pxpo-paint");
  const empty = el("div", "pxpo-empty", "No image yet \u2014 call canvas.set_image(image) in Python, then paint here.");
  stage.appendChild(canvas);
  stage.appendChild(empty);
  const status = el("div", "pxpo-status");
  wrap.appendChild(toolbar);
  wrap.appendChild(stage);
  wrap.appendChild(status);
  root.appendChild(wrap);
  const ctx = canvas.getContext("2d");

  // ---- state -----------------------------------------------------------------------------
  let H = 0, W = 0, scale = 1;
  let map = new Float32Array(0); // current map, row-major H*W
  let before = null; // map when the stroke started
  let strokeMask = null; // largest brush weight per pixel during this stroke
  let drawing = false;
  let last = null; // last pointer position in image pixels
  let hover = null;
  let image = null; // HTMLImageElement once loaded
  const overlay = document.createElement("canvas");
  const octx = overlay.getContext("2d");

  function readModelMap() {
    H = model.get("height") | 0;
    W = model.get("width") | 0;
    const data = model.get("heatmap_data") || [];
    map = new Float32Array(H * W);
    if (data.length === H * W) for (let i = 0; i < data.length; i++) map[i] = data[i];
  }

  function hasImage() {
    return H > 0 && W > 0 && (model.get("image_src") || "") !== "";
  }

  function layout() {
    const s = model.get("scale") | 0;
    scale = s > 0 ? s : Math.max(1, Math.round(384 / Math.max(H, W, 1)));
    canvas.width = Math.max(1, W) * scale;
    canvas.height = Math.max(1, H) * scale;
    overlay.width = Math.max(1, W);
    overlay.height = Math.max(1, H);
    empty.style.display = hasImage() ? "none" : "flex";
    canvas.style.display = hasImage() ? "block" : "none";
  }

  function loadImage() {
    const src = model.get("image_src") || "";
    image = null;
    if (!src) return draw();
    const img = new Image();
    img.onload = () => {
      image = img;
      draw();
    };
    img.src = src;
  }

  function draw() {
    layout();
    updateStatus();
    if (!hasImage()) return;
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (image) ctx.drawImage(image, 0, 0, W * scale, H * scale);
    // overlay: green = like (+), red = dislike (-), alpha ~ |value| * opacity
    const op = Number(model.get("overlay_opacity"));
    const px = octx.createImageData(W, H);
    for (let i = 0; i < H * W; i++) {
      const v = map[i];
      const a = Math.min(1, Math.abs(v)) * op;
      if (v > 0) {
        px.data[4 * i] = 0; px.data[4 * i + 1] = 235; px.data[4 * i + 2] = 70;
      } else {
        px.data[4 * i] = 255; px.data[4 * i + 1] = 0; px.data[4 * i + 2] = 40;
      }
      px.data[4 * i + 3] = Math.round(255 * a);
    }
    octx.putImageData(px, 0, 0);
    ctx.drawImage(overlay, 0, 0, W * scale, H * scale);
    // the last round's change map: yellow, alpha ~ change / its maximum
    const change = model.get("change_data") || [];
    if (model.get("show_change") && change.length === H * W) {
      let mx = 0;
      for (let i = 0; i < change.length; i++) mx = Math.max(mx, change[i]);
      const cx = octx.createImageData(W, H);
      for (let i = 0; i < H * W; i++) {
        cx.data[4 * i] = 255; cx.data[4 * i + 1] = 230; cx.data[4 * i + 2] = 0;
        cx.data[4 * i + 3] = mx > 0 ? Math.round(230 * Math.min(1, change[i] / mx)) : 0;
      }
      octx.putImageData(cx, 0, 0);
      ctx.drawImage(overlay, 0, 0, W * scale, H * scale);
    }
    if (hover) {
      const r = (Number(model.get("brush_size")) / 2) * scale;
      ctx.beginPath();
      ctx.arc(hover[1] * scale, hover[0] * scale, Math.max(r, 2), 0, 2 * Math.PI);
      ctx.strokeStyle = "rgba(255,255,255,0.9)";
      ctx.lineWidth = 1.5;
      ctx.stroke();
      ctx.beginPath();
      ctx.arc(hover[1] * scale, hover[0] * scale, Math.max(r, 2) + 1.5, 0, 2 * Math.PI);
      ctx.strokeStyle = "rgba(0,0,0,0.7)";
      ctx.lineWidth = 1;
      ctx.stroke();
    }
  }

  function updateStatus() {
    const brush = model.get("brush");
    for (const name in brushButtons) brushButtons[name].classList.toggle("pxpo-active", name === brush);
    undoBtn.disabled = (model.get("history_length") | 0) === 0;
    const hasChange = (model.get("change_data") || []).length === H * W && H * W > 0;
    changeBtn.disabled = !hasChange;
    changeBtn.classList.toggle("pxpo-active", hasChange && !!model.get("show_change"));
    changeBtn.textContent = hasChange && model.get("show_change") ? "Hide change" : "Show change";
    showSize();
    showStrength();
    showOverlay();
    let pos = 0, neg = 0;
    for (let i = 0; i < map.length; i++) {
      if (map[i] > 0) pos++;
      else if (map[i] < 0) neg++;
    }
    const msg = model.get("message") || "";
    const counts = hasImage() ? `${W}\u00d7${H} px \u00b7 liked ${pos} \u00b7 disliked ${neg} \u00b7 green = like (+), red = dislike (\u2212)` : "";
    status.textContent = [counts, msg].filter((s) => s).join(" \u00b7 ");
  }

  // ---- painting --------------------------------------------------------------------------
  function toPixel(ev) {
    const rect = canvas.getBoundingClientRect();
    const x = ((ev.clientX - rect.left) / rect.width) * W; // column, in pixel units
    const y = ((ev.clientY - rect.top) / rect.height) * H; // row
    return [y, x];
  }

  function stamp(y, x) {
    const r = Number(model.get("brush_size")) / 2;
    const i0 = Math.max(0, Math.floor(y - r - 1)), i1 = Math.min(H - 1, Math.ceil(y + r + 1));
    const j0 = Math.max(0, Math.floor(x - r - 1)), j1 = Math.min(W - 1, Math.ceil(x + r + 1));
    for (let i = i0; i <= i1; i++) {
      for (let j = j0; j <= j1; j++) {
        const d = Math.hypot(i + 0.5 - y, j + 0.5 - x);
        const w = Math.min(1, Math.max(0, r + 0.5 - d));
        const k = i * W + j;
        if (w > strokeMask[k]) strokeMask[k] = w;
      }
    }
  }

  function applyStroke() {
    const brush = model.get("brush");
    const s = Number(model.get("strength"));
    for (let k = 0; k < map.length; k++) {
      const m = strokeMask[k];
      if (m === 0) continue;
      if (brush === "erase") map[k] = before[k] * (1 - s * m);
      else {
        const sign = brush === "dislike" ? -1 : 1;
        map[k] = Math.max(-1, Math.min(1, before[k] + sign * s * m));
      }
    }
  }

  function segment(a, b) {
    // stamp along a -> b every <= 0.25 px so fast drags leave no gaps
    const n = Math.max(1, Math.ceil(Math.hypot(b[0] - a[0], b[1] - a[1]) / 0.25));
    for (let t = 1; t <= n; t++) stamp(a[0] + ((b[0] - a[0]) * t) / n, a[1] + ((b[1] - a[1]) * t) / n);
  }

  function sync() {
    const out = new Array(map.length);
    for (let i = 0; i < map.length; i++) out[i] = Math.round(map[i] * 1e4) / 1e4;
    model.set("heatmap_data", out);
    model.save_changes();
  }

  function onDown(ev) {
    if (ev.button !== undefined && ev.button !== 0) return;
    if (!hasImage()) {
      model.set("message", "No image yet: call set_image() first");
      updateStatus();
      return;
    }
    ev.preventDefault();
    try { canvas.setPointerCapture(ev.pointerId); } catch (e) { /* synthetic events */ }
    drawing = true;
    before = Float32Array.from(map);
    strokeMask = new Float32Array(map.length);
    last = toPixel(ev);
    stamp(last[0], last[1]);
    applyStroke();
    draw();
  }

  function onMove(ev) {
    const p = toPixel(ev);
    hover = p;
    if (drawing) {
      segment(last, p);
      last = p;
      applyStroke();
    }
    draw();
  }

  function onUp() {
    if (!drawing) return;
    drawing = false;
    before = null;
    strokeMask = null;
    draw();
    sync(); // the only time the map goes to the kernel: when a stroke ends
  }

  function onLeave() {
    hover = null;
    if (!drawing) draw();
  }

  canvas.addEventListener("pointerdown", onDown);
  canvas.addEventListener("pointermove", onMove);
  canvas.addEventListener("pointerup", onUp);
  canvas.addEventListener("pointercancel", onUp);
  canvas.addEventListener("pointerleave", onLeave);
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  empty.addEventListener("pointerdown", () => {
    model.set("message", "No image yet: call set_image() first");
    updateStatus();
  });

  undoBtn.addEventListener("click", () => model.send({ event: "undo" }));
  clearBtn.addEventListener("click", () => {
    if (!hasImage()) return;
    map = new Float32Array(H * W);
    draw();
    sync();
  });

  // ---- model -> view ---------------------------------------------------------------------
  const onMap = () => {
    if (drawing) return; // our own stroke wins; it is sent when it ends
    readModelMap();
    draw();
  };
  const onImage = () => {
    readModelMap();
    loadImage();
  };
  const onSmall = () => draw();
  const events = [
    ["change:heatmap_data", onMap],
    ["change:image_src", onImage],
    ["change:height", onImage],
    ["change:width", onImage],
    ["change:scale", onSmall],
    ["change:brush", onSmall],
    ["change:brush_size", onSmall],
    ["change:strength", onSmall],
    ["change:overlay_opacity", onSmall],
    ["change:history_length", onSmall],
    ["change:message", onSmall],
    ["change:change_data", onSmall],
    ["change:show_change", onSmall],
  ];
  for (const [name, fn] of events) model.on(name, fn);
  readModelMap();
  loadImage();

  return () => {
    for (const [name, fn] of events) model.off(name, fn);
  };
}

export default { render };
