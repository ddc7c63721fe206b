"""Emplace Multi-View Context inside ComfyUI (in-process, tiny SD1.5/SDXL-like UNets, core's KSampler)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from multiview_models import ColourVAE, attentive

NODE = "EmplaceMultiViewContext"
APPLY_MODEL = "apply_model"  # comfy.patcher_extension.WrappersMP.APPLY_MODEL (comfy is imported by the fixture)


def images(n=2, seed=0, h=64, w=64):
    """n views: random colour patches, 4x4 of them (so their 8x8 latent cells differ)."""
    patches = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(patches, size=(h, w), mode="nearest").movedim(1, -1)


def encode(comfy, clip, text):
    return comfy.nodes.CLIPTextEncode().encode(clip, text)[0]


def multiview(comfy, model, vae, reference, **overrides):
    settings = dict(model=model, vae=vae, reference=reference, strength=1.0, start_percent=0.0, end_percent=1.0,
                    mode="exact", sites="all", cond_only=False)
    return comfy.node[NODE].execute(**(settings | overrides)).args


def sample(comfy, tiny, model, steps=3, seed=7, positive=None, negative=None, latent=None):
    positive = positive or encode(comfy, tiny.clip, "a room with a red chair")
    negative = negative or encode(comfy, tiny.clip, "")
    latent = latent or {"samples": torch.zeros(1, 4, 8, 8)}
    return comfy.nodes.common_ksampler(model, seed, steps, 5.0, "euler", "normal", positive, negative,
                                       latent)[0]["samples"]


def counting_wrapper(calls: list):
    def wrapper(executor, x, t, *args, **kwargs):
        calls.append((x.shape[0], args[0]))  # batch size, c_concat
        return executor(x, t, *args, **kwargs)

    return wrapper


@pytest.fixture(scope="module")
def tiny(comfy, tiny):  # noqa: F811  (tiny_comfy's CLIP; an SD1.5-like UNet whose attention matters; a colour VAE)
    from tiny_comfy import tiny_model

    return SimpleNamespace(model=attentive(tiny_model()), clip=tiny.clip, vae=ColourVAE())


@pytest.fixture(scope="module")
def base(comfy, tiny):
    return sample(comfy, tiny, tiny.model)


def test_the_views_change_the_sample_and_another_view_changes_it_again(comfy, tiny, base):
    model, info = multiview(comfy, tiny.model, tiny.vae, images(2, seed=0))
    one = sample(comfy, tiny, model)
    assert (one - base).abs().max() > 1e-2
    assert torch.equal(sample(comfy, tiny, model), one)  # the reference's noise is fixed
    other, _ = multiview(comfy, tiny.model, tiny.vae, images(2, seed=1))
    assert (sample(comfy, tiny, other) - one).abs().max() > 1e-3
    assert "2 views" in info and "exact mode" in info and "resized" in info


def test_strength_zero_and_an_empty_step_range_leave_the_sample_bit_identical(comfy, tiny, base):
    model, info = multiview(comfy, tiny.model, tiny.vae, images(), strength=0.0)
    assert model is tiny.model and "unchanged" in info
    model, _ = multiview(comfy, tiny.model, tiny.vae, images(), end_percent=0.0)
    assert model is not tiny.model
    assert torch.equal(sample(comfy, tiny, model), base)


def test_a_wholly_hidden_reference_leaves_the_sample_bit_identical(comfy, tiny, base):
    model, info = multiview(comfy, tiny.model, tiny.vae, images(), reference_hide_mask=torch.ones(1, 64, 64))
    assert torch.equal(sample(comfy, tiny, model), base)
    assert "hidden from the target: 100%" in info


def test_the_input_model_keeps_no_patch(comfy, tiny, base):
    before = (repr(tiny.model.model_options), {k: dict(v) for k, v in tiny.model.wrappers.items()})
    model, _ = multiview(comfy, tiny.model, tiny.vae, images())
    sample(comfy, tiny, model)
    assert (repr(tiny.model.model_options), {k: dict(v) for k, v in tiny.model.wrappers.items()}) == before
    assert "patches_replace" not in tiny.model.model_options["transformer_options"]
    assert "attn1" in model.model_options["transformer_options"]["patches_replace"]
    assert torch.equal(sample(comfy, tiny, tiny.model), base)


def test_exact_records_every_step_and_cached_once_per_run(comfy, tiny):
    for mode, records in (("exact", 3), ("cached", 1)):
        model, info = multiview(comfy, tiny.model, tiny.vae, images(3), mode=mode)
        calls = []
        model.add_wrapper_with_key(APPLY_MODEL, "test_counter", counting_wrapper(calls))  # runs inside ours
        for _ in range(2):  # a new run records again
            calls.clear()
            sample(comfy, tiny, model, steps=3)
            assert [b for b, _ in calls] == [3, 2] * records + [2] * (3 - records)  # 3 views; cond + uncond
        assert ("recorded once per run" in info) == (mode == "cached")


def test_cond_only_gives_the_unconditional_pass_no_reference(comfy, tiny, base):
    both, _ = multiview(comfy, tiny.model, tiny.vae, images())
    cond_only, info = multiview(comfy, tiny.model, tiny.vae, images(), cond_only=True)
    assert (sample(comfy, tiny, cond_only) - sample(comfy, tiny, both)).abs().max() > 1e-2
    assert "unconditional pass sees no reference" in info
    # with cfg 1 only the conditional pass runs, so both settings sample the same
    pos, neg = encode(comfy, tiny.clip, "a room"), encode(comfy, tiny.clip, "")
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    cfg1 = [comfy.nodes.common_ksampler(m, 7, 2, 1.0, "euler", "normal", pos, neg, latent)[0]["samples"]
            for m in (both, cond_only)]
    assert torch.equal(*cfg1)


def test_a_reference_of_another_size_is_resized_to_the_target(comfy, tiny, base):
    model, _ = multiview(comfy, tiny.model, tiny.vae, images(1, h=48, w=96), sites="middle+output")
    out = sample(comfy, tiny, model, latent={"samples": torch.zeros(1, 4, 8, 10)})
    assert out.shape == (1, 4, 8, 10)


def test_it_stacks_with_a_preference_lora_and_another_apply_model_wrapper(comfy, tiny, base):
    from lora_fixtures import peft_state_dict, write_emplace_lora

    write_emplace_lora(comfy.loras / "multiview_dpo.safetensors", peft_state_dict(tiny.model), context_dim=64)
    mv, _ = multiview(comfy, tiny.model, tiny.vae, images())
    with_mv = sample(comfy, tiny, mv)
    lora_only = comfy.node["EmplaceLoadPreferenceLora"].execute(
        model=tiny.model, lora_name="multiview_dpo.safetensors", strength_model=1.0, strength_clip=0.0).args[0]
    both = comfy.node["EmplaceLoadPreferenceLora"].execute(
        model=mv, lora_name="multiview_dpo.safetensors", strength_model=1.0, strength_clip=0.0).args[0]
    with_both, with_lora = sample(comfy, tiny, both), sample(comfy, tiny, lora_only)
    assert (with_both - with_mv).abs().max() > 1e-2 and (with_both - with_lora).abs().max() > 1e-2
    # the other order: the LoRA first, then the views, gives the same model
    lora_then_mv, _ = multiview(comfy, lora_only, tiny.vae, images())
    assert torch.equal(sample(comfy, tiny, lora_then_mv), with_both)

    calls = []
    other = mv.clone()
    other.add_wrapper_with_key(APPLY_MODEL, "another_pack", counting_wrapper(calls))
    assert torch.equal(sample(comfy, tiny, other), with_mv) and len(calls) == 2 * 3  # record + read, 3 steps
    calls.clear()
    outer = tiny.model.clone()
    outer.add_wrapper_with_key(APPLY_MODEL, "another_pack", counting_wrapper(calls))
    outer_mv, _ = multiview(comfy, outer, tiny.vae, images())
    assert torch.equal(sample(comfy, tiny, outer_mv), with_mv) and len(calls) == 3  # around ours: once a step


def test_sdxl_sees_the_views(comfy, tiny):
    from tiny_comfy import tiny_sdxl_model

    model = attentive(tiny_sdxl_model())
    plain = sample(comfy, tiny, model)
    mv, _ = multiview(comfy, model, tiny.vae, images(2), sites="input+middle")
    assert (sample(comfy, tiny, mv) - plain).abs().max() > 1e-2


def test_an_inpainting_model_records_the_whole_reference_unmasked(comfy, tiny):
    from tiny_comfy import tiny_model

    model = attentive(tiny_model(in_channels=9))
    pos, neg = encode(comfy, tiny.clip, "a chair"), encode(comfy, tiny.clip, "")
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1
    pos, neg, latent = comfy.nodes.InpaintModelConditioning().encode(pos, neg, images(1, seed=9), tiny.vae, mask,
                                                                     noise_mask=True)
    plain = sample(comfy, tiny, model, positive=pos, negative=neg, latent=latent)
    mv, _ = multiview(comfy, model, tiny.vae, images(3))
    calls = []
    mv.add_wrapper_with_key(APPLY_MODEL, "test_counter", counting_wrapper(calls))
    assert (sample(comfy, tiny, mv, positive=pos, negative=neg, latent=latent) - plain).abs().max() > 1e-2
    reference = model.get_model_object("latent_format").process_in(tiny.vae.encode(images(3)))
    records = [c for b, c in calls if b == 3]
    assert len(records) == 3
    for c_concat in records:
        assert c_concat.shape == (3, 5, 8, 8) and c_concat[:, 0].abs().max() == 0  # mask first: nothing masked
        torch.testing.assert_close(c_concat[:, 1:], reference)


def test_bad_inputs_get_clear_errors(comfy, tiny):
    with pytest.raises(ValueError, match="reference: the image batch is empty"):
        multiview(comfy, tiny.model, tiny.vae, images(0))
    with pytest.raises(ValueError, match="reference_hide_mask: 3 masks for 2 reference views"):
        multiview(comfy, tiny.model, tiny.vae, images(2), reference_hide_mask=torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="start_percent"):
        multiview(comfy, tiny.model, tiny.vae, images(), start_percent=0.8, end_percent=0.2)
    from tiny_flux import tiny_flux

    with pytest.raises(ValueError, match="Emplace Multi-View Conditioning"):
        multiview(comfy, tiny_flux(), tiny.vae, images())

