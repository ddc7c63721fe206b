"""Tiny SD1.5- and SDXL-shaped diffusers folders with seeded weights (4- or 9-channel UNets)."""

from __future__ import annotations

import json
from pathlib import Path

from .tiny_models import seeded_


def tiny_tokenizer(folder: Path) -> int:
    """A CLIP BPE tokenizer whose vocabulary is the 256 byte symbols (no merges): every word is spelled out."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    symbols = sorted(ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16).save_pretrained(folder)
    return len(vocab)


def write_tiny_sd(folder: Path, xl: bool = False, in_channels: int = 4, seed: int = 0, text_width: int = 32,
                  text_width_2: int | None = None, vae_channels: tuple[int, int] = (8, 16), **unet_config) -> Path:
    """`unet_config` overrides the UNet's shape (e.g. to match a ComfyUI test model layer for layer);
    `text_width_2` is SDXL's second encoder's width (as in SDXL, it differs from the first's)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    vocab = tiny_tokenizer(folder / "tokenizer")
    text = dict(vocab_size=vocab, hidden_size=text_width, intermediate_size=2 * text_width, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=16, projection_dim=text_width)
    seeded_(CLIPTextModel(CLIPTextConfig(**text)), seed + 1).save_pretrained(folder / "text_encoder")
    unet_extra = {}
    context = text_width
    if xl:
        tiny_tokenizer(folder / "tokenizer_2")
        width_2 = text_width_2 or text_width
        text_2 = text | dict(hidden_size=width_2, intermediate_size=2 * width_2, projection_dim=width_2)
        seeded_(CLIPTextModelWithProjection(CLIPTextConfig(**text_2)), seed + 2).save_pretrained(folder / "text_encoder_2")
        context = text_width + width_2
        unet_extra = dict(addition_embed_type="text_time", addition_time_embed_dim=8,
                          projection_class_embeddings_input_dim=width_2 + 6 * 8)
    unet = UNet2DConditionModel(**{**dict(
        sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=context, attention_head_dim=8, norm_num_groups=8), **unet_extra, **unet_config})
    seeded_(unet, seed + 3).save_pretrained(folder / "unet")
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=vae_channels, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, sample_size=16)
    seeded_(vae, seed + 4, std=0.1)
    # as for real VAEs, the scaling factor brings the latents to unit variance (a random VAE's are tiny)
    import torch

    with torch.no_grad():
        spread = vae.encode(torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1).latent_dist.mean.std()
    vae.register_to_config(scaling_factor=float(1 / spread))
    vae.save_pretrained(folder / "vae")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline" if xl
                                                         else "StableDiffusionPipeline"}))
    return folder
