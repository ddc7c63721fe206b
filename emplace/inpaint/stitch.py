"""Crop a context window for one inpainting step, and stitch the result back.

The sampler sees only a window around its region, resized to the size the model works
at. The stitch pastes the result through a feathered alpha and leaves every pixel the
alpha does not reach bit-identical, so what earlier steps painted never drifts.
Images are [C, H, W] or [B, C, H, W]; masks are [H, W]; windows are (x0, y0, x1, y1)
whole pixels with an exclusive end, as `boxes.crop_window` returns them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..boxes import Box, BoxError

Window = tuple[int, int, int, int]


@dataclass(frozen=True)
class Crop:
    image: torch.Tensor  # the window resized to the sampling size, leading dims as the input
    mask: torch.Tensor  # [h, w] 0/1: the sampling mask at that size
    window: Window  # where it came from: stitch(canvas, result, blend_mask, crop.window)


def fit_size(width: int, height: int, target: int, multiple: int = 8) -> tuple[int, int]:
    """(w, h) with the aspect kept, both sides snapped to `multiple` (ties round up).

    The longer side is `target` rounded down to a multiple (never more than asked for).
    """
    target = max(multiple, target // multiple * multiple)
    scale = target / max(width, height)
    return tuple(max(multiple, math.floor(side * scale / multiple + 0.5) * multiple) for side in (width, height))


def crop(image: torch.Tensor, mask: torch.Tensor, window: Window | Box, target: int = 512,
         multiple: int = 8, size: tuple[int, int] | None = None) -> Crop:
    """Cut `window` out of `image` and `mask` and resize both to `size` (w, h), by default
    `fit_size(window, target, multiple)`.

    The mask is binarised after resizing with "> 0", so the sampling region never shrinks.
    """
    x0, y0, x1, y1 = _bounds(window, image)
    w, h = size or fit_size(x1 - x0, y1 - y0, target, multiple)
    small_mask = _resize(mask[y0:y1, x0:x1].float(), (h, w)) > 0
    return Crop(_resize(image[..., y0:y1, x0:x1], (h, w)), small_mask.float(), (x0, y0, x1, y1))


def stitch(canvas: torch.Tensor, result: torch.Tensor, blend_mask: torch.Tensor, window: Window | Box) -> torch.Tensor:
    """A copy of `canvas` with `result` pasted into `window` through `blend_mask` ([H, W], whole image).

    The result is resized back to the window's size. Where the blend mask is 0 (and anywhere
    outside the window) the output is the canvas bit for bit; where it is 1, the resized result;
    between, a linear mix.
    """
    x0, y0, x1, y1 = _bounds(window, canvas)
    region = canvas[..., y0:y1, x0:x1]
    pasted = _resize(result, (y1 - y0, x1 - x0)).to(region)
    alpha = blend_mask[y0:y1, x0:x1].to(region)
    mixed = torch.where(alpha >= 1, pasted, torch.lerp(region, pasted, alpha))
    out = canvas.clone()
    out[..., y0:y1, x0:x1] = torch.where(alpha > 0, mixed, region)
    return out


def grow_mask(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """`mask` grown by `radius` pixels every way (square, like the `grow` of `boxes.box_mask`)."""
    if radius <= 0:
        return mask.float()
    flat = mask.float().reshape(-1, 1, *mask.shape[-2:])
    size = 2 * radius + 1  # separable: a square max filter is a row filter then a column filter
    flat = F.max_pool2d(flat, (1, size), stride=1, padding=(0, radius))
    flat = F.max_pool2d(flat, (size, 1), stride=1, padding=(radius, 0))
    return flat.reshape(mask.shape)


def feather(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """A soft alpha: exactly 1 on `mask`, exactly 0 beyond `mask` grown by `radius`, a ramp between.

    The feather goes outward only, so the painted region is pasted at full strength and the
    ramp spends the `radius` pixels around it: the mask grows by ceil(radius / 2), then a box
    blur of half-width floor(radius / 2) softens the edge; its reach ends at `radius` (for an
    odd radius the first pixel outside the mask is still 1).
    """
    hard = (mask > 0.5).float()
    if radius <= 0:
        return hard
    soft = _box_blur(grow_mask(hard, (radius + 1) // 2), radius // 2)
    soft = soft * grow_mask(hard, radius)  # no float leak past the documented reach
    return torch.where(hard > 0, hard, soft)


def match_colour(result: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor, ring: int = 8,
                 max_gain: float = 2.0) -> torch.Tensor:
    """`result` with its colour drift removed, measured on the ring just outside `mask`.

    Outside the mask the sampler should reproduce `reference` (the crop it was given); what
    differs there (a VAE round trip, a colour cast) is drift. On the ring (pixels outside `mask`
    within `ring` of it), per image and channel c:
        out_c = (result_c - mean(result_c)) * g_c + mean(reference_c)
        g_c = std(reference_c) / std(result_c), clamped to [1 / max_gain, max_gain]; 1 if flat
    and the same map is applied to the whole result. No ring (the mask covers it all): unchanged.
    Values are not clamped: clamp to your image range afterwards.
    """
    hard = mask > 0.5
    band = (grow_mask(hard, ring) > 0) & ~hard
    if not band.any():
        return result
    got, want = result[..., band].float(), reference[..., band].float()
    got_std, want_std = got.std(-1, correction=0), want.std(-1, correction=0)
    gain = (want_std / got_std.clamp_min(1e-6)).clamp(1 / max_gain, max_gain)
    gain = torch.where(got_std > 1e-6, gain, torch.ones_like(gain))
    out = (result.float() - got.mean(-1)[..., None, None]) * gain[..., None, None] + want.mean(-1)[..., None, None]
    return out.to(result.dtype)


def _bounds(window: Window | Box, image: torch.Tensor) -> Window:
    x0, y0, x1, y1 = window.pixel_bounds() if isinstance(window, Box) else (int(v) for v in window)
    height, width = image.shape[-2:]
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise BoxError(f"crop window {(x0, y0, x1, y1)} is not inside the {width}x{height} image")
    return x0, y0, x1, y1


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of the last two dims to size = (h, w)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    flat = x.float().reshape(-1, 1, *x.shape[-2:])
    flat = F.interpolate(flat, size=size, mode="bilinear", align_corners=False, antialias=True)
    return flat.reshape(*x.shape[:-2], *size).to(x.dtype)


def _box_blur(mask: torch.Tensor, radius: int) -> torch.Tensor:
    if radius <= 0:
        return mask
    flat = mask.reshape(-1, 1, *mask.shape[-2:])
    size = 2 * radius + 1  # count_include_pad=False: the image's edge is not the mask's edge
    flat = F.avg_pool2d(flat, (1, size), stride=1, padding=(0, radius), count_include_pad=False)
    flat = F.avg_pool2d(flat, (size, 1), stride=1, padding=(radius, 0), count_include_pad=False)
    return flat.reshape(mask.shape)
