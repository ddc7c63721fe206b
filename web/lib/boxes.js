// The box editor's and proposal picker's logic, free of the DOM and of ComfyUI, so that
// `node --test tests/web` checks it. Boxes are {label, prompt, x0, y0, x1, y1} with the
// corners as fractions of the image (0..1), which is what the editor writes back into the
// node's `spec` text: one `label: x0 y0 x1 y1 | prompt` line per box, the grammar
// emplace/boxes.py parses (all four in 0..1 are fractions; otherwise pixels).

export const MIN_SIDE = 0.005; // a box never shrinks below this fraction of the image

const clamp01 = (v) => Math.min(1, Math.max(0, v));
const round4 = (v) => Math.round(v * 10000) / 10000;

/** x0 < x1 and y0 < y1, inside the image. */
export function normalise(box) {
  const [x0, x1] = [clamp01(Math.min(box.x0, box.x1)), clamp01(Math.max(box.x0, box.x1))];
  const [y0, y1] = [clamp01(Math.min(box.y0, box.y1)), clamp01(Math.max(box.y0, box.y1))];
  return { ...box, x0, y0, x1, y1 };
}

/**
 * The node's text -> {boxes, comments, errors}. Pixel lines need the image size (the
 * connected image's, else the node's width/height). A bad line is reported by number and
 * skipped, as the node would refuse it; the editor shows the error and leaves the text alone.
 */
export function parseSpec(text, width, height) {
  const boxes = [];
  const comments = [];
  const errors = [];
  const source = String(text ?? "");
  if (source.trimStart().startsWith("{")) {
    try {
      const doc = JSON.parse(source);
      for (const b of doc.boxes) {
        const w = Number(doc.width) || width;
        const h = Number(doc.height) || height;
        boxes.push(normalise({ label: String(b.label ?? ""), prompt: String(b.prompt ?? ""),
          x0: b.x0 / w, y0: b.y0 / h, x1: b.x1 / w, y1: b.y1 / h }));
      }
    } catch (e) {
      errors.push(`not an Emplace boxes JSON document: ${e.message}`);
    }
    return { boxes, comments, errors };
  }
  source.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (!line) return;
    if (line.startsWith("#")) {
      comments.push(line);
      return;
    }
    const bar = line.indexOf("|");
    const head = bar < 0 ? line : line.slice(0, bar);
    const prompt = bar < 0 ? "" : line.slice(bar + 1).trim();
    const colon = head.lastIndexOf(":");
    const values = colon < 0 ? [] : head.slice(colon + 1).replace(/,/g, " ").split(/\s+/).filter(Boolean).map(Number);
    if (colon < 0 || values.length !== 4 || values.some((v) => !Number.isFinite(v))) {
      errors.push(`line ${i + 1}: '${line}' is not 'label: x0 y0 x1 y1 [| prompt]'`);
      return;
    }
    const fractions = values.every((v) => v >= 0 && v <= 1);
    if (!fractions && !(width > 0 && height > 0)) {
      errors.push(`line ${i + 1}: pixel coordinates need the image size`);
      return;
    }
    const [x0, y0, x1, y1] = fractions ? values : [values[0] / width, values[1] / height, values[2] / width,
      values[3] / height];
    if (!(x1 > x0 && y1 > y0)) {
      errors.push(`line ${i + 1}: '${line}' is an empty box (needs x1 > x0 and y1 > y0)`);
      return;
    }
    boxes.push(normalise({ label: head.slice(0, colon).trim(), prompt, x0, y0, x1, y1 }));
  });
  return { boxes, comments, errors };
}

/** Boxes -> the node's text, fractions to 4 decimals; comment lines kept at the top. */
export function formatSpec(boxes, comments = []) {
  const lines = [...comments];
  for (const b of boxes) {
    // A label may not hold '|' (it would start the prompt) nor a line break; a prompt may not break lines.
    const label = String(b.label ?? "").replace(/[|\r\n]+/g, " ").trim();
    const prompt = String(b.prompt ?? "").replace(/[\r\n]+/g, " ").trim();
    const coords = [b.x0, b.y0, b.x1, b.y1].map((v) => round4(v).toFixed(4)).join(" ");
    lines.push(`${label}: ${coords}${prompt ? ` | ${prompt}` : ""}`);
  }
  return lines.join("\n");
}

const HANDLES = { nw: [0, 0], n: [0.5, 0], ne: [1, 0], e: [1, 0.5], se: [1, 1], s: [0.5, 1], sw: [0, 1], w: [0, 0.5] };

/**
 * What a pointer at (x, y) (fractions) grabs: {index, handle} with handle one of the eight
 * corners/edges or "move", or null. `tolX`/`tolY` are the grab distance in fractions. The
 * selected box's handles come first, then any box's inside from the top (last drawn) down,
 * then the other boxes' handles (a corner grabbed just outside its box).
 */
export function hitTest(boxes, x, y, tolX, tolY, selected = -1) {
  const handleAt = (i) => {
    const b = boxes[i];
    for (const [name, [fx, fy]] of Object.entries(HANDLES)) {
      const hx = b.x0 + fx * (b.x1 - b.x0);
      const hy = b.y0 + fy * (b.y1 - b.y0);
      if (Math.abs(x - hx) <= tolX && Math.abs(y - hy) <= tolY) return { index: i, handle: name };
    }
    return null;
  };
  if (selected >= 0 && selected < boxes.length) {
    const hit = handleAt(selected);
    if (hit) return hit;
  }
  const topDown = boxes.map((_, i) => boxes.length - 1 - i);
  for (const i of topDown) {
    const b = boxes[i];
    if (x >= b.x0 && x <= b.x1 && y >= b.y0 && y <= b.y1) return { index: i, handle: "move" };
  }
  for (const i of topDown) {
    const hit = handleAt(i);
    if (hit) return hit;
  }
  return null;
}

/** `box` as it was when the drag began, moved by (dx, dy) through `handle`; stays inside the image. */
export function dragBox(box, handle, dx, dy) {
  if (handle === "move") {
    const w = box.x1 - box.x0;
    const h = box.y1 - box.y0;
    const x0 = Math.min(1 - w, Math.max(0, box.x0 + dx));
    const y0 = Math.min(1 - h, Math.max(0, box.y0 + dy));
    return { ...box, x0, y0, x1: x0 + w, y1: y0 + h };
  }
  const out = { ...box };
  if (handle.includes("w")) out.x0 = Math.min(box.x1 - MIN_SIDE, clamp01(box.x0 + dx));
  if (handle.includes("e")) out.x1 = Math.max(box.x0 + MIN_SIDE, clamp01(box.x1 + dx));
  if (handle.includes("n")) out.y0 = Math.min(box.y1 - MIN_SIDE, clamp01(box.y0 + dy));
  if (handle.includes("s")) out.y1 = Math.max(box.y0 + MIN_SIDE, clamp01(box.y1 + dy));
  return out;
}

/** A new box from two corners of a drag, or null when it is too small to be meant. */
export function boxFromDrag(x0, y0, x1, y1, label = "object") {
  const box = normalise({ label, prompt: "", x0, y0, x1, y1 });
  return box.x1 - box.x0 >= MIN_SIDE && box.y1 - box.y0 >= MIN_SIDE ? box : null;
}

// ---- the proposal picker --------------------------------------------------------------

/**
 * The proposal under a click at pixel (x, y): the smallest box holding the point, so that a box
 * inside another can be picked. `boxes` are [x0, y0, x1, y1, score] in pixels. -1 for none.
 */
export function proposalAt(boxes, x, y) {
  let best = -1;
  let area = Infinity;
  boxes.forEach(([x0, y0, x1, y1], i) => {
    const a = (x1 - x0) * (y1 - y0);
    if (x >= x0 && x <= x1 && y >= y0 && y <= y1 && a < area) {
      best = i;
      area = a;
    }
  });
  return best;
}

/** The indices an Emplace Select Boxes text names, as a sorted list (what the picker highlights). */
export function parseIndices(text, count) {
  const spec = String(text ?? "").trim().toLowerCase().replace(/\s*-\s*/g, "-");
  if (spec === "all" || spec === "*") return [...Array(count).keys()];
  const out = new Set();
  for (const part of spec.split(/[,;\s]+/).filter(Boolean)) {
    const range = part.match(/^(\d+)-(\d+)$/);
    const [a, b] = range ? [Number(range[1]), Number(range[2])] : [Number(part), Number(part)];
    if (!Number.isInteger(a) || !Number.isInteger(b)) continue;
    for (let i = Math.min(a, b); i <= Math.max(a, b); i++) if (i < count) out.add(i);
  }
  return [...out].sort((p, q) => p - q);
}

/** A click on proposal i: alone selects just it; with `add` (shift/ctrl) toggles it in the selection. */
export function toggleSelection(selected, i, add) {
  if (!add) return [i];
  const next = selected.includes(i) ? selected.filter((j) => j !== i) : [...selected, i];
  return next.sort((p, q) => p - q);
}

export function formatIndices(selected) {
  return selected.join(",");
}
