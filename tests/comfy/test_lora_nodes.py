"""Preference-LoRA nodes inside ComfyUI (in-process, tiny models)."""

from __future__ import annotations

import logging
import pickle

import pytest
import torch

from lora_fixtures import peft_state_dict, write_emplace_lora, write_peft_lora

NOT_LOADED = "lora key not loaded"


@pytest.fixture(scope="module")
def loras(comfy, tiny):
    """An Emplace-written (kohya) LoRA and a PEFT/diffusers-form LoRA of the same layers."""
    sd = peft_state_dict(tiny.model, tiny.clip)
    lora = write_emplace_lora(comfy.loras / "emplace_dpo.safetensors", sd, context_dim=64)
    write_peft_lora(comfy.loras / "peft_dpo.safetensors", sd)
    n_unet = sum(m.component == "unet" for m in lora.modules.values())
    return {"n_unet": n_unet, "n_te": len(lora.modules) - n_unet}


def encode(comfy, clip, text):
    return comfy.nodes.CLIPTextEncode().encode(clip, text)[0]


def sample(comfy, model, positive, negative, steps=4, seed=7):
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    return comfy.nodes.common_ksampler(model, seed, steps, 4.0, "euler", "normal", positive, negative, latent)[0]["samples"]


def run_loader(comfy, tiny, name, strength_model=1.0, strength_clip=1.0, clip=True):
    out = comfy.node["EmplaceLoadPreferenceLora"].execute(
        model=tiny.model, lora_name=name, strength_model=strength_model, strength_clip=strength_clip,
        clip=tiny.clip if clip else None)
    return out.args


def lora_warnings(caplog):
    return [r.getMessage() for r in caplog.records if NOT_LOADED in r.getMessage() or "NOT LOADED" in r.getMessage()]


@pytest.mark.parametrize("name", ["emplace_dpo.safetensors", "peft_dpo.safetensors"])
def test_every_layer_is_patched_and_no_key_is_left_unloaded(comfy, tiny, loras, name, caplog):
    caplog.set_level(logging.WARNING)
    model, clip, info = run_loader(comfy, tiny, name)
    assert len(model.patches) == loras["n_unet"] > 0
    assert len(clip.patcher.patches) == loras["n_te"] > 0
    assert lora_warnings(caplog) == []
    assert f"{loras['n_unet'] + loras['n_te']} layers" in info


def test_the_converted_file_also_loads_fully_through_the_stock_lora_loader(comfy, tiny, loras, caplog):
    caplog.set_level(logging.WARNING)
    model, clip = comfy.nodes.LoraLoader().load_lora(tiny.model, tiny.clip, "emplace_dpo.safetensors", 1.0, 1.0)
    assert len(model.patches) == loras["n_unet"] and len(clip.patcher.patches) == loras["n_te"]
    assert lora_warnings(caplog) == []


def test_the_stock_loader_skips_attention_layers_of_the_unconverted_peft_file(comfy, tiny, loras, caplog):
    # Why the pack converts: this is what users get from ComfyUI on PEFT-named files.
    caplog.set_level(logging.WARNING)
    model, _ = comfy.nodes.LoraLoader().load_lora(tiny.model, tiny.clip, "peft_dpo.safetensors", 1.0, 1.0)
    assert len(model.patches) < loras["n_unet"]
    assert lora_warnings(caplog)


def test_strength_one_changes_the_sample_and_strength_zero_is_bit_identical(comfy, tiny, loras):
    pos, neg = encode(comfy, tiny.clip, "a red cube"), encode(comfy, tiny.clip, "")
    base = sample(comfy, tiny.model, pos, neg)

    model, clip, _ = run_loader(comfy, tiny, "emplace_dpo.safetensors", 1.0, 1.0)
    with_lora = sample(comfy, model, encode(comfy, clip, "a red cube"), encode(comfy, clip, ""))
    assert (with_lora - base).abs().max() > 1e-2

    model, clip, _ = run_loader(comfy, tiny, "emplace_dpo.safetensors", 0.0, 0.0)
    assert model is tiny.model and clip is tiny.clip
    assert torch.equal(sample(comfy, model, encode(comfy, clip, "a red cube"), encode(comfy, clip, "")), base)


def test_the_input_model_is_left_unpatched(comfy, tiny, loras):
    pos, neg = encode(comfy, tiny.clip, "x"), encode(comfy, tiny.clip, "")
    base = sample(comfy, tiny.model, pos, neg, steps=2)
    model, _, _ = run_loader(comfy, tiny, "emplace_dpo.safetensors")
    sample(comfy, model, pos, neg, steps=2)
    # ComfyUI shares the weights between clones; the input's own patch list must stay empty,
    # and sampling with it again must give the base result.
    assert tiny.model.patches == {}
    assert torch.equal(sample(comfy, tiny.model, pos, neg, steps=2), base)


def test_a_lora_for_another_family_is_refused_plainly(comfy, tiny):
    sd = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 2048),
          "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.zeros(32, 4)}
    from safetensors.torch import save_file
    save_file(sd, str(comfy.loras / "sdxl_only.safetensors"))
    # (the pack's classes live in ComfyUI's copy of the package, so match the message, not the class)
    with pytest.raises(ValueError, match=r"made for SDXL \(cross-attention width 2048\), but the MODEL is a "
                                         r"custom model \(cross-attention width 64\)"):
        run_loader(comfy, tiny, "sdxl_only.safetensors")


def test_a_pickle_in_the_loras_folder_is_refused(comfy, tiny):
    (comfy.loras / "old.safetensors").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="is a PyTorch pickle"):
        run_loader(comfy, tiny, "old.safetensors")


def regional(comfy, pos, neg, mask, start=0.0, end=1.0, strength=1.0):
    return comfy.node["EmplaceRegionalPreferenceLora"].execute(
        positive=pos, negative=neg, mask=mask, lora_name="emplace_dpo.safetensors", strength=strength,
        start_percent=start, end_percent=end).args


def test_regional_lora_changes_only_the_masked_region(comfy, tiny, loras):
    pos, neg = encode(comfy, tiny.clip, "a red cube"), encode(comfy, tiny.clip, "")
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1  # left half: latent columns 0-3
    lora_model, _, _ = run_loader(comfy, tiny, "emplace_dpo.safetensors", 1.0, 0.0)

    # One step: every latent pixel is the prediction at that pixel, so the regions are exact.
    base = sample(comfy, tiny.model, pos, neg, steps=1)
    full = sample(comfy, lora_model, pos, neg, steps=1)
    rpos, rneg = regional(comfy, pos, neg, mask)
    region = sample(comfy, tiny.model, rpos, rneg, steps=1)

    torch.testing.assert_close(region[..., 4:], base[..., 4:], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(region[..., :4], full[..., :4], rtol=1e-4, atol=1e-4)
    assert (region[..., :4] - base[..., :4]).abs().max() > 1e-2
    assert tiny.model.patches == {} and "mask" not in pos[0][1]  # inputs untouched


def test_regional_lora_outside_its_step_range_leaves_the_base_model(comfy, tiny, loras):
    pos, neg = encode(comfy, tiny.clip, "a red cube"), encode(comfy, tiny.clip, "")
    mask = torch.ones(1, 64, 64)
    base = sample(comfy, tiny.model, pos, neg, steps=1)
    rpos, rneg = regional(comfy, pos, neg, mask, start=0.5, end=1.0)  # the one step is at 0%
    torch.testing.assert_close(sample(comfy, tiny.model, rpos, rneg, steps=1), base, rtol=1e-5, atol=1e-5)


def test_regional_lora_bad_inputs_get_clear_errors(comfy, tiny, loras):
    pos, neg = encode(comfy, tiny.clip, "x"), encode(comfy, tiny.clip, "")
    with pytest.raises(ValueError, match="mask is empty"):
        regional(comfy, pos, neg, torch.zeros(1, 64, 64))
    with pytest.raises(ValueError, match="start_percent .* must be below end_percent"):
        regional(comfy, pos, neg, torch.ones(1, 64, 64), start=0.8, end=0.2)
