"""Preference-LoRA nodes: load any common LoRA form through ComfyUI's own LoRA machinery.

The file is converted to the kohya form first (ComfyUI skips the attention layers of
PEFT/diffusers files), checked against the model (family and every layer's shape), and
only then patched, so a LoRA for another base model is a clear error, not a silent no-op.
"""

from __future__ import annotations

import comfy.hooks
import comfy.lora
import comfy.sd
import folder_paths
import node_helpers
import torch
from comfy_api.latest import io, ui

from ..emplace.lora import Lora, check_family, check_targets, describe_metadata, load_lora
from ..emplace.lora.keys import TEXT_ENCODER, TEXT_ENCODER_2, UNET
from .families import model_family
from .file_cache import FileCache

TEXT_ENCODERS = {TEXT_ENCODER, TEXT_ENCODER_2}

_cache: FileCache[Lora] = FileCache(size=1)  # one LoRA in memory, like ComfyUI's LoraLoader


def load_cached(lora_name: str) -> Lora:
    """The converted LoRA for a file in ComfyUI's loras folder; reloaded when the file changes."""
    path = folder_paths.get_full_path("loras", lora_name)
    if path is None:
        raise FileNotFoundError(f"LoRA '{lora_name}' is not in ComfyUI's loras folder")
    return _cache.get(path, load_lora)


def state_dict_for(lora: Lora, components: set[str]) -> dict[str, torch.Tensor]:
    """The kohya tensors of some components only, so ComfyUI reports no 'not loaded' keys for the rest."""
    return {k: v for k, v in lora.state_dict().items()
            if lora.modules[k.split(".", 1)[0]].component in components}


def weight_shapes(key_map: dict[str, str | tuple], state_dict: dict[str, torch.Tensor]) -> dict[str, tuple]:
    """The shape each LoRA layer name patches. ComfyUI maps a DiT's separate q/k/v layers onto a slice of the
    fused weight: (key, (dim, offset, size)[, function]); that layer's shape is the slice's."""
    shapes = {}
    for name, target in key_map.items():
        key, piece = (target, None) if isinstance(target, str) else target[:2]
        if key not in state_dict:
            continue
        shape = list(state_dict[key].shape)
        if piece is not None:
            shape[piece[0]] = piece[2]
        shapes[name] = tuple(shape)
    return shapes


def check_against(lora: Lora, lora_name: str, model=None, clip=None) -> None:
    """Refuse a LoRA that does not fit the MODEL (and the CLIP, when one is given)."""
    targets: dict[str, tuple] = {}
    components: set[str] = set()
    if model is not None:
        check_family(lora, model_family(model), lora_name)
        targets |= weight_shapes(comfy.lora.model_lora_keys_unet(model.model, {}), model.model.state_dict())
        components.add(UNET)
    if clip is not None:
        targets |= weight_shapes(comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {}),
                                 clip.cond_stage_model.state_dict())
        components |= TEXT_ENCODERS
    check_targets(lora, targets, lora_name, components)


def summary(lora: Lora, lora_name: str, skipped: list[str]) -> str:
    unet = sum(m.component == UNET for m in lora.modules.values())
    lines = [f"{lora_name}: {len(lora.modules)} layers ({unet} UNet, {len(lora.modules) - unet} text encoder), "
             f"rank {'/'.join(str(r) for r in sorted(lora.ranks()))}, read as {lora.source_format}, "
             f"scale from {lora.alpha_source}"]
    if skipped:
        lines.append(f"{len(skipped)} layers not applied (no input to patch them, or strength 0)")
    return "\n".join(lines + describe_metadata(lora.metadata))


class EmplaceLoadPreferenceLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EmplaceLoadPreferenceLora",
            display_name="Emplace Load Preference LoRA",
            category="Emplace/LoRA",
            description="Load a preference-tuned (DPO) LoRA in any common form (kohya, PEFT, diffusers) "
                        "through ComfyUI's own LoRA machinery, after checking it fits the model.",
            inputs=[
                io.Model.Input("model"),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras"),
                               tooltip="A .safetensors file in ComfyUI's loras folder."),
                io.Float.Input("strength_model", default=1.0, min=-20.0, max=20.0, step=0.01),
                io.Float.Input("strength_clip", default=1.0, min=-20.0, max=20.0, step=0.01),
                io.Clip.Input("clip", optional=True,
                              tooltip="Connect to apply the LoRA's text-encoder layers too."),
            ],
            outputs=[
                io.Model.Output(),
                io.Clip.Output(),
                io.String.Output("info", tooltip="What was loaded, and the LoRA's training metadata."),
            ],
        )

    @classmethod
    def execute(cls, model, lora_name, strength_model, strength_clip, clip=None) -> io.NodeOutput:
        lora = load_cached(lora_name)
        check_against(lora, lora_name, model, clip)
        components = {UNET} if strength_model != 0 else set()
        if clip is not None and strength_clip != 0:
            components |= TEXT_ENCODERS
        new_model, new_clip = model, clip
        if components:  # at strength 0 the input passes through untouched, bit for bit
            patched_model, patched_clip = comfy.sd.load_lora_for_models(
                model if UNET in components else None, clip if TEXT_ENCODER in components else None,
                state_dict_for(lora, components), strength_model, strength_clip)
            new_model, new_clip = patched_model or model, patched_clip or clip
        skipped = [m.name for m in lora.modules.values() if m.component not in components]
        info = summary(lora, lora_name, skipped)
        return io.NodeOutput(new_model, new_clip, info, ui=ui.PreviewText(info))


class EmplaceRegionalPreferenceLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EmplaceRegionalPreferenceLora",
            display_name="Emplace Regional Preference LoRA",
            category="Emplace/LoRA",
            description="Apply a preference LoRA only inside a mask and only during part of the sampling, "
                        "through conditioning hooks. Outside the mask (and outside the step range) the base "
                        "model's prediction is used as it is.",
            inputs=[
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Mask.Input("mask", tooltip="Where the LoRA applies (1) and where the base model does (0)."),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras")),
                io.Float.Input("strength", default=1.0, min=-20.0, max=20.0, step=0.01),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001),
            ],
            outputs=[io.Conditioning.Output("positive_out", display_name="positive"),
                     io.Conditioning.Output("negative_out", display_name="negative")],
        )

    @classmethod
    def execute(cls, positive, negative, mask, lora_name, strength, start_percent, end_percent) -> io.NodeOutput:
        if start_percent >= end_percent:
            raise ValueError(f"start_percent ({start_percent}) must be below end_percent ({end_percent})")
        if mask.dim() == 2:
            mask = mask.unsqueeze(0)
        if mask.dim() != 3 or not bool((mask > 0).any()):
            raise ValueError("mask is empty or not a MASK: the LoRA would apply nowhere")
        lora = load_cached(lora_name)
        for name, cond in (("positive", positive), ("negative", negative)):
            check_family(lora, cond[0][0].shape[-1], lora_name, model_name=f"the {name} conditioning's model")
            if any("mask" in c[1] or "area" in c[1] for c in cond):
                raise ValueError(f"{name} conditioning already has an area or mask; apply the regional LoRA "
                                 "before setting areas or masks")
        if strength == 0:
            return io.NodeOutput(positive, negative)
        hooks = comfy.hooks.create_hook_lora(state_dict_for(lora, {UNET}), strength_model=strength, strength_clip=0.0)
        return io.NodeOutput(*(regional(c, mask, hooks, (start_percent, end_percent)) for c in (positive, negative)))


def regional(conditioning, mask: torch.Tensor, hooks, steps: tuple[float, float]):
    """The base conditioning fills whatever the mask leaves (ComfyUI's 'default' conds), and a
    LoRA-hooked copy covers the mask during the step range: inside a full mask the prediction
    is the pure LoRA one, outside it the pure base one."""
    base = node_helpers.conditioning_set_values(conditioning, {"default": True})
    region = comfy.hooks.set_conds_props([conditioning], strength=1.0, set_cond_area="default", mask=mask,
                                         hooks=hooks, timesteps_range=steps)[0]
    return base + region
