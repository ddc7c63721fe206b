"""IterInpaint's plan: which region each pass paints, in what order, with which prompt and seed.

IterInpaint (LayoutBench, seeds/003) builds a layout one object at a time and fills the
background last; each pass inpaints only its own region of the current canvas. The plan is
geometry and text only, so one loop serves a ComfyUI sampler and a diffusers pipeline: for
each step, crop the updated canvas (`stitch.crop`), sample, paste back (`stitch.stitch`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..boxes import Box, Boxes, box_from_mask, box_mask, boxes_from_any, check_boxes, crop_window
from . import stitch

ORDERS = ("given", "random", "top-down", "bottom-up", "largest-first")
OBJECT_TEMPLATE = "Add {prompt}"  # IterInpaint's "Add {label}" when a box has no prompt of its own
BLANK_CANVAS_BACKGROUND = "Add gray background"  # IterInpaint's background pass on a layout canvas
BLANK_CANVAS_GREY = 0.5  # the blank canvas the toy layout model learnt to paint on
IMAGE_BACKGROUND = "Complete the image"  # for a canvas that is already a picture
SEED_RANGE = 2**64  # ComfyUI's seeds are unsigned 64-bit


@dataclass(frozen=True)
class InpaintStep:
    box_index: int | None  # the box's place in the input list; None for the background pass
    prompt: str
    sampling_mask: torch.Tensor  # [H, W] 0/1: where the sampler repaints
    blend_mask: torch.Tensor  # [H, W] 0..1: the stitch's alpha, 1 on the sampling mask, feathered outside
    window: stitch.Window  # crop (x0, y0, x1, y1): contains the blend mask
    size: tuple[int, int]  # (width, height) the window is sampled at
    seed: int


def order_boxes(boxes: Sequence[Box], strategy: str = "given", seed: int = 0) -> list[int]:
    """Indices of `boxes` in painting order; later objects are painted over earlier ones.

    given: as listed. random: shuffled, the same order for the same seed. top-down: by top
    edge. bottom-up: by bottom edge, the one ending highest first: on a ground plane that
    box is farthest away, so nearer objects are painted over farther ones. largest-first:
    by area. Ties keep the listed order.
    """
    _check_order(strategy)
    indices = list(range(len(boxes)))
    if strategy == "random":
        random.Random(seed).shuffle(indices)
        return indices
    keys = {"given": lambda i: 0, "top-down": lambda i: boxes[i].y0,
            "bottom-up": lambda i: boxes[i].y1, "largest-first": lambda i: -boxes[i].area}
    return sorted(indices, key=keys[strategy])


def object_prompt(box: Box, template: str = OBJECT_TEMPLATE) -> str:
    """`template` with {label} (the box's label) and {prompt} (its own prompt, else its label).

    So with the default "Add {prompt}" a box's own prompt wins, and a box with only a label
    gets IterInpaint's "Add {label}". A box with neither is an "object".
    """
    label = box.label or "object"
    return template.replace("{label}", label).replace("{prompt}", box.prompt or label)


def plan(boxes: Boxes | Sequence[Box] | Any, image_size: tuple[int, int], order: str = "given",
         template: str = OBJECT_TEMPLATE, grow: int = 0, feather: int = 8, padding: float = 0.25,
         multiple: int = 8, target: int = 512, background: bool = True,
         background_prompt: str = BLANK_CANVAS_BACKGROUND, seed: int = 0,
         masks: Sequence[torch.Tensor] | None = None) -> list[InpaintStep]:
    """The steps that paint `boxes` on a (width, height) image one at a time, then the background.

    Boxes are clipped to the image; a box that is empty or wholly outside is refused by name.
    `masks` (one [H, W] per box) replace the box rectangles. Each sampling mask grows by `grow`
    pixels, each blend mask feathers `feather` pixels beyond that (`stitch.feather`). An object's
    seed is `seed + its index in the input`, so reordering never changes it; the background's is
    `seed + len(boxes)`. The background pass repaints what no (grown) object mask covers, and is
    left out when that is nothing. No boxes: no steps (the caller returns its input unchanged).
    """
    _check_order(order)
    width, height = image_size
    if isinstance(boxes, (list, tuple)) and all(isinstance(b, Box) for b in boxes):
        boxes = Boxes(tuple(boxes), width, height)
    boxes = boxes_from_any(boxes, width, height)  # also refuses boxes made for another image size
    if not boxes.boxes:
        return []
    check_boxes(boxes)
    boxes = boxes.clipped(drop_empty=False)  # nothing is dropped: check_boxes refused the empty ones
    object_masks = _object_masks(boxes, masks, grow)

    def step(box_index: int | None, prompt: str, mask: torch.Tensor, step_seed: int) -> InpaintStep:
        blend = stitch.feather(mask, feather)
        window = crop_window(box_from_mask(blend), width, height, padding, multiple)
        size = stitch.fit_size(window[2] - window[0], window[3] - window[1], target, multiple)
        return InpaintStep(box_index, prompt, mask, blend, window, size, step_seed % SEED_RANGE)

    steps = [step(i, object_prompt(boxes[i], template), object_masks[i], seed + i)
             for i in order_boxes(boxes, order, seed)]
    rest = 1 - torch.stack(object_masks).amax(0)
    if background and rest.any():
        steps.append(step(None, background_prompt, rest, seed + len(boxes)))
    return steps


def _object_masks(boxes: Boxes, masks: Sequence[torch.Tensor] | None, grow: int) -> list[torch.Tensor]:
    if masks is None:
        return [box_mask(b, boxes.width, boxes.height, grow) for b in boxes]
    if len(masks) != len(boxes):
        raise ValueError(f"got {len(masks)} masks for {len(boxes)} boxes: give one mask per box, or none")
    out = []
    for i, mask in enumerate(masks):
        if tuple(mask.shape) != (boxes.height, boxes.width):
            raise ValueError(f"masks[{i}] has shape {tuple(mask.shape)}, the image is "
                             f"{boxes.height}x{boxes.width} (H x W)")
        if not (mask > 0.5).any():
            raise ValueError(f"masks[{i}] is empty (no pixel above 0.5)")
        out.append(stitch.grow_mask((mask > 0.5).float().cpu(), grow))
    return out


def _check_order(strategy: str) -> None:
    if strategy not in ORDERS:
        raise ValueError(f"unknown order {strategy!r}: choose one of {', '.join(ORDERS)}")
