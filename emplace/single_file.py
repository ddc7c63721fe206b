"""Single-file SD1.5 / SD2 / SDXL checkpoints (the original LDM layout that ComfyUI's models/checkpoints hold).

What a checkpoint is, read from its tensor names and shapes without loading it, so a missing
or mismatched config is reported before diffusers builds anything: the family (cross-attention
width), SDXL or not (a second text encoder), and the UNet's input channels (9 = inpainting).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from .families import family_for_context_dim
from .weights import check_safetensors

UNET_PREFIX = "model.diffusion_model."
SDXL_SECOND_ENCODER = "conditioner.embedders.1."


class CheckpointError(ValueError):
    pass


def read_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


@dataclass(frozen=True)
class CheckpointKind:
    context_dim: int
    in_channels: int
    xl: bool

    @property
    def inpainting(self) -> bool:
        return self.in_channels == 9

    @property
    def family(self):
        return family_for_context_dim(self.context_dim)

    @property
    def described(self) -> str:
        return (f"{self.family.name}{' inpainting' if self.inpainting else ''} ({self.in_channels}-channel UNet, "
                f"cross-attention width {self.context_dim})")

    @property
    def config_repo(self) -> str:
        """Where the matching configs are published (to copy on a machine with internet)."""
        if self.xl:
            return ("diffusers/stable-diffusion-xl-1.0-inpainting-0.1" if self.inpainting
                    else "stabilityai/stable-diffusion-xl-base-1.0")
        if self.family.key == "sd2":
            return "stabilityai/stable-diffusion-2-inpainting" if self.inpainting else "stabilityai/stable-diffusion-2-1"
        return ("stable-diffusion-v1-5/stable-diffusion-inpainting" if self.inpainting
                else "stable-diffusion-v1-5/stable-diffusion-v1-5")

    def check_config(self, folder: Path) -> None:
        """The config folder must describe the same architecture as the checkpoint."""
        unet_config = folder / "unet" / "config.json"
        if not unet_config.is_file():
            raise CheckpointError(f"model_config '{folder}' has no unet/config.json: it must be a diffusers folder "
                                  f"(configs and tokenizers; weights not needed) of {self.described}")
        unet = json.loads(unet_config.read_text())
        has_second = (folder / "text_encoder_2").is_dir()
        if (unet.get("cross_attention_dim"), unet.get("in_channels"), has_second) != \
                (self.context_dim, self.in_channels, self.xl):
            other = CheckpointKind(unet.get("cross_attention_dim", 0), unet.get("in_channels", 0), has_second)
            raise CheckpointError(f"model_config '{folder}' describes {other.described}, but the checkpoint is "
                                  f"{self.described}: use the configs of the checkpoint's architecture")


def inspect(path: Path) -> CheckpointKind:
    check_safetensors(path, "checkpoint")  # a pickled .ckpt is refused with the reason
    header = read_header(path)
    first = header.get(f"{UNET_PREFIX}input_blocks.0.0.weight")
    context = [v["shape"][1] for k, v in header.items() if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")]
    if first is None or not context:
        raise CheckpointError(f"'{path}' is not a single-file Stable Diffusion checkpoint (no {UNET_PREFIX}… UNet with "
                              "cross-attention); the trainer takes SD1.5/SD2/SDXL checkpoints or diffusers folders")
    return CheckpointKind(context[0], first["shape"][1], any(k.startswith(SDXL_SECOND_ENCODER) for k in header))


ENCODER_PREFIXES = ("first_stage_model.", "cond_stage_model.", "conditioner.")


def encoders_key(path: Path) -> str:
    """A short id of what cached latents and text embeddings depend on: the VAE and text encoder
    tensors, byte for byte (two fine-tunes of one architecture have identical headers)."""
    header = read_header(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        data_start = 8 + n
        h = hashlib.sha1()
        for name in sorted(k for k in header if k.startswith(ENCODER_PREFIXES)):
            begin, end = header[name]["data_offsets"]
            f.seek(data_start + begin)
            h.update(name.encode())
            h.update(f.read(end - begin))
    return h.hexdigest()[:16]
