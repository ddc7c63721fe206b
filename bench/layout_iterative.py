"""LayoutBench-style AP on the scene world: iterative per-object inpainting vs one full-image pass.

    python -m bench.layout_iterative [--n 25] [--out runs/layout_iterative]

For each skill (number, position, size, shape) and split (in / out of distribution), layouts
come from real renders (emplace/scenes/datasets/layout.py), so every box has a true object.
The toy model cannot paint a background from nothing (its vocabulary is the world's), so the
canvas is the same camera's render of the empty scene, and both methods paint the objects in:
- iterative: IterInpaint's plan (emplace/inpaint/), one object at a time, bottom-up (far to
  near), each in a crop around its box at the model's 64 px, stitched back;
- single pass: the whole image at once, the union of the boxes as the mask, the objects'
  prompts joined (the toy text encoder reads 8 tokens: about two objects' worth).
The scene detector finds objects in the results; AP at IoU 0.5 against the layout, per
skill and split, with the true renders' AP as the ceiling. Writes table.md and results.json.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "emplace" / "defaults" / "toy_inpaint"
SEED = 2_000_000_011  # held out from every training seed


def main() -> None:
    from emplace.boxes import Box, Boxes, boxes_to_masks
    from emplace.diffusion import load_backend
    from emplace.files import image_grid, save_image
    from emplace.inpaint.iterate import backend_inpaint, iterative_inpaint
    from emplace.inpaint.plan import plan
    from emplace.scenes.datasets.layout import SKILLS, layouts
    from emplace.scenes.detector import detect
    from emplace.scenes.metrics import average_precision
    from emplace.scenes.render import render

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=25, help="layouts per skill and split")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--out", type=Path, default=Path("runs/layout_iterative"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    backend = load_backend(TOY)
    size = backend.resolution
    paint = backend_inpaint(backend, steps=args.steps)
    results, sheet = {}, []
    start = time.time()
    for skill in SKILLS:
        for split in ("id", "ood"):
            g = torch.Generator().manual_seed(SEED + 7 * SKILLS.index(skill) + (split == "ood"))
            truths, found = [], {"true renders": [], "iterative": [], "single pass": []}
            for k, (scene, camera, truth, objs) in enumerate(layouts(args.n, skill, split, g, size)):
                empty = render([replace(scene, objects=())], [camera], size).image[0]
                boxes = Boxes(tuple(Box(*a.box.xyxy, label=a.label, prompt=a.prompt) for a in objs), size, size)
                iterative = iterative_inpaint(empty, plan(boxes, (size, size), order="bottom-up", grow=2, feather=2,
                                                          padding=0.5, target=size, background=False, seed=k),
                                              paint).image
                union = boxes_to_masks(boxes, grow=2).amax(0)
                single = paint(empty, union, " and ".join(a.prompt for a in objs), k)
                truths.append([(a.box, a.label) for a in objs])
                for name, image in (("true renders", truth), ("iterative", iterative), ("single pass", single)):
                    found[name].append([(d.box, d.label, d.score) for d in detect(image)])
                if k < 2:
                    sheet.append([empty, single, iterative, truth])
            results[f"{skill}_{split}"] = {name: average_precision(d, truths)["mAP"] for name, d in found.items()}
            print(skill, split, {k: round(v, 3) for k, v in results[f"{skill}_{split}"].items()}, flush=True)
    rows = ["| skill | split | single pass AP50 | iterative AP50 | true renders AP50 |", "|---|---|---|---|---|"]
    for key, r in results.items():
        skill, split = key.split("_")
        rows.append(f"| {skill} | {split.upper()} | {r['single pass']:.3f} | {r['iterative']:.3f} | "
                    f"{r['true renders']:.3f} |")
    mean = {name: sum(r[name] for r in results.values()) / len(results) for name in ("single pass", "iterative",
                                                                                     "true renders")}
    rows.append(f"| mean | | {mean['single pass']:.3f} | {mean['iterative']:.3f} | {mean['true renders']:.3f} |")
    table = "\n".join(rows)
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps({"n": args.n, "steps": args.steps, "results": results,
                                                       "mean": mean, "minutes": (time.time() - start) / 60},
                                                      indent=1))
    save_image(image_grid(sheet, 4), args.out / "examples.png")
    print(table)
    print(f"wrote {args.out / 'table.md'}; examples (empty canvas, single pass, iterative, truth): "
          f"{args.out / 'examples.png'}")


if __name__ == "__main__":
    main()
