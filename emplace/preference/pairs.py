"""Preference pair data sets: a folder with `pairs.jsonl`, checked line by line before training.

One JSON object per line, paths relative to the folder:

    {"prompt": "large red metal cube",
     "winner": "w.png" or ["w1.png", "w2.png"],      several winners: shared commonality
     "loser": "l.png",
     "mask": "m.png",                                 optional: the inpainting mask (white = inpaint)
     "object_mask": "o.png",                          optional: the object's pixels (MaskDPO's foreground)
     ...}                                             any other keys ("group", "kind", ...) are kept as
                                                      provenance in `extra`; training does not read them

Every bad line is reported with its number and reason, all at once. Keys that look like
training inputs but are not supported (`crop_winner`, `crop_loser`: the asymmetric method
draws its own crops every step) are refused rather than silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..files import read_jsonl


class PairDataError(ValueError):
    pass


@dataclass(frozen=True)
class PreferencePair:
    line: int
    prompt: str
    winners: tuple[Path, ...]
    loser: Path
    mask: Path | None = None
    object_mask: Path | None = None
    extra: dict = field(default_factory=dict, compare=False)


def _path(folder: Path, value, name: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{name}' must be a file path, got {value!r}")
    path = (folder / value).resolve()
    if not path.is_file():
        raise ValueError(f"'{name}' file {value} does not exist")
    return path


UNSUPPORTED = {"crop_winner": "the asymmetric method draws its own differential crops every step",
               "crop_loser": "the asymmetric method draws its own differential crops every step"}


def parse_row(folder: Path, number: int, row: dict) -> PreferencePair:
    prompt = row.get("prompt", row.get("caption"))
    if not isinstance(prompt, str):
        raise ValueError("'prompt' is missing or not text")
    for key in ("winner", "loser"):
        if key not in row:
            raise ValueError(f"'{key}' is missing")
    winners = row["winner"] if isinstance(row["winner"], list) else [row["winner"]]
    if not winners:
        raise ValueError("'winner' is an empty list")
    for key, why in UNSUPPORTED.items():
        if key in row:
            raise ValueError(f"'{key}' is not supported ({why}); remove it")
    known = {"prompt", "caption", "winner", "loser", "mask", "object_mask"}
    return PreferencePair(
        number, prompt, tuple(_path(folder, w, "winner") for w in winners), _path(folder, row["loser"], "loser"),
        _path(folder, row["mask"], "mask") if row.get("mask") else None,
        _path(folder, row["object_mask"], "object_mask") if row.get("object_mask") else None,
        {k: v for k, v in row.items() if k not in known})


def load_pairs(folder: str | Path) -> list[PreferencePair]:
    folder = Path(folder)
    path = folder / "pairs.jsonl"
    if not path.is_file():
        raise PairDataError(f"no pairs.jsonl in '{folder}'")
    problems: list[str] = []
    pairs = []
    for number, row in read_jsonl(path, "preference pairs", error=PairDataError, problems=problems):
        try:
            pairs.append(parse_row(folder, number, row))
        except ValueError as e:
            problems.append(f"line {number}: {e}")
    if problems:
        problems.sort(key=lambda p: int(p.split(":")[0].removeprefix("line ")))
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise PairDataError(f"{path}: {len(problems)} bad line(s):\n  {shown}")
    if not pairs:
        raise PairDataError(f"{path} has no pairs")
    return pairs
