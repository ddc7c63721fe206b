"""The toy inpainting model: a diffusers folder that the trainer writes and the demo runs."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emplace.scenes.vocabulary import words
from emplace.toy_inpaint import ToyInpaintModel

ROOT = Path(__file__).resolve().parents[2]


def test_pixels_outside_the_mask_are_unchanged_and_bad_sizes_are_refused(tmp_path):
    model = ToyInpaintModel.create(words(), seed=0)
    model.save(tmp_path / "toy")
    model = ToyInpaintModel.load(tmp_path / "toy")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(2, 64, 64)
    masks[:, 16:40, 20:44] = 1
    out = model.inpaint(images, masks, ["large red metal cube", "small blue matte sphere"], steps=2)
    assert torch.equal(out[:, :, ~masks[0].bool()], images[:, :, ~masks[0].bool()])
    assert not torch.equal(out[:, :, 16:40, 20:44], images[:, :, 16:40, 20:44])
    import pytest

    with pytest.raises(ValueError, match="inpaints 64x64 images"):
        model.inpaint(torch.rand(1, 3, 32, 32), torch.zeros(1, 32, 32), ["x"], steps=1)


@pytest.mark.slow
def test_training_writes_a_loadable_model_and_resumes_exactly(tmp_path):
    from emplace.weights import load_safetensors

    def train(name, *extra):
        r = subprocess.run([sys.executable, "-m", "trainer", "toy-inpaint", "--out", str(tmp_path / name),
                            "--work", str(tmp_path / "work"), "--samples", "16", "--batch", "4", "--tasks", "layout",
                            "--checkpoint-every", "2", *extra], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout

    def weights(name):
        return load_safetensors(tmp_path / name / "unet/diffusion_pytorch_model.safetensors")[0]

    assert "after 4 steps" in train("straight", "--steps", "4", "--work", str(tmp_path / "straight_work"))
    assert "after 2 steps" in train("resumed", "--steps", "2", "--work", str(tmp_path / "resumed_work"))
    assert "resumed from" in train("resumed", "--steps", "4", "--resume", "--work", str(tmp_path / "resumed_work"))
    ToyInpaintModel.load(tmp_path / "resumed")
    a, b = weights("straight"), weights("resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the averaged weights too
    # --init starts from a model's weights: no steps give that model back, and steps move away from it
    train("copied", "--init", str(tmp_path / "straight"), "--steps", "0", "--work", str(tmp_path / "copied_work"))
    train("tuned", "--init", str(tmp_path / "straight"), "--steps", "2", "--work", str(tmp_path / "tuned_work"))
    c, d = weights("copied"), weights("tuned")
    assert all(torch.equal(a[k], c[k]) for k in a) and not all(torch.equal(a[k], d[k]) for k in a)


def test_the_layout_tasks_paint_one_box_on_a_partial_canvas_or_everything_around_the_objects():
    from emplace.boxes import Box, box_mask
    from emplace.inpaint.plan import BLANK_CANVAS_BACKGROUND, BLANK_CANVAS_GREY
    from trainer.toy_inpaint import layout_example

    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[4.0, 4, 20, 24], [30, 30, 50, 60], [40, 2, 60, 20]])
    prompts = ["small red matte cube", "large blue metal sphere", "small green matte cylinder"]
    masks = [box_mask(Box(*b.tolist()), 64, 64, grow=2).bool() for b in boxes]
    union = masks[0] | masks[1] | masks[2]
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        target, canvas, mask, prompt = layout_example(image, boxes, prompts, "foreground", g)
        named = [i for i, p in enumerate(prompts) if p in prompt]
        assert prompt.startswith("Add ") and 1 <= len(named) <= 3
        assert torch.equal(mask.bool(), torch.stack([masks[i] for i in named]).any(0))
        assert torch.equal(target[:, mask.bool()], image[:, mask.bool()])  # the box holds the true render
        assert torch.equal(target[:, ~mask.bool()], canvas[:, ~mask.bool()])  # nothing else changes
        assert (canvas[:, ~union] == BLANK_CANVAS_GREY).all()  # outside every box the canvas is blank
    target, canvas, mask, prompt = layout_example(image, boxes, prompts, "background", g)
    assert prompt == BLANK_CANVAS_BACKGROUND and torch.equal(mask.bool(), ~union)
    assert torch.equal(target, image) and torch.equal(canvas[:, union], image[:, union])


@pytest.mark.slow
def test_the_demo_runs_on_the_embedded_model(tmp_path):
    r = subprocess.run([sys.executable, "-m", "trainer", "demo", "--out", str(tmp_path), "--steps", "3"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "prompted object found in the mask" in r.stdout and (tmp_path / "demo.png").is_file()


@pytest.mark.slow
def test_the_demo_checks_its_files_before_any_work(tmp_path):
    import pickle

    pickled = tmp_path / "lora.safetensors"
    pickled.write_bytes(pickle.dumps({"weight": [1.0]}))
    for option, value in (("--lora", pickled), ("--location-model", tmp_path)):
        r = subprocess.run([sys.executable, "-m", "trainer", "demo", "--out", str(tmp_path / "out"), option,
                            str(value)], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and value.name in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert not (tmp_path / "out").exists()
