// The box editor's logic under node's own test runner: `node --test tests/web` (.ci/run runs it).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  boxFromDrag, dragBox, formatIndices, formatSpec, hitTest, parseIndices, parseSpec, proposalAt,
  toggleSelection,
} from "../../web/lib/boxes.js";

test("the text the node parses comes back unchanged through the editor", () => {
  const text = "# my layout\nred cube: 0.1000 0.5000 0.3500 0.8000\nlamp: 0.5500 0.2000 0.8000 0.7000 | a brass lamp";
  const { boxes, comments, errors } = parseSpec(text, 512, 512);
  assert.deepEqual(errors, []);
  assert.equal(boxes.length, 2);
  assert.deepEqual(boxes[1], { label: "lamp", prompt: "a brass lamp", x0: 0.55, y0: 0.2, x1: 0.8, y1: 0.7 });
  assert.equal(formatSpec(boxes, comments), text);
});

test("pixel lines use the image size, and JSON documents are read", () => {
  const { boxes } = parseSpec("cube: 64 128 192 256", 256, 512);
  assert.deepEqual([boxes[0].x0, boxes[0].y0, boxes[0].x1, boxes[0].y1], [0.25, 0.25, 0.75, 0.5]);
  const json = JSON.stringify({ width: 100, height: 50, boxes: [{ x0: 10, y0: 5, x1: 60, y1: 25, label: "a", prompt: "b" }] });
  const doc = parseSpec(json, 1, 1).boxes[0];
  assert.deepEqual([doc.x0, doc.y0, doc.x1, doc.y1, doc.label, doc.prompt], [0.1, 0.1, 0.6, 0.5, "a", "b"]);
  assert.match(parseSpec("cube: 64 128 192 256", 0, 0).errors[0], /need the image size/);
});

test("a bad line is reported by number and the rest still parse", () => {
  const { boxes, errors } = parseSpec("a: 0.1 0.1 0.5 0.5\nlamp 1 2 3\nb: 0.5 0.5 0.2 0.9", 64, 64);
  assert.equal(boxes.length, 1);
  assert.match(errors[0], /^line 2: 'lamp 1 2 3'/);
  assert.match(errors[1], /^line 3: .* empty box/);
});

test("labels and prompts from users cannot break the text format", () => {
  const text = formatSpec([{ label: "evil|label\nx: 1 1 1 1", prompt: "two\nlines | with bar", x0: 0.1, y0: 0.1, x1: 0.2, y1: 0.2 }]);
  assert.equal(text.split("\n").length, 1);
  const back = parseSpec(text, 64, 64).boxes[0];
  assert.equal(back.prompt, "two lines | with bar");
  assert.deepEqual([back.x0, back.x1], [0.1, 0.2]);
});

test("hit testing finds the selected box's handles, then the topmost box", () => {
  const boxes = [{ x0: 0.1, y0: 0.1, x1: 0.9, y1: 0.9 }, { x0: 0.4, y0: 0.05, x1: 0.6, y1: 0.3 }];
  assert.deepEqual(hitTest(boxes, 0.5, 0.2, 0.01, 0.01), { index: 1, handle: "move" });
  assert.deepEqual(hitTest(boxes, 0.2, 0.5, 0.01, 0.01), { index: 0, handle: "move" });
  assert.deepEqual(hitTest(boxes, 0.905, 0.1, 0.01, 0.01), { index: 0, handle: "ne" }); // just outside
  assert.deepEqual(hitTest(boxes, 0.5, 0.3, 0.01, 0.01, 1), { index: 1, handle: "s" });
  assert.equal(hitTest(boxes, 0.95, 0.5, 0.01, 0.01), null);
  // box 0's top edge lies under box 1: selected, its handle wins; not selected, box 1 is moved
  assert.deepEqual(hitTest(boxes, 0.5, 0.1, 0.01, 0.01, 0), { index: 0, handle: "n" });
  assert.deepEqual(hitTest(boxes, 0.5, 0.1, 0.01, 0.01), { index: 1, handle: "move" });
});

test("moving and resizing keep the box inside the image and never inverted", () => {
  const box = { label: "a", prompt: "", x0: 0.1, y0: 0.1, x1: 0.3, y1: 0.4 };
  const moved = dragBox(box, "move", 0.9, -0.5);
  assert.deepEqual([moved.x0, moved.y0].map((v) => +v.toFixed(6)), [0.8, 0]);
  assert.ok(Math.abs(moved.x1 - 1) < 1e-9 && Math.abs(moved.y1 - 0.3) < 1e-9);
  const squashed = dragBox(box, "se", -0.5, -0.5);
  assert.ok(squashed.x1 > squashed.x0 && squashed.y1 > squashed.y0);
  const grown = dragBox(box, "nw", -0.5, -0.05);
  assert.deepEqual([grown.x0, +grown.y0.toFixed(6), grown.x1, grown.y1], [0, 0.05, 0.3, 0.4]);
  assert.equal(boxFromDrag(0.5, 0.5, 0.501, 0.9), null);
  assert.deepEqual(boxFromDrag(0.6, 0.7, 0.2, 0.1), { label: "object", prompt: "", x0: 0.2, y0: 0.1, x1: 0.6, y1: 0.7 });
});

test("the picker selects the smallest proposal under a click and writes Select Boxes' indices", () => {
  const boxes = [[0, 0, 100, 100, -1.0], [40, 40, 60, 60, -2.0], [200, 200, 220, 220, -3.0]];
  assert.equal(proposalAt(boxes, 50, 50), 1);
  assert.equal(proposalAt(boxes, 10, 10), 0);
  assert.equal(proposalAt(boxes, 150, 150), -1);
  assert.deepEqual(toggleSelection([0], 2, false), [2]);
  assert.deepEqual(toggleSelection([0], 2, true), [0, 2]);
  assert.deepEqual(toggleSelection([0, 2], 0, true), [2]);
  assert.equal(formatIndices([0, 2]), "0,2");
  assert.deepEqual(parseIndices("2, 0-1", 3), [0, 1, 2]);
  assert.deepEqual(parseIndices("all", 2), [0, 1]);
  assert.deepEqual(parseIndices("5", 2), []);
});
