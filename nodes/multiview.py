"""Emplace Multi-View Context: the target's self-attention also attends to other views of the scene.

The algorithm is the library's (emplace/multiview/): MultiViewContext records the reference
views' tokens at each self-attention and blends the extended attention in. This node only
wires it into an SD1.5/SDXL UNet through ComfyUI's own hooks, on a clone of the MODEL:
- an attn1 replacement at each chosen site hands the projected q, k, v to the context, which
  banks the reference's keys and values (record pass) or attends to them too and blends the
  extended attention with the plain one (read pass; strength, cond/uncond), using core's own
  attention kernel;
- an APPLY_MODEL wrapper runs the model on the noised reference (record) and then on x (read);
- an OUTER_SAMPLE wrapper empties the bank at the start of each sampling run.
"""

from __future__ import annotations

import comfy.ldm.modules.attention as comfy_attention
import comfy.patcher_extension
import torch
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
from comfy_api.latest import io

from ..emplace.multiview import COND, MODES, RECORD, SITE_KINDS, MultiViewContext, MultiViewOptions

KEY = "emplace_multiview"
CACHED_PERCENT = 0.9  # 'cached' records the reference once, at the sigma 90% of the way through sampling
SITE_CHOICES = ["all", "input", "middle", "output", "input+middle", "input+output", "middle+output"]
DIT_NODE = "Emplace Multi-View Conditioning"


def self_attention_sites(unet: UNetModel) -> list[tuple[str, int, int]]:
    """(block name, block number, block_index) of every self-attention, as ComfyUI's UNet names them."""
    blocks = ([("input", i, b) for i, b in enumerate(unet.input_blocks)] + [("middle", 0, unet.middle_block)]
              + [("output", i, b) for i, b in enumerate(unet.output_blocks)])
    return [(kind, number, j) for kind, number, block in blocks if block is not None
            for layer in block if isinstance(layer, SpatialTransformer)
            for j, t in enumerate(layer.transformer_blocks) if not t.disable_self_attn]


def unet_sites(model) -> list[tuple[str, int, int]]:
    unet = model.get_model_object("diffusion_model")
    sites = self_attention_sites(unet) if isinstance(unet, UNetModel) else []
    if not sites:
        raise ValueError(f"model: {type(model.model).__name__} is not a UNet with self-attention (SD1.5/SDXL). "
                         f"For DiT edit models (Flux Kontext, Flux 2, Qwen-Image-Edit) use '{DIT_NODE}'.")
    return sites


def record_row(chunks: list[int] | None, batch: int) -> int:
    """The batch row whose conditioning the record pass takes: the first cond element when there is one."""
    if not chunks or COND not in chunks:
        return 0
    return chunks.index(COND) * (batch // len(chunks))


def reference_concat(keys: tuple[str, ...], clean: torch.Tensor) -> torch.Tensor:
    """c_concat for the record pass: an inpainting model sees the whole reference, nothing masked
    (the parts in the order of model_base's concat_keys, as concat_cond builds them)."""
    parts = {"mask": torch.zeros_like(clean[:, :1]), "mask_inverted": torch.ones_like(clean[:, :1]),
             "masked_image": clean, "concat_image": clean}
    if any(k not in parts for k in keys):
        raise ValueError(f"model: cannot build the reference's inpainting input for its channels {keys}")
    return torch.cat([parts[k] for k in keys], 1)


def apply_model_wrapper(context: MultiViewContext):
    def wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        chunks = transformer_options.get("cond_or_uncond")
        row, batch = record_row(chunks, x.shape[0]), x.shape[0]
        concat_keys = getattr(executor.class_obj, "concat_keys", ())

        def pick(value, views):  # one target element's conditioning, for each reference view
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
                return value[row:row + 1].repeat(views, *[1] * (value.dim() - 1))
            return value

        def run(latent, level, pass_):
            if pass_ != RECORD:
                return executor(latent, level, c_concat, c_crossattn, control, transformer_options, **kwargs)
            views = latent.shape[0]
            concat = pick(c_concat, views)
            if c_concat is not None and concat_keys:
                concat = reference_concat(concat_keys, context.reference_at(tuple(latent.shape[-2:]), latent.device,
                                                                            latent.dtype)[0])
            options = {**transformer_options, "cond_or_uncond": [COND], "sigmas": level}
            if "uuids" in options:
                options["uuids"] = options["uuids"][:1]
            return executor(latent, level, concat, pick(c_crossattn, views), None, options,
                            **{k: pick(v, views) for k, v in kwargs.items()})

        has_cond = c_crossattn is not None and (not chunks or COND in chunks)
        condition = c_crossattn[row:row + 1] if has_cond else None
        noise_scaling = executor.class_obj.model_sampling.noise_scaling
        return context.denoise(x, t, run, condition, chunks, noise_scaling)

    return wrapper


def patch_model(model, context: MultiViewContext, sites: list[tuple[str, int, int]]):
    """A clone of `model` with the context wired in at `sites` (closures, so clones share one context)."""

    def attn1_replace(q, k, v, extra):
        def attention(q, k, v, heads):  # core's kernel, as CrossAttention calls it
            return comfy_attention.optimized_attention(q, k, v, heads, attn_precision=extra.get("attn_precision"),
                                                       transformer_options=extra)

        block = extra["block"]
        site = (block[0], block[1], extra.get("block_index", 0), extra.get("transformer_index"))
        return context.attend(site, q, k, v, extra["n_heads"], attention)

    def reset(executor, *args, **kwargs):
        context.reset()
        return executor(*args, **kwargs)

    m = model.clone()
    for kind, number, index in sites:
        m.set_model_attn1_replace(attn1_replace, kind, number, index)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, KEY, apply_model_wrapper(context))
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, KEY, reset)
    return m


def check_inputs(reference: torch.Tensor, hide_mask: torch.Tensor | None, start: float, end: float) -> None:
    if reference.shape[0] == 0:
        raise ValueError("reference: the image batch is empty; give at least one view")
    if hide_mask is not None and hide_mask.shape[0] not in (1, reference.shape[0]):
        raise ValueError(f"reference_hide_mask: {hide_mask.shape[0]} masks for {reference.shape[0]} reference views; "
                         f"give 1 (for every view) or {reference.shape[0]} (one per view)")
    if start > end:
        raise ValueError(f"start_percent ({start}) is after end_percent ({end})")


def describe(options: MultiViewOptions, reference: torch.Tensor, latent: torch.Tensor, hide_mask, n_sites: int,
             start_percent: float, end_percent: float, cond_only: bool) -> str:
    views, (h, w) = reference.shape[0], reference.shape[1:3]
    lines = [f"multi-view reference attention: {views} view{'s' * (views > 1)} ({w}x{h} px -> "
             f"{latent.shape[-1]}x{latent.shape[-2]} latent), strength {options.strength:g}, {options.mode} mode",
             f"{n_sites} self-attention layers ({'+'.join(options.sites)} blocks) attend to the views' tokens",
             f"active from {start_percent:.0%} to {end_percent:.0%} of sampling "
             f"(sigma {options.start:.4g} to {options.end:.4g})",
             "the unconditional pass sees no reference (cond_only)" if cond_only
             else "the conditional and unconditional passes both see the reference",
             "references are resized (bilinear) to the target latent's size when the shapes differ"]
    if options.mode == "cached":
        lines.append(f"recorded once per run at sigma {options.cache_level:.4g} ({CACHED_PERCENT:.0%} of sampling)")
    else:
        lines.append("recorded at each step's sigma with the same fixed noise: one more model call per step")
    if hide_mask is not None:
        lines.append(f"hidden from the target: {float(hide_mask.mean()):.0%} of the reference "
                     f"({'one mask for every view' if hide_mask.shape[0] == 1 else 'one mask per view'})")
    return "\n".join(lines)


class EmplaceMultiViewContext(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EmplaceMultiViewContext",
            display_name="Emplace Multi-View Context",
            category="Emplace/multiview",
            description="Let the model's self-attention also look at other views of the scene (reference images), "
                        "so what it paints stays consistent with them (InConDiff-style, training-free). "
                        "SD1.5/SDXL UNets, inpainting models included.",
            inputs=[
                io.Model.Input("model"), io.Vae.Input("vae"),
                io.Image.Input("reference", tooltip="other views of the same scene; a batch is several views"),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="blend of the attention with the views (1) and without them (0: the plain "
                                       "model, unchanged)"),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001),
                io.Combo.Input("mode", options=list(MODES), default="exact",
                               tooltip="exact: the views noised to each step's sigma (one more model call per step); "
                                       "cached: recorded once at a low sigma and reused (cheaper)"),
                io.Combo.Input("sites", options=SITE_CHOICES, default="all",
                               tooltip="which UNet blocks attend to the views"),
                io.Boolean.Input("cond_only", default=False,
                                 tooltip="only the conditional pass sees the views, so CFG pushes towards them"),
                io.Mask.Input("reference_hide_mask", optional=True,
                              tooltip="1 = hide this part of the reference from the target (e.g. an object that "
                                      "must not be copied); one mask for every view, or one per view"),
            ],
            outputs=[io.Model.Output(display_name="model"), io.String.Output(display_name="info")],
        )

    @classmethod
    def execute(cls, model, vae, reference, strength, start_percent, end_percent, mode, sites, cond_only,
                reference_hide_mask=None) -> io.NodeOutput:
        check_inputs(reference, reference_hide_mask, start_percent, end_percent)
        all_sites = unet_sites(model)
        if strength == 0:
            return io.NodeOutput(model, "strength 0: the model is returned unchanged")
        kinds = SITE_KINDS if sites == "all" else tuple(sites.split("+"))
        chosen = [s for s in all_sites if s[0] in kinds]
        if not chosen:
            raise ValueError(f"sites: the model has no self-attention in its {sites} blocks")
        sampling = model.get_model_object("model_sampling")
        options = MultiViewOptions(strength=strength, uncond_strength=0.0 if cond_only else None, sites=kinds,
                                   mode=mode, start=float(sampling.percent_to_sigma(start_percent)),
                                   end=float(sampling.percent_to_sigma(end_percent)),
                                   cache_level=float(sampling.percent_to_sigma(CACHED_PERCENT)))
        latent = model.get_model_object("latent_format").process_in(vae.encode(reference[..., :3]))
        hide = None if reference_hide_mask is None else reference_hide_mask.float().cpu()
        context = MultiViewContext(latent.float().cpu(), options, hide)
        info = describe(options, reference, latent, hide, len(chosen), start_percent, end_percent, cond_only)
        return io.NodeOutput(patch_model(model, context, chosen), info)
