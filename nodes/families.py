"""Which family a ComfyUI MODEL belongs to: the adapter from ComfyUI's model classes to emplace.families."""

from __future__ import annotations

import dataclasses

import comfy.model_base

from ..emplace.families import FLUX, FLUX_FILL, SD3, Family, family_for_context_dim


def model_family(model) -> Family:
    """Flux (Fill when its input holds the masked image and the mask), SD3, or a UNet family by its context
    width. Another DiT (a ComfyUI model with patches) gets its own patch multiple and 1024 px."""
    base = model.model
    config = base.model_config.unet_config
    if isinstance(base, comfy.model_base.Flux):
        weight = getattr(base.diffusion_model, "img_in", None)
        patch = config.get("patch_size", 2)
        channels = weight.weight.shape[1] // patch**2 if weight is not None else config.get("in_channels", 16)
        return FLUX_FILL if channels > 2 * config.get("out_channels", 16) else FLUX
    if isinstance(base, comfy.model_base.SD3):
        return SD3
    if config.get("context_dim"):
        return family_for_context_dim(config["context_dim"])
    patch = config.get("patch_size") or 1
    return dataclasses.replace(family_for_context_dim(0), name=type(base).__name__, resolution=1024,
                               multiple=8 * patch)
