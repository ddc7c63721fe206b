"""ASAP-style localized degradations: make a loser by spoiling only a masked region of a winner.

Each takes an image [3, H, W] (0..1), a region mask [H, W] (1 inside) and a generator, and
returns a new image that equals the input outside the region.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _within(image: torch.Tensor, changed: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    m = region.float()[None]
    return image * (1 - m) + changed.clamp(0, 1) * m


def blur(image: torch.Tensor, region: torch.Tensor, g: torch.Generator, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(-4, 5, dtype=torch.float32)
    k = torch.exp(-x ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    kernel = (k[:, None] * k[None, :])[None, None].repeat(3, 1, 1, 1)
    blurred = F.conv2d(F.pad(image[None], (4, 4, 4, 4), mode="replicate"), kernel, groups=3)[0]
    return _within(image, blurred, region)


def colour_shift(image: torch.Tensor, region: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Rotate the channels (red -> green -> blue) and change the brightness inside the region."""
    shift = 1 + int(torch.randint(2, (), generator=g))
    gain = 0.7 + 0.6 * float(torch.rand((), generator=g))
    return _within(image, image.roll(shift, 0) * gain, region)


def warp(image: torch.Tensor, region: torch.Tensor, g: torch.Generator, strength: float = 0.08) -> torch.Tensor:
    """A smooth random displacement field (a few pixels) applied inside the region."""
    h, w = image.shape[-2:]
    coarse = torch.randn(1, 2, 4, 4, generator=g) * strength
    flow = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0].permute(1, 2, 0)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    grid = torch.stack([xs, ys], -1) + flow
    warped = F.grid_sample(image[None], grid[None], padding_mode="border", align_corners=True)[0]
    return _within(image, warped, region)


def paste(background: torch.Tensor, image: torch.Tensor, object_mask: torch.Tensor, dx: int = 0, dy: int = 0,
          scale: float = 1.0) -> torch.Tensor:
    """The object's pixels (object_mask) cut from `image`, scaled about the bottom-centre of its mask and
    moved by (dx, dy), pasted on `background`: no shadow comes with it."""
    h, w = image.shape[-2:]
    ys, xs = torch.nonzero(object_mask, as_tuple=True)
    if ys.numel() == 0:
        return background.clone()
    cx, by = (xs.min() + xs.max() + 1) / 2, ys.max() + 1.0
    gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5, torch.arange(w, dtype=torch.float32) + 0.5,
                            indexing="ij")
    src_x = (gx - dx - cx) / scale + cx  # where each output pixel comes from in the source
    src_y = (gy - dy - by) / scale + by
    grid = torch.stack([src_x / w * 2 - 1, src_y / h * 2 - 1], -1)[None]
    moved = F.grid_sample(image[None], grid, mode="bilinear", align_corners=False)[0]
    moved_mask = F.grid_sample(object_mask.float()[None, None], grid, mode="nearest", align_corners=False)[0, 0]
    return background * (1 - moved_mask) + moved * moved_mask


LOCAL = {"blur": blur, "colour_shift": colour_shift, "warp": warp}
