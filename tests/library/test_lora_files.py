"""LoRA files: every common form converts to the kohya form with the same weight update."""

import json
import math
import pickle

import pytest
import torch
from safetensors.torch import save_file

from emplace.families import FLUX, FLUX_FILL, SD15, SDXL
from emplace.lora import (LoraFormatError, LoraMismatchError, TrainingRecord, build_metadata,
                          check_family, check_targets, describe_metadata, emplace_fields, load_lora,
                          lora_family, save_lora, to_kohya)
from emplace.testing.tiny_models import randomise_lora_, tiny_text_encoder, tiny_unet
from emplace.weights import WeightsFileError, read_metadata

ATTN = ["to_q", "to_k", "to_v", "to_out.0"]


def peft_unet(rank=4, alpha=8, **config):
    """A tiny UNet with a PEFT LoRA of random weights; returns (model, LoraConfig)."""
    from peft import LoraConfig

    unet = tiny_unet()
    lora_config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=ATTN + ["conv1", "proj_in"], **config)
    unet.add_adapter(lora_config)
    randomise_lora_(unet)
    return unet, lora_config


def merged_weights(peft_model):
    """The weights PEFT itself computes when merging the adapter, by module path."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
            out[name] = module.get_base_layer().weight.detach().clone()
            module.unmerge()
    return out


def assert_same_update(lora, peft_model, base_model):
    merged = merged_weights(peft_model)
    base = dict(base_model.named_modules())
    assert len(lora.modules) == len(merged)
    for path, want in merged.items():
        m = lora.modules["lora_unet_" + path.replace(".", "_")]
        got = base[path].weight.detach() + m.delta()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def config_json(lora_config) -> dict:
    d = lora_config.to_dict()
    return json.loads(json.dumps(d, default=lambda v: sorted(v) if isinstance(v, set) else str(v)))


def test_peft_save_pretrained_folder_converts_with_exact_scale(tmp_path):
    from peft import get_peft_model_state_dict

    unet, cfg = peft_unet(rank=4, alpha=8)
    sd = {f"base_model.model.{k}": v for k, v in get_peft_model_state_dict(unet).items()}
    save_file(sd, tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text(json.dumps(config_json(cfg)))

    lora = load_lora(tmp_path / "adapter_model.safetensors")

    assert lora.source_format == "peft" and lora.alpha_source == "adapter config"
    assert {m.alpha for m in lora.modules.values()} == {8.0}
    assert_same_update(lora, unet, tiny_unet())


def test_diffusers_save_lora_weights_with_adapter_metadata(tmp_path):
    from diffusers import StableDiffusionPipeline
    from peft import get_peft_model_state_dict

    unet, cfg = peft_unet(rank=4, alpha=2, rank_pattern={"conv1": 2}, alpha_pattern={"to_k": 6})
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=get_peft_model_state_dict(unet), unet_lora_adapter_metadata=cfg.to_dict())

    lora = load_lora(tmp_path / "pytorch_lora_weights.safetensors")

    assert any(k.startswith("unet.") for k in read_safetensor_keys(tmp_path / "pytorch_lora_weights.safetensors"))
    assert lora.ranks() == {2, 4}
    assert_same_update(lora, unet, tiny_unet())


def test_rslora_scale_is_alpha_over_sqrt_rank():
    from peft import get_peft_model_state_dict

    unet, cfg = peft_unet(rank=4, alpha=8, use_rslora=True)
    lora = to_kohya(get_peft_model_state_dict(unet), config_json(cfg))
    assert {m.scale for m in lora.modules.values()} == {8 / math.sqrt(4)}
    assert_same_update(lora, unet, tiny_unet())


def test_without_any_config_the_scale_is_one_as_in_diffusers():
    down, up = torch.randn(4, 32), torch.randn(32, 4)
    lora = to_kohya({"unet.mid_block.attentions.0.proj_in.lora_A.weight": down,
                     "unet.mid_block.attentions.0.proj_in.lora_B.weight": up})
    (m,) = lora.modules.values()
    assert m.name == "lora_unet_mid_block_attentions_0_proj_in" and m.scale == 1.0
    assert lora.alpha_source == "none (scale 1.0)"


def test_older_diffusers_forms_map_to_the_same_kohya_names():
    down, up, alpha = torch.randn(2, 8), torch.randn(8, 2), torch.tensor(1.0)
    attn = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    forms = {
        "lora.down": {f"unet.{attn}.to_out.0.lora.down.weight": down, f"unet.{attn}.to_out.0.lora.up.weight": up,
                      f"unet.{attn}.to_out.0.alpha": alpha},
        "attn processors": {f"unet.{attn}.processor.to_out_lora.down.weight": down,
                            f"unet.{attn}.processor.to_out_lora.up.weight": up, f"unet.{attn}.to_out.0.alpha": alpha},
        "kohya": {f"lora_unet_{attn.replace('.', '_')}_to_out_0.lora_down.weight": down,
                  f"lora_unet_{attn.replace('.', '_')}_to_out_0.lora_up.weight": up,
                  f"lora_unet_{attn.replace('.', '_')}_to_out_0.alpha": alpha},
    }
    for form, sd in forms.items():
        lora = to_kohya(sd)
        assert list(lora.modules) == [f"lora_unet_{attn.replace('.', '_')}_to_out_0"], form
        assert lora.modules[list(lora.modules)[0]].scale == 0.5, form


def test_text_encoder_layers_get_te_prefixes_and_sdxl_gets_te1_te2():
    from peft import LoraConfig, get_peft_model_state_dict

    te = tiny_text_encoder()
    te.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
    te_sd = get_peft_model_state_dict(te)

    sd15 = to_kohya({f"text_encoder.{k}": v for k, v in te_sd.items()})
    assert all(n.startswith("lora_te_text_model_encoder_layers_") for n in sd15.modules)
    sdxl = to_kohya({**{f"text_encoder.{k}": v for k, v in te_sd.items()},
                     **{f"text_encoder_2.{k}": v for k, v in te_sd.items()}})
    assert {n.split("text_model")[0] for n in sdxl.modules} == {"lora_te1_", "lora_te2_"}
    assert lora_family(sdxl) is SDXL


def test_saved_file_is_kohya_with_alpha_on_every_layer_and_metadata(tmp_path):
    from peft import get_peft_model_state_dict

    unet, cfg = peft_unet(rank=4, alpha=8)
    lora = to_kohya(get_peft_model_state_dict(unet), config_json(cfg))
    record = TrainingRecord(method="mask-dpo", family=SD15, resolution=512, rank=4, alpha=8, beta=2500,
                            steps=1000, data_summary="200 pairs")
    save_lora(tmp_path / "out.safetensors", lora, build_metadata(record))

    keys = read_safetensor_keys(tmp_path / "out.safetensors")
    layers = {k.rsplit(".", 2)[0] for k in keys if k.endswith(".lora_down.weight")}
    assert all(k.startswith("lora_unet_") for k in keys)
    assert {f"{layer}.alpha" for layer in layers} <= set(keys)
    meta = read_metadata(tmp_path / "out.safetensors")
    assert emplace_fields(meta)["method"] == "mask-dpo" and emplace_fields(meta)["beta"] == "2500"
    assert "diffusers beta_dpo / 2" in emplace_fields(meta)["beta_convention"]
    assert meta["ss_network_dim"] == "4" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert "method: mask-dpo" in describe_metadata(meta)

    again = load_lora(tmp_path / "out.safetensors")
    assert again.source_format == "kohya"
    for name, m in lora.modules.items():
        torch.testing.assert_close(again.modules[name].delta(), m.delta())


def test_family_is_read_from_cross_attention_width_and_mismatch_is_explained():
    sd = {"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 2048),
          "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.zeros(64, 4)}
    lora = to_kohya(sd)
    assert lora_family(lora) is SDXL
    check_family(lora, 2048, "xl.safetensors")  # fits
    with pytest.raises(LoraMismatchError, match=r"made for SDXL .* the MODEL is SD1.5"):
        check_family(lora, 768, "xl.safetensors")


def test_layer_shapes_are_checked_against_the_model():
    sd = {"lora_unet_a_to_q.lora_down.weight": torch.zeros(4, 64), "lora_unet_a_to_q.lora_up.weight": torch.zeros(32, 4),
          "lora_te_text_model_x.lora_down.weight": torch.zeros(4, 8), "lora_te_text_model_x.lora_up.weight": torch.zeros(8, 4)}
    lora = to_kohya(sd)
    assert check_targets(lora, {"lora_unet_a_to_q": (32, 64)}, "l", {"unet"}) == ["lora_te_text_model_x"]
    with pytest.raises(LoraMismatchError, match="do not fit"):
        check_targets(lora, {"lora_unet_a_to_q": (32, 128)}, "l", {"unet"})
    with pytest.raises(LoraMismatchError, match="match no layer"):
        check_targets(lora, {}, "l", {"unet"})


def test_pickles_are_refused_even_when_renamed(tmp_path):
    for name in ("lora.ckpt", "lora.safetensors"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps({"lora_unet_x.lora_down.weight": [1, 2]}))
        with pytest.raises(WeightsFileError, match="is a PyTorch pickle"):
            load_lora(path)
    torch.save({"a": torch.zeros(1)}, tmp_path / "zipped.pt")
    with pytest.raises(WeightsFileError, match="is a PyTorch pickle"):
        load_lora(tmp_path / "zipped.pt")


def test_unsupported_layers_and_broken_pairs_get_clear_errors():
    with pytest.raises(LoraFormatError, match="DoRA"):
        to_kohya({"unet.a.to_q.lora_magnitude_vector": torch.zeros(4)})
    with pytest.raises(LoraFormatError, match="has no up matrix"):
        to_kohya({"unet.a.to_q.lora_A.weight": torch.zeros(4, 8)})
    with pytest.raises(LoraFormatError, match="not a LoRA tensor name"):
        to_kohya({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 8)})


def test_a_failed_save_keeps_the_earlier_file(tmp_path):
    lora = to_kohya({"lora_unet_a.lora_down.weight": torch.ones(2, 4), "lora_unet_a.lora_up.weight": torch.ones(4, 2)})
    path = save_lora(tmp_path / "l.safetensors", lora)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save_lora(path, lora, {"emplace.steps": 5})  # not a string: refused before anything is written
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["l.safetensors"]


def read_safetensor_keys(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def _ab(module: str, rank: int = 2, width: int = 8) -> dict[str, torch.Tensor]:
    return {f"{module}.lora_A.weight": torch.ones(rank, width), f"{module}.lora_B.weight": torch.ones(width, rank)}


@pytest.mark.parametrize("prefix", ["transformer.", "base_model.model.", ""])
def test_diffusers_named_flux_and_sd3_layers_become_what_comfyui_maps(prefix):
    # diffusers/SimpleTuner/ai-toolkit write transformer.<path>; PEFT bare paths, even top-level ones like proj_out
    sd = {**_ab(f"{prefix}transformer_blocks.0.attn.to_q"), **_ab(f"{prefix}single_transformer_blocks.0.proj_mlp"),
          **_ab(f"{prefix}proj_out")}
    lora = to_kohya(sd)
    assert set(lora.modules) == {"lora_transformer_transformer_blocks_0_attn_to_q",
                                 "lora_transformer_single_transformer_blocks_0_proj_mlp", "lora_transformer_proj_out"}
    assert lora_family(lora).key == "flux"  # single blocks are Flux's alone


def test_original_dit_names_pass_as_kohya_and_tell_flux_from_sd3():
    flux = to_kohya(_ab("diffusion_model.double_blocks.0.img_attn.qkv"))
    assert list(flux.modules) == ["lora_unet_double_blocks_0_img_attn_qkv"] and lora_family(flux).key == "flux"
    sd3 = to_kohya({"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": torch.ones(2, 8),
                    "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": torch.ones(8, 2)})
    assert lora_family(sd3).key == "sd3"
    onetrainer = to_kohya({"lora_transformer_transformer_blocks_0_attn_to_q.lora_down.weight": torch.ones(2, 8),
                           "lora_transformer_transformer_blocks_0_attn_to_q.lora_up.weight": torch.ones(8, 2)},
                          metadata={"modelspec.architecture": "stable-diffusion-v3-medium/lora"})
    assert list(onetrainer.modules) == ["lora_transformer_transformer_blocks_0_attn_to_q"]
    assert lora_family(onetrainer).key == "sd3"  # layers both have: the metadata tells
    with pytest.raises(LoraMismatchError, match="made for SD3, but the MODEL is Flux"):
        check_family(onetrainer, FLUX, "x.safetensors")
    with pytest.raises(LoraMismatchError, match="made for SD3, but the MODEL is SDXL"):
        check_family(sd3, SDXL, "x.safetensors")
    check_family(flux, FLUX_FILL, "x.safetensors")  # Flux Fill shares Flux's blocks


def test_sd_unet_paths_with_nested_transformer_blocks_stay_lora_unet():
    lora = to_kohya(_ab("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"))
    assert list(lora.modules) == ["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"]
