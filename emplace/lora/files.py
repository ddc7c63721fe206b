"""LoRA files on disk: safetensors in, kohya-form safetensors out."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..weights import load_safetensors, read_json_metadata, save_safetensors
from .convert import Lora, to_kohya

DIFFUSERS_CONFIG_KEY = "lora_adapter_metadata"  # diffusers' save_lora_weights puts the LoraConfig here


def load_lora(path: str | os.PathLike, adapter_config: dict | None = None) -> Lora:
    """Read a LoRA in any supported form and return it in the kohya form.

    The scale of layers without `.alpha` comes from `adapter_config` if given, else from
    the file's diffusers metadata, else from a PEFT `adapter_config.json` in the same folder.
    """
    path = Path(path)
    tensors, metadata = load_safetensors(path, "LoRA")  # its messages name the file once: "LoRA 'x' is ..."
    config = adapter_config or read_json_metadata(metadata, DIFFUSERS_CONFIG_KEY) or _peft_sidecar_config(path)
    return to_kohya(tensors, config, metadata, f"LoRA '{path.name}'")


def _peft_sidecar_config(path: Path) -> dict | None:
    sidecar = path.with_name("adapter_config.json")
    if not sidecar.is_file():
        return None
    try:
        config = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return config if isinstance(config, dict) else None


def save_lora(path: str | os.PathLike, lora: Lora, metadata: dict[str, str] | None = None) -> Path:
    """Write the kohya form atomically, with the LoRA's metadata updated by `metadata`."""
    merged = {k: v for k, v in {**lora.metadata, **(metadata or {})}.items() if k != DIFFUSERS_CONFIG_KEY}
    merged.setdefault("format", "pt")
    return save_safetensors(path, lora.state_dict(), merged)
