"""python -m trainer demo: the main job on the embedded default.

Renders four held-out scenes, takes one object out of each, asks the toy inpainting model
to put it back from its prompt, writes a PNG sheet (input, mask, result, truth) and prints
the scene world's verdict. `--eval N` scores N held-out scenes and writes the figures.
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch

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
    p.set_defaults(run=run)


def lora_applied(model, path: Path | None, strength: float):
    if path is None:
        return nullcontext()
    from emplace.lora import load_lora
    from emplace.lora.apply import merged

    return merged(load_lora(path), strength, str(path), model.unet, (model.text_encoder,))


def run(args: argparse.Namespace) -> int:
    from emplace.files import image_grid, save_image
    from emplace.scenes.evaluate import HELD_OUT_SEED, evaluate_toy_inpainting, truth_scores
    from emplace.scenes.samples import insertion_examples
    from emplace.scenes.toy_inpaint import ToyInpaintModel

    torch.manual_seed(0)
    model = ToyInpaintModel.load(args.model)
    n = args.eval or 4
    examples = insertion_examples(n, HELD_OUT_SEED + args.seed, size=model.config.image_size)
    if args.mask == "region":
        examples = [replace(e, mask=e.region_mask()) for e in examples]
    with lora_applied(model, args.lora, args.lora_strength):
        summary, results = evaluate_toy_inpainting(model, examples, args.steps, args.guidance, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    shown = min(n, 8)
    rows = []
    for e, r in zip(examples[:shown], results[:shown]):
        m = e.mask[None].expand(3, -1, -1)
        rows.append([e.background * (1 - m) + 0.5 * m, m, r, e.image])
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
    print(f"wrote {args.out / 'demo.png'} (columns: input, mask, result, truth)")
    return 0
