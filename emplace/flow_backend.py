"""Flux, Flux Fill and SD3 for training: flow matching through diffusers' own pipelines.

Flow matching noises along a straight line, x_s = (1 - s) x0 + s * noise for s in (0, 1), and the transformer
predicts the velocity noise - x0 (diffusers' Flux and SD3 scripts, and masked Flow-DPO, train the same target).
Winner, loser and reference share s and the noise, as they share the timestep on a UNet. The pipeline object is only
a container: its encode_prompt, latent packing and sampling are diffusers', so the conditioning is exactly what the
pipeline gives at inference.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .diffusion import Backend, ModelFolderError, folder_key, vae_latents
from .families import FLUX, FLUX_FILL, SD3


# Layer names only one architecture's transformer has, in ComfyUI's / BFL's file form and in diffusers' form.
_FLUX_KEYS = ("double_blocks.", "single_blocks.", "single_transformer_blocks.")
_SD3_DIFFUSERS_KEYS = ("transformer_blocks.", "context_embedder.", "pos_embed")  # Flux has no pos_embed
_FILE_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")
REFERENCE_CONFIGS = {FLUX.key: "black-forest-labs/FLUX.1-dev", FLUX_FILL.key: "black-forest-labs/FLUX.1-Fill-dev",
                     SD3.key: "stabilityai/stable-diffusion-3.5-medium (or -large, as the file's width says)"}


def transformer_family(path: Path):
    """Flux, Flux Fill or SD3 when the safetensors file at `path` is such a transformer (the tensors' names and the
    input width; nothing is loaded), else None: not a DiT, or not a readable safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            keys = [k for k in f.keys()]
            names = [next((k[len(p):] for p in _FILE_PREFIXES if k.startswith(p)), k) for k in keys]
            if any(n.startswith(_FLUX_KEYS) for n in names):
                image_in = next((k for k, n in zip(keys, names) if n in ("img_in.weight", "x_embedder.weight")), None)
                width = f.get_slice(image_in).get_shape()[1] if image_in else 64
                return FLUX_FILL if width > 2 * 64 else FLUX
            if any(n.startswith("joint_blocks.") for n in names) or all(
                    any(n.startswith(k) for n in names) for k in _SD3_DIFFUSERS_KEYS):
                return SD3
    except Exception:  # a pickle or a broken file: the SD path refuses it with the reason
        return None
    return None


class FlowBackend(Backend):
    """A diffusers Flux, Flux Fill or SD3 folder (model_index.json, transformer/, vae/, text encoders, tokenizers,
    scheduler/), or the transformer alone in one file with such a folder for the rest. Nothing is downloaded."""

    @classmethod
    def from_folder(cls, folder: Path, resolution: int | None = None) -> FlowBackend:
        return cls(folder, resolution)

    @classmethod
    def from_single_file(cls, path: Path, config: Path | None, resolution: int | None = None) -> FlowBackend:
        """The transformer as ComfyUI users hold it (models/diffusion_models: BFL / ComfyUI names, or diffusers'),
        the rest (VAE, text encoders, tokenizers, scheduler) from `config`, a local diffusers folder of the family."""
        family = transformer_family(path)
        if config is None:
            raise ModelFolderError(
                f"'{path}' is a {family} transformer alone (as ComfyUI keeps it in models/diffusion_models). The rest "
                f"of the model is needed locally (nothing is downloaded): set model_config to a diffusers {family} "
                f"folder such as {REFERENCE_CONFIGS[family.key]}, with its vae, text encoders, tokenizers and "
                "scheduler (its transformer weights are not read).")
        from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
        from safetensors.torch import load_file

        kind = SD3Transformer2DModel if family is SD3 else FluxTransformer2DModel
        weights = load_file(str(path))
        if any(k.startswith(("transformer_blocks.", "single_transformer_blocks.")) for k in weights):
            transformer = kind.from_config(kind.load_config(config / "transformer"))  # diffusers' own names
            transformer.load_state_dict(weights)
        else:
            transformer = kind.from_single_file(weights, config=str(config), subfolder="transformer",
                                                local_files_only=True)
        return cls(config, resolution, transformer=transformer)

    def __init__(self, folder: Path, resolution: int | None = None, transformer=None):
        from diffusers import DiffusionPipeline

        parts = {"transformer": transformer} if transformer is not None else {}
        try:
            self.pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True, **parts)
        except (OSError, ValueError) as e:
            raise ModelFolderError(f"'{folder}' is not a complete diffusers Flux/SD3 folder (nothing is downloaded): "
                                   f"{e}") from None
        self.flux = hasattr(self.pipe, "_pack_latents")
        if not self.flux and type(self.pipe).__name__ != "StableDiffusion3Pipeline":
            raise ModelFolderError(f"'{folder}' holds a {type(self.pipe).__name__}; the flow-model trainer takes "
                                   "Flux, Flux Fill and SD3 folders")
        self.unet = self.pipe.transformer  # the denoiser: every backend calls it `unet`
        self.vae = self.pipe.vae.eval().requires_grad_(False)
        self.scheduler = self.pipe.scheduler
        self.latent_channels = self.vae.config.latent_channels
        inpainting = self.flux and self.unet.config.in_channels > 2 * 4 * self.latent_channels
        self.family = FLUX_FILL if inpainting else FLUX if self.flux else SD3
        self.resolution = resolution or self.family.resolution
        self.key = folder_key(folder)  # what the cached latents and text depend on: the VAE and text encoders
        self.encoders = [m for m in (getattr(self.pipe, f"text_encoder{s}", None) for s in ("", "_2", "_3"))
                         if m is not None]
        for encoder in self.encoders:
            encoder.eval()

    @property
    def is_inpainting(self) -> bool:
        return self.family is FLUX_FILL

    def frozen_parts(self):
        return [self.vae, *self.encoders]

    def text_encoders(self):
        return self.encoders

    def encode_images(self, images):
        return vae_latents(self.vae, images)

    @property
    def _max_text_tokens(self) -> int:
        tokenizer = self.pipe.tokenizer_2 if self.flux else self.pipe.tokenizer_3
        return min(512 if self.flux else 256, tokenizer.model_max_length)

    def encode_prompts(self, prompts):
        """T5's sequence as `encoder_hidden_states` and the CLIP pooled vector as `pooled_projections`."""
        device = self.encoders[0].device
        if self.flux:
            states, pooled, _ = self.pipe.encode_prompt(prompts, prompts, device=device,
                                                        max_sequence_length=self._max_text_tokens)
        else:
            states, _, pooled, _ = self.pipe.encode_prompt(prompts, prompts, prompts, device=device,
                                                           do_classifier_free_guidance=False,
                                                           max_sequence_length=self._max_text_tokens)
        return {"encoder_hidden_states": states, "added_cond_kwargs": {"pooled_projections": pooled}}

    def inpaint_inputs(self, images, masks):
        """Flux Fill's extra input, as FluxFillPipeline builds it: the masked image's latents (masked pixels grey)
        and the mask as one channel per pixel of each 8x8 block: [B, 16 + 64, h, w]."""
        masks = (masks[:, None] if masks.dim() == 3 else masks).float()
        latents = self.encode_images(images * (1 - masks) + 0.5 * masks)
        b, _, h, w = latents.shape
        f = masks.shape[-1] // w
        blocks = masks[:, 0].reshape(b, h, f, w, f).permute(0, 2, 4, 1, 3).reshape(b, f * f, h, w)
        return torch.cat([latents, blocks.to(latents)], 1)

    def draw_timesteps(self, generators, low, high, fixed=()):
        """sigma in (0, 1) per generator: u from the family's training density (SD3: logit-normal, as its
        script trains; Flux: uniform), kept to [low, high), then shifted as the scheduler shifts sampling (Flux:
        by the image's token count); or one of `fixed` as it is."""
        if fixed:
            return torch.cat([torch.tensor(fixed)[torch.randint(len(fixed), (1,), generator=g)] for g in generators])
        if self.flux:
            u = torch.cat([torch.rand(1, generator=g) for g in generators])
        else:
            u = torch.sigmoid(torch.cat([torch.randn(1, generator=g) for g in generators]))
        u = (low + (high - low) * u).clamp(1e-4, 1 - 1e-4)
        config = self.scheduler.config
        if config.get("use_dynamic_shifting"):
            from diffusers.pipelines.flux.pipeline_flux import calculate_shift

            tokens = (self.resolution // 16) ** 2
            mu = calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                                 config.get("base_shift", 0.5), config.get("max_shift", 1.15))
            return math.exp(mu) / (math.exp(mu) + (1 / u - 1))
        shift = config.get("shift", 1.0)
        return shift * u / (1 + (shift - 1) * u)

    def noised(self, x0, noise, t):
        s = t.to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return (1 - s) * x0 + s * noise, noise - x0

    def predict(self, model, noisy, t, cond):
        text, pooled = cond["encoder_hidden_states"], cond["added_cond_kwargs"]["pooled_projections"]
        if not self.flux:
            return model(hidden_states=noisy, encoder_hidden_states=text, pooled_projections=pooled,
                         timestep=t * 1000).sample  # SD3 takes the schedule's 0..1000
        b, c, h, w = noisy.shape
        packed = self.pipe._pack_latents(noisy, b, c, h, w)  # channel by channel, so Fill's extras pack as its own
        image_ids = self.pipe._prepare_latent_image_ids(b, h // 2, w // 2, noisy.device, noisy.dtype)
        text_ids = torch.zeros(text.shape[1], 3, device=noisy.device, dtype=noisy.dtype)
        guidance = (torch.full((b,), self.family.guidance, device=noisy.device)
                    if self.unet.config.guidance_embeds else None)
        out = model(hidden_states=packed, encoder_hidden_states=text, pooled_projections=pooled, timestep=t,
                    img_ids=image_ids, txt_ids=text_ids, guidance=guidance).sample  # Flux takes sigma itself
        return self.pipe._unpack_latents(out, h * self.pipe.vae_scale_factor, w * self.pipe.vae_scale_factor,
                                         self.pipe.vae_scale_factor)

    @torch.no_grad()
    def sample(self, prompts, images, masks, steps=25, guidance=None, seed=0):
        """Flux Fill inpaints `images` at `masks`; Flux and SD3 draw from the prompts. `guidance`: Flux's distilled
        guidance (default the family's), SD3's CFG scale (default 5)."""
        size = images.shape[-1]
        extra = {"image": images, "mask_image": masks[:, None].float()} if self.is_inpainting else {}
        scale = guidance if guidance is not None else (self.family.guidance or 5.0)
        self.pipe.set_progress_bar_config(disable=True)
        out = self.pipe(prompt=list(prompts), height=size, width=size, num_inference_steps=steps, guidance_scale=scale,
                        max_sequence_length=self._max_text_tokens, generator=torch.Generator().manual_seed(seed),
                        output_type="pt", **extra).images
        return out.float().cpu().clamp(0, 1)
