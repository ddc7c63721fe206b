"""Pictures of boxes: outlines and labels drawn over an image, for previews and reports."""

from __future__ import annotations

import torch

from .boxes import Boxes

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230)]


def draw_boxes(image: torch.Tensor, boxes: Boxes, line: int = 2, labels: bool = True) -> torch.Tensor:
    """A copy of image [3, H, W] (0..1) with each box outlined in its own colour and labelled."""
    import numpy as np
    from PIL import Image, ImageDraw

    if tuple(image.shape[-2:]) != (boxes.height, boxes.width):
        raise ValueError(f"the boxes are for a {boxes.width}x{boxes.height} image, the image is "
                         f"{image.shape[-1]}x{image.shape[-2]}")
    pil = Image.fromarray((image.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().cpu().numpy())
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
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float() / 255
