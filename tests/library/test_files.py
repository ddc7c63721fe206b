"""Files on disk: atomic writes, JSON-lines records, images, and the messages for a path that is no file."""

from __future__ import annotations

import json

import pytest
import torch

from emplace.files import load_image, read_jsonl, save_image, write_atomically, write_jsonl
from emplace.images import channels_first, channels_last
from emplace.lora import load_lora
from emplace.weights import WeightsFileError, check_safetensors


def test_an_atomic_write_fills_a_temporary_file_beside_the_target_then_renames_it(tmp_path):
    seen = []

    def write(tmp):
        seen.append(tmp)
        tmp.write_text("new")

    path = write_atomically(tmp_path / "sub" / "a.txt", write)
    assert path.read_text() == "new" and seen[0].parent == path.parent and seen[0] != path
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]


def test_a_failed_atomic_write_keeps_the_earlier_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")

    def write(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(path, write)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_json_lines_come_back_with_their_line_numbers_and_blank_lines_skipped(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"a": 1}, {"b": 2}])
    path.write_text(path.read_text() + "\n  \n" + json.dumps({"c": 3}) + "\n")
    assert read_jsonl(path, "rows") == [(1, {"a": 1}), (2, {"b": 2}), (5, {"c": 3})]


@pytest.mark.parametrize("bad, message", [('{"a": ', r"rows.jsonl line 2 is not JSON"),
                                          ("[1, 2]", r"rows.jsonl line 2 is not a JSON object")])
def test_a_bad_json_line_is_named_by_file_and_line_in_the_callers_error(tmp_path, bad, message):
    class RowsError(ValueError):
        pass

    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n' + bad + "\n")
    with pytest.raises(RowsError, match=message):
        read_jsonl(path, "rows", error=RowsError)


def test_a_missing_file_and_a_folder_are_told_apart_and_the_file_is_named_once(tmp_path):
    (tmp_path / "folder.safetensors").mkdir()
    with pytest.raises(WeightsFileError) as folder:
        check_safetensors(tmp_path / "folder.safetensors", "LoRA")
    assert str(folder.value) == f"LoRA '{tmp_path / 'folder.safetensors'}' is a folder, not a file"
    with pytest.raises(WeightsFileError) as missing:
        check_safetensors(tmp_path / "gone.safetensors", "LoRA")
    assert str(missing.value) == f"LoRA '{tmp_path / 'gone.safetensors'}' does not exist"
    with pytest.raises(ValueError, match=r"folder.safetensors is a folder, not a file \(expected rows\)"):
        read_jsonl(tmp_path / "folder.safetensors", "rows")


def test_a_refused_lora_names_its_file_once(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "pickled.safetensors")
    with pytest.raises(WeightsFileError) as refused:
        load_lora(tmp_path / "pickled.safetensors")
    assert str(refused.value).startswith("LoRA 'pickled.safetensors' is a PyTorch pickle")
    assert str(refused.value).count("pickled.safetensors") == 1


def test_image_layouts_convert_both_ways_and_files_keep_8_bit_values(tmp_path):
    comfy = torch.rand(2, 5, 7, 3)  # ComfyUI's IMAGE [B, H, W, C]
    assert channels_first(comfy).shape == (2, 3, 5, 7) and channels_first(comfy[0]).shape == (3, 5, 7)
    assert torch.equal(channels_last(channels_first(comfy)), comfy)
    image = torch.randint(0, 256, (3, 5, 7)).float() / 255
    save_image(image, tmp_path / "a.png")
    assert torch.equal(load_image(tmp_path / "a.png"), image)
