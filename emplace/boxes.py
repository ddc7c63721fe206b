"""Pixel boxes: the one box type of the pack (`EMPLACE_BOXES` in ComfyUI).

A box is (x0, y0, x1, y1) in image pixels with an exclusive end, so a box covering
the whole W x H image is (0, 0, W, H) and its width is x1 - x0. Every conversion to
other conventions (x, y, w, h; fractions of the image; latent cells) lives here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch


class BoxError(ValueError):
    """Bad box input, with a message that names the input."""


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float
    label: str = ""
    prompt: str = ""
    score: float = 1.0

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def is_empty(self) -> bool:
        return self.width <= 0 or self.height <= 0

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    @property
    def xywh(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.width, self.height)

    @classmethod
    def from_xywh(cls, x: float, y: float, w: float, h: float, **fields: Any) -> Box:
        return cls(x, y, x + w, y + h, **fields)

    def pixel_bounds(self) -> tuple[int, int, int, int]:
        """The smallest whole-pixel box that contains this one (rounds outwards)."""
        return (math.floor(self.x0), math.floor(self.y0), math.ceil(self.x1), math.ceil(self.y1))


@dataclass(frozen=True)
class Boxes:
    """Boxes on one image of `width` x `height` pixels, in order (best first where scored)."""

    boxes: tuple[Box, ...]
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise BoxError(f"boxes need a positive image size, got {self.width}x{self.height}")
        object.__setattr__(self, "boxes", tuple(self.boxes))

    def __len__(self) -> int:
        return len(self.boxes)

    def __iter__(self):
        return iter(self.boxes)

    def __getitem__(self, index: int) -> Box:
        return self.boxes[index]

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)

    def with_boxes(self, boxes: Iterable[Box]) -> Boxes:
        return Boxes(tuple(boxes), self.width, self.height)

    def tensor(self) -> torch.Tensor:
        """[N, 4] float tensor of (x0, y0, x1, y1)."""
        if not self.boxes:
            return torch.zeros((0, 4))
        return torch.tensor([b.xyxy for b in self.boxes], dtype=torch.float64)

    def clipped(self, drop_empty: bool = True) -> Boxes:
        return clip_to_image(self, drop_empty=drop_empty)

    def to_json(self) -> str:
        return json.dumps(
            {
                "width": self.width,
                "height": self.height,
                "boxes": [
                    {"x0": b.x0, "y0": b.y0, "x1": b.x1, "y1": b.y1, "label": b.label,
                     "prompt": b.prompt, "score": b.score}
                    for b in self.boxes
                ],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Boxes:
        try:
            data = json.loads(text)
            return cls(
                tuple(Box(float(b["x0"]), float(b["y0"]), float(b["x1"]), float(b["y1"]),
                          str(b.get("label", "")), str(b.get("prompt", "")), float(b.get("score", 1.0)))
                      for b in data["boxes"]),
                int(data["width"]), int(data["height"]),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise BoxError(f"not an Emplace boxes JSON document: {e}") from e


# --- geometry -----------------------------------------------------------------------------


def iou_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of every box in a [N, 4] against every box in b [M, 4]."""
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def iou(a: Box, b: Box) -> float:
    return float(iou_matrix(torch.tensor([a.xyxy]), torch.tensor([b.xyxy]))[0, 0])


def nms_indices(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.5) -> list[int]:
    """Greedy non-maximum suppression over [N, 4] boxes: the indices kept, best score first (ties keep
    their input order). A box is dropped when it overlaps a kept, better one by more than the threshold."""
    order = torch.as_tensor(scores, dtype=torch.float64).reshape(-1).sort(descending=True, stable=True).indices.tolist()
    if not order or iou_threshold >= 1:
        return order
    overlaps = iou_matrix(boxes.reshape(-1, 4), boxes.reshape(-1, 4)).tolist()
    kept: list[int] = []
    for i in order:
        if all(overlaps[i][j] <= iou_threshold for j in kept):
            kept.append(i)
    return kept


def nms(boxes: Boxes, iou_threshold: float = 0.5) -> Boxes:
    """Greedy non-maximum suppression (`nms_indices`) of scored boxes, best first."""
    kept = nms_indices(boxes.tensor(), torch.tensor([b.score for b in boxes]), iou_threshold)
    return boxes.with_boxes(boxes[i] for i in kept)


def clip_box(box: Box, width: int, height: int) -> Box:
    return replace(box, x0=min(max(box.x0, 0), width), y0=min(max(box.y0, 0), height),
                   x1=min(max(box.x1, 0), width), y1=min(max(box.y1, 0), height))


def clip_to_image(boxes: Boxes, drop_empty: bool = True) -> Boxes:
    """Clip every box to the image; boxes left with no area are dropped (or kept, empty)."""
    clipped = (clip_box(b, boxes.width, boxes.height) for b in boxes)
    return boxes.with_boxes(b for b in clipped if not (drop_empty and b.is_empty))


def check_boxes(boxes: Boxes, what: str = "boxes") -> None:
    """Refuse empty boxes and boxes that lie wholly outside the image, naming each one."""
    problems = []
    for i, b in enumerate(boxes):
        name = f"{what}[{i}]" + (f" ({b.label})" if b.label else "")
        if not all(math.isfinite(v) for v in b.xyxy):
            problems.append(f"{name} has a coordinate that is not a number: {b.xyxy}")
        elif b.is_empty:
            problems.append(f"{name} is empty: (x0, y0, x1, y1) = {b.xyxy} needs x1 > x0 and y1 > y0")
        elif clip_box(b, boxes.width, boxes.height).is_empty:
            problems.append(f"{name} = {b.xyxy} lies outside the {boxes.width}x{boxes.height} image")
    if problems:
        raise BoxError("; ".join(problems))


def box_mask(box: Box, width: int, height: int, grow: int = 0) -> torch.Tensor:
    """[H, W] float mask, 1 on the pixels the box covers (grown by `grow` pixels each side)."""
    x0, y0, x1, y1 = box.pixel_bounds()
    x0, y0 = max(x0 - grow, 0), max(y0 - grow, 0)
    x1, y1 = min(x1 + grow, width), min(y1 + grow, height)
    mask = torch.zeros((height, width), dtype=torch.float32)
    if x1 > x0 and y1 > y0:
        mask[y0:y1, x0:x1] = 1.0
    return mask


def boxes_to_masks(boxes: Boxes, grow: int = 0) -> torch.Tensor:
    """[N, H, W] masks, one per box (a single empty mask when there are no boxes)."""
    if not boxes.boxes:
        return torch.zeros((1, boxes.height, boxes.width))
    return torch.stack([box_mask(b, boxes.width, boxes.height, grow) for b in boxes])


def box_from_mask(mask: torch.Tensor, **fields: Any) -> Box | None:
    """The tight box around the nonzero pixels of a [H, W] mask; None when the mask is empty."""
    ys, xs = torch.nonzero(mask > 0, as_tuple=True)
    if ys.numel() == 0:
        return None
    return Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1), **fields)


def crop_window(box: Box, width: int, height: int, padding: float = 0.25,
                multiple: int = 8) -> tuple[int, int, int, int]:
    """A whole-pixel window around `box` with context, for cropping before inpainting.

    The box grows by `padding` times its longer side on every side, then the window is
    widened to a multiple of `multiple` pixels where the image allows, and shifted
    (never shrunk) to stay inside the image. Returns (x0, y0, x1, y1).
    """
    if box.is_empty:
        raise BoxError(f"cannot crop around an empty box {box.xyxy}")
    x0, y0, x1, y1 = box.pixel_bounds()
    pad = round(padding * max(x1 - x0, y1 - y0))
    wx0, wx1 = _window_axis(x0 - pad, x1 + pad, width, multiple)
    wy0, wy1 = _window_axis(y0 - pad, y1 + pad, height, multiple)
    return (wx0, wy0, wx1, wy1)


def _window_axis(lo: int, hi: int, limit: int, multiple: int) -> tuple[int, int]:
    size = min(hi - lo, limit)
    size = min(math.ceil(size / multiple) * multiple, limit)
    centre = (lo + hi) / 2
    start = round(centre - size / 2)
    start = min(max(start, 0), limit - size)
    return start, start + size


# --- conversions ----------------------------------------------------------------------------


def to_fractions(box: Box, width: int, height: int) -> tuple[float, float, float, float]:
    return (box.x0 / width, box.y0 / height, box.x1 / width, box.y1 / height)


def from_fractions(x0: float, y0: float, x1: float, y1: float, width: int, height: int,
                   **fields: Any) -> Box:
    return Box(x0 * width, y0 * height, x1 * width, y1 * height, **fields)


def to_latent_cells(box: Box, factor: int = 8) -> tuple[int, int, int, int]:
    """The latent cells (of `factor` x `factor` pixels) that the box touches, end exclusive."""
    x0, y0, x1, y1 = box.pixel_bounds()
    return (x0 // factor, y0 // factor, -(-x1 // factor), -(-y1 // factor))


def boxes_from_any(value: Any, width: int, height: int, what: str = "boxes") -> Boxes:
    """Accept the box types other packs pass around and return `Boxes` on a W x H image.

    - `Boxes` (EMPLACE_BOXES): returned as is (its image size must match).
    - ComfyUI's BOUNDING_BOX: a dict {x, y, width, height}, a list of them, or a list per
      frame of such lists (the first frame is used).
    - KJNodes' BBOX: a list of (x, y, w, h) tuples (or a single tuple).
    """
    if isinstance(value, Boxes):
        if value.size != (width, height):
            raise BoxError(f"{what} were made for a {value.width}x{value.height} image, "
                           f"but the image is {width}x{height}")
        return value
    if value is None:
        return Boxes((), width, height)
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, tuple) and len(value) == 4 and all(_is_number(v) for v in value):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise BoxError(f"{what}: expected EMPLACE_BOXES, BOUNDING_BOX or BBOX, got {type(value).__name__}")
    if value and isinstance(value[0], list) and all(isinstance(v, dict) for v in value[0]):
        value = value[0]  # BOUNDING_BOX per frame: take the first frame
    boxes = [_box_from_item(item, f"{what}[{i}]") for i, item in enumerate(value)]
    return Boxes(tuple(boxes), width, height)


def _box_from_item(item: Any, name: str) -> Box:
    if isinstance(item, dict):
        try:
            x, y, w, h = (float(item[k]) for k in ("x", "y", "width", "height"))
        except (KeyError, TypeError, ValueError) as e:
            raise BoxError(f"{name}: a BOUNDING_BOX needs numeric x, y, width, height, got {item!r}") from e
        return Box.from_xywh(x, y, w, h, label=str(item.get("label", "")))
    if isinstance(item, (list, tuple)) and len(item) == 4 and all(_is_number(v) for v in item):
        return Box.from_xywh(*(float(v) for v in item))
    raise BoxError(f"{name}: expected a {{x, y, width, height}} dict or an (x, y, w, h) tuple, got {item!r}")


def _is_number(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return v.numel() == 1
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def to_bbox_list(boxes: Sequence[Box]) -> list[tuple[int, int, int, int]]:
    """KJNodes-style BBOX: (x, y, w, h) tuples in whole pixels."""
    out = []
    for b in boxes:
        x0, y0, x1, y1 = b.pixel_bounds()
        out.append((x0, y0, x1 - x0, y1 - y0))
    return out


# --- the text form people type into a node ---------------------------------------------------

BOX_SPEC_HELP = ("one box per line: `label: x0 y0 x1 y1` or `label: x0 y0 x1 y1 | prompt`, in pixels, or all four "
                 "in 0..1 as fractions of the image; blank lines and lines starting with # are skipped. An Emplace "
                 "boxes JSON document is accepted too.")


def parse_boxes(text: str, width: int, height: int) -> Boxes:
    """Boxes from the node's text form (see BOX_SPEC_HELP); a bad line is reported with its number."""
    if text.lstrip().startswith("{"):
        boxes = Boxes.from_json(text)
        return boxes if boxes.size == (width, height) else boxes_from_any(boxes, width, height)
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        head, _, prompt = line.partition("|")
        label, colon, coords = head.rpartition(":")
        try:
            values = [float(v) for v in coords.replace(",", " ").split()]
        except ValueError:
            values = []
        if not colon or len(values) != 4:
            raise BoxError(f"line {number}: '{line}' is not `label: x0 y0 x1 y1 [| prompt]` ({BOX_SPEC_HELP})")
        if all(0 <= v <= 1 for v in values):
            box = from_fractions(*values, width, height, label=label.strip(), prompt=prompt.strip())
        else:
            box = Box(*values, label=label.strip(), prompt=prompt.strip())
        if box.is_empty:
            raise BoxError(f"line {number}: '{line}' is an empty box (needs x1 > x0 and y1 > y0)")
        out.append(box)
    return Boxes(tuple(out), width, height)


INDEX_HELP = "'0' (the best), '0,2', '0-2', 'all'; indices count from 0 and keep the order given"


def parse_indices(spec: str, count: int) -> list[int]:
    """Indices into `count` boxes from a spec (see INDEX_HELP); repeats are dropped."""
    text = re.sub(r"\s*-\s*", "-", spec.strip().lower())
    if text in ("all", "*"):
        return list(range(count))
    parts = [p for p in re.split(r"[,;\s]+", text) if p]
    if not parts:
        raise ValueError(f"no box index given: {INDEX_HELP}")
    out: list[int] = []
    for part in parts:
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"'{part}' is not a box index or range: {INDEX_HELP}")
        first, last = int(m[1]), int(m[2] or m[1])
        if last < first:
            raise ValueError(f"the range '{part}' runs backwards: write '{last}-{first}'")
        for i in range(first, last + 1):
            if i >= count:
                have = f"there are {count} boxes (0 to {count - 1})" if count else "there are no boxes"
                raise ValueError(f"box index {i} is out of range: {have}")
            if i not in out:
                out.append(i)
    return out
