"""In-context multi-view nodes: the other views reach the model as images, with no model patching.

- Emplace Side-by-Side Context / Split: the reference views beside the target on one canvas, the
  mask on the target only, for any inpainting model and sampler; Split takes the target back out.
- Emplace Multi-View Conditioning: for DiT edit models (Flux Kontext, Flux 2, Qwen-Image-Edit),
  each view encoded and appended to the conditioning's `reference_latents`, as core's
  ReferenceLatent does; the model adds them as extra image tokens.

The geometry, the hiding and the sizes are the library's (emplace/multiview/side_by_side.py).
"""

from __future__ import annotations

import node_helpers
import torch
from comfy_api.latest import io

from ..emplace.images import channels_first, channels_last
from ..emplace.multiview.side_by_side import ARRANGEMENTS, reference_views, side_by_side, split

SideBySideType = io.Custom("EMPLACE_SIDE_BY_SIDE")
SIZES = ("megapixels", "keep")
MODEL_DEFAULT = "model default"
METHODS = (MODEL_DEFAULT, "offset", "index", "uxo")  # Flux's forward in 0.3.64; Flux defaults to offset, Qwen to index


def masks(mask: torch.Tensor) -> torch.Tensor:
    """A ComfyUI MASK as [B, H, W] (some nodes give [H, W])."""
    return mask[None] if mask.dim() == 2 else mask


def rgb(image: torch.Tensor) -> torch.Tensor:
    """A ComfyUI IMAGE [B, H, W, C] as the library's [B, 3, H, W]."""
    return channels_first(image[..., :3])


class EmplaceSideBySideContext(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EmplaceSideBySideContext",
            display_name="Emplace Side-by-Side Context",
            category="Emplace/multiview",
            description="Put other views of the scene beside the image to inpaint, on one canvas with the mask on "
                        "the image only, so any inpainting model paints it while seeing the other views. Sample the "
                        "canvas, then take the image back out with Emplace Side-by-Side Split.",
            inputs=[
                io.Image.Input("image", tooltip="the target: the image to inpaint"),
                io.Mask.Input("mask", tooltip="where to paint, on the target; one mask, or one per image"),
                io.Image.Input("reference", tooltip="other views of the same scene; a batch is several views"),
                io.Combo.Input("arrangement", options=list(ARRANGEMENTS), default="left",
                               tooltip="the views in a row left of the target (scaled to its height), or in a "
                                       "column above it (scaled to its width)"),
                io.Int.Input("gap", default=0, min=0, max=512, tooltip="grey pixels between the pictures"),
                io.Int.Input("multiple_of", default=8, min=1, max=128,
                             tooltip="start the target and end the canvas on a multiple of this (8: the VAE's "
                                     "cells; 16 for Flux/SD3 patches), padding grey at the right/bottom; 1: off"),
            ],
            outputs=[io.Image.Output(display_name="canvas"),
                     io.Mask.Output(display_name="mask", tooltip="the mask at the target's place, 0 elsewhere"),
                     SideBySideType.Output(display_name="layout", tooltip="for Emplace Side-by-Side Split"),
                     io.String.Output(display_name="info")],
        )

    @classmethod
    def execute(cls, image, mask, reference, arrangement, gap, multiple_of) -> io.NodeOutput:
        canvas, canvas_mask, layout = side_by_side(rgb(image), rgb(reference), masks(mask), arrangement, gap,
                                                   multiple_of)
        return io.NodeOutput(channels_last(canvas).contiguous(), canvas_mask, layout, layout.describe())


class EmplaceSideBySideSplit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EmplaceSideBySideSplit",
            display_name="Emplace Side-by-Side Split",
            category="Emplace/multiview",
            description="Take the inpainted image back out of a sampled side-by-side canvas: the canvas's pixels "
                        "inside the mask, the original image's (bit for bit) outside it.",
            inputs=[
                io.Image.Input("canvas", tooltip="the sampled (decoded) canvas, at its full size"),
                SideBySideType.Input("layout", tooltip="from Emplace Side-by-Side Context"),
                io.Image.Input("image", tooltip="the original target, as given to the Context node"),
                io.Mask.Input("mask", tooltip="the target's mask, as given to the Context node"),
            ],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, canvas, layout, image, mask) -> io.NodeOutput:
        out = split(rgb(canvas), layout, rgb(image), masks(mask))
        return io.NodeOutput(channels_last(out).contiguous())


class EmplaceMultiViewConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EmplaceMultiViewConditioning",
            display_name="Emplace Multi-View Conditioning",
            category="Emplace/multiview",
            description="Give a DiT edit model (Flux Kontext, Flux 2, Qwen-Image-Edit) other views of the scene: "
                        "each view is encoded and appended to the conditioning's reference latents (as core's "
                        "ReferenceLatent does, once per view). For SD1.5/SDXL use Emplace Multi-View Context.",
            inputs=[
                io.Conditioning.Input("positive"), io.Conditioning.Input("negative"), io.Vae.Input("vae"),
                io.Image.Input("reference", tooltip="other views of the same scene; a batch is several views"),
                io.Combo.Input("size", options=list(SIZES), default="megapixels",
                               tooltip="megapixels: resize each view to about that many pixels, sides multiples of "
                                       "16 (what Kontext/Qwen expect); keep: encode at the size given"),
                io.Float.Input("megapixels", default=1.0, min=0.01, max=16.0, step=0.01),
                io.Combo.Input("reference_latents_method", options=list(METHODS), default=MODEL_DEFAULT,
                               tooltip="how the model places the reference tokens (one setting for the whole "
                                       "conditioning; it replaces an earlier one). model default: leave it as is"),
                io.Mask.Input("reference_hide_mask", optional=True,
                              tooltip="1 = hide this part of the views (grey before encoding), e.g. an object "
                                      "that must not be copied; one mask for every view, or one per view"),
            ],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative"),
                     io.String.Output(display_name="info")],
        )

    @classmethod
    def execute(cls, positive, negative, vae, reference, size, megapixels, reference_latents_method,
                reference_hide_mask=None) -> io.NodeOutput:
        hide = None if reference_hide_mask is None else masks(reference_hide_mask)
        views = reference_views(rgb(reference), hide, megapixels if size == "megapixels" else None)
        encoded = vae.encode(channels_last(views).contiguous())
        latents = [encoded[i:i + 1] for i in range(encoded.shape[0])]  # one reference latent per view
        out = []
        for conditioning in (positive, negative):
            conditioning = node_helpers.conditioning_set_values(conditioning, {"reference_latents": list(latents)},
                                                                append=True)
            if reference_latents_method != MODEL_DEFAULT:  # a constant: set, never appended
                conditioning = node_helpers.conditioning_set_values(
                    conditioning, {"reference_latents_method": reference_latents_method})
            out.append(conditioning)
        info = describe(reference, views, latents, hide, size, megapixels, reference_latents_method, out[0])
        return io.NodeOutput(out[0], out[1], info)


def describe(reference, views, latents, hide, size, megapixels, method, positive) -> str:
    count, (h, w), (vh, vw) = reference.shape[0], reference.shape[1:3], views.shape[-2:]
    how = f"resized to about {megapixels:g} megapixels" if size == "megapixels" else "kept"
    lines = [f"{count} reference view{'s' * (count > 1)} {w}x{h} -> {vw}x{vh} px ({how}), each encoded to a "
             f"{'x'.join(map(str, latents[0].shape[1:]))} latent and appended to positive and negative"]
    if positive:
        lines.append(f"positive now carries {len(positive[0][1]['reference_latents'])} reference latents")
    if hide is not None:
        lines.append(f"hidden (grey before encoding): {float(hide.float().mean()):.0%} of the views")
    lines.append(f"reference_latents_method: {method}")
    return "\n".join(lines)

