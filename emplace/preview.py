"""Pictures of boxes: outlines and labels drawn over an image, for previews and reports."""

from __future__ import annotations

import torch

from .boxes import Boxes
from .images import from_pil, to_pil

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230)]


def draw_boxes(image: torch.Tensor, boxes: Boxes, line: int = 2, labels: bool = True) -> torch.Tensor:
    """A copy of image [3, H, W] (0..1) with each box outlined in its own colour and labelled."""
    from PIL import ImageDraw

    if tuple(image.shape[-2:]) != (boxes.height, boxes.width):
        raise ValueError(f"the boxes are for a {boxes.width}x{boxes.height} image, the image is "
                         f"{image.shape[-1]}x{image.shape[-2]}")
    pil = to_pil(image)
    draw = ImageDraw.Draw(pil)
    for i, b in enumerate(boxes):
        colour = PALETTE[i % len(PALETTE)]
        x0, y0, x1, y1 = b.pixel_bounds()
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=line)
        text = b.label or b.prompt
        if labels and text:
            left, top, right, bottom = draw.textbbox((x0, y0), text)
            ty = y0 - (bottom - top) - 2 if y0 >= bottom - top + 2 else y0 + line
            draw.rectangle([x0, ty, x0 + right - left + 3, ty + bottom - top + 2], fill=colour)
            draw.text((x0 + 2, ty), text, fill=(0, 0, 0))
    return from_pil(pil)


def density_map(boxes: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[H, W] in 0..1: how many of the boxes [N, 4] (xyxy pixels) cover each pixel, over the most covered.

    A heat map of sampled locations: where the object would be, not only where its centre is.
    Each box covers its whole pixels (rounded outwards, clipped to the image); no boxes give zeros.
    """
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    counts = torch.zeros(height + 1, width + 1, dtype=torch.float64)
    if len(boxes):
        x0 = boxes[:, 0].floor().clamp(0, width).long()
        y0 = boxes[:, 1].floor().clamp(0, height).long()
        x1 = boxes[:, 2].ceil().clamp(0, width).long()
        y1 = boxes[:, 3].ceil().clamp(0, height).long()
        keep = (x1 > x0) & (y1 > y0)
        x0, y0, x1, y1 = x0[keep], y0[keep], x1[keep], y1[keep]
        one = torch.ones(len(x0), dtype=torch.float64)
        for ys, xs, sign in ((y0, x0, 1), (y0, x1, -1), (y1, x0, -1), (y1, x1, 1)):  # corners, then a 2-D cumsum
            counts.index_put_((ys, xs), sign * one, accumulate=True)
    density = counts.cumsum(0).cumsum(1)[:height, :width]
    top = density.max()
    return (density / top if top > 0 else density).float()


def heat_colours(density: torch.Tensor) -> torch.Tensor:
    """[3, H, W] jet-like colours of a [H, W] map in 0..1: blue (low), cyan, yellow, red (high)."""
    d = density.clamp(0, 1)[None] * 4
    centres = torch.tensor([3.0, 2.0, 1.0]).view(3, 1, 1)
    return (1.5 - (d - centres).abs()).clamp(0, 1)


def overlay_heat(image: torch.Tensor, density: torch.Tensor, strength: float = 0.6) -> torch.Tensor:
    """image [3, H, W] (0..1) with the heat map of density [H, W] (0..1) blended over it.

    The blend weight grows with the density (strength * sqrt(density)), so pixels no box
    covers stay exactly as they were.
    """
    if tuple(density.shape) != tuple(image.shape[-2:]):
        raise ValueError(f"the density map is {density.shape[-1]}x{density.shape[-2]}, the image is "
                         f"{image.shape[-1]}x{image.shape[-2]}")
    density = density.to(image.device, torch.float32).clamp(0, 1)
    alpha = strength * density.sqrt()[None]
    return image * (1 - alpha) + heat_colours(density).to(image) * alpha
