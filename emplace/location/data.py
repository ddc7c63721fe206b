"""Location data: a background, an object class, and boxes where such an object fits (positives) or not.

Two layouts are read:

- OPA (`load_opa`): the Object Placement Assessment data set, or `python -m trainer scenes location`
  which writes the same layout. Rows of `train_set.csv` / `test_set.csv` are composites of one
  foreground on one background at a box, labelled plausible (1) or not (0); the rows of one
  background and category become one example with all their boxes.
- PIPE-style removal pairs (`load_pipe`, as `scenes removal` writes them): an image with an object
  and the same image without it; the object's box is where the two differ. Positives only.

Boxes are [k, 4] float tensors of (x0, y0, x1, y1) in the background's pixels (see emplace.boxes).
Every reading error names the file and the line.
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..boxes import box_from_mask
from ..files import load_image, read_jsonl, why_not_a_file

SPLITS = ("train", "test")
OPA_REQUIRED = ("fg_id", "bg_id", "position", "label")  # the other columns (scale, img_name, ...) are not needed
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DIFFERENCE_THRESHOLD = 0.25  # above jpeg/png noise and above the scene world's shadows (ground darkened ~0.15)


class LocationDataError(ValueError):
    """Location data that cannot be read; the message names the file and the line."""


@dataclass
class LocationExample:
    """One background and one object category, with the boxes where that object fits or does not.

    Examples with negatives only are kept: pretraining and DPO have nothing to learn from them
    (`dpo_pairs` yields no pair for them), while the evaluation counts their negatives in the FPR.
    """

    image_path: Path
    category: str
    positives: torch.Tensor  # [k, 4] xyxy pixels
    negatives: torch.Tensor  # [m, 4] xyxy pixels, may be [0, 4]
    size: tuple[int, int]  # (W, H)
    key: str  # unique per example: OPA's bg_id ("<bg_id>/<category>" when that background serves several
    #           categories in the split), the pair's id for PIPE

    def image(self) -> torch.Tensor:
        """The background, [3, H, W] in 0..1."""
        return load_image(self.image_path)


def _boxes(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


# --- OPA ---------------------------------------------------------------------------------------


def load_opa(root: Path, split: str = "train") -> list[LocationExample]:
    """The examples of `root/<split>_set.csv`, one per (background, category), in the order they first appear.

    `position` is "[x, y, w, h]" in background pixels; boxes partly outside the image are clipped.
    A row's category is the folder of foreground/<category>/<fg_id>.jpg, or, when no foreground file
    exists, the one folder of background/ that holds <bg_id>.jpg.
    """
    root = Path(root)
    if split not in SPLITS:
        raise LocationDataError(f"unknown split '{split}': OPA has {', '.join(SPLITS)} "
                                f"({', '.join(f'{s}_set.csv' for s in SPLITS)})")
    if not root.is_dir():
        raise LocationDataError(f"{root} is not a folder (expected an OPA data set: background/, foreground/, "
                                f"train_set.csv, test_set.csv)")
    path = root / f"{split}_set.csv"
    if why := why_not_a_file(path):
        found = sorted(p.name for p in root.glob("*.csv"))
        raise LocationDataError(f"{path} {why}; csv files in {root}: {', '.join(found) or 'none'} "
                                f"(splits are {', '.join(SPLITS)})")
    foregrounds = _index_images(root / "foreground")
    backgrounds = _index_images(root / "background")
    sizes: dict[Path, tuple[int, int]] = {}
    grouped: dict[tuple[str, str], dict] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in OPA_REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise LocationDataError(f"{path}: missing column(s) {', '.join(missing)}; its header has "
                                    f"{', '.join(reader.fieldnames or []) or 'nothing'} (needs {', '.join(OPA_REQUIRED)})")
        for row in reader:
            where = f"{path} line {reader.line_num}"
            bg_id, fg_id = (row["bg_id"] or "").strip(), (row["fg_id"] or "").strip()
            if not bg_id:
                raise LocationDataError(f"{where}: bg_id is empty (is the row shorter than the header?)")
            category = _row_category(where, root, fg_id, bg_id, foregrounds, backgrounds)
            image_path = backgrounds.get(bg_id, {}).get(category)
            if image_path is None:
                raise LocationDataError(f"{where}: the background image {root}/background/{category}/{bg_id}.jpg "
                                        f"does not exist")
            if image_path not in sizes:
                sizes[image_path] = _image_size(image_path, where)
            box = _opa_box(where, row["position"], sizes[image_path])
            positive = _opa_label(where, row["label"])
            example = grouped.setdefault((bg_id, category), {"path": image_path, "positives": [], "negatives": []})
            example["positives" if positive else "negatives"].append(box)
    if not grouped:
        raise LocationDataError(f"{path} has a header but no rows")
    categories = Counter(bg_id for bg_id, _ in grouped)  # a background may serve several categories
    return [LocationExample(image_path=g["path"], category=category, positives=_boxes(g["positives"]),
                            negatives=_boxes(g["negatives"]), size=sizes[g["path"]],
                            key=bg_id if categories[bg_id] == 1 else f"{bg_id}/{category}")
            for (bg_id, category), g in grouped.items()]


def _index_images(folder: Path) -> dict[str, dict[str, Path]]:
    """id -> {category: path} for folder/<category>/<id>.jpg (masks, mask_<id>.jpg, left out)."""
    index: dict[str, dict[str, Path]] = {}
    if not folder.is_dir():
        return index
    for category in os.scandir(folder):
        if not category.is_dir():
            continue
        for entry in os.scandir(category.path):
            stem, suffix = os.path.splitext(entry.name)
            if suffix.lower() in IMAGE_SUFFIXES and not stem.startswith("mask_"):
                index.setdefault(stem, {})[category.name] = Path(entry.path)
    return index


def _row_category(where: str, root: Path, fg_id: str, bg_id: str, foregrounds: dict, backgrounds: dict) -> str:
    candidates = sorted(foregrounds.get(fg_id, {}))
    if len(candidates) > 1:  # the same foreground id in several folders: the background may tell
        candidates = [c for c in candidates if c in backgrounds.get(bg_id, {})] or candidates
    if not candidates:
        candidates = sorted(backgrounds.get(bg_id, {}))
        if not candidates:
            raise LocationDataError(f"{where}: the background image {bg_id}.jpg is in no folder of "
                                    f"{root / 'background'} (and foreground {fg_id}.jpg in none of "
                                    f"{root / 'foreground'})")
    if len(candidates) > 1:
        raise LocationDataError(f"{where}: cannot tell the category, it could be {' or '.join(candidates)}: "
                                f"background {bg_id}.jpg is in each of their folders and no single "
                                f"foreground/<category>/{fg_id}.jpg says which")
    return candidates[0]


def _image_size(path: Path, where: str) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:  # reads the header only
            return im.size
    except (OSError, UnidentifiedImageError) as e:
        raise LocationDataError(f"{where}: cannot read the image {path}: {e}") from None


def _opa_box(where: str, position: str, size: tuple[int, int]) -> list[float]:
    """ "[x, y, w, h]" -> [x0, y0, x1, y1] clipped to the image."""
    try:
        values = [float(v) for v in (position or "").strip().strip("[]()").replace(",", " ").split()]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise LocationDataError(f"{where}: position '{position}' is not \"[x, y, w, h]\" (four numbers)")
    x, y, w, h = values
    if w <= 0 or h <= 0:
        raise LocationDataError(f"{where}: position '{position}' has a width or height that is not positive")
    width, height = size
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x1 <= x0 or y1 <= y0:
        raise LocationDataError(f"{where}: position '{position}' lies wholly outside the {width}x{height} background")
    return [x0, y0, x1, y1]


def _opa_label(where: str, label: str) -> bool:
    text = (label or "").strip()
    if text not in ("0", "1"):
        raise LocationDataError(f"{where}: label '{label}' is not 0 (implausible) or 1 (plausible)")
    return text == "1"


def dpo_pairs(examples: list[LocationExample]) -> list[tuple[int, int, int]]:
    """(example index, positive index, negative index) for every positive and negative box of the same
    example (same background and category): the preference pairs of DPO."""
    return [(i, p, n) for i, e in enumerate(examples)
            for p in range(len(e.positives)) for n in range(len(e.negatives))]


# --- PIPE-style removal pairs ---------------------------------------------------------------------


def load_pipe(root: Path, threshold: float = DIFFERENCE_THRESHOLD) -> list[LocationExample]:
    """The pairs of `root/pairs.jsonl`, one positive example each, in file order.

    A line has "source" (the image with the object), "target" (the same image without it: the
    background) and "label" or "category"; image paths are relative to root. The box is the bounding
    box of the pixels where the two images differ by more than `threshold` (max over channels);
    the default leaves out compression noise and the scene world's shadows, so the box is the
    object's own (a row's "box" field is not read).
    """
    root = Path(root)
    path = root / "pairs.jsonl"
    rows = read_jsonl(path, "PIPE-style pairs, as `python -m trainer scenes removal` writes them",
                      error=LocationDataError)
    examples = [_pipe_example(f"{path} line {number}", root, row, number, threshold) for number, row in rows]
    if not examples:
        raise LocationDataError(f"{path} has no pairs")
    return examples


def _pipe_example(where: str, root: Path, row: dict, number: int, threshold: float) -> LocationExample:
    category = row.get("label", row.get("category"))
    missing = [k for k in ("source", "target") if not isinstance(row.get(k), str)]
    missing += [] if isinstance(category, str) and category.strip() else ["label (or category)"]
    if missing:
        raise LocationDataError(f"{where}: missing {', '.join(missing)}")
    paths = {k: root / row[k] for k in ("source", "target")}
    for k, p in paths.items():
        if not p.is_file():
            raise LocationDataError(f"{where}: the {k} image {p} does not exist")
    with_object, without = load_image(paths["source"]), load_image(paths["target"])
    if with_object.shape != without.shape:
        raise LocationDataError(f"{where}: the source is {with_object.shape[2]}x{with_object.shape[1]} but the "
                                f"target is {without.shape[2]}x{without.shape[1]}; a pair is one image twice")
    box = box_from_mask((with_object - without).abs().amax(0) > threshold)
    if box is None:
        raise LocationDataError(f"{where}: the source and target images do not differ (by more than "
                                f"{threshold}): no object was removed")
    return LocationExample(image_path=paths["target"], category=category.strip(), positives=_boxes([list(box.xyxy)]),
                           negatives=_boxes([]), size=(without.shape[2], without.shape[1]),
                           key=str(row.get("id", f"line{number}")))
