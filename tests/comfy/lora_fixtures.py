"""LoRA files for ComfyUI models, in PEFT/diffusers form and in Emplace's kohya form."""

from __future__ import annotations

import re

import torch
from safetensors.torch import save_file

from emplace.families import family_for_context_dim
from emplace.lora import TrainingRecord, build_metadata, save_lora, to_kohya

PATCHED = re.compile(r"(attn[12]\.to_(q|k|v|out\.0)|proj_in)\.weight$")
TE_PATCHED = re.compile(r"^clip_l\.transformer\.(text_model\.encoder\.layers\.\d+\.self_attn\.(q|k|v|out)_proj)\.weight$")


def peft_state_dict(model, clip=None, rank: int = 4, seed: int = 0, std: float = 0.2) -> dict[str, torch.Tensor]:
    """Random LoRA layers named as diffusers/PEFT save them, for every attention projection of
    the model's UNet (and of the CLIP's text encoder when given)."""
    import comfy.utils

    g = torch.Generator().manual_seed(seed)
    weights = model.model.state_dict()
    out = {}
    for diffusers_key, ldm_key in sorted(comfy.utils.unet_to_diffusers(model.model.model_config.unet_config).items()):
        if PATCHED.search(diffusers_key):
            shape = weights[f"diffusion_model.{ldm_key}"].shape
            path = diffusers_key[: -len(".weight")]
            out[f"unet.{path}.lora_A.weight"] = torch.randn(rank, *shape[1:], generator=g) * std
            out[f"unet.{path}.lora_B.weight"] = torch.randn(shape[0], rank, *([1] * (len(shape) - 2)), generator=g) * std
    if clip is not None:
        for key, w in sorted(clip.cond_stage_model.state_dict().items()):
            m = TE_PATCHED.match(key)
            if m:
                out[f"text_encoder.{m[1]}.lora_A.weight"] = torch.randn(rank, w.shape[1], generator=g) * std
                out[f"text_encoder.{m[1]}.lora_B.weight"] = torch.randn(w.shape[0], rank, generator=g) * std
    return out


def write_peft_lora(path, state_dict, rank: int = 4, alpha: float = 8.0):
    """A file as diffusers' save_lora_weights writes it: PEFT names, the config in the metadata."""
    import json

    config = {"unet.r": rank, "unet.lora_alpha": alpha, "text_encoder.r": rank, "text_encoder.lora_alpha": alpha}
    save_file(state_dict, str(path), metadata={"format": "pt", "lora_adapter_metadata": json.dumps(config)})
    return path


def write_emplace_lora(path, state_dict, context_dim: int, rank: int = 4, alpha: float = 8.0):
    """The same layers written by emplace/lora in the kohya form, with the trainer's metadata."""
    lora = to_kohya(state_dict, {"r": rank, "lora_alpha": alpha})
    record = TrainingRecord(method="dpo", family=family_for_context_dim(context_dim), resolution=512, rank=rank,
                            alpha=alpha, beta=2500, steps=10, data_summary="test pairs")
    save_lora(path, lora, build_metadata(record))
    return lora
