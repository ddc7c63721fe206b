"""LayoutBench-style AP on the scene world: iterative per-object inpainting vs one pass.

    python -m bench.layout_iterative [--canvas scene|blank] [--n 25] [--out runs/layout_iterative]

For each skill (number, position, size, shape) and split (in / out of distribution), layouts
come from real renders (emplace/scenes/datasets/layout.py), so every box has a true object.
Two canvases:
- scene (the toy inpainting model): the same camera's render of the empty scene; both methods
  paint the objects in. Iterative: IterInpaint's plan (emplace/inpaint/), one object at a
  time, bottom-up (far to near), each in a crop around its box at the model's 64 px, stitched
  back. Single pass: the union of the boxes as the mask, the objects' prompts joined.
- blank (the toy layout model, trained on IterInpaint's foreground and background tasks):
  seed 003's full protocol from a grey canvas. Iterative: each object in its box, one at a
  time, then the background pass over the rest, every pass over the whole 64 px canvas as
  IterInpaint does. Single pass: every object at once (the union of the boxes, the prompts
  joined), then the same background pass. A literally whole-image first pass would know
  nothing of the layout: this model is told where only through the mask.
The toy text encoder reads 8 tokens: about two objects' worth in a joined prompt.
The scene detector finds objects in the results; AP at IoU 0.5 against the layout, per
skill and split, with the true renders' AP as the ceiling. Writes table.md, results.json
and examples.png.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"scene": ROOT / "emplace" / "defaults" / "toy_inpaint", "blank": ROOT / "emplace" / "defaults" / "toy_layout"}
SEED = 2_000_000_011  # held out from every training seed


def main() -> None:
    from emplace.boxes import Box, Boxes, boxes_to_masks
    from emplace.diffusion import load_backend
    from emplace.files import image_grid, save_image
    from emplace.inpaint.iterate import backend_inpaint, iterative_inpaint
    from emplace.inpaint.plan import BLANK_CANVAS_GREY, OBJECT_TEMPLATE, plan
    from emplace.scenes.datasets.layout import SKILLS, layouts
    from emplace.scenes.detector import detect
    from emplace.scenes.metrics import average_precision
    from emplace.scenes.render import render

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--canvas", choices=("scene", "blank"), default="scene",
                   help="paint into the empty scene's render, or from a blank canvas with a background pass")
    p.add_argument("--n", type=int, default=25, help="layouts per skill and split")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--model", type=Path, help="toy model folder (default: the one for the canvas)")
    p.add_argument("--out", type=Path, default=Path("runs/layout_iterative"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    blank = args.canvas == "blank"
    backend = load_backend(args.model or MODELS[args.canvas])
    size = backend.resolution
    paint = backend_inpaint(backend, steps=args.steps)
    results, sheet = {}, []
    start = time.time()
    for skill in SKILLS:
        for split in ("id", "ood"):
            g = torch.Generator().manual_seed(SEED + 7 * SKILLS.index(skill) + (split == "ood"))
            truths, found = [], {"true renders": [], "iterative": [], "single pass": []}
            for k, (scene, camera, truth, objs) in enumerate(layouts(args.n, skill, split, g, size)):
                boxes = Boxes(tuple(Box(*a.box.xyxy, label=a.label, prompt=a.prompt) for a in objs), size, size)
                joined = " and ".join(a.prompt for a in objs)
                union = boxes_to_masks(boxes, grow=2).amax(0)
                if blank:
                    empty = torch.full_like(truth, BLANK_CANVAS_GREY)
                    # padding 10: every window is the whole 64 px canvas (IterInpaint paints full images)
                    steps = plan(boxes, (size, size), order="bottom-up", grow=2, feather=0, padding=10.0,
                                 target=size, background=True, seed=k)
                    iterative = iterative_inpaint(empty, steps, paint).image
                    objects_at_once = paint(empty, union, OBJECT_TEMPLATE.replace("{prompt}", joined), k)
                    background = steps[-1]  # the same background pass on the same seed
                    single = paint(objects_at_once, background.sampling_mask, background.prompt, background.seed)
                else:
                    empty = render([replace(scene, objects=())], [camera], size).image[0]
                    iterative = iterative_inpaint(empty, plan(boxes, (size, size), order="bottom-up", grow=2,
                                                              feather=2, padding=0.5, target=size, background=False,
                                                              seed=k), paint).image
                    single = paint(empty, union, joined, k)
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
    (args.out / "results.json").write_text(json.dumps({"canvas": args.canvas, "n": args.n, "steps": args.steps,
                                                       "results": results,
                                                       "mean": mean, "minutes": (time.time() - start) / 60},
                                                      indent=1))
    save_image(image_grid(sheet, 4), args.out / "examples.png")
    print(table)
    print(f"wrote {args.out / 'table.md'}; examples (empty canvas, single pass, iterative, truth): "
          f"{args.out / 'examples.png'}")


if __name__ == "__main__":
    main()
