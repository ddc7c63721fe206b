"""Pick-a-Pic-style preference rows -> a pairs.jsonl folder the trainer reads.

Rows have `caption`, `jpg_0`, `jpg_1` and `label_0` (1: image 0 preferred, 0: image 1
preferred, 0.5: a tie, dropped). They come from a local parquet file (the images as bytes,
as the published data set stores them; needs pyarrow) or a folder with `rows.jsonl`
(the images as file names in that folder).
"""

from __future__ import annotations

from pathlib import Path

from ..files import read_jsonl, write_jsonl
from .pairs import PairDataError


def _rows_from_parquet(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise PairDataError(f"reading '{path.name}' needs pyarrow: pip install pyarrow") from e
    table = pq.read_table(path, columns=["caption", "jpg_0", "jpg_1", "label_0"])
    for i, row in enumerate(table.to_pylist(), start=1):
        yield i, row


def _rows_from_folder(folder: Path):
    for i, row in read_jsonl(folder / "rows.jsonl", "Pick-a-Pic rows", error=PairDataError):
        for key in ("jpg_0", "jpg_1"):
            if isinstance(row.get(key), str):
                row[key] = (folder / row[key]).read_bytes() if (folder / row[key]).is_file() else None
        yield i, row


def convert_pickapic(source: str | Path, out: str | Path) -> dict:
    """Write out/images/* and out/pairs.jsonl; returns counts (pairs, ties dropped, bad rows)."""
    source, out = Path(source), Path(out)
    rows = _rows_from_parquet(source) if source.suffix == ".parquet" else _rows_from_folder(source)
    (out / "images").mkdir(parents=True, exist_ok=True)
    pairs, ties, problems = [], 0, []
    for i, row in rows:
        label, caption = row.get("label_0"), row.get("caption")
        if label is None or not isinstance(caption, str) or not row.get("jpg_0") or not row.get("jpg_1"):
            problems.append(f"row {i}: needs caption, jpg_0, jpg_1 and label_0")
            continue
        if label == 0.5:
            ties += 1
            continue
        for k in (0, 1):
            (out / "images" / f"{i:07d}_{k}.jpg").write_bytes(row[f"jpg_{k}"])
        winner, loser = (0, 1) if label == 1 else (1, 0)
        pairs.append({"prompt": caption, "winner": f"images/{i:07d}_{winner}.jpg",
                      "loser": f"images/{i:07d}_{loser}.jpg"})
    if problems:
        raise PairDataError(f"{source}: {len(problems)} bad row(s):\n  " + "\n  ".join(problems[:20]))
    write_jsonl(out / "pairs.jsonl", pairs)
    return {"pairs": len(pairs), "ties_dropped": ties}
