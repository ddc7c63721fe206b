"""A batched analytic ray caster for the scene world, in torch (no external renderer).

Per pixel: the nearest of the ground plane, spheres, turned cubes and upright cylinders;
Lambert + Blinn-Phong shading under one directional light with cast shadows; metal
objects also mirror the sky; a checkered ground that fades into a pale sky with distance
gives perspective cues. Deterministic: no randomness at render time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .vocabulary import COLOURS
from .world import Camera, Scene

INF = float("inf")
EPS = 1e-4
_PALETTE = torch.tensor(list(COLOURS.values()), dtype=torch.float32)
GROUND_DARK, GROUND_LIGHT, TILE = 0.42, 0.52, 1.0
SKY_HORIZON = torch.tensor([0.80, 0.82, 0.84])
SKY_ZENITH = torch.tensor([0.55, 0.62, 0.72])


@dataclass
class Render:
    image: torch.Tensor  # [B, 3, H, W] in 0..1
    object_index: torch.Tensor  # [B, H, W] long: index into scene.objects, -1 for ground and sky
    depth: torch.Tensor  # [B, H, W] camera z-depth, inf for sky
    coverage: torch.Tensor  # [B, K, H, W] fraction of each pixel each object covers


def _objects_tensor(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    k = max(1, max(len(s.objects) for s in scenes))
    b = len(scenes)
    t = {n: torch.zeros(b, k) for n in ("radius", "yaw", "shape", "colour", "material", "valid")}
    t["centre"] = torch.zeros(b, k, 3)
    for i, s in enumerate(scenes):
        for j, o in enumerate(s.objects):
            t["radius"][i, j], t["yaw"][i, j] = o.radius, o.yaw
            t["shape"][i, j], t["colour"][i, j], t["material"][i, j] = o.shape, o.colour, o.material
            t["valid"][i, j] = 1.0
            t["centre"][i, j] = torch.tensor(o.centre)
    t["valid"] = t["valid"].bool()
    t["shape"] = t["shape"].long()
    t["colour"] = t["colour"].long()
    return t


def _to_local(v: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
    """Turn vectors [..., K, 3] by -yaw about y (into each object's own frame)."""
    c, s = torch.cos(yaw), torch.sin(yaw)
    x, y, z = v.unbind(-1)
    turned_x, turned_z = c * x - s * z, s * x + c * z
    return torch.stack([turned_x, y.expand_as(turned_x), turned_z], dim=-1)


def _from_local(v: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(yaw), torch.sin(yaw)
    x, y, z = v.unbind(-1)
    return torch.stack([c * x + s * z, y, -s * x + c * z], dim=-1)


def intersect_objects(o: torch.Tensor, d: torch.Tensor, obj: dict[str, torch.Tensor]) -> torch.Tensor:
    """Distance along each ray [B, P, 3] to each object [B, K]: [B, P, K], inf where missed."""
    # Keep the ray origins un-expanded: primary rays share one origin per image, so the terms that
    # depend only on the origin stay [B, 1, K] instead of [B, P, K].
    oc = o[:, :, None, :] - obj["centre"][:, None, :, :]  # [B, 1 or P, K, 3]
    dk = d[:, :, None, :]  # [B, P, 1, 3]
    r = obj["radius"][:, None, :]

    # sphere
    b = (dk * oc).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - r * r)
    t_sphere = torch.where(disc >= 0, -b - disc.clamp(min=0).sqrt(), INF)

    # cube: slabs in the object's frame
    yaw = obj["yaw"][:, None, :]
    ol, dl = _to_local(oc, yaw), _to_local(dk, yaw)
    inv = 1.0 / torch.where(dl.abs() < 1e-9, torch.full_like(dl, 1e-9), dl)
    t1, t2 = (-r[..., None] - ol) * inv, (r[..., None] - ol) * inv
    t_near = torch.minimum(t1, t2).amax(-1)
    t_far = torch.maximum(t1, t2).amin(-1)
    t_cube = torch.where(t_far >= t_near.clamp(min=EPS), t_near, INF)

    # upright cylinder, half-height = radius: side wall, then the two caps
    a = dk[..., 0] ** 2 + dk[..., 2] ** 2
    bc = dk[..., 0] * oc[..., 0] + dk[..., 2] * oc[..., 2]
    cc = oc[..., 0] ** 2 + oc[..., 2] ** 2 - r * r
    disc_c = bc * bc - a * cc
    t_side = (-bc - disc_c.clamp(min=0).sqrt()) / a.clamp(min=1e-12)
    y_side = oc[..., 1] + t_side * dk[..., 1]
    t_side = torch.where((disc_c >= 0) & (y_side.abs() <= r), t_side, INF)
    t_cyl = t_side
    for cap in (1.0, -1.0):
        t_cap = (cap * r - oc[..., 1]) / torch.where(dk[..., 1].abs() < 1e-9, torch.full_like(a, 1e-9), dk[..., 1])
        x = oc[..., 0] + t_cap * dk[..., 0]
        z = oc[..., 2] + t_cap * dk[..., 2]
        t_cyl = torch.minimum(t_cyl, torch.where(x * x + z * z <= r * r, t_cap, INF))

    shape = obj["shape"][:, None, :]
    t = torch.where(shape == 0, t_cube, torch.where(shape == 1, t_sphere, t_cyl))
    return torch.where(obj["valid"][:, None, :] & (t > EPS), t, INF)


def _normals(p: torch.Tensor, index: torch.Tensor, obj: dict[str, torch.Tensor]) -> torch.Tensor:
    """Surface normals [B, P, 3] at hit points p on object `index` [B, P] (clamped for non-objects)."""
    k = index.clamp(min=0, max=obj["radius"].shape[1] - 1)
    take = lambda t: torch.gather(t, 1, k)  # noqa: E731
    centre = torch.gather(obj["centre"], 1, k[..., None].expand(*k.shape, 3))
    r, yaw, shape = take(obj["radius"])[..., None], take(obj["yaw"]), take(obj["shape"])
    q = p - centre
    sphere = q / r
    ql = _to_local(q, yaw)
    axis = ql.abs().argmax(-1, keepdim=True)
    cube = _from_local(torch.zeros_like(ql).scatter(-1, axis, torch.gather(ql, -1, axis).sign()), yaw)
    radial = torch.stack([q[..., 0], torch.zeros_like(q[..., 1]), q[..., 2]], -1)
    on_cap = (q[..., 1:2].abs() / r) > (radial.norm(dim=-1, keepdim=True) / r)
    cyl = torch.where(on_cap, torch.stack([torch.zeros_like(q[..., 0]), q[..., 1].sign(), torch.zeros_like(q[..., 0])], -1),
                      radial / r)
    n = torch.where((shape == 0)[..., None], cube, torch.where((shape == 1)[..., None], sphere, cyl))
    return F.normalize(n, dim=-1)


def camera_rays(cameras: list[Camera], size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Origins [B, 1, 3], unit directions [B, size*size, 3] (row-major pixels), forward axes [B, 3]."""
    centres = (torch.arange(size, dtype=torch.float32) + 0.5 - size / 2)
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    origins, dirs, forwards = [], [], []
    for cam in cameras:
        f = cam.focal * size
        local = torch.stack([u / f, -v / f, torch.ones_like(u)], -1).reshape(-1, 3)
        rot = cam.rotation().float()
        dirs.append(F.normalize(local @ rot.T, dim=-1))
        origins.append(cam.position().float()[None])
        forwards.append(rot[:, 2])
    return torch.stack(origins), torch.stack(dirs), torch.stack(forwards)


def _sky(d: torch.Tensor) -> torch.Tensor:
    up = d[..., 1:2].clamp(0, 1) ** 0.5
    return SKY_HORIZON * (1 - up) + SKY_ZENITH * up


@torch.no_grad()
def render(scenes: list[Scene], cameras: list[Camera], size: int = 128, supersample: int = 2) -> Render:
    """Render scene i through camera i, at size x size pixels (each averaged over supersample^2 rays)."""
    if len(scenes) != len(cameras):
        raise ValueError(f"render needs one camera per scene, got {len(scenes)} scenes and {len(cameras)} cameras")
    hi = size * supersample
    b = len(scenes)
    obj = _objects_tensor(scenes)
    k = obj["radius"].shape[1]
    o, d, forward = camera_rays(cameras, hi)

    t_obj = intersect_objects(o, d, obj)
    t_ground = torch.where(d[..., 1] < -1e-6, -o[..., 1] / d[..., 1].clamp(max=-1e-6), INF)
    t_all = torch.cat([t_obj, t_ground[..., None]], -1)
    t, index = t_all.min(-1)  # index == k: ground
    hit = torch.isfinite(t)
    is_obj = hit & (index < k)
    p = o + t.clamp(max=1e4)[..., None] * d

    n = torch.where(is_obj[..., None], _normals(p, index, obj), torch.tensor([0.0, 1.0, 0.0]))
    light = F.normalize(torch.tensor([s.light for s in scenes], dtype=torch.float32), dim=-1)[:, None, :]
    light = light.expand_as(d)
    shadowed = torch.isfinite(intersect_objects(p + n * 1e-3, light, obj).amin(-1)) & hit

    kk = index.clamp(max=k - 1)
    colour = _PALETTE[torch.gather(obj["colour"], 1, kk)]
    metal = torch.gather(obj["material"], 1, kk) > 0.5
    checker = ((torch.floor(p[..., 0] / TILE) + torch.floor(p[..., 2] / TILE)) % 2).abs()
    tint = torch.tensor([s.ground_tint for s in scenes])[:, None]
    ground = (GROUND_DARK + (GROUND_LIGHT - GROUND_DARK) * checker + tint)[..., None].expand(-1, -1, 3)
    albedo = torch.where(is_obj[..., None], colour, ground)

    lit = (1 - shadowed.float())[..., None]
    lambert = (n * light).sum(-1, keepdim=True).clamp(min=0)
    half = F.normalize(light - d, dim=-1)
    n_dot_h = (n * half).sum(-1, keepdim=True).clamp(min=0)
    ks = torch.where(metal, 0.9, 0.15)[..., None] * is_obj[..., None]
    shininess = torch.where(metal, 80.0, 12.0)[..., None]
    diffuse_weight = torch.where(metal & is_obj, 0.7, 1.0)[..., None]
    shaded = albedo * diffuse_weight * (0.35 + 0.65 * lambert * lit) + ks * n_dot_h ** shininess * lit
    reflected = d - 2 * (d * n).sum(-1, keepdim=True) * n
    shaded = torch.where((metal & is_obj)[..., None], shaded + 0.25 * albedo * _sky(reflected), shaded)
    fog = torch.where(is_obj, torch.zeros_like(t), 1 - torch.exp(-t.clamp(max=1e4) / 35.0))[..., None]
    shaded = shaded * (1 - fog) + SKY_HORIZON * fog
    image = torch.where(hit[..., None], shaded, _sky(d)).clamp(0, 1)

    depth = torch.where(hit, t * (d * forward[:, None, :]).sum(-1), INF)
    one_hot = F.one_hot(torch.where(is_obj, index, k), k + 1)[..., :k].float()  # objects only

    def down(x: torch.Tensor) -> torch.Tensor:  # [B, P, C] at hi res -> [B, C, size, size]
        x = x.reshape(b, hi, hi, -1).permute(0, 3, 1, 2)
        return F.avg_pool2d(x, supersample) if supersample > 1 else x

    coverage = down(one_hot)
    index_out = torch.where(coverage.amax(1) >= 0.5, coverage.argmax(1), -1)
    depth_out = -F.max_pool2d(-depth.reshape(b, 1, hi, hi), supersample)[:, 0] if supersample > 1 \
        else depth.reshape(b, hi, hi)
    return Render(down(image), index_out, depth_out, coverage)
