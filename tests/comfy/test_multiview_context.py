"""In-context multi-view inside ComfyUI: the side-by-side canvas through core's inpainting and KSampler,
and Emplace Multi-View Conditioning's reference latents on a tiny Flux (in-process, tiny models)."""

from __future__ import annotations

import pytest
import torch


def run(comfy, node, **inputs):
    with torch.inference_mode():  # as ComfyUI runs nodes
        return comfy.node[node].execute(**inputs).args


def image(h=64, w=64, seed=0):
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


def square_mask(h=64, w=64):
    mask = torch.zeros(1, h, w)
    mask[:, 16:40, 20:52] = 1
    return mask


# -- side by side, any inpainting model ---------------------------------------------------------

@pytest.mark.parametrize("channels", [4, 9])
def test_a_sampled_canvas_splits_back_pixel_exact_and_untouched_outside_the_mask(comfy, tiny, channels):
    from tiny_comfy import tiny_model

    model = tiny.model if channels == 4 else tiny_model(in_channels=9)
    target, mask = image(), square_mask()
    canvas, canvas_mask, layout, info = run(comfy, "EmplaceSideBySideContext", image=target, mask=mask,
                                            reference=image(32, 48, seed=1), arrangement="left", gap=4,
                                            multiple_of=8)
    assert canvas.shape == (1, 64, 168, 3) and canvas_mask.shape == (1, 64, 168)  # 96 + gap 4 -> 104, + 64
    assert layout.target == (104, 0, 168, 64) and "resized to 96x64" in info
    assert canvas_mask[:, :, :104].max() == 0 and canvas_mask.sum() == mask.sum()

    text = tiny.clip.encode_from_tokens_scheduled(tiny.clip.tokenize("a red cube"))
    positive, negative, latent = comfy.nodes.InpaintModelConditioning().encode(text, text, canvas, tiny.vae,
                                                                              canvas_mask, noise_mask=True)
    (samples,) = comfy.nodes.common_ksampler(model, 3, 2, 4.0, "euler", "normal", positive, negative, latent)
    sampled = tiny.vae.decode(samples["samples"])
    assert sampled.shape == canvas.shape

    (out,) = run(comfy, "EmplaceSideBySideSplit", canvas=sampled, layout=layout, image=target, mask=mask)
    inside, outside = mask[0] == 1, mask[0] == 0
    assert out.shape == target.shape
    assert torch.equal(out[0][outside], target[0][outside])  # bit for bit
    assert torch.equal(out[0][inside], sampled[0, :, 104:168][inside])  # the sample, from the target's place
    assert (out[0][inside] - target[0][inside]).abs().mean() > 0.02


def test_the_split_of_the_unchanged_canvas_is_the_target(comfy):
    target, mask = image(40, 52), square_mask(40, 52)
    canvas, _, layout, _ = run(comfy, "EmplaceSideBySideContext", image=target, mask=mask,
                               reference=image(30, 30, seed=1).repeat(2, 1, 1, 1), arrangement="above", gap=0,
                               multiple_of=8)
    assert layout.target[1] % 8 == 0 and canvas.shape[1] % 8 == 0 and canvas.shape[2] % 8 == 0
    (out,) = run(comfy, "EmplaceSideBySideSplit", canvas=canvas, layout=layout, image=target, mask=mask)
    assert torch.equal(out, target)


def test_bad_side_by_side_inputs_name_the_input(comfy):
    target, mask = image(), square_mask()
    with pytest.raises(ValueError, match="reference: the image batch is empty"):
        run(comfy, "EmplaceSideBySideContext", image=target, mask=mask, reference=image()[:0], arrangement="left",
            gap=0, multiple_of=8)
    with pytest.raises(ValueError, match="mask: the mask is 32x64, the image is 64x64"):
        run(comfy, "EmplaceSideBySideContext", image=target, mask=mask[..., :32], reference=image(seed=1),
            arrangement="left", gap=0, multiple_of=8)
    canvas, _, layout, _ = run(comfy, "EmplaceSideBySideContext", image=target, mask=mask, reference=image(seed=1),
                               arrangement="left", gap=0, multiple_of=8)
    with pytest.raises(ValueError, match="canvas: the image is 64x64, the layout's canvas is 128x64"):
        run(comfy, "EmplaceSideBySideSplit", canvas=target, layout=layout, image=target, mask=mask)


# -- reference latents on a DiT edit model (tiny Flux) --------------------------------------------

@pytest.fixture(scope="module")
def flux(comfy):
    from types import SimpleNamespace

    from tiny_flux import text_conditioning, tiny_flux, tiny_flux_vae

    return SimpleNamespace(model=tiny_flux(), vae=tiny_flux_vae(), positive=text_conditioning(3),
                           negative=text_conditioning(4))


def conditioning(comfy, flux, reference, size="keep", method="model default", positive=None, megapixels=1.0,
                 **extra):
    return run(comfy, "EmplaceMultiViewConditioning", positive=positive or flux.positive, negative=flux.negative,
               vae=flux.vae, reference=reference, size=size, megapixels=megapixels, reference_latents_method=method,
               **extra)


def sample(comfy, model, positive, negative):
    """Core's KSampler path at 64x64 (an 8x8 latent), 2 steps."""
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    (out,) = comfy.nodes.common_ksampler(model, 1, 2, 2.0, "euler", "simple", positive, negative, latent)
    assert out["samples"].shape == (1, 16, 8, 8) and torch.isfinite(out["samples"]).all()
    return out["samples"]


def test_the_reference_view_changes_the_flux_sample(comfy, flux):
    plain = sample(comfy, flux.model, flux.positive, flux.negative)
    with_a = sample(comfy, flux.model, *conditioning(comfy, flux, image(seed=1))[:2])
    with_b = sample(comfy, flux.model, *conditioning(comfy, flux, image(seed=2))[:2])
    assert (with_a - plain).abs().mean() > 0.01
    assert (with_a - with_b).abs().mean() > 1e-3
    assert torch.equal(with_a, sample(comfy, flux.model, *conditioning(comfy, flux, image(seed=1))[:2]))  # seeded


def test_two_views_append_two_latents_after_what_was_there_and_the_input_is_unchanged(comfy, flux):
    from comfy_extras.nodes_edit_model import ReferenceLatent

    (given,) = ReferenceLatent.execute(flux.positive, {"samples": flux.vae.encode(image(seed=5))}).args
    [(given_tensor, given_values)] = given
    before = given_tensor.clone(), dict(given_values), list(given_values["reference_latents"])
    views = torch.cat([image(seed=1), image(seed=2)])
    positive, negative, info = conditioning(comfy, flux, views, positive=given)
    latents = positive[0][1]["reference_latents"]
    assert len(latents) == 3 and torch.equal(latents[0], given[0][1]["reference_latents"][0])
    for latent, view in zip(latents[1:], views):
        assert latent.shape == (1, 16, 8, 8)
        torch.testing.assert_close(latent, flux.vae.encode(view[None]))  # encoded as a batch: rounding
    assert len(negative[0][1]["reference_latents"]) == 2 and "2 reference views" in info
    tensor, values, given_latents = before
    assert given_values == values and given_values["reference_latents"] == given_latents  # the same objects only
    assert torch.equal(given_tensor, tensor)
    for untouched in (flux.positive, flux.negative):
        assert not {"reference_latents", "reference_latents_method"} & untouched[0][1].keys()
    sample(comfy, flux.model, positive, negative)


def test_the_views_and_the_method_reach_flux_forward(comfy, flux):
    from comfy.patcher_extension import WrappersMP

    seen = []

    def spy(executor, x, timestep, context, y, guidance, ref_latents, *args, **kwargs):
        seen.append(([tuple(r.shape) for r in ref_latents or []], kwargs.get("ref_latents_method")))
        return executor(x, timestep, context, y, guidance, ref_latents, *args, **kwargs)

    model = flux.model.clone()
    model.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "test_spy", spy)
    views = torch.cat([image(seed=1), image(seed=2)])
    positive, negative, info = conditioning(comfy, flux, views, method="index")
    again, _, _ = conditioning(comfy, flux, views, method="index", positive=positive)
    assert again[0][1]["reference_latents_method"] == "index" and "reference_latents_method: index" in info
    assert "reference_latents_method" not in conditioning(comfy, flux, views)[0][0][1]  # model default
    sample(comfy, model, positive, negative)
    assert seen and all(call == ([(2, 16, 8, 8)] * 2, "index") for call in seen)  # cond and uncond, batched


def test_views_are_resized_to_multiples_of_16_and_hidden_pixels_encode_as_grey(comfy, flux):
    positive, _, info = conditioning(comfy, flux, image(48, 64, seed=1), size="megapixels", megapixels=0.02,
                                     reference_hide_mask=torch.ones(1, 48, 64))
    (latent,) = positive[0][1]["reference_latents"]
    assert latent.shape == (1, 16, 16, 20) and "64x48 -> 160x128" in info  # 0.02 MP of 4:3 is about 167x125
    grey = flux.vae.encode(torch.full((1, 128, 160, 3), 0.5))
    torch.testing.assert_close(latent, grey)


def test_bad_conditioning_inputs_name_the_input(comfy, flux):
    with pytest.raises(ValueError, match="reference: the image batch is empty"):
        conditioning(comfy, flux, image()[:0])
    with pytest.raises(ValueError, match="reference_hide_mask: the batch sizes do not match"):
        conditioning(comfy, flux, torch.cat([image(), image()]), reference_hide_mask=torch.ones(3, 64, 64))
