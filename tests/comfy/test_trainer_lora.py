"""A LoRA made by `python -m trainer dpo` (UNet and text encoder) loads fully in ComfyUI, through the stock
loader and the pack's."""

from __future__ import annotations

import logging

import pytest
import torch

pytestmark = pytest.mark.slow  # a whole training run


def test_a_trained_lora_patches_every_layer_of_the_matching_comfy_model(comfy, tiny, tmp_path, caplog):
    from emplace.files import save_image, write_jsonl
    from emplace.testing.tiny_sd import write_tiny_sd
    from trainer.dpo import DPOConfig, train

    # a diffusers UNet with the tiny ComfyUI model's layers (32/64 channels, attention at both levels, context 64)
    model = write_tiny_sd(tmp_path / "sd", text_width=64, norm_num_groups=32,
                          down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                          up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    data = tmp_path / "pairs"
    save_image(torch.zeros(3, 32, 32), data / "w.png")
    save_image(torch.ones(3, 32, 32), data / "l.png")
    write_jsonl(data / "pairs.jsonl", [{"prompt": "x", "winner": "w.png", "loser": "l.png"}])
    output = comfy.loras / "trained_dpo.safetensors"
    config = DPOConfig(model=model, data=data, output=output, work=tmp_path / "work", steps=2, lr=1e-3, rank=4,
                       resolution=32, targets="attention+ff", train_text_encoder=True)
    train(config)

    caplog.set_level(logging.WARNING)
    stock, stock_clip = comfy.nodes.LoraLoader().load_lora(tiny.model, tiny.clip, "trained_dpo.safetensors", 1.0, 1.0)
    pack, pack_clip, _ = comfy.node["EmplaceLoadPreferenceLora"].execute(
        model=tiny.model, lora_name="trained_dpo.safetensors", strength_model=1.0, strength_clip=1.0,
        clip=tiny.clip).args
    from emplace.lora import load_lora

    modules = load_lora(output).modules
    n_unet = sum(name.startswith("lora_unet_") for name in modules)
    n_text = sum(name.startswith("lora_te_") for name in modules)
    assert n_unet > 0 and n_text > 0 and n_unet + n_text == len(modules)
    assert len(stock.patches) == len(pack.patches) == n_unet
    assert len(stock_clip.patcher.patches) == len(pack_clip.patcher.patches) == n_text
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()]

