"""Tiny diffusers models with seeded weights, built from configs."""

from __future__ import annotations

import torch


def seeded_(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Fill every parameter from a seeded generator, so results do not depend on init code."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def tiny_unet(cross_attention_dim: int = 64, in_channels: int = 4, seed: int = 0):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4,
        block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8,
    )
    return seeded_(unet, seed)


def tiny_text_encoder(hidden: int = 64, seed: int = 1):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=1000, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77)
    return seeded_(CLIPTextModel(config), seed)


def randomise_lora_(model: torch.nn.Module, seed: int = 3) -> None:
    """PEFT starts lora_B at zero; give every LoRA matrix random values so the update is not zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
