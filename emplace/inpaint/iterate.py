"""Run an IterInpaint plan: crop the current canvas, inpaint, stitch back, one step at a time.

The model is a plain callable (`InpaintFn`): ComfyUI's sampler drives it in nodes/, a
diffusers model (the toy default, SD folders) through `backend_inpaint` here. Each object is
cropped from the canvas as the steps before it left it, so overlapping objects stay coherent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from . import stitch
from .plan import InpaintStep


class InpaintFn(Protocol):
    def __call__(self, image: torch.Tensor, mask: torch.Tensor, prompt: str, seed: int) -> torch.Tensor:
        """image [3, h, w] in 0..1 and mask [h, w] (1 = repaint) at the crop's size -> [3, h, w]."""


@dataclass
class IterativeResult:
    image: torch.Tensor  # [3, H, W]
    painted: torch.Tensor  # [H, W]: the union of every step's blend mask (what may have changed)
    intermediates: list[torch.Tensor] = field(default_factory=list)  # the canvas after each step


def iterative_inpaint(image: torch.Tensor, steps: list[InpaintStep], inpaint: InpaintFn, colour_match: bool = False,
                      on_step: Callable[[int, int], None] | None = None,
                      background_inpaint: InpaintFn | None = None) -> IterativeResult:
    """Paint `steps` (from `plan.plan`) onto `image` [3, H, W] in order.

    The background step uses `background_inpaint` when given (e.g. another denoise strength).
    `on_step(done, total)` runs before each step and after the last: the place to report
    progress and to raise when the user interrupts (the canvas so far is not returned then).
    `colour_match` corrects each result's tone against the canvas ring around its mask.
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got {tuple(image.shape)}")
    for i, s in enumerate(steps):
        if tuple(s.sampling_mask.shape) != tuple(image.shape[-2:]):
            raise ValueError(f"step {i} was planned for a {tuple(s.sampling_mask.shape[::-1])} (W, H) image, "
                             f"the image is {tuple(image.shape[:0:-1])}")
    canvas = image.clone()
    painted = torch.zeros(image.shape[-2:])
    intermediates = []
    for i, s in enumerate(steps):
        if on_step:
            on_step(i, len(steps))
        crop = stitch.crop(canvas, s.sampling_mask, s.window, size=s.size)  # as planned, snapped for the model
        model = background_inpaint if s.box_index is None and background_inpaint is not None else inpaint
        result = model(crop.image, crop.mask, s.prompt, s.seed)
        if tuple(result.shape) != tuple(crop.image.shape):
            raise ValueError(f"the inpainting model returned {tuple(result.shape)} for a {tuple(crop.image.shape)} "
                             f"crop (step {i}, '{s.prompt}')")
        if colour_match:
            result = stitch.match_colour(result, crop.image, crop.mask)
        canvas = stitch.stitch(canvas, result.clamp(0, 1), s.blend_mask, crop.window)
        painted = torch.maximum(painted, s.blend_mask)
        intermediates.append(canvas)
    if on_step:
        on_step(len(steps), len(steps))
    return IterativeResult(canvas, painted, intermediates)


def backend_inpaint(backend, steps: int = 25, guidance: float | None = None) -> InpaintFn:
    """An InpaintFn over a diffusers backend (emplace.diffusion: the toy model or an SD folder)."""
    extra = {} if guidance is None else {"guidance": guidance}

    def inpaint(image, mask, prompt, seed):
        return backend.sample([prompt], image[None], mask[None], steps=steps, seed=seed, **extra)[0]

    return inpaint
