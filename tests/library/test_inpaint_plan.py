"""IterInpaint's plan (order, prompts, masks, seeds) and the crop/stitch contract around each step."""

import pytest
import torch

from emplace.boxes import Box, BoxError, Boxes, box_from_mask, box_mask
from emplace.inpaint.plan import IMAGE_BACKGROUND, ORDERS, object_prompt, order_boxes, plan
from emplace.inpaint.stitch import crop, feather, fit_size, grow_mask, match_colour, stitch

# A hand-made layout, (top, bottom, area): A (30, 40, 100), B (5, 25, 800), C (10, 50, 400), D (0, 20, 100)
LAYOUT = Boxes((Box(0, 30, 10, 40, "apple"), Box(20, 5, 60, 25, "bed"),
                Box(70, 10, 80, 50, "chair"), Box(5, 0, 10, 20, "dog")), 96, 64)


@pytest.mark.parametrize("strategy,expected", [
    ("given", [0, 1, 2, 3]),
    ("top-down", [3, 1, 2, 0]),  # by top edge: D 0, B 5, C 10, A 30
    ("bottom-up", [3, 1, 0, 2]),  # back to front, by bottom edge: D 20, B 25, A 40, C 50 (nearest, last)
    ("largest-first", [1, 2, 0, 3]),  # B 800, C 400, then A and D (100 each) in listed order
])
def test_each_order_paints_the_hand_made_layout_in_the_written_order(strategy, expected):
    assert order_boxes(LAYOUT, strategy) == expected
    assert [s.box_index for s in plan(LAYOUT, LAYOUT.size, order=strategy, background=False)] == expected


def test_an_unknown_order_names_the_valid_ones():
    with pytest.raises(ValueError, match="choose one of given, random, top-down, bottom-up, largest-first"):
        plan(LAYOUT, LAYOUT.size, order="front-to-back")
    assert len(ORDERS) == 5


def test_random_order_is_a_permutation_fixed_by_the_seed():
    boxes = [Box(i, i, i + 4, i + 4) for i in range(8)]
    first = order_boxes(boxes, "random", seed=7)
    assert sorted(first) == list(range(8))
    assert order_boxes(boxes, "random", seed=7) == first
    assert any(order_boxes(boxes, "random", seed=s) != first for s in range(8, 12))


def test_an_objects_seed_does_not_depend_on_the_order():
    seeds = {order: {s.box_index: s.seed for s in plan(LAYOUT, LAYOUT.size, order=order, seed=100)}
             for order in ORDERS}
    assert all(by_box == seeds["given"] for by_box in seeds.values())
    assert seeds["given"] == {0: 100, 1: 101, 2: 102, 3: 103, None: 104}
    assert plan(LAYOUT, LAYOUT.size, seed=2**64 - 1)[1].seed == 0  # wraps like ComfyUI's unsigned seeds


def test_prompts_follow_the_iterinpaint_scheme_and_a_boxs_own_prompt_wins():
    steps = plan(Boxes((Box(0, 0, 8, 8, "cup"), Box(8, 8, 16, 16, "cup", "a red cup")), 32, 32), (32, 32))
    assert [s.prompt for s in steps] == ["Add cup", "Add a red cup", "Add gray background"]
    photo = plan(LAYOUT, LAYOUT.size, background_prompt=IMAGE_BACKGROUND)
    assert photo[-1].prompt == "Complete the image"
    assert object_prompt(Box(0, 0, 1, 1, "cup", "a red cup"), "{label}: {prompt}") == "cup: a red cup"
    assert object_prompt(Box(0, 0, 1, 1)) == "Add object"


def test_the_background_repaints_exactly_what_no_grown_object_covers():
    steps = plan(LAYOUT, LAYOUT.size, grow=2)
    union = torch.stack([box_mask(b, 96, 64, grow=2) for b in LAYOUT]).amax(0)
    assert steps[-1].box_index is None
    assert torch.equal(steps[-1].sampling_mask, 1 - union)
    assert steps[-1].window == (0, 0, 96, 64)
    assert all(s.box_index is not None for s in plan(LAYOUT, LAYOUT.size, background=False))
    covering = Boxes((Box(0, 0, 20, 10), Box(0, 10, 20, 20)), 20, 20)
    assert [s.box_index for s in plan(covering, (20, 20))] == [0, 1]  # nothing left to fill


def test_blend_masks_feather_outward_from_the_sampling_mask():
    for step in plan(LAYOUT, LAYOUT.size, grow=1, feather=4):
        on = step.sampling_mask > 0
        assert torch.all(step.blend_mask[on] == 1)
        assert torch.equal(step.blend_mask > 0, grow_mask(step.sampling_mask, 4) > 0)


def test_no_boxes_is_an_empty_plan():
    assert plan(Boxes((), 64, 64), (64, 64)) == []
    assert plan([], (64, 64), background=True) == []


def test_a_box_outside_the_image_is_refused_by_name_and_one_across_the_edge_is_clipped():
    with pytest.raises(BoxError, match=r"boxes\[1\] \(lamp\) = \(70, 10, 90, 20\) lies outside the 64x48 image"):
        plan([Box(0, 0, 8, 8), Box(70, 10, 90, 20, "lamp")], (64, 48))
    (step, _) = plan([Box(-10, 40, 20, 60)], (64, 48))
    assert torch.equal(step.sampling_mask, box_mask(Box(0, 40, 20, 48), 64, 48))
    assert step.window[2] <= 64 and step.window[3] <= 48
    with pytest.raises(BoxError, match="made for a 64x48 image, but the image is 32x32"):
        plan(Boxes((Box(0, 0, 8, 8),), 64, 48), (32, 32))


def test_supplied_masks_replace_the_box_rectangles():
    yy, xx = torch.meshgrid(torch.arange(48), torch.arange(64), indexing="ij")
    disc = (((yy - 30) ** 2 + (xx - 40) ** 2) < 64).float()
    (step,) = plan([Box(0, 0, 8, 8, "ball")], (64, 48), masks=[disc], background=False)
    assert torch.equal(step.sampling_mask, disc)
    x0, y0, x1, y1 = step.window
    tight = box_from_mask(step.blend_mask)
    assert x0 <= tight.x0 and y0 <= tight.y0 and x1 >= tight.x1 and y1 >= tight.y1
    with pytest.raises(ValueError, match="got 2 masks for 1 boxes"):
        plan([Box(0, 0, 8, 8)], (64, 48), masks=[disc, disc])


@pytest.mark.parametrize("box", [Box(3, 2, 11, 30), Box(0, 0, 7, 5), Box(80, 40, 101, 61), Box(0, 0, 101, 61)])
def test_the_crop_contains_the_box_keeps_its_aspect_and_meets_the_target(box):
    image = torch.rand(3, 61, 101)
    (step,) = plan([box], (101, 61), feather=3, target=64, background=False)
    x0, y0, x1, y1 = step.window
    assert x0 <= box.x0 and y0 <= box.y0 and x1 >= box.x1 and y1 >= box.y1
    cut = crop(image, step.sampling_mask, step.window, target=64)
    h, w = cut.image.shape[-2:]
    assert (w, h) == step.size and cut.mask.shape == (h, w) and cut.image.shape[0] == 3
    assert w % 8 == 0 and h % 8 == 0 and max(w, h) == 64
    long_side = max(x1 - x0, y1 - y0)
    assert abs(w - (x1 - x0) * 64 / long_side) <= 4 and abs(h - (y1 - y0) * 64 / long_side) <= 4
    assert cut.mask.sum() > 0


def test_fit_size_snaps_both_sides_and_never_goes_below_one_multiple():
    assert fit_size(200, 100, 512) == (512, 256)
    assert fit_size(7, 300, 500) == (8, 496)  # 500 rounds down to a multiple of 8
    assert fit_size(100, 40, 64) == (64, 24)  # 25.6: the short side goes to the nearest multiple
    assert fit_size(100, 30, 64) == (64, 16)  # 19.2


@pytest.mark.parametrize("shape", [(3, 29, 37), (2, 3, 29, 37)])
@pytest.mark.parametrize("box", [Box(30, 20, 37, 29), Box(0, 0, 5, 9), Box(10, 8, 20, 18)])
def test_pixels_outside_the_feathered_mask_are_the_canvas_bit_for_bit(shape, box):
    canvas = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    (step,) = plan([box], (37, 29), feather=3, target=48, background=False)
    cut = crop(canvas, step.sampling_mask, step.window, target=48)
    result = torch.rand(cut.image.shape, generator=torch.Generator().manual_seed(1))
    out = stitch(canvas, result, step.blend_mask, cut.window)
    outside, full = step.blend_mask == 0, step.blend_mask == 1
    assert torch.equal(out[..., outside], canvas[..., outside])
    assert not torch.equal(out[..., full], canvas[..., full])
    # a result at the window's own size is pasted unresampled: equal to it where the alpha is 1
    x0, y0, x1, y1 = cut.window
    same_size = torch.rand(*shape[:-2], y1 - y0, x1 - x0)
    same_size[..., outside[y0:y1, x0:x1]] = float("nan")  # even garbage where the alpha is 0 stays out
    out = stitch(canvas, same_size, step.blend_mask, cut.window)
    assert torch.equal(out[..., outside], canvas[..., outside])
    inside = full[y0:y1, x0:x1]
    assert torch.equal(out[..., y0:y1, x0:x1][..., inside], same_size[..., inside])


def test_a_flat_result_resized_back_lands_as_that_colour_where_the_alpha_is_one():
    canvas = torch.zeros(3, 33, 45)
    (step,) = plan([Box(5, 5, 25, 20)], (45, 33), feather=2, target=64, background=False)
    out = stitch(canvas, torch.full((3, *step.size[::-1]), 0.75), step.blend_mask, step.window)
    assert torch.allclose(out[:, step.blend_mask == 1], torch.tensor(0.75))
    soft = (step.blend_mask > 0) & (step.blend_mask < 1)
    assert torch.all((out[:, soft] > 0) & (out[:, soft] < 0.75))


def test_feather_is_one_inside_zero_beyond_the_radius_and_works_at_the_border():
    mask = torch.zeros(17, 23)
    mask[0:6, 15:23] = 1  # touches the top and right edges
    soft = feather(mask, 5)
    assert torch.all(soft[mask == 1] == 1)
    assert torch.equal(soft > 0, grow_mask(mask, 5) > 0)
    row = soft[3, 9:15]  # walking towards the mask from 6 pixels out, the alpha rises from 0
    assert row[0] == 0 and row[1] > 0 and torch.all(row[1:] > row[:-1])
    assert torch.equal(feather(mask, 0), mask)


def test_colour_match_pulls_a_tinted_results_ring_back_to_the_canvas():
    canvas = 0.4 + 0.2 * torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(40, 40)
    mask[12:28, 12:28] = 1
    tint = torch.tensor([0.25, -0.1, 0.0])[:, None, None]
    result = canvas + tint  # the whole crop came back with a colour cast
    result[..., 12:28, 12:28] = 0.9  # and a new object inside the mask
    ring = (grow_mask(mask, 4) > 0) & (mask == 0)
    fixed = match_colour(result, canvas, mask, ring=4)
    before = (result[..., ring].mean(-1) - canvas[..., ring].mean(-1)).abs()
    after = (fixed[..., ring].mean(-1) - canvas[..., ring].mean(-1)).abs()
    assert before[0, 0] > 0.2 and torch.all(after < 1e-4)
    assert torch.allclose(fixed[0, 0, 20, 20], torch.tensor(0.9 - 0.25), atol=1e-4)  # the cast is removed inside too
    assert torch.equal(match_colour(result, canvas, torch.ones(40, 40)), result)  # no ring: unchanged
