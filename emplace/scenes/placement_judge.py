"""Is a proposed box a plausible place for an object in a `scenes location` background?

The judge mirrors how that data set labels its boxes. A box for "large_cube" is plausible when a
large cube resting on the ground with its box's bottom centre at the proposed box's (see
`resting_objects`) has a box that
- overlaps the proposed one (IoU >= 0.5) and is as tall within 15% (metrics.SCALE_TOLERANCE),
- and stands clear of the scene's objects (their footprints do not overlap),
and the proposed box lies inside the image. So floating and sunk boxes (the foot says "this far
away", the box's size disagrees), boxes 1.5x or more too large or small, and boxes on top of
another object are implausible, as the data set's label-0 boxes are. IoU alone is not enough: a
slightly floating object's box still overlaps the resting one by 0.7 to 0.9, so without the
height test only about 72 % of the data set's negatives are judged implausible (about 83 % with it).

The scene comes from the background's line of `scenes.jsonl` (camera, objects, image size).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from ..boxes import Box, iou
from ..files import read_jsonl
from .datasets.files import camera_from_record
from .geometry import ground_point, project, surface_points
from .metrics import SCALE_TOLERANCE
from .vocabulary import SHAPES, SIZE_NAMES, SIZES
from .world import Camera, SceneObject, fits

PLAUSIBLE_IOU = 0.5
ALIGN_STEPS = 6
COLLISION_GAP = 0.0  # the data set keeps 0.1 between objects; a box pins a position only to a few hundredths
INSIDE_TOLERANCE = 0.5  # pixels: written positions are rounded, sampled boxes come from bins
CUBE_YAWS = tuple(k * math.pi / 16 for k in range(8))  # a cube looks the same turned by a right angle
OBJECT_FIELDS = tuple(SceneObject.__dataclass_fields__)


class SceneRecordError(ValueError):
    """A scenes.jsonl line, or a category, that the judge cannot read; the message names it."""


def parse_category(category: str) -> tuple[int, int]:
    """'large_cube' -> (shape index, size index), as `scenes location` names its categories."""
    size_name, _, shape_name = category.strip().partition("_")
    if size_name not in SIZE_NAMES or shape_name not in SHAPES:
        known = ", ".join(f"{s}_{t}" for s in SIZE_NAMES for t in SHAPES)
        raise SceneRecordError(f"unknown category '{category}' (the scene world's categories: {known})")
    return SHAPES.index(shape_name), SIZE_NAMES.index(size_name)


def scene_from_record(record: dict, what: str = "scene record") -> tuple[Camera, tuple[SceneObject, ...], int]:
    """The camera, the objects and the image size of one `scenes.jsonl` line."""
    if not isinstance(record, dict):
        raise SceneRecordError(f"{what}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in ("camera", "objects", "image_size") if k not in record]
    if missing:
        raise SceneRecordError(f"{what}: missing {', '.join(missing)}")
    try:
        camera = camera_from_record(record["camera"], f"{what}: camera")
    except ValueError as e:
        raise SceneRecordError(str(e)) from None
    if not isinstance(record["objects"], list):
        raise SceneRecordError(f"{what}: objects must be a list, got {type(record['objects']).__name__}")
    objects = []
    for i, o in enumerate(record["objects"]):
        try:
            objects.append(SceneObject(**{k: v for k, v in o.items() if k in OBJECT_FIELDS}))
        except (AttributeError, TypeError) as e:
            raise SceneRecordError(f"{what}: objects[{i}] is not a scene object ({e})") from None
    size = record["image_size"]
    if not isinstance(size, int) or size <= 0:
        raise SceneRecordError(f"{what}: image_size must be a positive whole number, got {size!r}")
    return camera, tuple(objects), size


def resting_objects(shape: int, size: int, camera: Camera, u: float, v_bottom: float, image_size: int,
                    yaws: Sequence[float] = (0.0,)) -> list[tuple[SceneObject, Box]]:
    """Objects of this shape and size, one per turn in `yaws`, resting on the ground so that their box's
    bottom centre is at pixel (u, v_bottom), with their boxes; [] when that pixel is above the horizon.

    Like metrics.resting_box, but the box is also centred on u (off the image's axis an object's box is
    not centred over the point straight below it), so a resting object's own box is found again exactly.
    """
    target = ground_point(camera, u, v_bottom, image_size)
    if target is None:
        return []
    r = SIZES[SIZE_NAMES[size]]
    shapes = torch.stack([surface_points(SceneObject(shape, 0, size, 0, 0.0, 0.0, yaw=y)) for y in yaws])
    cam = camera.position()
    away = torch.tensor([target[0] - float(cam[0]), target[1] - float(cam[2])], dtype=torch.float64)
    centres = (torch.tensor(target, dtype=torch.float64) + r * away / away.norm()).repeat(len(yaws), 1)
    for _ in range(ALIGN_STEPS):  # move each object on the ground until its box's foot is where it should be
        boxes = _boxes(camera, shapes, centres, image_size)
        for i, b in enumerate(boxes.tolist()):
            foot = ground_point(camera, (b[0] + b[2]) / 2, b[3], image_size)
            if foot is None:  # pushed beyond the horizon: no resting object has this foot
                return []
            centres[i, 0] += target[0] - foot[0]
            centres[i, 1] += target[1] - foot[1]
    boxes = _boxes(camera, shapes, centres, image_size)
    return [(SceneObject(shape, 0, size, 0, float(c[0]), float(c[1]), yaw=y), Box(*b))
            for y, c, b in zip(yaws, centres, boxes.tolist())]


def _boxes(camera: Camera, shapes: torch.Tensor, centres: torch.Tensor, image_size: int) -> torch.Tensor:
    """[B, 4] boxes of B objects: their outline points [B, P, 3] (at the origin) moved to ground centres [B, 2]."""
    points = shapes + torch.nn.functional.pad(centres, (0, 1))[:, None, [0, 2, 1]]
    uv, _ = project(camera, points.reshape(-1, 3), image_size)
    uv = uv.reshape(len(centres), -1, 2)
    return torch.cat([uv.amin(1), uv.amax(1)], -1)


def as_box(box: Box | Sequence[float] | torch.Tensor) -> Box:
    if isinstance(box, Box):
        return box
    values = box.tolist() if isinstance(box, torch.Tensor) else list(box)
    if len(values) != 4:
        raise ValueError(f"a box is (x0, y0, x1, y1), got {box!r}")
    return Box(*(float(v) for v in values))


def judge_box(record: dict, category: str, box: Box | Sequence[float] | torch.Tensor, *,
              scale_tolerance: float = SCALE_TOLERANCE) -> bool:
    """True when `box` (x0, y0, x1, y1 pixels) is a plausible place for an object of `category`
    in the background `record` (one line of scenes.jsonl): see the module docstring.
    `scale_tolerance` is the largest |log(box height / resting object's box height)| accepted."""
    box = as_box(box)
    what = f"scene {record.get('bg_id', '?')}" if isinstance(record, dict) else "scene record"
    camera, objects, size = scene_from_record(record, what)
    shape, obj_size = parse_category(category)
    t = INSIDE_TOLERANCE
    if box.is_empty or box.x0 < -t or box.y0 < -t or box.x1 > size + t or box.y1 > size + t:
        return False
    yaws = CUBE_YAWS if SHAPES[shape] == "cube" else (0.0,)
    candidates = resting_objects(shape, obj_size, camera, (box.x0 + box.x1) / 2, box.y1, size, yaws)
    if not candidates:  # the foot is above the horizon: nothing can rest there
        return False
    return any(_explains(expected, box, scale_tolerance) and fits(obj, objects, COLLISION_GAP)
               for obj, expected in candidates)


def _explains(expected: Box, box: Box, scale_tolerance: float) -> bool:
    """The resting object's box `expected` is where `box` is, and as tall."""
    if expected.height <= 0:
        return False
    return iou(expected, box) >= PLAUSIBLE_IOU and abs(math.log(box.height / expected.height)) <= scale_tolerance


def load_scene_records(root: Path) -> dict[str, dict]:
    """bg_id -> its line of `root/scenes.jsonl` (written by `scenes location`)."""
    path = Path(root) / "scenes.jsonl"
    rows = read_jsonl(path, "scene records, as `python -m trainer scenes location` writes them next to "
                            "train_set.csv", error=SceneRecordError)
    records: dict[str, dict] = {}
    for number, record in rows:
        if "bg_id" not in record:
            raise SceneRecordError(f"{path} line {number} has no bg_id")
        scene_from_record(record, f"{path} line {number}")  # refuse a bad line now, not when judging
        records[str(record["bg_id"])] = record
    return records
