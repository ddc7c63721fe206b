"""Scene-world measures, on renders and boxes where the answer is known."""

import math

import pytest
import torch

from emplace.boxes import Box
from emplace.preference.degradations import paste
from emplace.scenes.annotate import annotate
from emplace.scenes.metrics import average_precision, masked_psnr, masked_ssim, plausibility
from emplace.scenes.render import render
from emplace.scenes.world import Camera, Scene, SceneObject

CAM = Camera(height=4.5, pitch=math.radians(35), yaw=0.3, focal=1.2)
BASE = Scene((SceneObject(0, 5, 0, 0, -1.5, -0.5, yaw=0.4),))
RESTING = SceneObject(2, 0, 1, 0, 0.5, 0.3)


def judged(obj, size=96, without_shadow=False):
    scene = BASE.with_object(obj)
    r = render([scene, BASE], [CAM, CAM], size)
    a = annotate(scene, CAM, r, 0)[-1]
    image = paste(r.image[1], r.image[0], a.mask) if without_shadow else r.image[0]
    return plausibility(image, a.box, obj.shape, CAM, a.mask)


def test_an_object_resting_at_its_size_is_plausible():
    for obj in (RESTING, SceneObject(1, 3, 0, 1, 0.5, 0.3), SceneObject(0, 2, 1, 0, 0.8, 0.8, yaw=0.3)):
        assert judged(obj).plausible


@pytest.mark.parametrize("change", [{"lift": 0.9}, {"scale": 1.6}, {"scale": 0.6}, {"lift": -0.6}])
def test_floating_sunk_or_wrongly_scaled_objects_are_implausible(change):
    from dataclasses import replace

    assert not judged(replace(RESTING, **change)).plausible


def test_an_object_pasted_without_its_shadow_is_implausible():
    p = judged(RESTING, without_shadow=True)
    assert p.scale_error < 0.1 and not p.shadow and not p.plausible


def test_average_precision_on_a_hand_made_example():
    truths = [[(Box(0, 0, 10, 10), "red cube"), (Box(20, 20, 30, 30), "blue sphere")], [(Box(0, 0, 8, 8), "red cube")]]
    perfect = [[(b, lab, 1.0) for b, lab in t] for t in truths]
    assert average_precision(perfect, truths)["mAP"] == 1.0
    # red cube: a confident false positive ranked first, then both true boxes: precision 1/2 at recall 1/2,
    # 2/3 at recall 1 -> AP = 0.5 * (2/3) + 0.5 * (2/3) = 2/3; the blue sphere is missed -> 0
    dets = [[(Box(40, 40, 50, 50), "red cube", 0.9), (Box(0, 0, 10, 10), "red cube", 0.8)],
            [(Box(0, 0, 8, 8), "red cube", 0.7)]]
    ap = average_precision(dets, truths)
    assert ap["per_class"]["red cube"] == pytest.approx(2 / 3) and ap["per_class"]["blue sphere"] == 0.0
    assert ap["mAP"] == pytest.approx(1 / 3)


def test_masked_psnr_and_ssim():
    a = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(32, 32)
    mask[8:24, 8:24] = 1
    b = a.clone()
    b[:, 8:24, 8:24] += 0.1
    b[:, :4] = 0  # outside the mask: ignored
    assert masked_psnr(a, b, mask) == pytest.approx(20.0, abs=1e-4)  # mse 0.01
    assert masked_psnr(a, a, mask) == math.inf and masked_ssim(a, a, mask) == pytest.approx(1.0)
    assert masked_ssim(a, torch.rand_like(a), mask) < 0.5
    with pytest.raises(ValueError, match="mask is empty"):
        masked_psnr(a, b, torch.zeros(32, 32))


def test_mcnemar_counts_only_the_scenes_the_two_models_disagree_on():
    from emplace.scenes.evaluate import mcnemar_p

    agree = [True] * 50 + [False] * 50
    assert mcnemar_p(agree, agree) == 1.0
    # 10 scenes only the first gets right, none only the second: p = 2 / 2^10
    a = [True] * 10 + agree
    b = [False] * 10 + agree
    assert mcnemar_p(a, b) == pytest.approx(2 / 1024)
    assert mcnemar_p(a, b) == mcnemar_p(b, a)
    # 6 against 4 is no evidence
    assert mcnemar_p([True] * 6 + [False] * 4, [False] * 6 + [True] * 4) > 0.5
    with pytest.raises(ValueError, match="same scenes"):
        mcnemar_p([True], [True, False])


def test_the_summary_keeps_every_scenes_verdicts():
    from emplace.scenes.evaluate import InsertionScore, summarise

    summary = summarise([InsertionScore(True, False, 12.5, None), InsertionScore(False, False, float("inf"), None)])
    assert summary["found_rate"] == 0.5 and summary["masked_psnr"] == 12.5
    assert summary["scenes"] == [{"found": True, "plausible": False, "psnr": 12.5},
                                 {"found": False, "plausible": False, "psnr": None}]
