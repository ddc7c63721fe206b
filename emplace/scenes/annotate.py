"""Per-image ground truth: each object's class, visible box and mask, amodal box and depth."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..boxes import Box, box_from_mask
from .geometry import amodal_box
from .render import Render
from .vocabulary import describe, label
from .world import Camera, Scene


@dataclass
class ObjectAnnotation:
    index: int  # into scene.objects
    shape: int
    colour: int
    size: int
    material: int
    label: str  # "red cube": what the detector reports
    prompt: str  # "large red metal cube"
    box: Box | None  # visible pixels' box, None when fully hidden or off-screen
    amodal_box: Box  # the whole projected object
    mask: torch.Tensor  # [H, W] bool, visible pixels
    depth: float  # camera depth of the object's centre

    @property
    def visible_fraction(self) -> float:
        a = self.amodal_box.area
        return float(self.mask.sum()) / a if a > 0 else 0.0


def annotate(scene: Scene, camera: Camera, render: Render, i: int = 0) -> list[ObjectAnnotation]:
    """Annotations of image i of a batch render (scene and camera are that image's)."""
    size = render.image.shape[-1]
    out = []
    pos, rot = camera.position(), camera.rotation()
    for k, o in enumerate(scene.objects):
        mask = render.object_index[i] == k
        text_label = label(o.shape, o.colour)
        box = box_from_mask(mask, label=text_label, prompt=describe(o.shape, o.colour, o.size, o.material))
        depth = float(((torch.tensor(o.centre, dtype=torch.float64) - pos) @ rot)[2])
        out.append(ObjectAnnotation(k, o.shape, o.colour, o.size, o.material, text_label,
                                    describe(o.shape, o.colour, o.size, o.material), box,
                                    amodal_box(o, camera, size), mask, depth))
    return out
