"""Test stand-ins for multi-view tests: a VAE whose latents keep the image's colours.

The tiny random TAESD of tiny_comfy maps every image to latents of ~1e7 whose pattern comes
from its weights, not from the image, so after the attention's LayerNorm all references look
alike. This stand-in's latent is the image's mean colour per 8x8 cell (and its brightness), at
the scale SD1.5's latent format expects, so different references give different tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SD15_SCALE = 0.18215


class ColourVAE:
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        rgb = F.avg_pool2d(pixels[..., :3].movedim(-1, 1), 8) * 2 - 1  # [B, 3, H/8, W/8] in -1..1
        return torch.cat([rgb, rgb.mean(1, keepdim=True)], 1) / SD15_SCALE


def attentive(model, seed: int = 0, std: float = 0.2):
    """A tiny_comfy model whose weights are large enough for its self-attention to matter
    (at tiny_comfy's 0.05 the reference's effect on a sample is near float rounding)."""
    from tiny_comfy import fill_seeded_

    fill_seeded_(model.model.diffusion_model, seed, std=std)
    return model
