"""Location data (OPA and PIPE layouts), the seed paper's TPR-FPR evaluation, and the scene-world judge."""

import csv
import itertools
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from emplace.boxes import Box, iou
from emplace.files import save_image
from emplace.location.data import (
    LocationDataError,
    LocationExample,
    dpo_pairs,
    load_opa,
    load_pipe,
)
from emplace.location.evaluate import (
    CurvePoint,
    EvaluationError,
    compare_curves,
    count_hits,
    load_curves,
    plot_tpr_fpr,
    save_curves,
    tpr_at_fpr,
    tpr_fpr_curve,
)
from emplace.scenes.datasets import opa_layout, removal
from emplace.scenes.datasets.files import camera_from_record, camera_record
from emplace.scenes.geometry import amodal_box
from emplace.scenes.placement_judge import (
    SceneRecordError,
    judge_box,
    load_scene_records,
    parse_category,
    resting_objects,
    scene_from_record,
)
from emplace.scenes.world import Camera, SceneObject

HEADER = "fg_id,bg_id,position,scale,label,img_name,mask_name"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # the scene world's tensors are tiny: torch's thread pool only costs time on a busy CPU
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scenes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("location")
    opa_layout.write(root, n=12, seed=0, size=64)
    return root


@pytest.fixture(scope="module")
def removal_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("removal")
    removal.write(root, n=3, seed=0, size=64)
    return root


def csv_rows(root, split):
    with open(root / f"{split}_set.csv", newline="") as f:
        return list(csv.DictReader(f))


def xyxy(position):
    x, y, w, h = (float(v) for v in position.strip("[]").split(","))
    return [x, y, x + w, y + h]


# --- OPA layout ------------------------------------------------------------------------------------


def test_opa_examples_hold_exactly_the_csv_boxes(scenes_root):
    scenes = load_scene_records(scenes_root)
    for split, backgrounds in (("train", 11), ("test", 1)):  # the writer keeps the last tenth for testing
        examples = load_opa(scenes_root, split)
        rows = csv_rows(scenes_root, split)
        assert len(examples) == backgrounds == len({r["bg_id"] for r in rows})
        assert len({e.key for e in examples}) == len(examples)
        by_bg = {e.key: e for e in examples}  # one category per background here: the key is the bg_id
        assert all(e.image_path.stem == bg_id for bg_id, e in by_bg.items())
        for bg_id, example in by_bg.items():
            assert example.category == scenes[bg_id]["category"] == example.image_path.parent.name
            assert example.size == (64, 64)
            for label, boxes in (("1", example.positives), ("0", example.negatives)):
                expected = [xyxy(r["position"]) for r in rows if r["bg_id"] == bg_id and r["label"] == label]
                assert boxes.shape == (len(expected), 4)
                assert torch.allclose(boxes, torch.tensor(expected).reshape(-1, 4))
        assert sum(len(e.positives) + len(e.negatives) for e in examples) == len(rows)
    image = examples[0].image()
    assert image.shape == (3, 64, 64) and 0 <= image.min() and image.max() <= 1


def test_dpo_pairs_are_every_positive_with_every_negative_of_the_same_example(scenes_root):
    examples = load_opa(scenes_root)
    pairs = dpo_pairs(examples)
    assert len(pairs) == sum(len(e.positives) * len(e.negatives) for e in examples) > 0
    assert len(set(pairs)) == len(pairs)
    assert all(p < len(examples[i].positives) and n < len(examples[i].negatives) for i, p, n in pairs)
    only_negatives = replace(examples[0], positives=torch.zeros(0, 4))
    assert dpo_pairs([only_negatives]) == []


def hand_made_opa(tmp_path, rows, header=HEADER, split="train"):
    """background cat_a/{b1,b2}, cat_b/b2 (32 x 24); foreground cat_b/f2."""
    root = tmp_path / "opa"
    for category, bg_id in (("cat_a", "b1"), ("cat_a", "b2"), ("cat_b", "b2")):
        save_image(torch.rand(3, 24, 32), root / "background" / category / f"{bg_id}.jpg")
    save_image(torch.rand(3, 8, 8), root / "foreground" / "cat_b" / "f2.jpg")
    save_image(torch.ones(8, 8), root / "foreground" / "cat_b" / "mask_f2.jpg")
    (root / f"{split}_set.csv").write_text("\n".join([header] + rows) + "\n")
    return root


def test_opa_categories_clipping_and_examples_with_negatives_only(tmp_path):
    root = hand_made_opa(tmp_path, [
        'f1,b1,"[-5, 10, 20, 30]",0.5,1,c1.jpg,m1.jpg',  # no foreground file: b1 is only in cat_a
        'f2,b2,"[2, 2, 4, 4]",0.1,0,c2.jpg,m2.jpg',  # b2 is in both folders: foreground f2 says cat_b
        'f2,b2,"[10, 2, 4, 4]",0.1,0,c3.jpg,m3.jpg',
    ])
    first, second = load_opa(root)
    assert (first.category, first.key, first.size) == ("cat_a", "b1", (32, 24))
    assert first.positives.tolist() == [[0, 10, 15, 24]]  # clipped to the 32 x 24 image
    assert second.category == "cat_b" and second.image_path == root / "background" / "cat_b" / "b2.jpg"
    assert len(second.positives) == 0 and second.negatives.tolist() == [[2, 2, 6, 6], [10, 2, 14, 6]]
    # one background for two categories: two examples, told apart by their keys
    (root / "train_set.csv").write_text("\n".join([HEADER, 'f2,b2,"[2, 2, 4, 4]",0.1,1,c.jpg,m.jpg',
                                                   'f9,b2,"[1, 1, 4, 4]",0.1,1,c.jpg,m.jpg']) + "\n")
    save_image(torch.rand(3, 8, 8), root / "foreground" / "cat_a" / "f9.jpg")
    assert [(e.key, e.category) for e in load_opa(root)] == [("b2/cat_b", "cat_b"), ("b2/cat_a", "cat_a")]


@pytest.mark.parametrize("row, message", [
    ('f1,b1,"[1, 2, 3]",0.1,1,c.jpg,m.jpg', r"line 3: position '\[1, 2, 3\]' is not"),
    ('f1,b1,"[1, 2, x, 4]",0.1,1,c.jpg,m.jpg', r"line 3: position .* is not"),
    ('f1,b1,"[1, 2, 0, 4]",0.1,1,c.jpg,m.jpg', r"line 3: .*width or height that is not positive"),
    ('f1,b1,"[1, 2, 3, -4]",0.1,1,c.jpg,m.jpg', r"line 3: .*width or height that is not positive"),
    ('f1,b1,"[1, 2, 3, 4]",0.1,2,c.jpg,m.jpg', r"line 3: label '2' is not 0 .* or 1"),
    ('f1', r"line 3: bg_id is empty"),
    ('f1,b1,"[40, 2, 3, 4]",0.1,1,c.jpg,m.jpg', r"line 3: .*wholly outside the 32x24 background"),
    ('f1,b9,"[1, 2, 3, 4]",0.1,1,c.jpg,m.jpg', r"line 3: the background image b9.jpg is in no folder"),
    ('f2,b1,"[1, 2, 3, 4]",0.1,1,c.jpg,m.jpg', r"line 3: the background image .*cat_b/b1.jpg does not exist"),
    ('f1,b2,"[1, 2, 3, 4]",0.1,1,c.jpg,m.jpg', r"line 3: cannot tell the category, it could be cat_a or cat_b"),
])
def test_opa_refuses_a_bad_row_naming_the_file_and_line(tmp_path, row, message):
    root = hand_made_opa(tmp_path, ['f1,b1,"[1, 2, 3, 4]",0.1,1,c.jpg,m.jpg', row])
    with pytest.raises(LocationDataError, match="train_set.csv " + message):
        load_opa(root)


def test_opa_refuses_missing_files_splits_and_columns(tmp_path):
    root = hand_made_opa(tmp_path, ['f1,b1,"[1, 2, 3, 4]",0.1,1,c.jpg,m.jpg'])
    with pytest.raises(LocationDataError, match=r"test_set.csv does not exist; csv files in .*: train_set.csv"):
        load_opa(root, "test")
    with pytest.raises(LocationDataError, match=r"unknown split 'val': OPA has train, test"):
        load_opa(root, "val")
    with pytest.raises(LocationDataError, match=r"is not a folder"):
        load_opa(tmp_path / "nowhere")
    (root / "train_set.csv").write_text("fg_id,bg_id,position,scale\nf1,b1,\"[1, 2, 3, 4]\",0.1\n")
    with pytest.raises(LocationDataError, match=r"train_set.csv: missing column\(s\) label; its header has fg_id"):
        load_opa(root)
    (root / "train_set.csv").write_text(HEADER + "\n")
    with pytest.raises(LocationDataError, match=r"has a header but no rows"):
        load_opa(root)


# --- PIPE-style removal pairs -----------------------------------------------------------------------


def test_pipe_pairs_give_the_removed_objects_box_on_the_background(removal_root):
    examples = load_pipe(removal_root)
    rows = [json.loads(line) for line in (removal_root / "pairs.jsonl").read_text().splitlines()]
    assert len(examples) == len(rows) == 3
    for example, row in zip(examples, rows):
        assert example.image_path == removal_root / row["target"] and example.category == row["label"]
        assert example.key == row["id"] and example.size == (64, 64) and example.negatives.shape == (0, 4)
        assert example.positives.shape == (1, 4)
        # the difference box is the object's (its shadow, a weaker change, stays out)
        assert iou(Box(*example.positives[0].tolist()), Box(*row["box"])) > 0.7


def hand_made_pipe(tmp_path, lines):
    root = tmp_path / "pipe"
    grey = torch.full((3, 16, 20), 0.5)
    with_object = grey.clone()
    with_object[:, 5:9, 3:11] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    save_image(with_object, root / "with.png")
    save_image(grey, root / "without.png")
    save_image(torch.full((3, 16, 16), 0.5), root / "square.png")
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines) + "\n")
    return root


def test_pipe_box_is_where_the_pair_differs(tmp_path):
    root = hand_made_pipe(tmp_path, [{"source": "with.png", "target": "without.png", "category": "red cube"}])
    (example,) = load_pipe(root)
    assert example.positives.tolist() == [[3, 5, 11, 9]] and example.size == (20, 16)
    assert example.category == "red cube" and example.key == "line1"
    assert example.image_path == root / "without.png"


@pytest.mark.parametrize("bad, message", [
    ('{"source": "with.png", "target": ', r"line 2 is not JSON"),
    ({"source": "gone.png", "target": "without.png", "label": "x"}, r"line 2: the source image .*gone.png does not exist"),
    ({"source": "with.png", "target": "square.png", "label": "x"}, r"line 2: the source is 20x16 but the target is 16x16"),
    ({"source": "without.png", "target": "without.png", "label": "x"}, r"line 2: the source and target images do not differ"),
    ({"source": "with.png", "target": "without.png"}, r"line 2: missing label \(or category\)"),
])
def test_pipe_refuses_a_bad_line_naming_it(tmp_path, bad, message):
    good = {"source": "with.png", "target": "without.png", "label": "red cube"}
    root = hand_made_pipe(tmp_path, [good, bad])
    with pytest.raises(LocationDataError, match="pairs.jsonl " + message):
        load_pipe(root)
    with pytest.raises(LocationDataError, match=r"pairs.jsonl does not exist"):
        load_pipe(tmp_path)


# --- the evaluation protocol --------------------------------------------------------------------------

P0, P1, N0 = [0, 0, 10, 10], [20, 0, 30, 10], [0, 20, 10, 30]
NOWHERE = [50, 50, 60, 60]


def test_count_hits_gives_each_sample_to_its_best_overlapping_box():
    samples = torch.tensor([P0, [0, 0, 10, 9], N0, NOWHERE, [0, 0, 10, 30]], dtype=torch.float32)
    tp, fp, hit_pos, hit_neg = count_hits(samples, torch.tensor([P0, P1]), torch.tensor([N0]))
    # two samples on P0, one on N0; one overlaps nothing, one overlaps P0 and N0 by a third only
    assert (tp, fp) == (2, 1)
    assert hit_pos.tolist() == [True, False] and hit_neg.tolist() == [True]
    # a sample overlapping a positive by 0.7 but a negative by 0.95 is a false positive
    tp, fp, hit_pos, hit_neg = count_hits(torch.tensor([[0, 2, 10, 11.5]]), torch.tensor([P0]),
                                          torch.tensor([[0, 2, 10, 12]]))
    assert (tp, fp, hit_pos.tolist(), hit_neg.tolist()) == (0, 1, [False], [True])
    tp, fp, hit_pos, hit_neg = count_hits(samples, torch.tensor([P0]), torch.zeros(0, 4))
    assert (tp, fp, hit_neg.shape) == (2, 0, (0,))


def example(key, positives, negatives):
    return LocationExample(Path(f"{key}.png"), "thing", torch.tensor(positives, dtype=torch.float32).reshape(-1, 4),
                           torch.tensor(negatives, dtype=torch.float32).reshape(-1, 4), (64, 64), key)


def test_tpr_fpr_curve_counts_ground_truth_boxes_found_by_the_first_n_samples():
    P2, N1 = [40, 40, 50, 50], [30, 30, 40, 40]
    examples = [example("a", [P0, P1], [N0]), example("b", [], [N1]), example("c", [P2], [])]
    samples = {"a": [P0, N0, P1], "b": [NOWHERE, NOWHERE, N1], "c": [P2, P2, NOWHERE]}
    calls = []

    def sample_fn(e, n):
        calls.append((e.key, n))
        return torch.tensor(samples[e.key], dtype=torch.float32)[:n]

    curve = tpr_fpr_curve(sample_fn, examples, ns=(1, 2, 3), progress=False)
    assert sorted(calls) == [("a", 3), ("b", 3), ("c", 3)]  # sampled once, at the largest n
    assert curve == [CurvePoint(1, 2 / 3, 0.0, 2, 0), CurvePoint(2, 2 / 3, 0.5, 3, 1), CurvePoint(3, 1.0, 1.0, 4, 2)]
    assert all(a.tpr <= b.tpr and a.fpr <= b.fpr for a, b in itertools.pairwise(curve))


def test_tpr_fpr_curve_grows_with_n_for_random_samples():
    g = torch.Generator().manual_seed(0)
    examples = [example(str(i), [P0, P1], [N0, [30, 30, 40, 40]]) for i in range(4)]

    def sample_fn(e, n):
        xy = torch.randint(0, 4, (n, 2), generator=g).float() * 10
        return torch.cat([xy, xy + 10], 1)

    curve = tpr_fpr_curve(sample_fn, examples, ns=range(1, 31, 3), progress=False)
    assert all(a.tpr <= b.tpr and a.fpr <= b.fpr and a.tp <= b.tp for a, b in itertools.pairwise(curve))
    assert curve[-1].tpr > curve[0].tpr


def test_tpr_fpr_curve_refuses_what_it_cannot_measure():
    with pytest.raises(EvaluationError, match=r"returned \(2, 4\) for example a; expected \[3, 4\]"):
        tpr_fpr_curve(lambda e, n: torch.zeros(2, 4), [example("a", [P0], [N0])], ns=(3,), progress=False)
    with pytest.raises(EvaluationError, match=r"needs positive and negative boxes; .* 0 negative"):
        tpr_fpr_curve(lambda e, n: torch.zeros(n, 4), [example("a", [P0], [])], ns=(3,), progress=False)


def curve(*points):
    return [CurvePoint(10 * (i + 1), tpr, fpr, 0, 0) for i, (fpr, tpr) in enumerate(points)]


def test_tpr_at_fpr_interpolates_between_points():
    c = curve((0.1, 0.2), (0.3, 0.6), (0.3, 0.7), (0.5, 0.8))  # at FPR 0.3 the curve rises to 0.7
    assert tpr_at_fpr(c, 0.1) == pytest.approx(0.2)
    assert tpr_at_fpr(c, 0.2) == pytest.approx(0.45)
    assert tpr_at_fpr(c, 0.3) == pytest.approx(0.7)
    assert tpr_at_fpr(c, 0.4) == pytest.approx(0.75)
    with pytest.raises(EvaluationError, match=r"FPR 0.0500 is outside the curve's range 0.1000..0.5000"):
        tpr_at_fpr(c, 0.05)


def test_compare_curves_at_matched_fpr():
    a, b = curve((0.1, 0.5), (0.3, 0.8)), curve((0.2, 0.4), (0.4, 0.6))
    result = compare_curves(a, b)
    assert result["fpr"] == [0.2, 0.3] and result["fpr_range"] == [0.2, 0.3]
    assert result["tpr_a"] == pytest.approx([0.65, 0.8]) and result["tpr_b"] == pytest.approx([0.4, 0.5])
    assert result["a_higher_at_every_fpr"] and not result["b_higher_at_every_fpr"]
    apart = compare_curves(curve((0.0, 0.1), (0.1, 0.2)), curve((0.5, 0.3), (0.6, 0.4)))
    assert apart["fpr"] == [] and apart["fpr_range"] is None and not apart["a_higher_at_every_fpr"]


def test_curves_are_written_as_png_and_json(tmp_path):
    curves = {"pretrained": curve((0.1, 0.3), (0.2, 0.5)), "dpo": [CurvePoint(10, 0.4, 0.05, 7, 1),
                                                                 CurvePoint(20, 0.6, 0.15, 12, 3)]}
    out = tmp_path / "report"
    plot_tpr_fpr(curves, out / "curve.png", "location proposals")
    save_curves(curves, out / "curve.json")
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_curves(out / "curve.json") == curves
    assert json.loads((out / "curve.json").read_text())["dpo"][1] == {"n": 20, "tpr": 0.6, "fpr": 0.15, "tp": 12, "fp": 3}
    assert sorted(p.name for p in out.iterdir()) == ["curve.json", "curve.png"]  # no temporary files left


# --- the scene-world judge -----------------------------------------------------------------------------


def test_the_judge_agrees_with_the_data_sets_labels(scenes_root):
    records = load_scene_records(scenes_root)
    judged = {"0": [], "1": []}
    for split in ("train", "test"):
        for r in csv_rows(scenes_root, split):
            record = records[r["bg_id"]]
            judged[r["label"]].append(judge_box(record, record["category"], xyxy(r["position"])))
    assert len(judged["1"]) >= 20 and len(judged["0"]) >= 20
    assert sum(judged["1"]) / len(judged["1"]) >= 0.9  # label 1 boxes: plausible
    assert 1 - sum(judged["0"]) / len(judged["0"]) >= 0.8  # label 0 boxes: implausible


def test_the_judge_refuses_floating_oversized_outside_and_colliding_boxes(scenes_root):
    records = load_scene_records(scenes_root)
    rows = [r for r in csv_rows(scenes_root, "train") if r["label"] == "1"]
    for r in rows[:4]:
        record = records[r["bg_id"]]
        x0, y0, x1, y1 = xyxy(r["position"])
        h = y1 - y0
        assert judge_box(record, record["category"], Box(x0, y0, x1, y1))
        assert not judge_box(record, record["category"], (x0, y0 - h, x1, y1 - h))  # floating a height up
        cx = (x0 + x1) / 2
        assert not judge_box(record, record["category"], (cx - 0.8 * (x1 - x0), y1 - 1.6 * h, cx + 0.8 * (x1 - x0), y1))
        assert not judge_box(record, record["category"], (x0 + 64, y0, x1 + 64, y1))
    colliding = 0
    for record in records.values():
        camera, objects, size = scene_from_record(record)
        shape, obj_size = parse_category(record["category"])
        on_top = amodal_box(SceneObject(shape, 0, obj_size, 0, objects[0].x, objects[0].z), camera, size)
        if on_top.x0 >= 0 and on_top.y0 >= 0 and on_top.x1 <= size and on_top.y1 <= size:
            assert not judge_box(record, record["category"], on_top)
            assert judge_box({**record, "objects": []}, record["category"], on_top)  # the collision decides
            colliding += 1
    assert colliding >= 3


def test_resting_objects_find_a_resting_objects_box_again():
    camera = Camera(height=5.0, pitch=math.radians(35), yaw=0.7, focal=1.2)
    for shape in range(3):
        obj = SceneObject(shape, 0, 1, 0, 0.8, -0.6, yaw=math.pi / 8 if shape == 0 else 0.0)
        box = amodal_box(obj, camera, 64)
        found = resting_objects(shape, 1, camera, (box.x0 + box.x1) / 2, box.y1, 64, yaws=(obj.yaw,))
        assert iou(found[0][1], box) > 0.99 and math.hypot(found[0][0].x - 0.8, found[0][0].z + 0.6) < 0.01
    level = replace(camera, pitch=math.radians(10))  # its horizon is 13 pixels above the centre
    assert resting_objects(0, 1, level, 32, 5.0, 64) == []  # sky: nothing rests there
    assert not judge_box({"camera": camera_record(level), "objects": [], "image_size": 64}, "large_cube", (28, 0, 36, 5))


def test_scene_records_read_back_and_refuse_bad_lines(tmp_path):
    camera = Camera(height=4.0, pitch=0.6, yaw=1.3, focal=1.1, target=(0.5, -0.2))
    assert camera_from_record(camera_record(camera)) == camera
    with pytest.raises(ValueError, match=r"camera: missing focal"):
        camera_from_record({"height": 4.0, "pitch": 0.6, "yaw": 1.3, "target": [0, 0]})
    good = {"bg_id": "000000", "category": "large_cube", "camera": camera_record(camera), "objects": [],
            "image_size": 64}
    (tmp_path / "scenes.jsonl").write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(SceneRecordError, match=r"scenes.jsonl line 2 is not JSON"):
        load_scene_records(tmp_path)
    (tmp_path / "scenes.jsonl").write_text(json.dumps({**good, "image_size": "big"}) + "\n")
    with pytest.raises(SceneRecordError, match=r"scenes.jsonl line 1: image_size must be a positive whole number"):
        load_scene_records(tmp_path)
    with pytest.raises(SceneRecordError, match=r"unknown category 'huge_cube' \(the scene world's categories: small_cube"):
        judge_box(good, "huge_cube", (0, 0, 10, 10))
