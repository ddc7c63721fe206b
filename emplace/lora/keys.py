"""LoRA key names: the many forms LoRA files use, parsed into one description.

ComfyUI maps every layer of the kohya form for SD1.5/SDXL:

    lora_unet_<diffusers module path, dots as underscores>.lora_down.weight / .lora_up.weight / .alpha
    lora_te_ / lora_te1_ / lora_te2_<text encoder module path>...

but skips the attention layers of the PEFT/diffusers form (`unet.…attn1.to_q.lora_A.weight`).
So every LoRA Emplace writes or hands to ComfyUI is in the kohya form, and this module
parses the other forms:

- PEFT / diffusers >= 0.27: `[base_model.model.][unet.|text_encoder.|text_encoder_2.]<path>.lora_A[.<adapter>].weight`
- diffusers LoRACompatible layers: `unet.<path>.lora.down.weight` / `.lora.up.weight`
- diffusers attention processors: `unet.<…>.attn1.processor.to_q_lora.down.weight` (to_out_lora is to_out.0)
- LDM (original checkpoint) paths: `diffusion_model.<path>.lora_A.weight` or `.lora_down.weight`
- kohya itself, passed through.

Flux and SD3 (DiTs): ComfyUI maps kohya/sd-scripts' `lora_unet_<BFL or MMDiT path>` (`double_blocks_0_img_attn_qkv`,
`joint_blocks_0_x_block_attn_qkv`) and OneTrainer's `lora_transformer_<diffusers path>`, each split q/k/v onto its
slice of the fused weight. So a diffusers-named DiT layer (`transformer.transformer_blocks.0.attn.to_q`, as diffusers,
SimpleTuner and ai-toolkit write it, or PEFT's bare `transformer_blocks.0...`) becomes `lora_transformer_...`, and a
BFL/MMDiT-named one (`diffusion_model.double_blocks.0...`) `lora_unet_...`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Which model part a LoRA layer patches, and the kohya prefix for it.
UNET = "unet"
TEXT_ENCODER = "text_encoder"
TEXT_ENCODER_2 = "text_encoder_2"

KOHYA_PREFIXES = {"lora_unet_": UNET, "lora_transformer_": UNET, "lora_te_": TEXT_ENCODER,
                  "lora_te1_": TEXT_ENCODER, "lora_te2_": TEXT_ENCODER_2}
DIT_DIFFUSERS_PREFIX = "lora_transformer_"  # what ComfyUI maps for a diffusers-named Flux / SD3 layer
_DIT_DIFFUSERS_PATH = re.compile(r"^(single_)?transformer_blocks\.\d")  # a DiT's, never a UNet's (theirs nest)

DOWN, UP, ALPHA = "down", "up", "alpha"


@dataclass(frozen=True)
class LoraKey:
    component: str  # UNET, TEXT_ENCODER or TEXT_ENCODER_2
    module: str  # the module path with dots (diffusers or LDM naming), or the kohya stem
    part: str  # DOWN, UP or ALPHA
    kohya_stem: bool = False  # module is already a kohya stem (underscored), not a dotted path


class UnsupportedLoraKey(ValueError):
    pass


_PART_SUFFIXES = [
    (re.compile(r"^(?P<m>.+)\.lora_A(\.[A-Za-z0-9_-]+)?\.weight$"), DOWN),
    (re.compile(r"^(?P<m>.+)\.lora_B(\.[A-Za-z0-9_-]+)?\.weight$"), UP),
    (re.compile(r"^(?P<m>.+)\.lora\.down\.weight$"), DOWN),
    (re.compile(r"^(?P<m>.+)\.lora\.up\.weight$"), UP),
    (re.compile(r"^(?P<m>.+)\.lora_down\.weight$"), DOWN),
    (re.compile(r"^(?P<m>.+)\.lora_up\.weight$"), UP),
    (re.compile(r"^(?P<m>.+)\.alpha$"), ALPHA),
]
_ATTN_PROCESSOR = re.compile(r"^(?P<attn>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<p>down|up)\.weight$")
_UNSUPPORTED = {
    "lora_magnitude_vector": "DoRA layers (lora_magnitude_vector) are not supported",
    "dora_scale": "DoRA layers (dora_scale) are not supported",
    ".lora_B.bias": "LoRA layers with a bias (lora_B.bias) are not supported",
    "hada_": "LoHa layers are not supported",
    "lokr_": "LoKr layers are not supported",
}


def parse_key(key: str) -> LoraKey:
    """Describe one tensor name of a LoRA file, or raise UnsupportedLoraKey."""
    for marker, why in _UNSUPPORTED.items():
        if marker in key:
            raise UnsupportedLoraKey(f"{why} (key '{key}')")
    for prefix, component in KOHYA_PREFIXES.items():
        if key.startswith(prefix):
            stem, part = _split_part(key)
            return LoraKey(component, stem, part, kohya_stem=True)

    m = _ATTN_PROCESSOR.match(key)
    if m:
        proj = "to_out.0" if m["proj"] == "to_out" else m["proj"]
        component, path = _split_component(f"{m['attn']}.{proj}")
        return LoraKey(component, path, DOWN if m["p"] == "down" else UP)

    module, part = _split_part(key)
    component, path = _split_component(module)
    return LoraKey(component, path, part)


def _split_part(key: str) -> tuple[str, str]:
    for pattern, part in _PART_SUFFIXES:
        m = pattern.match(key)
        if m:
            return m["m"], part
    raise UnsupportedLoraKey(f"'{key}' is not a LoRA tensor name that Emplace knows "
                             "(expected lora_A/lora_B, lora_down/lora_up, lora.down/lora.up or alpha)")


def _split_component(module: str) -> tuple[str, str]:
    if module.startswith("base_model.model."):
        module = module[len("base_model.model."):]
    for prefix, component in (("unet.", UNET), ("text_encoder_2.", TEXT_ENCODER_2),
                              ("text_encoder.", TEXT_ENCODER)):
        if module.startswith(prefix):
            path = module[len(prefix):]
            return component, path if component == UNET else _text_model_path(path)
    if module.startswith(("text_model.", "encoder.layers.")):  # a text encoder LoRA saved on its own
        return TEXT_ENCODER, _text_model_path(module)
    return UNET, module


def _text_model_path(path: str) -> str:
    # transformers 5 dropped CLIPTextModel's `text_model.` level; LoRA names (and ComfyUI) keep it
    return path if path.startswith("text_model.") else f"text_model.{path}"


def kohya_name(key: LoraKey, sdxl_text_encoders: bool, dit_diffusers: bool = False) -> str:
    """The kohya module name (without .lora_down.weight) for a parsed key; `dit_diffusers`: the file is a
    diffusers-named Flux / SD3 LoRA (`is_dit_diffusers`), so even its top-level layers (proj_out) are the DiT's."""
    if key.component == UNET:
        prefix = "lora_unet_"
    elif key.component == TEXT_ENCODER_2:
        prefix = "lora_te2_"
    else:
        prefix = "lora_te1_" if sdxl_text_encoders else "lora_te_"
    if key.kohya_stem:
        if key.module.startswith(DIT_DIFFUSERS_PREFIX):
            return key.module
        for p in KOHYA_PREFIXES:
            if key.module.startswith(p):
                return prefix + key.module[len(p):]
    module = key.module
    if module.startswith("diffusion_model."):  # LDM paths: ComfyUI maps lora_unet_<ldm path> too
        module = module[len("diffusion_model."):]
    elif key.component == UNET and (dit_diffusers or module.startswith("transformer.")):
        return DIT_DIFFUSERS_PREFIX + module.removeprefix("transformer.").replace(".", "_")
    return prefix + module.replace(".", "_")


def is_dit_diffusers(keys: list[LoraKey]) -> bool:
    """Are these a diffusers-named Flux / SD3 LoRA? Its bare paths (PEFT's) hold transformer_blocks.N at the top."""
    return any(k.component == UNET and not k.kohya_stem and _DIT_DIFFUSERS_PATH.match(k.module.removeprefix("transformer."))
               for k in keys)


def kohya_tensor_name(module: str, part: str) -> str:
    return {DOWN: f"{module}.lora_down.weight", UP: f"{module}.lora_up.weight", ALPHA: f"{module}.alpha"}[part]
