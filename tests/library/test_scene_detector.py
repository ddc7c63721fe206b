"""The scene detector finds rendered objects, their colours and shapes."""

import torch

from emplace.boxes import iou
from emplace.scenes.annotate import annotate
from emplace.scenes.detector import colour_map, detect
from emplace.scenes.render import render
from emplace.scenes.world import sample_camera, sample_scene


def test_ground_and_sky_are_never_an_object_colour():
    from emplace.scenes.world import Camera, Scene

    import math

    r = render([Scene(())], [Camera(height=2.0, pitch=math.radians(15))], 64)
    assert (colour_map(r.image[0]) == -1).all() and detect(r.image[0]) == []


def test_well_visible_objects_are_found_with_their_colour_and_mostly_their_shape():
    g = torch.Generator().manual_seed(11)
    scenes, cams = [sample_scene(g, (1, 4)) for _ in range(16)], [sample_camera(g) for _ in range(16)]
    r = render(scenes, cams, 128)
    found = shapes_right = total = 0
    for i, (s, c) in enumerate(zip(scenes, cams)):
        dets = detect(r.image[i])
        for a in annotate(s, c, r, i):
            if a.box is None or a.visible_fraction < 0.8 or a.box.area < 100:
                continue
            total += 1
            match = [d for d in dets if d.colour == a.colour and iou(d.box, a.box) > 0.6]
            found += bool(match)
            shapes_right += bool(match) and match[0].shape == a.shape
    assert total >= 20
    assert found / total >= 0.9
    assert shapes_right / total >= 0.75
