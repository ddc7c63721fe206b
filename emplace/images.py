"""Image tensor layouts, and every conversion between them.

The library's images are channels first, [3, H, W] (a batch [B, 3, H, W]), floats in 0..1.
ComfyUI's IMAGE ([B, H, W, C]), PIL and numpy arrays are channels last. Nodes and the library
convert with these functions only, so a layout is spelt out in one place (einops patterns).
"""

from __future__ import annotations

import torch
from einops import rearrange


def channels_first(image: torch.Tensor) -> torch.Tensor:
    """[..., H, W, C] -> [..., C, H, W] (a view): one frame or a whole ComfyUI IMAGE batch."""
    return rearrange(image, "... h w c -> ... c h w")


def channels_last(image: torch.Tensor) -> torch.Tensor:
    """[..., C, H, W] -> [..., H, W, C] (a view): back to ComfyUI's, PIL's and numpy's layout."""
    return rearrange(image, "... c h w -> ... h w c")


def to_pil(image: torch.Tensor):
    """A PIL image of [C, H, W] or [H, W] in 0..1: clamped, then rounded to 8 bits."""
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    return Image.fromarray((channels_last(array) if array.dim() == 3 else array).numpy())


def from_pil(pil) -> torch.Tensor:
    """[C, H, W] in 0..1 (float32) of a PIL image with channels (RGB, RGBA)."""
    import numpy as np

    return channels_first(torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255)).contiguous()
