"""Measures on the scene world, where the right answer is known.

- plausibility of an inserted object: is its scale what the camera implies for a resting
  object whose box ends where this one does, and does it cast a shadow at its foot;
- LayoutBench-style average precision of detections against ground-truth boxes;
- masked PSNR / SSIM against the true render (multi-view inpainting).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..boxes import Box, iou
from .geometry import amodal_box, ground_point
from .vocabulary import SIZES
from .world import Camera, SceneObject

SCALE_TOLERANCE = math.log(1.15)  # a resting object's box height is within 15% of what the camera implies
SHADOW_DARKENING = 0.72  # shadowed ground is darker than this fraction of the lit ground around it
SHADOW_MIN_FRACTION = 0.06


@dataclass
class Plausibility:
    scale_error: float  # |log(observed height / expected height)| for the best-fitting size
    size: int  # that size
    shadow: bool
    expected: Box  # the box a resting object of that size would have

    @property
    def plausible(self) -> bool:
        return self.scale_error <= SCALE_TOLERANCE and self.shadow


def resting_box(shape: int, size: int, camera: Camera, u: float, v_bottom: float, image_size: int) -> Box | None:
    """The box of an object of this shape and size resting on the ground so that its box ends at
    v_bottom below pixel column u; None above the horizon."""
    g = ground_point(camera, u, v_bottom, image_size)
    if g is None:
        return None
    cam = camera.position()
    away = torch.tensor([g[0] - float(cam[0]), g[1] - float(cam[2])], dtype=torch.float64)
    away = away / away.norm()
    r = SIZES[list(SIZES)[size]]

    def box_at(s: float) -> Box:
        return amodal_box(SceneObject(shape, 0, size, 0, g[0] + s * float(away[0]), g[1] + s * float(away[1])),
                          camera, image_size)

    lo, hi = 0.0, 3 * r  # the centre lies behind the foot point; bisect its distance
    for _ in range(24):
        mid = (lo + hi) / 2
        if box_at(mid).y1 > v_bottom:
            lo = mid
        else:
            hi = mid
    return box_at((lo + hi) / 2)


def has_shadow(image: torch.Tensor, box: Box, object_mask: torch.Tensor) -> bool:
    """Dark ground next to the object's foot, compared with the lit ground around it."""
    h, w = image.shape[-2:]
    lum = image.mean(0)
    bw, bh = box.width, box.height
    ground = ~object_mask & (image.max(0).values - image.min(0).values < 0.15)  # grey: ground, not objects

    def window(x0, y0, x1, y1):
        m = torch.zeros(h, w, dtype=torch.bool)
        m[max(0, int(y0)):max(0, min(h, int(math.ceil(y1)))), max(0, int(x0)):max(0, min(w, int(math.ceil(x1))))] = True
        return m & ground

    near = window(box.x0 - 0.6 * bw, box.y1 - 0.5 * bh, box.x1 + 0.6 * bw, box.y1 + 0.35 * bh)
    around = window(box.x0 - 1.5 * bw, box.y0, box.x1 + 1.5 * bw, box.y1 + bh)
    if near.sum() < 4 or around.sum() < 8:
        return False
    reference = lum[around].median()
    dark = (lum[near] < SHADOW_DARKENING * reference).float().mean()
    return bool(dark >= SHADOW_MIN_FRACTION)


def plausibility(image: torch.Tensor, box: Box, shape: int, camera: Camera, object_mask: torch.Tensor) -> Plausibility:
    """How plausible an object of `shape`, seen at `box` (visible pixels `object_mask`), is in this image."""
    size = image.shape[-1]
    u = (box.x0 + box.x1) / 2
    best = None
    for s in range(len(SIZES)):
        expected = resting_box(shape, s, camera, u, box.y1, size)
        if expected is None or expected.height <= 0:
            continue
        err = abs(math.log(max(box.height, 1e-6) / expected.height))
        if best is None or err < best[0]:
            best = (err, s, expected)
    if best is None:  # the foot is above the horizon: the object floats in the sky
        return Plausibility(math.inf, 0, False, box)
    return Plausibility(best[0], best[1], has_shadow(image, box, object_mask), best[2])


# --- detection quality ----------------------------------------------------------------------


def average_precision(detections: list[list[tuple[Box, str, float]]], truths: list[list[tuple[Box, str]]],
                      iou_threshold: float = 0.5) -> dict:
    """VOC-style AP per class (all-point interpolation) and their mean, over a set of images.

    detections[i] are (box, label, score) for image i; truths[i] are (box, label).
    """
    labels = sorted({lab for t in truths for _, lab in t})
    per_class = {}
    for lab in labels:
        n_true = sum(1 for t in truths for _, l2 in t if l2 == lab)
        scored = sorted(((score, i, box) for i, d in enumerate(detections) for box, l2, score in d if l2 == lab),
                        key=lambda x: -x[0])
        used: set[tuple[int, int]] = set()
        hits = []
        for _, i, box in scored:
            best, best_j = iou_threshold, None
            for j, (tbox, l2) in enumerate(truths[i]):
                if l2 == lab and (i, j) not in used:
                    o = iou(box, tbox)
                    if o >= best:
                        best, best_j = o, j
            hits.append(best_j is not None)
            if best_j is not None:
                used.add((i, best_j))
        per_class[lab] = _ap(hits, n_true)
    return {"mAP": sum(per_class.values()) / len(per_class) if per_class else 0.0, "per_class": per_class}


def _ap(hits: list[bool], n_true: int) -> float:
    if n_true == 0:
        return 0.0
    tp = torch.tensor(hits, dtype=torch.float64).cumsum(0)
    precision = tp / torch.arange(1, len(hits) + 1, dtype=torch.float64)
    recall = tp / n_true
    ap, prev_recall = 0.0, 0.0
    for k in range(len(hits)):
        if hits[k]:
            ap += float(precision[k:].max()) * (float(recall[k]) - prev_recall)
            prev_recall = float(recall[k])
    return ap


# --- image fidelity inside a mask -------------------------------------------------------------


def masked_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR (dB, images in 0..1) over the pixels where mask [H, W] is set."""
    m = mask.bool()
    if not m.any():
        raise ValueError("masked_psnr: the mask is empty")
    mse = ((pred - target) ** 2)[:, m].mean()
    return math.inf if mse == 0 else float(10 * torch.log10(1 / mse))


def masked_ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of the SSIM map (Gaussian window 11, sigma 1.5) over the masked pixels."""
    m = mask.bool()
    if not m.any():
        raise ValueError("masked_ssim: the mask is empty")
    x = torch.arange(11, dtype=torch.float32) - 5
    g = torch.exp(-x ** 2 / (2 * 1.5 ** 2))
    g = (g / g.sum())
    kernel = (g[:, None] * g[None, :])[None, None].repeat(3, 1, 1, 1)
    blur = lambda t: F.conv2d(t[None], kernel, padding=5, groups=3)[0]  # noqa: E731
    mu_p, mu_t = blur(pred), blur(target)
    var_p, var_t = blur(pred * pred) - mu_p ** 2, blur(target * target) - mu_t ** 2
    cov = blur(pred * target) - mu_p * mu_t
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ssim = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p ** 2 + mu_t ** 2 + c1) * (var_p + var_t + c2))
    return float(ssim.mean(0)[m].mean())
