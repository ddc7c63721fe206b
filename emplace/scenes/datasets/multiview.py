"""`scenes multiview`: one scene seen by several cameras, with a region to inpaint in the first view.

    <id>/view_0.png ... view_{V-1}.png     true renders (view 0 is the target view)
    <id>/input.png                          view 0 with the region greyed out
    <id>/mask.png                           the region (an object's box, grown)
    records.jsonl: {"id", "views": [paths], "target_view": 0, "input", "mask", "box", "label", "prompt", "cameras"}

The cameras look at the same point from yaws 40 to 110 degrees apart, so the masked
object is usually visible in another view.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from ...boxes import box_mask
from ..annotate import annotate
from ..render import render
from ..world import sample_camera, sample_scene
from ...files import save_image, write_jsonl
from .files import camera_record
from .placements import inside


def write(out: Path, n: int, seed: int, size: int = 128, views: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    rows = []
    bar = tqdm(total=n, desc="multiview", unit="scene")
    while len(rows) < n:
        scene = sample_scene(g, (2, 5), spread=1.8)
        first = sample_camera(g)
        cams = [first] + [replace(first, yaw=first.yaw + math.radians(40 + 70 * float(torch.rand((), generator=g))) * k,
                                  height=first.height * (0.85 + 0.3 * float(torch.rand((), generator=g))))
                          for k in range(1, views)]
        r = render([scene] * views, cams, size)
        candidates = [a for a in annotate(scene, cams[0], r, 0)
                      if a.box is not None and a.visible_fraction > 0.7 and inside(a.amodal_box, size)
                      and (r.object_index[1:] == a.index).any()]
        if not candidates:
            continue
        a = candidates[int(torch.randint(len(candidates), (), generator=g))]
        mask = box_mask(a.amodal_box, size, size, grow=2)
        i = f"{len(rows):06d}"
        views_paths = [save_image(r.image[v], out / i / f"view_{v}.png") for v in range(views)]
        save_image(r.image[0] * (1 - mask) + 0.5 * mask, out / i / "input.png")
        save_image(mask, out / i / "mask.png")
        rel = lambda p: str(Path(p).relative_to(out))  # noqa: E731
        rows.append({"id": i, "views": [rel(p) for p in views_paths], "target_view": 0, "input": f"{i}/input.png",
                     "mask": f"{i}/mask.png", "box": [round(v, 2) for v in a.amodal_box.xyxy], "label": a.label,
                     "prompt": a.prompt, "cameras": [camera_record(c) for c in cams]})
        bar.update(1)
    bar.close()
    write_jsonl(out / "records.jsonl", rows)
    return {"scenes": len(rows), "views": views}
