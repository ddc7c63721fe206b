"""Write a tiny diffusers SD1.5 / SDXL folder (see `emplace/testing/tiny_sd.py`) as ONE original-format ("LDM", single-file) checkpoint.

Real single-file checkpoints (CompVis / SGM, what ComfyUI keeps in models/checkpoints) are gigabytes, and no LDM model
code is a dependency, so the trainer's single-file loading is tested on tiny models written by this helper: it is the
inverse of diffusers' own LDM -> diffusers key conversion (`diffusers.loaders.single_file_utils`), written compactly.
"""

from __future__ import annotations

from pathlib import Path

import torch

# diffusers leaf names -> LDM leaf names, applied to what follows a block's prefix
UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
               "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
VAE_LEAVES = {"conv_shortcut": "nin_shortcut", "group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
              "to_out.0": "proj_out"}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {folder}")
    return {k: v for f in files for k, v in load_file(f).items() if not k.endswith("position_ids")}


def _count(sd: dict, prefix: str) -> int:
    """How many numbered children `prefix.N` the keys have."""
    return len({k[len(prefix):].split(".")[1] for k in sd if k.startswith(prefix + ".")})


def _rename(sd: dict, prefixes: dict[str, str], leaves: dict[str, str], into: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        module = next((p for p in prefixes if key.startswith(p + ".")), None)
        if module is None:
            raise KeyError(f"no LDM name for diffusers key {key!r}")
        rest = key[len(module) + 1:]
        leaf = next((old for old in leaves if rest.startswith(old + ".")), None)
        if leaf is not None:
            rest = leaves[leaf] + rest[len(leaf):]
        out[f"{into}{prefixes[module]}.{rest}"] = value
    return out


def unet_to_ldm(sd: dict) -> dict[str, torch.Tensor]:
    per_block = _count(sd, "down_blocks.0.resnets")  # layers_per_block; up blocks have one more
    pre = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
           "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",  # SDXL
           "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
           "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
           "mid_block.resnets.1": "middle_block.2"}
    for b in range(_count(sd, "down_blocks")):
        for j in range(per_block):
            i = 1 + b * (per_block + 1) + j
            pre |= {f"down_blocks.{b}.resnets.{j}": f"input_blocks.{i}.0",
                    f"down_blocks.{b}.attentions.{j}": f"input_blocks.{i}.1"}
        pre[f"down_blocks.{b}.downsamplers.0.conv"] = f"input_blocks.{1 + b * (per_block + 1) + per_block}.0.op"
    for b in range(_count(sd, "up_blocks")):
        for j in range(per_block + 1):
            i = b * (per_block + 1) + j
            pre |= {f"up_blocks.{b}.resnets.{j}": f"output_blocks.{i}.0",
                    f"up_blocks.{b}.attentions.{j}": f"output_blocks.{i}.1"}
        slot = 2 if _count(sd, f"up_blocks.{b}.attentions") else 1  # the upsampler follows the attention, if any
        pre[f"up_blocks.{b}.upsamplers.0.conv"] = f"output_blocks.{b * (per_block + 1) + per_block}.{slot}.conv"
    # the resnet renames cannot hit attention leaves (norm, proj_in, transformer_blocks, proj_out)
    return _rename(sd, pre, UNET_RESNET, "model.diffusion_model.")


def vae_to_ldm(sd: dict) -> dict[str, torch.Tensor]:
    pre = {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
    for side in ("encoder", "decoder"):
        pre |= {f"{side}.conv_in": f"{side}.conv_in", f"{side}.conv_out": f"{side}.conv_out",
                f"{side}.conv_norm_out": f"{side}.norm_out", f"{side}.mid_block.attentions.0": f"{side}.mid.attn_1",
                f"{side}.mid_block.resnets.0": f"{side}.mid.block_1", f"{side}.mid_block.resnets.1": f"{side}.mid.block_2"}
    for i in range(n := _count(sd, "encoder.down_blocks")):
        pre[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
        pre |= {f"encoder.down_blocks.{i}.resnets.{j}": f"encoder.down.{i}.block.{j}"
                for j in range(_count(sd, f"encoder.down_blocks.{i}.resnets"))}
    for i in range(n := _count(sd, "decoder.up_blocks")):  # LDM numbers the decoder's levels from the bottom
        pre[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{n - 1 - i}.upsample.conv"
        pre |= {f"decoder.up_blocks.{i}.resnets.{j}": f"decoder.up.{n - 1 - i}.block.{j}"
                for j in range(_count(sd, f"decoder.up_blocks.{i}.resnets"))}
    out = _rename(sd, pre, VAE_LEAVES, "first_stage_model.")
    for k, v in out.items():  # the mid attention's linear layers are 1x1 convolutions in LDM
        if ".mid.attn_1." in k and k.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")) and v.ndim == 2:
            out[k] = v[:, :, None, None].contiguous()
    return out


def _text_model(sd: dict) -> dict[str, torch.Tensor]:
    """transformers 5 saves CLIPTextModel without the `text_model.` level that LDM files (and WithProjection) have."""
    return {k if k.startswith(("text_model.", "text_projection.")) else f"text_model.{k}": v for k, v in sd.items()}


def open_clip_to_ldm(sd: dict, into: str) -> dict[str, torch.Tensor]:
    """CLIPTextModelWithProjection -> OpenCLIP names (SGM's `conditioner.embedders.1.model.`): q/k/v fused."""
    sd = _text_model(sd)
    out = {"positional_embedding": sd.pop("text_model.embeddings.position_embedding.weight"),
           "token_embedding.weight": sd.pop("text_model.embeddings.token_embedding.weight"),
           "text_projection": sd.pop("text_projection.weight").T.contiguous()}  # OpenCLIP multiplies x @ proj
    swaps = [("text_model.final_layer_norm.", "ln_final."), ("text_model.encoder.layers.", "transformer.resblocks."),
             (".layer_norm1.", ".ln_1."), (".layer_norm2.", ".ln_2."), (".mlp.fc1.", ".mlp.c_fc."),
             (".mlp.fc2.", ".mlp.c_proj."), (".self_attn.", ".attn.")]
    for k, v in sd.items():
        for old, new in swaps:
            k = k.replace(old, new)
        out[k] = v
    for k in [k for k in out if ".attn.q_proj." in k]:
        stem, kind = k.split(".attn.q_proj.")
        out[f"{stem}.attn.in_proj_{kind}"] = torch.cat([out.pop(f"{stem}.attn.{x}_proj.{kind}") for x in "qkv"])
    return {into + k: v for k, v in out.items()}


def write_ldm_checkpoint(folder: Path, path: Path) -> Path:
    """Write `folder`'s UNet, VAE and text encoder(s) to `path` (.safetensors) under LDM / SGM key names.

    Load it back with e.g. `StableDiffusionPipeline.from_single_file(path, config=<folder with a model_index.json
    naming its components>, local_files_only=True)`. Caveat (diffusers, not this file): when both SDXL text encoders
    have the same width, as in `write_tiny_sd`, diffusers fills `text_encoder_2` from `conditioner.embedders.0`.
    """
    from safetensors.torch import save_file

    folder, path = Path(folder), Path(path)
    xl = (folder / "text_encoder_2").is_dir()
    state = unet_to_ldm(_weights(folder / "unet")) | vae_to_ldm(_weights(folder / "vae"))
    clip = _text_model(_weights(folder / "text_encoder"))
    if xl:
        state |= {f"conditioner.embedders.0.transformer.{k}": v for k, v in clip.items()}
        state |= open_clip_to_ldm(_weights(folder / "text_encoder_2"), "conditioner.embedders.1.model.")
    else:
        state |= {f"cond_stage_model.transformer.{k}": v for k, v in clip.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
