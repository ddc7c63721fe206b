// Point at the image instead of typing numbers:
// - Emplace Boxes gets a box editor: the connected image (or the last run's) as background;
//   drag on empty space to draw a box, drag a box to move it, its corners and edges to resize;
//   each box has a label and a prompt in the list below; Delete removes the selected box.
//   Each change is one step of ComfyUI's own undo (Ctrl+Z / Ctrl+Shift+Z): a second, private
//   history would race the frontend's, which also answers Ctrl+Z. The boxes live in the node's
//   own `spec` text, so a saved workflow keeps them and a typed edit shows up in the drawing.
// - Emplace Propose Locations shows, after a run, the background with every proposal and its
//   score, best first; a click selects a proposal (Shift/Ctrl+click adds or removes one), and
//   the `indices` of every connected Emplace Select Boxes follows.
// Only the public extension API: registerExtension, addDOMWidget with a <canvas>, pointer events.
// Text from users reaches the page as textContent, input values and canvas text, never as HTML.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import {
  boxFromDrag, dragBox, formatIndices, formatSpec, hitTest, parseIndices, parseSpec, proposalAt,
  toggleSelection,
} from "./lib/boxes.js";

const COLOURS = ["#ff5a5a", "#4fc3f7", "#ffd54f", "#81c784", "#ba68c8", "#ff8a65", "#4db6ac", "#f06292"];
const CANVAS_HEIGHT = 300;
const ROW_HEIGHT = 28;

function viewUrl(ref) {
  const query = new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder ?? "", type: ref.type ?? "temp" });
  return api.apiURL(`/view?${query}`);
}

function linkById(graph, id) {
  return graph.links?.get ? graph.links.get(id) : graph.links?.[id];
}

/** The URL of the image on a node's `image` input, before any run: a Load Image file or a node's preview. */
function connectedImageUrl(node) {
  const input = node.inputs?.find((i) => i.name === "image");
  const link = input?.link != null ? linkById(node.graph ?? app.graph, input.link) : null;
  const source = link ? (node.graph ?? app.graph).getNodeById(link.origin_id) : null;
  if (!source) return null;
  const file = source.type === "LoadImage" ? source.widgets?.find((w) => w.name === "image")?.value : null;
  if (typeof file === "string" && file) {
    const clean = file.replace(/\s*\[(input|output|temp)\]$/, "");
    const slash = clean.lastIndexOf("/");
    return viewUrl({ filename: clean.slice(slash + 1), subfolder: slash < 0 ? "" : clean.slice(0, slash), type: "input" });
  }
  return source.imgs?.[0]?.src ?? null;
}

/** A canvas that keeps an image fitted in it and maps pointer positions to image fractions. */
class ImageCanvas {
  constructor(container) {
    this.canvas = document.createElement("canvas");
    this.canvas.tabIndex = 0;
    Object.assign(this.canvas.style, { width: "100%", height: `${CANVAS_HEIGHT}px`, display: "block",
      background: "#222", outline: "none", touchAction: "none", borderRadius: "4px" });
    container.append(this.canvas);
    this.image = null;
    this.url = null;
    this.onLoad = () => {};
  }

  setImage(url) {
    if (!url || url === this.url) return;
    this.url = url;
    const image = new Image();
    image.onload = () => {
      if (this.url !== url) return;
      this.image = image;
      this.onLoad();
    };
    image.src = url;
  }

  /** The fitted image's rectangle in CSS pixels of the canvas. */
  area() {
    const w = this.canvas.clientWidth || 1;
    const h = this.canvas.clientHeight || 1;
    const iw = this.image?.naturalWidth || 1;
    const ih = this.image?.naturalHeight || 1;
    const s = this.image ? Math.min(w / iw, h / ih) : Math.min(w, h);
    return { x: (w - iw * s) / 2, y: (h - ih * s) / 2, w: iw * s, h: ih * s };
  }

  /** A pointer event -> (fx, fy) as fractions of the image (the element may be scaled by the graph's zoom). */
  fractions(event) {
    const rect = this.canvas.getBoundingClientRect();
    const px = ((event.clientX - rect.left) / rect.width) * this.canvas.clientWidth;
    const py = ((event.clientY - rect.top) / rect.height) * this.canvas.clientHeight;
    const a = this.area();
    return [(px - a.x) / a.w, (py - a.y) / a.h];
  }

  /** Clears, draws the image, and returns a 2D context in CSS pixels plus the image area. */
  begin() {
    const ratio = window.devicePixelRatio || 1;
    const w = this.canvas.clientWidth;
    const h = this.canvas.clientHeight;
    if (this.canvas.width !== Math.round(w * ratio) || this.canvas.height !== Math.round(h * ratio)) {
      this.canvas.width = Math.round(w * ratio);
      this.canvas.height = Math.round(h * ratio);
    }
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const a = this.area();
    if (this.image) ctx.drawImage(this.image, a.x, a.y, a.w, a.h);
    else {
      ctx.fillStyle = "#333";
      ctx.fillRect(a.x, a.y, a.w, a.h);
    }
    return { ctx, a };
  }
}

function drawLabelledBox(ctx, a, box, colour, text, thick) {
  const x = a.x + box.x0 * a.w;
  const y = a.y + box.y0 * a.h;
  const w = (box.x1 - box.x0) * a.w;
  const h = (box.y1 - box.y0) * a.h;
  ctx.lineWidth = thick ? 3 : 1.5;
  ctx.strokeStyle = colour;
  ctx.strokeRect(x, y, w, h);
  ctx.font = "12px sans-serif";
  const tw = ctx.measureText(text).width + 6;
  ctx.fillStyle = colour;
  ctx.fillRect(x, Math.max(0, y - 16), tw, 16);
  ctx.fillStyle = "#000";
  ctx.fillText(text, x + 3, Math.max(12, y - 4));
  return { x, y, w, h };
}

/** Runs `change` as one step of the frontend's undo history: litegraph's before/after-change calls are
 * what its change tracker records. */
function asOneChange(graph, change) {
  graph?.beforeChange?.();
  graph?.canvasAction?.((c) => c.emitBeforeChange?.());
  try {
    change();
  } finally {
    graph?.afterChange?.();
    graph?.canvasAction?.((c) => c.emitAfterChange?.());
  }
}

// ---- Emplace Boxes: the editor ---------------------------------------------------------

class BoxEditor {
  constructor(node) {
    this.node = node;
    this.spec = node.widgets.find((w) => w.name === "spec");
    this.boxes = [];
    this.comments = [];
    this.selected = -1;
    this.drag = null;
    this.lastText = null;
    this.lastRunImage = null;

    this.element = document.createElement("div");
    this.element.className = "emplace-box-editor";
    Object.assign(this.element.style, { display: "flex", flexDirection: "column", gap: "4px", fontSize: "12px" });
    this.view = new ImageCanvas(this.element);
    this.view.onLoad = () => this.load(String(this.spec?.value ?? "")); // pixel lines need the image's size
    this.status = document.createElement("div");
    this.status.style.opacity = "0.8";
    this.element.append(this.status);
    this.list = document.createElement("div");
    this.element.append(this.list);

    const c = this.view.canvas;
    for (const type of ["pointerdown", "pointermove", "pointerup", "pointercancel"]) {
      c.addEventListener(type, (e) => this.onPointer(e));
    }
    c.addEventListener("keydown", (e) => this.onKey(e));
    // the graph canvas must not pan, zoom or select while the pointer works inside the editor
    for (const type of ["mousedown", "mousemove", "mouseup", "wheel", "contextmenu"]) {
      c.addEventListener(type, (e) => e.stopPropagation());
    }
    this.widget = node.addDOMWidget("box_editor", "emplace_box_editor", this.element, {
      serialize: false, // the boxes are saved in `spec`; the editor itself holds nothing of its own
      hideOnZoom: false,
      getValue: () => undefined,
      setValue: () => {},
      getMinHeight: () => CANVAS_HEIGHT + 30 + ROW_HEIGHT * Math.max(1, this.boxes.length),
    });
    this.widget.serialize = false;
    this.timer = setInterval(() => this.sync(), 250); // typed edits, loaded workflows, connections
  }

  onExecuted(message) {
    const ref = message?.emplace_background?.[0];
    if (ref) this.lastRunImage = viewUrl(ref);
  }

  dispose() {
    clearInterval(this.timer);
  }

  size() {
    const image = this.view.image;
    if (image) return [image.naturalWidth, image.naturalHeight];
    const get = (name) => Number(this.node.widgets.find((w) => w.name === name)?.value) || 0;
    return [get("width"), get("height")];
  }

  sync() {
    if (!this.element.isConnected && !this.node.graph) {
      this.dispose();
      return;
    }
    this.view.setImage(connectedImageUrl(this.node) ?? this.lastRunImage);
    const text = String(this.spec?.value ?? "");
    if (text !== this.lastText && !this.drag) this.load(text);
  }

  load(text) {
    const [w, h] = this.size();
    const parsed = parseSpec(text, w, h);
    this.boxes = parsed.boxes;
    this.comments = parsed.comments;
    this.errors = parsed.errors;
    this.lastText = text;
    if (this.selected >= this.boxes.length) this.selected = this.boxes.length - 1;
    this.renderList();
    this.render();
  }

  /** Writes the boxes into `spec` as one undoable change of the graph. */
  commit() {
    const text = formatSpec(this.boxes, this.comments);
    if (text === String(this.spec.value ?? "")) return;
    asOneChange(this.node.graph ?? app.graph, () => {
      this.spec.value = text;
      this.spec.callback?.(text);
      this.lastText = null; // re-read it: the same parse the node will do
      this.load(text);
    });
    this.node.setDirtyCanvas?.(true, true);
  }

  onPointer(event) {
    event.stopPropagation();
    const [fx, fy] = this.view.fractions(event);
    const a = this.view.area();
    const tol = [8 / a.w, 8 / a.h];
    if (event.type === "pointerdown") {
      this.view.canvas.focus();
      this.view.canvas.setPointerCapture(event.pointerId);
      const hit = hitTest(this.boxes, fx, fy, tol[0], tol[1], this.selected);
      if (hit) {
        this.selected = hit.index;
        this.drag = { handle: hit.handle, start: [fx, fy], original: { ...this.boxes[hit.index] } };
      } else if (fx >= 0 && fx <= 1 && fy >= 0 && fy <= 1) {
        this.selected = -1;
        this.drag = { handle: "new", start: [fx, fy] };
      }
      this.render();
      this.renderList();
      return;
    }
    if (event.type === "pointermove") {
      if (!this.drag) {
        const hit = hitTest(this.boxes, fx, fy, tol[0], tol[1], this.selected);
        const cursors = { move: "move", n: "ns-resize", s: "ns-resize", e: "ew-resize", w: "ew-resize",
          nw: "nwse-resize", se: "nwse-resize", ne: "nesw-resize", sw: "nesw-resize" };
        this.view.canvas.style.cursor = hit ? cursors[hit.handle] : "crosshair";
        return;
      }
      const [sx, sy] = this.drag.start;
      if (this.drag.handle === "new") {
        this.drag.preview = boxFromDrag(sx, sy, Math.min(1, Math.max(0, fx)), Math.min(1, Math.max(0, fy)));
      } else {
        this.boxes[this.selected] = dragBox(this.drag.original, this.drag.handle, fx - sx, fy - sy);
      }
      this.render();
      return;
    }
    // pointerup / pointercancel
    const drag = this.drag;
    this.drag = null;
    if (!drag) return;
    if (drag.handle === "new") {
      if (drag.preview && event.type === "pointerup") {
        const n = this.boxes.length;
        this.boxes.push({ ...drag.preview, label: n ? this.boxes[n - 1].label : "object" });
        this.selected = this.boxes.length - 1;
      }
    } else if (event.type === "pointercancel") {
      this.boxes[this.selected] = drag.original;
    }
    this.commit();
  }

  onKey(event) {
    const key = event.key.toLowerCase();
    let handled = true;
    if ((key === "delete" || key === "backspace") && this.selected >= 0) {
      this.boxes.splice(this.selected, 1);
      this.selected = Math.min(this.selected, this.boxes.length - 1);
      this.commit();
    } else if (key === "escape") {
      this.selected = -1;
      this.render();
    } else {
      handled = false;
    }
    if (handled) {
      event.preventDefault();
      event.stopPropagation(); // not the graph's own Delete (undo is the graph's: it is not handled here)
    }
  }

  render() {
    const { ctx, a } = this.view.begin();
    const shown = this.drag?.preview ? [...this.boxes, this.drag.preview] : this.boxes;
    shown.forEach((b, i) => {
      const colour = COLOURS[i % COLOURS.length];
      drawLabelledBox(ctx, a, b, colour, `${i}: ${b.label || "object"}`, i === this.selected);
      if (i === this.selected) {
        ctx.fillStyle = colour;
        for (const [fx, fy] of [[0, 0], [0.5, 0], [1, 0], [1, 0.5], [1, 1], [0.5, 1], [0, 1], [0, 0.5]]) {
          ctx.fillRect(a.x + (b.x0 + fx * (b.x1 - b.x0)) * a.w - 3, a.y + (b.y0 + fy * (b.y1 - b.y0)) * a.h - 3, 6, 6);
        }
      }
    });
    const [w, h] = this.size();
    this.status.textContent = this.errors?.length
      ? `⚠ ${this.errors.join("; ")}`
      : `${this.boxes.length} box${this.boxes.length === 1 ? "" : "es"} on ${w}×${h} · drag to draw · ` +
        "drag a box to move, its edges to resize · Del deletes · Ctrl+Z undoes";
  }

  renderList() {
    this.list.replaceChildren();
    this.boxes.forEach((b, i) => {
      const row = document.createElement("div");
      Object.assign(row.style, { display: "flex", gap: "4px", alignItems: "center", height: `${ROW_HEIGHT - 4}px`,
        borderLeft: `4px solid ${COLOURS[i % COLOURS.length]}`, paddingLeft: "4px",
        background: i === this.selected ? "rgba(255,255,255,0.08)" : "" });
      const index = document.createElement("span");
      index.textContent = String(i);
      const field = (name, placeholder, grow) => {
        const input = document.createElement("input");
        input.value = b[name] ?? "";
        input.placeholder = placeholder;
        input.dataset.field = name;
        Object.assign(input.style, { flex: grow, minWidth: "0", fontSize: "12px" });
        input.addEventListener("keydown", (e) => e.stopPropagation());
        input.addEventListener("change", () => {
          this.boxes[i] = { ...this.boxes[i], [name]: input.value };
          this.commit();
        });
        input.addEventListener("focus", () => {
          this.selected = i;
          this.render();
        });
        return input;
      };
      const remove = document.createElement("button");
      remove.textContent = "✕";
      remove.title = "delete this box";
      remove.addEventListener("click", () => {
        this.boxes.splice(i, 1);
        this.selected = -1;
        this.commit();
      });
      row.append(index, field("label", "label", "1"), field("prompt", "prompt (optional)", "2"), remove);
      this.list.append(row);
    });
  }
}

// ---- Emplace Propose Locations: the picker ----------------------------------------------

class ProposalPicker {
  constructor(node) {
    this.node = node;
    this.proposals = null;
    this.element = document.createElement("div");
    this.element.className = "emplace-proposal-picker";
    Object.assign(this.element.style, { display: "flex", flexDirection: "column", gap: "4px", fontSize: "12px" });
    this.view = new ImageCanvas(this.element);
    this.view.onLoad = () => this.render();
    this.status = document.createElement("div");
    this.status.style.opacity = "0.8";
    this.status.textContent = "Run the graph to see the proposals here; click one to pick it";
    this.element.append(this.status);
    const c = this.view.canvas;
    c.addEventListener("pointerdown", (e) => this.onClick(e));
    for (const type of ["mousedown", "mousemove", "mouseup", "wheel", "contextmenu"]) {
      c.addEventListener(type, (e) => e.stopPropagation());
    }
    this.widget = node.addDOMWidget("proposal_picker", "emplace_proposal_picker", this.element, {
      serialize: false,
      hideOnZoom: false,
      getValue: () => undefined,
      setValue: () => {},
      getMinHeight: () => CANVAS_HEIGHT + 30,
    });
    this.widget.serialize = false;
  }

  /** The Emplace Select Boxes nodes fed by this node's `boxes` output. */
  selectNodes() {
    const graph = this.node.graph ?? app.graph;
    const links = this.node.outputs?.[0]?.links ?? [];
    return links.map((id) => linkById(graph, id)).filter(Boolean).map((l) => graph.getNodeById(l.target_id))
      .filter((n) => n?.type === "EmplaceSelectBoxes");
  }

  selection() {
    const widget = this.selectNodes()[0]?.widgets?.find((w) => w.name === "indices");
    return widget ? parseIndices(widget.value, this.proposals?.boxes.length ?? 0) : [];
  }

  onExecuted(message) {
    const proposals = message?.emplace_proposals?.[0];
    if (proposals) this.show(proposals);
  }

  dispose() {}

  show(proposals) {
    this.proposals = proposals;
    this.view.setImage(viewUrl(proposals.background[0]));
    this.render();
  }

  onClick(event) {
    event.stopPropagation();
    if (!this.proposals) return;
    const [fx, fy] = this.view.fractions(event);
    const i = proposalAt(this.proposals.boxes, fx * this.proposals.width, fy * this.proposals.height);
    if (i < 0) return;
    const chosen = formatIndices(toggleSelection(this.selection(), i, event.shiftKey || event.ctrlKey || event.metaKey));
    const graph = this.node.graph ?? app.graph;
    asOneChange(graph, () => {
      for (const node of this.selectNodes()) {
        const widget = node.widgets?.find((w) => w.name === "indices");
        if (!widget) continue;
        widget.value = chosen;
        widget.callback?.(chosen);
      }
    });
    graph.setDirtyCanvas?.(true, true);
    this.render();
  }

  render() {
    if (!this.proposals) return;
    const { ctx, a } = this.view.begin();
    const { width, height, boxes } = this.proposals;
    const selected = this.selection();
    // best first: draw the worst first so the best lies on top
    for (let i = boxes.length - 1; i >= 0; i--) {
      const [x0, y0, x1, y1, score] = boxes[i];
      const box = { x0: x0 / width, y0: y0 / height, x1: x1 / width, y1: y1 / height };
      const on = selected.includes(i);
      drawLabelledBox(ctx, a, box, on ? "#ffeb3b" : COLOURS[i % COLOURS.length], `${i}: ${score.toFixed(1)}`, on);
    }
    const linked = this.selectNodes().length;
    this.status.textContent = `${boxes.length} proposals, best first (score: log-likelihood) · ` +
      (linked ? `picked: ${selected.join(", ") || "none"} · click to pick, Shift+click to add`
        : "connect Emplace Select Boxes to pick by clicking");
  }
}

// node type -> (the property the node keeps its widget in, the widget's class)
const WIDGETS = { EmplaceBoxes: ["emplaceEditor", BoxEditor], EmplaceProposeLocations: ["emplacePicker", ProposalPicker] };

app.registerExtension({
  name: "Emplace.BoxEditor",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!(nodeData.name in WIDGETS)) return;
    const [property, Widget] = WIDGETS[nodeData.name];
    const { onNodeCreated, onExecuted, onRemoved } = nodeType.prototype;
    nodeType.prototype.onNodeCreated = function () {
      onNodeCreated?.apply(this, arguments);
      this[property] = new Widget(this);
      this.setSize?.([Math.max(this.size[0], 420), this.computeSize()[1]]);
    };
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      this[property]?.onExecuted(message);
    };
    nodeType.prototype.onRemoved = function () {
      this[property]?.dispose();
      onRemoved?.apply(this, arguments);
    };
  },
});
