"""Emplace Iterative Inpaint: IterInpaint (one object at a time, then the background) with crop-and-stitch.

The plan, the crops and the stitching are the library's (emplace/inpaint/); this node only
supplies the step that samples one crop with ComfyUI: prompt through the CLIP, inpainting
conditioning as core's InpaintModelConditioning builds it (noise mask for 4- and 16-channel models,
concat image and mask for inpainting models: SD 9-channel, Flux Fill), Flux's distilled guidance,
core's KSampler, VAE decode. The model's family sets how crops snap (8 px for UNets, 16 for DiTs)
and, unless given, the resolution they are sampled at.
"""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.samplers
import comfy.utils
import node_helpers
import nodes
import torch
from comfy_api.latest import io

from ..emplace.boxes import boxes_from_any
from ..emplace.images import channels_first, channels_last
from ..emplace.inpaint.iterate import iterative_inpaint
from ..emplace.inpaint.plan import BLANK_CANVAS_BACKGROUND, OBJECT_TEMPLATE, ORDERS, plan
from .boxes import box_input, image_size
from .families import model_family

log = logging.getLogger("emplace")


def comfy_inpaint(model, clip, vae, negative_prompt: str, sampler: str, scheduler: str, steps: int, cfg: float,
                  denoise: float, guidance: float | None = None):
    """An emplace InpaintFn that samples one crop with ComfyUI's own nodes; `guidance` is Flux's (FluxGuidance)."""
    cache: dict[str, list] = {}

    def encode(text: str) -> list:
        if text not in cache:
            cache[text] = clip.encode_from_tokens_scheduled(clip.tokenize(text))
        return cache[text]

    def inpaint(image: torch.Tensor, mask: torch.Tensor, prompt: str, seed: int) -> torch.Tensor:
        pixels = channels_last(image)[None]  # [1, h, w, 3]
        h, w = pixels.shape[1:3]
        values = {"width": w, "height": h, "target_width": w, "target_height": h}  # SDXL's size conditioning
        if guidance is not None:
            values["guidance"] = guidance
        positive = node_helpers.conditioning_set_values(encode(prompt), values)
        negative = node_helpers.conditioning_set_values(encode(negative_prompt), values)
        positive, negative, latent = nodes.InpaintModelConditioning().encode(positive, negative, pixels, vae,
                                                                             mask[None], noise_mask=True)
        (samples,) = nodes.common_ksampler(model, seed, steps, cfg, sampler, scheduler, positive, negative, latent,
                                           denoise=denoise)
        return channels_first(vae.decode(samples["samples"])[0, ..., :3]).to(image)

    return inpaint


class EmplaceIterativeInpaint(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EmplaceIterativeInpaint",
            display_name="Emplace Iterative Inpaint",
            category="Emplace/inpaint",
            description="Paint each box's object in turn at the model's resolution (crop, inpaint, stitch back), "
                        "then optionally the background around them (IterInpaint).",
            inputs=[
                io.Model.Input("model"), io.Clip.Input("clip"), io.Vae.Input("vae"),
                io.Image.Input("image", tooltip="the canvas: a picture, or a blank/grey image for layout-to-image"),
                box_input(),
                io.String.Input("prompt_template", default=OBJECT_TEMPLATE,
                                tooltip="per object; {label} is the box's label, {prompt} its prompt (or label)"),
                io.String.Input("negative_prompt", default="", multiline=True),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="object i is sampled with seed + i, so reordering keeps each object's seed"),
                io.Int.Input("steps", default=20, min=1, max=10000),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Flux dev and Flux Fill are guidance-distilled: cfg 1, and set guidance"),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01),
                io.Float.Input("context_padding", default=0.5, min=0.0, max=4.0, step=0.05,
                               tooltip="context around each object's mask, as a fraction of its size"),
                io.Int.Input("target_resolution", default=0, min=0, max=4096, step=8,
                             tooltip="each crop's longer side is sampled at this size; 0: the model's own "
                                     "(SD1.5 512, SD2 768, SDXL, SD3 and Flux 1024)"),
                io.Int.Input("grow", default=4, min=0, max=256, tooltip="grow each box's mask by this many pixels"),
                io.Int.Input("feather", default=8, min=0, max=256,
                             tooltip="blend each result outward over this many pixels; beyond, pixels are untouched"),
                io.Combo.Input("order", options=list(ORDERS), default="given",
                               tooltip="bottom-up paints far (higher) objects first, near ones over them"),
                io.Boolean.Input("colour_match", default=True,
                                 tooltip="match each result's tone to the canvas around its mask"),
                io.Boolean.Input("background_pass", default=False,
                                 tooltip="afterwards, repaint everything outside the objects"),
                io.String.Input("background_prompt", default=BLANK_CANVAS_BACKGROUND),
                io.Float.Input("background_denoise", default=1.0, min=0.0, max=1.0, step=0.01),
                io.Float.Input("guidance", default=0.0, min=0.0, max=100.0, step=0.1, optional=True,
                               tooltip="Flux's distilled guidance (what FluxGuidance sets); 0: the model's own, "
                                       "3.5 for Flux, 30 for Flux Fill. Models without it ignore it"),
            ],
            outputs=[io.Image.Output(display_name="image"),
                     io.Mask.Output(display_name="painted_mask", tooltip="the union of the painted regions"),
                     io.Image.Output(display_name="steps", tooltip="the canvas after each step")],
        )

    @classmethod
    def execute(cls, model, clip, vae, image, boxes, prompt_template, negative_prompt, seed, steps, cfg,
                sampler_name, scheduler, denoise, context_padding, target_resolution, grow, feather, order,
                colour_match, background_pass, background_prompt, background_denoise, guidance=0.0) -> io.NodeOutput:
        width, height = image_size(image)
        family = model_family(model)
        guidance = (guidance or family.guidance) if family.guidance is not None else None
        if guidance is not None and cfg > 1.5:
            log.warning("Emplace Iterative Inpaint: %s is guidance-distilled; cfg %.1f doubles the time and usually "
                        "spoils the result (use cfg 1 and guidance %.1f)", family.name, cfg, guidance)
        boxes = boxes_from_any(boxes, width, height)
        painted = torch.zeros(image.shape[0], height, width)
        if len(boxes) == 0:  # nothing to paint: the input, unchanged
            return io.NodeOutput(image, painted, image)
        todo = plan(boxes, (width, height), order, prompt_template, grow, feather, context_padding,
                    target=target_resolution or family.resolution or 512, multiple=family.multiple,
                    background=background_pass, background_prompt=background_prompt,
                    seed=seed)
        objects = comfy_inpaint(model, clip, vae, negative_prompt, sampler_name, scheduler, steps, cfg, denoise,
                                guidance)
        background = comfy_inpaint(model, clip, vae, negative_prompt, sampler_name, scheduler, steps, cfg,
                                   background_denoise, guidance)
        bar = comfy.utils.ProgressBar(len(todo) * image.shape[0])
        results, intermediates = [], []
        for f, frame in enumerate(image):
            def on_step(done, total, f=f):
                comfy.model_management.throw_exception_if_processing_interrupted()  # between objects
                bar.update_absolute(f * total + done)

            out = iterative_inpaint(channels_first(frame[..., :3]).cpu().float(), todo, objects, colour_match,
                                    on_step, background_inpaint=background)
            results.append(out.image)
            painted[f] = out.painted
            intermediates += out.intermediates
        to_comfy = lambda images: channels_last(torch.stack(images)).to(image)  # noqa: E731
        return io.NodeOutput(to_comfy(results), painted, to_comfy(intermediates))
