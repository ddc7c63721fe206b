"""Box nodes and Emplace Iterative Inpaint inside ComfyUI (in-process, tiny models)."""

from __future__ import annotations

import sys

import pytest
import torch
from tiny_comfy import random_image, run_node

SPEC = "red cube: 4 4 28 30\nlamp: 0.5 0.25 0.9 0.75 | a brass lamp"


def canvas(h=64, w=72):
    return random_image(h, w)


def test_boxes_from_text_take_the_image_size_and_report_a_bad_line(comfy):
    (boxes,) = run_node(comfy, "EmplaceBoxes", spec=SPEC, width=512, height=512, image=canvas())
    assert boxes.size == (72, 64)
    assert [(b.label, b.prompt, b.xyxy) for b in boxes] == [("red cube", "", (4, 4, 28, 30)),
                                                             ("lamp", "a brass lamp", (36, 16, 64.8, 48))]
    with pytest.raises(ValueError, match="line 2: 'lamp 1 2 3' is not"):
        run_node(comfy, "EmplaceBoxes", spec="cube: 1 1 9 9\nlamp 1 2 3", width=64, height=64)


def test_any_image_size_can_be_typed_when_no_image_is_connected(comfy):
    required = comfy.node["EmplaceBoxes"].INPUT_TYPES()["required"]
    assert required["width"][1]["step"] == 1 and required["height"][1]["step"] == 1
    (boxes,) = run_node(comfy, "EmplaceBoxes", spec="a: 0.1 0.1 0.5 0.5", width=451, height=300)
    assert boxes.size == (451, 300)


@pytest.mark.parametrize("kind", ["emplace", "bbox", "bounding_box"])
def test_any_box_type_becomes_a_mask(comfy, kind):
    (boxes,) = run_node(comfy, "EmplaceBoxes", spec="a: 4 4 28 30", width=72, height=64)
    given = {"emplace": boxes, "bbox": [(4, 4, 24, 26)], "bounding_box": {"x": 4, "y": 4, "width": 24, "height": 26}}
    (mask,) = run_node(comfy, "EmplaceBoxesToMask", image=canvas(), boxes=given[kind], grow=0, union=True)
    assert mask.shape == (1, 64, 72) and mask[0, 4:30, 4:28].min() == 1 and mask.sum() == 24 * 26


def test_drawn_boxes_leave_the_inside_alone(comfy):
    (boxes,) = run_node(comfy, "EmplaceBoxes", spec="a: 10 20 60 60", width=72, height=64)
    image = canvas()
    (drawn,) = run_node(comfy, "EmplaceDrawBoxes", image=image, boxes=boxes, line=2)
    assert (drawn[0, 40, 10] - image[0, 40, 10]).abs().max() > 0.01  # on the left edge
    torch.testing.assert_close(drawn[0, 35:55, 20:50], image[0, 35:55, 20:50], atol=1 / 255, rtol=0)


def inpaint(comfy, tiny, model, boxes, image, **overrides):
    settings = dict(model=model, clip=tiny.clip, vae=tiny.vae, image=image, boxes=boxes,
                    prompt_template="Add {prompt}", negative_prompt="", seed=3, steps=2, cfg=4.0,
                    sampler_name="euler", scheduler="normal", denoise=1.0, context_padding=0.5,
                    target_resolution=64, grow=2, feather=4, order="bottom-up", colour_match=True,
                    background_pass=False, background_prompt="Add gray background", background_denoise=1.0)
    return run_node(comfy, "EmplaceIterativeInpaint", **(settings | overrides))


@pytest.mark.parametrize("channels", [4, 9])
def test_iterative_inpaint_changes_only_the_painted_region(comfy, tiny, channels):
    from tiny_comfy import tiny_model

    model = tiny.model if channels == 4 else tiny_model(in_channels=9)
    image = canvas()
    (boxes,) = run_node(comfy, "EmplaceBoxes", spec=SPEC, width=72, height=64)
    out, painted, steps = inpaint(comfy, tiny, model, boxes, image)
    assert out.shape == image.shape and painted.shape == (1, 64, 72) and steps.shape == (2, 64, 72, 3)
    outside = painted[0] == 0
    assert outside.any() and torch.equal(out[0][outside], image[0][outside])  # bit for bit
    assert (out[0][painted[0] == 1] - image[0][painted[0] == 1]).abs().mean() > 0.02
    again, _, _ = inpaint(comfy, tiny, model, boxes, image)
    assert torch.equal(out, again)  # seeded


def test_sdxl_is_conditioned_on_each_crops_size(comfy, tiny):
    from emplace.boxes import parse_boxes
    from emplace.inpaint.plan import plan
    from tiny_comfy import tiny_sdxl_model

    model = tiny_sdxl_model()
    seen = []
    encode_adm = model.model.encode_adm

    def recording(**kwargs):
        seen.append(tuple(kwargs.get(k) for k in ("width", "height", "target_width", "target_height")))
        return encode_adm(**kwargs)

    model.model.encode_adm = recording
    image = canvas()
    (boxes,) = run_node(comfy, "EmplaceBoxes", spec=SPEC, width=72, height=64)
    out, painted, _ = inpaint(comfy, tiny, model, boxes, image, target_resolution=48)
    outside = painted[0] == 0
    assert torch.equal(out[0][outside], image[0][outside])
    sizes = [s.size for s in plan(parse_boxes(SPEC, 72, 64), (72, 64), "bottom-up", grow=2, feather=4, padding=0.5, target=48,
                                  background=False, seed=3)]
    assert sorted(set(seen)) == sorted({(w, h, w, h) for w, h in sizes})  # each crop's, not the canvas's 72x64


def test_the_background_pass_and_no_boxes(comfy, tiny):
    image = canvas()
    (boxes,) = run_node(comfy, "EmplaceBoxes", spec="a: 4 4 28 30", width=72, height=64)
    out, painted, steps = inpaint(comfy, tiny, tiny.model, boxes, image, background_pass=True, feather=0)
    assert steps.shape[0] == 2 and painted.min() == 1  # the object, then everything else
    same, none_painted, _ = inpaint(comfy, tiny, tiny.model, [], image)
    assert torch.equal(same, image) and none_painted.max() == 0


def test_layout_to_image_from_a_blank_canvas_keeps_each_object_through_the_background_pass(comfy, tiny):
    empty_image = comfy.node["EmptyImage"]()  # core's blank canvas (a V1 node)
    (blank,) = getattr(empty_image, empty_image.FUNCTION)(width=72, height=64, batch_size=1, color=0x808080)
    (boxes,) = run_node(comfy, "EmplaceBoxes", spec="red cube: 4 4 28 30\nblue sphere: 40 24 68 60", width=72, height=64)
    out, painted, steps = inpaint(comfy, tiny, tiny.model, boxes, blank, background_pass=True, feather=0,
                                  colour_match=False)
    assert steps.shape[0] == 3 and painted.min() == 1  # two objects, then everything else
    objects = steps[1]  # the canvas after both objects
    grown = torch.zeros(64, 72, dtype=torch.bool)
    grown[2:32, 2:30] = grown[22:62, 38:70] = True  # the boxes grown by 2 px
    assert torch.equal(out[0][grown], objects[grown])  # the background pass leaves the objects bit for bit
    assert (objects[~grown] == blank[0][~grown]).all()  # ... and the object passes left the rest blank
    assert (out[0][~grown] - blank[0][~grown]).abs().mean() > 0.02  # which the background pass painted


def test_boxes_for_another_image_size_are_refused(comfy, tiny):
    (boxes,) = run_node(comfy, "EmplaceBoxes", spec="a: 4 4 28 30", width=128, height=128)
    with pytest.raises(ValueError, match="made for a 128x128 image, but the image is 72x64"):
        inpaint(comfy, tiny, tiny.model, boxes, canvas())


FLOW_MODELS = ("flux", "flux-fill", "sd3")


def flow_model(kind: str):
    """Tiny Flux / Flux Fill / SD3 reading the test CLIP's 64-wide context and pooled output."""
    from tiny_comfy import CONTEXT_DIM
    from tiny_flux import tiny_flux, tiny_sd3

    if kind == "sd3":
        return tiny_sd3()
    return tiny_flux(in_channels=96 if kind == "flux-fill" else 16, vec_in_dim=CONTEXT_DIM)


def recording(model, seen: list):
    """A clone whose every model call records the latent's shape and the conditioning that reached it."""
    model = model.clone()

    def wrapper(apply_model, args):
        seen.append((tuple(args["input"].shape), dict(args["c"])))
        return apply_model(args["input"], args["timestep"], **args["c"])

    model.set_model_unet_function_wrapper(wrapper)
    return model


@pytest.mark.parametrize("kind", FLOW_MODELS)
def test_iterative_inpaint_on_flow_models_keeps_the_outside_and_snaps_crops_to_16_px(comfy, tiny, kind):
    from types import SimpleNamespace

    from emplace.boxes import parse_boxes
    from emplace.inpaint.plan import plan
    from tiny_flux import tiny_flux_vae

    seen = []
    model = recording(flow_model(kind), seen)
    image = canvas()
    (boxes,) = run_node(comfy, "EmplaceBoxes", spec=SPEC, width=72, height=64)
    dit = SimpleNamespace(clip=tiny.clip, vae=tiny_flux_vae())
    out, painted, _ = inpaint(comfy, dit, model, boxes, image, cfg=1.0, target_resolution=56)
    outside = painted[0] == 0
    assert outside.any() and torch.equal(out[0][outside], image[0][outside])  # bit for bit
    assert (out[0][~outside] - image[0][~outside]).abs().mean() > 0.02
    # 16-channel latents, every side a whole number of 2x2 patches (16 px), where UNet snapping (8 px) would not be
    assert seen and all(shape[1] == 16 and shape[2] % 2 == 0 and shape[3] % 2 == 0 for shape, _ in seen)
    eight = plan(parse_boxes(SPEC, 72, 64), (72, 64), "bottom-up", grow=2, feather=4, padding=0.5, target=56, seed=3,
                 background=False)
    assert any(side % 16 for step in eight for side in step.size)
    conditioning = seen[0][1]
    if kind == "sd3":
        assert "guidance" not in conditioning
    else:  # the model's own distilled guidance, as FluxGuidance would set it
        assert conditioning["guidance"].tolist() == [30.0 if kind == "flux-fill" else 3.5]
    if kind == "flux-fill":  # the masked image's latent and the mask, as core's InpaintModelConditioning builds them
        assert conditioning["c_concat"].shape[1] == 16 + 64
    _, _, _ = inpaint(comfy, dit, recording(flow_model(kind), seen := []), boxes, image, cfg=1.0,
                      target_resolution=56, guidance=2.0)
    assert kind == "sd3" or seen[0][1]["guidance"].tolist() == [2.0]


def test_each_model_family_gets_its_own_resolution_snap_and_guidance(comfy, tiny):
    from tiny_comfy import tiny_sdxl_model

    from emplace.families import FLUX, FLUX_FILL, SD3

    package = comfy.node["EmplaceIterativeInpaint"].__module__.rsplit(".", 1)[0]  # the pack as ComfyUI loaded it
    family = sys.modules[f"{package}.families"].model_family
    # compared by key: the pack, loaded by ComfyUI, has its own copy of emplace.families
    assert [family(flow_model(kind)).key for kind in FLOW_MODELS] == [FLUX.key, FLUX_FILL.key, SD3.key]
    assert (FLUX.resolution, FLUX.multiple, FLUX.guidance, FLUX_FILL.guidance) == (1024, 16, 3.5, 30.0)
    assert (SD3.resolution, SD3.multiple, SD3.guidance) == (1024, 16, None)
    unet = family(tiny.model)  # the tiny SD1.5-shaped UNet: a custom width, the node falls back to 512 px
    assert (unet.multiple, unet.guidance, unet.resolution) == (8, None, 0)
    assert family(tiny_sdxl_model()).multiple == 8
