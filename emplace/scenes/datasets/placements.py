"""Where a new object can go in a scene: plausible placements and the implausible variants of one."""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from ..geometry import amodal_box, ground_point
from ..world import Camera, Scene, SceneObject, fits, random_object

NEGATIVE_KINDS = ("floating", "sunk", "too_large", "too_small", "overlapping")


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def inside(box, size: int, margin: float = 1.0) -> bool:
    return box.x0 >= margin and box.y0 >= margin and box.x1 <= size - margin and box.y1 <= size - margin


def plausible_placement(g: torch.Generator, scene: Scene, camera: Camera, size: int, shape: int, obj_size: int,
                        colour: int | None = None, tries: int = 80) -> SceneObject | None:
    """An object of this shape and size resting on free ground, wholly in view; None if none fits."""
    for _ in range(tries):
        spot = ground_point(camera, _u(g, 0.1, 0.9) * size, _u(g, 0.35, 0.95) * size, size)
        if spot is None:
            continue
        obj = random_object(g, spot[0], spot[1], shape=shape, colour=colour, size=obj_size)
        if fits(obj, scene.objects) and inside(amodal_box(obj, camera, size), size):
            return obj
    return None


def implausible_variant(g: torch.Generator, obj: SceneObject, kind: str, scene: Scene) -> SceneObject | None:
    """The same object made implausible: floating, sunk, 1.5x or more too large or small, or overlapping."""
    r = obj.radius
    if kind == "floating":
        return replace(obj, lift=_u(g, 1.2, 3.0) * r)
    if kind == "sunk":
        return replace(obj, lift=-_u(g, 0.5, 0.9) * 2 * r)
    if kind == "too_large":
        return replace(obj, scale=_u(g, 1.5, 2.2))
    if kind == "too_small":
        return replace(obj, scale=1 / _u(g, 1.5, 2.8))
    if kind == "overlapping":
        if not scene.objects:
            return None
        other = scene.objects[int(torch.randint(len(scene.objects), (), generator=g))]
        a = _u(g, 0, 2 * math.pi)
        d = _u(g, 0.0, 0.6) * (other.radius + r)
        return replace(obj, x=other.x + d * math.cos(a), z=other.z + d * math.sin(a))
    raise ValueError(f"unknown negative kind '{kind}' (known: {', '.join(NEGATIVE_KINDS)})")
