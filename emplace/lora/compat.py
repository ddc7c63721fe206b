"""Does a LoRA fit a model? Family (SD1.5 / SD2 / SDXL / Flux / SD3) and per-layer shape checks.

Both run before anything is patched, so a LoRA for another base model is refused with
a plain sentence instead of a shape error deep in a matrix multiply.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from ..families import FLOW, FLUX, KNOWN, SD3, SDXL, Family, family_for_context_dim, same_base
from .convert import Lora
from .keys import TEXT_ENCODER_2, UNET
from .metadata import family_from_metadata


class LoraMismatchError(ValueError):
    """The LoRA was made for a different model than the one it is applied to."""


# Layer names only one architecture has (kohya form, as the converter writes every LoRA).
_FLUX_LAYERS = ("lora_unet_double_blocks_", "lora_unet_single_blocks_", "lora_transformer_single_transformer_blocks_")
_SD3_LAYERS = ("lora_unet_joint_blocks_",)


def lora_family(lora: Lora) -> Family | None:
    """The base family a LoRA was made for, from its tensors first, then its metadata. A DiT LoRA whose layers
    both Flux and SD3 have (diffusers' transformer_blocks) is told by its metadata, else by the shape check."""
    names = list(lora.modules)
    if any(n.startswith(_FLUX_LAYERS) for n in names):
        return FLUX
    if any(n.startswith(_SD3_LAYERS) for n in names):
        return SD3
    if any(n.startswith("lora_transformer_") for n in names):
        return family_from_metadata(lora.metadata)
    if TEXT_ENCODER_2 in lora.components():
        return SDXL
    for m in lora.modules.values():
        # cross-attention keys and values read the text context: their input width is the family's
        if m.component == UNET and m.name.endswith(("attn2_to_k", "attn2_to_v")):
            return family_for_context_dim(m.down.shape[1])
    return family_from_metadata(lora.metadata)


def check_family(lora: Lora, model: int | Family | None, lora_name: str, model_name: str = "the MODEL") -> None:
    """`model` is the model's Family, or (where only its conditioning is at hand) its context width."""
    lora_fam = lora_family(lora)
    if lora_fam is None or model is None:
        return
    model_fam = family_for_context_dim(model) if isinstance(model, int) else model
    if isinstance(model, int) and lora_fam in FLOW and model_fam not in KNOWN:
        return  # a width tells a DiT LoRA only from the UNets' widths, not Flux from SD3: ComfyUI's patching does
    if not same_base(lora_fam, model_fam):
        raise LoraMismatchError(
            f"LoRA '{lora_name}' was made for {lora_fam.described}, but {model_name} is {model_fam.described}. "
            f"Use a LoRA made for {model_fam.name}, or the {lora_fam.name} model this LoRA was made for.")


def check_targets(lora: Lora, targets: Mapping[str, Sequence[int]], lora_name: str,
                  components: set[str]) -> list[str]:
    """Check every LoRA layer of `components` against the model weight it patches.

    `targets` maps kohya module names to the shape of the weight they patch. Raises
    LoraMismatchError when a layer has no target or the wrong shape; returns the names
    of layers of other components (skipped, e.g. text-encoder layers with no CLIP given).
    """
    missing, wrong, skipped = [], [], []
    for m in lora.modules.values():
        if m.component not in components:
            skipped.append(m.name)
            continue
        shape = targets.get(m.name)
        if shape is None:
            missing.append(m.name)
            continue
        out_dim, in_numel = m.up.shape[0], math.prod(m.down.shape[1:])
        if len(shape) < 2 or shape[0] != out_dim or math.prod(shape[1:]) != in_numel:
            wrong.append(f"{m.name}: LoRA {out_dim}x{in_numel}, model {tuple(shape)}")
    if missing:
        raise LoraMismatchError(
            f"LoRA '{lora_name}': {len(missing)} of {len(lora.modules)} layers match no layer of the model "
            f"(first: {', '.join(missing[:3])}). It was made for a different model architecture.")
    if wrong:
        raise LoraMismatchError(
            f"LoRA '{lora_name}': {len(wrong)} layers do not fit the model's weights "
            f"({'; '.join(wrong[:3])}). It was made for a different base model.")
    return skipped
