"""Tiny Flux, Flux Fill and SD3 diffusers folders with seeded weights, shaped so ComfyUI can hold the same layers.

ComfyUI's attention needs head dim 128 for Flux and 64 for SD3 (diffusers' own tiny test configs use 16 / 8 and do
not load there), so the transformers are one head of 128 (Flux: one double and one single block, hidden 128) and
two heads of 64 (SD3: two joint blocks, hidden 128). Text: a 64-wide CLIP (SD3: two 32-wide ones) and a 64-wide T5
with character tokenizers; VAE: 16 latent channels at 8x like the real ones. Saved as the pipelines save
themselves, so `DiffusionPipeline.from_pretrained` reads them as it reads a real folder.
"""

from __future__ import annotations

from pathlib import Path

from .tiny_models import seeded_
from .tiny_sd import tiny_tokenizer

T5_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789 ,.-'"


def tiny_t5_tokenizer(folder: Path) -> int:
    """A T5 tokenizer (Unigram) whose pieces are single characters; returns the vocabulary size."""
    from tokenizers import Tokenizer, models
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -1.0) for c in T5_CHARACTERS]
    T5TokenizerFast(tokenizer_object=Tokenizer(models.Unigram(vocab, unk_id=2)), eos_token="</s>", unk_token="<unk>",
                    pad_token="<pad>", extra_ids=0, model_max_length=16).save_pretrained(folder)
    return len(vocab)


def _text_parts(folder: Path, seed: int, clip_widths: tuple[int, ...], t5_name: str):
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, T5Config,
                              T5EncoderModel, T5TokenizerFast)

    parts = {}
    for i, width in enumerate(clip_widths):
        suffix = "" if i == 0 else f"_{i + 1}"
        vocab = tiny_tokenizer(folder / f"tokenizer{suffix}")
        config = CLIPTextConfig(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                                num_attention_heads=4, max_position_embeddings=16, projection_dim=width)
        kind = CLIPTextModel if len(clip_widths) == 1 else CLIPTextModelWithProjection  # SD3 pools projections
        parts[f"text_encoder{suffix}"] = seeded_(kind(config), seed + 1 + i)
        parts[f"tokenizer{suffix}"] = CLIPTokenizer.from_pretrained(folder / f"tokenizer{suffix}")
    vocab = tiny_t5_tokenizer(folder / t5_name.replace("text_encoder", "tokenizer"))
    parts[t5_name] = seeded_(T5EncoderModel(T5Config(vocab_size=vocab, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                                     num_heads=4)), seed + 5)
    parts[t5_name.replace("text_encoder", "tokenizer")] = T5TokenizerFast.from_pretrained(
        folder / t5_name.replace("text_encoder", "tokenizer"))
    return parts


def _vae(seed: int):
    from diffusers import AutoencoderKL

    return seeded_(AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 8, 8, 8),
                                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                                 norm_num_groups=4, sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
                                 shift_factor=0.1, scaling_factor=1.0), seed + 4, std=0.1)


def write_tiny_flux(folder: Path, fill: bool = False, seed: int = 0) -> Path:
    """Flux (64 input channels after 2x2 packing) or Flux Fill (384: the latent, the masked image's latent, the
    mask as 8x8 pixel blocks, all packed)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxFillPipeline, FluxPipeline, FluxTransformer2DModel

    transformer = FluxTransformer2DModel(patch_size=1, in_channels=384 if fill else 64, out_channels=64, num_layers=1,
                                         num_single_layers=1, attention_head_dim=128, num_attention_heads=1,
                                         joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=True,
                                         axes_dims_rope=(16, 56, 56))
    pipeline = FluxFillPipeline if fill else FluxPipeline
    pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(seed),
             transformer=seeded_(transformer, seed + 3), **_text_parts(folder, seed, (64,), "text_encoder_2")
             ).save_pretrained(folder)
    return folder


def write_tiny_sd3(folder: Path, seed: int = 0) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    transformer = SD3Transformer2DModel(patch_size=2, in_channels=16, num_layers=2, attention_head_dim=64,
                                        num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=128,
                                        pooled_projection_dim=64, out_channels=16, pos_embed_max_size=32)
    StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(seed),
                             transformer=seeded_(transformer, seed + 3),
                             **_text_parts(folder, seed, (32, 32), "text_encoder_3")).save_pretrained(folder)
    return folder
