"""Writing images and records: PNG/JPEG via Pillow, one JSON object per line."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def save_image(image: torch.Tensor, path: Path, quality: int = 95) -> str:
    """Save [3, H, W] or [H, W] (0..1) as PNG or JPEG by the suffix; returns the path as written."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    array = array.permute(1, 2, 0) if array.dim() == 3 else array
    Image.fromarray(array.numpy()).save(path, quality=quality) if path.suffix == ".jpg" \
        else Image.fromarray(array.numpy()).save(path)
    return str(path)


def load_image(path: Path) -> torch.Tensor:
    from PIL import Image

    import numpy as np

    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
    return path


def camera_record(camera) -> dict:
    return {"height": camera.height, "pitch": camera.pitch, "yaw": camera.yaw, "focal": camera.focal,
            "target": list(camera.target)}
