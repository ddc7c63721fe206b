"""Rendered examples the data sets and the toy model are made of.

An insertion example is one scene rendered twice through the same camera: with a target
object and without it, plus the object's box and a mask over where it goes. It serves the
toy inpainting model (paint the object into the background), PIPE-style removal pairs,
and held-out evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..boxes import Box, box_from_mask, box_mask
from .annotate import ObjectAnnotation, annotate
from .render import render
from .world import Camera, Scene, sample_camera, sample_scene


@dataclass
class InsertionExample:
    scene: Scene  # with the object
    camera: Camera
    target: ObjectAnnotation  # the object inserted
    image: torch.Tensor  # [3, H, W] with the object
    background: torch.Tensor  # [3, H, W] without it
    mask: torch.Tensor  # [H, W] float: the object's whole box, grown

    @property
    def prompt(self) -> str:
        return self.target.prompt

    @property
    def box(self) -> Box:
        return self.target.amodal_box

    def region_mask(self, grow: int = 2) -> torch.Tensor:
        """The box around everything the object changes (itself and its shadow), grown: the inpaint
        mask of the preference pairs, where a model can paint the shadow too."""
        box = box_from_mask(changed_region(self.image, self.background))
        return box_mask(box, *self.mask.shape[::-1], grow=grow) if box is not None else self.mask


def changed_region(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[H, W] bool: where two renders of one scene differ visibly."""
    return (a - b).abs().amax(0) > 0.03


def good_target(a: ObjectAnnotation, size: int, min_side: float) -> bool:
    b = a.amodal_box
    inside = b.x0 >= 1 and b.y0 >= 1 and b.x1 <= size - 1 and b.y1 <= size - 1
    return inside and min(b.width, b.height) >= min_side and a.visible_fraction >= 0.7


def insertion_examples(n: int, seed: int, size: int = 64, grow: int = 2, batch: int = 16,
                       min_side: float | None = None, n_objects: tuple[int, int] = (1, 5)) -> list[InsertionExample]:
    """n examples, deterministic for a seed: a random visible object of a random scene is the target."""
    g = torch.Generator().manual_seed(seed)
    min_side = size / 12 if min_side is None else min_side
    out: list[InsertionExample] = []
    while len(out) < n:
        scenes = [sample_scene(g, n_objects) for _ in range(batch)]
        cameras = [sample_camera(g) for _ in range(batch)]
        full = render(scenes, cameras, size)
        picks = []
        for i, (scene, cam) in enumerate(zip(scenes, cameras)):
            candidates = [a for a in annotate(scene, cam, full, i) if good_target(a, size, min_side)]
            if candidates:
                picks.append((i, candidates[int(torch.randint(len(candidates), (), generator=g))]))
        if not picks:
            continue
        backgrounds = render([scenes[i].without(a.index) for i, a in picks], [cameras[i] for i, _ in picks], size)
        for j, (i, a) in enumerate(picks):
            if len(out) == n:
                break
            mask = box_mask(a.amodal_box, size, size, grow=grow)
            out.append(InsertionExample(scenes[i], cameras[i], a, full.image[i], backgrounds.image[j], mask))
    return out
