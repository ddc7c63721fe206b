"""End to end: a headless ComfyUI server running the pack's nodes from API prompts and shared workflows."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workflow_api import ui_to_api

pytestmark = pytest.mark.slow  # a headless server: start-up alone takes seconds

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
NODE_IDS = {"EmplaceLoadPreferenceLora", "EmplaceRegionalPreferenceLora", "EmplaceBoxes", "EmplaceBoxesToMask",
            "EmplaceDrawBoxes", "EmplaceIterativeInpaint", "EmplaceLoadLocationModel", "EmplaceProposeLocations",
            "EmplaceSelectBoxes", "EmplaceMultiViewContext", "EmplaceSideBySideContext", "EmplaceSideBySideSplit",
            "EmplaceMultiViewConditioning"}


def images(server, history, node_id) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(server.view(img)))) for img in history["outputs"][node_id]["images"]]


def test_the_pack_loads_without_import_failures(server):
    assert server.import_failures() == []
    assert any("emplace-under-test" in line and "seconds" in line for line in server.log().splitlines())
    info = server.get_json("/object_info")
    assert NODE_IDS <= set(info)
    assert "emplace_dpo.safetensors" in info["EmplaceLoadPreferenceLora"]["input"]["required"]["lora_name"][1]["options"]


def branch(prompt, first_id, model_ref, clip_ref, vae_ref, prefix):
    i = first_id
    prompt[str(i)] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip_ref, "text": "a red cube on the ground"}}
    prompt[str(i + 1)] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip_ref, "text": ""}}
    prompt[str(i + 2)] = {"class_type": "KSampler", "inputs": {
        "model": model_ref, "positive": [str(i), 0], "negative": [str(i + 1), 0], "latent_image": ["2", 0],
        "seed": 3, "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    prompt[str(i + 3)] = {"class_type": "VAEDecode", "inputs": {"samples": [str(i + 2), 0], "vae": vae_ref}}
    prompt[str(i + 4)] = {"class_type": "SaveImage", "inputs": {"images": [str(i + 3), 0], "filename_prefix": prefix}}
    return str(i + 4)


def test_stock_checkpoint_loader_with_both_lora_forms(server):
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        # the pack's loader, given the PEFT/diffusers-named file
        "3": {"class_type": "EmplaceLoadPreferenceLora", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "lora_name": "peft_dpo.safetensors",
            "strength_model": 1.0, "strength_clip": 1.0}},
        # ComfyUI's stock loader, given the file Emplace wrote
        "4": {"class_type": "LoraLoader", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "lora_name": "emplace_dpo.safetensors",
            "strength_model": 1.0, "strength_clip": 1.0}},
    }
    base = branch(prompt, 10, ["1", 0], ["1", 1], ["1", 2], "base")
    pack = branch(prompt, 20, ["3", 0], ["3", 1], ["1", 2], "pack")
    stock = branch(prompt, 30, ["4", 0], ["4", 1], ["1", 2], "stock")

    history = server.run(prompt)

    (base_img,), (pack_img,), (stock_img,) = (images(server, history, n) for n in (base, pack, stock))
    assert base_img.shape == (128, 128, 3)
    assert np.abs(pack_img.astype(int) - base_img.astype(int)).max() > 0  # the LoRA did something
    assert np.array_equal(pack_img, stock_img)  # and the same thing through either loader
    log = server.log()
    assert "lora key not loaded" not in log and "NOT LOADED" not in log


def test_the_shared_preference_lora_workflow_runs(server):
    workflow = json.loads((WORKFLOWS / "preference_lora.json").read_text())
    prompt = ui_to_api(workflow, server.get_json("/object_info"), overrides={
        1: {"ckpt_name": "tiny_sd15.safetensors"},
        2: {"lora_name": "emplace_dpo.safetensors"},
        5: {"width": 128, "height": 128},
        6: {"width": 64, "height": 64},
        7: {"x": 32, "y": 32},
        8: {"lora_name": "peft_dpo.safetensors"},
        9: {"width": 128, "height": 128},
        10: {"steps": 3},
    })
    history = server.run(prompt)
    (img,) = images(server, history, "12")
    assert img.shape == (128, 128, 3)
    shown = history["outputs"]["2"]["text"][0]  # the loader's UI text: what it loaded and the metadata
    assert "emplace_dpo.safetensors:" in shown and "method: dpo" in shown


def test_the_shared_iterative_inpaint_workflow_runs(server):
    picture = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
    Image.fromarray(picture).save(server.base / "input" / "scene.png")
    workflow = json.loads((WORKFLOWS / "iterative_inpaint.json").read_text())
    prompt = ui_to_api(workflow, server.get_json("/object_info"), overrides={
        1: {"ckpt_name": "tiny_sd15.safetensors"},
        2: {"image": "scene.png"},
        4: {"steps": 2, "target_resolution": 64},
    })
    history = server.run(prompt)
    (img,) = images(server, history, "5")
    assert img.shape == picture.shape
    changed = np.abs(img.astype(int) - picture.astype(int)).max(-1) > 0
    # the boxes (fractions of 128 x 96) were painted, and far from them nothing changed
    assert changed[52:74, 16:42].mean() > 0.5 and changed[24:64, 74:100].mean() > 0.5
    assert not changed[:, 118:].any() and not changed[:5].any()  # beyond grow 4 + feather 8
    assert len(history["outputs"]["8"]["images"]) == 2  # each step, previewed


def test_the_shared_layout_to_image_workflow_paints_a_blank_canvas(server):
    workflow = json.loads((WORKFLOWS / "layout_to_image.json").read_text())
    prompt = ui_to_api(workflow, server.get_json("/object_info"), overrides={
        1: {"ckpt_name": "tiny_sd15.safetensors"},
        2: {"width": 128, "height": 96},
        4: {"steps": 2, "target_resolution": 64},
    })
    assert "6" not in prompt  # the Note stays in the editor
    history = server.run(prompt)
    (img,) = images(server, history, "5")
    assert img.shape == (96, 128, 3)
    changed = np.abs(img.astype(int) - 128).max(-1) > 0
    assert changed.mean() > 0.9  # the objects, then the background around them: nothing is left blank
    no_background = dict(prompt, **{"4": {**prompt["4"], "inputs": {**prompt["4"]["inputs"], "background_pass": False}}})
    (objects_only,) = images(server, server.run(no_background), "5")
    still_blank = np.abs(objects_only.astype(int) - 128).max(-1) == 0
    assert still_blank[:2].all() and still_blank[:, :6].all()  # beyond grow 4 + feather 8 the canvas stays grey


DEFAULT_LOCATION_MODEL = "emplace-scene-world (embedded default)"


def location_model_for(server) -> str:
    """The embedded default where it exists, else a small random model in the server's location_models folder."""
    from emplace.location.model import DEFAULT_MODEL, LocationConfig, LocationModel, save_location_model

    if DEFAULT_MODEL.is_file():
        return DEFAULT_LOCATION_MODEL
    path = server.base / "location_models" / "tiny_location.safetensors"
    if not path.is_file():
        torch.manual_seed(0)
        model = LocationModel(LocationConfig(labels=["large_cube", "small_ball"], width=32, layers=1, heads=2,
                                             image_size=32))
        save_location_model(model, path)
    return path.name


def background(server, name: str) -> np.ndarray:
    picture = (np.random.default_rng(1).random((96, 128, 3)) * 255).astype(np.uint8)
    Image.fromarray(picture).save(server.base / "input" / name)
    return picture


def test_the_shared_propose_locations_workflow_runs(server):
    model_name = location_model_for(server)
    picture = background(server, "background.png")
    info = server.get_json("/object_info")
    options = info["EmplaceLoadLocationModel"]["input"]["required"]["model_name"][1]["options"]
    assert options[0] == DEFAULT_LOCATION_MODEL and model_name in options
    workflow = json.loads((WORKFLOWS / "propose_locations.json").read_text())
    prompt = ui_to_api(workflow, info, overrides={1: {"image": "background.png"}, 2: {"model_name": model_name}})
    assert prompt["3"]["inputs"]["label"] == "large cube" and prompt["3"]["inputs"]["count"] == 4
    history = server.run(prompt)
    (saved,) = images(server, history, "5")
    (shown,) = images(server, history, "4")
    assert saved.shape == picture.shape and np.array_equal(saved, shown)
    assert np.abs(saved.astype(int) - picture.astype(int)).max() > 50  # the heat map and the boxes


def test_the_shared_propose_and_insert_workflow_runs(server):
    model_name = location_model_for(server)
    picture = background(server, "insert_into.png")
    workflow = json.loads((WORKFLOWS / "propose_and_insert.json").read_text())
    prompt = ui_to_api(workflow, server.get_json("/object_info"), overrides={
        1: {"image": "insert_into.png"},
        2: {"ckpt_name": "tiny_sd15.safetensors"},
        3: {"model_name": model_name},
        4: {"min_size": 0.15, "max_size": 0.4},
        6: {"steps": 2, "target_resolution": 64},
    })
    assert prompt["5"]["inputs"]["indices"] == "0"
    # the box Select Boxes chose, drawn as a mask by the server itself
    prompt["100"] = {"class_type": "EmplaceBoxesToMask", "inputs": {"image": ["1", 0], "boxes": ["5", 0],
                                                                     "grow": 0, "union": True}}
    prompt["101"] = {"class_type": "MaskToImage", "inputs": {"mask": ["100", 0]}}
    prompt["102"] = {"class_type": "SaveImage", "inputs": {"images": ["101", 0], "filename_prefix": "chosen"}}
    history = server.run(prompt)
    (img,) = images(server, history, "7")
    (chosen,) = images(server, history, "102")
    (proposals,) = images(server, history, "8")
    assert img.shape == picture.shape and proposals.shape == picture.shape
    box = chosen[..., 0] > 127
    ys, xs = np.nonzero(box)
    w, h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    assert box.sum() == w * h  # one box
    assert 0.15 * 128 - 1 <= w <= 0.4 * 128 + 1 and 0.15 * 96 - 1 <= h <= 0.4 * 96 + 1
    changed = np.abs(img.astype(int) - picture.astype(int)).max(-1) > 0
    assert changed[box].mean() > 0.5  # the object was painted into the chosen box
    reach = 4 + 8  # grow + feather: beyond them nothing changes
    near = np.zeros_like(box)
    near[max(ys.min() - reach, 0):ys.max() + reach + 1, max(xs.min() - reach, 0):xs.max() + reach + 1] = True
    assert changed.any() and not changed[~near].any()


def target_with_hole(server, name: str, h: int, w: int, hole: tuple[int, int, int, int]):
    """An RGB picture saved with alpha 0 inside `hole` (y0, y1, x0, x1): LoadImage's MASK is 1 there
    (what ComfyUI's mask editor writes). Returns the picture's 8-bit RGB and the boolean mask."""
    rgb = (np.random.default_rng(2).random((h, w, 3)) * 255).astype(np.uint8)
    mask = np.zeros((h, w), bool)
    y0, y1, x0, x1 = hole
    mask[y0:y1, x0:x1] = True
    alpha = np.where(mask, 0, 255).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(server.base / "input" / name)
    return rgb, mask


def latent_saved(server, history, node_id) -> torch.Tensor:
    from safetensors.torch import load_file

    (saved,) = history["outputs"][node_id]["latents"]
    return load_file(str(server.base / "output" / saved["subfolder"] / saved["filename"]))["latent_tensor"]


def reference_view(server, name: str, h: int, w: int) -> None:
    picture = (np.random.default_rng(3).random((h, w, 3)) * 255).astype(np.uint8)
    Image.fromarray(picture).save(server.base / "input" / name)


def multiview_workflow(server, name: str, target: str, reference: str) -> dict:
    """A shared multi-view workflow in API form, on the tiny checkpoint, the given inputs and 4 steps."""
    workflow = json.loads((WORKFLOWS / name).read_text())
    return ui_to_api(workflow, server.get_json("/object_info"), overrides={
        1: {"ckpt_name": "tiny_sd15.safetensors"}, 2: {"image": target}, 3: {"image": reference}, 8: {"steps": 4}})


def test_the_shared_multiview_inpaint_workflow_runs(server):
    picture, mask = target_with_hole(server, "mv_target.png", 96, 128, (24, 72, 40, 96))
    reference_view(server, "mv_reference.png", 64, 96)
    prompt = multiview_workflow(server, "multiview_inpaint.json", "mv_target.png", "mv_reference.png")
    assert prompt["4"]["inputs"]["mode"] == "exact" and prompt["4"]["inputs"]["strength"] == 1.0
    # the workflow's patched MODEL against the plain one, sampling from an empty latent: the random
    # TAESD encodes the target to latents of ~1e9, where the model's steps vanish in float rounding
    prompt["100"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 96, "batch_size": 1}}
    for i, model in ((101, "4"), (103, "1")):
        prompt[str(i)] = {"class_type": "KSampler", "inputs": {**prompt["8"]["inputs"], "model": [model, 0],
                                                               "latent_image": ["100", 0]}}
        prompt[str(i + 1)] = {"class_type": "SaveLatent", "inputs": {"samples": [str(i), 0],
                                                                     "filename_prefix": f"latent_{model}"}}
    history = server.run(prompt)
    (img,) = images(server, history, "11")
    assert img.shape == picture.shape
    assert np.array_equal(img[~mask], picture[~mask])  # pasted back into the target: untouched outside the mask
    assert np.abs(img[mask].astype(int) - picture[mask].astype(int)).max(-1).mean() > 10  # new pixels inside it
    with_view, plain = latent_saved(server, history, "102"), latent_saved(server, history, "104")
    # the reference view changed the sample: a small effect with this checkpoint's small random weights
    # (about 2e-5 of the latent's range), yet far above float32 rounding (about 1e-7 of it)
    assert (with_view - plain).abs().max() > 1e-6 * plain.abs().max()
    shown = history["outputs"]["12"]["text"][0]
    assert "multi-view reference attention: 1 view (96x64 px -> 12x8 latent)" in shown and "exact mode" in shown


def test_the_shared_side_by_side_inpaint_workflow_runs(server):
    # a target that is no multiple of 8: the canvas is padded, the split gives the target's own size back
    picture, mask = target_with_hole(server, "sbs_target.png", 76, 92, (20, 60, 30, 80))
    reference_view(server, "sbs_reference.png", 38, 60)
    prompt = multiview_workflow(server, "side_by_side_inpaint.json", "sbs_target.png", "sbs_reference.png")
    assert prompt["4"]["inputs"]["arrangement"] == "left" and prompt["4"]["inputs"]["multiple_of"] == 8
    history = server.run(prompt)
    (img,) = images(server, history, "11")
    (canvas,) = images(server, history, "12")
    assert img.shape == picture.shape
    assert np.array_equal(img[~mask], picture[~mask])  # bit for bit outside the mask (8-bit PNG values)
    assert np.abs(img[mask].astype(int) - picture[mask].astype(int)).max(-1).mean() > 10  # painted inside it
    # the reference (38x60 scaled to the target's 76 px height: 120 wide), the target from x 120, padded to 8
    assert canvas.shape == (80, 216, 3)
    assert np.array_equal(canvas[20:60, 120 + 30:120 + 80], img[mask].reshape(40, 50, 3))  # what Split took out
    assert "target at x 120..212, y 0..76" in history["outputs"]["13"]["text"][0]


def test_the_shared_insert_where_it_belongs_workflow_runs_with_and_without_the_other_view(server):
    model_name = location_model_for(server)
    picture = background(server, "belongs.png")
    reference_view(server, "belongs_other_view.png", 64, 96)
    workflow = json.loads((WORKFLOWS / "insert_where_it_belongs.json").read_text())
    info = server.get_json("/object_info")
    overrides = {1: {"image": "belongs.png"}, 2: {"ckpt_name": "tiny_sd15.safetensors"},
                 3: {"lora_name": "emplace_dpo.safetensors"}, 4: {"model_name": model_name},
                 5: {"min_size": 0.15, "max_size": 0.4}, 7: {"image": "belongs_other_view.png"},
                 9: {"steps": 2, "target_resolution": 64}}
    prompt = ui_to_api(workflow, info, overrides=overrides)
    assert "8" not in prompt and prompt["9"]["inputs"]["model"] == ["3", 0]  # bypassed: the LoRA model goes straight in
    prompt["100"] = {"class_type": "EmplaceBoxesToMask", "inputs": {"image": ["1", 0], "boxes": ["6", 0],
                                                                     "grow": 4 + 8, "union": True}}
    prompt["101"] = {"class_type": "MaskToImage", "inputs": {"mask": ["100", 0]}}
    prompt["102"] = {"class_type": "SaveImage", "inputs": {"images": ["101", 0], "filename_prefix": "reach"}}
    history = server.run(prompt)
    (img,) = images(server, history, "10")
    reach = images(server, history, "102")[0][..., 0] > 127  # the picked box, grown by grow + feather
    changed = np.abs(img.astype(int) - picture.astype(int)).max(-1) > 0
    assert changed.any() and not changed[~reach].any()  # the object went into the picked box and nowhere else
    # the LoRA was loaded and patched every layer; its effect on pixels is tested from an empty latent above, since
    # the tiny checkpoint's random VAE encodes a photo to latents where the UNet's steps vanish in rounding
    shown = history["outputs"]["3"]["text"][0]
    assert "method: dpo" in shown and "lora key not loaded" not in server.log()

    for node in workflow["nodes"]:
        if node["type"] == "EmplaceMultiViewContext":
            node["mode"] = 0  # what Ctrl+B does in the editor
    with_view = ui_to_api(workflow, info, overrides=overrides)
    assert with_view["9"]["inputs"]["model"] == ["8", 0] and with_view["8"]["inputs"]["model"] == ["3", 0]
    (viewed,) = images(server, server.run(with_view), "10")
    changed = np.abs(viewed.astype(int) - picture.astype(int)).max(-1) > 0
    assert changed.any() and not changed[~reach].any()


def test_the_shared_flux_fill_workflow_runs_on_a_tiny_flux_fill(server):
    """Everything after the loaders as shipped; the three loaders give way to a tiny Flux Fill (see
    server_test_nodes: 0.3.64 cannot load one from a file)."""
    picture = (np.random.default_rng(5).random((80, 96, 3)) * 255).astype(np.uint8)
    Image.fromarray(picture).save(server.base / "input" / "flux_fill.png")
    workflow = json.loads((WORKFLOWS / "flux_fill_iterative_inpaint.json").read_text())
    prompt = ui_to_api(workflow, server.get_json("/object_info"), overrides={
        4: {"image": "flux_fill.png"}, 6: {"steps": 2, "target_resolution": 64}})
    assert prompt["6"]["inputs"]["cfg"] == 1.0 and prompt["6"]["inputs"]["guidance"] == 0.0
    assert [prompt[n]["class_type"] for n in "123"] == ["UNETLoader", "DualCLIPLoader", "VAELoader"]
    prompt["1"] = {"class_type": "EmplaceTestTinyFluxFill", "inputs": {}}
    del prompt["2"], prompt["3"]
    prompt["6"]["inputs"] |= {"clip": ["1", 1], "vae": ["1", 2]}
    history = server.run(prompt)
    (img,) = images(server, history, "7")
    assert img.shape == picture.shape
    changed = np.abs(img.astype(int) - picture.astype(int)).max(-1) > 0
    # the boxes (fractions of 96 x 80) were painted, and beyond grow 4 + feather 8 nothing changed
    assert changed[44:60, 14:30].mean() > 0.5 and changed[20:52, 56:74].mean() > 0.5
    assert changed.any() and not changed[:, 90:].any() and not changed[:3].any()
