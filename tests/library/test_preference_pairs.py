"""pairs.jsonl: validated up front, every bad line reported with its number."""

import json

import pytest

from emplace.preference.pairs import PairDataError, load_pairs


def folder_with(tmp_path, lines):
    for name in ("w.png", "w2.png", "l.png", "m.png"):
        (tmp_path / name).write_bytes(b"png")
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_good_lines_load_with_one_or_several_winners(tmp_path):
    pairs = load_pairs(folder_with(tmp_path, [
        json.dumps({"prompt": "a red cube", "winner": "w.png", "loser": "l.png", "mask": "m.png"}),
        json.dumps({"prompt": "a red cube", "winner": ["w.png", "w2.png"], "loser": "l.png", "group": "g"}),
    ]))
    assert [len(p.winners) for p in pairs] == [1, 2] and pairs[0].mask.name == "m.png"
    assert pairs[1].extra == {"group": "g"}  # provenance, kept but not trained on


def test_every_bad_line_is_reported_with_its_number(tmp_path):
    folder = folder_with(tmp_path, [
        json.dumps({"prompt": "ok", "winner": "w.png", "loser": "l.png"}),
        "{not json",
        json.dumps({"prompt": "x", "winner": "missing.png", "loser": "l.png"}),
        json.dumps({"winner": "w.png", "loser": "l.png"}),
        json.dumps({"prompt": "x", "winner": "w.png", "loser": "l.png", "crop_loser": [0, 0, 2, 2]}),
    ])
    with pytest.raises(PairDataError) as err:
        load_pairs(folder)
    text = str(err.value)
    assert "4 bad line(s)" in text
    assert "line 2: not JSON" in text and "line 3: 'winner' file missing.png does not exist" in text
    assert "line 4: 'prompt' is missing" in text and "line 5: 'crop_loser' is not supported" in text


def test_a_folder_without_pairs_is_refused(tmp_path):
    with pytest.raises(PairDataError, match="no pairs.jsonl"):
        load_pairs(tmp_path)
