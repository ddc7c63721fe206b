"""Multi-view reference attention on a diffusers UNet2DConditionModel: an attention processor for attn1.

`set_multiview_processors(unet, context)` puts a `MultiViewAttnProcessor` on every
self-attention (the transformer blocks' attn1); in a record or read pass the processor
projects q, k, v and lets the MultiViewContext attend (it banks the reference's keys and
values, or appends them and blends). Outside a pass it is the module's own processor, so an
inactive context leaves the UNet bit-identical. The host's step drives the
passes, e.g.

    def run(latent, t, pass_):
        cond = reference_cond if pass_ == RECORD else batch_cond
        return unet(latent, t, encoder_hidden_states=cond).sample
    context.denoise(x_t, t, run, noise_scaling=lambda t, n, x: scheduler.add_noise(x, n, t.long()))
"""

from __future__ import annotations

import torch

from .context import PLAIN, MultiViewContext

KINDS = {"down_blocks": "input", "mid_block": "middle", "up_blocks": "output"}


def site_of(module_name: str) -> tuple[str, str]:
    """('input' | 'middle' | 'output', module name) for a UNet attention module's name."""
    kind = KINDS.get(module_name.split(".")[0])
    if kind is None:
        raise ValueError(f"'{module_name}' is not inside a UNet's down, mid or up blocks")
    return kind, module_name


class MultiViewAttnProcessor:
    def __init__(self, context: MultiViewContext, site: tuple, plain):
        self.context, self.site, self.plain = context, site, plain

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **kwargs):
        self_attention = encoder_hidden_states is None and attention_mask is None  # over [B, N, C]
        if not self_attention or self.context.pass_ == PLAIN:
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        h = hidden_states
        out = self.context.attend(self.site, attn.to_q(h), attn.to_k(h), attn.to_v(h), attn.heads)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def _self_attentions(unet) -> list[tuple[str, torch.nn.Module]]:
    found = [(name, m) for name, m in unet.named_modules() if name.endswith(".attn1") and hasattr(m, "set_processor")]
    for name, m in found:
        extra = [a for a in ("spatial_norm", "group_norm", "norm_q", "norm_k") if getattr(m, a, None) is not None]
        if m.is_cross_attention or extra:
            raise ValueError(f"{name} is not a plain self-attention ({', '.join(extra) or 'cross-attention'})")
    return found


def set_multiview_processors(unet, context: MultiViewContext) -> int:
    """Install the processor on every self-attention of `unet`; returns how many were installed."""
    found = _self_attentions(unet)
    for name, m in found:
        plain = m.processor.plain if isinstance(m.processor, MultiViewAttnProcessor) else m.processor
        m.set_processor(MultiViewAttnProcessor(context, site_of(name), plain))
    return len(found)


def remove_multiview_processors(unet) -> None:
    """Give every self-attention its own processor back."""
    for _, m in unet.named_modules():
        if isinstance(getattr(m, "processor", None), MultiViewAttnProcessor):
            m.set_processor(m.processor.plain)
