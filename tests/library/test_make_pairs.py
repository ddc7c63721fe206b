"""python -m trainer make-pairs: pairs from your own images, readable by the dpo trainer."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from emplace.preference.pairs import load_pairs
from emplace.files import load_image, save_image

ROOT = Path(__file__).resolve().parents[2]


def trainer(*args):
    return subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def user_images(folder: Path, n: int = 2):
    """Images of a red square object on a grey ground, with masks and backgrounds."""
    for i in range(n):
        bg = torch.full((3, 48, 48), 0.5)
        img = bg.clone()
        img[0, 20:32, 10 + i * 10:22 + i * 10], img[1:, 20:32, 10 + i * 10:22 + i * 10] = 0.9, 0.1
        mask = torch.zeros(48, 48)
        mask[20:32, 10 + i * 10:22 + i * 10] = 1
        save_image(img, folder / "images" / f"{i}.png")
        save_image(mask, folder / "masks" / f"{i}.png")
        save_image(bg, folder / "backgrounds" / f"{i}.png")
    (folder / "prompts.json").write_text(json.dumps({f"{i}.png": "a red box" for i in range(n)}))


def test_degraded_losers_change_only_the_masked_region(tmp_path):
    user_images(tmp_path)
    r = trainer("make-pairs", "degrade", "--images", tmp_path / "images", "--masks", tmp_path / "masks",
                "--prompts", tmp_path / "prompts.json", "--backgrounds", tmp_path / "backgrounds",
                "--out", tmp_path / "pairs", "--per-image", "4")
    assert r.returncode == 0, r.stderr
    pairs = load_pairs(tmp_path / "pairs")
    assert len(pairs) == 8 and all(p.object_mask is not None for p in pairs)
    for p in pairs:
        w, l, m = load_image(p.winners[0]), load_image(p.loser), load_image(p.mask)[0] > 0.5
        assert torch.equal(w[:, ~m], l[:, ~m]) and (w[:, m] - l[:, m]).abs().max() > 0.02


def test_missing_masks_are_all_reported(tmp_path):
    user_images(tmp_path)
    (tmp_path / "masks" / "1.png").unlink()
    r = trainer("make-pairs", "degrade", "--images", tmp_path / "images", "--masks", tmp_path / "masks",
                "--prompts", tmp_path / "prompts.json", "--out", tmp_path / "pairs")
    assert r.returncode == 2 and "1.png: no mask" in r.stderr


def test_ranked_candidates_give_every_better_worse_pair(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        save_image(torch.rand(3, 8, 8), tmp_path / name)
    (tmp_path / "ranking.jsonl").write_text(json.dumps({"prompt": "x", "ranked": ["a.png", "b.png", "c.png"]}) + "\n")
    r = trainer("make-pairs", "ranked", "--ranking", tmp_path / "ranking.jsonl", "--out", tmp_path / "pairs")
    assert r.returncode == 0, r.stderr
    pairs = load_pairs(tmp_path / "pairs")
    assert [(p.winners[0].name, p.loser.name) for p in pairs] == [("a.png", "b.png"), ("a.png", "c.png"),
                                                                  ("b.png", "c.png")]
