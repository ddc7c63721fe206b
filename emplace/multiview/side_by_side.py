"""In-context multi-view: the reference views shown to the model as images, with no patching.

Two ways, both plain geometry over tensors:
- A side-by-side canvas for any inpainting model: the reference view(s) in a row left of the
  target (or a column above it), each resized to the target's height (or width) with its aspect
  kept, the mask on the target only. The model paints the target while seeing the other views
  in the same picture; `split` takes the target back out, pixel for pixel.
- Reference views for DiT edit models (Flux Kontext, Qwen-Image-Edit), which take other images
  as reference latents: `reference_views` hides what must not be copied and resizes each view
  to the size the model prefers (`megapixel_size`).

Images are [..., C, H, W] floats in 0..1, masks [..., H, W] (1 = paint / hide), sizes
(width, height), windows (x0, y0, x1, y1) whole pixels with an exclusive end. Errors name the
node input at fault: image, mask, reference, canvas, layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ARRANGEMENTS = ("left", "above")  # where the references go, relative to the target
GREY = 0.5  # gaps, padding and hidden pixels

Window = tuple[int, int, int, int]
Size = tuple[int, int]


@dataclass(frozen=True)
class SideBySide:
    """Where everything sits on a side-by-side canvas: what `split` needs to take the target back out."""
    arrangement: str
    canvas: Size  # (width, height), padding included
    target: Window
    references: tuple[Window, ...]
    reference_sizes: tuple[Size, ...]  # each view's size as it was given
    padding: Size  # (right, bottom): grey pixels added at the far edges to reach a multiple

    @property
    def target_size(self) -> Size:
        x0, y0, x1, y1 = self.target
        return x1 - x0, y1 - y0

    def describe(self) -> str:
        (w, h), (x0, y0, x1, y1) = self.canvas, self.target
        side = "the target's height" if self.arrangement == "left" else "the target's width"
        lines = [f"canvas {w}x{h}: {len(self.references)} reference view{'s' * (len(self.references) > 1)} "
                 f"{'left of' if self.arrangement == 'left' else 'above'} the target, "
                 f"target at x {x0}..{x1}, y {y0}..{y1}"]
        for i, ((rw, rh), (a, b, c, d)) in enumerate(zip(self.reference_sizes, self.references), 1):
            placed = (c - a, d - b)
            how = "as given" if placed == (rw, rh) else f"resized to {placed[0]}x{placed[1]} ({side})"
            lines.append(f"reference {i}: {rw}x{rh}, {how}, at x {a}..{c}, y {b}..{d}")
        if any(self.padding):
            lines.append(f"padded {self.padding[0]} px right and {self.padding[1]} px bottom (grey, masked out)")
        return "\n".join(lines)


def plan_side_by_side(target_size: Size, reference_sizes: Sequence[Size], arrangement: str = "left",
                      gap: int = 0, multiple: int = 1) -> SideBySide:
    """The canvas geometry: references first (left to right, or top to bottom), then the target.

    Each reference is scaled to the target's height ("left") or width ("above"), its other side
    round(side * scale). With `multiple` > 1 the target starts at a multiple (the gap before it
    widens), so its VAE cells line up with those of the original image, and the canvas is padded
    at the right and bottom to a multiple; the target's origin never moves because of padding.
    """
    if arrangement not in ARRANGEMENTS:
        raise ValueError(f"arrangement: {arrangement!r} is not one of {', '.join(ARRANGEMENTS)}")
    if not reference_sizes:
        raise ValueError("reference: the image batch is empty; give at least one view")
    if gap < 0 or multiple < 1:
        raise ValueError(f"gap must be >= 0 and multiple >= 1 (got {gap}, {multiple})")
    above = arrangement == "above"
    along_across = (lambda w, h: (h, w)) if above else (lambda w, h: (w, h))  # noqa: E731
    target_along, across = along_across(*target_size)
    spans, at = [], 0
    for size in reference_sizes:
        along, side = along_across(*size)
        length = max(1, math.floor(along * across / side + 0.5))
        spans.append((at, at + length))
        at += length + gap
    start = _round_up(at, multiple)
    spans.append((start, start + target_along))
    window = (lambda a, b: (0, a, across, b)) if above else (lambda a, b: (a, 0, b, across))  # noqa: E731
    windows = [window(a, b) for a, b in spans]
    canvas = along_across(_round_up(start + target_along, multiple), _round_up(across, multiple))
    target = windows.pop()
    return SideBySide(arrangement, canvas, target, tuple(windows), tuple(tuple(s) for s in reference_sizes),
                      (canvas[0] - target[2], canvas[1] - target[3]))


def side_by_side(image: torch.Tensor, references: torch.Tensor | Sequence[torch.Tensor], mask: torch.Tensor,
                 arrangement: str = "left", gap: int = 0, multiple: int = 1,
                 fill: float = GREY) -> tuple[torch.Tensor, torch.Tensor, SideBySide]:
    """(canvas, canvas mask, layout): `image` [..., C, H, W] with `references` ([V, C, h, w] or a list of
    [C, h, w]) beside it, and `mask` [..., H, W] on the target's place (0 over references, gaps, padding).

    The target and the mask are copied in bit for bit; references are resized bilinearly (antialiased
    when shrinking) unless they already fit. Every target in a batch gets the same references.
    """
    _check_mask("mask", mask, image)
    _check_batches(image=image.shape[:-3], mask=mask.shape[:-2])
    if any(view.shape[-3] != image.shape[-3] for view in references):
        raise ValueError(f"reference: the views must have the image's {image.shape[-3]} channels")
    layout = plan_side_by_side(_size(image), [_size(view) for view in references], arrangement, gap, multiple)
    width, height = layout.canvas
    canvas = image.new_full((*image.shape[:-2], height, width), fill)
    for view, (x0, y0, x1, y1) in zip(references, layout.references):
        canvas[..., y0:y1, x0:x1] = resize(view, (x1 - x0, y1 - y0)).to(canvas)
    x0, y0, x1, y1 = layout.target
    canvas[..., y0:y1, x0:x1] = image
    canvas_mask = mask.new_zeros((*mask.shape[:-2], height, width))
    canvas_mask[..., y0:y1, x0:x1] = mask
    return canvas, canvas_mask, layout


def split(canvas: torch.Tensor, layout: SideBySide, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The target taken back out of a (sampled) canvas: image * (1 - mask) + canvas[target] * mask.

    `image` and `mask` are the original target and its mask as given to `side_by_side`. Where the
    mask is 0 the result is `image` bit for bit (even if the sample there is NaN); where it is 1, the
    canvas's pixels at the target's place; soft masks mix. Leading (batch) dims broadcast.
    """
    if not isinstance(layout, SideBySide):
        raise ValueError(f"layout: expected the layout of a side-by-side canvas, got {type(layout).__name__}")
    if _size(canvas) != layout.canvas:
        raise ValueError(f"canvas: the image is {_dims(_size(canvas))}, the layout's canvas is "
                         f"{_dims(layout.canvas)}; connect the sampled canvas at its full size")
    if _size(image) != layout.target_size:
        raise ValueError(f"image: the target is {_dims(_size(image))}, the layout's target is "
                         f"{_dims(layout.target_size)}; connect the image the canvas was made from")
    _check_mask("mask", mask, image)
    _check_batches(canvas=canvas.shape[:-3], image=image.shape[:-3], mask=mask.shape[:-2])
    x0, y0, x1, y1 = layout.target
    sampled = canvas[..., y0:y1, x0:x1].to(image)
    alpha = mask[..., None, :, :].to(image)
    return torch.where(alpha == 0, image, image * (1 - alpha) + sampled * alpha)


def megapixel_size(width: int, height: int, megapixels: float = 1.0, multiple: int = 16) -> Size:
    """(w, h) of about `megapixels` x 1024² pixels with the aspect kept, each side rounded to a multiple
    (as core's ImageScaleToTotalPixels counts a megapixel; 16 = Flux's 8x VAE times its 2x2 patches)."""
    scale = math.sqrt(megapixels * 1024 * 1024 / (width * height))
    return tuple(max(multiple, math.floor(side * scale / multiple + 0.5) * multiple) for side in (width, height))


def reference_views(views: torch.Tensor, hide_mask: torch.Tensor | None = None, megapixels: float | None = None,
                    multiple: int = 16) -> torch.Tensor:
    """`views` [V, C, H, W] ready to encode as reference latents: hidden, then resized.

    Hidden pixels (hide_mask [1 or V, H, W], 1 = hide) become grey (0.5, the VAE's zero), so the
    model sees no content there: image * (1 - mask) + 0.5 * mask. With `megapixels`, each view is
    resized to `megapixel_size`; without, it keeps its size.
    """
    if views.shape[0] == 0:
        raise ValueError("reference: the image batch is empty; give at least one view")
    if hide_mask is not None:
        _check_mask("reference_hide_mask", hide_mask, views)
        _check_batches(reference=views.shape[:-3], reference_hide_mask=hide_mask.shape[:-2])
        alpha = hide_mask[..., None, :, :].to(views)
        views = views * (1 - alpha) + GREY * alpha
    if megapixels is None:
        return views
    return resize(views, megapixel_size(*_size(views), megapixels, multiple))


def resize(image: torch.Tensor, size: Size) -> torch.Tensor:
    """[..., C, H, W] at size (w, h): bilinear, antialiased when shrinking; unchanged when it fits."""
    if _size(image) == tuple(size):
        return image
    flat = image.float().reshape(-1, *image.shape[-3:])
    out = F.interpolate(flat, size=(size[1], size[0]), mode="bilinear", align_corners=False, antialias=True)
    return out.reshape(*image.shape[:-2], size[1], size[0]).to(image.dtype)


def _check_mask(name: str, mask: torch.Tensor, image: torch.Tensor) -> None:
    if tuple(mask.shape[-2:]) != tuple(image.shape[-2:]):
        raise ValueError(f"{name}: the mask is {_dims(_size(mask))}, the image is {_dims(_size(image))}; "
                         "they must be the same size")


def _check_batches(**shapes: torch.Size) -> None:
    """Leading (batch) dims must broadcast: each count 1 or the same as the others'."""
    seen = torch.Size()
    for name, shape in shapes.items():
        try:
            seen = torch.broadcast_shapes(seen, shape)
        except RuntimeError:
            counts = ", ".join(f"{n} {math.prod(s)}" for n, s in shapes.items())
            raise ValueError(f"{name}: the batch sizes do not match ({counts}); give 1, or one per "
                             f"{next(iter(shapes))}") from None


def _size(x: torch.Tensor) -> Size:
    return int(x.shape[-1]), int(x.shape[-2])


def _dims(size: Size) -> str:
    return f"{size[0]}x{size[1]}"


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
