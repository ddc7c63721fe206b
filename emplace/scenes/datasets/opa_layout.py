"""`scenes location`: backgrounds, an object class to insert, positive and negative boxes, in OPA's layout.

    background/<category>/<bg_id>.jpg
    foreground/<category>/<fg_id>.jpg, foreground/<category>/mask_<fg_id>.jpg
    composite/<img_name>, composite/<mask_name>     the object rendered at that box
    train_set.csv, test_set.csv                     fg_id,bg_id,position,scale,label,img_name,mask_name
    scenes.jsonl                                    per background: camera and objects (ground truth)

`position` is "[x, y, w, h]" in background pixels; `label` is 1 (plausible: resting on free
ground at the scale the camera implies) or 0 (floating, sunk, 1.5x or more too large or
small, or overlapping another object); `scale` is max(w, h) / max(W, H). The category is
size and shape ("large_cube"); the last tenth of the backgrounds form the test set.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from tqdm import tqdm

from ..annotate import annotate
from ..geometry import amodal_box
from ..render import render
from ..vocabulary import SHAPES, SIZE_NAMES
from ..world import sample_camera, sample_scene
from ...files import save_image, write_jsonl
from .files import camera_record
from .placements import NEGATIVE_KINDS, implausible_variant, inside, plausible_placement

COLUMNS = ["fg_id", "bg_id", "position", "scale", "label", "img_name", "mask_name"]


def category_name(shape: int, size: int) -> str:
    return f"{SIZE_NAMES[size]}_{SHAPES[shape]}"


def write(out: Path, n: int, seed: int, size: int = 128, positives: int = 2, negatives: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    rows: list[dict] = []
    scenes_log = []
    made = 0
    bar = tqdm(total=n, desc="location", unit="background")
    while made < n:
        scene, camera = sample_scene(g, (1, 4)), sample_camera(g)
        shape, obj_size = int(torch.randint(3, (), generator=g)), int(torch.randint(2, (), generator=g))
        colour = int(torch.randint(8, (), generator=g))
        placed = [plausible_placement(g, scene, camera, size, shape, obj_size, colour) for _ in range(positives)]
        placed = [p for p in placed if p is not None]
        if not placed:
            continue
        variants = []
        for _ in range(negatives):
            kind = NEGATIVE_KINDS[int(torch.randint(len(NEGATIVE_KINDS), (), generator=g))]
            v = implausible_variant(g, placed[0], kind, scene)
            if v is not None and inside(amodal_box(v, camera, size), size, margin=0):
                variants.append(v)
        items = [(p, 1) for p in placed] + [(v, 0) for v in variants]
        renders = render([scene] + [scene.with_object(o) for o, _ in items], [camera] * (1 + len(items)), size)
        bg_id = fg_id = f"{made:06d}"
        category = category_name(shape, obj_size)
        save_image(renders.image[0], out / "background" / category / f"{bg_id}.jpg")
        first = annotate(scene.with_object(placed[0]), camera, renders, 1)[-1]
        if first.box is not None:
            x0, y0, x1, y1 = first.box.pixel_bounds()
            save_image(renders.image[1][:, y0:y1, x0:x1], out / "foreground" / category / f"{fg_id}.jpg")
            save_image(first.mask[y0:y1, x0:x1].float(), out / "foreground" / category / f"mask_{fg_id}.jpg")
        for j, (obj, label) in enumerate(items):
            box = amodal_box(obj, camera, size)
            visible = renders.object_index[1 + j] == len(scene.objects)
            img_name, mask_name = f"{bg_id}_{j}_{category}.jpg", f"mask_{bg_id}_{j}_{category}.jpg"
            save_image(renders.image[1 + j], out / "composite" / img_name)
            save_image(visible.float(), out / "composite" / mask_name)
            rows.append({"fg_id": fg_id, "bg_id": bg_id, "category": category,
                         "position": f"[{box.x0:.1f}, {box.y0:.1f}, {box.width:.1f}, {box.height:.1f}]",
                         "scale": f"{max(box.width, box.height) / size:.4f}", "label": label,
                         "img_name": img_name, "mask_name": mask_name})
        scenes_log.append({"bg_id": bg_id, "category": category, "camera": camera_record(camera),
                           "objects": [vars(o) for o in scene.objects], "image_size": size})
        made += 1
        bar.update(1)
    bar.close()
    split = max(1, n // 10)
    test_ids = {f"{i:06d}" for i in range(n - split, n)}
    for name, keep in (("train_set.csv", lambda r: r["bg_id"] not in test_ids), ("test_set.csv", lambda r: r["bg_id"] in test_ids)):
        with open(out / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(r for r in rows if keep(r))
    write_jsonl(out / "scenes.jsonl", scenes_log)
    return {"backgrounds": n, "rows": len(rows), "positives": sum(r["label"] for r in rows)}
