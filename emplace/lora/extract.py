"""Extract a LoRA from the difference of two full models (truncated SVD per layer, as kohya's extractor does).

The published Diffusion-DPO SD1.5/SDXL weights are full UNets; their difference from the base
UNet, kept to rank r per layer, is a LoRA that ComfyUI can apply at any strength.
For each weight W (linear [out, in] or conv [out, in, kh, kw]): D = W_tuned - W_base,
D ~ U_r S_r V_r^T, up = U_r S_r, down = V_r^T, alpha = r (scale 1). The relative error kept
is ||D - up down|| / ||D||.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .convert import Lora, LoraModule
from .keys import UNET, LoraKey, kohya_name


@dataclass
class ExtractedLayer:
    name: str
    relative_error: float
    rank: int


def extract_lora(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], rank: int,
                 min_change: float = 1e-8) -> tuple[Lora, list[ExtractedLayer]]:
    """base and tuned: UNet state dicts with the same keys (diffusers or LDM names)."""
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    missing = sorted(k for k in base if k.endswith(".weight") and k not in tuned)
    if missing and len(missing) == len([k for k in base if k.endswith(".weight")]):
        raise ValueError("the tuned and base UNets share no weight names: are they the same architecture?")
    modules: dict[str, LoraModule] = {}
    report: list[ExtractedLayer] = []
    for key, w_base in base.items():
        if not key.endswith(".weight") or w_base.dim() not in (2, 4) or key not in tuned:
            continue
        w_tuned = tuned[key]
        if w_tuned.shape != w_base.shape:
            raise ValueError(f"'{key}' is {tuple(w_base.shape)} in the base but {tuple(w_tuned.shape)} in the tuned "
                             "model: they are different architectures")
        diff = (w_tuned.float() - w_base.float()).flatten(1)
        norm = diff.norm()
        if norm <= min_change * max(w_base.float().norm(), 1.0):
            continue
        u, s, vh = torch.linalg.svd(diff, full_matrices=False)
        r = min(rank, s.numel())
        up, down = u[:, :r] * s[:r], vh[:r]
        error = float((diff - up @ down).norm() / norm)
        path = key[: -len(".weight")]
        if path.startswith("model.diffusion_model."):
            path = path[len("model."):]
        name = kohya_name(LoraKey(UNET, path, "down"), sdxl_text_encoders=False)
        if w_base.dim() == 4:
            down = down.reshape(r, *w_base.shape[1:])
            up = up.reshape(w_base.shape[0], r, 1, 1)
        modules[name] = LoraModule(name, UNET, down.contiguous(), up.contiguous(), float(r))
        report.append(ExtractedLayer(name, error, r))
    if not modules:
        raise ValueError("the tuned UNet does not differ from the base: nothing to extract")
    return Lora(modules, {}, "extracted", "file"), report
