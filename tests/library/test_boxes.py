"""EMPLACE_BOXES: pixel boxes with an exclusive end, and their geometry."""

import pytest
import torch

from emplace.boxes import (Box, BoxError, Boxes, box_from_mask, box_mask, boxes_from_any, boxes_to_masks,
                           check_boxes, crop_window, from_fractions, iou, nms, to_bbox_list, to_fractions,
                           to_latent_cells)


def test_a_box_covering_the_image_has_the_image_size():
    b = Box(0, 0, 64, 48)
    assert (b.width, b.height, b.area) == (64, 48, 64 * 48)
    assert box_mask(b, 64, 48).sum() == 64 * 48


def test_iou_of_half_overlapping_boxes():
    assert iou(Box(0, 0, 10, 10), Box(5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou(Box(0, 0, 10, 10), Box(20, 20, 30, 30)) == 0.0
    assert iou(Box(0, 0, 10, 10), Box(0, 0, 10, 10)) == 1.0


def test_nms_keeps_the_best_of_overlapping_boxes_best_first():
    boxes = Boxes((Box(0, 0, 10, 10, score=0.5), Box(1, 0, 11, 10, score=0.9), Box(30, 30, 40, 40, score=0.7)), 64, 64)
    kept = nms(boxes, 0.5)
    assert [b.score for b in kept] == [0.9, 0.7]


def test_clipping_drops_boxes_wholly_outside_and_trims_the_rest():
    boxes = Boxes((Box(-5, -5, 10, 10), Box(70, 70, 80, 80), Box(60, 0, 70, 8)), 64, 64)
    assert [b.xyxy for b in boxes.clipped()] == [(0, 0, 10, 10), (60, 0, 64, 8)]


def test_check_names_each_bad_box():
    boxes = Boxes((Box(0, 0, 10, 10), Box(5, 5, 5, 9, label="cup"), Box(100, 100, 120, 120)), 64, 64)
    with pytest.raises(BoxError, match=r"boxes\[1\] \(cup\) is empty.*boxes\[2\].*outside the 64x64 image"):
        check_boxes(boxes)


def test_masks_follow_boxes_and_grow():
    boxes = Boxes((Box(2, 3, 6, 5), Box(0.5, 0.5, 1.5, 1.5)), 8, 8)
    masks = boxes_to_masks(boxes)
    assert masks.shape == (2, 8, 8)
    assert masks[0].sum() == 4 * 2 and masks[0, 3, 2] == 1 and masks[0, 5, 6] == 0
    assert masks[1].sum() == 4  # fractional edges round outwards
    assert box_mask(boxes[0], 8, 8, grow=1).sum() == 6 * 4
    assert boxes_to_masks(Boxes((), 8, 8)).shape == (1, 8, 8)


def test_box_from_mask_is_tight_and_none_for_an_empty_mask():
    mask = torch.zeros(10, 12)
    mask[2:5, 3:9] = 1
    assert box_from_mask(mask).xyxy == (3, 2, 9, 5)
    assert box_from_mask(torch.zeros(4, 4)) is None


@pytest.mark.parametrize("box,size", [
    (Box(10, 10, 20, 30), (100, 60)),
    (Box(0, 0, 7, 5), (33, 17)),  # at the corner of an odd-sized image
    (Box(90, 50, 101, 61), (101, 61)),  # at the far border
    (Box(0, 0, 101, 61), (101, 61)),  # the whole image
])
def test_crop_window_contains_the_box_stays_inside_and_snaps_where_it_can(box, size):
    w, h = size
    x0, y0, x1, y1 = crop_window(box, w, h, padding=0.25, multiple=8)
    assert 0 <= x0 and 0 <= y0 and x1 <= w and y1 <= h
    assert x0 <= box.x0 and y0 <= box.y0 and x1 >= box.x1 and y1 >= box.y1
    assert (x1 - x0) % 8 == 0 or x1 - x0 == w
    assert (y1 - y0) % 8 == 0 or y1 - y0 == h


def test_conversions_round_trip():
    b = Box(16, 8, 48, 40)
    assert from_fractions(*to_fractions(b, 64, 64), 64, 64).xyxy == b.xyxy
    assert to_latent_cells(Box(15, 8, 17, 40)) == (1, 1, 3, 5)
    assert Box.from_xywh(*b.xywh).xyxy == b.xyxy
    assert to_bbox_list([b]) == [(16, 8, 32, 32)]


def test_other_packs_box_types_are_accepted():
    core = boxes_from_any([[{"x": 1, "y": 2, "width": 3, "height": 4}]], 64, 64)  # BOUNDING_BOX per frame
    assert core[0].xyxy == (1, 2, 4, 6)
    assert boxes_from_any({"x": 1, "y": 2, "width": 3, "height": 4}, 64, 64)[0].xyxy == (1, 2, 4, 6)
    kj = boxes_from_any([(10, 10, 5, 5), (0, 0, 2, 2)], 64, 64)  # KJNodes BBOX
    assert [b.xyxy for b in kj] == [(10, 10, 15, 15), (0, 0, 2, 2)]
    own = Boxes((Box(0, 0, 1, 1),), 64, 64)
    assert boxes_from_any(own, 64, 64) is own


def test_bad_box_values_get_errors_that_name_them():
    with pytest.raises(BoxError, match=r"boxes\[1\]: a BOUNDING_BOX needs numeric x, y, width, height"):
        boxes_from_any([{"x": 1, "y": 1, "width": 2, "height": 2}, {"x": 1}], 64, 64)
    with pytest.raises(BoxError, match="made for a 32x32 image, but the image is 64x64"):
        boxes_from_any(Boxes((), 32, 32), 64, 64)
    with pytest.raises(BoxError, match="expected EMPLACE_BOXES"):
        boxes_from_any("0 0 1 1", 64, 64)


def test_json_round_trip():
    boxes = Boxes((Box(1, 2, 3, 4, "cube", "a red cube", 0.5),), 64, 32)
    assert Boxes.from_json(boxes.to_json()) == boxes
    with pytest.raises(BoxError):
        Boxes.from_json("{}")
