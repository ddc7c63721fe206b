"""Any supported LoRA state dict -> the kohya form, with the alpha/rank scale kept exact.

The effective update of a layer is  scale * up @ down.  Kohya files store `alpha` and
ComfyUI uses scale = alpha / rank (rank = rows of `down`; 1.0 when `.alpha` is missing).
PEFT and diffusers files keep no alpha tensor: their scale comes from the LoRA config
(lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA, per-layer overrides in
alpha_pattern / rank_pattern), found in the file's `lora_adapter_metadata` (diffusers)
or in the `adapter_config.json` beside it (peft). The converter writes
alpha = scale * rank so that ComfyUI applies exactly the same update.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from .keys import (ALPHA, DOWN, TEXT_ENCODER_2, UNET, UP, LoraKey, UnsupportedLoraKey, is_dit_diffusers, kohya_name,
                   kohya_tensor_name, parse_key)


class LoraFormatError(ValueError):
    """A LoRA state dict that cannot be converted, with the reason."""


@dataclass
class LoraModule:
    name: str  # kohya module name, e.g. lora_unet_down_blocks_0_attentions_0_..._to_q
    component: str
    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self) -> torch.Tensor:
        """The weight update at strength 1, shaped like the patched weight."""
        down = self.down.flatten(1).to(torch.float32)
        up = self.up.flatten(1).to(torch.float32)
        out = (up @ down) * self.scale
        if self.down.dim() == 4:  # conv: [out, in, kh, kw]
            return out.reshape(self.up.shape[0], *self.down.shape[1:])
        return out


@dataclass
class Lora:
    modules: dict[str, LoraModule]
    metadata: dict[str, str] = field(default_factory=dict)
    source_format: str = "kohya"
    alpha_source: str = "file"

    def state_dict(self) -> dict[str, torch.Tensor]:
        sd: dict[str, torch.Tensor] = {}
        for m in self.modules.values():
            sd[kohya_tensor_name(m.name, DOWN)] = m.down
            sd[kohya_tensor_name(m.name, UP)] = m.up
            sd[kohya_tensor_name(m.name, ALPHA)] = torch.tensor(float(m.alpha), dtype=torch.float32)
        return sd

    def components(self) -> set[str]:
        return {m.component for m in self.modules.values()}

    def ranks(self) -> set[int]:
        return {m.rank for m in self.modules.values()}


def detect_format(keys: list[str]) -> str:
    if all(k.startswith(("lora_unet_", "lora_te")) for k in keys):
        return "kohya"
    if any(".lora_A." in k or k.endswith(".lora_A.weight") for k in keys):
        return "peft"
    if any("_lora.down." in k for k in keys):
        return "diffusers-attn-processors"
    if any(".lora.down." in k for k in keys):
        return "diffusers"
    return "other"


def to_kohya(state_dict: dict[str, torch.Tensor], adapter_config: dict | None = None,
             metadata: dict[str, str] | None = None, what: str = "LoRA") -> Lora:
    """Normalise a LoRA state dict of any supported form into kohya-named modules.

    `adapter_config` is a PEFT LoraConfig as a dict, or diffusers' per-component form
    ({"unet.lora_alpha": ..., "unet.r": ...}); it decides the scale of layers that have
    no `.alpha` tensor. Without it, such layers get scale 1.0 (what diffusers does too).
    """
    if not state_dict:
        raise LoraFormatError(f"{what} has no tensors")
    keys = list(state_dict)
    fmt = detect_format(keys)
    parsed: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    originals: dict[tuple[str, str], LoraKey] = {}
    sdxl_text = False
    for k in keys:
        try:
            key = parse_key(k)
        except UnsupportedLoraKey as e:
            raise LoraFormatError(f"{what}: {e}") from None
        sdxl_text |= key.component == TEXT_ENCODER_2 or k.startswith("lora_te1_")
        slot = (key.component, key.module)
        parsed.setdefault(slot, {})[key.part] = state_dict[k]
        originals[slot] = key

    dit_diffusers = is_dit_diffusers(list(originals.values()))
    configs = _component_configs(adapter_config)
    modules: dict[str, LoraModule] = {}
    used_config = False
    for slot, parts in parsed.items():
        key = originals[slot]
        if DOWN not in parts or UP not in parts:
            if set(parts) == {ALPHA}:
                continue  # a stray alpha (some extractors write them for skipped layers)
            missing = "up" if DOWN in parts else "down"
            raise LoraFormatError(f"{what}: layer '{key.module}' has no {missing} matrix")
        down, up = parts[DOWN], parts[UP]
        rank = down.shape[0]
        if up.shape[1] != rank:
            raise LoraFormatError(f"{what}: layer '{key.module}' has down rank {rank} but up rank {up.shape[1]}")
        if ALPHA in parts:
            alpha = float(parts[ALPHA].float().item())
        else:
            scale = _config_scale(configs.get(key.component), key.module)
            used_config |= scale is not None
            alpha = (1.0 if scale is None else scale) * rank
        name = kohya_name(key, sdxl_text, dit_diffusers)
        modules[name] = LoraModule(name, key.component, down, up, alpha)
    if not modules:
        raise LoraFormatError(f"{what} has no LoRA layers")
    alpha_source = "file" if all(ALPHA in p for p in parsed.values()) else (
        "adapter config" if used_config else "none (scale 1.0)")
    return Lora(modules, dict(metadata or {}), fmt, alpha_source)


def _component_configs(config: dict | None) -> dict[str, dict]:
    """Split diffusers' prefixed config ({"unet.r": 4, ...}) per component; a plain one serves all."""
    if not config:
        return {}
    prefixed: dict[str, dict] = {}
    for k, v in config.items():
        head, _, rest = k.partition(".")
        if rest and head in (UNET, "text_encoder", TEXT_ENCODER_2, "transformer"):
            prefixed.setdefault(head, {})[rest] = v
    if prefixed:
        return prefixed
    return {UNET: config, "text_encoder": config, TEXT_ENCODER_2: config}


def _pattern_value(patterns: dict | None, module: str):
    # PEFT matches pattern keys against the end of the module path.
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return None


def _config_scale(config: dict | None, module: str) -> float | None:
    if not config or "r" not in config:
        return None
    r = _pattern_value(config.get("rank_pattern"), module) or config["r"]
    alpha = _pattern_value(config.get("alpha_pattern"), module) or config.get("lora_alpha", r)
    if config.get("use_rslora"):
        return float(alpha) / math.sqrt(float(r))
    return float(alpha) / float(r)
