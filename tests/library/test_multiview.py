"""Multi-view reference attention (emplace/multiview): the math, the bank, the passes, the diffusers processor."""

from __future__ import annotations

import math

import pytest
import torch

from emplace.multiview import (COND, READ, RECORD, UNCOND, MultiViewContext, MultiViewOptions, ReferenceBank,
                               add_noise, extended_attention, reference_attention, reference_noise, token_grid,
                               visible_tokens)
from emplace.multiview.diffusers_processor import (MultiViewAttnProcessor, remove_multiview_processors,
                                                   set_multiview_processors)
from emplace.testing.tiny_models import seeded_, tiny_unet


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- the math ---------------------------------------------------------------------------------

def direct(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v head by head, written out."""
    d = q.shape[-1] // heads
    out = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        w = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d), -1)
        out.append(w @ v[..., sl])
    return torch.cat(out, -1)


def qkv(b=2, n=6, m=5, c=8, seed=0):
    return [randn(b, t, c, seed=seed + i) for i, t in enumerate((n, n, n, m, m))]


def test_the_extended_attention_is_a_softmax_over_own_and_reference_tokens():
    q, k, v, k_ref, v_ref = qkv()
    expected = direct(q, torch.cat([k, k_ref], 1), torch.cat([v, v_ref], 1), heads=2)
    torch.testing.assert_close(extended_attention(q, k, v, k_ref, v_ref, heads=2), expected)


def test_strength_blends_the_extended_and_plain_outputs_and_zero_is_the_plain_attention_exactly():
    q, k, v, k_ref, v_ref = qkv()
    plain = direct(q, k, v, 2)
    ext = direct(q, torch.cat([k, k_ref], 1), torch.cat([v, v_ref], 1), 2)
    torch.testing.assert_close(extended_attention(q, k, v, k_ref, v_ref, 2, strength=0.3), 0.7 * plain + 0.3 * ext)
    own = lambda q, k, v, heads: direct(q, k, v, heads)  # noqa: E731
    assert torch.equal(extended_attention(q, k, v, k_ref, v_ref, 2, strength=0.0, attention=own), direct(q, k, v, 2))


def test_each_batch_element_gets_its_own_strength():
    q, k, v, k_ref, v_ref = qkv()
    out = extended_attention(q, k, v, k_ref, v_ref, 2, strength=torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(out[0], extended_attention(q, k, v, k_ref, v_ref, 2)[0])
    torch.testing.assert_close(out[1], direct(q, k, v, 2)[1])


def test_no_reference_tokens_is_the_plain_attention():
    q, k, v, *_ = qkv()
    assert torch.equal(reference_attention(q, k, v, n_own=6, heads=2, strength=1.0), reference_attention(
        q, k, v, n_own=6, heads=2, strength=0.0))


# -- the bank ---------------------------------------------------------------------------------

def test_a_site_grid_is_the_latent_halved_and_rounded_up():
    assert token_grid(64 * 48, (64, 48)) == (64, 48)
    assert token_grid(8 * 7, (15, 13)) == (8, 7)
    with pytest.raises(ValueError, match="no downsampled grid"):
        token_grid(10, (8, 8))


def test_the_hide_mask_is_pooled_to_each_site_grid():
    hide = torch.zeros(1, 16, 16)
    hide[0, :8, :4] = 1  # the top-left quarter's left half
    visible = visible_tokens(hide, (2, 2))
    assert visible.tolist() == [[False, True, True, True]]  # a cell with any hidden pixel is hidden


def test_hidden_reference_tokens_are_dropped_so_changing_them_changes_nothing():
    views, n, c = 2, 16, 8
    hide = torch.zeros(views, 8, 8)
    hide[1, :, :4] = 1  # view 2's left half is hidden
    bank = ReferenceBank(hide)
    bank.clear((4, 4))
    keys, values = randn(views, n, c), randn(views, n, c, seed=1)
    bank.record(("input", 1, 0, 0), keys, values)
    served_keys, served_values = bank.serve(("input", 1, 0, 0), batch=3)
    assert served_keys.shape == served_values.shape == (3, n + n // 2, c)
    changed = keys.clone(), values.clone()
    for t in changed:
        t[1].view(4, 4, c)[:, :2] = 99.0  # only hidden tokens
    bank.record(("input", 1, 0, 0), *changed)
    again = bank.serve(("input", 1, 0, 0), batch=3)
    assert torch.equal(again[0], served_keys) and torch.equal(again[1], served_values)


# -- the passes -------------------------------------------------------------------------------

class Recorder:
    """A fake model step that runs the context's hook at one site, as a host's attention layer would
    (q = k = v = the latent's tokens, one head)."""

    def __init__(self, context):
        self.context, self.passes = context, []

    def __call__(self, latent, level, pass_):
        self.passes.append((pass_, float(level[0]), latent.clone()))
        n = latent.flatten(2).transpose(1, 2)
        return self.context.attend(("middle", 0, 0, 0), n, n, n, heads=1)


def context(mode="exact", **options):
    reference = randn(2, 4, 4, 4, seed=5)
    return MultiViewContext(reference, MultiViewOptions(mode=mode, **options))


def test_exact_records_the_reference_noised_to_the_current_level_once_per_level():
    ctx = context()
    run = Recorder(ctx)
    x = randn(2, 4, 4, 4, seed=1)
    out = ctx.denoise(x, torch.tensor([3.0, 3.0]), run)
    ctx.denoise(x, torch.tensor([3.0, 3.0]), run)  # same level (e.g. uncond batched apart): no new record
    ctx.denoise(x, torch.tensor([2.0, 2.0]), run)
    assert [(p, lv) for p, lv, _ in run.passes] == [(RECORD, 3.0), (READ, 3.0), (READ, 3.0), (RECORD, 2.0),
                                                    (READ, 2.0)]
    latent, noise = ctx.reference_at((4, 4), x.device, x.dtype)
    assert torch.equal(latent, ctx.reference) and torch.equal(noise, reference_noise((2, 4, 4, 4)))
    expected = add_noise(torch.tensor([3.0, 3.0]), noise, ctx.reference)
    torch.testing.assert_close(run.passes[0][2], expected)
    assert out.shape == (2, 16, 4)
    assert ctx.bank.serve(("middle", 0, 0, 0), 2)[0].shape == (2, 2 * 16, 4)  # both views' keys, for each target


def test_cached_records_once_at_its_level_and_matches_exact_there():
    cached = context("cached", cache_level=0.5)
    run = Recorder(cached)
    x = randn(1, 4, 4, 4, seed=1)
    outs = [cached.denoise(x, torch.tensor([s]), run) for s in (5.0, 2.0, 0.5)]
    assert [(p, lv) for p, lv, _ in run.passes if p == RECORD] == [(RECORD, 0.5)]
    exact = context("exact")
    assert torch.equal(exact.denoise(x, torch.tensor([0.5]), Recorder(exact)), outs[-1])


def test_outside_the_active_span_the_model_runs_plain():
    ctx = context(start=4.0, end=1.0)
    run = Recorder(ctx)
    x = randn(1, 4, 4, 4)
    assert ctx.denoise(x, torch.tensor([9.0]), run).shape == (1, 16, 4)
    assert [p for p, *_ in run.passes] == ["plain"]


def test_a_reference_of_another_size_is_resized_to_the_target():
    ctx = context()
    run = Recorder(ctx)
    ctx.denoise(randn(1, 4, 6, 8), torch.tensor([1.0]), run)
    assert run.passes[0][2].shape == (2, 4, 6, 8)


def test_uncond_strength_applies_to_the_unconditional_chunks():
    ctx = context(strength=0.8, uncond_strength=0.0)
    ctx.chunks = [COND, UNCOND]
    assert ctx.strengths(4).tolist() == pytest.approx([0.8, 0.8, 0.0, 0.0])


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="cache_level"):
        MultiViewOptions(mode="cached")
    with pytest.raises(ValueError, match="sites"):
        MultiViewOptions(sites=("inputs",))
    with pytest.raises(ValueError, match="hide_mask"):
        MultiViewContext(randn(2, 4, 4, 4), hide_mask=torch.zeros(3, 8, 8))


# -- a diffusers UNet -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def unet():
    return seeded_(tiny_unet(cross_attention_dim=64), std=0.25).eval()  # weights large enough for attention to matter


def unet_step(unet, cond, reference_cond):
    def run(latent, t, pass_):
        c = reference_cond.expand(latent.shape[0], -1, -1) if pass_ == RECORD else cond
        return unet(latent, t, encoder_hidden_states=c).sample

    return run


def sample_once(unet, reference, x, cond, t=torch.tensor([400.0]), **options):
    ctx = MultiViewContext(reference, MultiViewOptions(**options))
    set_multiview_processors(unet, ctx)
    try:
        with torch.no_grad():
            return ctx.denoise(x, t, unet_step(unet, cond, cond[:1]), condition=cond[:1],
                               noise_scaling=lambda t, n, x: add_noise(t / 1000, n, x))
    finally:
        remove_multiview_processors(unet)


def test_a_diffusers_unet_sees_the_reference_and_strength_zero_is_bit_identical(unet):
    x, cond = randn(1, 4, 16, 16, seed=1), randn(1, 7, 64, seed=2)
    with torch.no_grad():
        plain = unet(x, torch.tensor([400.0]), encoder_hidden_states=cond).sample
    one, other = randn(2, 4, 16, 16, seed=3), randn(2, 4, 16, 16, seed=4)
    with_one = sample_once(unet, one, x, cond)
    assert (with_one - plain).abs().max() > 1e-3
    assert (sample_once(unet, other, x, cond) - with_one).abs().max() > 1e-3
    assert torch.equal(sample_once(unet, one, x, cond, strength=0.0), plain)
    assert torch.equal(sample_once(unet, one, x, cond, start=300.0), plain)  # outside its span
    assert not any(isinstance(getattr(m, "processor", None), MultiViewAttnProcessor) for m in unet.modules())


def test_only_the_chosen_sites_attend(unet):
    x, cond, ref = randn(1, 4, 16, 16, seed=1), randn(1, 7, 64, seed=2), randn(1, 4, 16, 16, seed=3)
    seen = []
    ctx = MultiViewContext(ref, MultiViewOptions(sites=("middle",)))
    set_multiview_processors(unet, ctx)
    original = ctx.attend
    ctx.attend = lambda site, *args: seen.append((ctx.pass_, site[0])) or original(site, *args)
    try:
        with torch.no_grad():
            ctx.denoise(x, torch.tensor([400.0]), unet_step(unet, cond, cond))
    finally:
        remove_multiview_processors(unet)
    assert {s for s in seen} == {(RECORD, "input"), (RECORD, "middle"), (RECORD, "output"), (READ, "input"),
                                 (READ, "middle"), (READ, "output")}
    assert list(ctx.bank.tokens) == [("middle", "mid_block.attentions.0.transformer_blocks.0.attn1")]


def test_the_processor_output_is_the_library_attention_on_the_same_inputs(unet):
    x, cond, ref = randn(2, 4, 16, 16, seed=1), randn(2, 7, 64, seed=2), randn(1, 4, 16, 16, seed=3)
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    attn = unet.get_submodule(name)
    seen = []
    hook = attn.register_forward_hook(lambda m, args, out: seen.append((args[0], out)) and None)
    try:
        sample_once(unet, ref, x, cond, strength=0.6, uncond_strength=0.0)
    finally:
        hook.remove()
    (r, _), (h, read_out) = seen  # the normalised hidden states of the reference view, then of the target
    with torch.no_grad():
        lib = extended_attention(attn.to_q(h), attn.to_k(h), attn.to_v(h), attn.to_k(r), attn.to_v(r), attn.heads,
                                 strength=0.6)
        expected = attn.to_out[0](lib)
    torch.testing.assert_close(read_out, expected, rtol=1e-5, atol=1e-6)
