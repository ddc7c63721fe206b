"""Camera geometry of the scene world: projecting objects to image boxes, pixels back to the ground."""

from __future__ import annotations

import math

import torch

from ..boxes import Box
from .world import Camera, SceneObject


def project(camera: Camera, points: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """World points [N, 3] -> pixel coordinates [N, 2] (x right, y down) and camera depth [N]."""
    local = (points.double() - camera.position()) @ camera.rotation()
    f = camera.focal * size
    z = local[:, 2]
    u = size / 2 + f * local[:, 0] / z
    v = size / 2 - f * local[:, 1] / z
    return torch.stack([u, v], -1), z


def surface_points(obj: SceneObject, n: int = 24) -> torch.Tensor:
    """Points on the object's outline in 3-D, enough to bound its projection."""
    cx, cy, cz = obj.centre
    r = obj.radius
    if obj.shape == 0:  # cube: its 8 corners
        corners = torch.tensor([[sx, sy, sz] for sx in (-r, r) for sy in (-r, r) for sz in (-r, r)], dtype=torch.float64)
        c, s = math.cos(obj.yaw), math.sin(obj.yaw)
        x, y, z = corners.unbind(-1)
        pts = torch.stack([c * x + s * z, y, -s * x + c * z], -1)
    elif obj.shape == 1:  # sphere: a dense Fibonacci sphere
        i = torch.arange(n * n, dtype=torch.float64) + 0.5
        phi = torch.acos(1 - 2 * i / (n * n))
        theta = math.pi * (1 + 5 ** 0.5) * i
        pts = r * torch.stack([torch.sin(phi) * torch.cos(theta), torch.cos(phi), torch.sin(phi) * torch.sin(theta)], -1)
    else:  # cylinder: its two rims
        a = torch.arange(4 * n, dtype=torch.float64) * (2 * math.pi / (4 * n))
        rim = torch.stack([r * torch.cos(a), torch.zeros_like(a), r * torch.sin(a)], -1)
        pts = torch.cat([rim + torch.tensor([0, r, 0.0]), rim - torch.tensor([0, r, 0.0])])
    return pts + torch.tensor([cx, cy, cz], dtype=torch.float64)


def amodal_box(obj: SceneObject, camera: Camera, size: int) -> Box:
    """The object's whole projected box, occlusion ignored (not clipped to the image)."""
    uv, _ = project(camera, surface_points(obj), size)
    return Box(float(uv[:, 0].min()), float(uv[:, 1].min()), float(uv[:, 0].max()), float(uv[:, 1].max()))


def ground_point(camera: Camera, u: float, v: float, size: int) -> tuple[float, float] | None:
    """Where the ray through pixel (u, v) meets the ground, or None above the horizon."""
    f = camera.focal * size
    local = torch.tensor([(u - size / 2) / f, -(v - size / 2) / f, 1.0], dtype=torch.float64)
    d = camera.rotation() @ local
    o = camera.position()
    if d[1] >= -1e-9:
        return None
    t = -o[1] / d[1]
    return float(o[0] + t * d[0]), float(o[2] + t * d[2])
