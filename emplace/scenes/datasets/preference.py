"""`scenes preference`: inpainting preference pairs in the trainer's pair format.

For a background, a prompt ("large red metal cube") and an inpaint mask, the winner is the
object rendered in place (resting, with its shadow). Losers are spatial hallucinations —
the object rendered floating or 1.5x too large or small, or its pixels pasted with no
shadow — and ASAP-style localized degradations of the object region (blur, colour shift,
warp). `--loser-kinds` draws from a subset (e.g. only the kinds the plausibility judge
measures: floating, too_large, too_small, no_shadow) or adds `wrong_shape` (the object
resting in place as another shape than the prompt names), which the default leaves out.
Winner and loser are identical outside the mask, as two inpaintings of one input are.

    images/<id>_background.png, <id>_winner.png, <id>_winner2.png, <id>_<kind>.png, <id>_mask.png,
    <id>_object.png (the winner's object pixels, for MaskDPO's foreground)
    pairs.jsonl: {"prompt", "winner": [paths], "loser": path, "mask": path, "object_mask": path,
                  "group": id, "kind": loser kind, "background": path}
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from ...boxes import box_from_mask, box_mask
from ...preference.degradations import LOCAL, paste
from ..render import render
from ..samples import changed_region, insertion_examples
from ...files import save_image, write_jsonl
from ..vocabulary import SHAPES
from ..world import Scene, SceneObject
from .placements import implausible_variant

RENDERED = ("floating", "too_large", "too_small", "wrong_shape")
DEFAULT_KINDS = ("floating", "too_large", "too_small", "no_shadow") + tuple(LOCAL)
# wrong_shape is opt-in, last, so the default draws (and every recorded table's pairs) stay as they were
KINDS = DEFAULT_KINDS + ("wrong_shape",)


def loser_object(g: torch.Generator, obj: SceneObject, kind: str, scene: Scene) -> SceneObject | None:
    """The object as a rendered loser shows it: misplaced (placements' kinds), or resting in place as another
    shape, which teaches what the prompt's shape word means (the "found" check)."""
    if kind == "wrong_shape":
        other = 1 + int(torch.randint(len(SHAPES) - 1, (), generator=g))
        return replace(obj, shape=(obj.shape + other) % len(SHAPES))
    return implausible_variant(g, obj, kind, scene)


def write(out: Path, n: int, seed: int, size: int = 128, losers_per_example: int = 2,
          loser_kinds: tuple[str, ...] = DEFAULT_KINDS) -> dict:
    """`loser_kinds`: the kinds of loser to draw from (DEFAULT_KINDS unless given); each example gets up to
    `losers_per_example` different ones."""
    unknown = [k for k in loser_kinds if k not in KINDS]
    if unknown or not loser_kinds:
        raise ValueError(f"loser kinds must be among {', '.join(KINDS)}; got {', '.join(loser_kinds) or 'none'}")
    g = torch.Generator().manual_seed(seed + 17)
    rows = []
    examples = []
    for start in tqdm(range(0, n, 64), desc="preference: scenes", unit="batch"):
        examples += insertion_examples(min(64, n - start), seed * 1_000_003 + start, size, min_side=size / 10)
    for k, e in enumerate(tqdm(examples, desc="preference: pairs", unit="example")):
        i = f"{k:06d}"
        kinds = [loser_kinds[j] for j in torch.randperm(len(loser_kinds), generator=g)[:losers_per_example].tolist()]
        base = e.scene.without(e.target.index)
        obj = e.scene.objects[e.target.index]
        variants = {kind: loser_object(g, obj, kind, base) for kind in kinds if kind in RENDERED}
        nudged = replace(obj, x=obj.x + 0.1 * obj.radius, z=obj.z - 0.1 * obj.radius)  # a second plausible winner
        extra = render([base.with_object(v) for v in variants.values()] + [base.with_object(nudged)],
                       [e.camera] * (len(variants) + 1), size)
        losers = {kind: extra.image[j] for j, kind in enumerate(variants)}
        winner2 = extra.image[-1]
        object_mask = e.target.mask
        for kind in kinds:
            if kind == "no_shadow":
                losers[kind] = paste(e.background, e.image, object_mask)
            elif kind in LOCAL:
                losers[kind] = LOCAL[kind](e.image, box_mask(e.target.box, size, size, grow=1) > 0, g)
        for kind, loser in losers.items():
            region = changed_region(e.image, e.background) | changed_region(loser, e.background) \
                | changed_region(winner2, e.background)
            box = box_from_mask(region)
            mask = box_mask(box, size, size, grow=2) if box is not None else e.mask
            m = mask[None]
            paths = {name: f"images/{i}_{name}.png" for name in ("background", "winner", "winner2", kind, f"mask_{kind}",
                                                               "object")}
            save_image(e.background, out / paths["background"])
            save_image(e.background * (1 - m) + e.image * m, out / paths["winner"])
            save_image(e.background * (1 - m) + winner2 * m, out / paths["winner2"])
            save_image(e.background * (1 - m) + loser * m, out / paths[kind])
            save_image(mask, out / paths[f"mask_{kind}"])
            save_image(object_mask.float(), out / paths["object"])
            rows.append({"prompt": e.prompt, "winner": [paths["winner"], paths["winner2"]], "loser": paths[kind],
                         "mask": paths[f"mask_{kind}"], "object_mask": paths["object"], "group": i, "kind": kind,
                         "background": paths["background"]})
    write_jsonl(out / "pairs.jsonl", rows)
    return {"examples": len(examples), "pairs": len(rows), "loser_kinds": list(loser_kinds)}
