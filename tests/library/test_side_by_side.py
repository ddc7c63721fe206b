"""In-context multi-view (emplace/multiview/side_by_side.py): the side-by-side canvas and its split,
and the reference views handed to DiT edit models."""

from __future__ import annotations

import pytest
import torch

from emplace.multiview.side_by_side import (SideBySide, megapixel_size, plan_side_by_side, reference_views,
                                            side_by_side, split)


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def blob(h, w, batch=None):
    mask = torch.zeros(h, w)
    mask[h // 4:h // 2, w // 3:w - 2] = 1
    mask[h // 2, w // 3:w - 2] = 0.5  # a soft row
    return mask if batch is None else mask.expand(batch, h, w).clone()


def test_references_sit_left_of_the_target_at_its_height():
    layout = plan_side_by_side((40, 30), [(20, 30), (60, 15)], "left", gap=2)
    assert layout.references == ((0, 0, 20, 30), (22, 0, 142, 30))
    assert layout.target == (144, 0, 184, 30) and layout.canvas == (184, 30) and layout.padding == (0, 0)


def test_references_sit_above_the_target_at_its_width():
    layout = plan_side_by_side((40, 30), [(20, 10)], "above")
    assert layout.references == ((0, 0, 40, 20),) and layout.target == (0, 20, 40, 50)
    assert layout.canvas == (40, 50)


def test_snapping_puts_the_target_on_the_grid_and_pads_the_far_edges():
    layout = plan_side_by_side((37, 30), [(20, 30)], "left", gap=3, multiple=8)
    assert layout.target == (24, 0, 61, 30)  # 20 + 3 rounded up to 24
    assert layout.canvas == (64, 32) and layout.padding == (3, 2)


@pytest.mark.parametrize("arrangement", ["left", "above"])
def test_the_unchanged_canvas_splits_back_to_the_target_bit_for_bit(arrangement):
    image, mask = rand(2, 3, 30, 37), blob(30, 37, batch=2)
    canvas, canvas_mask, layout = side_by_side(image, rand(2, 3, 24, 50, seed=1), mask, arrangement, gap=4,
                                               multiple=8)
    assert canvas.shape[-2:] == (layout.canvas[1], layout.canvas[0]) and canvas_mask.shape == (2, *canvas.shape[-2:])
    assert torch.equal(split(canvas, layout, image, mask), image)


def test_the_mask_is_on_the_target_only():
    image, mask = rand(1, 3, 32, 32), torch.ones(1, 32, 32)
    canvas, canvas_mask, layout = side_by_side(image, rand(1, 3, 32, 16, seed=1), mask, gap=8)
    x0, y0, x1, y1 = layout.target
    assert canvas_mask[..., y0:y1, x0:x1].min() == 1 and canvas_mask.sum() == 32 * 32
    assert torch.equal(canvas[..., y0:y1, x0:x1], image)
    assert (canvas[..., :, 16:24] == 0.5).all()  # the gap is grey


def test_pixels_outside_the_mask_stay_bit_identical_when_the_whole_canvas_changed():
    image, mask = rand(1, 3, 30, 37), blob(30, 37)[None]
    canvas, _, layout = side_by_side(image, rand(1, 3, 30, 30, seed=1), mask, multiple=8)
    sampled = rand(*canvas.shape, seed=2)
    out = split(sampled, layout, image, mask)
    x0, y0, x1, y1 = layout.target
    outside, inside, soft = mask[0] == 0, mask[0] == 1, (mask[0] > 0) & (mask[0] < 1)
    assert torch.equal(out[..., outside], image[..., outside])
    assert torch.equal(out[..., inside], sampled[..., y0:y1, x0:x1][..., inside])  # pixel-exact placement
    expected = image * (1 - mask[:, None]) + sampled[..., y0:y1, x0:x1] * mask[:, None]
    assert torch.equal(out[..., soft], expected[..., soft])


def test_nan_in_the_sample_does_not_leak_outside_the_mask():
    image, mask = rand(1, 3, 16, 16), blob(16, 16)[None]
    canvas, _, layout = side_by_side(image, rand(1, 3, 16, 16, seed=1), mask)
    assert torch.equal(split(torch.full_like(canvas, float("nan")), layout, image, mask)[..., mask[0] == 0],
                       image[..., mask[0] == 0])


def test_references_of_another_size_are_resized_and_the_info_says_so():
    image, mask = rand(1, 3, 32, 48), blob(32, 48)[None]
    reference = rand(2, 3, 64, 96, seed=1)
    canvas, _, layout = side_by_side(image, reference, mask)
    assert layout.references == ((0, 0, 48, 32), (48, 0, 96, 32))
    torch.testing.assert_close(canvas[0, :, :, :48].mean(), reference[0].mean(), atol=0.01, rtol=0)
    info = layout.describe()
    assert "reference 1: 96x64, resized to 48x32 (the target's height)" in info
    same = side_by_side(image, rand(1, 3, 32, 20, seed=1), mask)[2].describe()
    assert "reference 1: 20x32, as given" in same


def test_one_mask_serves_a_batch_of_targets():
    image = rand(3, 3, 16, 16)
    canvas, canvas_mask, layout = side_by_side(image, rand(1, 3, 16, 16, seed=1), blob(16, 16)[None])
    assert canvas.shape[0] == 3 and canvas_mask.shape[0] == 1
    assert torch.equal(split(canvas, layout, image, blob(16, 16)[None]), image)


@pytest.mark.parametrize("case, message", [
    ("empty references", "reference: the image batch is empty"),
    ("mask size", "mask: the mask is 16x15, the image is 16x16"),
    ("mask count", "mask: the batch sizes do not match \\(image 2, mask 3\\)"),
    ("arrangement", "arrangement: 'right' is not one of left, above"),
])
def test_bad_inputs_to_the_canvas_name_the_input(case, message):
    image, reference, mask, arrangement = rand(2, 3, 16, 16), rand(1, 3, 8, 8), torch.ones(1, 16, 16), "left"
    if case == "empty references":
        reference = reference[:0]
    elif case == "mask size":
        mask = torch.ones(1, 15, 16)
    elif case == "mask count":
        mask = torch.ones(3, 16, 16)
    else:
        arrangement = "right"
    with pytest.raises(ValueError, match=message):
        side_by_side(image, reference, mask, arrangement)


def test_bad_inputs_to_the_split_name_the_input():
    image, mask = rand(1, 3, 16, 16), torch.ones(1, 16, 16)
    canvas, _, layout = side_by_side(image, rand(1, 3, 16, 16), mask, multiple=8)
    with pytest.raises(ValueError, match="canvas: the image is 32x24, the layout's canvas is 32x16"):
        split(torch.zeros(1, 3, 24, 32), layout, image, mask)
    with pytest.raises(ValueError, match="image: the target is 8x16, the layout's target is 16x16"):
        split(canvas, layout, image[..., :8], mask[..., :8])
    with pytest.raises(ValueError, match="mask: the mask is 8x16, the image is 16x16"):
        split(canvas, layout, image, mask[..., :8])
    with pytest.raises(ValueError, match="layout: expected the layout"):
        split(canvas, {"target": (16, 0, 32, 16)}, image, mask)
    assert isinstance(layout, SideBySide)


def test_views_for_a_dit_are_about_a_megapixel_in_multiples_of_16():
    assert megapixel_size(1024, 1024) == (1024, 1024)
    w, h = megapixel_size(640, 480)
    assert w % 16 == 0 and h % 16 == 0 and abs(w * h / 1024 ** 2 - 1) < 0.03 and abs(w / h - 4 / 3) < 0.02
    views = reference_views(rand(2, 3, 48, 64), megapixels=0.01)
    assert views.shape == (2, 3, 96, 112)  # 0.01 MP of 4:3 is about 118x89, each side rounded to 16
    kept = rand(2, 3, 48, 64)
    assert torch.equal(reference_views(kept), kept)


def test_hidden_reference_pixels_are_grey():
    views, mask = rand(2, 3, 16, 16), blob(16, 16)[None]
    hidden = reference_views(views, mask)
    assert (hidden[..., mask[0] == 1] == 0.5).all()
    assert torch.equal(hidden[..., mask[0] == 0], views[..., mask[0] == 0])
    with pytest.raises(ValueError, match="reference_hide_mask: the batch sizes do not match"):
        reference_views(views, torch.ones(3, 16, 16))
    with pytest.raises(ValueError, match="reference: the image batch is empty"):
        reference_views(views[:0])
