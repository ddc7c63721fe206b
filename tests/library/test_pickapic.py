"""Pick-a-Pic rows (caption, jpg_0, jpg_1, label_0) from parquet or a folder; ties are dropped."""

import io
import json

import pytest

from emplace.preference.pairs import PairDataError, load_pairs
from emplace.preference.pickapic import convert_pickapic


def jpeg(value: float) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (int(255 * value),) * 3).save(buf, format="JPEG")
    return buf.getvalue()


def test_parquet_rows_become_pairs_with_the_preferred_image_as_winner(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = {"caption": ["a", "b", "c"], "jpg_0": [jpeg(0.1), jpeg(0.2), jpeg(0.3)],
            "jpg_1": [jpeg(0.9), jpeg(0.8), jpeg(0.7)], "label_0": [1.0, 0.0, 0.5]}
    pq.write_table(pa.table(rows), tmp_path / "rows.parquet")
    counts = convert_pickapic(tmp_path / "rows.parquet", tmp_path / "pairs")
    assert counts == {"pairs": 2, "ties_dropped": 1}
    pairs = load_pairs(tmp_path / "pairs")
    assert [p.prompt for p in pairs] == ["a", "b"]
    assert pairs[0].winners[0].name.endswith("_0.jpg") and pairs[1].winners[0].name.endswith("_1.jpg")


def test_a_folder_of_rows_works_and_bad_rows_are_named(tmp_path):
    for name, v in (("x0.jpg", 0.2), ("x1.jpg", 0.8)):
        (tmp_path / name).write_bytes(jpeg(v))
    lines = [{"caption": "x", "jpg_0": "x0.jpg", "jpg_1": "x1.jpg", "label_0": 0.0}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert convert_pickapic(tmp_path, tmp_path / "out")["pairs"] == 1
    lines.append({"caption": "y", "jpg_0": "missing.jpg", "jpg_1": "x1.jpg", "label_0": 1.0})
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(PairDataError, match="row 2: needs caption, jpg_0, jpg_1 and label_0"):
        convert_pickapic(tmp_path, tmp_path / "out2")
