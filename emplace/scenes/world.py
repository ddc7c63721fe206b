"""Scenes: objects resting on a ground plane (y = 0, y up), a directional light, pinhole cameras.

Everything is seeded: the same generator state gives the same scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from .vocabulary import COLOURS, MATERIALS, SHAPES, SIZES, SIZE_NAMES


@dataclass(frozen=True)
class SceneObject:
    shape: int
    colour: int
    size: int
    material: int
    x: float
    z: float
    yaw: float = 0.0
    lift: float = 0.0  # height of the bottom above the ground: 0 rests, > 0 floats, < 0 sinks
    scale: float = 1.0  # 1 is the size the vocabulary says; other values make implausible objects

    @property
    def radius(self) -> float:
        return SIZES[SIZE_NAMES[self.size]] * self.scale

    @property
    def centre(self) -> tuple[float, float, float]:
        return (self.x, self.radius + self.lift, self.z)

    @property
    def rests_on_ground(self) -> bool:
        return self.lift == 0.0 and self.scale == 1.0


@dataclass(frozen=True)
class Camera:
    """Looks at `target` on the ground from `height`, tilted down by `pitch`, turned by `yaw`."""

    height: float = 4.5
    pitch: float = math.radians(35)
    yaw: float = 0.0
    focal: float = 1.2  # focal length in image widths
    target: tuple[float, float] = (0.0, 0.0)

    def forward(self) -> torch.Tensor:
        cp, sp = math.cos(self.pitch), math.sin(self.pitch)
        return torch.tensor([math.sin(self.yaw) * cp, -sp, math.cos(self.yaw) * cp], dtype=torch.float64)

    def position(self) -> torch.Tensor:
        back = self.height / math.tan(self.pitch)  # horizontal distance to the target
        return torch.tensor([self.target[0] - math.sin(self.yaw) * back, self.height,
                             self.target[1] - math.cos(self.yaw) * back], dtype=torch.float64)

    def rotation(self) -> torch.Tensor:
        """World-from-camera rotation; camera axes are x right, y up, z forward."""
        f = self.forward()
        right = torch.tensor([math.cos(self.yaw), 0.0, -math.sin(self.yaw)], dtype=torch.float64)
        up = torch.linalg.cross(f, right)
        return torch.stack([right, up, f], dim=1)


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    light: tuple[float, float, float] = (0.45, 0.8, 0.4)  # direction towards the light
    ground_tint: float = 0.0  # small per-scene variation of the ground colour
    extra: dict = field(default_factory=dict, compare=False)

    def without(self, index: int) -> Scene:
        return replace(self, objects=tuple(o for i, o in enumerate(self.objects) if i != index))

    def with_object(self, obj: SceneObject) -> Scene:
        return replace(self, objects=self.objects + (obj,))


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def _randint(g: torch.Generator, n: int) -> int:
    return int(torch.randint(n, (), generator=g))


def sample_camera(g: torch.Generator, target: tuple[float, float] = (0.0, 0.0)) -> Camera:
    return Camera(height=_uniform(g, 3.5, 6.0), pitch=math.radians(_uniform(g, 28, 45)),
                  yaw=_uniform(g, 0, 2 * math.pi), focal=_uniform(g, 1.0, 1.4), target=target)


def sample_light(g: torch.Generator) -> tuple[float, float, float]:
    elevation, azimuth = math.radians(_uniform(g, 35, 65)), _uniform(g, 0, 2 * math.pi)
    return (math.cos(elevation) * math.sin(azimuth), math.sin(elevation), math.cos(elevation) * math.cos(azimuth))


def random_object(g: torch.Generator, x: float, z: float, shape: int | None = None, colour: int | None = None,
                  size: int | None = None) -> SceneObject:
    return SceneObject(
        shape=_randint(g, len(SHAPES)) if shape is None else shape,
        colour=_randint(g, len(COLOURS)) if colour is None else colour,
        size=_randint(g, len(SIZES)) if size is None else size,
        material=_randint(g, len(MATERIALS)), x=x, z=z, yaw=_uniform(g, 0, math.pi / 2))


def fits(obj: SceneObject, others: tuple[SceneObject, ...] | list[SceneObject], gap: float = 0.1) -> bool:
    """True when the object's footprint stays clear of every other object's (circles, conservative)."""
    reach = obj.radius * math.sqrt(2)  # a turned cube reaches this far
    return all(math.hypot(obj.x - o.x, obj.z - o.z) > reach + o.radius * math.sqrt(2) + gap for o in others)


def sample_scene(g: torch.Generator, n_objects: int | tuple[int, int] = (2, 5), spread: float = 2.6,
                 tries: int = 60) -> Scene:
    """Objects at rest on free ground within `spread` of the origin, none touching another."""
    n = n_objects if isinstance(n_objects, int) else n_objects[0] + _randint(g, n_objects[1] - n_objects[0] + 1)
    objects: list[SceneObject] = []
    for _ in range(tries * n):
        if len(objects) == n:
            break
        r, a = spread * math.sqrt(_uniform(g, 0, 1)), _uniform(g, 0, 2 * math.pi)
        obj = random_object(g, r * math.cos(a), r * math.sin(a))
        if fits(obj, objects):
            objects.append(obj)
    return Scene(tuple(objects), light=sample_light(g), ground_tint=_uniform(g, -0.04, 0.04))
