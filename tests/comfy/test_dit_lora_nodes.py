"""Flux and SD3 LoRAs in every common naming, through the pack's loader and ComfyUI's (in-process, tiny DiTs).

The LoRA layers come from the real tools' naming: PEFT adapters on diffusers' own Flux / SD3 transformers (what
diffusers, SimpleTuner and ai-toolkit save, with the `transformer.` prefix, and PEFT's bare `base_model.model.`
form), OneTrainer's `lora_transformer_` form of the same layers, and kohya/sd-scripts' `lora_unet_` form (and
ComfyUI's `diffusion_model.` form) of the original (BFL / MMDiT) layers, with shapes read from ComfyUI's model.
"""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

NOT_LOADED = "lora key not loaded"
RANK = 4
FORMS = ("diffusers", "peft", "onetrainer", "kohya", "comfy")


def comfy_dit(kind: str):
    from tiny_flux import tiny_flux, tiny_sd3

    return tiny_flux(vec_in_dim=64, mlp_ratio=4.0) if kind == "flux" else tiny_sd3()


def diffusers_dit(kind: str):
    """diffusers' own transformer with the tiny ComfyUI model's shapes."""
    if kind == "flux":
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                      attention_head_dim=128, num_attention_heads=1, joint_attention_dim=64,
                                      pooled_projection_dim=64, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(patch_size=2, in_channels=16, num_layers=2, attention_head_dim=64,
                                 num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=128,
                                 pooled_projection_dim=64, out_channels=16, pos_embed_max_size=32)


def seeded(shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.1


def peft_layers(kind: str) -> dict[str, torch.Tensor]:
    """lora_A / lora_B of a PEFT adapter on every attention and feed-forward layer, bare module paths."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    model = diffusers_dit(kind)
    targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
               "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]
    if kind == "flux":
        targets += ["proj_mlp", "proj_out"]
    model.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=targets, init_lora_weights=False))
    sd = get_peft_model_state_dict(model)
    return {k: seeded(v.shape, i) for i, (k, v) in enumerate(sorted(sd.items()))}


def original_layers(model) -> dict[str, tuple]:
    """The 2-D weights of ComfyUI's DiT blocks (BFL / MMDiT names) and their shapes."""
    return {k[len("diffusion_model."):-len(".weight")]: tuple(v.shape) for k, v in model.model.state_dict().items()
            if k.endswith(".weight") and v.dim() == 2 and ("blocks." in k)}


def write_form(path, kind: str, form: str, model) -> int:
    """A LoRA file in one naming; returns its number of layers."""
    if form in ("diffusers", "peft", "onetrainer"):
        layers = peft_layers(kind)
        if form == "diffusers":  # diffusers' save_lora_weights, SimpleTuner and ai-toolkit
            sd = {f"transformer.{k}": v for k, v in layers.items()}
        elif form == "peft":  # PeftModel.save_pretrained of the transformer
            sd = {f"base_model.model.{k}": v for k, v in layers.items()}
        else:  # OneTrainer: underscored diffusers paths, kohya's down/up/alpha
            sd = {}
            for k, v in layers.items():
                module, part = k.rsplit(".lora_", 1)
                stem = "lora_transformer_" + module.replace(".", "_")
                sd[f"{stem}.lora_{'down' if part.startswith('A') else 'up'}.weight"] = v
                sd[f"{stem}.alpha"] = torch.tensor(float(RANK))
        save_file(sd, str(path))
        return len(layers) // 2
    sd = {}
    for i, (module, (out_dim, in_dim)) in enumerate(original_layers(model).items()):
        if form == "kohya":  # kohya/sd-scripts
            stem = "lora_unet_" + module.replace(".", "_")
            sd[f"{stem}.lora_down.weight"], sd[f"{stem}.lora_up.weight"] = seeded((RANK, in_dim), i), seeded((out_dim, RANK), -i)
            sd[f"{stem}.alpha"] = torch.tensor(float(RANK))
        else:  # ComfyUI's own trainer: original paths under diffusion_model., PEFT's A/B
            sd[f"diffusion_model.{module}.lora_A.weight"] = seeded((RANK, in_dim), i)
            sd[f"diffusion_model.{module}.lora_B.weight"] = seeded((out_dim, RANK), -i)
    save_file(sd, str(path))
    return len(original_layers(model))


def weights(model) -> dict[str, torch.Tensor]:
    """The diffusion model's weights with every patch applied."""
    model = model.clone()
    model.patch_model()
    try:
        return {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    finally:
        model.unpatch_model()


def load(comfy, model, name, strength=1.0):
    out = comfy.node["EmplaceLoadPreferenceLora"].execute(model=model, lora_name=name, strength_model=strength,
                                                          strength_clip=0.0, clip=None)
    return out.args[0], out.args[2]


@pytest.fixture(scope="module", params=["flux", "sd3"])
def dit(request, comfy):
    return request.param, comfy_dit(request.param)


def warnings_in(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if NOT_LOADED in r.getMessage() or "NOT LOADED" in r.getMessage()]


@pytest.mark.parametrize("form", FORMS)
def test_every_layer_of_every_naming_is_patched_with_nothing_left_unloaded(comfy, dit, form, caplog):
    kind, model = dit
    name = f"{kind}_{form}.safetensors"
    layers = write_form(comfy.loras / name, kind, form, model)
    caplog.set_level(logging.WARNING)
    patched, info = load(comfy, model, name)
    assert warnings_in(caplog) == []
    assert f"{name}: {layers} layers" in info
    before, after = weights(model), weights(patched)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # each file's layers land on distinct ComfyUI weights: q, k and v share one fused weight
    assert changed and all(k.endswith(".weight") for k in changed)
    if form in ("kohya", "comfy"):
        assert len(changed) == layers  # one ComfyUI weight per original layer: every one patched
    same, _ = load(comfy, model, name, strength=0.0)
    assert same is model  # strength 0: the input, untouched


@pytest.mark.parametrize("form", ["diffusers", "onetrainer", "kohya", "comfy"])
def test_the_pack_and_comfyuis_stock_loader_patch_the_same_weights(comfy, dit, form, caplog):
    from comfy.sd import load_lora_for_models
    from comfy.utils import load_torch_file

    kind, model = dit
    name = f"{kind}_{form}.safetensors"
    write_form(comfy.loras / name, kind, form, model)
    pack, _ = load(comfy, model, name)
    caplog.set_level(logging.WARNING)
    stock, _ = load_lora_for_models(model, None, load_torch_file(str(comfy.loras / name)), 1.0, 0.0)
    assert warnings_in(caplog) == []  # ComfyUI maps these forms itself
    ours, theirs = weights(pack), weights(stock)
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-5, atol=1e-6)


def test_a_lora_for_another_architecture_is_refused_by_name(comfy, tmp_path):
    from tiny_comfy import tiny_model

    flux, sd3 = comfy_dit("flux"), comfy_dit("sd3")
    write_form(comfy.loras / "flux_kohya.safetensors", "flux", "kohya", flux)
    write_form(comfy.loras / "sd3_kohya.safetensors", "sd3", "kohya", sd3)
    write_form(comfy.loras / "flux_diffusers.safetensors", "flux", "diffusers", flux)
    with pytest.raises(ValueError, match="made for Flux, but the MODEL is SD3"):
        load(comfy, sd3, "flux_kohya.safetensors")
    with pytest.raises(ValueError, match="made for Flux, but the MODEL is SD3"):
        load(comfy, sd3, "flux_diffusers.safetensors")
    with pytest.raises(ValueError, match="made for SD3, but the MODEL is Flux"):
        load(comfy, flux, "sd3_kohya.safetensors")
    with pytest.raises(ValueError, match="made for Flux, but the MODEL is a custom model"):
        load(comfy, tiny_model(), "flux_kohya.safetensors")


def text(seed: int) -> list:
    """A CONDITIONING as the DiT's text encoders give it, at the tiny models' 64-wide context and pooled output."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 8, 64, generator=g), {"pooled_output": torch.randn(1, 64, generator=g)}]]


def one_step(comfy, model, positive, negative) -> torch.Tensor:
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    return comfy.nodes.common_ksampler(model, 7, 1, 1.0, "euler", "simple", positive, negative, latent)[0]["samples"]


@pytest.mark.parametrize("form", ["diffusers", "kohya"])
def test_a_regional_dit_lora_changes_only_the_masked_region(comfy, dit, form, caplog):
    kind, model = dit
    caplog.set_level(logging.WARNING)
    name = f"{kind}_{form}.safetensors"
    write_form(comfy.loras / name, kind, form, model)
    positive, negative = text(1), text(2)
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1  # the left half: latent columns 0-3, whole 2x2 patches
    lora_model, _ = load(comfy, model, name)
    # one step: every latent pixel is the prediction at that pixel, so the regions are exact
    base, full = one_step(comfy, model, positive, negative), one_step(comfy, lora_model, positive, negative)
    rpos, rneg = comfy.node["EmplaceRegionalPreferenceLora"].execute(
        positive=positive, negative=negative, mask=mask, lora_name=name, strength=1.0, start_percent=0.0,
        end_percent=1.0).args
    region = one_step(comfy, model, rpos, rneg)
    torch.testing.assert_close(region[..., 4:], base[..., 4:], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(region[..., :4], full[..., :4], rtol=1e-4, atol=1e-4)
    assert (region[..., :4] - base[..., :4]).abs().max() > 1e-3
    assert warnings_in(caplog) == []  # the hook patched every layer too
