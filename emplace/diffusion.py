"""Diffusers models for training: one small interface over the toy model and SD1.5/SDXL folders.

A backend turns images into the UNet's space, prompts into its conditioning, and builds
the extra inputs of inpainting UNets (mask + masked image, as the diffusers inpainting
pipelines do). Nothing is fetched: every part must be in the local folder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F

from .families import Family, family_for_context_dim


class ModelFolderError(ValueError):
    pass


class Backend:
    unet: torch.nn.Module
    scheduler: object
    family: Family
    resolution: int
    latent_channels: int
    key: str  # identifies the model for caches

    @property
    def is_inpainting(self) -> bool:
        return self.unet.config.in_channels > self.latent_channels

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_prompts(self, prompts: list[str]) -> dict:
        """Keyword arguments for the UNet: encoder_hidden_states (and added_cond_kwargs for SDXL)."""
        raise NotImplementedError

    def text_encoders(self) -> list[torch.nn.Module]:
        raise NotImplementedError

    def inpaint_inputs(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """[B, 1 + latent channels, h, w]: the mask at latent size and the masked image's latents."""
        masks = (masks[:, None] if masks.dim() == 3 else masks).float()
        latents = self.encode_images(images * (1 - masks) + 0.5 * masks)
        return torch.cat([F.interpolate(masks, size=latents.shape[-2:], mode="area").gt(0).float(), latents], 1)


class ToyBackend(Backend):
    def __init__(self, folder: Path):
        from .scenes.toy_inpaint import ToyInpaintModel

        self.model = ToyInpaintModel.load(folder)
        self.unet, self.scheduler = self.model.unet, self.model.scheduler
        self.family = family_for_context_dim(self.model.config.text_width)
        self.resolution = self.model.config.image_size
        self.latent_channels = self.model.config.channels
        self.key = folder_key(folder)

    def encode_images(self, images):
        return self.model.to_model_space(images)

    def encode_prompts(self, prompts):
        return {"encoder_hidden_states": self.model.encode_prompts(prompts)}

    def text_encoders(self):
        return [self.model.text_encoder]

    def inpaint_inputs(self, images, masks):
        return self.model.conditioning(images, masks)


class StableDiffusionBackend(Backend):
    """A diffusers SD1.5 / SD2 / SDXL folder (model_index.json, unet/, vae/, text_encoder[_2]/, tokenizer[_2]/, scheduler/)."""

    def __init__(self, folder: Path, resolution: int | None = None):
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            if not (folder / part).is_dir():
                raise ModelFolderError(f"model folder '{folder}' has no {part}/ (a diffusers SD folder needs unet, "
                                       "vae, text_encoder, tokenizer and scheduler; nothing is downloaded)")
        self.unet = UNet2DConditionModel.from_pretrained(folder / "unet")
        self.vae = AutoencoderKL.from_pretrained(folder / "vae").eval().requires_grad_(False)
        self.scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
        self.tokenizers = [CLIPTokenizer.from_pretrained(folder / "tokenizer")]
        self.encoders = [CLIPTextModel.from_pretrained(folder / "text_encoder").eval()]
        self.xl = (folder / "text_encoder_2").is_dir()
        if self.xl:
            self.tokenizers.append(CLIPTokenizer.from_pretrained(folder / "tokenizer_2"))
            self.encoders.append(CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2").eval())
        self.family = family_for_context_dim(self.unet.config.cross_attention_dim)
        self.latent_channels = self.vae.config.latent_channels
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.resolution = resolution or self.unet.config.sample_size * scale
        self.key = folder_key(folder)

    def encode_images(self, images):
        latents = self.vae.encode(images.to(self.vae.dtype) * 2 - 1).latent_dist.mean
        shift = self.vae.config.get("shift_factor") or 0.0
        return (latents - shift) * self.vae.config.scaling_factor

    def text_encoders(self):
        return self.encoders

    def encode_prompts(self, prompts):
        states, pooled = [], None
        for tok, enc in zip(self.tokenizers, self.encoders):
            ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids
            out = enc(ids, output_hidden_states=self.xl)
            states.append(out.hidden_states[-2] if self.xl else out.last_hidden_state)
            if self.xl and hasattr(out, "text_embeds"):
                pooled = out.text_embeds
        if not self.xl:
            return {"encoder_hidden_states": states[0]}
        r = self.resolution
        time_ids = torch.tensor([[r, r, 0, 0, r, r]], dtype=states[0].dtype).repeat(len(prompts), 1)
        return {"encoder_hidden_states": torch.cat(states, -1),
                "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}


def folder_key(folder: Path) -> str:
    """A short id of a model folder's contents (config files and weight sizes), for caches."""
    h = hashlib.sha1()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes() if p.suffix == ".json" else str(p.stat().st_size).encode())
    return h.hexdigest()[:16]


def load_backend(path: str | Path, resolution: int | None = None) -> Backend:
    path = Path(path)
    if not path.exists():
        raise ModelFolderError(f"model '{path}' does not exist")
    if path.is_file():
        raise ModelFolderError(f"'{path}' is a single file: convert it to a diffusers folder first "
                               "(diffusers' from_single_file with a local config), then point the trainer at it")
    if (path / "emplace_toy.json").is_file():
        return ToyBackend(path)
    if (path / "model_index.json").is_file() or (path / "unet").is_dir():
        return StableDiffusionBackend(path, resolution)
    raise ModelFolderError(f"'{path}' is neither an Emplace toy model nor a diffusers SD folder "
                           f"(found: {', '.join(sorted(p.name for p in path.iterdir())[:8]) or 'nothing'})")

