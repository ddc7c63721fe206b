"""Sampling boxes from a location model: batched, with a KV cache, temperature / top-k / top-p,
constrained to a region and a size range, de-duplicated by NMS, each scored by its likelihood.

Constraints work on the logits, token by token, so a constrained box is still a sample from
the model (renormalised over what is allowed), never a rejected-and-redrawn one:
- region: a box must lie wholly inside the allowed region. The region is reduced to the
  bin grid, a cell allowed only when all of it is (so a box never leaves the region);
  x0 must fall in a column with room, y0 on an allowed cell, x1 must keep the top row
  inside, y1 the whole rectangle (an integral image answers each in one lookup);
- size: each box side between min_size and max_size of the image side.
A sample can reach a dead end (no allowed x1 or y1 left); those are dropped and more are
drawn, a few rounds at most.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..boxes import nms_indices
from .model import LocationModel, LocationModelError
from .tokens import size_range_in_bins, tokens_to_boxes


@dataclass
class Proposals:
    boxes: torch.Tensor  # [K, 4] xyxy pixels, best (most likely) first, after NMS
    scores: torch.Tensor  # [K] log-likelihood under the model (untempered, unconstrained)
    samples: torch.Tensor  # [n, 4] every box drawn, before NMS (for density maps and evaluation)
    sample_scores: torch.Tensor  # [n]


@dataclass
class Constraints:
    """Allowed cells [bins, bins] (row = y bin) and the side length range in bins."""

    allowed: torch.Tensor
    side: tuple[int, int]

    @classmethod
    def build(cls, bins: int, region: torch.Tensor | None, min_size: float, max_size: float) -> Constraints:
        side = size_range_in_bins(min_size, max_size, bins)
        if region is None:
            return cls(torch.ones(bins, bins, dtype=torch.bool), side)
        if region.dim() != 2:
            raise ValueError(f"region must be one [H, W] mask, got shape {tuple(region.shape)}")
        inside = (region.float() > 0.5).float()
        if not inside.any():
            raise LocationModelError("the region mask excludes the whole image: there is nowhere to propose a box")
        # a cell counts only when all of it is allowed: max-pool the excluded pixels onto the grid
        excluded = F.adaptive_max_pool2d((1 - inside)[None, None], (bins, bins))[0, 0]
        allowed = excluded < 0.5
        if not allowed.any():
            raise LocationModelError(f"the region mask is too thin: no cell of the {bins}x{bins} box grid lies "
                                     f"wholly inside it")
        return cls(allowed, side)

    def integral(self) -> torch.Tensor:
        """[bins + 1, bins + 1] cumulative count of excluded cells."""
        return F.pad((~self.allowed).long().cumsum(0).cumsum(1), (1, 0, 1, 0))


def _excluded_in(integral: torch.Tensor, y0, x0, y1, x1) -> torch.Tensor:
    """Excluded cells in rows y0..y1, columns x0..x1 (inclusive, broadcast tensors)."""
    return integral[y1 + 1, x1 + 1] - integral[y0, x1 + 1] - integral[y1 + 1, x0] + integral[y0, x0]


def allowed_tokens(slot: int, sofar: torch.Tensor, c: Constraints, integral: torch.Tensor) -> torch.Tensor:
    """[n, bins] bool: which tokens may come next in `slot` (0..3) after the tokens `sofar` [n, slot]."""
    bins = c.allowed.shape[0]
    n = sofar.shape[0]
    lo, hi = c.side
    b = torch.arange(bins)
    if slot == 0:  # x0: a column with an allowed cell, and room for the smallest width
        ok = c.allowed.any(0) & (b + lo <= bins)
        return ok.expand(n, bins).clone()
    x0 = sofar[:, 0:1]
    if slot == 1:  # y0: an allowed cell under x0, room for the smallest height
        return c.allowed[:, sofar[:, 0]].T & (b + lo <= bins)
    y0 = sofar[:, 1:2]
    if slot == 2:  # x1: the width in range and the top row inside the region
        width = b[None] - x0 + 1
        x1 = b[None].clamp(min=0).expand(n, bins)
        inside = _excluded_in(integral, y0, x0.clamp(max=bins - 1), y0, torch.maximum(x1, x0)) == 0
        return (width >= lo) & (width <= hi) & inside
    x1 = sofar[:, 2:3]
    height = b[None] - y0 + 1  # y1: the height in range and the whole box inside the region
    y1 = torch.maximum(b[None].expand(n, bins), y0)
    inside = _excluded_in(integral, y0, x0, y1, x1) == 0
    return (height >= lo) & (height <= hi) & inside


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Keep the top_k most likely tokens and the smallest set holding top_p of the probability."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, -1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = logits.sort(-1, descending=True)
        before = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1)  # mass of the tokens ahead of each
        drop = before >= top_p  # the most likely token is always kept (its "before" is 0)
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def _cache_keyword(decoder) -> str:
    """transformers 5.24 renamed the decoder's `past_key_values` argument to `cache` (the old name warns)."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


@torch.no_grad()
def sample_tokens(model: LocationModel, image: torch.Tensor, label: str, n: int, generator: torch.Generator,
                  constraints: Constraints, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  use_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n token sequences for one image: (tokens [n, 4], log-likelihoods [n], alive [n] bool)."""
    device = model.head.weight.device
    prefix = model.prefix(image[None], [label])  # [1, P, W]
    if use_cache:
        from transformers import DynamicCache

        cache = DynamicCache()  # the decoder fills it in place, call after call
        kv = {_cache_keyword(model.decoder): cache, "use_cache": True}
        hidden = model.decoder(inputs_embeds=prefix, **kv).last_hidden_state[:, -1].expand(n, -1)
        cache.batch_repeat_interleave(n)  # every sample shares the background's keys and values
    else:
        hidden = model.decoder(inputs_embeds=prefix).last_hidden_state[:, -1].expand(n, -1)
    integral = constraints.integral()
    tokens = torch.zeros(n, 0, dtype=torch.long)
    score = torch.zeros(n)
    alive = torch.ones(n, dtype=torch.bool)
    for slot in range(4):
        raw = model.head(hidden).float().cpu()
        ok = allowed_tokens(slot, tokens, constraints, integral)
        alive &= ok.any(-1)
        ok[~alive] = True  # a dead sample draws anything; it is dropped at the end
        logits = filter_logits((raw / max(temperature, 1e-4)).masked_fill(~ok, float("-inf")), top_k, top_p)
        token = torch.multinomial(logits.softmax(-1), 1, generator=generator)
        score += raw.log_softmax(-1).gather(-1, token)[:, 0]
        tokens = torch.cat([tokens, token], 1)
        if slot == 3:
            break
        step = model.coordinate(token.to(device))  # [n, 1, W]
        if use_cache:
            hidden = model.decoder(inputs_embeds=step, **kv).last_hidden_state[:, -1]
        else:  # the whole sequence again: what the cache saves
            embeds = torch.cat([prefix.expand(n, -1, -1), model.coordinate(tokens.to(device))], 1)
            hidden = model.decoder(inputs_embeds=embeds).last_hidden_state[:, -1]
    return tokens, score, alive


def propose(model: LocationModel, image: torch.Tensor, label: str, n: int = 100, *, temperature: float = 1.0,
            top_k: int = 0, top_p: float = 1.0, seed: int = 0, region: torch.Tensor | None = None,
            min_size: float = 0.0, max_size: float = 1.0, nms_iou: float = 0.5, use_cache: bool = True,
            rounds: int = 4) -> Proposals:
    """Sample n boxes for `label` on `image` [3, H, W] (0..1); see the module docstring."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got shape {tuple(image.shape)}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if region is not None and tuple(region.shape) != tuple(image.shape[-2:]):
        raise ValueError(f"the region mask is {tuple(region.shape[::-1])} (W, H) but the image is "
                         f"{tuple(image.shape[:0:-1])}")
    label = model.check_label(label)
    height, width = image.shape[-2:]
    constraints = Constraints.build(model.config.bins, region, min_size, max_size)
    generator = torch.Generator().manual_seed(seed)
    got_tokens, got_scores = [], []
    for _ in range(rounds):
        want = n - sum(len(t) for t in got_tokens)
        if want <= 0:
            break
        tokens, scores, alive = sample_tokens(model, image, label, want, generator, constraints, temperature, top_k,
                                              top_p, use_cache)
        got_tokens.append(tokens[alive])
        got_scores.append(scores[alive])
    tokens, scores = torch.cat(got_tokens), torch.cat(got_scores)
    if len(tokens) == 0:
        raise LocationModelError(f"no box between {min_size} and {max_size} of the image side fits inside the region")
    samples = tokens_to_boxes(tokens, width, height, model.config.bins)
    keep = nms_indices(samples, scores, nms_iou)
    return Proposals(samples[keep], scores[keep], samples, scores)
