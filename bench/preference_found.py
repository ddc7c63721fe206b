"""Why a preference LoRA loses "found": what the detector sees where the base's object was found and the LoRA's
was not, and how large the objects are that both paint.

    python -m bench.preference_found runs/pref_strength/mask-dpo/seed0/lora.safetensors [more LoRAs] [--strengths 1 0.5]

Scored on the sweep's 200 validation scenes (`demo --seed 1`, region masks, 25 steps, guidance 3), the
LoRAs at each of --strengths (default 1). "found" needs a detection centred in the mask with the prompted
colour and shape; for every scene the LoRA loses (and gains) this names what was detected there instead.
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
from pathlib import Path

from bench.scene_preference import DEFAULT_GUIDANCE, TOY, VALIDATION_SEED, Scorer


def instead(image, example) -> str:
    """What the detector found in the mask when the prompted object is not there."""
    from emplace.scenes.detector import detect

    t, misses = example.target, []
    for d in detect(image):
        cx, cy = int((d.box.x0 + d.box.x1) / 2), int((d.box.y0 + d.box.y1) / 2)
        if 0 <= cy < example.mask.shape[0] and 0 <= cx < example.mask.shape[1] and example.mask[cy, cx] > 0:
            misses.append((d.colour != t.colour, d.shape != t.shape))
    if not misses:
        return "nothing in the mask"
    colour, shape = min(misses, key=sum)  # the closest miss
    return "wrong colour and shape" if colour and shape else "wrong colour" if colour else "wrong shape"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("loras", type=Path, nargs="+")
    p.add_argument("--scenes", type=int, default=200)
    p.add_argument("--strengths", type=float, nargs="+", default=[1.0], help="load each LoRA at these strengths")
    args = p.parse_args()

    from emplace.scenes.evaluate import evaluate_toy_inpainting, find_prompted
    from emplace.toy_inpaint import ToyInpaintModel
    from trainer.demo import lora_applied

    examples = Scorer(args.scenes, VALIDATION_SEED, 25, DEFAULT_GUIDANCE).examples  # the sweep's scenes

    def inpaint(lora: Path | None, desc: str, strength: float = 1.0):
        model = ToyInpaintModel.load(TOY)
        with lora_applied(model, lora, strength):
            return evaluate_toy_inpainting(model, examples, 25, DEFAULT_GUIDANCE, seed=VALIDATION_SEED, desc=desc)

    base, base_images = inpaint(None, "the base")
    found = lambda summary: [s["found"] for s in summary["scenes"]]  # noqa: E731
    area = lambda image, e: find_prompted(image, e).mask.sum().item()  # noqa: E731
    # the base's and the true renders' object areas, once for every LoRA (None where not found)
    base_area = [area(image, e) if f else None for image, e, f in zip(base_images, examples, found(base))]
    truth_area = [area(e.image, e) if find_prompted(e.image, e) is not None else None for e in examples]
    for lora, strength in ((lora, s) for lora in args.loras for s in args.strengths):
        summary, images = inpaint(lora, f"{lora} at strength {strength:g}", strength)
        pairs = list(zip(found(base), found(summary)))
        lost = [i for i, (b, l) in enumerate(pairs) if b and not l]
        gained = [i for i, (b, l) in enumerate(pairs) if l and not b]
        both = [i for i, (b, l) in enumerate(pairs) if b and l]
        print(f"{lora} at strength {strength:g}: found {base['found_rate']:.1%} -> {summary['found_rate']:.1%}")
        print(f"  lost in {len(lost)} scenes, the LoRA painted:",
              dict(Counter(instead(images[i], examples[i]) for i in lost)))
        print(f"  gained in {len(gained)} scenes, the base had painted:",
              dict(Counter(instead(base_images[i], examples[i]) for i in gained)))
        ratio = statistics.median(area(images[i], examples[i]) / base_area[i] for i in both)
        truth = [truth_area[i] / base_area[i] for i in both if truth_area[i] is not None]
        print(f"  object area where both found it, median LoRA / base: {ratio:.2f} (true render / base: "
              f"{statistics.median(truth):.2f})")


if __name__ == "__main__":
    main()
