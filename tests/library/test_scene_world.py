"""The scene world: seeded scenes, the ray caster, per-object ground truth."""

import math

import torch

from emplace.scenes.annotate import annotate
from emplace.scenes.geometry import amodal_box, ground_point, project
from emplace.scenes.render import render
from emplace.scenes.world import Camera, Scene, SceneObject, fits, sample_camera, sample_scene

CAM = Camera(height=4.5, pitch=math.radians(35), yaw=0.0, focal=1.2)


def test_the_same_seed_gives_the_same_pictures():
    def pictures():
        g = torch.Generator().manual_seed(5)
        scenes, cams = [sample_scene(g) for _ in range(3)], [sample_camera(g) for _ in range(3)]
        return render(scenes, cams, 64).image

    assert torch.equal(pictures(), pictures())


def test_sampled_objects_rest_on_the_ground_without_touching():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        scene = sample_scene(g, (3, 6))
        assert all(o.rests_on_ground and abs(o.centre[1] - o.radius) < 1e-9 for o in scene.objects)
        assert all(fits(o, scene.objects[:i] + scene.objects[i + 1:]) for i, o in enumerate(scene.objects))


def test_the_camera_target_is_the_image_centre_and_the_ground_maps_back():
    uv, depth = project(CAM, torch.tensor([[0.0, 0.0, 0.0]]), 128)
    assert torch.allclose(uv, torch.tensor([[64.0, 64.0]], dtype=torch.float64)) and depth[0] > 0
    x, z = ground_point(CAM, 64, 64, 128)
    assert abs(x) < 1e-9 and abs(z) < 1e-9
    assert ground_point(CAM, 64, 0, 128) is not None and ground_point(Camera(pitch=math.radians(5)), 64, 0, 128) is None


def test_an_object_is_drawn_inside_its_projected_box_with_its_colour_and_a_shadow():
    obj = SceneObject(shape=1, colour=0, size=1, material=0, x=0.0, z=0.0)  # a large red sphere at the target
    r = render([Scene((obj,)), Scene(())], [CAM, CAM], 128)
    (a,) = annotate(Scene((obj,)), CAM, r, 0)
    amodal = amodal_box(obj, CAM, 128)
    assert a.box is not None and abs(a.box.x0 - amodal.x0) <= 1.5 and abs(a.box.y1 - amodal.y1) <= 1.5
    centre = r.image[0, :, 64, 64]
    assert centre[0] > 2 * centre[1] and centre[0] > 2 * centre[2]  # red
    assert r.object_index[0, 64, 64] == 0 and r.object_index[1].eq(-1).all()
    assert (r.image[0].mean(0) < r.image[1].mean(0) - 0.1).sum() > 50  # the shadow darkens the ground
    assert r.depth[1, 0, 64] > r.depth[1, 127, 64]  # the ground recedes towards the top
    low = render([Scene(())], [Camera(height=2.0, pitch=math.radians(12))], 64)
    assert torch.isinf(low.depth[0, 0, 32]) and torch.isfinite(low.depth[0, 63, 32])  # sky above, ground below


def test_every_shape_is_hit_and_occlusion_follows_depth():
    objs = tuple(SceneObject(shape=s, colour=s, size=1, material=s % 2, x=-1.6 + 1.6 * s, z=0.0) for s in range(3))
    r = render([Scene(objs)], [CAM], 96)
    assert set(r.object_index[0].unique().tolist()) == {-1, 0, 1, 2}
    front = SceneObject(shape=0, colour=4, size=1, material=0, x=0.0, z=-1.5)
    r2 = render([Scene((objs[1], front))], [CAM], 96)
    (_, hidden), (_, near) = [(a.index, a) for a in annotate(Scene((objs[1], front)), CAM, r2, 0)]
    assert hidden.depth > near.depth and hidden.visible_fraction < 0.9
