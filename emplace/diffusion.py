"""Diffusers models for training: one small interface over the toy model, SD1.5/SDXL and Flux/SD3 folders.

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

    def frozen_parts(self) -> list[torch.nn.Module]:
        """What encodes images and prompts (never trained through the UNet's optimizer)."""
        return self.text_encoders()

    def to(self, device) -> Backend:
        for m in self.frozen_parts():
            m.to(device)
        return self

    def sample(self, prompts: list[str], images: torch.Tensor, masks: torch.Tensor, steps: int = 25,
               guidance: float = 5.0, seed: int = 0) -> torch.Tensor:
        """[B, 3, H, W] in 0..1: inpaint `images` at `masks` (inpainting models) or draw from the prompts."""
        raise NotImplementedError

    # How training noises and predicts. UNets: DDPM timesteps from the scheduler, an epsilon or v target, the
    # UNet's call; the flow-matching DiTs (flow_backend.py) override all three.

    def draw_timesteps(self, generators: list[torch.Generator], low: float, high: float,
                       fixed: tuple[float, ...] = ()) -> torch.Tensor:
        """One timestep per generator from [low, high) of the training schedule (uniform, as the UNets were
        trained), or one of `fixed` (fractions of the schedule)."""
        total = self.scheduler.config.num_train_timesteps
        if fixed:
            return torch.cat([torch.tensor(fixed)[torch.randint(len(fixed), (1,), generator=g)] * (total - 1)
                              for g in generators]).round().long()
        lo, hi = int(low * total), max(int(high * total), int(low * total) + 1)
        return torch.cat([torch.randint(lo, hi, (1,), generator=g) for g in generators])

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The noisy input at `t` and what the model should predict there."""
        sched = self.scheduler
        noisy = sched.add_noise(x0, noise, t)
        target = sched.get_velocity(x0, noise, t) if sched.config.prediction_type == "v_prediction" else noise
        return noisy, target

    def predict(self, model, noisy: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        """The model's prediction (`model` is the denoiser, perhaps wrapped for DDP); `noisy` already carries an
        inpainting model's extra channels; `cond` is `encode_prompts`' dict, one row per sample."""
        kwargs = {"encoder_hidden_states": cond["encoder_hidden_states"]}
        if cond.get("added_cond_kwargs"):
            kwargs["added_cond_kwargs"] = cond["added_cond_kwargs"]
        return model(noisy, t, **kwargs).sample

    def inpaint_inputs(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """[B, 1 + latent channels, h, w]: the mask at latent size and the masked image's latents."""
        masks = (masks[:, None] if masks.dim() == 3 else masks).float()
        latents = self.encode_images(images * (1 - masks) + 0.5 * masks)
        small = F.interpolate(masks, size=latents.shape[-2:], mode="area").gt(0).float()
        return torch.cat([small.to(latents), latents], 1)


class ToyBackend(Backend):
    def __init__(self, folder: Path):
        from .toy_inpaint import ToyInpaintModel

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

    def sample(self, prompts, images, masks, steps=25, guidance=3.0, seed=0):
        size, native = tuple(images.shape[-2:]), (self.model.config.image_size,) * 2  # it paints at its own size
        out = self.model.inpaint(F.interpolate(images, size=native, mode="bilinear"),
                                 F.interpolate(masks[:, None].float(), size=native, mode="nearest")[:, 0],
                                 prompts, steps=steps, guidance=guidance, seed=seed)
        return out if size == native else F.interpolate(out, size=size, mode="bilinear")


class StableDiffusionBackend(Backend):
    """SD1.5 / SD2 / SDXL (4- or 9-channel): a diffusers folder (model_index.json, unet/, vae/,
    text_encoder[_2]/, tokenizer[_2]/, scheduler/) or a single-file checkpoint with such a folder's configs."""

    def __init__(self, unet, vae, scheduler, tokenizers: list, encoders: list, key: str,
                 resolution: int | None = None):
        from diffusers import DDPMScheduler

        self.unet, self.vae = unet, vae.eval().requires_grad_(False)
        self.scheduler = DDPMScheduler.from_config(scheduler.config)  # training adds noise as DDPM does
        self.tokenizers, self.encoders = tokenizers, [e.eval() for e in encoders]
        self.xl = len(encoders) > 1
        self.family = family_for_context_dim(self.unet.config.cross_attention_dim)
        self.latent_channels = self.vae.config.latent_channels
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.resolution = resolution or self.unet.config.sample_size * scale
        self.key = key

    @classmethod
    def from_folder(cls, folder: Path, resolution: int | None = None) -> StableDiffusionBackend:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            if not (folder / part).is_dir():
                raise ModelFolderError(f"model folder '{folder}' has no {part}/ (a diffusers SD folder needs unet, "
                                       "vae, text_encoder, tokenizer and scheduler; nothing is downloaded)")
        tokenizers = [CLIPTokenizer.from_pretrained(folder / "tokenizer")]
        encoders = [CLIPTextModel.from_pretrained(folder / "text_encoder")]
        if (folder / "text_encoder_2").is_dir():
            tokenizers.append(CLIPTokenizer.from_pretrained(folder / "tokenizer_2"))
            encoders.append(CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2"))
        return cls(UNet2DConditionModel.from_pretrained(folder / "unet"), AutoencoderKL.from_pretrained(folder / "vae"),
                   DDPMScheduler.from_pretrained(folder / "scheduler"), tokenizers, encoders, folder_key(folder),
                   resolution)

    @classmethod
    def from_single_file(cls, path: Path, config: Path | None, resolution: int | None = None):
        from . import single_file

        found = single_file.inspect(path)
        if config is None:
            raise ModelFolderError(
                f"'{path}' is a single-file checkpoint of {found.described}. Its diffusers configs are needed locally "
                f"(nothing is downloaded): set model_config to a diffusers folder of the same architecture, e.g. "
                f"{found.config_repo} with its *.json and tokenizer files (the weights are not needed).")
        found.check_config(config)
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
        from safetensors.torch import load_file
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        # component by component, so the config folder needs no model_index.json
        weights = load_file(str(path))
        local = {"config": str(config), "local_files_only": True}
        unet = UNet2DConditionModel.from_single_file(weights, subfolder="unet", **local)
        vae = AutoencoderKL.from_single_file(weights, subfolder="vae", **local)
        encoders = [create_diffusers_clip_model_from_ldm(CLIPTextModel, weights, subfolder="text_encoder", **local)]
        tokenizers = [CLIPTokenizer.from_pretrained(config / "tokenizer")]
        if found.xl:  # (only the second encoder's tensors: diffusers would take the first one's at equal widths)
            second = {k: v for k, v in weights.items() if k.startswith(single_file.SDXL_SECOND_ENCODER)}
            encoders.append(create_diffusers_clip_model_from_ldm(CLIPTextModelWithProjection, second,
                                                                 subfolder="text_encoder_2", **local))
            tokenizers.append(CLIPTokenizer.from_pretrained(config / "tokenizer_2"))
        scheduler = DDPMScheduler.from_pretrained(config / "scheduler")
        return cls(unet, vae, scheduler, tokenizers, encoders, single_file.encoders_key(path), resolution)

    def frozen_parts(self):
        return [self.vae, *self.encoders]

    def encode_images(self, images):
        return vae_latents(self.vae, images)

    def text_encoders(self):
        return self.encoders

    def encode_prompts(self, prompts):
        states, pooled = [], None
        for tok, enc in zip(self.tokenizers, self.encoders):
            ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(enc.device)
            out = enc(ids, output_hidden_states=self.xl)
            states.append(out.hidden_states[-2] if self.xl else out.last_hidden_state)
            if self.xl and hasattr(out, "text_embeds"):
                pooled = out.text_embeds
        if not self.xl:
            return {"encoder_hidden_states": states[0]}
        r = self.resolution
        time_ids = torch.tensor([[r, r, 0, 0, r, r]], dtype=states[0].dtype, device=states[0].device)
        time_ids = time_ids.repeat(len(prompts), 1)
        return {"encoder_hidden_states": torch.cat(states, -1),
                "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}


    @torch.no_grad()
    def sample(self, prompts, images, masks, steps=25, guidance=5.0, seed=0):
        import diffusers

        name = ("StableDiffusionXL" if self.xl else "StableDiffusion") + \
            ("InpaintPipeline" if self.is_inpainting else "Pipeline")
        parts = {"vae": self.vae, "text_encoder": self.encoders[0], "tokenizer": self.tokenizers[0], "unet": self.unet,
                 "scheduler": diffusers.DDIMScheduler.from_config(self.scheduler.config)}
        if self.xl:
            parts |= {"text_encoder_2": self.encoders[1], "tokenizer_2": self.tokenizers[1]}
        else:
            parts |= {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
        pipe = getattr(diffusers, name)(**parts)
        pipe.set_progress_bar_config(disable=True)
        size = images.shape[-1]
        extra = {"image": images, "mask_image": masks[:, None].float(), "strength": 1.0} if self.is_inpainting else {}
        out = pipe(prompt=list(prompts), num_inference_steps=steps, guidance_scale=guidance, height=size, width=size,
                   generator=torch.Generator().manual_seed(seed), output_type="pt", **extra).images
        return out.float().cpu().clamp(0, 1)


def vae_latents(vae, images: torch.Tensor) -> torch.Tensor:
    """Images in 0..1 -> the model's latents (the VAE's mean, shifted and scaled as its config says)."""
    latents = vae.encode(images.to(vae.device, vae.dtype) * 2 - 1).latent_dist.mean
    shift = vae.config.get("shift_factor") or 0.0
    return (latents - shift) * vae.config.scaling_factor


ENCODER_PARTS = ("vae", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3",
                 "emplace_toy.json")


def folder_key(folder: Path) -> str:
    """A short id of what cached latents and text embeddings depend on: the folder's VAE, text
    encoders and tokenizers, byte for byte (two fine-tunes of one base differ only in weights)."""
    h = hashlib.sha1()
    for part in ENCODER_PARTS:
        files = [folder / part] if (folder / part).is_file() else sorted((folder / part).rglob("*"))
        for p in files:
            if p.is_file():
                h.update(str(p.relative_to(folder)).encode())
                with open(p, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 24), b""):
                        h.update(chunk)
    return h.hexdigest()[:16]


def load_backend(path: str | Path, resolution: int | None = None, config: str | Path | None = None) -> Backend:
    """A toy model folder; a diffusers SD, Flux, Flux Fill or SD3 folder; or a single-file checkpoint with `config`,
    a local diffusers folder of the same architecture (its configs and tokenizers; its weights are not read)."""
    path = Path(path)
    if not path.exists():
        raise ModelFolderError(f"model '{path}' does not exist")
    if path.is_file():
        from .flow_backend import FlowBackend, transformer_family

        if transformer_family(path) is not None:
            return FlowBackend.from_single_file(path, Path(config) if config else None, resolution)
        return StableDiffusionBackend.from_single_file(path, Path(config) if config else None, resolution)
    if (path / "emplace_toy.json").is_file():
        return ToyBackend(path)
    if (path / "transformer").is_dir():
        from .flow_backend import FlowBackend

        return FlowBackend.from_folder(path, resolution)
    if (path / "model_index.json").is_file() or (path / "unet").is_dir():
        return StableDiffusionBackend.from_folder(path, resolution)
    raise ModelFolderError(f"'{path}' is neither an Emplace toy model nor a diffusers SD, Flux or SD3 folder "
                           f"(found: {', '.join(sorted(p.name for p in path.iterdir())[:8]) or 'nothing'})")

