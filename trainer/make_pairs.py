"""python -m trainer make-pairs: preference pairs from your own images, in the format `dpo` reads.

    make-pairs degrade --images DIR --masks DIR --prompts FILE --out DIR [--backgrounds DIR] [--per-image N]
        ASAP-style losers: the image spoiled only inside its mask (local warp, blur, colour shift);
        with --backgrounds (the same scene without the object, same file names) also the object
        pasted without its shadow, 1.5x too large, 1.5x too small, or lifted off the ground.
    make-pairs ranked --ranking FILE --out DIR
        winner/loser pairs from candidates ranked by you: a JSON line per prompt,
        {"prompt": "...", "ranked": ["best.png", ..., "worst.png"], "mask": "optional.png"};
        every better/worse combination becomes a pair (paths relative to the ranking file).

Masks are white where the object is. Prompts: a JSON object {"image file name": "prompt"}.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from emplace.boxes import box_from_mask, box_mask
from emplace.files import load_image, read_jsonl, save_image, write_jsonl
from emplace.preference.degradations import LOCAL, paste

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-pairs", help="build preference pairs from your own images")
    modes = p.add_subparsers(dest="mode", required=True)
    d = modes.add_parser("degrade", help="losers made by spoiling the masked object")
    d.add_argument("--images", type=Path, required=True)
    d.add_argument("--masks", type=Path, required=True, help="a mask per image, same file name")
    d.add_argument("--prompts", type=Path, required=True, help='JSON: {"image name": "prompt"}')
    d.add_argument("--backgrounds", type=Path, help="the images without the object (enables paste losers)")
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--per-image", type=int, default=3)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(run=degrade)
    r = modes.add_parser("ranked", help="pairs from ranked candidates")
    r.add_argument("--ranking", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.set_defaults(run=ranked)


def paste_losers(image: torch.Tensor, background: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    box = box_from_mask(mask)
    lift = -round(0.4 * box.height) if box is not None else 0
    return {"no_shadow": paste(background, image, mask), "too_large": paste(background, image, mask, scale=1.5),
            "too_small": paste(background, image, mask, scale=1 / 1.5), "floating": paste(background, image, mask,
                                                                                          dy=lift)}


def degrade(args: argparse.Namespace) -> int:
    prompts = json.loads(args.prompts.read_text())
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"no images in '{args.images}'")
    problems = [f"{p.name}: no mask in {args.masks}" for p in images if not (args.masks / p.name).is_file()]
    problems += [f"{p.name}: no prompt in {args.prompts.name}" for p in images if p.name not in prompts]
    if args.backgrounds:
        problems += [f"{p.name}: no background in {args.backgrounds}" for p in images
                     if not (args.backgrounds / p.name).is_file()]
    if problems:
        raise ValueError(f"{len(problems)} problem(s):\n  " + "\n  ".join(problems[:20]))
    g = torch.Generator().manual_seed(args.seed)
    rows = []
    for p in images:
        image = load_image(p)
        mask = load_image(args.masks / p.name)[0] > 0.5
        if not mask.any():
            raise ValueError(f"{p.name}: its mask is empty")
        losers = {name: fn(image, mask, g) for name, fn in LOCAL.items()}
        if args.backgrounds:
            losers |= paste_losers(image, load_image(args.backgrounds / p.name), mask)
        order = [list(losers)[i] for i in torch.randperm(len(losers), generator=g).tolist()]
        # a loser that looks like the winner teaches nothing (e.g. "no shadow" when there was none)
        kinds = [k for k in order if (losers[k] - image).abs().max() > 0.02][: args.per_image]
        stem = p.stem
        save_image(image, args.out / "images" / f"{stem}_winner.png")
        save_image(mask.float(), args.out / "images" / f"{stem}_object.png")
        for kind in kinds:
            region = box_from_mask(((losers[kind] - image).abs().amax(0) > 0.02) | mask)
            inpaint = box_mask(region, image.shape[-1], image.shape[-2], grow=2)
            save_image(losers[kind], args.out / "images" / f"{stem}_{kind}.png")
            save_image(inpaint, args.out / "images" / f"{stem}_{kind}_mask.png")
            rows.append({"prompt": prompts[p.name], "winner": f"images/{stem}_winner.png",
                         "loser": f"images/{stem}_{kind}.png", "mask": f"images/{stem}_{kind}_mask.png",
                         "object_mask": f"images/{stem}_object.png", "group": stem, "kind": kind})
    write_jsonl(args.out / "pairs.jsonl", rows)
    print(f"wrote {len(rows)} pairs from {len(images)} images to {args.out / 'pairs.jsonl'}")
    return 0


def ranked(args: argparse.Namespace) -> int:
    base = args.ranking.parent
    rows, problems = [], []
    for number, row in read_jsonl(args.ranking, "rankings ({\"prompt\", \"ranked\": [best, ..., worst]})",
                                  problems=problems):
        try:
            files = [base / f for f in row["ranked"]]
            if len(files) < 2:
                raise ValueError("'ranked' needs two or more candidates")
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise ValueError(f"missing file(s): {', '.join(missing)}")
        except (KeyError, TypeError, ValueError) as e:
            problems.append(f"line {number}: {e}")
            continue
        group = f"{number:05d}"
        for f in files:
            shutil.copy2(f, _dest(args.out, group, f))
        if row.get("mask"):
            shutil.copy2(base / row["mask"], _dest(args.out, group, base / row["mask"]))
        for i, better in enumerate(files):
            for worse in files[i + 1:]:
                rows.append({"prompt": row["prompt"], "winner": _rel(group, better), "loser": _rel(group, worse),
                             "group": group, **({"mask": _rel(group, base / row["mask"])} if row.get("mask") else {})})
    if problems:
        raise ValueError(f"{args.ranking}: {len(problems)} bad line(s):\n  " + "\n  ".join(problems[:20]))
    write_jsonl(args.out / "pairs.jsonl", rows)
    print(f"wrote {len(rows)} pairs to {args.out / 'pairs.jsonl'}")
    return 0


def _dest(out: Path, group: str, f: Path) -> Path:
    (out / "images" / group).mkdir(parents=True, exist_ok=True)
    return out / "images" / group / f.name


def _rel(group: str, f: Path) -> str:
    return f"images/{group}/{f.name}"
