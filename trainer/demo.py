"""python -m trainer demo: the main job on the embedded defaults.

Renders four held-out scenes and takes one object out of each. The toy inpainting model puts
it back from its prompt at its true box; the location model proposes where an object of that
kind should go in the empty scene, and the toy model paints it there too. Writes a PNG sheet
(input, mask, result, truth, proposals, result at the best proposal) and prints the scene
world's verdicts. `--eval N` scores N held-out scenes and writes the figures.
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from emplace.boxes import Box

from .loop import phase

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "emplace" / "defaults" / "toy_inpaint"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="inpaint an object into a held-out scene with the embedded toy model")
    p.add_argument("--out", type=Path, default=Path("out/demo"))
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--seed", type=int, default=0, help="which held-out scenes")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--eval", type=int, default=0, metavar="N", help="score N held-out scenes and write the figures")
    p.add_argument("--mask", choices=["box", "region"], default="box",
                   help="inpaint the object's box, or the box around the object and its shadow (as in the "
                        "preference pairs)")
    p.add_argument("--lora", type=Path, help="a LoRA for the toy model (from python -m trainer dpo) to apply")
    p.add_argument("--lora-strength", type=float, default=1.0)
    p.add_argument("--location-model", type=Path, help="a location model (.safetensors; default: the embedded one)")
    p.add_argument("--proposals", type=int, default=50, help="boxes the location model samples per scene")
    p.set_defaults(run=run)


def lora_applied(model, path: Path | None, strength: float):
    if path is None:
        return nullcontext()
    from emplace.lora import load_lora
    from emplace.lora.apply import merged

    return merged(load_lora(path), strength, str(path), model.unet, (model.text_encoder,))


def run(args: argparse.Namespace) -> int:
    from emplace.boxes import box_mask
    from emplace.files import image_grid, save_image
    from emplace.scenes.evaluate import (
        HELD_OUT_SEED,
        evaluate_toy_inpainting,
        truth_scores,
    )
    from emplace.scenes.samples import insertion_examples
    from emplace.toy_inpaint import ToyInpaintModel

    from emplace.location.model import DEFAULT_MODEL as DEFAULT_LOCATION_MODEL
    from emplace.location.model import load_location_model

    torch.manual_seed(0)
    # every input is read and checked before any work starts
    model = ToyInpaintModel.load(args.model)
    location_model = load_location_model(args.location_model or DEFAULT_LOCATION_MODEL)
    with lora_applied(model, args.lora, args.lora_strength):
        n = args.eval or 4
        with phase(f"rendering {n} held-out scene{'s' if n > 1 else ''}"):
            examples = insertion_examples(n, HELD_OUT_SEED + args.seed, size=model.config.image_size)
        if args.mask == "region":
            examples = [replace(e, mask=e.region_mask()) for e in examples]
        proposals = propose_for(examples, location_model, args.proposals, args.seed)
        at_proposals = [replace(e, mask=box_mask(p.best, e.mask.shape[1], e.mask.shape[0], grow=2))
                        for e, p in zip(examples, proposals)]
        summary, results = evaluate_toy_inpainting(model, examples, args.steps, args.guidance, seed=args.seed,
                                                   desc="inpainting at the true boxes")
        _, proposed_results = evaluate_toy_inpainting(model, at_proposals, args.steps, args.guidance, seed=args.seed,
                                                      desc="inpainting at the best proposals")
    summary["proposal_plausible_rate"] = sum(p.plausible for p in proposals) / n
    args.out.mkdir(parents=True, exist_ok=True)
    shown = min(n, 8)
    rows = []
    for e, r, p, pr in zip(examples[:shown], results[:shown], proposals[:shown], proposed_results[:shown]):
        m = e.mask[None].expand(3, -1, -1)
        rows.append([e.background * (1 - m) + 0.5 * m, m, r, e.image, p.preview, pr])
    save_image(image_grid(rows, 4), args.out / "demo.png")
    if args.eval:
        summary["truth"] = truth_scores(examples)
        summary |= {"steps": args.steps, "guidance": args.guidance, "model": str(args.model), "mask": args.mask,
                    "lora": str(args.lora) if args.lora else None, "lora_strength": args.lora_strength}
        (args.out / "eval.json").write_text(json.dumps(summary, indent=1))
    print(f"prompt{'s' if n > 1 else ''}: {', '.join(e.prompt for e in examples[:shown])}{' ...' if n > shown else ''}")
    print(f"prompted object found in the mask: {summary['found_rate']:.0%} of {n}; "
          f"judged plausible (scale and shadow): {summary['plausible_rate']:.0%}; "
          f"masked PSNR vs truth: {summary['masked_psnr'] or float('inf'):.1f} dB")
    if args.eval:
        t = summary["truth"]
        print(f"on the true renders the same checks give: found {t['found_rate']:.0%}, plausible {t['plausible_rate']:.0%}")
    print(f"location model: its best of {args.proposals} proposed boxes is where the scene world says such an object "
          f"can stand in {summary['proposal_plausible_rate']:.0%} of {n} scenes")
    print(f"wrote {args.out / 'demo.png'} (columns: input, mask, result, truth, proposals (heat map of all sampled "
          f"boxes, the best outlined), result at the best proposal)")
    return 0


@dataclass
class DemoProposal:
    best: Box  # the most likely of the proposals left after NMS
    plausible: bool  # the best one, by the scene world's judge
    preview: torch.Tensor  # [3, H, W]: heat map of every sample, the best box outlined


def propose_for(examples, model, n: int, seed: int) -> list[DemoProposal]:
    """The location model's proposals for each example's object kind (size and shape) in its empty scene."""
    from emplace.boxes import Boxes
    from emplace.location.sample import propose
    from emplace.preview import density_map, draw_boxes, overlay_heat
    from emplace.scenes.datasets.files import camera_record
    from emplace.scenes.datasets.opa_layout import category_name
    from emplace.scenes.placement_judge import judge_box

    from tqdm import tqdm

    out = []
    for i, e in enumerate(tqdm(examples, desc=f"proposing locations ({n} samples per scene)", unit="scene")):
        category = category_name(e.target.shape, e.target.size)
        p = propose(model, e.background, category, n, seed=seed + i)
        size = e.background.shape[-1]
        empty = {"camera": camera_record(e.camera), "image_size": size,
                 "objects": [vars(o) for o in e.scene.without(e.target.index).objects]}
        heat = overlay_heat(e.background, density_map(p.samples, size, size))
        best = Box(*p.boxes[0].tolist())
        out.append(DemoProposal(best, judge_box(empty, category, best), draw_boxes(heat, Boxes((best,), size, size), 1,
                                                                                   False)))
    return out
