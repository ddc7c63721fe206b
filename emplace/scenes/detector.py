"""A detector for rendered scenes: boxes and classes ('red cube') from an image.

The palette is known and saturated, so colour segmentation finds the objects: a pixel
belongs to the colour whose hue is nearest, when it is saturated enough (ground and sky
are grey). Connected regions of one colour are objects. A tiny CNN, trained on renders
(`python -m trainer shape-classifier`), tells the shape from the region's silhouette and
shading. The weights ship with the pack (emplace/defaults/shape_classifier.safetensors).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..boxes import Box, box_from_mask
from .vocabulary import COLOURS, COLOUR_NAMES, SHAPES

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "defaults" / "shape_classifier.safetensors"
PALETTE_HUES = torch.tensor([colorsys.rgb_to_hsv(*rgb)[0] for rgb in COLOURS.values()]) * 360
CROP = 24


@dataclass
class Detection:
    box: Box
    colour: int
    shape: int
    score: float  # the shape classifier's probability
    mask: torch.Tensor  # [H, W] bool

    @property
    def label(self) -> str:
        return f"{COLOUR_NAMES[self.colour]} {SHAPES[self.shape]}"


def colour_map(image: torch.Tensor, min_saturation: float = 0.3, max_hue_gap: float = 22.0) -> torch.Tensor:
    """[H, W] palette index of every pixel, -1 where it is not an object colour."""
    mx, _ = image.max(0)
    mn, _ = image.min(0)
    chroma = mx - mn
    sat = chroma / mx.clamp(min=1e-6)
    r, g, b = image
    hue = torch.atan2(3 ** 0.5 * (g - b), 2 * r - g - b) * 180 / torch.pi % 360
    gap = (hue[None] - PALETTE_HUES[:, None, None]).abs()
    gap = torch.minimum(gap, 360 - gap)
    best_gap, best = gap.min(0)
    ok = (sat > min_saturation) & (mx > 0.08) & (best_gap < max_hue_gap)
    return torch.where(ok, best, -1)


def connected_regions(mask: torch.Tensor) -> list[torch.Tensor]:
    """8-connected regions of a [H, W] bool mask, as bool masks."""
    h, w = mask.shape
    labels = torch.where(mask, torch.arange(1, h * w + 1, dtype=torch.float32).reshape(h, w), torch.zeros(h, w))
    for _ in range(h + w):
        grown = F.max_pool2d(labels[None, None], 3, stride=1, padding=1)[0, 0] * mask
        if torch.equal(grown, labels):
            break
        labels = grown
    return [labels == v for v in labels.unique() if v > 0]


class ShapeClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(2, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(), torch.nn.Linear(32, len(SHAPES)))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.net(crops)


def crop_for_classifier(image: torch.Tensor, mask: torch.Tensor, box: Box) -> torch.Tensor:
    """[2, CROP, CROP]: the region's silhouette and luminance in a square around its box."""
    x0, y0, x1, y1 = box.pixel_bounds()
    side = max(x1 - x0, y1 - y0) + 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    h, w = mask.shape
    # sample a square window with bilinear interpolation (padding with zeros outside the image)
    ys = torch.linspace(cy - side / 2, cy + side / 2, CROP)
    xs = torch.linspace(cx - side / 2, cx + side / 2, CROP)
    gy, gx = torch.meshgrid(ys / h * 2 - 1, xs / w * 2 - 1, indexing="ij")  # box coordinates -> grid_sample's
    grid = torch.stack([gx, gy], -1)
    lum = image.mean(0, keepdim=True) * mask
    planes = torch.cat([mask[None].float(), lum], 0)[None]
    return F.grid_sample(planes, grid[None], align_corners=False)[0]


def load_classifier(path: Path = DEFAULT_WEIGHTS) -> ShapeClassifier:
    from ..weights import load_safetensors

    model = ShapeClassifier()
    tensors, _ = load_safetensors(path, "shape classifier")
    model.load_state_dict(tensors)
    return model.eval()


_classifier: ShapeClassifier | None = None


@torch.no_grad()
def detect(image: torch.Tensor, min_area: int | None = None, classifier: ShapeClassifier | None = None) -> list[Detection]:
    """Objects in one image [3, H, W] (0..1), largest first."""
    global _classifier
    if classifier is None:
        _classifier = _classifier or load_classifier()
        classifier = _classifier
    h = image.shape[-1]
    min_area = max(4, round((h / 64) ** 2 * 6)) if min_area is None else min_area
    colours = colour_map(image)
    regions = []
    for c in colours.unique().tolist():
        if c < 0:
            continue
        for region in connected_regions(colours == c):
            if int(region.sum()) >= min_area:
                regions.append((c, region))
    if not regions:
        return []
    boxes = [box_from_mask(m) for _, m in regions]
    crops = torch.stack([crop_for_classifier(image, m, b) for (_, m), b in zip(regions, boxes)])
    probs = classifier(crops).softmax(-1)
    out = [Detection(box, c, int(p.argmax()), float(p.max()), m) for (c, m), box, p in zip(regions, boxes, probs)]
    return sorted(out, key=lambda d: -d.box.area)
