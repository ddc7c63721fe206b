"""Preference LoRAs: read any common LoRA form, write the kohya form ComfyUI loads fully."""

from .compat import LoraMismatchError, check_family, check_targets, lora_family
from .convert import Lora, LoraFormatError, LoraModule, to_kohya
from .files import load_lora, save_lora
from .metadata import TrainingRecord, build_metadata, describe_metadata, emplace_fields

__all__ = [
    "Lora", "LoraModule", "LoraFormatError", "LoraMismatchError", "TrainingRecord",
    "build_metadata", "check_family", "check_targets", "describe_metadata", "emplace_fields",
    "load_lora", "lora_family", "save_lora", "to_kohya",
]
