"""`scenes layout`: LayoutBench-style layouts (boxes + labels) by skill, in and out of distribution.

Every layout comes from a real render, so its ground truth image exists:
- number:   ID 1-4 objects,                        OOD 6-8 objects
- position: ID every box centre in the middle 60% of the width, OOD every centre outside it
- size:     ID box heights 10-30% of the image,    OOD under 8% or over 38%
- shape:    ID camera pitch 28-45 degrees (the boxes' usual aspect ratios), OOD 12-18 or 62-72 degrees

    <skill>_<split>/<id>.png, <skill>_<split>/layouts.jsonl:
    {"id", "image", "width", "height", "skill", "split", "objects": [{"label", "prompt", "box"}], "camera"}
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from ..annotate import annotate
from ..render import render
from ..world import sample_camera, sample_scene
from ...files import save_image, write_jsonl
from .files import camera_record

SKILLS = ("number", "position", "size", "shape")


def _scene_and_camera(g: torch.Generator, skill: str, split: str):
    ood = split == "ood"
    count = (6, 8) if skill == "number" and ood else (1, 4)
    camera = sample_camera(g)
    if skill == "shape" and ood:
        low = float(torch.rand((), generator=g)) < 0.5
        pitch = (12 + 6 * float(torch.rand((), generator=g))) if low else (62 + 10 * float(torch.rand((), generator=g)))
        camera = replace(camera, pitch=math.radians(pitch), height=camera.height * (0.6 if low else 1.3))
    spread = 3.2 if skill == "number" and ood else 2.6
    return sample_scene(g, count, spread=spread), camera


def _accept(skill: str, split: str, boxes, size: int) -> bool:
    if not boxes:
        return False
    ood = split == "ood"
    if skill == "position":
        central = [0.2 * size <= (b.x0 + b.x1) / 2 <= 0.8 * size for b in boxes]
        return not any(central) if ood else all(central)
    if skill == "size":
        heights = [b.height / size for b in boxes]
        return all(h < 0.08 or h > 0.38 for h in heights) if ood else all(0.10 <= h <= 0.30 for h in heights)
    return True


def layouts(n: int, skill: str, split: str, g: torch.Generator, size: int = 128):
    """n (scene, camera, image [3, S, S], annotations) of one skill and split, every object visible."""
    done = 0
    while done < n:
        pairs = [_scene_and_camera(g, skill, split) for _ in range(8)]
        r = render([s for s, _ in pairs], [c for _, c in pairs], size)
        for i, (scene, camera) in enumerate(pairs):
            objs = [a for a in annotate(scene, camera, r, i) if a.box is not None and a.box.area >= 9]
            if done == n or len(objs) != len(scene.objects) or not _accept(skill, split, [a.box for a in objs], size):
                continue
            done += 1
            yield scene, camera, r.image[i], objs


def write(out: Path, n: int, seed: int, size: int = 128) -> dict:
    """n layouts for each skill and split."""
    g = torch.Generator().manual_seed(seed)
    counts = {}
    for skill in SKILLS:
        for split in ("id", "ood"):
            rows, folder = [], out / f"{skill}_{split}"
            for _, camera, image, objs in tqdm(layouts(n, skill, split, g, size), total=n,
                                               desc=f"layout {skill} {split}", unit="layout"):
                k = f"{len(rows):06d}"
                save_image(image, folder / f"{k}.png")
                rows.append({"id": k, "image": f"{k}.png", "width": size, "height": size, "skill": skill,
                             "split": split, "camera": camera_record(camera),
                             "objects": [{"label": a.label, "prompt": a.prompt,
                                          "box": [round(v, 2) for v in a.box.xyxy]} for a in objs]})
            write_jsonl(folder / "layouts.jsonl", rows)
            counts[f"{skill}_{split}"] = len(rows)
    return counts
