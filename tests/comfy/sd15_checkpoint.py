"""A random-weight checkpoint that ComfyUI's CheckpointLoaderSimple detects as SD1.5.

SD1.5 is recognised by a 320-channel UNet with a 768-wide context (any depth), so the
UNet here is shallow; the text encoder is CLIP-L shaped (768 wide, 12 layers) and the
VAE is TAESD. Weights are seeded; the file is fp16 to keep it near 300 MB.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from tiny_comfy import fill_seeded_

UNET = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320, "num_res_blocks": [1, 1],
    "channel_mult": [1, 2], "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1],
    "transformer_depth_middle": 1, "context_dim": 768, "num_heads": 8, "num_head_channels": -1,
    "use_spatial_transformer": True, "use_linear_in_transformer": False, "legacy": False,
}


def write_sd15_checkpoint(path: Path, seed: int = 0) -> Path:
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfy.taesd.taesd import TAESD
    from transformers import CLIPTextConfig, CLIPTextModel

    sd: dict[str, torch.Tensor] = {}
    unet = UNetModel(**UNET, dtype=torch.float32, device="cpu")
    fill_seeded_(unet, seed, std=0.02)
    sd |= {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}

    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, vocab_size=49408))
    fill_seeded_(text, seed + 1, std=0.02)
    for k, v in text.state_dict().items():
        if "position_ids" in k:
            continue
        k = k if k.startswith("text_model.") else f"text_model.{k}"  # transformers 5 dropped this level
        sd[f"cond_stage_model.transformer.{k}"] = v

    taesd = TAESD()
    fill_seeded_(taesd, seed + 2, std=0.1)
    sd |= {f"first_stage_model.{k}": v for k, v in taesd.state_dict().items()}

    save_file({k: v.to(torch.float16).contiguous() for k, v in sd.items()}, str(path))
    return path
