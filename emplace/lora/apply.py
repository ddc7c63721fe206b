"""Apply a LoRA to a diffusers model in the library (outside ComfyUI): merge its update into the weights.

ComfyUI patches models itself (nodes/lora.py); this serves the trainer's validation images
and the scene-world evaluation, which sample with diffusers modules. The merge lasts for a `with` block
and the weights are restored after it, so one model serves with and without the LoRA.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .compat import check_targets
from .convert import Lora
from .keys import TEXT_ENCODER, TEXT_ENCODER_2, UNET

KOHYA_PREFIX = {UNET: "lora_unet_", TEXT_ENCODER: "lora_te_", TEXT_ENCODER_2: "lora_te2_"}


def lora_targets(module: torch.nn.Module, component: str, sdxl: bool = False) -> dict[str, torch.nn.Module]:
    """Kohya module name -> the Linear/Conv2d layer it patches."""
    prefix = "lora_te1_" if sdxl and component == TEXT_ENCODER else KOHYA_PREFIX[component]
    out = {}
    for name, layer in module.named_modules():
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
            if component != UNET and not name.startswith("text_model."):  # transformers 5 has no text_model level
                name = f"text_model.{name}"
            out[prefix + name.replace(".", "_")] = layer
    return out


@contextmanager
def merged(lora: Lora, strength: float, lora_name: str, unet: torch.nn.Module,
           text_encoders: tuple[torch.nn.Module, ...] = ()):
    """Within the block the LoRA's update (times strength) is in the weights; afterwards they are as before."""
    sdxl = len(text_encoders) > 1
    targets = lora_targets(unet, UNET)
    for component, encoder in zip((TEXT_ENCODER, TEXT_ENCODER_2), text_encoders):
        targets |= lora_targets(encoder, component, sdxl)
    components = {UNET} | {c for c, _ in zip((TEXT_ENCODER, TEXT_ENCODER_2), text_encoders)}
    check_targets(lora, {n: tuple(layer.weight.shape) for n, layer in targets.items()}, lora_name, components)
    saved = {}
    try:
        with torch.no_grad():
            for m in lora.modules.values():
                if m.component in components and strength != 0:
                    weight = targets[m.name].weight
                    saved[m.name] = weight.detach().clone()
                    weight += (strength * m.delta()).reshape(weight.shape).to(weight)
        yield
    finally:
        with torch.no_grad():
            for name, weight in saved.items():
                targets[name].weight.copy_(weight)
