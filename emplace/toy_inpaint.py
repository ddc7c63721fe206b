"""A toy text-conditioned inpainting diffusion model (the embedded default is trained on the scene world).

Shaped like SD-inpainting at toy scale, and stored as a diffusers folder:
- images are 64 x 64 pixels; the model works on their 2 x 2 pixel-unshuffle (12 x 32 x 32),
  a lossless "latent" that needs no VAE;
- the UNet (diffusers UNet2DConditionModel) takes 25 channels: the noisy image (12), the
  mask (1, at 32 x 32) and the masked image (12), as SD-inpainting's 9-channel UNet does;
- the text encoder is a 2-layer CLIP text model over a word-level tokenizer built with the
  `tokenizers` library from a closed vocabulary the caller gives (the scene world's words);
- v-prediction on a cosine schedule (DDPM training, DDIM sampling with classifier-free guidance).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

PAD, UNK = "[PAD]", "[UNK]"


@dataclass(frozen=True)
class ToyConfig:
    image_size: int = 64
    unshuffle: int = 2
    max_tokens: int = 8
    text_width: int = 64
    block_out_channels: tuple[int, ...] = (32, 64, 128)

    @property
    def channels(self) -> int:
        return 3 * self.unshuffle ** 2

    @property
    def grid(self) -> int:
        return self.image_size // self.unshuffle


def build_tokenizer(vocabulary: Sequence[str]):
    """A word-level tokenizer (lower case, split at white space) knowing these words; others are UNK."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {w: i for i, w in enumerate([PAD, UNK, *vocabulary])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def build_text_encoder(config: ToyConfig, vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=config.text_width, intermediate_size=2 * config.text_width,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=config.max_tokens,
        pad_token_id=0, bos_token_id=0, eos_token_id=0))


def build_unet(config: ToyConfig):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=config.grid, in_channels=2 * config.channels + 1, out_channels=config.channels,
        block_out_channels=config.block_out_channels, layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=config.text_width, attention_head_dim=8, norm_num_groups=16)


def build_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                         clip_sample=False)


class ToyInpaintModel:
    """Tokenizer + text encoder + UNet + scheduler, with the pixel <-> model-space conversions."""

    def __init__(self, config: ToyConfig, tokenizer, text_encoder, unet, scheduler):
        self.config, self.tokenizer, self.text_encoder, self.unet, self.scheduler = \
            config, tokenizer, text_encoder, unet, scheduler

    @classmethod
    def create(cls, vocabulary: Sequence[str], config: ToyConfig = ToyConfig(), seed: int = 0) -> ToyInpaintModel:
        """A new, untrained model whose prompts use the words of `vocabulary` (the scene world's `words()`)."""
        torch.manual_seed(seed)
        tokenizer = build_tokenizer(vocabulary)
        return cls(config, tokenizer, build_text_encoder(config, tokenizer.get_vocab_size()), build_unet(config),
                   build_scheduler())

    # -- files ------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(folder / "unet")
        self.text_encoder.save_pretrained(folder / "text_encoder")
        self.scheduler.save_pretrained(folder / "scheduler")
        (folder / "tokenizer").mkdir(exist_ok=True)
        self.tokenizer.save(str(folder / "tokenizer" / "tokenizer.json"))
        (folder / "emplace_toy.json").write_text(json.dumps(asdict(self.config), indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ToyInpaintModel:
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from tokenizers import Tokenizer
        from transformers import CLIPTextModel

        folder = Path(folder)
        if not (folder / "emplace_toy.json").is_file():
            raise FileNotFoundError(f"'{folder}' is not a toy inpainting model folder (no emplace_toy.json)")
        raw = json.loads((folder / "emplace_toy.json").read_text())
        config = ToyConfig(**{**raw, "block_out_channels": tuple(raw["block_out_channels"])})
        return cls(config, Tokenizer.from_file(str(folder / "tokenizer" / "tokenizer.json")),
                   CLIPTextModel.from_pretrained(folder / "text_encoder", use_safetensors=True).eval(),
                   UNet2DConditionModel.from_pretrained(folder / "unet", use_safetensors=True).eval(),
                   DDPMScheduler.from_pretrained(folder / "scheduler"))

    # -- conversions ------------------------------------------------------------------------
    def token_ids(self, prompts: list[str]) -> torch.Tensor:
        ids = torch.zeros(len(prompts), self.config.max_tokens, dtype=torch.long)
        for i, p in enumerate(prompts):
            tokens = self.tokenizer.encode(p).ids[: self.config.max_tokens]
            ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return ids

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return self.text_encoder(self.token_ids(prompts).to(self.text_encoder.device)).last_hidden_state

    def to_model_space(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in 0..1 -> [B, 3 u^2, H/u, W/u] in -1..1."""
        return F.pixel_unshuffle(images * 2 - 1, self.config.unshuffle)

    def from_model_space(self, x: torch.Tensor) -> torch.Tensor:
        return (F.pixel_shuffle(x, self.config.unshuffle) + 1) / 2

    def conditioning(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The UNet's extra input channels: the mask, and the image with the masked pixels at mid-grey."""
        masks = (masks[:, None] if masks.dim() == 3 else masks).float()
        masked = self.to_model_space(images * (1 - masks) + 0.5 * masks)
        return torch.cat([F.max_pool2d(masks, self.config.unshuffle), masked], 1)

    @torch.no_grad()
    def inpaint(self, images: torch.Tensor, masks: torch.Tensor, prompts: list[str], steps: int = 25,
                guidance: float = 3.0, seed: int = 0, negative: str = "") -> torch.Tensor:
        """Inpaint images [B, 3, 64, 64] (0..1) where masks [B, 64, 64] are 1; pixels outside stay as given."""
        from diffusers import DDIMScheduler

        if images.shape[-2:] != (self.config.image_size,) * 2 or masks.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"the toy model inpaints {self.config.image_size}x{self.config.image_size} images with "
                             f"masks of the same size, got images {tuple(images.shape)} and masks {tuple(masks.shape)}")
        b = images.shape[0]
        scheduler = DDIMScheduler.from_config(self.scheduler.config)
        scheduler.set_timesteps(steps)
        cond = self.conditioning(images, masks)
        text = self.encode_prompts(list(prompts) + [negative] * b)
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(b, self.config.channels, self.config.grid, self.config.grid, generator=g)
        for t in scheduler.timesteps:
            inp = torch.cat([x, cond], 1).repeat(2, 1, 1, 1)
            out = self.unet(inp, t, text).sample
            v_text, v_free = out.chunk(2)
            x = scheduler.step(v_free + guidance * (v_text - v_free), t, x).prev_sample
        result = self.from_model_space(x).clamp(0, 1)
        m = (masks[:, None] if masks.dim() == 3 else masks).float()
        return images * (1 - m) + result * m
