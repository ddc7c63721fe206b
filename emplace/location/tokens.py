"""Boxes as tokens: each coordinate is one of `bins` bins, generated x0, y0, x1, y1 in turn.

Pix2Seq-style quantisation. The seed paper does not publish its bin count or order; we use
128 bins per axis (about 1 % of the image side: 1 px at the scene world's 128 px, 4 px at
512) and the order x0, y0, x1, y1, so the top-left corner is chosen first and the size
after it, where the size constraints apply. A box covers bins x0..x1 and y0..y1 inclusive:
its pixel edges are x0 / bins and (x1 + 1) / bins of the width, so every token sequence
with x1 >= x0 and y1 >= y0 is a box of positive size.
"""

from __future__ import annotations

import math

import torch

ORDER = ("x0", "y0", "x1", "y1")
DEFAULT_BINS = 128


def boxes_to_tokens(boxes: torch.Tensor, width: int, height: int, bins: int = DEFAULT_BINS) -> torch.Tensor:
    """[N, 4] xyxy in pixels -> [N, 4] long tokens (x0, y0, x1, y1); boxes are clipped to the image."""
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    scale = torch.tensor([width, height, width, height], dtype=torch.float64)
    f = (boxes / scale).clamp(0, 1) * bins
    start = f[:, :2].floor().clamp(0, bins - 1)
    end = torch.maximum((f[:, 2:] - 1e-6).ceil() - 1, start)  # the last bin the box reaches into
    return torch.cat([start, end.clamp(max=bins - 1)], 1).long()


def tokens_to_boxes(tokens: torch.Tensor, width: int, height: int, bins: int = DEFAULT_BINS) -> torch.Tensor:
    """[N, 4] tokens -> [N, 4] float xyxy in pixels (the edges of the bins the box covers)."""
    t = tokens.reshape(-1, 4).double()
    scale = torch.tensor([width, height, width, height], dtype=torch.float64) / bins
    return ((t + torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)) * scale).float()


def size_range_in_bins(min_size: float, max_size: float, bins: int = DEFAULT_BINS) -> tuple[int, int]:
    """A box side between min_size and max_size (fractions of the image side) as a count of bins."""
    if not 0 <= min_size <= max_size <= 1 or max_size <= 0:
        raise ValueError(f"the size range must satisfy 0 <= min_size <= max_size <= 1 and max_size > 0, "
                         f"got min_size={min_size}, max_size={max_size}")
    lo = max(1, math.ceil(min_size * bins - 1e-9))
    hi = min(bins, math.floor(max_size * bins + 1e-9))
    if hi < lo:
        raise ValueError(f"no box side fits between {min_size} and {max_size} of the image at {bins} bins")
    return lo, hi
