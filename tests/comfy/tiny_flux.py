"""A tiny Flux (ComfyUI's own model_base.Flux), a 16-channel tiny VAE and hand-made conditioning (tier 2).

0.3.64's checkpoint detection hard-codes Flux's 3072 width and 24 heads, so the model is built
from ComfyUI's classes directly: supported_models.Flux(config) -> get_model -> seeded weights ->
ModelPatcher. Head dim 128 (axes_dim 16 + 56 + 56), one double and one single block, 16 latent
channels (64 after Flux's 2x2 patches). The text side is a random [1, L, CONTEXT_DIM] tensor and a
[1, VEC_DIM] pooled output, as a T5/CLIP pair would give. A 64x64 image is a 4x4-token latent, so
two sampling steps take a fraction of a second on CPU.
"""

from __future__ import annotations

import torch

from tiny_comfy import fill_seeded_

CONTEXT_DIM = 64
VEC_DIM = 32


def flux_config(hidden_size: int = 128, num_heads: int = 1, in_channels: int = 16, vec_in_dim: int = VEC_DIM,
                context_in_dim: int = CONTEXT_DIM, mlp_ratio: float = 2.0) -> dict:
    """in_channels 96 is Flux Fill's: the noisy latent, the masked image's latent and the mask in 8x8 pixels.
    mlp_ratio 4 is diffusers' (fixed there), for a model whose diffusers twin must have the same shapes."""
    return {
        "image_model": "flux", "in_channels": in_channels, "out_channels": 16, "vec_in_dim": vec_in_dim,
        "context_in_dim": context_in_dim, "hidden_size": hidden_size, "mlp_ratio": mlp_ratio, "num_heads": num_heads,
        "depth": 1, "depth_single_blocks": 1, "axes_dim": [16, 56, 56], "theta": 10000, "patch_size": 2,
        "qkv_bias": True, "guidance_embed": True,
    }


def tiny_flux(seed: int = 0, std: float = 0.05, **config):
    """A ModelPatcher around a tiny Flux (a model_base.Flux, so reference_latents work as for Kontext)."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    class TinyFlux(comfy.supported_models.Flux):
        memory_usage_factor = 1.0

    model_config = TinyFlux(flux_config(**config))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    fill_seeded_(model.diffusion_model, seed, std)
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def tiny_flux_vae(seed: int = 2):
    """A 16-channel TAESD (Flux's latent channels). At std 0.05 its latents stay near 1 and differ
    from image to image (at 0.1 they reach ~1e8)."""
    import comfy.sd
    from comfy.taesd.taesd import TAESD

    taesd = TAESD(latent_channels=16)
    fill_seeded_(taesd, seed, std=0.05)
    sd = taesd.state_dict()
    sd["vae_scale"] = torch.tensor(1.0)
    sd["vae_shift"] = torch.tensor(0.0)
    return comfy.sd.VAE(sd=sd)


def text_conditioning(seed: int = 3, tokens: int = 8) -> list:
    """A CONDITIONING as a Flux text encoder gives it: [[context [1, L, CONTEXT_DIM], {"pooled_output": ...}]]."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, CONTEXT_DIM, generator=g), {"pooled_output": torch.randn(1, VEC_DIM, generator=g)}]]


def tiny_sd3(seed: int = 0, std: float = 0.05, context_dim: int = CONTEXT_DIM, pooled_dim: int = CONTEXT_DIM):
    """A ModelPatcher around a tiny SD3 (ComfyUI's model_base.SD3, MMDiT): 2 joint blocks, hidden 128 (64 per
    block), head dim 64, 16 latent channels, 2x2 patches; text context and pooled widths as the test CLIP gives."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config = {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "input_size": None,
              "adm_in_channels": pooled_dim, "pos_embed_max_size": 32, "num_patches": 32 * 32,
              "pos_embed_scaling_factor": None, "x_block_self_attn_layers": [],
              "context_embedder_config": {"target": "torch.nn.Linear",
                                          "params": {"in_features": context_dim, "out_features": 128}}}
    model_config = comfy.supported_models.SD3(config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    fill_seeded_(model.diffusion_model, seed, std)
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)
