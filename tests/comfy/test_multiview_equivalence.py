"""One attention, two hosts: the ComfyUI patch (nodes/multiview.py) and the diffusers processor
(emplace/multiview/diffusers_processor.py) give the same output on the same inputs and weights."""

from __future__ import annotations

import sys

import torch

from emplace.multiview import READ, RECORD, MultiViewContext, MultiViewOptions

HEADS, DIM_HEAD, WIDTH, GRID = 2, 16, 32, (4, 4)


def recorded_context(site: tuple, attention, reference_tokens: torch.Tensor, strength: float) -> MultiViewContext:
    """A context whose bank holds the reference's keys and values at `site`, as `attention` projects them."""
    context = MultiViewContext(torch.zeros(1, 4, *GRID), MultiViewOptions(strength=strength))
    context.bank.clear(GRID)
    context.pass_ = RECORD
    r = reference_tokens
    context.attend(site, attention.to_q(r), attention.to_k(r), attention.to_v(r), HEADS)
    context.pass_ = READ
    return context


def test_the_comfy_patch_and_the_diffusers_processor_attend_alike(comfy, tiny):
    from comfy.ldm.modules.attention import CrossAttention
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from emplace.multiview.diffusers_processor import MultiViewAttnProcessor

    patch_model = sys.modules[comfy.node["EmplaceMultiViewContext"].__module__].patch_model
    g = torch.Generator().manual_seed(0)
    ours = Attention(query_dim=WIDTH, heads=HEADS, dim_head=DIM_HEAD, bias=False, out_bias=True)
    for p in ours.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.2
    core = CrossAttention(query_dim=WIDTH, heads=HEADS, dim_head=DIM_HEAD)
    core.load_state_dict(ours.state_dict(), strict=False)  # the same names: to_q/k/v, to_out.0

    tokens = GRID[0] * GRID[1]
    n = torch.randn(2, tokens, WIDTH, generator=g)  # the normalised hidden states of a batch of two
    reference = torch.randn(1, tokens, WIDTH, generator=g)  # one view's, as its record pass banked them

    block = ("input", 1, 0)
    with torch.no_grad():
        comfy_context = recorded_context((*block[:2], block[2], 0), core, reference, strength=0.6)
        patched = patch_model(tiny.model, comfy_context, [block]).model_options["transformer_options"]
        attn1_replace = patched["patches_replace"]["attn1"][block]
        extra = {"block": block[:2], "block_index": block[2], "transformer_index": 0, "n_heads": HEADS,
                 "cond_or_uncond": [0, 0], "attn_precision": None}
        # as core's BasicTransformerBlock runs a replaced attn1: project, replace, project out
        from_comfy = core.to_out(attn1_replace(core.to_q(n), core.to_k(n), core.to_v(n), extra))

        site = ("input", "down_blocks.0.attentions.0.transformer_blocks.0.attn1")
        ours.set_processor(MultiViewAttnProcessor(recorded_context(site, ours, reference, strength=0.6), site,
                                                  AttnProcessor2_0()))
        from_diffusers = ours(n)
        ours.set_processor(AttnProcessor2_0())
        plain = ours(n)

    torch.testing.assert_close(from_comfy, from_diffusers, rtol=1e-5, atol=1e-5)
    assert (from_comfy - plain).abs().max() > 1e-3  # the reference did take part
