"""The location model: box tokens, sampling (KV cache, constraints, NMS), files."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from emplace.location.model import (
    LocationConfig,
    LocationModel,
    LocationModelError,
    load_location_model,
    save_location_model,
)
from emplace.location.sample import filter_logits, propose
from emplace.location.tokens import boxes_to_tokens, size_range_in_bins, tokens_to_boxes
from emplace.weights import WeightsFileError

LABELS = ["large_cube", "small_ball"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LocationModel(LocationConfig(labels=LABELS, width=32, layers=2, heads=2, image_size=32)).eval()


def image(h=96, w=128, seed=0):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def test_tokens_round_trip_exactly_and_boxes_within_a_bin():
    tokens = torch.tensor([[0, 0, 0, 0], [5, 7, 90, 100], [127, 3, 127, 127]])
    assert torch.equal(boxes_to_tokens(tokens_to_boxes(tokens, 200, 150), 200, 150), tokens)
    boxes = torch.tensor([[10.3, 20.0, 55.5, 61.2], [0.0, 0.0, 200.0, 150.0], [-5.0, 140.0, 30.0, 170.0]])
    back = tokens_to_boxes(boxes_to_tokens(boxes, 200, 150), 200, 150)
    clipped = boxes.clamp(min=0) .minimum(torch.tensor([200.0, 150, 200, 150]))
    cell = torch.tensor([200 / 128, 150 / 128] * 2)
    assert ((back - clipped).abs() <= cell + 1e-4).all()
    assert (back[:, 0] <= clipped[:, 0] + 1e-4).all() and (back[:, 2] >= clipped[:, 2] - 1e-4).all()  # covers it


def test_size_range_in_bins_and_its_errors():
    assert size_range_in_bins(0.0, 1.0, 128) == (1, 128)
    assert size_range_in_bins(0.25, 0.5, 128) == (32, 64)
    with pytest.raises(ValueError, match="min_size <= max_size"):
        size_range_in_bins(0.6, 0.3)


def test_top_k_and_top_p_keep_the_most_likely_tokens():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    p = logits.softmax(-1)[0]  # 0.64, 0.24, 0.09, 0.03
    kept = torch.isfinite(filter_logits(logits, top_p=float(p[0] + 0.01)))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.01)).sum() == 1  # the best always stays


def test_proposals_are_seeded_ranked_and_the_cache_changes_nothing(model):
    a = propose(model, image(), "large cube", 40, seed=3)
    b = propose(model, image(), "large_cube", 40, seed=3)
    c = propose(model, image(), "large_cube", 40, seed=3, use_cache=False)
    assert torch.equal(a.samples, b.samples) and a.samples.shape == (40, 4)
    assert torch.equal(a.samples, c.samples)
    torch.testing.assert_close(a.sample_scores, c.sample_scores, atol=1e-4, rtol=0)
    assert (a.scores[:-1] >= a.scores[1:]).all() and len(a.boxes) <= 40
    assert (a.samples[:, 2] > a.samples[:, 0]).all() and (a.samples[:, 3] > a.samples[:, 1]).all()
    assert (a.samples[:, 2] <= 128).all() and (a.samples[:, 3] <= 96).all()
    # a score is the box's log-likelihood under the model
    tokens = boxes_to_tokens(a.samples[:4], 128, 96, 128)
    torch.testing.assert_close(model.log_prob(image()[None].expand(4, -1, -1, -1), ["large_cube"] * 4, tokens),
                               a.sample_scores[:4], atol=1e-4, rtol=0)
    assert not torch.equal(propose(model, image(), "large_cube", 40, seed=4).samples, a.samples)


def test_sampling_with_the_kv_cache_uses_the_supported_cache_api(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # transformers' deprecation of the legacy cache arguments would raise
        propose(model, image(), "large_cube", 8, seed=0)


def test_constrained_boxes_never_leave_the_region_and_keep_their_size(model):
    region = torch.zeros(96, 128)
    region[10:70, 60:121] = 1  # a rectangle: every box must lie inside it
    region[30:40, 80:90] = 0  # with a hole
    got = propose(model, image(), "small_ball", 200, seed=1, region=region, min_size=0.05, max_size=0.25,
                  temperature=2.0, nms_iou=1.0).samples
    assert len(got) > 150
    for x0, y0, x1, y1 in got.tolist():
        assert region[int(y0):int(-(-y1 // 1)), int(x0):int(-(-x1 // 1))].min() == 1
    w, h = (got[:, 2] - got[:, 0]) / 128, (got[:, 3] - got[:, 1]) / 96
    assert (w >= 0.05 - 1e-6).all() and (w <= 0.25 + 1e-6).all() and (h >= 0.05 - 1e-6).all() and (h <= 0.25 + 1e-6).all()


def test_nms_removes_overlapping_proposals(model):
    p = propose(model, image(), "large_cube", 60, seed=0, temperature=0.3, nms_iou=0.3)
    from emplace.boxes import iou_matrix

    overlaps = iou_matrix(p.boxes, p.boxes) - torch.eye(len(p.boxes))
    assert len(p.boxes) < 60 and overlaps.max() <= 0.3


def test_bad_requests_are_named(model):
    with pytest.raises(LocationModelError, match="unknown label 'horse'.*it knows: large_cube, small_ball"):
        propose(model, image(), "horse", 4)
    with pytest.raises(LocationModelError, match="excludes the whole image"):
        propose(model, image(), "large_cube", 4, region=torch.zeros(96, 128))
    with pytest.raises(ValueError, match=r"region mask is \(64, 64\) \(W, H\) but the image is \(128, 96\)"):
        propose(model, image(), "large_cube", 4, region=torch.ones(64, 64))
    with pytest.raises(ValueError, match="image must be"):
        propose(model, torch.rand(96, 128), "large_cube", 4)


def test_saved_models_load_and_wrong_files_are_refused(model, tmp_path):
    path = save_location_model(model, tmp_path / "m.safetensors")
    loaded = load_location_model(path)
    assert loaded.labels == LABELS
    assert torch.equal(propose(loaded, image(), "large_cube", 10, seed=2).samples,
                       propose(model, image(), "large_cube", 10, seed=2).samples)
    config = json.loads((tmp_path / "m.json").read_text())
    # another vocabulary: the class embedding no longer fits
    (tmp_path / "m.json").write_text(json.dumps(config | {"labels": LABELS + ["tiny_cone"]}))
    with pytest.raises(LocationModelError, match="does not match its config.*another vocabulary"):
        load_location_model(path)
    (tmp_path / "m.json").write_text(json.dumps(config | {"format_version": 99}))
    with pytest.raises(LocationModelError, match="another version of Emplace"):
        load_location_model(path)
    (tmp_path / "m.json").unlink()
    with pytest.raises(LocationModelError, match="m.json is missing"):
        load_location_model(path)
    from emplace.weights import save_safetensors

    save_safetensors(tmp_path / "lora.safetensors", {"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, {})
    with pytest.raises(LocationModelError, match="not an Emplace location model"):
        load_location_model(tmp_path / "lora.safetensors")
    torch.save({"a": torch.zeros(1)}, tmp_path / "pickled.safetensors")
    with pytest.raises(WeightsFileError, match="pickle"):
        load_location_model(tmp_path / "pickled.safetensors")


def test_frozen_clip_encoders_plug_in_from_local_folders(tmp_path):
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModel,
    )

    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, image_size=32, patch_size=8)).save_pretrained(tmp_path / "v")
    CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 vocab_size=1000, max_position_embeddings=16)).save_pretrained(tmp_path / "t")
    _byte_level_tokenizer(tmp_path / "t")
    config = LocationConfig(width=32, layers=1, heads=2, image_encoder={"kind": "clip_vision", "path": str(tmp_path / "v")},
                            class_encoder={"kind": "clip_text", "path": str(tmp_path / "t")})
    model = LocationModel(config).eval()
    p = propose(model, image(), "a red horse", 8, seed=0)  # an open vocabulary: any label
    assert p.samples.shape == (8, 4)
    path = save_location_model(model, tmp_path / "clip.safetensors")
    from emplace.weights import load_safetensors

    tensors, _ = load_safetensors(path)
    assert not any(".frozen." in k for k in tensors)  # the CLIP weights stay in their folders
    assert torch.equal(propose(load_location_model(path), image(), "a red horse", 8, seed=0).samples, p.samples)
    config.image_encoder["path"] = str(tmp_path / "gone")
    with pytest.raises(LocationModelError, match="clip_vision encoder's folder .*gone' is not here"):
        LocationModel(config)


def _byte_level_tokenizer(folder):
    """A small CLIP-compatible fast tokenizer (word-level) saved into `folder`, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "a", "red", "horse", "large", "cube"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>").save_pretrained(folder)
