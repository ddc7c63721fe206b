"""Held-out evaluation of inpainting on the scene world: did the prompted object appear, plausibly?"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .detector import Detection, detect
from .metrics import masked_psnr, plausibility
from .samples import InsertionExample

HELD_OUT_SEED = 1_000_000_007  # far from every training seed


@dataclass
class InsertionScore:
    found: bool  # a detection of the prompted colour and shape centred inside the mask
    plausible: bool  # ... that the scene world judges plausible (scale and shadow)
    psnr: float  # masked PSNR against the true render
    detection: Detection | None


def find_prompted(image: torch.Tensor, example: InsertionExample) -> Detection | None:
    """The largest detection of the prompted colour and shape whose centre lies in the mask."""
    t = example.target
    for d in detect(image):
        cx, cy = int((d.box.x0 + d.box.x1) / 2), int((d.box.y0 + d.box.y1) / 2)
        inside = 0 <= cy < example.mask.shape[0] and 0 <= cx < example.mask.shape[1] and example.mask[cy, cx] > 0
        if inside and d.colour == t.colour and d.shape == t.shape:
            return d
    return None


def score_insertion(result: torch.Tensor, example: InsertionExample) -> InsertionScore:
    d = find_prompted(result, example)
    plausible = False
    if d is not None:
        plausible = plausibility(result, d.box, d.shape, example.camera, d.mask).plausible
    return InsertionScore(d is not None, plausible, masked_psnr(result, example.image, example.mask > 0), d)


def summarise(scores: list[InsertionScore]) -> dict:
    """The rates and mean masked PSNR, and every scene's verdicts (so two models can be compared scene by
    scene: `mcnemar_p`)."""
    n = len(scores)
    finite = [s.psnr for s in scores if s.psnr != float("inf")]
    return {"examples": n, "found_rate": sum(s.found for s in scores) / n,
            "plausible_rate": sum(s.plausible for s in scores) / n,
            "masked_psnr": sum(finite) / len(finite) if finite else None,  # None: every result was exact
            "scenes": [{"found": s.found, "plausible": s.plausible, "psnr": s.psnr if s.psnr != float("inf") else None}
                       for s in scores]}


def mcnemar_p(a: list[bool], b: list[bool]) -> float:
    """Exact two-sided McNemar test of paired verdicts (the same scenes judged under two models): the
    chance of a split of the discordant scenes at least this uneven if both models were equally good."""
    if len(a) != len(b):
        raise ValueError(f"paired verdicts need the same scenes: {len(a)} against {len(b)}")
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def evaluate_toy_inpainting(model, examples: list[InsertionExample], steps: int = 25, guidance: float = 3.0,
                            seed: int = 0, batch: int = 16, desc: str = "inpainting") -> tuple[dict, list[torch.Tensor]]:
    """Inpaint every example's background at its mask with its prompt; score the results."""
    from tqdm import tqdm

    results = []
    for start in tqdm(range(0, len(examples), batch), desc=f"{desc} ({len(examples)} scenes, {steps} steps)",
                      unit="batch"):
        chunk = examples[start:start + batch]
        results += list(model.inpaint(torch.stack([e.background for e in chunk]), torch.stack([e.mask for e in chunk]),
                                      [e.prompt for e in chunk], steps=steps, guidance=guidance, seed=seed + start))
    scores = [score_insertion(r, e) for r, e in zip(results, examples)]
    return summarise(scores), results


def truth_scores(examples: list[InsertionExample]) -> dict:
    """The same scores on the true renders: the ceiling the detector and metrics allow."""
    return summarise([score_insertion(e.image, e) for e in examples])

