"""What every LoRA-training command shares: which layers get a LoRA, the LoRA's parameters as one
checkpointable unit, and writing the result in the kohya form ComfyUI loads fully, with metadata."""

from __future__ import annotations

from pathlib import Path

import torch

# Layer names as diffusers calls them; a name a model lacks is skipped (add_* and ff_context are the DiTs' text
# stream, proj_mlp Flux's single blocks).
_ATTENTION = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
_FEED_FORWARD = ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp"]
TARGETS = {
    "attention": _ATTENTION,
    "attention+ff": _ATTENTION + _FEED_FORWARD,
    "all": _ATTENTION + _FEED_FORWARD + ["proj_in", "proj_out", "conv1", "conv2"],
}
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


class TrainableParameters:
    """The LoRA parameters as one checkpointable unit."""

    def __init__(self, module: torch.nn.Module):
        self.params = {n: p for n, p in module.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict:
        return {n: p.detach().clone() for n, p in self.params.items()}

    def load_state_dict(self, sd: dict) -> None:
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(sd[n])


def add_lora(module: torch.nn.Module, rank: int, alpha: float, targets: list[str]) -> TrainableParameters:
    """A fresh LoRA (peft, Gaussian down, zero up: the module is unchanged at first) on `targets`."""
    from peft import LoraConfig

    module.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets))
    return TrainableParameters(module)


def save_trained_lora(path: Path, modules: dict[str, torch.nn.Module], rank: int, alpha: float, record):
    """The LoRAs of `modules` (prefix -> module: "unet", "text_encoder", "text_encoder_2") written to
    `path` in the kohya form with an alpha on every layer and `record`'s metadata; returns the Lora."""
    from peft.utils import get_peft_model_state_dict

    from emplace.lora import build_metadata, save_lora, to_kohya

    peft_sd = {f"{prefix}.{k}": v for prefix, m in modules.items() for k, v in get_peft_model_state_dict(m).items()}
    lora = to_kohya(peft_sd, {"r": rank, "lora_alpha": alpha}, what="trained LoRA")
    save_lora(path, lora, build_metadata(record))
    return lora
