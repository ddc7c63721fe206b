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



@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_a_trained_flux_or_sd3_lora_patches_every_layer_through_both_loaders(comfy, tmp_path, caplog, kind):
    """The trainer's DiT LoRA on ComfyUI's own model: SD3 is the same transformer loaded by the stock UNETLoader;
    Flux is built from ComfyUI's classes with the same shapes (0.3.64's loader infers only full-width Flux)."""
    import folder_paths
    from comfy.model_base import SD3
    from emplace.files import save_image, write_jsonl
    from emplace.lora import load_lora
    from emplace.testing.tiny_dit import write_tiny_flux, write_tiny_sd3
    from trainer.dpo import DPOConfig, train

    folder = (write_tiny_flux if kind == "flux" else write_tiny_sd3)(tmp_path / kind)
    data = tmp_path / "pairs"
    save_image(torch.zeros(3, 64, 64), data / "w.png")
    save_image(torch.ones(3, 64, 64), data / "l.png")
    write_jsonl(data / "pairs.jsonl", [{"prompt": "x", "winner": "w.png", "loser": "l.png"}])
    name = f"trained_{kind}_dpo.safetensors"
    train(DPOConfig(model=folder, data=data, output=comfy.loras / name, work=tmp_path / "work", steps=2, lr=1e-3,
                    rank=4, resolution=64, targets="all"))
    if kind == "sd3":  # as a user holds it: the transformer alone, in models/diffusion_models
        models = tmp_path / "diffusion_models"
        models.mkdir()
        (models / "tiny_sd3.safetensors").symlink_to(folder / "transformer" / "diffusion_pytorch_model.safetensors")
        folder_paths.add_model_folder_path("diffusion_models", str(models))
        (model,) = comfy.nodes.UNETLoader().load_unet("tiny_sd3.safetensors", "default")
        assert isinstance(model.model, SD3)
    else:
        from tiny_flux import tiny_flux

        model = tiny_flux(vec_in_dim=64, mlp_ratio=4.0)

    caplog.set_level(logging.WARNING)
    (stock,) = comfy.nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, 1.0)
    pack, _, info = comfy.node["EmplaceLoadPreferenceLora"].execute(
        model=model, lora_name=name, strength_model=1.0, strength_clip=0.0, clip=None).args
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()]
    layers = len(load_lora(comfy.loras / name).modules)
    assert f"{name}: {layers} layers" in info and "method: dpo" in info
    # one patch per trained layer (q, k and v on slices of one fused weight), the same through both loaders
    assert sum(len(p) for p in stock.patches.values()) == sum(len(p) for p in pack.patches.values()) == layers
    assert set(stock.patches) == set(pack.patches)



def test_the_trainer_reads_an_sd3_transformer_saved_in_comfyuis_own_form(comfy, tmp_path):
    """An SD3 transformer as ComfyUI holds it (MMDiT names: joint_blocks, fused qkv) becomes diffusers' layers.
    (Flux's BFL form converts through the same diffusers code, which assumes Flux's full 3072 width: not testable
    on a tiny Flux.)"""
    from safetensors.torch import save_file
    from tiny_flux import tiny_sd3

    from emplace.diffusion import load_backend
    from emplace.testing.tiny_dit import write_tiny_sd3

    weights = {k: v.contiguous() for k, v in tiny_sd3(seed=5).model.diffusion_model.state_dict().items()}
    save_file(weights, str(tmp_path / "sd3-tiny.safetensors"))
    backend = load_backend(tmp_path / "sd3-tiny.safetensors", 64, write_tiny_sd3(tmp_path / "config"))
    t = backend.unet
    assert backend.family.key == "sd3"
    torch.testing.assert_close(t.pos_embed.proj.weight, weights["x_embedder.proj.weight"])
    q, k, v = weights["joint_blocks.0.x_block.attn.qkv.weight"].chunk(3)
    torch.testing.assert_close(t.transformer_blocks[0].attn.to_k.weight, k)
