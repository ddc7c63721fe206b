"""Tiny ComfyUI MODEL / CLIP / VAE with seeded weights, built in-process (tier 2).

The UNet is SD-shaped (spatial transformers with cross-attention) but 32 channels wide
with a 64-wide text context; the text encoder is a 2-layer CLIP with ComfyUI's bundled
SD1 tokenizer; the VAE is TAESD. A 4-step 64x64 sample takes well under a second on CPU.
"""

from __future__ import annotations

import functools

import torch

CONTEXT_DIM = 64


def fill_seeded_(module: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    # ComfyUI's layers skip initialisation, so every parameter is set here.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
        for name, b in module.named_buffers():
            if b.is_floating_point() and "position_ids" not in name:
                b.copy_(torch.randn(b.shape, generator=g) * std)


def unet_config(in_channels: int = 4, context_dim: int = CONTEXT_DIM) -> dict:
    return {
        "image_size": 32, "in_channels": in_channels, "out_channels": 4, "model_channels": 32,
        "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [1, 1],
        "transformer_depth_output": [1, 1, 1, 1], "transformer_depth_middle": 1,
        "context_dim": context_dim, "num_heads": 4, "num_head_channels": -1,
        "use_spatial_transformer": True, "use_linear_in_transformer": False, "legacy": False,
        "adm_in_channels": None, "use_temporal_attention": False, "use_temporal_resblock": False,
    }


def tiny_model(in_channels: int = 4, seed: int = 0):
    """A ModelPatcher around a tiny SD-like UNet (4 channels; 9 for an inpainting model)."""
    import comfy.latent_formats
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models_base

    class TinySD(comfy.supported_models_base.BASE):
        latent_format = comfy.latent_formats.SD15
        memory_usage_factor = 1.0
        unet_extra_config = {}  # the base class would force 64-channel heads

    config = TinySD(unet_config(in_channels))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, "")
    fill_seeded_(model.diffusion_model, seed)
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def tiny_sdxl_model(in_channels: int = 4, seed: int = 0):
    """A ModelPatcher around a tiny SDXL-family UNet: ComfyUI's SDXL model class, so the sampler
    feeds it the pooled text output and the size conditioning (width, height, crop, target)
    through its label embedding, as for a real SDXL."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    class TinySDXL(comfy.supported_models.SDXL):
        memory_usage_factor = 1.0
        unet_extra_config = {}

    pooled_and_sizes = CONTEXT_DIM + 6 * 256  # the tiny CLIP's pooled output + six 256-wide size embeddings
    config = TinySDXL(unet_config(in_channels) | {"adm_in_channels": pooled_and_sizes, "num_classes": "sequential"})
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, "")
    fill_seeded_(model.diffusion_model, seed)
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def tiny_clip(seed: int = 1):
    import comfy.sd
    import comfy.sd1_clip

    text_config = {
        "hidden_size": CONTEXT_DIM, "intermediate_size": 2 * CONTEXT_DIM, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 77, "vocab_size": 49408,
        "hidden_act": "quick_gelu", "projection_dim": CONTEXT_DIM, "layer_norm_eps": 1e-5,
        "bos_token_id": 49406, "eos_token_id": 49407, "model_type": "clip_text_model",
        "torch_dtype": "float32", "architectures": ["CLIPTextModel"], "initializer_factor": 1.0,
    }

    class Target:
        params = {"clip_model": functools.partial(comfy.sd1_clip.SDClipModel, textmodel_json_config=text_config,
                                                  return_projected_pooled=False)}
        clip = comfy.sd1_clip.SD1ClipModel
        tokenizer = comfy.sd1_clip.SD1Tokenizer

    clip = comfy.sd.CLIP(target=Target(), model_options={"dtype": torch.float32})
    fill_seeded_(clip.cond_stage_model, seed)
    return clip


def tiny_vae(seed: int = 2):
    import comfy.sd
    from comfy.taesd.taesd import TAESD

    taesd = TAESD()
    fill_seeded_(taesd, seed, std=0.1)
    sd = taesd.state_dict()
    sd["vae_scale"] = torch.tensor(1.0)
    sd["vae_shift"] = torch.tensor(0.0)
    return comfy.sd.VAE(sd=sd)


def run_node(comfy, node: str, **inputs) -> tuple:
    """A node's outputs, executed in-process as ComfyUI would (the `comfy` fixture holds the pack)."""
    return comfy.node[node].execute(**inputs).args


def random_image(h: int = 64, w: int = 72, seed: int = 0) -> torch.Tensor:
    """A seeded ComfyUI IMAGE [1, h, w, 3]."""
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))
