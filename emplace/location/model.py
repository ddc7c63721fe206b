"""The location model: a GPT-style decoder that writes a box, one coordinate token at a time,
after the background's patch tokens and the object's class token (seed 001).

    [image patch tokens ...] [class token] x0 y0 x1 y1
                                  |        |  |  |
                          predicts x0     y0 x1 y1

The decoder is transformers' GPT-2 (fed embeddings, not words; its KV cache makes sampling
cheap). Encoders are pluggable: a small convolutional image encoder and a closed-vocabulary
class embedding trained from scratch (the default), or frozen CLIP vision / CLIP text models
from a local folder, whose features a trained linear layer maps to the decoder's width.

Files: `name.safetensors` (the trained weights; frozen CLIP weights are not copied) and
`name.json` (the config) side by side.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..files import why_not_a_file, write_atomically
from ..weights import (
    WeightsFileError,
    check_safetensors,
    load_safetensors,
    read_metadata,
    save_safetensors,
)
from .tokens import DEFAULT_BINS

FORMAT = "emplace-location"
FORMAT_VERSION = 1
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "defaults" / "location" / "scene_world.safetensors"


class LocationModelError(ValueError):
    """A location model file Emplace will not use, or a label it does not know, with the reason."""


@dataclass
class LocationConfig:
    labels: list[str] = field(default_factory=list)  # the closed vocabulary (class encoder "vocabulary")
    bins: int = DEFAULT_BINS
    width: int = 128
    layers: int = 4
    heads: int = 4
    image_size: int = 64  # the background is resized to image_size x image_size for the encoder
    # {"kind": "conv", "patch": 8} (one token per patch x patch pixels) or {"kind": "clip_vision", "path": ...}
    image_encoder: dict = field(default_factory=lambda: {"kind": "conv", "patch": 8})
    class_encoder: dict = field(default_factory=lambda: {"kind": "vocabulary"})  # or {"kind": "clip_text", "path": ...}
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, d: dict, what: str) -> LocationConfig:
        if d.get("format") != FORMAT:
            raise LocationModelError(f"{what} is not an Emplace location model config (format {d.get('format')!r})")
        if d.get("format_version") != FORMAT_VERSION:
            raise LocationModelError(f"{what} was written by another version of Emplace (location model format "
                                     f"{d.get('format_version')}; this version reads format {FORMAT_VERSION})")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def normalise_label(label: str) -> str:
    return "_".join(label.strip().lower().replace("-", " ").split())


# --- encoders ---------------------------------------------------------------------------------


class ConvImageEncoder(nn.Module):
    """Stride-2 convolutions down to one token per `patch` x `patch` pixels: (image_size / patch)^2 tokens."""

    def __init__(self, width: int, image_size: int, patch: int = 8):
        super().__init__()
        if patch not in (4, 8, 16, 32) or image_size % patch:
            raise ValueError(f"the conv encoder's patch must be 4, 8, 16 or 32 and divide image_size, got patch "
                             f"{patch} at image_size {image_size}")
        widths = [3] + [min(32 * 2 ** i, width) for i in range(patch.bit_length() - 2)] + [width]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            layers.append(nn.Conv2d(a, b, 3, 2, 1))
            if i < len(widths) - 2:
                layers += [nn.GroupNorm(8, b), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.tokens = (image_size // patch) ** 2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2 - 1).flatten(2).transpose(1, 2)


class ClipImageEncoder(nn.Module):
    """A frozen CLIP vision tower's patch tokens (from a local transformers folder), projected."""

    def __init__(self, width: int, path: str):
        super().__init__()
        from transformers import CLIPVisionModel

        self.frozen = CLIPVisionModel.from_pretrained(_local_folder(path, "clip_vision"), local_files_only=True)
        self.frozen.requires_grad_(False).eval()
        c = self.frozen.config
        self.size = c.image_size
        self.tokens = (c.image_size // c.patch_size) ** 2 + 1
        self.project = nn.Linear(c.hidden_size, width)
        self.register_buffer("mean", torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1), False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(self.size, self.size), mode="bicubic", align_corners=False, antialias=True)
        with torch.no_grad():
            features = self.frozen(pixel_values=(x - self.mean) / self.std).last_hidden_state
        return self.project(features)


class VocabularyClassEncoder(nn.Module):
    """One learnt embedding per known label."""

    def __init__(self, width: int, labels: list[str]):
        super().__init__()
        if not labels:
            raise ValueError("a vocabulary class encoder needs the list of labels")
        self.labels = [normalise_label(lab) for lab in labels]
        self.index = {lab: i for i, lab in enumerate(self.labels)}
        self.embedding = nn.Embedding(len(labels), width)

    def check(self, label: str) -> str:
        name = normalise_label(label)
        if name not in self.index:
            raise LocationModelError(f"unknown label {label!r} for this location model; it knows: "
                                     f"{', '.join(self.labels)}")
        return name

    def forward(self, labels: list[str]) -> torch.Tensor:
        ids = torch.tensor([self.index[self.check(lab)] for lab in labels], device=self.embedding.weight.device)
        return self.embedding(ids)


class ClipTextClassEncoder(nn.Module):
    """An open vocabulary: a frozen CLIP text model's pooled output (from a local folder), projected."""

    labels: tuple[str, ...] = ()  # open vocabulary: any label

    def __init__(self, width: int, path: str):
        super().__init__()
        from transformers import AutoTokenizer, CLIPTextModel

        folder = _local_folder(path, "clip_text")
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.frozen = CLIPTextModel.from_pretrained(folder, local_files_only=True)
        self.frozen.requires_grad_(False).eval()
        self.project = nn.Linear(self.frozen.config.hidden_size, width)

    def check(self, label: str) -> str:
        if not label.strip():
            raise LocationModelError("the object label is empty")
        return label.strip()

    def forward(self, labels: list[str]) -> torch.Tensor:
        text = [self.check(lab).replace("_", " ") for lab in labels]
        ids = self.tokenizer(text, padding=True, truncation=True, return_tensors="pt").to(self.project.weight.device)
        with torch.no_grad():
            pooled = self.frozen(**ids).pooler_output
        return self.project(pooled)


def _local_folder(path: str, kind: str) -> str:
    if not path or not Path(path).is_dir():
        raise LocationModelError(f"the {kind} encoder's folder {path!r} is not here (a local transformers folder "
                                 f"with config.json and weights; nothing is downloaded)")
    return str(path)


# --- the model --------------------------------------------------------------------------------


class LocationModel(nn.Module):
    def __init__(self, config: LocationConfig):
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        self.config = config
        image, cls = config.image_encoder.get("kind"), config.class_encoder.get("kind")
        if image == "conv":
            self.image_encoder = ConvImageEncoder(config.width, config.image_size, config.image_encoder.get("patch", 8))
        elif image == "clip_vision":
            self.image_encoder = ClipImageEncoder(config.width, config.image_encoder.get("path", ""))
        else:
            raise LocationModelError(f"unknown image encoder {image!r} (conv or clip_vision)")
        if cls == "vocabulary":
            self.class_encoder = VocabularyClassEncoder(config.width, config.labels)
        elif cls == "clip_text":
            self.class_encoder = ClipTextClassEncoder(config.width, config.class_encoder.get("path", ""))
        else:
            raise LocationModelError(f"unknown class encoder {cls!r} (vocabulary or clip_text)")
        self.prefix_length = self.image_encoder.tokens + 1
        self.coordinate = nn.Embedding(config.bins, config.width)
        self.decoder = GPT2Model(GPT2Config(
            n_embd=config.width, n_layer=config.layers, n_head=config.heads, n_positions=self.prefix_length + 4,
            vocab_size=1, bos_token_id=None, eos_token_id=None, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0))
        self.head = nn.Linear(config.width, config.bins)
        self.make_trainable()

    def make_trainable(self) -> LocationModel:
        """Gradients for everything trained: not the frozen CLIP encoders, nor GPT-2's word embedding
        (the decoder is fed embeddings; an unused parameter would also stall DistributedDataParallel)."""
        for name, p in self.named_parameters():
            p.requires_grad_(".frozen." not in name and not name.startswith("decoder.wte."))
        return self

    @property
    def labels(self) -> list[str]:
        return list(self.class_encoder.labels)

    def check_label(self, label: str) -> str:
        return self.class_encoder.check(label)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in 0..1 at any size -> the encoder's input size (do it once to cache images)."""
        s = self.config.image_size
        if tuple(images.shape[-2:]) == (s, s):
            return images
        return F.interpolate(images.float(), size=(s, s), mode="bilinear", align_corners=False, antialias=True)

    def prefix(self, images: torch.Tensor, labels: list[str]) -> torch.Tensor:
        """[B, prefix_length, width]: the background's patch tokens, then the class token."""
        device = self.head.weight.device
        patches = self.image_encoder(self.prepare(images).to(device))
        return torch.cat([patches, self.class_encoder(labels)[:, None]], 1)

    def logits(self, images: torch.Tensor, labels: list[str], tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced [B, 4, bins] logits of each coordinate given the ones before it."""
        tokens = tokens.to(self.head.weight.device)
        embeds = torch.cat([self.prefix(images, labels), self.coordinate(tokens[:, :3])], 1)
        hidden = self.decoder(inputs_embeds=embeds).last_hidden_state
        return self.head(hidden[:, self.prefix_length - 1:])

    def log_prob(self, images: torch.Tensor, labels: list[str], tokens: torch.Tensor) -> torch.Tensor:
        """[B]: the log-likelihood of each whole box (the sum over its four tokens)."""
        logp = self.logits(images, labels, tokens).log_softmax(-1)
        return logp.gather(-1, tokens.to(logp.device)[..., None])[..., 0].sum(-1)

    forward = log_prob  # what training calls, so a DistributedDataParallel wrapper sees it


# --- files ------------------------------------------------------------------------------------


def config_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def save_location_model(model: LocationModel, path: str | os.PathLike) -> Path:
    """Write `path` (.safetensors) and its config (.json) atomically; frozen encoders are not copied."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if ".frozen." not in k}
    save_safetensors(path, tensors, {"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    text = json.dumps(asdict(model.config), indent=1)
    write_atomically(config_path(path), lambda tmp: tmp.write_text(text))
    return path


def load_location_model(path: str | os.PathLike = DEFAULT_MODEL, device: str | torch.device = "cpu") -> LocationModel:
    """A saved location model, checked: format, version, and that the weights fit the config."""
    path = check_safetensors(path, "location model")
    meta = read_metadata(path, "location model")
    if meta.get("format") != FORMAT:
        raise LocationModelError(f"{path.name} is not an Emplace location model (it has no '{FORMAT}' tag; is it "
                                 f"a LoRA or a checkpoint?)")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise LocationModelError(f"{path.name} was written by another version of Emplace (location model format "
                                 f"{meta.get('format_version')}; this version reads format {FORMAT_VERSION})")
    cfg_file = config_path(path)
    if why := why_not_a_file(cfg_file):
        missing = "is missing" if why == "does not exist" else why
        raise LocationModelError(f"{path.name} has no config beside it: {cfg_file.name} {missing}")
    try:
        config = LocationConfig.from_dict(json.loads(cfg_file.read_text()), cfg_file.name)
    except json.JSONDecodeError as e:
        raise LocationModelError(f"{cfg_file.name} is not valid JSON: {e}") from None
    model = LocationModel(config)
    tensors, _ = load_safetensors(path, "location model")
    expected = {k: v.shape for k, v in model.state_dict().items() if ".frozen." not in k}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tensors[k].shape != expected[k]]
    if missing or unexpected or wrong:
        detail = "; ".join(f"{k}: file {tuple(tensors[k].shape)}, config {tuple(expected[k])}" for k in wrong[:3])
        raise LocationModelError(
            f"{path.name} does not match its config {cfg_file.name} (another vocabulary, bin count or size?): "
            + (detail or f"{len(missing)} tensors missing, {len(unexpected)} unexpected"))
    model.load_state_dict(tensors, strict=False)
    return model.to(device).eval()


__all__ = ["DEFAULT_MODEL", "LocationConfig", "LocationModel", "LocationModelError", "WeightsFileError",
           "load_location_model", "normalise_label", "save_location_model"]
