"""`scenes removal`: PIPE-style pairs: the image with an object, the same image without it, its box and class.

    images/<id>_with.png, images/<id>_without.png
    pairs.jsonl: {"id", "source": with, "target": without, "instruction": "remove the red cube",
                  "box": [x0, y0, x1, y1], "label", "prompt", "camera"}
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from ..samples import insertion_examples
from ...files import save_image, write_jsonl
from .files import camera_record


def write(out: Path, n: int, seed: int, size: int = 128) -> dict:
    rows = []
    for start in tqdm(range(0, n, 64), desc="removal", unit="batch"):
        for k, e in enumerate(insertion_examples(min(64, n - start), seed * 1_000_003 + start, size)):
            i = f"{start + k:06d}"
            rows.append({"id": i, "source": f"images/{i}_with.png", "target": f"images/{i}_without.png",
                         "instruction": f"remove the {e.target.label}", "box": [round(v, 2) for v in e.box.xyxy],
                         "label": e.target.label, "prompt": e.prompt, "camera": camera_record(e.camera)})
            save_image(e.image, out / rows[-1]["source"])
            save_image(e.background, out / rows[-1]["target"])
    write_jsonl(out / "pairs.jsonl", rows)
    return {"pairs": len(rows)}
