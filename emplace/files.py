"""Files on disk: atomic writes, JSON-lines records and images (weights files live in weights.py)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from .images import from_pil, to_pil


def why_not_a_file(path: Path) -> str | None:
    """None when `path` is a file; else the reason, to follow its name: 'does not exist' or
    'is a folder, not a file'."""
    path = Path(path)
    if path.is_file():
        return None
    return "is a folder, not a file" if path.is_dir() else "does not exist"


def write_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """write(temporary path) in path's folder, flushed to disk, then renamed to path.

    Readers never see half a file, and a crash mid-write leaves any earlier file at `path`
    intact; the temporary file is removed when writing fails. The temporary name keeps
    path's suffix, for writers that choose a format by it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """One JSON object per line, written atomically."""
    text = "".join(json.dumps(r) + "\n" for r in rows)
    return write_atomically(path, lambda tmp: tmp.write_text(text))


def read_jsonl(path: Path, what: str, *, error: type[ValueError] = ValueError,
               problems: list[str] | None = None) -> list[tuple[int, dict]]:
    """(line number, row) for every line of a JSON-lines file of `what`, in order.

    `what` says what the file should hold, for messages ("PIPE-style pairs, as `scenes removal`
    writes them"). Blank lines are skipped (the numbers count them). A path that is not a file, a
    line that is not JSON or not a JSON object: `error` (a ValueError) naming the file and the line,
    or, when a `problems` list is given, a "line N: ..." entry there and the line skipped (so a
    caller can report every bad line at once).
    """
    path = Path(path)
    if why := why_not_a_file(path):
        raise error(f"{path} {why} (expected {what})")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            why = f"not JSON: {e.msg} (column {e.colno})"
        else:
            if isinstance(row, dict):
                rows.append((number, row))
                continue
            why = f"not a JSON object (expected {what}, one object per line)"
        if problems is None:
            raise error(f"{path} line {number} is {why}")
        problems.append(f"line {number}: {why}")
    return rows


def load_image(path: Path, size: int | None = None) -> torch.Tensor:
    """[3, H, W] in 0..1 (RGB), resized to size x size (bicubic) when size is given."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if size is not None:
            im = im.resize((size, size), Image.BICUBIC)
        return from_pil(im)


def save_image(image: torch.Tensor, path: Path, quality: int = 95) -> str:
    """Save [3, H, W] or [H, W] (0..1) as PNG, or JPEG when the suffix says so; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": quality} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    to_pil(image).save(path, **options)
    return str(path)


def image_grid(rows: list[list[torch.Tensor]], scale: int = 1) -> torch.Tensor:
    """Rows of [3, H, W] images side by side, enlarged without smoothing (small images stay readable)."""
    import torch.nn.functional as F

    grid = torch.cat([torch.cat(r, 2) for r in rows], 1)
    return F.interpolate(grid[None], scale_factor=scale, mode="nearest")[0] if scale > 1 else grid
