"""End to end: a headless ComfyUI server running the pack's nodes from API prompts and shared workflows."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from workflow_api import ui_to_api

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
NODE_IDS = {"EmplaceLoadPreferenceLora", "EmplaceRegionalPreferenceLora", "EmplaceBoxes", "EmplaceBoxesToMask",
            "EmplaceDrawBoxes", "EmplaceIterativeInpaint"}


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
