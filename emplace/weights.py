"""Weight files: safetensors only, read with checks and written atomically.

Nothing in Emplace unpickles a file: a pickle (.ckpt, .pt, .bin) can run code when it is
loaded. Files are recognised by their content, not their name, so a renamed pickle is
refused with the same clear message.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .files import why_not_a_file, write_atomically


class WeightsFileError(ValueError):
    """A weights file that Emplace will not read, with the reason."""


def _sniff(path: Path) -> str:
    """'safetensors', 'pickle', 'zip-pickle' or 'unknown', from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 0 < header_len <= path.stat().st_size - 8:
            return "safetensors"
    if head[:2] == b"PK":
        return "zip-pickle"  # torch.save's default container
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def check_safetensors(path: str | os.PathLike, what: str = "weights file") -> Path:
    """Return the path if it is a readable safetensors file, else raise WeightsFileError.

    `what` is the kind of file ("LoRA", "location model"); messages name the file once, after it.
    """
    path = Path(path)
    if why := why_not_a_file(path):
        raise WeightsFileError(f"{what} '{path}' {why}")
    kind = _sniff(path)
    if kind == "safetensors":
        return path
    if kind in ("pickle", "zip-pickle"):
        raise WeightsFileError(
            f"{what} '{path.name}' is a PyTorch pickle, not a safetensors file. Emplace never "
            "unpickles files (loading a pickle can run code). Convert it to .safetensors with a "
            "tool you trust, or use the .safetensors release of the same weights.")
    raise WeightsFileError(f"{what} '{path.name}' is not a safetensors file (its header is not a "
                           "safetensors header); only .safetensors weights are supported")


def read_metadata(path: str | os.PathLike, what: str = "weights file") -> dict[str, str]:
    """The file's string metadata (the safetensors `__metadata__` table), without loading tensors."""
    path = check_safetensors(path, what)
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_safetensors(path: str | os.PathLike, what: str = "weights file",
                     device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file."""
    path = check_safetensors(path, what)
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            return tensors, dict(f.metadata() or {})
    except Exception as e:  # a truncated or corrupt file fails inside safetensors
        raise WeightsFileError(f"{what} '{path.name}' could not be read: {e}") from e


def save_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                     metadata: dict[str, str] | None = None) -> Path:
    """Write atomically: a crash mid-write leaves any earlier file at `path` intact."""
    bad = {k: type(v).__name__ for k, v in (metadata or {}).items() if not isinstance(v, str)}
    if bad:
        raise TypeError(f"safetensors metadata values must be strings, got {bad}")
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return write_atomically(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_json_metadata(metadata: dict[str, str], key: str) -> dict | None:
    """A JSON object stored under one metadata key, or None when absent or malformed."""
    raw = metadata.get(key)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
