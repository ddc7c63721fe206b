"""Proposal nodes inside ComfyUI (in-process): load a location model, propose boxes, pick some, inpaint them.

The location model is a small random one (seeded), saved into a models/location_models folder
the tests register; the embedded default is used where it exists.
"""

from __future__ import annotations

import os

import pytest
import torch
from tiny_comfy import random_image, run_node

LABELS = ["large_cube", "small_ball"]
NAME = "tiny_location.safetensors"


def canvas(h=48, w=64):
    return random_image(h, w)


def write_tiny_location_model(path, seed=0):
    from emplace.location.model import (
        LocationConfig,
        LocationModel,
        save_location_model,
    )

    torch.manual_seed(seed)
    model = LocationModel(LocationConfig(labels=LABELS, width=32, layers=1, heads=2, image_size=32))
    return save_location_model(model, path)


@pytest.fixture(scope="module")
def location_folder(comfy, tmp_path_factory):
    import folder_paths

    folder = tmp_path_factory.mktemp("location_models")
    write_tiny_location_model(folder / NAME)
    folder_paths.add_model_folder_path("location_models", str(folder))
    return folder


@pytest.fixture(scope="module")
def location_model(comfy, location_folder):
    model, _ = run_node(comfy, "EmplaceLoadLocationModel", model_name=NAME)
    return model


def propose(comfy, model, image=None, **overrides):
    settings = dict(location_model=model, image=canvas() if image is None else image, label="large cube", count=4,
                    samples=100, temperature=1.0, top_k=0, top_p=1.0, seed=3, min_size=0.0, max_size=1.0,
                    nms_iou=0.5)
    return run_node(comfy, "EmplaceProposeLocations", **(settings | overrides))


def combo_options(comfy, node, name):
    return comfy.node[node].INPUT_TYPES()["required"][name][1]["options"]


# --- the loader ---------------------------------------------------------------------------


def test_the_loader_lists_the_default_first_then_the_folders_models(comfy, location_folder):
    options = combo_options(comfy, "EmplaceLoadLocationModel", "model_name")
    assert options[0] == "emplace-scene-world (embedded default)"
    assert NAME in options and not any(o.endswith(".json") for o in options)


def test_the_loader_caches_by_file_and_reloads_a_changed_file(comfy, location_folder):
    first, info = run_node(comfy, "EmplaceLoadLocationModel", model_name=NAME)
    assert first.labels == LABELS and "large_cube, small_ball" in info
    again, _ = run_node(comfy, "EmplaceLoadLocationModel", model_name=NAME)
    assert again is first  # not reloaded
    copy = location_folder / "changing.safetensors"
    write_tiny_location_model(copy, seed=1)
    before, _ = run_node(comfy, "EmplaceLoadLocationModel", model_name="changing.safetensors")
    write_tiny_location_model(copy, seed=2)
    os.utime(copy, ns=(copy.stat().st_atime_ns, copy.stat().st_mtime_ns + 10**9))
    after, _ = run_node(comfy, "EmplaceLoadLocationModel", model_name="changing.safetensors")
    assert after is not before
    assert not torch.equal(after.head.weight, before.head.weight)


def test_bad_files_give_the_librarys_reason(comfy, location_folder):
    from safetensors.torch import save_file

    save_file({"lora_unet_down.lora_down.weight": torch.zeros(4, 8)}, str(location_folder / "a_lora.safetensors"))
    torch.save({"w": torch.zeros(2)}, location_folder / "pickled.safetensors")
    write_tiny_location_model(location_folder / "no_config.safetensors")
    (location_folder / "no_config.json").unlink()
    (location_folder / "bad_config.safetensors").write_bytes((location_folder / NAME).read_bytes())
    config = (location_folder / NAME).with_suffix(".json").read_text().replace('"image_size": 32', '"image_size": 30')
    (location_folder / "bad_config.json").write_text(config)
    cases = {"a_lora.safetensors": "is not an Emplace location model .*LoRA",
             "pickled.safetensors": "is a PyTorch pickle",
             "no_config.safetensors": "has no config beside it: no_config.json is missing",
             "bad_config.safetensors": "could not be built as a location model.*divide image_size",
             "not_there.safetensors": "is not in ComfyUI's location_models folder"}
    for name, message in cases.items():
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            run_node(comfy, "EmplaceLoadLocationModel", model_name=name)


def test_the_embedded_default(comfy):
    from emplace.location.model import DEFAULT_MODEL

    name = "emplace-scene-world (embedded default)"
    if not DEFAULT_MODEL.is_file():
        with pytest.raises(ValueError, match="embedded default location model is not in this copy"):
            run_node(comfy, "EmplaceLoadLocationModel", model_name=name)
        return
    model, info = run_node(comfy, "EmplaceLoadLocationModel", model_name=name)
    assert "large_cube" in model.labels and "large_cube" in info
    boxes, _, _ = propose(comfy, model, image=canvas(64, 64), label="large cube", count=2)
    assert len(boxes) == 2


# --- proposals ----------------------------------------------------------------------------


def test_proposals_come_best_first_with_masks_and_a_preview(comfy, location_model):
    from emplace.boxes import box_mask

    image = canvas()
    boxes, masks, preview = propose(comfy, location_model, image=image)
    assert boxes.size == (64, 48) and len(boxes) == 4
    scores = [b.score for b in boxes]
    assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)  # log-likelihoods
    assert all(b.label == "large_cube" and b.prompt == "large cube" and not b.is_empty for b in boxes)
    assert masks.shape == (4, 48, 64)
    for box, mask in zip(boxes, masks):
        assert torch.equal(mask, box_mask(box, 64, 48))
    assert preview.shape == image.shape and preview.dtype == image.dtype
    assert (preview - image).abs().max() > 0.1
    assert preview.min() >= 0 and preview.max() <= 1


def test_proposals_are_seeded(comfy, location_model):
    a, _, pa = propose(comfy, location_model, seed=7)
    b, _, pb = propose(comfy, location_model, seed=7)
    c, _, _ = propose(comfy, location_model, seed=8)
    assert a == b and torch.equal(pa, pb)
    assert [x.xyxy for x in a] != [x.xyxy for x in c]


def test_a_batch_uses_its_first_frame(comfy, location_model):
    image = canvas()
    batch = torch.cat([image, torch.zeros_like(image)])
    one, _, preview_one = propose(comfy, location_model, image=image)
    both, _, preview_both = propose(comfy, location_model, image=batch)
    assert one == both and torch.equal(preview_one, preview_both)


def test_every_box_lies_inside_the_region(comfy, location_model):
    from emplace.boxes import box_mask

    region = torch.zeros(1, 48, 64)
    region[0, 8:40, 30:60] = 1
    boxes, _, _ = propose(comfy, location_model, region=region, count=8, samples=60)
    assert len(boxes) >= 2
    for box in boxes:
        assert (box_mask(box, 64, 48) * (1 - region[0])).sum() == 0, box.xyxy


def test_box_sides_stay_in_the_size_range(comfy, location_model):
    boxes, _, _ = propose(comfy, location_model, min_size=0.25, max_size=0.5, count=10, nms_iou=1.0)
    assert len(boxes) == 10
    for b in boxes:
        assert 0.25 * 64 - 1e-3 <= b.width <= 0.5 * 64 + 1e-3 and 0.25 * 48 - 1e-3 <= b.height <= 0.5 * 48 + 1e-3


def test_by_default_no_box_is_a_sliver(comfy, location_model):
    default = comfy.node["EmplaceProposeLocations"].INPUT_TYPES()["required"]["min_size"][1]["default"]
    assert 0.05 <= default <= 0.1
    boxes, _, _ = propose(comfy, location_model, min_size=default, count=20, nms_iou=1.0)
    assert min(min(b.width / 64, b.height / 48) for b in boxes) >= default - 1e-3


def test_an_unknown_label_lists_the_known_ones(comfy, location_model):
    with pytest.raises(ValueError, match="unknown label 'giraffe'.*it knows: large_cube, small_ball"):
        propose(comfy, location_model, label="giraffe")
    boxes, _, _ = propose(comfy, location_model, label="Small-Ball", count=1)
    assert boxes[0].label == "small_ball" and boxes[0].prompt == "small ball"


def test_a_region_that_excludes_everything_is_an_error(comfy, location_model):
    with pytest.raises(ValueError, match="excludes the whole image"):
        propose(comfy, location_model, region=torch.zeros(1, 48, 64))


# --- picking ------------------------------------------------------------------------------


def test_select_boxes_by_spec(comfy, location_model):
    boxes, _, _ = propose(comfy, location_model, count=4)

    def select(indices, label="", prompt=""):
        (out,) = run_node(comfy, "EmplaceSelectBoxes", boxes=boxes, indices=indices, label=label, prompt=prompt)
        return out

    assert list(select("0")) == [boxes[0]] and select("0").size == boxes.size
    assert list(select("0,2")) == [boxes[0], boxes[2]]
    assert list(select("0-2")) == [boxes[0], boxes[1], boxes[2]]
    assert list(select(" 3 , 1 - 2, 1 ")) == [boxes[3], boxes[1], boxes[2]]  # order given, repeats dropped
    assert list(select("all")) == list(boxes)
    relabelled = select("1", label="red cube", prompt="a shiny red cube")
    assert [(b.label, b.prompt, b.xyxy, b.score) for b in relabelled] == [
        ("red cube", "a shiny red cube", boxes[1].xyxy, boxes[1].score)]
    assert select("1", prompt="  ")[0].prompt == "large cube"  # empty keeps
    for spec, message in (("4", "box index 4 is out of range: there are 4 boxes \\(0 to 3\\)"),
                          ("1-9", "box index 4 is out of range"), ("x", "'x' is not a box index"),
                          ("2-0", "runs backwards"), ("", "no box index given")):
        with pytest.raises(ValueError, match=message):
            select(spec)


def test_propose_pick_inpaint_changes_only_the_painted_region(comfy, tiny, location_model):
    image = canvas()
    proposals, _, _ = propose(comfy, location_model, image=image, min_size=0.2, max_size=0.5)
    (chosen,) = run_node(comfy, "EmplaceSelectBoxes", boxes=proposals, indices="0", label="", prompt="")
    out, painted, steps = run_node(
        comfy, "EmplaceIterativeInpaint", model=tiny.model, clip=tiny.clip, vae=tiny.vae, image=image,
        boxes=chosen, prompt_template="Add {prompt}", negative_prompt="", seed=3, steps=2, cfg=4.0,
        sampler_name="euler", scheduler="normal", denoise=1.0, context_padding=0.5, target_resolution=64, grow=2,
        feather=4, order="given", colour_match=True, background_pass=False, background_prompt="",
        background_denoise=1.0)
    assert out.shape == image.shape and steps.shape[0] == 1
    x0, y0, x1, y1 = chosen[0].pixel_bounds()
    assert painted[0, y0:y1, x0:x1].min() == 1  # the chosen box was painted
    outside = painted[0] == 0
    assert outside.any() and torch.equal(out[0][outside], image[0][outside])  # bit for bit
    assert (out[0][painted[0] == 1] - image[0][painted[0] == 1]).abs().mean() > 0.02
