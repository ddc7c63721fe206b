"""Images and JSON-lines records on disk (weights files live in weights.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def load_image(path: Path, size: int | None = None) -> torch.Tensor:
    """[3, H, W] in 0..1 (RGB), resized to size x size (bicubic) when size is given."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if size is not None:
            im = im.resize((size, size), Image.BICUBIC)
        array = np.asarray(im, dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def save_image(image: torch.Tensor, path: Path, quality: int = 95) -> str:
    """Save [3, H, W] or [H, W] (0..1) as PNG, or JPEG when the suffix says so; returns the path."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    array = array.permute(1, 2, 0) if array.dim() == 3 else array
    options = {"quality": quality} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    Image.fromarray(array.numpy()).save(path, **options)
    return str(path)


def image_grid(rows: list[list[torch.Tensor]], scale: int = 1) -> torch.Tensor:
    """Rows of [3, H, W] images side by side, enlarged without smoothing (small images stay readable)."""
    import torch.nn.functional as F

    grid = torch.cat([torch.cat(r, 2) for r in rows], 1)
    return F.interpolate(grid[None], scale_factor=scale, mode="nearest")[0] if scale > 1 else grid


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """One JSON object per line, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
    return path
