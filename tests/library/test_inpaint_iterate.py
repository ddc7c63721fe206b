"""The iterative loop: objects painted one at a time onto the canvas the earlier ones left."""

from pathlib import Path

import pytest
import torch

from emplace.boxes import Box, Boxes
from emplace.inpaint.iterate import backend_inpaint, iterative_inpaint
from emplace.inpaint.plan import plan

TOY = Path(__file__).resolve().parents[2] / "emplace" / "defaults" / "toy_inpaint"
COLOURS = {"red": (1.0, 0.0, 0.0), "blue": (0.0, 0.0, 1.0)}


class Painter:
    """A stand-in model: fills the mask with the prompt's colour, and remembers what it was shown."""

    def __init__(self):
        self.seen = []

    def __call__(self, image, mask, prompt, seed):
        self.seen.append((image.clone(), prompt, seed))
        colour = torch.tensor(COLOURS.get(prompt.split()[-1], (0.5, 0.5, 0.5)))[:, None, None]
        return torch.where(mask[None] > 0, colour.expand_as(image), image)


def two_boxes(w=61, h=47):
    return Boxes((Box(5, 5, 30, 30, label="red"), Box(20, 15, 50, 40, label="blue")), w, h)


def test_pixels_outside_every_painted_region_are_untouched():
    image = torch.rand(3, 47, 61, generator=torch.Generator().manual_seed(0))
    result = iterative_inpaint(image, plan(two_boxes(), (61, 47), feather=4, target=64, background=False), Painter())
    outside = result.painted == 0
    assert outside.any() and torch.equal(result.image[:, outside], image[:, outside])
    assert torch.allclose(result.image[:, 25, 40], torch.tensor([0.0, 0.0, 1.0]))  # blue, painted last, on top
    assert len(result.intermediates) == 2


def test_each_object_is_cropped_from_the_canvas_the_earlier_ones_left():
    painter = Painter()
    image = torch.full((3, 47, 61), 0.5)
    iterative_inpaint(image, plan(two_boxes(), (61, 47), feather=0, target=64, background=False), painter)
    (_, first, _), (second_crop, second, _) = painter.seen
    assert (first, second) == ("Add red", "Add blue")
    red = (second_crop[0] > 0.9) & (second_crop[2] < 0.1)
    assert red.any()  # the red object, already painted, is in the blue one's context window


def test_bottom_up_paints_the_nearer_object_last():
    painter = Painter()
    image = torch.full((3, 47, 61), 0.5)
    listed_near_first = Boxes(tuple(reversed(two_boxes().boxes)), 61, 47)
    result = iterative_inpaint(image, plan(listed_near_first, (61, 47), order="bottom-up", feather=0, target=64,
                                           background=False), painter)
    assert [p for _, p, _ in painter.seen] == ["Add red", "Add blue"]  # red ends higher: farther, first
    assert torch.allclose(result.image[:, 22, 25], torch.tensor([0.0, 0.0, 1.0]))


def test_progress_is_reported_and_an_interrupt_stops_between_objects():
    calls = []

    def on_step(done, total):
        calls.append((done, total))
        if done == 1:
            raise KeyboardInterrupt

    painter = Painter()
    with pytest.raises(KeyboardInterrupt):
        iterative_inpaint(torch.zeros(3, 47, 61), plan(two_boxes(), (61, 47), target=64), painter, on_step=on_step)
    assert calls == [(0, 3), (1, 3)] and len(painter.seen) == 1


def test_a_plan_for_another_image_size_is_refused():
    with pytest.raises(ValueError, match=r"planned for a \(61, 47\) \(W, H\) image, the image is \(64, 64\)"):
        iterative_inpaint(torch.zeros(3, 64, 64), plan(two_boxes(), (61, 47), target=64), Painter())


def test_the_toy_model_paints_inside_the_boxes_only():
    from emplace.diffusion import load_backend
    from emplace.scenes.samples import insertion_examples

    example = insertion_examples(1, seed=5, size=64)[0]
    boxes = Boxes((Box(*example.box.xyxy, label="object", prompt=example.prompt),), 64, 64)
    steps = plan(boxes, (64, 64), feather=2, target=64, background=False)
    result = iterative_inpaint(example.background, steps, backend_inpaint(load_backend(TOY), steps=3))
    outside = result.painted == 0
    assert torch.equal(result.image[:, outside], example.background[:, outside])
    assert (result.image - example.background).abs().amax() > 0.1


@pytest.mark.parametrize("channels", [4, 9])
def test_a_tiny_sd_model_paints_through_diffusers(tmp_path, channels):
    from emplace.diffusion import load_backend
    from emplace.testing.tiny_sd import write_tiny_sd

    backend = load_backend(write_tiny_sd(tmp_path / "sd", in_channels=channels))
    image = torch.rand(3, 40, 48, generator=torch.Generator().manual_seed(1))
    boxes = Boxes((Box(4, 4, 20, 20, label="cube"), Box(24, 16, 44, 36, label="ball")), 48, 40)
    result = iterative_inpaint(image, plan(boxes, (48, 40), feather=2, target=32, background=False),
                               backend_inpaint(backend, steps=2))
    outside = result.painted == 0
    assert torch.equal(result.image[:, outside], image[:, outside])
    assert (result.image - image)[:, result.painted == 1].abs().mean() > 0.02
